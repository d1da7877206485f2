"""What the benchmarks measure a step against: this machine's matmul peak and the matmul
FLOPs of a LoRA step (``bench/run.py`` and ``bench/workload.py`` both use them)."""

from __future__ import annotations

import time
from typing import Dict


def matmul_peak(n: int = 2048, repeats: int = 10) -> float:
    import mlx.core as mx

    a, b = mx.random.normal((n, n)), mx.random.normal((n, n))
    mx.eval(a, b, a @ b)
    start = time.perf_counter()
    for _ in range(repeats):
        mx.eval(a @ b)
    return 2 * n ** 3 * repeats / (time.perf_counter() - start) / 1e9


def step_flops(config: Dict, batch: int, length: int, layers: int, rank: int) -> float:
    """Matmul FLOPs of one LoRA step: forward through every block and the LM head,
    backward (activation gradients) through the adapted blocks and the head, plus
    attention scores and LoRA's own products. Weight gradients of frozen layers: none."""
    h, f, v = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    heads, kv = config["num_attention_heads"], config["num_key_value_heads"]
    d = config.get("head_dim", h // heads)
    n = config["num_hidden_layers"]
    t = batch * length
    block = 2 * t * (h * heads * d + 2 * h * kv * d + heads * d * h + 3 * h * f)
    attention = 2 * 2 * batch * heads * length * length * d
    head = 2 * t * h * v
    lora_dims = [(h, heads * d), (h, kv * d), (h, kv * d), (heads * d, h), (h, f), (h, f), (f, h)]
    lora = sum(2 * t * rank * (i + o) for i, o in lora_dims)
    forward = n * (block + attention) + head + layers * lora
    backward = layers * (block + 2 * attention + 3 * lora) + head
    return forward + backward
