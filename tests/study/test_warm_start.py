"""Warm start's mapping of an earlier configuration onto a new space, and the settings a
study records for ``mode=copy`` (the end-to-end runs: tests/sweeps/test_search.py)."""

from __future__ import annotations

from omegaconf import OmegaConf

from hydra_plugins.sweep_optuna._search_space import parse_search_space, resolve_bases
from hydra_plugins.sweep_optuna._warm_start import objective_settings, to_params


def test_values_are_kept_clipped_dropped_or_derived() -> None:
    space = parse_search_space({"lora.rank": "choice(8, 16, 32)",
                                "lora.alpha": "ratio(lora.rank, choice(1, 2))",
                                "optimizer.lr": "tag(log, interval(2e-4, 2e-3))",
                                "train.grad_accumulation": "choice(1, 2)"})
    resolve_bases(space, OmegaConf.create({"lora": {"rank": 16}}))
    params, notes = to_params({"lora.rank": 16, "lora.alpha": 32, "optimizer.lr": 5e-5,
                               "train.grad_accumulation": 8}, space)
    assert params == {"lora.rank": 16, "lora.alpha/lora.rank": 2, "optimizer.lr": 2e-4}
    assert notes == ["optimizer.lr=5e-05 is outside this space: clipped to 0.0002",
                     "train.grad_accumulation=8 is not among [1, 2]: left to the sampler"]
    params, notes = to_params({"lora.rank": 4, "lora.alpha": 12}, space)
    assert params == {} and len(notes) == 4  # 4 and 3 are not choices; lr, accumulation unset


def test_objective_settings_take_the_sweeps_fixed_values_over_the_config() -> None:
    space = parse_search_space({"train.stop_after_epochs": "0.17", "lora.rank": "choice(4, 8)"})
    config = OmegaConf.create({"seed": 1, "model": {"name": "tiny"},
                               "train": {"stop_after_epochs": None, "val_batches": 4}})
    got = objective_settings(config, space, ["val_loss"])
    assert got["train.stop_after_epochs"] == 0.17 and got["train.val_batches"] == 4
    assert got["model.name"] == "tiny" and got["objectives"] == ["val_loss"]
    assert got["data.path"] is None  # not in this config: still compared
