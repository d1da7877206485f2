"""``sweep-export``: an adapter fused into a standalone mlx-lm model, and a GGUF file
checked by reading it back.

1. The base model and the adapter are loaded as for evaluation; every LoRA layer is
   replaced by mlx-lm's own ``fuse`` of it (``W + scale * B A``), and the model is written
   with mlx-lm's ``save`` (safetensors, config.json, tokenizer, model card).
   On a quantized base, mlx-lm re-quantizes the fused layers with the base's bits
   (``export.dequantize=false``, its default) or writes float weights (``true``).
2. The saved folder is loaded again with ``mlx_lm.load``; its greedy answers to
   ``export.check_prompts`` test questions are the reference.
3. For Llama-family models a GGUF is written from the folder's float weights
   (:mod:`sweep.models.gguf_export`), imported back with this project's own GGUF importer
   (:mod:`sweep.models.gguf`), and must give the same weights and the same answers;
   otherwise the export fails and nothing is written to ``output=``.
4. ``Modelfile`` (Ollama, :mod:`sweep.shipping.modelfile`) and ``sweep_export.json`` (what was exported, from what, and the
   check) are written beside it. Everything is built in a staging folder and renamed
   into ``output=`` at the end.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from omegaconf import DictConfig

from sweep.errors import InputError

__all__ = ["Exported", "export_target", "prepare_output", "summary"]

log = logging.getLogger("sweep.export")
GGUF_NAME = "model.gguf"


@dataclass
class Exported:
    output: Path
    description: str
    quantized: bool  # the fused mlx-lm folder keeps quantized layers
    gguf: Optional[Path] = None
    gguf_note: str = ""  # why there is no GGUF, when there is none
    prompts: List[str] = field(default_factory=list)
    answers: Dict[str, List[str]] = field(default_factory=dict)  # model -> answers
    max_weight_difference: Optional[float] = None  # GGUF read back vs the fused weights
    seconds: float = 0.0


def prepare_output(spec: Optional[str], overwrite: bool) -> Path:
    """The output folder, checked before anything heavy: writable, and empty unless
    ``export.overwrite=true``."""
    if not spec:
        raise InputError("output= is required: the folder that receives the fused model "
                         "and the GGUF file")
    out = Path(spec).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise InputError(f"output={spec}: a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise InputError(f"output={spec}: not empty (export.overwrite=true replaces it)")
    blocking = next((p for p in out.parents if p.exists()), None)
    if blocking is not None and not blocking.is_dir():
        raise InputError(f"output={spec}: cannot write in {out.parent} ({blocking} is a file)")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=out.parent, prefix=f".{out.name}.probe.")
        probe.close()
    except OSError as error:
        raise InputError(f"output={spec}: cannot write in {out.parent} "
                         f"({error.strerror or type(error).__name__})") from None
    return out


def _fuse(model, dequantize: bool) -> None:
    """mlx-lm's fuse, as ``mlx_lm.fuse`` runs it."""
    from mlx.utils import tree_unflatten
    from mlx_lm.utils import dequantize_model

    fused = [(n, m.fuse(dequantize=dequantize)) for n, m in model.named_modules()
             if hasattr(m, "fuse")]
    if fused:
        model.update_modules(tree_unflatten(fused))
    if dequantize:
        dequantize_model(model)


def _model_config(base_path: str, quantized: bool, typed) -> Dict[str, Any]:
    """The base's config.json, with the quantization it now has (the loader may have
    quantized or dequantized the base in memory)."""
    from mlx_lm.utils import load_config

    config = dict(load_config(Path(base_path)))
    if quantized and "quantization" not in config:
        config["quantization"] = {"group_size": typed.model.group_size, "bits": typed.model.bits}
    if not quantized:
        config.pop("quantization", None)
        config.pop("quantization_config", None)
    config["torch_dtype"] = typed.model.dtype.value
    return config


def _answers(model, tokenizer, prompts, max_tokens: int) -> List[str]:
    from sweep.evaluation.answers import generate_answers

    return generate_answers(model, tokenizer, prompts, max_tokens, len(prompts)).texts


def _check_questions(typed, tokenizer) -> List[Any]:
    from sweep.data.records import load_splits
    from sweep.evaluation.answers import questions

    if typed.export.check_prompts == 0:
        return []
    splits = load_splits(typed.data, typed.seed)
    examples = (splits.test or splits.valid)[:typed.export.check_prompts]
    return questions(examples, tokenizer)


