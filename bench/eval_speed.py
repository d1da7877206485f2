"""Answer generation for held-out evaluation: batched (mlx-lm's ``batch_generate``, as
``sweep-eval`` runs it) against one question at a time (``mlx_lm.generate``), side by
side in one run, on the shipped data's test questions with the default settings.

    python -m bench.eval_speed [--sequential 8] [--model smollm2_135m]
"""

from __future__ import annotations

import argparse
import time

from sweep import runtime
from sweep.config import compose, to_typed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2_135m")
    parser.add_argument("--sequential", type=int, default=8,
                        help="questions answered one at a time (the slow baseline)")
    parser.add_argument("--batch-size", type=int, default=None)
    args = parser.parse_args()
    runtime.setup()  # before mlx is imported
    from bench.table import Row, machine, print_table

    from mlx_lm import generate

    from sweep.data.records import load_splits
    from sweep.evaluation.answers import generate_answers, questions
    from sweep.models.loader import load_base

    typed = to_typed(compose([f"model={args.model}"]))
    batch = args.batch_size or typed.eval.batch_size
    loaded = load_base(typed.model, typed.cache_dir, typed.seed)
    qs = questions(load_splits(typed.data, typed.seed).test, loaded.tokenizer)
    max_tokens = typed.eval.max_tokens
    print(f"machine: {machine()}\n{len(qs)} test questions, max_tokens {max_tokens}, "
          f"batch {batch}", flush=True)
    loaded.model.eval()
    generate_answers(loaded.model, loaded.tokenizer, [qs[0].prompt], 8, 1)  # warm up

    batched = generate_answers(loaded.model, loaded.tokenizer, [q.prompt for q in qs],
                               max_tokens, batch)
    subset = qs[:args.sequential]
    start, tokens, same = time.perf_counter(), 0, 0
    for q, expected in zip(subset, batched.texts):
        text = generate(loaded.model, loaded.tokenizer, q.prompt, max_tokens=max_tokens)
        tokens += len(loaded.tokenizer.encode(text, add_special_tokens=False))
        same += text.strip() == expected
    sequential = tokens / (time.perf_counter() - start)
    speedup = batched.tokens_per_sec / sequential
    both = 2 * batched.seconds
    print_table([
        Row("one at a time (mlx_lm.generate)", sequential, "tokens/s",
            detail=f"{len(subset)} questions"),
        Row(f"batched (batch_generate, {batch} at once)", batched.tokens_per_sec, "tokens/s",
            ">= 150", batched.tokens_per_sec >= 150,
            f"{len(qs)} questions, {batched.generated_tokens} tokens in "
            f"{batched.seconds:.1f} s"),
        Row("speed-up", speedup, "x"),
        Row("base + adapter answers, whole test split", both, "s", "~120 s", both <= 150,
            "twice the batched time (sweep-eval fuses the adapter for decoding)"),
        Row("same answer batched and one at a time", same / max(len(subset), 1), "",
            detail=f"{same} of {len(subset)} (greedy; batching pads and may round "
                   "differently)"),
    ])


if __name__ == "__main__":
    main()
