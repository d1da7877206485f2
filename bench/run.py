"""Benchmarks, measured side by side in one run; prints ratios with their goals.

    .venv/bin/python -m bench.run            # everything, SmolLM2-135M (~25 min here)
    .venv/bin/python -m bench.run --quick    # the tiny model, a smoke test of the harness

Sections: matmul peak; the real workload (``bench/workload.py``: a default trial's
micro-batch on the shipped data against ``mlx_lm.lora`` and PyTorch + PEFT;
``bench/trial_share.py``: the evaluation's share of a default trial); trial throughput
against the ``mlx_lm.lora`` CLI (same imported model, same texts, batch, length, LoRA
keys, rank and layers, same BLAS); against PyTorch + PEFT on CPU (when torch and peft are
installed); achieved FLOP/s of a training step as a share of the matmul peak; overhead
of a trial outside its train and eval steps; peak RSS of a trial at batch 4 x 512
tokens; sweep efficiency (``sweep_efficiency.py``: compute for TPE + pruning, TPE and
random to reach the best of an exhaustive grid).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional

from bench.compute import matmul_peak, step_flops
from bench.table import Row, machine, print_table
from sweep import paths, runtime
from sweep.config import compose

ROOT = Path(__file__).resolve().parents[1]
KEYS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
        "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]


def bench_texts(tokenizer, count: int, length: int) -> List[str]:
    """Texts of exactly ``length`` tokens cut from the shipped legal answers."""
    from sweep.data.records import builtin_path

    answers = [json.loads(line)["answer"] for line in
               builtin_path("legal_qa").read_text().splitlines()]
    ids = tokenizer.encode(" ".join(answers * 4))
    texts = []
    for i in range(count):
        chunk = ids[i * length:(i + 1) * length]
        texts.append(tokenizer.decode(chunk))
    return texts


def write_data(folder: Path, texts: List[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, part in (("train", texts), ("valid", texts[:8])):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in part))
    return folder


def ours(model_dir_cfg, texts: List[str], args) -> Dict[str, float]:
    """Our loop on the given texts: tokens/s over the steps after the first (compile)."""
    import mlx.core as mx

    from sweep.config.schema import LoraConfig, OptimizerConfig
    from sweep.data.batches import tokenize
    from sweep.models.loader import load_base
    from sweep.training.events import Listener
    from sweep.training.lora import apply_lora
    from sweep.training.loop import LoopSettings, train
    from sweep.training.optim import build_optimizer

    loaded = load_base(model_dir_cfg)
    apply_lora(loaded.model, LoraConfig(rank=args.rank, alpha=args.rank * 20.0, dropout=0.0,
                                        keys=KEYS, num_layers=args.layers), seed=0)
    examples = [{"text": t} for t in texts]
    train_set = tokenize(examples, loaded.tokenizer, mask_prompt=False)
    val_set = tokenize(examples[:args.batch], loaded.tokenizer, mask_prompt=False)
    reports = []

    class Keep(Listener):
        def on_train_report(self, r):
            reports.append(r)

    optimizer = build_optimizer(OptimizerConfig(lr=1e-5, weight_decay=0.0),
                                lambda s: mx.array(1e-5))
    settings = LoopSettings(iters=args.steps, batch_size=args.batch, grad_accumulation=1,
                            max_seq_length=args.length + 1, max_grad_norm=None,
                            eval_every=10 ** 6, val_batches=1, seed=0)
    train(loaded.model, optimizer, train_set, val_set, settings, listener=Keep())
    steady = reports[args.warmup:]
    tokens_per_sec = sum(r.tokens_per_sec for r in steady) / len(steady)
    return {"tokens_per_sec": tokens_per_sec,
            "s_per_step": args.batch * args.length / tokens_per_sec,
            "peak_gb": max(r.peak_memory_gb for r in reports)}


def mlx_lm_cli(model_dir: str, data: Path, work: Path, args) -> Dict[str, float]:
    """The ``mlx_lm.lora`` CLI on the same model, texts and LoRA, with the same BLAS."""
    from sweep.runtime.blas import blas_choice

    config = work / "lora.yaml"
    config.write_text(json.dumps({
        "lora_parameters": {"rank": args.rank, "scale": 20.0, "dropout": 0.0, "keys": KEYS}}))
    # os.environ has the process's own PATH and TMPDIR (setup() changed only the C-level
    # ones): mlx-lm as shipped, its kernels built without -march, in its own cache
    env = dict(os.environ)
    if blas_choice().path:
        env["LD_PRELOAD"] = blas_choice().path
    cmd = [sys.executable, "-m", "mlx_lm", "lora", "--model", model_dir, "--train",
           "--data", str(data), "--batch-size", str(args.batch), "--iters", str(args.steps),
           "--num-layers", str(args.layers), "--max-seq-length", str(args.length + 1),
           "--steps-per-report", "1", "--steps-per-eval", str(10 ** 6), "--val-batches", "1",
           "--learning-rate", "1e-5", "--adapter-path", str(work / "adapters"),
           "-c", str(config)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    if out.returncode != 0:
        raise RuntimeError(f"mlx_lm.lora failed:\n{out.stderr[-3000:]}")
    # "  <iter>    <loss> ▼    <tok/s>    <k>k" (mlx_lm/cli_ui.py)
    text = re.sub(r"\x1b\[[0-9;]*m", "", out.stdout)  # rich's colours
    rates = [float(m.group(2).replace(",", "")) for m in
             re.finditer(r"^\s+(\d+)\s+[\d.]+ \S\s+([\d,]+)\s+[\d.]+k\s*$", text, re.M)]
    if len(rates) < args.steps:
        raise RuntimeError(f"could not read mlx_lm.lora's reports:\n{out.stdout[-3000:]}")
    steady = rates[args.warmup:]
    tokens_per_sec = sum(steady) / len(steady)
    return {"tokens_per_sec": tokens_per_sec,
            "s_per_step": args.batch * args.length / tokens_per_sec}


PEFT_SCRIPT = r"""
import json, sys, time, torch
from transformers import LlamaForCausalLM
from peft import LoraConfig, get_peft_model
model_dir, data, batch, length, steps, warmup, rank, layers = sys.argv[1:9]
batch, length, steps, warmup, rank, layers = map(int, (batch, length, steps, warmup, rank, layers))
torch.manual_seed(0)
model = LlamaForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)
n = model.config.num_hidden_layers
model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=rank * 20, lora_dropout=0.0,
    target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    layers_to_transform=list(range(n - layers, n))))
