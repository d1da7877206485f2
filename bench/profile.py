"""Where a default micro-batch's time goes, on the shipped data (the real workload of
``bench/workload.py``).

1. The step with each lever on and off, interleaved in one process (so the machine's drift
   hits every variant alike): logits at every position or at the answer only; LoRA dropout
   drawn with threefry (mlx-lm's ``nn.Dropout``), hashed (:mod:`sweep.training.dropout`)
   or off (the cost of dropout itself).
2. The matmuls of one micro-batch by layer kind, timed alone at the batches' shapes
   (forward ``x W^T`` and the input gradient ``dy W`` of every block, and the LM head):
   what the step would take if it were matmuls only, at this machine's matmul speed.
3. Padding: the share of a batch's positions that are padding, prompt and answer.

    python -m bench.profile [--batches 6] [--reps 4]

``perf record -g`` on this command adds the kernel-level view (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import time
from functools import partial
from pathlib import Path
from typing import Dict, List

from bench.table import Row, report


def step_variants(loaded, cfg, batches, reps: int) -> Dict[str, float]:
    """Median seconds a micro-batch (forward and backward, no update) of each variant."""
    import mlx.core as mx
    import mlx.nn as nn

    from sweep.training.cpu_ops import fusable_ops_on_cpu
    from sweep.training.heads import split_head
    from sweep.training.losses import masked_cross_entropy

    model = loaded.model
    layers = [m for _, m in model.named_modules() if hasattr(m, "lora_a")]
    hashed = [m.dropout for m in layers]
    stock = [nn.Dropout(1 - d._keep) for d in hashed]
    split = split_head(model)
    variants = {"all logits, threefry dropout (before)": (None, stock),
                "answer-only logits, threefry dropout": (split, stock),
                "answer-only logits, hashed dropout (now)": (split, hashed),
                "answer-only logits, no dropout": (split, None)}

    def compiled(head):
        grad = nn.value_and_grad(model, partial(masked_cross_entropy, split=head))
        state = [model.state, mx.random.state]
        return mx.compile(lambda t, p: grad(model, t, p), inputs=state, outputs=state)

    times: Dict[str, List[float]] = {k: [] for k in variants}
    with fusable_ops_on_cpu(model):
        fns = {k: compiled(head) for k, (head, _) in variants.items()}
        for rep in range(reps + 1):  # the first compiles every shape
            for name, (_, drops) in variants.items():
                model.train(drops is not None)
                for m, d in zip(layers, drops or hashed):
                    m.dropout = d
                start = time.perf_counter()
                for tokens, positions, _ in batches:
                    mx.eval(fns[name](tokens, positions))
                if rep:
                    times[name].append((time.perf_counter() - start) / len(batches))
    for m, d in zip(layers, hashed):
        m.dropout = d
    return {k: sorted(v)[len(v) // 2] for k, v in times.items()}


def matmuls(config: Dict, batches, reps: int) -> Dict[str, float]:
    """Seconds a micro-batch of each layer kind's frozen matmuls (forward and input
    gradient, all blocks), timed alone at the batches' widths."""
    import mlx.core as mx

    h, f, v = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    heads, kv = config["num_attention_heads"], config["num_key_value_heads"]
    d = config.get("head_dim", h // heads)
    n = config["num_hidden_layers"]
    kinds = {"attention q, o": (2, h, heads * d), "attention k, v": (2, h, kv * d),
             "MLP gate, up": (2, h, f), "MLP down": (1, f, h)}
    out = {k: 0.0 for k in [*kinds, "LM head, all positions", "LM head, answer only"]}
    for tokens, positions, _ in batches:
        t = tokens.shape[0] * (tokens.shape[1] - 1)
        answer = int(positions.shape[0])
        shapes = {k: (count * n, t, i, o) for k, (count, i, o) in kinds.items()}
        shapes["LM head, all positions"] = (1, t, h, v)
        shapes["LM head, answer only"] = (1, answer, h, v)
        for name, (count, rows, i, o) in shapes.items():
            x, w, dy = mx.random.normal((rows, i)), mx.random.normal((o, i)), \
                mx.random.normal((rows, o))
            mx.eval(x, w, dy)
            run = mx.compile(lambda x, w, dy: (x @ w.T, dy @ w))
            mx.eval(run(x, w, dy))
            start = time.perf_counter()
            for _ in range(reps):
                mx.eval(run(x, w, dy))
            out[name] += count * (time.perf_counter() - start) / reps / len(batches)
    return out


def rows(n_batches: int = 6, reps: int = 4) -> List[Row]:
    import numpy as np

    from bench.workload import BATCH, shipped
    from sweep.data.batches import iterate_batches, tokenize
    from sweep.training.lora import apply_lora

    cfg, loaded, examples = shipped(n_batches)
    config = json.loads((Path(loaded.path) / "config.json").read_text())
    apply_lora(loaded.model, cfg.lora, seed=0)
    data = tokenize(examples, loaded.tokenizer, cfg.data.mask_prompt)
    batches = list(iterate_batches(data, BATCH, cfg.train.max_seq_length))
    out: List[Row] = []
    steps = step_variants(loaded, cfg, batches, reps)
    before = next(iter(steps.values()))
    for name, s in steps.items():
        out.append(Row(f"step: {name}", s, "s", detail=f"{before / s:.2f}x the first"))
    now = steps["answer-only logits, hashed dropout (now)"]
    mm = matmuls(config, batches, reps)
    for name, s in mm.items():
        out.append(Row(f"matmuls: {name}", s, "s"))
    alone = sum(s for k, s in mm.items() if k != "LM head, all positions")
    out.append(Row("matmuls alone (answer-only head)", alone, "s",
                   detail=f"{alone / now:.0%} of the step now; the rest is elementwise "
                          "kernels, attention, dropout, LoRA's own products and sync"))
    slots = sum(int(t.size) - t.shape[0] for t, _, _ in batches)
    real = sum(int(n) for _, _, n in iterate_batches(data, BATCH, cfg.train.max_seq_length))
    answer = sum(int((np.array(p) >= 0).sum()) for _, p, _ in batches)
    out.append(Row("positions: padding", 1 - (real - len(batches) * BATCH) / slots, ""))
    out.append(Row("positions: answer (the loss counts)", answer / slots, ""))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=6)
    parser.add_argument("--reps", type=int, default=4)
    args = parser.parse_args()
    report(lambda: rows(args.batches, args.reps))


if __name__ == "__main__":
    main()
