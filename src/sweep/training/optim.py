"""Optimizers and learning-rate schedules built from config by name (mlx.optimizers)."""

from __future__ import annotations

from typing import Callable, Dict

import mlx.core as mx
import mlx.optimizers as optim

from sweep.config.schema import (ConfigError, OptimizerConfig, OptimizerName, SchedulerConfig,
                                 SchedulerName)

__all__ = ["build_schedule", "build_optimizer", "is_lora_b"]

Schedule = Callable[[mx.array], mx.array]


def _constant(lr: float, _end: float, _steps: int) -> Schedule:
    return lambda step: mx.array(lr, dtype=mx.float32)


_DECAYS: Dict[SchedulerName, Callable[[float, float, int], Schedule]] = {
    SchedulerName.cosine: lambda lr, end, steps: optim.cosine_decay(lr, steps, end),
    SchedulerName.linear: lambda lr, end, steps: optim.linear_schedule(lr, end, steps),
    SchedulerName.constant: _constant,
}


def build_schedule(cfg: SchedulerConfig, lr: float, total_steps: int) -> Schedule:
    """Linear warmup over the first ``W`` optimizer steps (``lr * (s + 1) / (W + 1)``, so
    no step is wasted at lr 0), then decay to ``lr * min_lr_ratio`` at the last step."""
    warmup = min(cfg.warmup_for(total_steps), max(total_steps - 1, 0))
    decay = _DECAYS[cfg.name](lr, lr * cfg.min_lr_ratio, max(total_steps - warmup - 1, 1))
    if warmup == 0:
        return decay
    ramp = optim.linear_schedule(lr / (warmup + 1), lr, warmup)
    return optim.join_schedules([ramp, decay], [warmup])


_OPTIMIZERS: Dict[OptimizerName, Callable[[OptimizerConfig, Schedule], optim.Optimizer]] = {
    OptimizerName.adamw: lambda c, lr: optim.AdamW(
        learning_rate=lr, betas=list(c.betas), eps=c.eps, weight_decay=c.weight_decay),
    OptimizerName.adam: lambda c, lr: optim.Adam(learning_rate=lr, betas=list(c.betas), eps=c.eps),
    OptimizerName.sgd: lambda c, lr: optim.SGD(
        learning_rate=lr, momentum=c.momentum, weight_decay=c.weight_decay, nesterov=c.nesterov),
    OptimizerName.adafactor: lambda c, lr: optim.Adafactor(
        learning_rate=lr, relative_step=False, scale_parameter=False,
        weight_decay=c.weight_decay),
}


LORA_B = "lora_b"  # mlx-lm's name of the B matrix in LoRALinear, LoRASwitchLinear, DoRA


def is_lora_b(path: str, _value=None) -> bool:
    return path.rsplit(".", 1)[-1] == LORA_B


def build_optimizer(cfg: OptimizerConfig, schedule: Schedule) -> optim.Optimizer:
    """The optimizer ``cfg`` names. With ``lora_plus_ratio`` != 1 (LoRA+), one optimizer of
    that kind per group through MLX's ``MultiOptimizer``: the A matrices (and every other
    trainable parameter) at the schedule's lr, the B matrices at ratio x it. Its state
    (moments and step of each group) is saved in checkpoints as any optimizer's is."""
    if cfg.name is OptimizerName.adam and cfg.weight_decay > 0:
        raise ConfigError(f"optimizer.weight_decay={cfg.weight_decay!r}: adam has no weight "
                          "decay; use optimizer=adamw")
    if cfg.lora_plus_ratio == 1:
        return _OPTIMIZERS[cfg.name](cfg, schedule)
    ratio = cfg.lora_plus_ratio
    b_schedule = lambda step: ratio * schedule(step)  # noqa: E731
    # the first optimizer's learning_rate is the one MultiOptimizer reports (and the
    # loop logs): A's, the configured lr; B's is the fallback of the last filter
    return optim.MultiOptimizer([_OPTIMIZERS[cfg.name](cfg, schedule),
                                 _OPTIMIZERS[cfg.name](cfg, b_schedule)],
                                [lambda path, value: not is_lora_b(path)])
