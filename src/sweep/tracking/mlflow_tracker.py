"""MLflow as a listener of the training loop, through ``MlflowClient`` (no global
fluent state, so many trials can run in one process).

Embedded default: a SQLite database and, beside it, an ``artifacts/`` folder.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Mapping, Optional

from sweep.config.schema import MlflowConfig
from sweep.study.locks import init_lock
from sweep.paths import ensure_sqlite_folder, mask_password, sqlite_file
from sweep.training.events import CheckpointReport, EvalReport, Listener, TrainReport

__all__ = ["MlflowTracker", "NullTracker", "artifact_location_for", "check_tracking",
           "fetch_checkpoint", "CHECKPOINT_ARTIFACTS"]

log = logging.getLogger(__name__)
_MAX_PARAM = 6000  # MLflow's limit on a param value
EXPERIMENT_KIND, TRAINING_KIND = "mlflow.experimentKind", "custom_model_development"
CHECKPOINT_ARTIFACTS = "checkpoint"  # a run's newest whole-state checkpoint (log_checkpoints)


def artifact_location_for(cfg: MlflowConfig) -> Optional[str]:
    """An explicit artifact location, else ``<db folder>/artifacts`` for SQLite."""
    if cfg.artifact_location:
        return cfg.artifact_location
    db = sqlite_file(cfg.tracking_uri)
    return (db.parent / "artifacts").as_uri() if db is not None else None


def check_tracking(cfg: MlflowConfig, timeout: float = 5.0) -> None:
    """Fail fast, before data and model are loaded: a SQLite store's folder must be
    creatable, an HTTP server must answer (MLflow's own client retries for minutes)."""
    from sweep.errors import InputError

    uri = cfg.tracking_uri
    ensure_sqlite_folder(uri, "mlflow.tracking_uri")
    if uri.startswith(("http://", "https://")):
        import urllib.error
        import urllib.request

        from urllib.parse import urlsplit, urlunsplit

        shown = mask_password(uri)
        parts = urlsplit(uri)  # credentials go in MLFLOW_TRACKING_USERNAME / _PASSWORD
        probe = urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[-1]))
        try:
            urllib.request.urlopen(probe.rstrip("/") + "/health", timeout=timeout).close()
        except urllib.error.HTTPError:
            pass  # something answers (a proxy, an auth layer): MLflow will say more
        except (OSError, ValueError) as error:
            reason = getattr(error, "reason", None) or error
            raise InputError(f"mlflow.tracking_uri={shown}: no MLflow server answers there "
                             f"({reason}); start one (mlflow server ...) or fix the URI, or "
                             "mlflow.enabled=false") from None


class NullTracker(Listener):
    """Stands in when tracking is off, so the trial code has no ``if``s."""

    run_id: Optional[str] = None

    def start(self, params: Mapping[str, Any], tags: Mapping[str, str],
              continue_run: Optional[str] = None) -> None: ...

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None: ...

    def log_artifacts(self, folder: Path, artifact_path: str) -> None: ...

    def set_tag(self, key: str, value: str) -> None: ...

    def end(self, status: str) -> None: ...


