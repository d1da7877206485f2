"""A sweep's best adapter as a registered MLflow model, and that model served.

:func:`register_adapter` logs the adapter as a ``pyfunc`` model on its trial's MLflow run
(the code in :mod:`sweep.shipping.pyfunc_model`, the adapter's safetensors + JSON as
artifacts, the base model *referenced*: its model config and the SHA-256 of its weights,
not a copy in every version), registers it under a name derived from the study
(``sweep-<study>``, or ``registry.name``) and moves the alias ``best`` to that version.
:func:`register_best` does this for a finished study's best trial, once per winner.
:class:`Served` is what ``load_context`` builds: the base (re-imported from its config
when this machine has not cached it, and refused when its weights differ) plus adapter.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

from sweep.errors import InputError

__all__ = ["model_name", "weights_digest", "base_reference", "register_adapter",
           "register_best", "Served", "REGISTERED_ATTR"]

log = logging.getLogger("sweep.registry")
REGISTERED_ATTR = "registered_trial"  # study user attr: the trial whose adapter is `best`
MODEL_CODE = Path(__file__).with_name("pyfunc_model.py")
EXAMPLE = ["What does Article 21 of the Constitution of India protect?"]


def model_name(study_name: str, configured: Optional[str] = None) -> str:
    """The registered model's name: ``registry.name``, else ``sweep-<study>`` with only
    the characters MLflow's UI and URIs keep unescaped."""
    return configured or "sweep-" + re.sub(r"[^A-Za-z0-9_.-]+", "-", study_name).strip("-")


def weights_digest(model_dir: Path) -> str:
    """SHA-256 over the model folder's safetensors files (names and bytes), cached
    beside them by size and modification time (model folders are written once)."""
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise InputError(f"base model: no safetensors weights in {model_dir}")
    stamp = [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]
    cache = Path(model_dir) / ".sweep_sha256.json"
    try:
        cached = json.loads(cache.read_text())
        if cached.get("files") == stamp:
            return cached["sha256"]
    except (OSError, ValueError):
        pass
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.name.encode())
        with f.open("rb") as handle:
            while chunk := handle.read(1 << 24):
                digest.update(chunk)
    value = digest.hexdigest()
    try:
        cache.write_text(json.dumps({"files": stamp, "sha256": value}))
    except OSError:
        pass  # a read-only cache: hash again next time
    return value


def base_reference(typed) -> Dict[str, Any]:
    """How a served model finds its base: the model group's config (so another machine
    imports it the same way), the seed (tiny models), the folder here and its digest."""
    from omegaconf import OmegaConf

    from sweep.models.loader import prepare_model_dir

    path = prepare_model_dir(typed.model, typed.cache_dir, typed.seed)
    return {"model": OmegaConf.to_container(OmegaConf.structured(typed.model), enum_to_str=True),
            "seed": typed.seed, "path": path, "sha256": weights_digest(Path(path))}


@dataclass
class Served:
    model: Any
    tokenizer: Any
    system: Optional[str]
    max_tokens: int
    batch_size: int

    @classmethod
    def load(cls, adapter_dir: str, config: Dict[str, Any]) -> "Served":
        from omegaconf import OmegaConf

        from sweep.config.schema import ModelConfig
        from sweep.config.templates import use
        from sweep.models.loader import load_base
        from sweep.training.lora import load_adapter

        base = config["base"]
        model_cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig),
                                                        base["model"]))
        loaded = load_base(model_cfg, config.get("cache_dir"), int(base["seed"]), shared=False)
        digest = weights_digest(Path(loaded.path))
        if digest != base["sha256"]:
            raise InputError(f"registered model: the base model {model_cfg.name} here "
                             f"({loaded.path}, sha256 {digest[:12]}) is not the one the adapter "
                             f"was trained on (sha256 {base['sha256'][:12]})")
        load_adapter(loaded.model, Path(adapter_dir), model_cfg.name)
        use(loaded.tokenizer, config.get("template", "chat"), model_cfg.name)
        return cls(loaded.model, loaded.tokenizer, config.get("system"),
                   int(config.get("max_tokens", 128)), int(config.get("batch_size", 8)))

    def prompt(self, text: str) -> List[int]:
        """The tokens the model sees for the question ``text``: the trained prompt format."""
        if not isinstance(text, str):
            raise InputError(f"registered model: predict takes a list of strings, got "
                             f"{type(text).__name__}")
        head = [{"role": "system", "content": self.system}] if self.system else []
        tokens = self.tokenizer.apply_chat_template(head + [{"role": "user", "content": text}],
                                                    add_generation_prompt=True)
        return list(tokens["input_ids"] if isinstance(tokens, dict) else tokens)

    def answer(self, prompts: List[str]) -> List[str]:
        from sweep.evaluation.answers import fused_adapters, generate_answers

        if not prompts:
            return []
        ids = [self.prompt(text) for text in prompts]
        with fused_adapters(self.model):
            return generate_answers(self.model, self.tokenizer, ids, self.max_tokens,
                                    self.batch_size).texts


