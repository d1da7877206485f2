"""``sweep-export``: an adapter fused into a standalone mlx-lm model, and GGUF files in the
types asked for, every one loaded back and checked.

1. The base model and the adapter are loaded as for evaluation; every LoRA layer is
   replaced by mlx-lm's own ``fuse`` of it (``W + scale * B A``). This float model is the
   reference: its greedy answers to ``export.check_prompts`` test questions and its
   perplexity on the test split (``export.check_examples``).
2. For Llama-family models a float32 GGUF is written from its weights
   (:mod:`sweep.models.gguf_export`) and rewritten in each ``export.gguf_type``
   (:mod:`sweep.models.gguf_quantize`, llama.cpp's ``gguf`` package) as
   ``model-<type>.gguf``.
3. The MLX folder is written with mlx-lm's ``save`` (safetensors, config.json, tokenizer),
   cast to ``export.mlx_dtype`` or quantized by mlx-lm to ``export.mlx_bits``. On a quantized
   base, mlx-lm re-quantizes the fused layers with the base's bits unless
   ``export.dequantize=true``.
4. Every file is loaded back (the GGUFs with this project's importer,
   :mod:`sweep.models.gguf`) and measured as the reference was
   (:mod:`sweep.shipping.export_check`): a float32 GGUF must give the very same weights and
   answers, any format must stay within ``export.max_ppl_increase`` of the reference's
   perplexity; otherwise the export fails and nothing is written to ``output=``.
5. ``Modelfile`` (Ollama, :mod:`sweep.shipping.modelfile`, from the first GGUF type) and
   ``sweep_export.json`` (what was exported, from what, each format's size, agreement and
   perplexity) are written beside them. Everything is built in a staging folder and renamed
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


@dataclass
class Exported:
    output: Path
    description: str
    quantized: bool  # the fused mlx-lm folder keeps quantized layers
    ggufs: List[Path] = field(default_factory=list)
    gguf_note: str = ""  # why there is no GGUF, when there is none
    prompts: List[str] = field(default_factory=list)
    answers: Dict[str, List[str]] = field(default_factory=dict)  # adapter, float
    reference_ppl: Optional[float] = None  # the float fused model's test perplexity
    test_examples: int = 0
    formats: List[Any] = field(default_factory=list)  # export_check.Format, in writing order
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


def _check_data(typed, tokenizer):
    """The check questions and the scored test set (None when not scored)."""
    from sweep.data.batches import tokenize
    from sweep.data.records import load_splits
    from sweep.evaluation.answers import questions

    if typed.export.check_prompts == 0 and typed.export.check_examples == 0:
        return [], None
    splits = load_splits(typed.data, typed.seed)
    examples = splits.test or splits.valid
    qs = questions(examples[:typed.export.check_prompts], tokenizer)
    scored = examples if typed.export.check_examples is None \
        else examples[:typed.export.check_examples]
    test_set = tokenize(scored, tokenizer, typed.data.mask_prompt) if scored else None
    return qs, test_set


def _gguf_wanted(typed, model_type: Optional[str], overrides: Sequence[str]) -> str:
    """Why no GGUF is written ("" when GGUFs are written); a type asked for on the command
    line for an architecture without a GGUF writer is an error."""
    from sweep.models.gguf_export import GGUF_MODEL_TYPES

    if not typed.export.gguf or not typed.export.gguf_type:
        return "not asked for (export.gguf=false or an empty export.gguf_type)"
    if model_type in GGUF_MODEL_TYPES:
        return ""
    why = (f"mlx-lm writes GGUF for {', '.join(GGUF_MODEL_TYPES)} only, not '{model_type}'; "
           "llama.cpp's convert_hf_to_gguf.py converts the fused folder")
    if any(o.lstrip("+").split("=")[0] == "export.gguf_type" for o in overrides):
        raise InputError(f"export.gguf_type={','.join(typed.export.gguf_type)}: {why} "
                         "(export.gguf=false exports the MLX folder only)")
    return why


def export_target(cfg: DictConfig, overrides: Sequence[str] = ()) -> Exported:
    """Resolve ``cfg.target`` and export it to ``cfg.output`` (see the module docstring)."""
    from mlx_lm.utils import dequantize_model, load_config

    from sweep.config import to_typed
    from sweep.config.templates import use
    from sweep.evaluation.heldout import trial_config
    from sweep.models.loader import _is_quantized, clear_cache, load_base
    from sweep.shipping.export_check import measure
    from sweep.shipping.export_formats import check_mlx, save_mlx, write_ggufs
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
        no_gguf = _gguf_wanted(typed, load_config(Path(base_path)).get("model_type"), overrides)
        model, tokenizer = loaded.model, use(loaded.tokenizer, typed.data.template,
                                             typed.model.name)
        load_adapter(model, target.adapter_dir, typed.model.name)
        qs, test_set = _check_data(typed, tokenizer)
        prompts = [q.prompt for q in qs]
        result = Exported(out, target.description, quantized=False, gguf_note=no_gguf,
                          prompts=[q.question for q in qs])
        if prompts:
            result.answers["adapter"] = measure(model, tokenizer, prompts, None, typed).answers
        log.info("fusing the adapter of %s into %s", target.description, typed.model.name)
        bits = typed.export.mlx_bits
        _fuse(model, typed.export.dequantize or bits is not None)
        del loaded
        result.quantized = _is_quantized(model)
        config = _model_config(base_path, result.quantized, typed)
        if result.quantized:  # kept as the base was: saved first, the float reference after
            save_mlx(staging, base_path, model, tokenizer, config, typed)
            model = dequantize_model(model)
        reference = measure(model, tokenizer, prompts, test_set, typed)
        result.answers["float"] = reference.answers
        result.reference_ppl, result.test_examples = reference.test_ppl, reference.test_examples
        if not no_gguf:
            write_ggufs(result, staging, model, tokenizer, config, typed, base_path,
                        reference, prompts, test_set)
        if not result.quantized:
            save_mlx(staging, base_path, model, tokenizer, config, typed)
        del model
        clear_cache()  # the cached base now holds fused weights
        check_mlx(result, staging, typed, reference, prompts, test_set)
        if result.ggufs:
            write_modelfile(staging, tokenizer, result.ggufs[0].name, typed.data.template,
                            typed.data.system_prompt)
        _write_record(staging, result, target, base_path, typed)
        _publish(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    result.seconds = time.perf_counter() - started
    return result


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
        "prompt_format": {"data.template": typed.data.template,
                          "data.system_prompt": typed.data.system_prompt},
        "quantized": result.quantized,
        "ggufs": [p.name for p in result.ggufs],
        "gguf_note": result.gguf_note or None,
        "check": {"prompts": result.prompts, "answers": result.answers,
                  "test_examples": result.test_examples,
                  "float_test_ppl": result.reference_ppl,
                  "max_ppl_increase": typed.export.max_ppl_increase},
        "formats": [f.record() for f in result.formats],
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


def _table(result: Exported) -> List[str]:
    n = len(result.prompts)
    ppl = (f"{result.reference_ppl:.3f}" if result.reference_ppl is not None else "-")
    rows = [f"  {'format':<24} {'file':<20} {'MB':>8} {'test ppl':>9} {'vs float':>9} "
            f"{'same answers':>12}",
            f"  {'float (fused, in memory)':<24} {'':<20} {'':>8} {ppl:>9} {'':>9} {'':>12}"]
    for f in result.formats:
        change = f"{f.ppl_increase:+.1%}" if f.ppl_increase is not None else "-"
        test = f"{f.test_ppl:.3f}" if f.test_ppl is not None else "-"
        rows.append(f"  {f.name:<24} {f.file:<20} {f.bytes / 1e6:>8.1f} {test:>9} "
                    f"{change:>9} {f'{f.agreement}/{n}':>12}")
    rows += [f"  ({f.name}: {f.note})" for f in result.formats if f.note]
    return rows


def summary(result: Exported) -> str:
    lines = [f"exported {result.description} to {result.output} in {result.seconds:.0f} s",
             f"each format loaded back: greedy answers to {len(result.prompts)} test questions "
             f"and perplexity over {result.test_examples} test examples, beside the float "
             "model's", *_table(result)]
    if not result.ggufs:
        lines.append(f"  no GGUF: {result.gguf_note}")
    if result.prompts and "adapter" in result.answers:
        same = sum(a == b for a, b in zip(result.answers["adapter"], result.answers["float"]))
        lines.append(f"  fused vs adapter (unfused): {same}/{len(result.prompts)} greedy "
                     "answers identical")
    lines += ["run it:",
              f"  mlx_lm.generate --model {result.output} --prompt \"...\"",
              f"  mlx_lm.server --model {result.output}        (OpenAI-compatible HTTP)"]
    if result.ggufs:
        gguf = result.output / result.ggufs[0].name
        lines += [f"  llama-cli -m {gguf} -cnv        (llama.cpp; its chat template "
                  "is in the GGUF)",
                  f"  cd {result.output} && ollama create sweep-model -f Modelfile && "
                  "ollama run sweep-model"]
    return "\n".join(lines)