class MlflowTracker(NullTracker):
    """One MLflow run: params at start, metrics by step, artifacts, a final status."""

    def __init__(self, cfg: MlflowConfig, run_name: Optional[str] = None,
                 parent_run_id: Optional[str] = None):
        from mlflow.tracking import MlflowClient

        ensure_sqlite_folder(cfg.tracking_uri, "mlflow.tracking_uri")
        self.cfg = cfg
        self.run_name = run_name or cfg.run_name
        self.parent_run_id = parent_run_id
        self.run_id = None
        with init_lock(cfg.tracking_uri):  # opening a fresh store creates its tables
            self.client = MlflowClient(tracking_uri=cfg.tracking_uri)
            self.experiment_id = self._experiment_id()

    def _experiment_id(self) -> str:
        experiment = self.client.get_experiment_by_name(self.cfg.experiment)
        if experiment is None:
            try:
                self.client.create_experiment(
                    self.cfg.experiment, artifact_location=artifact_location_for(self.cfg),
                    tags={EXPERIMENT_KIND: TRAINING_KIND})
            except Exception:  # created meanwhile by another worker
                pass
            experiment = self.client.get_experiment_by_name(self.cfg.experiment)
        if EXPERIMENT_KIND not in experiment.tags:
            # MLflow 3's UI opens untagged experiments in its GenAI (traces) view
            self.client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND,
                                           TRAINING_KIND)
        return experiment.experiment_id

    def start(self, params: Mapping[str, Any], tags: Mapping[str, str],
              continue_run: Optional[str] = None) -> None:
        """A new run; or, with ``continue_run`` (a resumed trial's run id), that run again
        if this store has it, so its curves go on in one piece (new params only: MLflow
        keeps a param's first value), else a new run tagged with the old one's id."""
        from mlflow.entities import Param, RunTag

        all_tags = dict(tags)
        if self.parent_run_id:
            all_tags["mlflow.parentRunId"] = self.parent_run_id
        old = self._existing(continue_run)
        if old is not None:
            self.run_id = old.info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
            self.client.log_batch(self.run_id, tags=[RunTag(k, str(v))
                                                     for k, v in all_tags.items()])
            params = {k: v for k, v in params.items() if k not in old.data.params}
        else:
            if continue_run:
                all_tags["sweep.continues_run"] = continue_run
            run = self.client.create_run(self.experiment_id, run_name=self.run_name,
                                         tags=all_tags)
            self.run_id = run.info.run_id
        items = [Param(k, _param_value(v)) for k, v in sorted(params.items())]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params a batch
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def _existing(self, run_id: Optional[str]):
        if not run_id:
            return None
        try:
            run = self.client.get_run(run_id)
        except Exception:  # not in this store (another tracking URI), or deleted
            return None
        return run if run.info.experiment_id == self.experiment_id else None

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        from sweep.testing.faults import point

        point("mlflow_log")
        now = int(time.time() * 1000)
        self.client.log_batch(
            self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])

    def on_train_report(self, report: TrainReport) -> None:
        self.log_metrics(
            {
                "train_loss": report.train_loss,
                "learning_rate": report.learning_rate,
                "grad_norm": report.grad_norm,
                "tokens_per_sec": report.tokens_per_sec,
                "peak_memory_gb": report.peak_memory_gb,
                "trained_tokens": report.trained_tokens,
            },
            report.iteration,
        )

    def on_eval_report(self, report: EvalReport) -> None:
        # Step = micro-batches seen, as the pruner sees them: trials with different
        # accumulation line up on one x axis in the UI.
        metrics = {"val_loss": report.val_loss, "val_ppl": report.val_ppl}
        if math.isfinite(report.val_loss_se):
            metrics["val_loss_se"] = report.val_loss_se
        if math.isfinite(report.last_val_loss):  # the last weights, when an earlier won
            metrics["val_loss_last"] = report.last_val_loss
        self.log_metrics(metrics, report.iteration)

    def on_checkpoint(self, report: CheckpointReport) -> None:
        if report.kind != "best" and self.cfg.checkpoints_logged:  # the whole state
            self.log_artifacts(Path(report.path), CHECKPOINT_ARTIFACTS)

    def log_artifacts(self, folder: Path, artifact_path: str) -> None:
        self.client.log_artifacts(self.run_id, str(folder), artifact_path)

    def set_tag(self, key: str, value: str) -> None:
        self.client.set_tag(self.run_id, key, value)

    def end(self, status: str) -> None:
        if self.run_id is not None:
            self.client.set_terminated(self.run_id, status=status)


def _param_value(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return text if len(text) <= _MAX_PARAM else text[: _MAX_PARAM - 3] + "..."


def fetch_checkpoint(cfg: MlflowConfig, run_id: str, destination: Path) -> Optional[Path]:
    """The checkpoint run ``run_id`` logged (``mlflow.log_checkpoints``), downloaded into
    ``destination``; None if it logged none or the store cannot give it."""
    from mlflow.tracking import MlflowClient

    try:
        client = MlflowClient(tracking_uri=cfg.tracking_uri)
        if not client.list_artifacts(run_id, CHECKPOINT_ARTIFACTS):
            return None
        destination.mkdir(parents=True, exist_ok=True)
        return Path(client.download_artifacts(run_id, CHECKPOINT_ARTIFACTS, str(destination)))
    except Exception as error:  # noqa: BLE001  (the trial then starts from the beginning)
        log.warning("could not fetch the checkpoint of MLflow run %s from %s (%s: %s)", run_id,
                    mask_password(cfg.tracking_uri), type(error).__name__, error)
        return None
