"""Write a float Llama-family mlx-lm model as a GGUF file that llama.cpp and Ollama run.

The tensors and the model metadata come from mlx-lm's own converter (``mlx_lm.gguf``:
``permute_weights``, ``translate_weight_names``, ``prepare_metadata``). Its tokenizer
metadata is replaced, which is why this module exists: mlx-lm always writes a
SentencePiece vocabulary (``tokenizer.ggml.model = "llama"``) with no merges and no chat
template, so a byte-level BPE model (SmolLM2, Llama 3, Qwen) would be tokenized wrongly
by llama.cpp and chat without its template. Here the tokenizer is, in order of preference:

1. the ``tokenizer.*`` metadata of the GGUF file the base model was imported from
   (``sweep_import.json``), copied verbatim: what llama.cpp already ran;
2. a byte-level BPE ``tokenizer.json``, written as ``gpt2`` tokens, token types and merges;
3. otherwise mlx-lm's SentencePiece vocabulary, as ``mlx_lm.fuse --export-gguf`` writes it.

The chat template (``tokenizer_config.json``) is added when the source has none.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional

import mlx.core as mx

__all__ = ["GGUF_MODEL_TYPES", "write_gguf", "tokenizer_metadata"]

# what mlx-lm's GGUF writer supports (mlx_lm/fuse.py)
GGUF_MODEL_TYPES = ("llama", "mistral", "mixtral")

_CONTROL, _NORMAL, _USER_DEFINED = 3, 1, 4  # llama.cpp token types
_ALL_F32, _MOSTLY_F16 = 0, 1  # general.file_type


def _source_gguf(model_dir: Path) -> Optional[Path]:
    provenance = model_dir / "sweep_import.json"
    if not provenance.is_file():
        return None
    record = json.loads(provenance.read_text())
    for key in ("source", "tokenizer_source"):
        path = Path(str(record.get(key, "")))
        if path.suffix == ".gguf" and path.is_file():
            return path
    return None


def _from_tokenizer_json(model_dir: Path) -> Optional[Dict[str, Any]]:
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        return None
    spec = json.loads(path.read_text())
    model = spec.get("model", {})
    if model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict):
        return None
    vocab: Dict[str, int] = dict(model["vocab"])
    added = {t["content"]: t for t in spec.get("added_tokens", [])}
    for text, token in added.items():
        vocab[text] = token["id"]
    tokens = [""] * (max(vocab.values()) + 1)
    for text, index in vocab.items():
        tokens[index] = text
    types = [_CONTROL if t in added and added[t].get("special") else
             _USER_DEFINED if t in added else _NORMAL for t in tokens]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    meta: Dict[str, Any] = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": mx.array(types, dtype=mx.int32),
        "tokenizer.ggml.merges": merges,
    }
    config_path = model_dir / "tokenizer_config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    for key, field in (("bos", "bos_token"), ("eos", "eos_token"), ("unknown", "unk_token"),
                       ("padding", "pad_token")):
        value = config.get(field)
        value = value.get("content") if isinstance(value, dict) else value
        if value in vocab:
            meta[f"tokenizer.ggml.{key}_token_id"] = mx.array(vocab[value], dtype=mx.uint32)
    meta["tokenizer.ggml.add_bos_token"] = mx.array(bool(config.get("add_bos_token", False)))
    return meta


def tokenizer_metadata(model_dir: Path) -> Optional[Dict[str, Any]]:
    """GGUF ``tokenizer.*`` metadata for the model in ``model_dir`` (see the module
    docstring), or None when only mlx-lm's SentencePiece writer applies."""
    model_dir = Path(model_dir)
    source = _source_gguf(model_dir)
    if source is not None:
        _, meta = mx.load(str(source), return_metadata=True)
        meta = {k: v for k, v in meta.items() if k.startswith("tokenizer.")}
    else:
        meta = _from_tokenizer_json(model_dir)
    if meta is None:
        return None
    config_path = model_dir / "tokenizer_config.json"
    if "tokenizer.chat_template" not in meta and config_path.is_file():
        template = json.loads(config_path.read_text()).get("chat_template")
        if isinstance(template, str):
            meta["tokenizer.chat_template"] = template
    return meta


def write_gguf(model_dir: Path, weights: Dict[str, mx.array], config: Dict[str, Any],
               out_file: Path, name: Optional[str] = None,
               tokenizer_from: Optional[Path] = None,
               chat_template: Optional[str] = None) -> Path:
    """Write ``weights`` (float, mlx-lm names; e.g. a fused model's parameters) with
    ``config`` (its config.json) as a GGUF file; ``model_dir`` holds its tokenizer, and
    ``tokenizer_from`` (default ``model_dir``) is the model folder whose provenance may
    name the GGUF it was imported from (a fused model's base); ``chat_template``
    replaces the tokenizer's (the prompt format the model was trained with)."""
    from mlx_lm.gguf import HfVocab, permute_weights, prepare_metadata, translate_weight_names

    if config.get("quantization"):
        raise ValueError("GGUF export needs float weights (dequantize the model first)")
    heads, kv_heads = config["num_attention_heads"], config.get("num_key_value_heads")
    out: Dict[str, mx.array] = {}
    for key, value in weights.items():
        if "self_attn.q_proj.weight" in key:
            value = permute_weights(value, heads, heads)
        elif "self_attn.k_proj.weight" in key:
            value = permute_weights(value, heads, kv_heads or heads)
        gguf_name = translate_weight_names(key)
        if value.dtype == mx.bfloat16:  # GGUF has no bfloat16 here: float16, as mlx-lm
            value = value.astype(mx.float32).astype(mx.float16)
        if "norm" in gguf_name:
            value = value.astype(mx.float32)
        out[gguf_name] = value
    metadata = prepare_metadata(config, HfVocab.load(Path(model_dir)))
    tokenizer = tokenizer_metadata(Path(tokenizer_from or model_dir))
    if tokenizer is not None:
        metadata = {k: v for k, v in metadata.items() if not k.startswith("tokenizer.")}
        metadata.update(tokenizer)
    if chat_template:
        metadata["tokenizer.chat_template"] = chat_template
    all_f32 = all(v.dtype == mx.float32 for v in out.values())
    metadata["general.file_type"] = mx.array(_ALL_F32 if all_f32 else _MOSTLY_F16,
                                             dtype=mx.uint32)
    if name:
        metadata["general.name"] = name
    out_file = Path(out_file)
    tmp = out_file.with_name(f".{out_file.name}.tmp.gguf")
    mx.save_gguf(str(tmp), out, metadata)
    tmp.replace(out_file)
    return out_file
