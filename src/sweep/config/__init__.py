"""Config schemas, their registration with Hydra, and the typed boundary.

``register()`` stores the schema under the name ``sweep_schema``, which
``conf/config.yaml`` lists first in its defaults, so Hydra type-checks every group.
``to_typed()`` turns the composed ``DictConfig`` into a validated ``SweepConfig``.

``CONFIG_DIR`` is the config tree every console script and ``compose()`` read: the
environment variable ``SWEEP_CONFIG_DIR`` when set; else the project's root ``conf/`` in
a source checkout (an editable install, so edits take effect at once); else the copy a
wheel carries as ``sweep/conf`` (made by ``setup.py`` from the root ``conf/``).
"""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence

from omegaconf import DictConfig, OmegaConf, open_dict

from sweep.config.schema import *  # noqa: F401,F403
from sweep.config.schema import ConfigError, SweepConfig

SCHEMA_NAME = "sweep_schema"
CONFIG_ENV = "SWEEP_CONFIG_DIR"
CHECKOUT_CONF = Path(__file__).resolve().parents[3] / "conf"  # <root>/conf, from <root>/src/sweep
PACKAGED_CONF = Path(__file__).resolve().parents[1] / "conf"  # sweep/conf, in a wheel


def is_config_dir(path: Path) -> bool:
    """Whether ``path`` looks like this project's config tree."""
    return (path / "config.yaml").is_file() and (path / "model").is_dir()


def find_config_dir(environ: Optional[Mapping[str, str]] = None,
                    checkout: Path = CHECKOUT_CONF, packaged: Path = PACKAGED_CONF) -> Path:
    """``$SWEEP_CONFIG_DIR``, else the checkout's ``conf/``, else the packaged one.

    Returns ``packaged`` when neither exists; :func:`check_config_dir` says so.
    """
    override = (os.environ if environ is None else environ).get(CONFIG_ENV)
    if override:
        return Path(override).expanduser().resolve()
    return checkout if is_config_dir(checkout) else packaged


def check_config_dir(path: Optional[Path] = None) -> Path:
    """``path`` (default ``CONFIG_DIR``) if it holds ``config.yaml``, else a ConfigError
    naming where it looked."""
    path = CONFIG_DIR if path is None else path
    if (path / "config.yaml").is_file():
        return path
    if path not in (CHECKOUT_CONF, PACKAGED_CONF):
        raise ConfigError(f"{CONFIG_ENV}: no config.yaml in {path}")
    raise ConfigError(f"no config tree: neither {CHECKOUT_CONF} (a source checkout) nor "
                      f"{PACKAGED_CONF} (an installed wheel) holds config.yaml and model/; "
                      f"reinstall sweep or set {CONFIG_ENV}")


CONFIG_DIR = find_config_dir()


def register() -> None:
    """Store the root schema in Hydra's ConfigStore (idempotent)."""
    from hydra.core.config_store import ConfigStore

    from sweep.config.resolvers import register_resolvers

    register_resolvers()
    ConfigStore.instance().store(name=SCHEMA_NAME, node=SweepConfig)


def compose(overrides: Sequence[str] = ()) -> DictConfig:
    """The project's config composed as ``sweep`` would, without running anything
    (for tests and benchmarks)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    config_dir = check_config_dir()
    register()
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir), job_name="sweep"):
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
    from sweep.secrets import refuse_in_values

    refuse_in_values(flatten(typed).items())  # credentials come from the environment
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
