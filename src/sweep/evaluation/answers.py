"""Greedy answers to held-out questions, generated in batches.

mlx-lm's ``batch_generate`` (continuous batching with a KV cache per sequence) does the
decoding; one-at-a-time ``mlx_lm.generate`` of SmolLM2-135M ran at 17 tokens/s on the
2-core development machine, too slow to answer a test split twice (bench/eval_speed.py
measures both side by side).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, List, Sequence

__all__ = ["Question", "questions", "Answers", "generate_answers", "fused_adapters"]


@dataclass(frozen=True)
class Question:
    question: str  # the last user message
    reference: str  # the expected answer
    prompt: List[int]  # the conversation up to the answer, with the generation prompt


def questions(examples: Sequence[dict], tokenizer: Any) -> List[Question]:
    """Chat examples (``{"messages": [...]}`` ending with the assistant's answer) as
    prompts for the model's own chat template."""
    out = []
    for example in examples:
        messages = example["messages"]
        context, reference = messages[:-1], messages[-1]["content"]
        user = [m["content"] for m in context if m["role"] == "user"]
        prompt = tokenizer.apply_chat_template(context, add_generation_prompt=True,
                                               tokenize=True)
        if isinstance(prompt, dict) or hasattr(prompt, "input_ids"):
            prompt = prompt["input_ids"]
        out.append(Question(user[-1] if user else "", reference, list(prompt)))
    return out


@dataclass(frozen=True)
class Answers:
    texts: List[str]
    generated_tokens: int
    seconds: float

    @property
    def tokens_per_sec(self) -> float:
        return self.generated_tokens / max(self.seconds, 1e-9)


def generate_answers(model: Any, tokenizer: Any, prompts: Sequence[Sequence[int]],
                     max_tokens: int, batch_size: int) -> Answers:
    """Greedy answers (at most ``max_tokens`` each), ``batch_size`` decoded at once."""
    from mlx_lm.generate import batch_generate

    model.eval()
    start = time.perf_counter()
    response = batch_generate(model, tokenizer, [list(p) for p in prompts],
                              max_tokens=max_tokens, completion_batch_size=batch_size,
                              prefill_batch_size=min(batch_size, 8), return_token_ids=True)
    seconds = time.perf_counter() - start
    tokens = sum(len(ids) for ids in response.token_ids)
    return Answers([t.strip() for t in response.texts], tokens, seconds)



@contextmanager
def fused_adapters(model: Any) -> Iterator[None]:
    """Meanwhile, each float LoRA layer is replaced by one linear layer holding
    ``W + scale * B A`` (mlx-lm's own ``fuse``), so decoding runs no extra matmuls;
    the LoRA layers are put back after. Quantized layers stay unfused (fusing would
    re-quantize, and answers would then differ from the adapter's own)."""
    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_unflatten

    originals, fused = [], []
    for name, module in model.named_modules():
        if hasattr(module, "fuse") and isinstance(getattr(module, "linear", None), nn.Linear) \
                and not isinstance(module.linear, nn.QuantizedLinear):
            originals.append((name, module))
            fused.append((name, module.fuse()))
    if fused:
        model.update_modules(tree_unflatten(fused))
        mx.eval(model.parameters())
    try:
        yield
    finally:
        if originals:
            model.update_modules(tree_unflatten(originals))
