"""The formats ``sweep-export`` writes from the fused float model, each loaded back and
measured against it (:mod:`sweep.shipping.export_check`): the MLX folder (as it is, cast,
or quantized by mlx-lm) and the GGUF files (a float32 file from mlx-lm's converter,
rewritten in each type by :mod:`sweep.models.gguf_quantize`, read back by this project's
importer)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict

from sweep.errors import InputError

__all__ = ["check_mlx", "gguf_name", "save_mlx", "write_ggufs"]


def gguf_name(gguf_type: str) -> str:
    return f"model-{gguf_type}.gguf"


def save_mlx(staging: Path, base_path: str, model, tokenizer, config: Dict[str, Any],
             typed) -> None:
    """The fused MLX folder: as it is, cast to ``export.mlx_dtype``, or quantized by mlx-lm
    to ``export.mlx_bits``."""
    import mlx.core as mx
    from mlx.utils import tree_map
    from mlx_lm.utils import quantize_model, save

    e = typed.export
    config = dict(config)
    if e.mlx_dtype is not None:
        dtype = getattr(mx, e.mlx_dtype)
        model.update(tree_map(lambda v: v.astype(dtype) if mx.issubdtype(v.dtype, mx.floating)
                              else v, model.parameters()))
        config["torch_dtype"] = e.mlx_dtype
    if e.mlx_bits is not None:
        try:
            model, config = quantize_model(model, config, e.mlx_group_size, e.mlx_bits)
        except ValueError as error:
            raise InputError(f"export.mlx_bits={e.mlx_bits} (export.mlx_group_size="
                             f"{e.mlx_group_size}): mlx-lm cannot quantize "
                             f"{typed.model.name}: {error}") from None
    save(staging, base_path, model, tokenizer, config, donate_model=False)


def _mlx_name(result, typed) -> tuple:
    e = typed.export
    if e.mlx_bits is not None:
        return f"mlx {e.mlx_bits}-bit", e.mlx_bits
    if result.quantized:
        bits = typed.model.bits
        return f"mlx {bits}-bit (the base's)", bits
    dtype = e.mlx_dtype or typed.model.dtype.value
    return f"mlx {dtype}", 32 if dtype == "float32" else 16


def check_mlx(result, staging: Path, typed, reference, prompts, test_set) -> None:
    import mlx.core as mx
    import mlx_lm

    from sweep.models.loader import _is_quantized
    from sweep.shipping.export_check import Format, judge, measure

    name, bits = _mlx_name(result, typed)
    fused, fused_tokenizer = mlx_lm.load(str(staging))
    note = ""
    if _is_quantized(fused) and mx.default_device() == mx.cpu:
        # MLX's quantized matmul on the CPU backend ran a SmolLM2 forward 40x slower than
        # float (86 s against 2.1 s, 2026-12-04): measured on the dequantized weights, the
        # values the quantized kernels multiply by (Metal and CUDA run it as it is)
        from mlx_lm.utils import dequantize_model

        fused = dequantize_model(fused)
        note = "measured on its dequantized weights (MLX CPU backend)"
    got = measure(fused, fused_tokenizer, prompts, test_set, typed)
    result.formats.insert(0, judge(Format(name, ".", bits, note=note), got, reference,
                                   typed.export.max_ppl_increase, staging))
    del fused


def write_ggufs(result, staging: Path, model, tokenizer, config: Dict[str, Any],
                typed, base_path: str, reference, prompts, test_set) -> None:
    """A float32 GGUF from the float weights, rewritten in each type asked for; each read
    back and measured."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    from sweep.models.gguf_export import write_gguf
    from sweep.models.gguf_quantize import convert

    float_config = {k: v for k, v in config.items()
                    if k not in ("quantization", "quantization_config")}
    weights = {k: v.astype(mx.float32) for k, v in tree_flatten(model.parameters())}
    with tempfile.TemporaryDirectory(prefix="sweep-gguf.", dir=staging.parent) as folder:
        tokenizer_dir = Path(folder) / "tokenizer"
        tokenizer.save_pretrained(str(tokenizer_dir))
        source = write_gguf(tokenizer_dir, weights, float_config, Path(folder) / "f32.gguf",
                            name=f"{typed.model.name}-sweep", tokenizer_from=Path(base_path),
                            chat_template=None if typed.data.template == "chat"
                            else tokenizer.chat_template)
        for gguf_type in typed.export.gguf_type:
            path = staging / gguf_name(gguf_type)
            if gguf_type == "f32":
                shutil.copyfile(source, path)
            else:
                convert(source, path, gguf_type)
            result.ggufs.append(path)
            result.formats.append(_check_gguf(path, gguf_type, weights, typed, reference,
                                              prompts, test_set))


def _check_gguf(path: Path, gguf_type: str, weights, typed, reference, prompts, test_set):
    import mlx_lm
    from mlx.utils import tree_flatten

    from sweep.config.commands import GGUF_TYPES
    from sweep.models.gguf import import_gguf
    from sweep.models.gguf_quantize import tensor_types
    from sweep.shipping.export_check import Format, judge, measure

    fmt = Format(f"gguf {gguf_type}", path.name, GGUF_TYPES[gguf_type],
                 tensor_types=tensor_types(path))
    with tempfile.TemporaryDirectory(prefix="sweep-gguf-check.") as folder:
        back_dir = Path(folder) / "model"
        try:
            import_gguf(path, back_dir, quantized=False)
        except ValueError as error:
            raise InputError(f"export: {path.name} cannot be read back by this project's "
                             f"importer ({error}); export.gguf=false skips GGUF files") from None
        back, back_tokenizer = mlx_lm.load(str(back_dir))
        theirs = dict(tree_flatten(back.parameters()))
        if set(theirs) != set(weights):
            missing = sorted(set(weights) ^ set(theirs))[:3]
            raise InputError(f"export: {path.name} read back has other tensors than the "
                             f"fused model ({missing})")
        got = measure(back, back_tokenizer, prompts, test_set, typed)
    if gguf_type == "f32":  # lossless: the very same weights and answers
        fmt.max_weight_difference = max(_difference(weights[k], theirs[k]) for k in weights)
        if fmt.max_weight_difference > 0:
            worst = max(weights, key=lambda k: _difference(weights[k], theirs[k]))
            raise InputError(f"export: {path.name} read back differs from the fused model in "
                             f"{worst} (by up to {fmt.max_weight_difference:.3g}); nothing "
                             "was written")
        for question, want, have in zip(prompts, reference.answers, got.answers):
            if want != have:
                raise InputError(
                    f"export: {path.name} read back answers differently from the fused model: "
                    f"{have[:60]!r} instead of {want[:60]!r}; nothing was written")
    return judge(fmt, got, reference, typed.export.max_ppl_increase, path)


def _difference(written, read) -> float:
    """Largest |difference| between a weight and its GGUF read-back; bfloat16 is written
    as float16 (as mlx-lm does), so it is compared as such."""
    import mlx.core as mx

    if written.dtype == mx.bfloat16:
        written = written.astype(mx.float32).astype(mx.float16)
    return mx.abs(read.astype(mx.float32) - written.astype(mx.float32)).max().item()