def export_target(cfg: DictConfig, overrides: Sequence[str] = ()) -> Exported:
    """Resolve ``cfg.target`` and export it to ``cfg.output`` (see the module docstring)."""
    import mlx_lm

    from sweep.config import to_typed
    from sweep.evaluation.heldout import trial_config
    from sweep.models.loader import _is_quantized, clear_cache, load_base
    from sweep.shipping.modelfile import write_modelfile
    from sweep.targets import resolve_target
    from sweep.training.lora import load_adapter

    started = time.perf_counter()
    out = prepare_output(cfg.get("output"), bool(cfg.export.overwrite))
    tracking = cfg.mlflow.tracking_uri if cfg.mlflow.enabled else None
    target = resolve_target(cfg.get("target"), tracking)
    typed = to_typed(trial_config(target.config, cfg, overrides))
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        loaded = load_base(typed.model, typed.cache_dir, typed.seed)
        base_path = loaded.path
        model, tokenizer = loaded.model, loaded.tokenizer
        load_adapter(model, target.adapter_dir, typed.model.name)
        qs = _check_questions(typed, tokenizer)
        prompts = [q.prompt for q in qs]
        result = Exported(out, target.description, quantized=False,
                          prompts=[q.question for q in qs])
        if prompts:
            result.answers["adapter"] = _answers(model, tokenizer, prompts,
                                                 typed.export.check_tokens)
        log.info("fusing the adapter of %s into %s", target.description, typed.model.name)
        _fuse(model, typed.export.dequantize)
        result.quantized = _is_quantized(model)
        config = _model_config(base_path, result.quantized, typed)
        from mlx_lm.utils import save

        save(staging, base_path, model, tokenizer, dict(config), donate_model=False)
        del model, loaded
        clear_cache()  # the cached base now holds fused weights
        fused, fused_tokenizer = mlx_lm.load(str(staging))
        if prompts:
            result.answers["fused"] = _answers(fused, fused_tokenizer, prompts,
                                               typed.export.check_tokens)
        _gguf(result, staging, fused, fused_tokenizer, config, prompts, typed, base_path)
        del fused
        if result.gguf is not None:
            write_modelfile(staging, fused_tokenizer, GGUF_NAME)
        _write_record(staging, result, target, base_path, typed)
        _publish(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    result.seconds = time.perf_counter() - started
    return result


def _gguf(result: Exported, staging: Path, fused, tokenizer, config: Dict[str, Any],
          prompts, typed, base_path: str) -> None:
    import mlx_lm
    from mlx.utils import tree_flatten
    from mlx_lm.utils import dequantize_model

    from sweep.models.gguf import import_gguf
    from sweep.models.gguf_export import GGUF_MODEL_TYPES, write_gguf

    model_type = config.get("model_type")
    if not typed.export.gguf:
        result.gguf_note = "not asked for (export.gguf=false)"
        return
    if model_type not in GGUF_MODEL_TYPES:
        result.gguf_note = (f"mlx-lm writes GGUF for {', '.join(GGUF_MODEL_TYPES)} only, not "
                            f"'{model_type}'; llama.cpp's convert_hf_to_gguf.py converts the "
                            "fused folder")
        return
    if result.quantized:  # the GGUF writer takes float tensors: the same weights, dequantized
        fused = dequantize_model(fused)
        if prompts:
            result.answers["fused (dequantized)"] = _answers(fused, tokenizer, prompts,
                                                             typed.export.check_tokens)
    float_config = {k: v for k, v in config.items()
                    if k not in ("quantization", "quantization_config")}
    weights = dict(tree_flatten(fused.parameters()))
    path = write_gguf(staging, weights, float_config, staging / GGUF_NAME,
                      name=f"{typed.model.name}-sweep", tokenizer_from=Path(base_path))
    result.gguf = result.output / GGUF_NAME
    with tempfile.TemporaryDirectory(prefix="sweep-gguf-check.") as folder:
        back_dir = Path(folder) / "model"
        try:
            import_gguf(path, back_dir, quantized=False)
        except ValueError as error:
            raise InputError(f"export: the GGUF written cannot be read back by this project's "
                             f"importer ({error}); export.gguf=false skips it") from None
        back, back_tokenizer = mlx_lm.load(str(back_dir))
        theirs = dict(tree_flatten(back.parameters()))
        if set(theirs) != set(weights):
            missing = sorted(set(weights) ^ set(theirs))[:3]
            raise InputError(f"export: the GGUF read back has other tensors than the fused "
                             f"model ({missing})")
        result.max_weight_difference = max(_difference(weights[k], theirs[k]) for k in weights)
        if result.max_weight_difference > 0:
            worst = max(weights, key=lambda k: _difference(weights[k], theirs[k]))
            raise InputError(f"export: the GGUF read back differs from the fused model in "
                             f"{worst} (by up to {result.max_weight_difference:.3g}); "
                             "nothing was written")
        if prompts:
            got = _answers(back, back_tokenizer, prompts, typed.export.check_tokens)
            result.answers["gguf (read back)"] = got
            expected = result.answers.get("fused (dequantized)", result.answers["fused"])
            for question, want, have in zip(result.prompts, expected, got):
                if want != have:
                    raise InputError(
                        f"export: the GGUF read back answers differently from the fused "
                        f"model to {question!r}: {have[:60]!r} instead of {want[:60]!r}; "
                        "nothing was written")


def _difference(written, read) -> float:
    """Largest |difference| between a weight and its GGUF read-back; bfloat16 is written
    as float16 (as mlx-lm does), so it is compared as such."""
    import mlx.core as mx

    if written.dtype == mx.bfloat16:
        written = written.astype(mx.float32).astype(mx.float16)
    return mx.abs(read.astype(mx.float32) - written.astype(mx.float32)).max().item()


def _write_record(folder: Path, result: Exported, target, base_path: str, typed) -> None:
    from sweep.config import flatten

    record = {
        "exported": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "target": target.description,
        "mlflow_run_id": target.run_id,
        "adapter": str(target.adapter_dir),
        "base_model": {"name": typed.model.name, "path": base_path},
        "adapter_config": json.loads((target.adapter_dir / "adapter_config.json").read_text()),
        "trial": {k: v for k, v in flatten(typed).items()
                  if k.split(".")[0] in ("lora", "optimizer", "train", "scheduler")},
        "quantized": result.quantized,
        "gguf": GGUF_NAME if result.gguf else None,
        "gguf_note": result.gguf_note or None,
        "check": {"prompts": result.prompts, "answers": result.answers,
                  "max_weight_difference": result.max_weight_difference},
    }
    (folder / "sweep_export.json").write_text(json.dumps(record, indent=2))


def _publish(staging: Path, out: Path) -> None:
    staging.chmod(0o755)
    if out.exists():
        old = out.with_name(f".{out.name}.old.{int(time.time())}")
        out.rename(old)
        staging.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        staging.rename(out)


def summary(result: Exported) -> str:
    lines = [f"exported {result.description} to {result.output} in {result.seconds:.0f} s",
             f"  mlx-lm model: {result.output} ({'quantized' if result.quantized else 'float'}"
             " weights)"]
    if result.gguf is not None:
        size = result.gguf.stat().st_size / 1e6 if result.gguf.exists() else float("nan")
        lines.append(f"  GGUF: {result.gguf} ({size:.0f} MB)")
        if result.max_weight_difference is not None:
            same = sum(a == b for a, b in zip(result.answers.get("fused", []),
                                              result.answers.get("gguf (read back)", [])))
            lines.append(f"  read back with sweep's GGUF importer: weights differ by at most "
                         f"{result.max_weight_difference:.3g}; "
                         f"{same}/{len(result.prompts)} greedy answers identical to the "
                         "fused model's")
    else:
        lines.append(f"  no GGUF: {result.gguf_note}")
    if result.prompts and "adapter" in result.answers:
        same = sum(a == b for a, b in zip(result.answers["adapter"], result.answers["fused"]))
        lines.append(f"  fused vs adapter (unfused): {same}/{len(result.prompts)} greedy "
                     "answers identical")
    lines += ["run it:",
              f"  mlx_lm.generate --model {result.output} --prompt \"...\"",
              f"  mlx_lm.chat --model {result.output}"]
    if result.gguf is not None:
        lines += [f"  llama-cli -m {result.gguf} -cnv        (llama.cpp; its chat template "
                  "is in the GGUF)",
                  f"  cd {result.output} && ollama create sweep-model -f Modelfile && "
                  "ollama run sweep-model"]
    return "\n".join(lines)
