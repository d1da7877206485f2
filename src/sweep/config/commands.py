"""Schemas of the commands that use a trained adapter: ``sweep-eval`` (``eval.*``),
``sweep-export`` (``export.*``), ``sweep-chat`` (``chat.*``), the model registry that a
sweep's winner is registered in (``registry.*``), ``sweep-status`` (``status.*``), which
reads a study's progress, and ``sweep-proxy`` (``proxy.*``), which serves a study storage to
many workers."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Optional

from sweep.config.checks import ConfigError, require as _require

# export.gguf_type: the GGUF types sweep-export writes, with their bits per weight
GGUF_TYPES = {"f32": 32, "f16": 16, "bf16": 16, "q8_0": 8, "q5_1": 5, "q5_0": 5, "q4_1": 4,
              "q4_0": 4}
# written only by llama.cpp's llama-quantize
K_QUANTS = ("q2_k", "q3_k_s", "q3_k_m", "q3_k_l", "q4_k_s", "q4_k_m", "q5_k_s", "q5_k_m",
            "q6_k")


def k_quant_hint(gguf_type: str) -> str:
    return (f"export.gguf_type={gguf_type}: K-quants are written by llama.cpp's llama-quantize, "
            f"not by the gguf package; export f16 and run: llama-quantize model-f16.gguf "
            f"model-{gguf_type}.gguf {gguf_type.upper()}")


__all__ = ["GGUF_TYPES", "K_QUANTS", "k_quant_hint", "EvalConfig",
           "ExportConfig", "ChatConfig", "RegistryConfig", "StatusFormat",
           "StatusConfig", "ProxyConfig"]


@dataclass
class EvalConfig:
    """Held-out evaluation (``sweep-eval``, and the best trial at the end of a sweep)."""

    after_sweep: bool = True  # evaluate the best trial when a sweep finishes
    base: bool = True  # also evaluate the base model, to compare
    max_examples: Optional[int] = None  # questions answered (loss always covers the split)
    # per answer, greedy: the shipped set's reference answers are ~57 tokens on average,
    # and an answer that has not ended by 128 tokens is rambling
    max_tokens: int = 128
    batch_size: int = 128  # answers decoded at once (continuous batching)
    bootstrap: int = 1000  # resamples for the uncertainty of corpus-level scores
    log_to_mlflow: bool = True  # metrics and the answer table on the evaluated run
    # validation answers at the end of each trial (val_rougeL, val_citation_precision, ...
    # with their standard errors): null = when an objective or constraint needs them
    val_answers: Optional[bool] = None
    val_questions: Optional[int] = None  # how many validation questions; null = all

    def __post_init__(self) -> None:
        _require(self.max_examples is None or self.max_examples > 0, "eval.max_examples",
                 "must be null (every test question) or > 0", self.max_examples)
        _require(self.val_questions is None or self.val_questions > 0, "eval.val_questions",
                 "must be null (every validation question) or > 0", self.val_questions)
        for key in ("max_tokens", "batch_size", "bootstrap"):
            _require(getattr(self, key) > 0, f"eval.{key}", "must be > 0", getattr(self, key))


@dataclass
class ExportConfig:
    """``sweep-export target=... output=DIR``: a fused mlx-lm model folder and GGUF files,
    each loaded back and checked against the float model (docs/shipping.md)."""

    gguf: bool = True  # also write GGUF files where mlx-lm supports the architecture
    # one name or a list: f32, f16, bf16, q8_0, q5_1, q5_0, q4_1, q4_0 (model-<type>.gguf each)
    gguf_type: Any = field(default_factory=lambda: ["q8_0"])
    # the fused MLX folder: null keeps the model's dtype; mlx_bits quantizes it with mlx-lm
    mlx_dtype: Optional[str] = None  # float32 | float16 | bfloat16
    mlx_bits: Optional[int] = None  # 2, 3, 4, 5, 6, 8 (mlx-lm's affine quantization)
    mlx_group_size: int = 64
    # on a quantized base: false keeps the fused folder quantized (mlx-lm re-quantizes
    # W + scale * B A with the base's bits); true writes float weights. GGUF files are
    # always written from float weights.
    dequantize: bool = False
    check_prompts: int = 3  # test questions each format answers greedily (agreement)
    check_tokens: int = 48  # tokens per checked answer
    check_examples: Optional[int] = None  # test examples each format is scored on; null = all
    # the most a format's test perplexity may rise above the float model's (a fraction);
    # null: 0.10 for 8 bits per weight or more, 0.25 below
    max_ppl_increase: Optional[float] = None
    overwrite: bool = False  # replace an existing export in output=

    def __post_init__(self) -> None:
        if isinstance(self.gguf_type, str):
            self.gguf_type = [self.gguf_type]
        types = [str(t).lower() for t in (self.gguf_type or [])]
        for name in types:
            if name in K_QUANTS:
                raise ConfigError(k_quant_hint(name))
            _require(name in GGUF_TYPES, "export.gguf_type",
                     f"must be among {', '.join(GGUF_TYPES)}", name)
        _require(len(set(types)) == len(types), "export.gguf_type", "lists a type twice", types)
        self.gguf_type = types
        _require(self.mlx_dtype in (None, "float32", "float16", "bfloat16"), "export.mlx_dtype",
                 "must be null, float32, float16 or bfloat16", self.mlx_dtype)
        _require(self.mlx_bits in (None, 2, 3, 4, 5, 6, 8), "export.mlx_bits",
                 "must be null or one of 2, 3, 4, 5, 6, 8", self.mlx_bits)
        _require(self.mlx_group_size in (32, 64, 128), "export.mlx_group_size",
                 "must be 32, 64 or 128", self.mlx_group_size)
        _require(self.check_prompts >= 0, "export.check_prompts", "must be >= 0 (0 = no check)",
                 self.check_prompts)
        _require(self.check_tokens > 0, "export.check_tokens", "must be > 0", self.check_tokens)
        _require(self.check_examples is None or self.check_examples >= 0,
                 "export.check_examples", "must be null (the whole test split) or >= 0",
                 self.check_examples)
        _require(self.max_ppl_increase is None or self.max_ppl_increase >= 0,
                 "export.max_ppl_increase", "must be null or >= 0", self.max_ppl_increase)


@dataclass
class ChatConfig:
    """``sweep-chat target=...``: answers streamed in the terminal (``prompt=`` for one)."""

    system: Optional[str] = None  # a system message at the start of every conversation
    max_tokens: int = 256
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    history: bool = True  # earlier turns are part of the next prompt

    def __post_init__(self) -> None:
        _require(self.max_tokens > 0, "chat.max_tokens", "must be > 0", self.max_tokens)
        _require(self.temperature >= 0, "chat.temperature", "must be >= 0", self.temperature)
        _require(0 < self.top_p <= 1, "chat.top_p", "must be in (0, 1]", self.top_p)


@dataclass
class RegistryConfig:
    """The MLflow model registry entry of a sweep's best adapter (a ``pyfunc`` model)."""

    after_sweep: bool = True  # register the winner when a sweep finishes
    name: Optional[str] = None  # null: derived from the study name ("sweep-<study>")
    alias: str = "best"  # moved to the newest winner

    def __post_init__(self) -> None:
        _require(bool(self.alias), "registry.alias", "must not be empty", self.alias)


