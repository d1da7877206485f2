"""Build the default model's kernels once, at set-up, instead of inside the first trial.

On the CPU, ``mx.compile`` builds each fused kernel with ``g++`` the first time it meets it
(:mod:`sweep.runtime.kernels` keeps the builds in ``<cache>/native-kernels``, per CPU). A
default trial meets ~60 of them, so on a fresh machine its first micro-batches and its first
evaluation pay ~20 s of builds that no later trial pays (``python -m bench.workload``: the
first pass on an empty kernel cache). ``make setup`` runs this module once: it loads the
configured model (importing it into the model cache, which the first trial would do too),
trains a few micro-batches of the shipped data with the default LoRA through the real loop
(accumulation 2, so the update is compiled too), scores a few validation batches, and
decodes a few tokens with mlx-lm's ``batch_generate`` as ``sweep-eval`` does. The adapter it trains
is thrown away; nothing is logged or written besides the caches.

Helps the CPU backend (where MLX builds kernels with the system compiler); on Metal and CUDA
MLX builds its kernels at run time too and the warm-up costs the same few seconds.

    python -m sweep.training.warmup [override ...]     (Hydra overrides, e.g. model=...)
"""

from __future__ import annotations

import sys
import time
from typing import Sequence

__all__ = ["warm_up"]

MICRO_BATCHES = 6  # two optimizer steps of accumulation 2, plus two micro-batches
EVAL_EXAMPLES = 8
DECODE_TOKENS = 4


def warm_up(overrides: Sequence[str] = ()) -> dict:
    """Run the default trial's computations briefly; returns what was run and the seconds."""
    from sweep import runtime

    runtime.setup()  # before mlx is imported: the native kernel builds, the BLAS
    from mlx_lm.generate import batch_generate

    from sweep.config import compose, to_typed
    from sweep.config.templates import use
    from sweep.data.batches import tokenize
    from sweep.data.records import load_splits
    from sweep.models.loader import load_base
    from sweep.training import loop
    from sweep.training.lora import apply_lora
    from sweep.training.optim import build_optimizer, build_schedule

    start = time.perf_counter()
    cfg = to_typed(compose(list(overrides)))
    loaded = load_base(cfg.model, cfg.cache_dir, cfg.seed)
    use(loaded.tokenizer, cfg.data.template, cfg.model.name)
    splits = load_splits(cfg.data, seed=cfg.seed)
    # decoding first, with the base model: sweep-eval decodes the base model and the adapter
    # fused into it (plain linear layers), so the LoRA layers need no decoding kernels
    prompts = [list(loaded.tokenizer.apply_chat_template(
        e["messages"][:-1], add_generation_prompt=True, tokenize=True))
        for e in (splits.test or splits.valid)[:2]]
    loaded.model.eval()
    batch_generate(loaded.model, loaded.tokenizer, prompts, max_tokens=DECODE_TOKENS,
                   completion_batch_size=len(prompts), prefill_batch_size=len(prompts))
    model = loaded.model
    apply_lora(model, cfg.lora, seed=cfg.seed)
    train_set = tokenize(splits.train, loaded.tokenizer, cfg.data.mask_prompt)
    # a few validation examples: the last evaluation scores the whole (here small) split
    val_set = tokenize(splits.valid[:EVAL_EXAMPLES], loaded.tokenizer, cfg.data.mask_prompt)
    settings = loop.LoopSettings(
        iters=MICRO_BATCHES, batch_size=cfg.train.batch_size, grad_accumulation=2,
        max_seq_length=cfg.train.max_seq_length, max_grad_norm=cfg.train.max_grad_norm,
        eval_every=10 ** 6, val_batches=1, compile=cfg.train.compile, seed=cfg.seed)
    # the configured schedule: its ops are compiled into the update (as in a trial)
    optimizer = build_optimizer(cfg.optimizer, build_schedule(
        cfg.scheduler, cfg.optimizer.lr, settings.total_steps))
    loop.train(model, optimizer, train_set, val_set, settings)
    return {"model": cfg.model.name, "micro_batches": MICRO_BATCHES,
            "seconds": time.perf_counter() - start}


def main(argv: Sequence[str] = ()) -> int:
    try:
        done = warm_up(argv)
    except Exception as error:  # set-up goes on: the first trial builds the kernels instead
        print(f"sweep warm-up skipped ({type(error).__name__}: {error}); the first trial "
              "builds the kernels instead", file=sys.stderr)
        return 0
    print(f"sweep warm-up: {done['model']}'s kernels built in {done['seconds']:.0f} s "
          f"({done['micro_batches']} micro-batches, an evaluation, a short decode)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
