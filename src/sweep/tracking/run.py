"""A trial's tracked run, start to end: one definition of its lifecycle for every trial
runner (the real one, :func:`sweep.trial.run_trial`, and the zero-cost one of the load
tests, :mod:`sweep.testing.zero_cost`).

Whatever happens inside ``with tracked_run(...)`` ends the run: a listener's stop (a
pruner) ``KILLED`` with the tag ``sweep.state``, Ctrl-C or SIGTERM ``KILLED``, any other
exception ``FAILED`` with the tag ``sweep.fail_reason``, a normal end ``FINISHED``.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Mapping, Optional, Sequence

from omegaconf import DictConfig, OmegaConf

from sweep.training.events import TrialStopped

__all__ = ["open_tracker", "tracked_run", "write_config"]


def open_tracker(mlflow: Any, run_name: Optional[str] = None,
                 parent_run_id: Optional[str] = None):
    """An MLflow tracker for the typed ``mlflow`` settings, or the null one when off."""
    from sweep.tracking.mlflow_tracker import MlflowTracker, NullTracker

    if not mlflow.enabled:
        return NullTracker()
    return MlflowTracker(mlflow, run_name=run_name, parent_run_id=parent_run_id)


def write_config(cfg: DictConfig, overrides: Sequence[str], folder: Path) -> Path:
    """The resolved config and the command line's overrides, as the run's ``config/``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    (folder / "overrides.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(list(overrides))))
    return folder


@contextmanager
def tracked_run(tracker, params: Mapping[str, Any], tags: Dict[str, str], *,
                on_stop: Optional[Callable[[], None]] = None,
                continue_run: Optional[str] = None) -> Iterator[Any]:
    """Start ``tracker``'s run with ``params`` and ``tags`` (or continue the run
    ``continue_run``: a resumed trial's) and end it as the body ends (see the module
    docstring). ``on_stop`` runs before a stopped run ends (the real trial logs the
    adapter it has so far)."""
    from sweep.testing.faults import point

    tracker.start(params, tags, continue_run=continue_run)
    try:
        yield tracker
    except TrialStopped as stop:
        if on_stop is not None:
            on_stop()
        tracker.set_tag("sweep.state", stop.state)
        tracker.end("KILLED")
        raise
    except KeyboardInterrupt:
        tracker.end("KILLED")
        raise
    except BaseException as error:
        tracker.set_tag("sweep.fail_reason", f"{type(error).__name__}: {error}"[:5000])
        tracker.end("FAILED")
        raise
    point("trial_end")  # done and logged; the run is not closed yet
    tracker.end("FINISHED")
