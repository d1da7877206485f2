"""Compose the project's real config tree (for the benchmarks)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from omegaconf import DictConfig

from sweep.config import register

CONF = Path(__file__).resolve().parents[1] / "conf"
register()


def compose(overrides: Sequence[str] = ()) -> DictConfig:
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF), job_name="bench"):
        return hydra_compose(config_name="config", overrides=list(overrides))
