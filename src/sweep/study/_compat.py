"""Library internals behind one door. Each function here relies on something Optuna or
Hydra does not promise (a private module, an attribute, a table, a system attribute, a
piece of ``Trial``'s logic); ``tests/study/test_compat.py`` checks each assumption on the
installed versions and fails loudly, naming it, when an upgrade breaks it. Everything
else in the project uses the libraries' public API only.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Dict, Iterator, Mapping

if TYPE_CHECKING:
    import optuna
    from optuna.distributions import BaseDistribution
    from optuna.trial import FrozenTrial

__all__ = ["has_heartbeat", "enqueued_params", "draw_unrecorded", "suggesting", "tell_quietly",
           "heartbeat_ages", "job_error"]


def has_heartbeat(storage: Any) -> bool:
    """Whether ``storage`` keeps Optuna's heartbeats (``RDBStorage`` does, the gRPC proxy
    does not). Optuna exports no name for it: ``BaseHeartbeat`` lives in the private
    ``optuna.storages._heartbeat``."""
    from optuna.storages._heartbeat import BaseHeartbeat

    return isinstance(storage, BaseHeartbeat)


def enqueued_params(t: "FrozenTrial") -> Dict[str, Any]:
    """A trial's configuration; an enqueued (WAITING) trial's is still in the system
    attribute ``fixed_params`` that ``study.enqueue_trial`` writes."""
    return dict(t.params) or dict(t.system_attrs.get("fixed_params") or {})


def draw_unrecorded(sampler: "optuna.samplers.BaseSampler", study: "optuna.Study",
                    trial: "FrozenTrial", distributions: Mapping[str, "BaseDistribution"]
                    ) -> Dict[str, Any]:
    """One candidate configuration for ``trial``, asked of ``sampler`` the way
    ``Trial.suggest_*`` asks it (relative sampling first, then independent; a single-value
    distribution is not sampled) but not recorded, so that a repeat can be drawn again.
    Unlike ``Trial``, the sampler sees the whole study, not the HyperbandPruner's bracket."""
    from optuna.distributions import CategoricalDistribution

    relative_space = sampler.infer_relative_search_space(study, trial)
    relative = sampler.sample_relative(study, trial, relative_space)
    params = {}
    for name, d in distributions.items():
        if d.single():
            value = d.choices[0] if isinstance(d, CategoricalDistribution) else d.low
        elif name in relative and name in relative_space:
            value = relative[name]
        else:
            value = sampler.sample_independent(study, trial, name, d)
        params[name] = d.to_external_repr(d.to_internal_repr(value))  # numpy -> Python types
    return params


def _chosen(params: Mapping[str, Any], fallback: Any = None):
    import optuna

    class Chosen(optuna.samplers.BaseSampler):
        """Gives ``trial.suggest_*`` the values already drawn (a name not among them is
        drawn by ``fallback``); runs no sampler hook."""

        def infer_relative_search_space(self, study, trial):
            return {}

        def sample_relative(self, study, trial, search_space):
            return {}

        def sample_independent(self, study, trial, param_name, param_distribution):
            if param_name in params or fallback is None:
                return params[param_name]
            return fallback.sample_independent(study, trial, param_name, param_distribution)

    return Chosen()


@contextlib.contextmanager
def _sampler_swapped(study: "optuna.Study", sampler: Any) -> Iterator[None]:
    """``Trial`` and ``Study.tell`` call ``study.sampler``: swapped for the calls inside."""
    saved, study.sampler = study.sampler, sampler
    try:
        yield
    finally:
        study.sampler = saved


@contextlib.contextmanager
def suggesting(study: "optuna.Study", params: Mapping[str, Any],
               fallback: "optuna.samplers.BaseSampler | None" = None) -> Iterator[None]:
    """Inside, ``trial.suggest_*`` records ``params`` (drawn by :func:`draw_unrecorded`) as
    usual, without asking the study's sampler again; a name not in ``params`` is drawn
    by ``fallback``'s independent sampling."""
    with _sampler_swapped(study, _chosen(params, fallback)):
        yield


def tell_quietly(study: "optuna.Study", trial: Any, **kwargs: Any) -> None:
    """``study.tell`` without the sampler's ``after_trial`` hook: GridSampler's calls
    ``study.stop()``, which raises RuntimeError outside ``optimize()``."""
    with _sampler_swapped(study, _chosen({})):
        study.tell(trial, skip_if_finished=True, **kwargs)


HEARTBEATS_SQL = ("SELECT t.number, h.heartbeat FROM trial_heartbeats h "
                  "JOIN trials t ON t.trial_id = h.trial_id WHERE t.study_id = :study_id")


def heartbeat_ages(storage: "optuna.storages.RDBStorage", study_id: int) -> Dict[int, float]:
    """Seconds since each trial's last heartbeat, by trial number, on the database's clock
    (Optuna has no API to read heartbeats: its tables ``trial_heartbeats`` and ``trials``)."""
    import sqlalchemy

    query = sqlalchemy.text(HEARTBEATS_SQL).columns(number=sqlalchemy.Integer,
                                                    heartbeat=sqlalchemy.DateTime)
    with storage.engine.connect() as connection:
        now = connection.execute(sqlalchemy.select(sqlalchemy.func.now())).scalar()
        rows = connection.execute(query, {"study_id": study_id}).all()
    now = now.replace(tzinfo=None)  # as Optuna compares them (naive timestamps in PostgreSQL)
    return {number: (now - beat).total_seconds() for number, beat in rows}


def job_error(result: Any) -> Any:
    """The exception of a Hydra job that FAILED. ``JobReturn.return_value`` re-raises it,
    so the stored one is read from ``_return_value``."""
    return result._return_value
