"""The real workload, side by side: a default trial's training step on the shipped data.

SmolLM2-135M as shipped (float32 on CPU), the shipped legal Q&A with the prompt masked,
batch 4, LoRA rank 16 / alpha 32 / dropout 0.05 on all seven linear layers of all 30 blocks,
AdamW. The same 12 micro-batches of the training split (the first 12 of a trial's order) are
trained twice by each implementation and the second pass is timed, so every shape is
compiled before the clock runs:

- ours (``sweep.training.loop.train``), and ours computing logits at every position (the
  LM head before answer-only logits, :mod:`sweep.training.heads`), to show that lever;
- ``mlx_lm.lora`` (mlx-lm's own ``run``, as its CLI calls it, same examples as chat records
  with ``--mask-prompt``, same BLAS, its kernels built the stock way);
- PyTorch + PEFT on CPU, on our exact batches (same padding, labels -100 outside the
  answer), when torch and peft are installed (``make bench`` installs them).

Each gives seconds per micro-batch and answer tokens per second; the share of the matmul
peak counts the FLOPs of the whole computation (logits at every position, as mlx-lm and
PEFT compute them), so it compares implementations, not algorithms.

    python -m bench.workload [--batches 12] [--skip-peft]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional

from bench.table import Row, report

BATCH = 4


def shipped(batches: int):
    """(config, loaded model, the examples of the first ``batches`` micro-batches)."""
    import numpy as np

    from sweep.config import compose, to_typed
    from sweep.data.batches import tokenize
    from sweep.data.records import load_splits
    from sweep.models.loader import load_base

    cfg = to_typed(compose(["lora.rank=16", "lora.alpha=32"]))
    loaded = load_base(cfg.model)
    train = load_splits(cfg.data, seed=cfg.seed).train
    tokenized = tokenize(train, loaded.tokenizer, cfg.data.mask_prompt)
    lengths = [len(tokenized[i][0]) for i in range(len(tokenized))]
    order = sorted(range(len(train)), key=lengths.__getitem__)
    groups = [order[i:i + BATCH] for i in range(0, len(order) - BATCH + 1, BATCH)]
    picked = np.random.default_rng(cfg.seed).permutation(len(groups))[:batches]
    return cfg, loaded, [train[i] for g in picked for i in groups[g]]


def ours(cfg, loaded, examples: List[Dict[str, Any]], answer_only: bool = True) -> Dict[str, Any]:
    """Two passes over the examples in micro-batches of 4; the second timed."""
    import mlx.core as mx

    from sweep.data.batches import iterate_batches, tokenize
    from sweep.training import loop, validation
    from sweep.training.events import Listener
    from sweep.training.heads import split_head
    from sweep.training.lora import apply_lora
    from sweep.training.optim import build_optimizer

    model = loaded.model
    apply_lora(model, cfg.lora, seed=0)
    train_set = tokenize(examples, loaded.tokenizer, cfg.data.mask_prompt)
    n = len(examples) // BATCH
    reports = []

    class Keep(Listener):
        def on_train_report(self, r):
            reports.append(r)

    splitter = split_head if answer_only else (lambda m: None)
    loop.split_head = validation.split_head = splitter
    try:
        optimizer = build_optimizer(cfg.optimizer, lambda s: mx.array(cfg.optimizer.lr))
        settings = loop.LoopSettings(iters=2 * n, batch_size=BATCH, grad_accumulation=1,
                                     max_seq_length=cfg.train.max_seq_length,
                                     max_grad_norm=cfg.train.max_grad_norm,
                                     eval_every=10 ** 6, val_batches=1, seed=cfg.seed)
        loop.train(model, optimizer, train_set, train_set, settings, listener=Keep())
    finally:
        loop.split_head = validation.split_head = split_head
    seconds, before = [], 0
    for r in reports:
        seconds.append((r.trained_tokens - before) / r.tokens_per_sec)
        before = r.trained_tokens
    widths = [int(t.shape[1]) - 1 for t, _, _ in
              iterate_batches(train_set, BATCH, cfg.train.max_seq_length)]
    answer = sum(int((p >= 0).sum().item()) for _, p, _ in
                 iterate_batches(train_set, BATCH, cfg.train.max_seq_length))
    return {"seconds": seconds[n:], "first_pass": seconds[:n], "widths": widths,
            "answer_tokens": answer, "peak_gb": max(r.peak_memory_gb for r in reports)}


MLX_LM_SCRIPT = r"""
import json, sys, types
from mlx_lm import lora
from mlx_lm.tuner.callbacks import TrainingCallback
model, data, adapters, iters, rank, scale, dropout, max_len, lr = sys.argv[1:10]
parser = lora.build_parser()
args = vars(parser.parse_args(["--model", model, "--train", "--data", data,
    "--batch-size", "4", "--iters", iters, "--num-layers", "-1", "--mask-prompt",
    "--max-seq-length", max_len, "--steps-per-report", "1", "--steps-per-eval", "1000000",
    "--val-batches", "1", "--learning-rate", lr, "--optimizer", "adamw",
    "--adapter-path", adapters]))