class StatusFormat(Enum):
    text = "text"  # for people
    json = "json"  # one object (with status.watch: one object a line)


@dataclass
class StatusConfig:
    """``sweep-status``: a study's progress, read from its storage (nothing is written)."""

    watch: float = 0.0  # seconds between prints until Ctrl-C; 0 = print once
    format: StatusFormat = StatusFormat.text
    failures: int = 5  # the most recent failed trials listed
    front: int = 5  # multi-objective: Pareto-front trials listed

    def __post_init__(self) -> None:
        _require(self.watch >= 0, "status.watch", "must be >= 0 (0 = print once)", self.watch)
        for key in ("failures", "front"):
            _require(getattr(self, key) >= 0, f"status.{key}", "must be >= 0",
                     getattr(self, key))


@dataclass
class ProxyConfig:
    """``sweep-proxy``: Optuna's gRPC storage proxy in front of ``hydra.sweeper.storage``."""

    # 127.0.0.1 by default: the proxy has no authentication (see docs/many-machines.md before
    # binding it to an address other machines reach)
    host: str = "127.0.0.1"
    port: int = 13000
    threads: int = 16  # requests served at once (each may hold a database connection)

    def __post_init__(self) -> None:
        _require(0 < self.port < 65536, "proxy.port", "must be in 1..65535", self.port)
        _require(self.threads >= 1, "proxy.threads", "must be >= 1", self.threads)
        _require(bool(self.host), "proxy.host", "must be an address to listen on", self.host)
