"""``optimizer.lora_plus_ratio`` (LoRA+): B matrices learn at ratio x lr, everything else
at lr; the state survives a checkpoint; the adapter loads in mlx-lm unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
import pytest
from mlx.utils import tree_flatten, tree_map

from conftest import QA, compose_config, tiny_overrides
from sweep.config.schema import (LoraConfig, OptimizerConfig, OptimizerName, SchedulerConfig,
                                 SchedulerName)
from sweep.training.lora import apply_lora
from sweep.training.optim import build_optimizer, build_schedule
from sweep.trial import run_trial
from test_scaling import tiny_llama


@pytest.mark.parametrize("name", [OptimizerName.sgd, OptimizerName.adamw])
def test_b_learns_at_ratio_times_lr(name) -> None:
    model = tiny_llama()
    apply_lora(model, LoraConfig(rank=4, alpha=8, dropout=0.0), seed=0)
    lr, ratio = 1e-3, 16.0
    schedule = build_schedule(SchedulerConfig(name=SchedulerName.constant), lr, 10)
    optimizer = build_optimizer(OptimizerConfig(name=name, lr=lr, weight_decay=0.0,
                                                lora_plus_ratio=ratio), schedule)
    before = dict(tree_flatten(model.trainable_parameters()))
    optimizer.init(model.trainable_parameters())
    optimizer.update(model, tree_map(mx.ones_like, model.trainable_parameters()))
    mx.eval(model.parameters())
    after = dict(tree_flatten(model.trainable_parameters()))
    # a gradient of ones moves each element of a group by one amount: SGD lr x 1, MLX's
    # Adam (no bias correction) lr x 0.1 / sqrt(0.001)
    unit = lr if name is OptimizerName.sgd else lr * 0.1 / 0.001 ** 0.5
    for path, old in before.items():
        step = (old - after[path]).abs()
        expected = unit * ratio if path.endswith("lora_b") else unit
        assert step.max().item() == pytest.approx(expected, rel=1e-3), path
        assert step.min().item() == pytest.approx(expected, rel=1e-3), path
    assert optimizer.learning_rate.item() == pytest.approx(lr)  # what the loop logs: A's


def _qa(folder: Path) -> Path:
    qa = folder / "qa.jsonl"
    qa.write_text("".join(json.dumps({"question": f"{q} ({i})", "answer": a}) + "\n"
                          for i, (q, a) in enumerate(QA[i % len(QA)] for i in range(40))))
    return qa


def _run(tmp: Path, out: str, *extra: str):
    overrides = tiny_overrides(tmp, _qa(tmp), "train.iters=12", "optimizer.lr=0.01",
                               "train.eval_every=2", "mlflow.enabled=false", *extra)
    return run_trial(compose_config(overrides), tmp / out, overrides=overrides)


def test_a_lora_plus_run_resumes_exactly_and_loads_in_mlx_lm(tmp_path: Path) -> None:
    from mlx_lm.tuner.utils import load_adapters

    plus = "optimizer.lora_plus_ratio=16"
    unbroken = _run(tmp_path, "unbroken", plus)
    paused = _run(tmp_path, "resumed", plus, "train.stop_after_epochs=0.625")  # mid-step
    assert paused.train.paused
    resumed = _run(tmp_path, "resumed", plus, "train.resume=auto")
    assert resumed.best_val_loss == pytest.approx(unbroken.best_val_loss, abs=1e-6)
    plain = _run(tmp_path, "plain")
    assert plain.best_val_loss != pytest.approx(unbroken.best_val_loss, abs=1e-4)

    from sweep.models.loader import load_base

    cfg = compose_config(tiny_overrides(tmp_path, _qa(tmp_path)))
    base = load_base(__import__("sweep.config", fromlist=["to_typed"]).to_typed(cfg).model,
                     None, 0).model
    loaded = load_adapters(base, str(unbroken.adapter_dir))  # as mlx_lm.load(adapter_path=)
    b = [v for k, v in tree_flatten(loaded.parameters()) if k.endswith("lora_b")]
    assert b and all(mx.abs(x).max().item() > 0 for x in b)