for k, v in lora.CONFIG_DEFAULTS.items():
    if args.get(k) is None:
        args[k] = v
args["lora_parameters"] = {"rank": int(rank), "scale": float(scale), "dropout": float(dropout),
    "keys": ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
             "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]}
seconds = []
class Keep(TrainingCallback):
    def on_train_loss_report(self, info):
        seconds.append(1.0 / info["iterations_per_second"])
# mlx-lm 0.32's run() drops its training_callback argument for get_reporting_callbacks'
lora.get_reporting_callbacks = lambda *a, **k: Keep()
lora.run(types.SimpleNamespace(**args))
print(json.dumps(seconds))
"""


def mlx_lm_lora(cfg, model_dir: str, examples, work: Path) -> List[float]:
    """mlx-lm's trainer as its CLI runs it; the seconds of each micro-batch."""
    from sweep.runtime.blas import blas_choice

    data = work / "data"
    data.mkdir(parents=True, exist_ok=True)
    for name in ("train", "valid"):
        with (data / f"{name}.jsonl").open("w") as f:
            for e in examples:
                f.write(json.dumps({"messages": e["messages"]}) + "\n")
    env = dict(os.environ)  # mlx-lm as shipped: stock kernels in its own cache, our BLAS
    if blas_choice().path:
        env["LD_PRELOAD"] = blas_choice().path
    n = len(examples) // BATCH
    out = subprocess.run([sys.executable, "-c", MLX_LM_SCRIPT, model_dir, str(data),
                          str(work / "adapters"), str(2 * n), str(cfg.lora.rank),
                          str(cfg.lora.alpha / cfg.lora.rank), str(cfg.lora.dropout),
                          str(cfg.train.max_seq_length), str(cfg.optimizer.lr)],
                         capture_output=True, text=True, env=env, timeout=3600)
    if out.returncode != 0:
        raise RuntimeError(f"mlx_lm.lora failed:\n{out.stderr[-3000:]}")
    seconds = json.loads(out.stdout.strip().splitlines()[-1])
    if len(seconds) != 2 * n:
        raise RuntimeError(f"mlx_lm.lora reported {len(seconds)} of {2 * n} micro-batches")
    return seconds[n:]


PEFT_SCRIPT = r"""
import json, sys, time, torch
from transformers import LlamaForCausalLM
from peft import LoraConfig, get_peft_model
model_dir, batches, rank, alpha, dropout, lr = sys.argv[1:7]
torch.manual_seed(0)
model = LlamaForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)
model = get_peft_model(model, LoraConfig(r=int(rank), lora_alpha=float(alpha),
    lora_dropout=float(dropout), target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
    "gate_proj", "up_proj", "down_proj"]))
model.train()
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=float(lr))
seconds = []
for tokens, labels in json.load(open(batches)):
    x, y = torch.tensor(tokens), torch.tensor(labels)
    start = time.perf_counter()
    out = model(input_ids=x, labels=y)
    out.loss.backward()
    opt.step(); opt.zero_grad()
    seconds.append(time.perf_counter() - start)
print(json.dumps({"seconds": seconds, "threads": torch.get_num_threads()}))
"""


def pytorch_peft(cfg, loaded, examples, work: Path) -> Optional[Dict[str, Any]]:
    """PyTorch + PEFT on our exact micro-batches (two passes; the second's seconds)."""
    try:
        import peft  # noqa: F401
        import torch  # noqa: F401
    except ImportError:
        return None
    import numpy as np

    from sweep.data.batches import iterate_batches, tokenize

    train_set = tokenize(examples, loaded.tokenizer, cfg.data.mask_prompt)
    batches = []
    for tokens, positions, _ in iterate_batches(train_set, BATCH, cfg.train.max_seq_length):
        tokens, positions = np.array(tokens), np.array(positions)
        labels = np.full(tokens.shape, -100)  # HF shifts: label at p + 1 is target p
        counted = positions[positions >= 0]
        width = tokens.shape[1] - 1
        labels[counted // width, counted % width + 1] = tokens[counted // width,
                                                               counted % width + 1]
        batches.append((tokens.tolist(), labels.tolist()))
    path = work / "peft-batches.json"
    path.write_text(json.dumps(batches * 2))
    out = subprocess.run([sys.executable, "-c", PEFT_SCRIPT, loaded.path, str(path),
                          str(cfg.lora.rank), str(cfg.lora.alpha), str(cfg.lora.dropout),
                          str(cfg.optimizer.lr)], capture_output=True, text=True, timeout=3600,
                         env={k: v for k, v in os.environ.items() if k != "LD_PRELOAD"})
    if out.returncode != 0:
        raise RuntimeError(f"PyTorch + PEFT failed:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["seconds"] = result["seconds"][len(batches):]
    return result


COMPILE_SCRIPT = r"""
import json, sys
from sweep import runtime
runtime.setup()
from bench import workload
cfg, loaded, examples = workload.shipped(int(sys.argv[1]))
r = workload.ours(cfg, loaded, examples)
print(json.dumps({"first": sum(r["first_pass"]), "second": sum(r["seconds"])}))
"""


def compile_seconds(batches: int, warm: bool = False) -> Dict[str, float]:
    """A fresh process with an empty kernel cache (the rest of the cache shared): the
    first pass over the micro-batches against the second (all compiled by then).
    ``warm``: ``make setup``'s warm-up (:mod:`sweep.training.warmup`) runs first in that
    cache, timed as ``warm_up``."""
    import time

    from sweep import paths

    root = paths.cache_root()
    with tempfile.TemporaryDirectory() as tmp:
        for entry in root.iterdir() if root.exists() else ():
            if entry.name != "native-kernels":
                os.symlink(entry, Path(tmp) / entry.name)
        env = {**os.environ, "SWEEP_CACHE": tmp}
        start = time.perf_counter()
        if warm:
            subprocess.run([sys.executable, "-m", "sweep.training.warmup"], check=True,
                           capture_output=True, timeout=3600, env=env)
        warm_up = time.perf_counter() - start
        out = subprocess.run([sys.executable, "-c", COMPILE_SCRIPT, str(batches)],
                             capture_output=True, text=True, timeout=3600,
                             cwd=Path(__file__).resolve().parents[1], env=env)
    if out.returncode != 0:
        raise RuntimeError(f"the empty-cache run failed:\n{out.stderr[-3000:]}")
    return {**json.loads(out.stdout.strip().splitlines()[-1]), "warm_up": warm_up}


def mean(xs: List[float]) -> float:
    return sum(xs) / len(xs)


def rows(batches: int = 12, skip_peft: bool = False, peak: Optional[float] = None) -> List[Row]:
    """The real-workload rows with their goals (issue 19: 2x mlx_lm.lora, 1.3x PEFT, 40%
    of the matmul peak)."""
    from bench.compute import matmul_peak, step_flops

    cfg, loaded, examples = shipped(batches)
    config = json.loads((Path(loaded.path) / "config.json").read_text())
    peak = peak or matmul_peak()
    out = [Row("matmul peak (float32, 2048^3)", peak, "GFLOP/s")]
    mine = ours(cfg, loaded, examples)
    n_layers = config["num_hidden_layers"]
    flops = mean([step_flops(config, BATCH, w, n_layers, cfg.lora.rank) for w in mine["widths"]])
    s = mean(mine["seconds"])
    out.append(Row("real workload: sweep", s, "s/micro-batch",
                   detail=f"{mine['answer_tokens'] / sum(mine['seconds']):.0f} answer tok/s, "
                          f"peak {mine['peak_gb']:.2f} GB"))
    from sweep.models.loader import load_base

    loaded_full = load_base(cfg.model)
    full = ours(cfg, loaded_full, examples, answer_only=False)
    out.append(Row("  sweep, logits at every position", mean(full["seconds"]), "s/micro-batch",
                   detail=f"answer-only logits: {mean(full['seconds']) / s:.2f}x"))
    for warm in (False, True):
        fresh = compile_seconds(batches, warm)
        extra = fresh["first"] - fresh["second"]
        label = ("after make setup's warm-up" if warm else "empty kernel cache")
        out.append(Row(f"  first pass, {label}", extra, "s more", "<= 10 s", extra <= 10,
                       f"{fresh['first']:.0f} s against {fresh['second']:.0f} s for the "
                       f"same {batches} micro-batches compiled"
                       + (f"; the warm-up took {fresh['warm_up']:.0f} s" if warm else "")))
    share = flops / s / 1e9 / peak
    out.append(Row("  share of matmul peak", share, "", ">= 40%", share >= 0.4,
                   f"{flops / 1e9:.0f} GFLOP a micro-batch (all logits)"))
    with tempfile.TemporaryDirectory() as tmp:
        theirs = mean(mlx_lm_lora(cfg, loaded.path, examples, Path(tmp)))
        out.append(Row("  mlx_lm.lora", theirs, "s/micro-batch"))
        out.append(Row("  speed vs mlx_lm.lora", theirs / s, "x", ">= 2.0x", theirs / s >= 2.0))
        torch_result = None if skip_peft else pytorch_peft(cfg, loaded, examples, Path(tmp))
    if torch_result is None:
        out.append(Row("  speed vs PyTorch + PEFT", float("nan"), "x", ">= 1.3x", None,
                       "not run: pip install torch peft (make bench does)"))
    else:
        t = mean(torch_result["seconds"])
        out.append(Row("  PyTorch + PEFT (CPU)", t, "s/micro-batch",
                       detail=f"{torch_result['threads']} threads"))
        out.append(Row("  speed vs PyTorch + PEFT", t / s, "x", ">= 1.3x", t / s >= 1.3))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=12)
    parser.add_argument("--skip-peft", action="store_true")
    args = parser.parse_args()
    report(lambda: rows(args.batches, args.skip_peft))


if __name__ == "__main__":
    main()
