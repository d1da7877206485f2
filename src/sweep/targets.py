"""``target=``: what a user names to evaluate, export or chat with, resolved to an adapter
folder, the config it was trained with, and its MLflow run.

Accepted: a sweep's output folder (its study's best trial), a trial's output folder, an
adapter folder (``adapters.safetensors`` + ``adapter_config.json``), or an MLflow run id
(a trial's run, or a study's parent run: its best trial). Anything else is one line
naming the target.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from omegaconf import DictConfig, OmegaConf

from sweep.errors import InputError

__all__ = ["Target", "TargetError", "resolve_target", "ADAPTER_FILE"]

ADAPTER_FILE = "adapters.safetensors"
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


class TargetError(InputError):
    """``target=`` names nothing usable; the message says what was looked for."""


@dataclass
class Target:
    adapter_dir: Path
    config: Optional[DictConfig]  # the resolved config the adapter was trained with
    run_id: Optional[str]  # its MLflow run, where evaluation results are logged
    description: str


def _config_beside(adapter_dir: Path) -> Optional[DictConfig]:
    for candidate in (adapter_dir.parent / "config" / "config.yaml",
                      adapter_dir.parent / "best_config.yaml"):
        if candidate.is_file():
            return OmegaConf.load(candidate)
    return None


def _from_adapter(folder: Path, spec: str, client, run_id: Optional[str] = None) -> Target:
    if not (folder / ADAPTER_FILE).is_file() or not (folder / "adapter_config.json").is_file():
        raise TargetError(f"target={spec}: {folder} has no {ADAPTER_FILE} and "
                          "adapter_config.json")
    if run_id is None and client is not None:
        run_id = _run_of_output_dir(client, folder.parent)
    return Target(folder, _config_beside(folder), run_id, f"adapter {folder}")


def _run_of_output_dir(client, output_dir: Path) -> Optional[str]:
    try:
        runs = client.search_runs(
            [e.experiment_id for e in client.search_experiments()],
            filter_string=f"tags.`sweep.output_dir` = '{output_dir.resolve()}'", max_results=1)
    except Exception:  # no tracking store here: evaluate without logging
        return None
    return runs[0].info.run_id if runs else None


def _from_sweep(folder: Path, spec: str, client) -> Target:
    import optuna

    from sweep.paths import sqlite_file

    from sweep.config import register

    register()  # the resolvers the saved study name uses
    saved = OmegaConf.load(folder / "multirun.yaml")
    storage = OmegaConf.select(saved, "hydra.sweeper.storage")
    name = OmegaConf.select(saved, "hydra.sweeper.study_name")
    database = sqlite_file(str(storage))
    if database is not None and not database.is_file():  # SQLite would create an empty one
        raise TargetError(f"target={spec}: its study's database {database} does not exist "
                          "(run from the folder the sweep ran in, or name the trial's run id)")
    try:
        from sweep.study.storages import open_url

        study = optuna.load_study(study_name=str(name), storage=open_url(str(storage)))
    except Exception as error:
        raise TargetError(f"target={spec}: cannot open its study '{name}' in {storage} "
                          f"({type(error).__name__})") from None
    from sweep.study.winner import best as winner

    best = winner(study)
    if best is None:
        raise TargetError(f"target={spec}: study '{name}' has no completed trial yet")
    output_dir = Path(best.user_attrs.get("output_dir", ""))
    target = _from_adapter(output_dir / "adapter", spec, None, best.user_attrs.get("mlflow_run_id"))
    target.description = (f"best trial {best.number} of study '{name}' "
                          f"(val_loss {best.values[0]:.4f})")
    return target


def _from_run(run_id: str, spec: str, client, uri: str) -> Target:
    try:
        run = client.get_run(run_id)
    except Exception:
        raise TargetError(f"target={spec}: no MLflow run with this id in {uri}") from None
    if run.data.tags.get("sweep.kind") == "study":
        best = run.data.tags.get("sweep.best_run_id")
        if not best:
            raise TargetError(f"target={spec}: this study has no best trial yet")
        return _from_run(best, spec, client, uri)
    output_dir = run.data.tags.get("sweep.output_dir")
    if output_dir and (Path(output_dir) / "adapter" / ADAPTER_FILE).is_file():
        target = _from_adapter(Path(output_dir) / "adapter", spec, None, run_id)
    else:  # another machine's run: fetch its artifacts
        import mlflow

        try:
            local = Path(mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path="", tracking_uri=uri))
        except Exception as error:
            raise TargetError(f"target={spec}: cannot fetch the run's artifacts "
                              f"({type(error).__name__}: {error})") from None
        target = _from_adapter(local / "adapter", spec, None, run_id)
    target.description = f"MLflow run {run_id} ({run.info.run_name})"
    return target


def _require_run(target: Target, spec: str, client, uri: Optional[str]) -> None:
    """The run the results would be logged to must be in the given store: found now, in
    one line, not after minutes of evaluation."""
    if client is None or target.run_id is None:
        return
    try:
        client.get_run(target.run_id)
    except Exception:
        from sweep.paths import mask_password

        raise TargetError(
            f"target={spec}: its best trial's MLflow run {target.run_id} is not in "
            f"mlflow.tracking_uri={mask_password(str(uri))}; name the store the sweep "
            "logged to, or add mlflow.enabled=false to evaluate without logging") from None


def resolve_target(spec: Optional[str], tracking_uri: Optional[str] = None) -> Target:
    """The adapter, config and run that ``target=`` names (see the module docstring)."""
    if not spec:
        raise TargetError("target= is required: a sweep's output folder, an MLflow run id "
                          "or an adapter folder")
    client = None
    if tracking_uri:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=tracking_uri)
    path = Path(spec).expanduser()
    if path.is_dir():
        if (path / "multirun.yaml").is_file():
            target = _from_sweep(path, spec, client)
            _require_run(target, spec, client, tracking_uri)
            return target
        if (path / "adapter" / ADAPTER_FILE).is_file():
            return _from_adapter(path / "adapter", spec, client)
        if (path / "report" / "best_adapter").is_dir():
            return _from_adapter(path / "report" / "best_adapter", spec, client)
        return _from_adapter(path, spec, client)
    if path.exists():
        raise TargetError(f"target={spec}: a file; name its folder")
    if _RUN_ID.match(spec) and client is not None:
        return _from_run(spec, spec, client, tracking_uri)
    raise TargetError(f"target={spec}: no such folder, and not an MLflow run id")
