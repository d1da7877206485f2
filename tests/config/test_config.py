"""Composition of the real config tree: every option, overrides, bad values, seeds."""

from __future__ import annotations

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import MissingMandatoryValue

from conftest import CONF, compose_config
from sweep.config import flatten, to_typed
from sweep.config.schema import (ConfigError, DataFormat, ModelSource, OptimizerName,
                                 SchedulerName)

GROUPS = ["model", "lora", "optimizer", "scheduler", "data"]
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((CONF / g).glob("*.yaml"))]
NEEDS = {("data", "jsonl"): ["data.path=/tmp/x.jsonl"]}


@pytest.mark.parametrize("group,option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_composes_and_validates(group: str, option: str) -> None:
    cfg = compose_config([f"{group}={option}", *NEEDS.get((group, option), [])])
    to_typed(cfg)
    composed = OmegaConf.to_container(cfg[group], enum_to_str=True)
    for key, value in OmegaConf.to_container(OmegaConf.load(CONF / group / f"{option}.yaml")).items():
        assert composed[key] == value, f"{group}.{key}"


def test_defaults_match_the_seeds() -> None:
    typed = to_typed(compose_config())
    assert typed.model.source is ModelSource.gguf
    assert (typed.lora.rank, typed.lora.alpha, typed.lora.dropout) == (16, 32.0, 0.05)
    assert typed.lora.scale == 2.0
    assert len(typed.lora.keys) == 7
    assert typed.optimizer.name is OptimizerName.adamw and typed.optimizer.lr == 2e-4
    assert typed.scheduler.name is SchedulerName.cosine and typed.scheduler.min_lr_ratio == 0.1
    assert typed.train.max_grad_norm == 1.0 and typed.train.batch_size == 4
    assert typed.data.format is DataFormat.qa and typed.data.mask_prompt


@pytest.mark.parametrize(
    "overrides,expected",
    [
        (["lora.rank=8", "lora.alpha=32"], {"lora.rank": 8, "lora.alpha": 32.0}),
        (["optimizer=sgd", "optimizer.lr=0.1"], {"optimizer.name": "sgd", "optimizer.lr": 0.1}),
        (["scheduler=linear", "scheduler.warmup_steps=100"], {"scheduler.warmup_steps": 100}),
        (["scheduler.warmup_ratio=null", "scheduler.warmup_steps=100"],
         {"scheduler.warmup_steps": 100, "scheduler.warmup_ratio": None}),
        (["train.grad_accumulation=8", "train.epochs=3"],
         {"train.grad_accumulation": 8, "train.epochs": 3.0}),
        (["lora=attention", "lora.num_layers=16"], {"lora.num_layers": 16}),
        (["model=llama32_3b_8bit"], {"model.bits": 8, "model.quantize": True}),
        (["model.quantize=true"], {"model.quantize": True}),
        (["data.mask_prompt=false"], {"data.mask_prompt": False}),
        (["seed=7"], {"seed": 7}),
    ],
)
def test_overrides_compose(overrides, expected) -> None:
    flat = flatten(to_typed(compose_config(overrides)))
    for key, value in expected.items():
        assert flat[key] == value


@pytest.mark.parametrize(
    "override,key",
    [
        ("lora.rank=-1", "lora.rank"),
        ("lora.rank=0", "lora.rank"),
        ("lora.alpha=0", "lora.alpha"),
        ("lora.dropout=1.0", "lora.dropout"),
        ("lora.num_layers=0", "lora.num_layers"),
        ("optimizer.lr=0", "optimizer.lr"),
        ("optimizer.lr=-1e-4", "optimizer.lr"),
        ("optimizer.weight_decay=-0.1", "optimizer.weight_decay"),
        ("scheduler.min_lr_ratio=1.5", "scheduler.min_lr_ratio"),
        ("scheduler.warmup_steps=10", "scheduler.warmup_ratio"),
        ("train.batch_size=0", "train.batch_size"),
        ("train.grad_accumulation=0", "train.grad_accumulation"),
        ("train.iters=2", "train.iters"),
        ("train.max_grad_norm=0", "train.max_grad_norm"),
        ("train.val_batches=0", "train.val_batches"),
        ("train.save_every_minutes=-1", "train.save_every_minutes"),
        ("train.keep_checkpoints=0", "train.keep_checkpoints"),
        ("train.early_stop_patience=0", "train.early_stop_patience"),
        ("train.eval_every_epochs=0", "train.eval_every_epochs"),
        ("train.resume=' '", "train.resume"),
        ("data.valid_fraction=0", "data.valid_fraction"),
        ("model.bits=7", "model.bits"),
        ("seed=-1", "seed"),
    ],
)
def test_invalid_values_name_the_key(override: str, key: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{key}="):
        to_typed(compose_config([override]))


@pytest.mark.parametrize(
    "override,words",
    [
        ("lora.rank=abc", ["lora.rank", "abc"]),
        ("optimizer.lr=fast", ["optimizer.lr", "fast"]),
        ("optimizer.name=lion", ["optimizer.name", "lion"]),
        ("train.batch_size=2.5", ["train.batch_size", "2.5"]),
        ("lora.ranks=8", ["lora.ranks"]),
        ("optimizer=lion", ["optimizer", "lion", "adamw"]),
        ("model=gpt5", ["model", "gpt5", "smollm2_135m"]),
    ],
)
def test_composition_errors_name_the_key(override: str, words) -> None:
    with pytest.raises(ConfigCompositionException) as error:
        compose_config([override])
    text = str(error.value) + str(error.value.__cause__)
    for word in words:
        assert word in text


def test_own_data_requires_a_path() -> None:
    with pytest.raises(MissingMandatoryValue, match="data.path"):
        to_typed(compose_config(["data=jsonl"]))


def test_scale_is_alpha_over_rank_computed_once() -> None:
    typed = to_typed(compose_config(["lora.rank=8", "lora.alpha=24"]))
    assert typed.lora.scale == 3.0
    assert "scale" not in compose_config().lora  # not a config key users could desync


def test_same_seed_same_composed_config() -> None:
    a = compose_config(["seed=123", "lora.rank=4"])
    b = compose_config(["seed=123", "lora.rank=4"])
    assert a == b
    assert flatten(to_typed(a)) == flatten(to_typed(b))


def test_the_automatic_study_name_follows_the_data_file(tmp_path) -> None:
    """Two data files never share a study; the shipped set keeps its plain name."""
    from hydra import compose as hydra_compose, initialize_config_dir
    from omegaconf import OmegaConf

    from sweep.config import CONFIG_DIR, register

    register()
    names = []
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        for extra in ([], [f"data.path={tmp_path / 'a' / 'qa.jsonl'}"],
                      [f"data.path={tmp_path / 'b' / 'qa.jsonl'}"]):
            overrides = ["data=jsonl", *extra] if extra else []
            cfg = hydra_compose("config", overrides=overrides, return_hydra_config=True)
            names.append(OmegaConf.select(cfg, "hydra.sweeper.study_name"))
    assert names[0] == "lora_smollm2_135m_legal_qa"
    assert names[1].startswith("lora_smollm2_135m_jsonl-qa-") and names[1] != names[2]


def test_budgets_and_rungs_in_epochs_become_micro_batches() -> None:
    from sweep.trial import train_settings

    typed = to_typed(compose_config(["train.epochs=2", "train.eval_every_epochs=0.5",
                                     "train.save_every_minutes=10",
                                     "train.early_stop_patience=3"]))
    settings = train_settings(typed, n_train=570)  # the shipped train split, batch 4
    assert settings.iters == 285 and settings.eval_every_iters == 71  # 2 x 142.5, 0.5 x 142.5
    assert settings.save_every_seconds == 600 and settings.early_stop_patience == 3
