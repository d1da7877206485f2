"""Config schemas, their registration with Hydra, and the typed boundary.

``register()`` stores the schema under the name ``sweep_schema``, which
``conf/config.yaml`` lists first in its defaults, so Hydra type-checks every group.
``to_typed()`` turns the composed ``DictConfig`` into a validated ``SweepConfig``.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Any, Dict, Sequence

from omegaconf import DictConfig, OmegaConf, open_dict

from sweep.config.schema import *  # noqa: F401,F403
from sweep.config.schema import ConfigError, SweepConfig

SCHEMA_NAME = "sweep_schema"
CONFIG_DIR = Path(__file__).resolve().parents[3] / "conf"  # the project's conf/ (editable install)


def register() -> None:
    """Store the root schema in Hydra's ConfigStore (idempotent)."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name=SCHEMA_NAME, node=SweepConfig)


def compose(overrides: Sequence[str] = ()) -> DictConfig:
    """The project's config composed as ``sweep`` would, without running anything
    (for tests and benchmarks)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    register()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR), job_name="sweep"):
        return hydra_compose(config_name="config", overrides=list(overrides))


def to_typed(cfg: DictConfig) -> SweepConfig:
    """Validate a composed config and return it as dataclasses.

    Range and cross-field errors raise :class:`ConfigError` naming the key.
    """
    node = cfg
    if "hydra" in node:
        node = cfg.copy()
        with open_dict(node):
            del node["hydra"]
    if OmegaConf.get_type(node) is not SweepConfig:
        node = OmegaConf.merge(OmegaConf.structured(SweepConfig), node)
    try:
        typed = OmegaConf.to_object(node)
    except ConfigError:
        raise
    except Exception as error:  # OmegaConf wraps errors raised in __post_init__
        cause = error.__cause__ or error.__context__
        if isinstance(cause, ConfigError):
            raise cause from None
        raise
    assert isinstance(typed, SweepConfig)
    return typed


def flatten(node: Any, prefix: str = "") -> Dict[str, Any]:
    """``{"lora.rank": 16, ...}`` from a config or dataclass, enums as their names."""
    if not isinstance(node, DictConfig):
        node = OmegaConf.structured(node)
    out: Dict[str, Any] = {}
    for key, value in OmegaConf.to_container(node, resolve=True, enum_to_str=True).items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(OmegaConf.create(value), f"{name}."))
        else:
            out[name] = value.name if isinstance(value, Enum) else value
    return out
