"""Schemas of the commands that use a trained adapter: ``sweep-eval`` (``eval.*``),
``sweep-export`` (``export.*``), ``sweep-chat`` (``chat.*``), the model registry that a
sweep's winner is registered in (``registry.*``), ``sweep-status`` (``status.*``), which
reads a study's progress, and ``sweep-proxy`` (``proxy.*``), which serves a study storage to
many workers."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Optional

from sweep.config.checks import require as _require

__all__ = ["EvalConfig", "ExportConfig", "ChatConfig", "RegistryConfig", "StatusFormat",
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
    """``sweep-export target=... output=DIR``: a fused mlx-lm model folder and a GGUF file."""

    gguf: bool = True  # also write <output>/model.gguf where mlx-lm supports the architecture
    # on a quantized base: false keeps the fused folder quantized (mlx-lm re-quantizes
    # W + scale * B A with the base's bits); true writes float weights. The GGUF is always
    # written from float weights (mlx-lm's GGUF writer takes no quantized tensors).
    dequantize: bool = False
    check_prompts: int = 3  # test questions whose greedy answers the read-back GGUF must match
    check_tokens: int = 48  # tokens per checked answer
    overwrite: bool = False  # replace an existing export in output=

    def __post_init__(self) -> None:
        _require(self.check_prompts >= 0, "export.check_prompts", "must be >= 0 (0 = no check)",
                 self.check_prompts)
        _require(self.check_tokens > 0, "export.check_tokens", "must be > 0", self.check_tokens)


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