def _requirements() -> List[str]:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for package in ("mlflow", "mlx", "mlx-lm", "tokenizers", "transformers"):
        try:
            out.append(f"{package}=={version(package)}")
        except PackageNotFoundError:
            pass
    return out


def register_adapter(tracking_uri: str, run_id: str, adapter_dir: Path, typed, name: str,
                     alias: str = "best", tags: Optional[Dict[str, str]] = None) -> str:
    """Log the adapter of run ``run_id`` as a pyfunc model, register it as ``name`` and
    point ``alias`` at the new version; returns the version."""
    import mlflow
    from mlflow.tracking import MlflowClient

    config = {"base": base_reference(typed), "system": typed.data.system_prompt,
              "template": typed.data.template,
              "max_tokens": typed.eval.max_tokens, "batch_size": 8}
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no bars in logs
    mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri=tracking_uri)
    with mlflow.start_run(run_id=run_id, log_system_metrics=False):
        info = mlflow.pyfunc.log_model(
            name="model", python_model=str(MODEL_CODE),
            artifacts={"adapter": str(adapter_dir)}, model_config=config,
            input_example=EXAMPLE, pip_requirements=_requirements(),
            registered_model_name=name, await_registration_for=60)
    version = str(info.registered_model_version)
    for key, value in (tags or {}).items():
        client.set_model_version_tag(name, version, key, value)
    client.set_model_version_tag(name, version, "sweep.base_sha256", config["base"]["sha256"])
    client.set_registered_model_alias(name, alias, version)
    return version


def register_best(config, study) -> Optional[str]:
    """Register the best trial of a finished single-objective study (``registry.*``),
    once per winner; returns ``models:/<name>@<alias>`` or None when nothing was done."""
    from omegaconf import open_dict
    from sweep.config import to_typed
    from sweep.evaluation.heldout import trial_config
    from sweep.study.winner import best as winner
    from sweep.targets import resolve_target

    registry = config.registry
    if not registry.after_sweep or not config.mlflow.enabled or len(study.directions) > 1:
        return None
    best = winner(study)
    if best is None:
        return None
    run_id = best.user_attrs.get("mlflow_run_id")
    name = model_name(study.study_name, registry.name)
    uri = f"models:/{name}@{registry.alias}"
    if run_id is None:
        log.warning("best trial %d has no MLflow run: not registered", best.number)
        return None
    if study.user_attrs.get(REGISTERED_ATTR) == best.number:
        log.info("best trial %d is %s already", best.number, uri)
        return uri
    cfg = config.copy()
    with open_dict(cfg):
        cfg.pop("hydra", None)
    target = resolve_target(run_id, config.mlflow.tracking_uri)
    typed = to_typed(trial_config(target.config, cfg, []))
    tags = {"sweep.study": study.study_name, "sweep.trial": str(best.number),
            "val_loss": f"{best.values[0]:.6g}"}
    tags.update({f"sweep.param.{k}": str(v) for k, v in best.params.items()})
    version = register_adapter(config.mlflow.tracking_uri, run_id, target.adapter_dir, typed,
                               name, registry.alias, tags)
    study.set_user_attr(REGISTERED_ATTR, best.number)
    log.info("best trial %d registered as %s (version %s): mlflow.pyfunc.load_model(%r)"
             ".predict([...])", best.number, name, version, uri)
    return uri
