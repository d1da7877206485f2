"""What each exported format costs: every file ``sweep-export`` writes is loaded back (the
MLX folder with ``mlx_lm.load``, each GGUF with this project's importer), then answers the
check questions greedily and scores the test split, beside the float model it came from.

- **agreement**: how many greedy answers are identical to the float model's;
- **perplexity**: over the answer tokens of the test split (``export.check_examples``);
  quantization raises it a little, a broken file a lot. A format whose perplexity is more
  than ``export.max_ppl_increase`` above the float model's fails the export (null: 10% for
  8 bits or more, 25% below), and nothing is written to ``output=``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from sweep.errors import InputError

__all__ = ["Format", "Measure", "allowed_increase", "measure", "judge"]


@dataclass
class Measure:
    """The checked questions' greedy answers and the test perplexity of one model."""

    answers: List[str] = field(default_factory=list)
    test_ppl: Optional[float] = None
    test_examples: int = 0


@dataclass
class Format:
    """One exported format, as recorded in ``sweep_export.json``."""

    name: str  # "gguf q8_0", "mlx float32", "mlx 4-bit"
    file: str  # relative to output=: "model-q8_0.gguf", "." for the MLX folder
    bits: int  # bits per weight of its type (the threshold's class)
    bytes: int = 0
    answers: List[str] = field(default_factory=list)
    agreement: int = 0  # greedy answers identical to the float model's
    test_ppl: Optional[float] = None
    ppl_increase: Optional[float] = None  # relative to the float model's
    tensor_types: List[str] = field(default_factory=list)
    max_weight_difference: Optional[float] = None  # float32 GGUF: read back vs written
    note: str = ""  # how it was measured, when not as it is

    def record(self) -> Dict[str, Any]:
        return asdict(self)


def allowed_increase(bits: int, setting: Optional[float]) -> float:
    if setting is not None:
        return float(setting)
    return 0.10 if bits >= 8 else 0.25


def measure(model, tokenizer, prompts, test_set, typed) -> Measure:
    """Greedy answers to ``prompts`` and perplexity over ``test_set`` (None: not scored)."""
    from sweep.evaluation.answers import generate_answers
    from sweep.training.scoring import score

    out = Measure()
    if prompts:
        out.answers = generate_answers(model, tokenizer, prompts, typed.export.check_tokens,
                                       len(prompts)).texts
    if test_set is not None and len(test_set):
        loss = score(model, test_set, typed.train.batch_size, typed.train.max_seq_length)
        out.test_ppl, out.test_examples = float(loss.ppl), int(loss.n_examples)
    return out


def judge(fmt: Format, got: Measure, reference: Measure, setting: Optional[float],
          path: Path) -> Format:
    """Fill ``fmt`` from its measure against the float model's; fail the export (nothing
    written) when its perplexity rose more than allowed."""
    fmt.answers = got.answers
    fmt.agreement = sum(a == b for a, b in zip(got.answers, reference.answers))
    fmt.bytes = _size(path)
    fmt.test_ppl = got.test_ppl
    if got.test_ppl is not None and reference.test_ppl:
        fmt.ppl_increase = got.test_ppl / reference.test_ppl - 1
        allowed = allowed_increase(fmt.bits, setting)
        if not math.isfinite(got.test_ppl) or fmt.ppl_increase > allowed:
            raise InputError(
                f"export: {fmt.file if fmt.file != '.' else 'the MLX folder'} ({fmt.name}) has "
                f"test perplexity {got.test_ppl:.3f}, {fmt.ppl_increase:+.1%} against the float "
                f"model's {reference.test_ppl:.3f} (export.max_ppl_increase allows "
                f"{allowed:.0%}); nothing was written")
    return fmt


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.glob("*.safetensors"))
    return path.stat().st_size if path.exists() else 0