from transformers import AutoTokenizer
tok = AutoTokenizer.from_pretrained(model_dir)
texts = [json.loads(l)["text"] for l in open(data)]
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
times = []
for step in range(steps):
    chunk = texts[step * batch:(step + 1) * batch]
    ids = [tok.encode(t)[:length] for t in chunk]
    width = max(map(len, ids))
    x = torch.zeros((batch, width), dtype=torch.long)
    for i, row in enumerate(ids):
        x[i, :len(row)] = torch.tensor(row)
    start = time.perf_counter()
    out = model(input_ids=x, labels=x)
    out.loss.backward()
    opt.step(); opt.zero_grad()
    times.append(time.perf_counter() - start)
steady = times[warmup:]
print(json.dumps({"s_per_step": sum(steady) / len(steady), "tokens": batch * length,
                  "threads": torch.get_num_threads()}))
"""


def pytorch_peft(model_dir: str, data: Path, args) -> Optional[Dict[str, float]]:
    try:
        import peft  # noqa: F401
        import torch  # noqa: F401
    except ImportError:
        return None
    out = subprocess.run([sys.executable, "-c", PEFT_SCRIPT, model_dir, str(data / "train.jsonl"),
                          str(args.batch), str(args.length), str(args.steps), str(args.warmup),
                          str(args.rank), str(args.layers)],
                         capture_output=True, text=True, timeout=3600,
                         env={k: v for k, v in os.environ.items() if k != "LD_PRELOAD"})
    if out.returncode != 0:
        raise RuntimeError(f"PyTorch + PEFT failed:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["tokens_per_sec"] = result["tokens"] / result["s_per_step"]
    return result


def overhead(args) -> Dict[str, float]:
    """Two trials in one process through run_trial (MLflow on): the share of wall time
    outside the train and eval steps, for the first (loads the model) and the second."""
    from sweep.trial import run_trial

    shares = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(2):
            cfg = compose([f"model={args.model}", f"train.iters={args.overhead_iters}",
                           "train.val_batches=2", f"mlflow.tracking_uri=sqlite:///{tmp}/m.db",
                           f"lora.rank={4 * (i + 1)}"])
            result = run_trial(cfg, Path(tmp) / f"trial{i}")
            inside = result.train.train_seconds + result.train.eval_seconds
            shares.append(1 - inside / result.seconds)
    return {"first": shares[0], "second": shares[1]}


RSS_SCRIPT = r"""
import resource, sys, tempfile
import sweep.runtime
sweep.runtime.setup()
from sweep.config import compose
from sweep.trial import run_trial
with tempfile.TemporaryDirectory() as tmp:
    cfg = compose(sys.argv[1:] + [f"mlflow.tracking_uri=sqlite:///{tmp}/m.db"])
    run_trial(cfg, tmp + "/out")
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6)
"""


def peak_rss(args, data: Path, checkpoint: bool) -> float:
    out = subprocess.run([sys.executable, "-c", RSS_SCRIPT,
                          f"train.grad_checkpoint={str(checkpoint).lower()}",
                          f"model={args.model}", "data=jsonl", f"data.path={data}",
                          "data.format=text", "data.mask_prompt=false", "train.batch_size=4",
                          "train.max_seq_length=513", "train.iters=4",
                          "train.grad_accumulation=2", "train.val_batches=1"],
                         capture_output=True, text=True, timeout=3600, env=dict(os.environ))
    if out.returncode != 0:
        raise RuntimeError(f"RSS trial failed:\n{out.stderr[-3000:]}")
    return float(out.stdout.strip().splitlines()[-1])  # ru_maxrss is in KiB -> GB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny model, few steps")
    parser.add_argument("--skip-peft", action="store_true")
    parser.add_argument("--skip-sweep", action="store_true", help="no sweep-efficiency grid")
    parser.add_argument("--curves", type=Path, help="replay the sweep-efficiency strategies "
                        "from grid curves saved by an earlier run instead of training the grid")
    args = parser.parse_args()
    runtime.setup()  # before mlx is imported
    args.model = "tiny" if args.quick else "smollm2_135m"
    args.batch, args.length, args.rank, args.layers = 4, 160, 8, (2 if args.quick else 16)
    args.steps, args.warmup = (4, 1) if args.quick else (12, 2)
    args.overhead_iters = 4 if args.quick else 16

    from sweep.config import to_typed
    from sweep.models.loader import load_base

    model_cfg = to_typed(compose([f"model={args.model}"])).model
    loaded = load_base(model_cfg)
    config = json.loads((Path(loaded.path) / "config.json").read_text())
    texts = bench_texts(loaded.tokenizer, args.batch * args.steps, args.length)
    rows: List[Row] = []
    print(f"machine: {machine()}", flush=True)

    peak = matmul_peak()
    rows.append(Row("matmul peak (float32, 2048^3)", peak, "GFLOP/s"))
    if not args.quick:  # the workload users run first (bench/workload.py)
        from bench import trial_share, workload

        rows += workload.rows(skip_peft=args.skip_peft, peak=peak)[1:] + trial_share.rows()
    with tempfile.TemporaryDirectory() as tmp:
        data = write_data(Path(tmp) / "data", texts)
        mine = ours(model_cfg, texts, args)
        rows.append(Row("4 x 160 texts: sweep trial loop", mine["tokens_per_sec"], "tokens/s",
                        detail=f"{mine['s_per_step']:.2f} s/step, peak {mine['peak_gb']:.2f} GB"))
        theirs = mlx_lm_cli(loaded.path, data, Path(tmp), args)
        rows.append(Row("mlx_lm.lora CLI", theirs["tokens_per_sec"], "tokens/s",
                        detail=f"{theirs['s_per_step']:.2f} s/step"))
        ratio = mine["tokens_per_sec"] / theirs["tokens_per_sec"]
        rows.append(Row("speed vs mlx_lm.lora", ratio, "x", ">= 1.3x", ratio >= 1.3))
        torch_result = None if args.skip_peft else pytorch_peft(loaded.path, data, args)
        if torch_result is None:
            rows.append(Row("speed vs PyTorch + PEFT", float("nan"), "x", "> 1x", None,
                            "not run: pip install torch peft (or --skip-peft)"))
        else:
            rows.append(Row("PyTorch + PEFT (CPU)", torch_result["tokens_per_sec"], "tokens/s",
                            detail=f"{torch_result['s_per_step']:.2f} s/step, "
                                   f"{torch_result['threads']} threads"))
            ratio = mine["tokens_per_sec"] / torch_result["tokens_per_sec"]
            rows.append(Row("speed vs PyTorch + PEFT", ratio, "x", "> 1x", ratio > 1))
        flops = step_flops(config, args.batch, args.length, args.layers, args.rank)
        achieved = flops / mine["s_per_step"] / 1e9
        rows.append(Row("achieved FLOP/s of a step", achieved, "GFLOP/s",
                        detail=f"{flops / 1e9:.0f} GFLOP per step"))
        rows.append(Row("share of matmul peak", achieved / peak, "", ">= 50%",
                        achieved / peak >= 0.5))
        share = overhead(args)
        rows.append(Row("trial overhead (model already loaded)", share["second"], "", "<= 3%",
                        share["second"] <= 0.03, f"first trial (loads model): {share['first']:.1%}"))
        long_texts = bench_texts(loaded.tokenizer, 16, 512)
        long_data = write_data(Path(tmp) / "long", long_texts)
        rss = peak_rss(args, long_data, checkpoint=True)
        plain = peak_rss(args, long_data, checkpoint=False)
        rows.append(Row("peak RSS, batch 4 x 512 tokens", rss, "GB", "<= 3 GB", rss <= 3.0,
                        f"gradient checkpointing (auto at this size); without: {plain:.2f} GB"))
        if not args.skip_sweep:
            from bench import sweep_efficiency as eff

            grid = {"optimizer.lr": [1e-4, 1e-2], "lora.rank": [4, 8]} if args.quick \
                else eff.GRID
            iters, every = (8, 4) if args.quick else (16, 4)
            if args.curves:
                curves, grid = eff.load_curves(args.curves)
                print(f"grid curves replayed from {args.curves}")
            else:
                curves = eff.record_curves(compose, args.model, iters, every,
                                           Path(tmp) / "grid", grid)
                saved = paths.cache_root() / "bench" / f"grid-curves-{args.model}.json"
                eff.save_curves(curves, grid, saved)
                print(f"grid curves saved to {saved} (replay: --curves {saved})")
            rows += [Row(*r) for r in eff.summarise(curves, iters, grid=grid)]
    print_table(rows)


if __name__ == "__main__":
    main()
