"""LoRA/DoRA layers from mlx-lm, configured with alpha (scale = alpha / rank, or
alpha / sqrt(rank) with ``lora.scaling=rslora``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten
from mlx_lm.tuner.utils import linear_to_lora_layers

from sweep.config.schema import ConfigError, LoraConfig
from sweep.training.dropout import use_hash_dropout

__all__ = ["apply_lora", "adapter_config", "save_adapter", "load_adapter", "trainable_parameters",
           "ADAPTER_FILE", "ADAPTER_CONFIG_FILE"]

ADAPTER_FILE = "adapters.safetensors"
ADAPTER_CONFIG_FILE = "adapter_config.json"


def adapter_config(cfg: LoraConfig, num_model_layers: int) -> Dict[str, Any]:
    """The adapter_config.json that ``mlx_lm.load(..., adapter_path=...)`` reads."""
    return {
        "fine_tune_type": "dora" if cfg.use_dora else "lora",
        "num_layers": num_model_layers if cfg.num_layers == -1 else cfg.num_layers,
        "lora_parameters": {
            "rank": cfg.rank,
            "scale": cfg.scale,
            "dropout": cfg.dropout,
            "keys": list(cfg.keys) if cfg.keys is not None else None,
        },
        "alpha": cfg.alpha,
        "scaling": cfg.scaling.value,  # how scale came from alpha (mlx-lm reads scale only)
    }


def apply_lora(model: nn.Module, cfg: LoraConfig, seed: int) -> Dict[str, Any]:
    """Freeze the model and add adapters (initialised from ``seed``); returns the
    adapter config. Unknown ``lora.keys`` are an error, not a silent no-op."""
    layers = model.layers
    if cfg.num_layers > len(layers):
        raise ConfigError(f"lora.num_layers={cfg.num_layers}: the model has {len(layers)} blocks")
    if cfg.keys is not None:
        present = {name for name, _ in layers[0].named_modules()}
        missing = [k for k in cfg.keys if k not in present]
        if missing:
            linear = sorted(n for n, m in layers[0].named_modules()
                            if isinstance(m, (nn.Linear, nn.QuantizedLinear)))
            raise ConfigError(f"lora.keys: {missing} not found in a block of this model; "
                              f"its linear layers are {linear}")
    config = adapter_config(cfg, len(layers))
    model.freeze()
    mx.random.seed(seed)
    linear_to_lora_layers(model, config["num_layers"], config["lora_parameters"],
                          use_dora=cfg.use_dora)
    # the same dropout, its mask fused (sweep.training.dropout)
    use_hash_dropout(model, config["lora_parameters"]["dropout"])
    mx.eval(model.trainable_parameters())
    return config


def trainable_parameters(model: nn.Module) -> int:
    return sum(v.size for _, v in tree_flatten(model.trainable_parameters()))


def save_adapter(model: nn.Module, config: Dict[str, Any], folder: Path) -> Path:
    """Write adapters.safetensors (never pickle) and adapter_config.json to ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    weights = dict(tree_flatten(model.trainable_parameters()))
    tmp = folder / f".{ADAPTER_FILE}.tmp.safetensors"
    mx.save_safetensors(str(tmp), weights)
    from sweep.testing.faults import point

    point("save_adapter")  # written, not yet in place
    tmp.replace(folder / ADAPTER_FILE)
    (folder / ADAPTER_CONFIG_FILE).write_text(json.dumps(config, indent=2))
    return folder


def load_adapter(model: nn.Module, folder: Path, model_name: str = "the base model") -> None:
    """Add the adapter saved in ``folder`` to ``model``, as ``mlx_lm``'s ``load_adapters``
    does, but checking first that every weight fits (mlx-lm loads with ``strict=False``:
    an adapter for another base model would load silently, or fail deep inside a
    matmul). Raises :class:`~sweep.errors.InputError` naming what does not fit."""
    from sweep.errors import InputError

    folder = Path(folder)
    config = json.loads((folder / ADAPTER_CONFIG_FILE).read_text())
    weights = mx.load(str(folder / ADAPTER_FILE))
    layers = len(model.layers)
    if config.get("num_layers", 0) > layers:
        raise InputError(f"target: the adapter in {folder} adapts {config['num_layers']} "
                         f"blocks; {model_name} has {layers}: it was made for another model")
    model.freeze()
    linear_to_lora_layers(model, config["num_layers"], config["lora_parameters"],
                          use_dora=config.get("fine_tune_type") == "dora")
    expected = dict(tree_flatten(model.trainable_parameters()))
    wrong = [f"{k} {tuple(v.shape)} (the model wants "
             f"{tuple(expected[k].shape) if k in expected else 'no such weight'})"
             for k, v in weights.items() if k not in expected or expected[k].shape != v.shape]
    if wrong or set(expected) - set(weights):
        detail = wrong[0] if wrong else f"{sorted(set(expected) - set(weights))[0]} is missing"
        raise InputError(f"target: the adapter in {folder} does not fit {model_name}: "
                         f"{detail}; it was made for another base model")
    model.load_weights(list(weights.items()), strict=False)
    mx.eval(model.parameters())
