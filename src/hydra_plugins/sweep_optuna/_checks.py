"""The sweep's refusals, each one line and a non-zero exit before (or instead of) a trial:
a search space or budget that does not fit the study it resumes, a password in the
config, and too many failed trials."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, Mapping

from omegaconf import DictConfig, ListConfig, OmegaConf
from optuna.trial import TrialState

from sweep.study.trials import EXIT_CODE_ATTR, ran

from hydra_plugins.sweep_optuna._proposals import SweepAborted
from hydra_plugins.sweep_optuna._search_space import SearchSpace, SearchSpaceError

if TYPE_CHECKING:
    import optuna

__all__ = ["BUDGET_KEYS", "check_space_fits", "check_budget_fits", "check_failure_rate",
           "refuse_secrets"]

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


# the keys that set how much a trial trains: trials of one study must share them
BUDGET_KEYS = ("train.epochs", "train.iters", "train.stop_after_epochs", "train.batch_size")


def check_space_fits(study: "optuna.Study", space: SearchSpace) -> None:
    """A study keeps one choice list per parameter (Optuna refuses another one
    mid-study); say so before any trial, naming both."""
    from optuna.distributions import check_distribution_compatibility

    seen: Dict[str, Any] = {}
    for t in study.get_trials(deepcopy=False):
        for name, old in t.distributions.items():
            seen.setdefault(name, old)
    for name, new in space.distributions.items():
        if name in seen:
            try:
                check_distribution_compatibility(seen[name], new)
            except ValueError:
                raise SearchSpaceError(
                    f"hydra.sweeper.params: {name} is {new} here, but study "
                    f"'{study.study_name}' searched it as {seen[name]}; Optuna keeps one "
                    "choice list per parameter in a study: name a new "
                    "hydra.sweeper.study_name") from None


def check_budget_fits(study: "optuna.Study", space: SearchSpace) -> None:
    """A study's trials compare only at one budget: refuse, before any trial, a
    command whose fixed budget differs from the one its finished trials trained at
    (an older study resumed after the default budget changed, say)."""
    def budget(overrides) -> Dict[str, str]:
        pairs = (o.split("=", 1) for o in overrides if "=" in o)
        return {k.lstrip("+~"): v for k, v in pairs
                if k.lstrip("+~") in BUDGET_KEYS and k.lstrip("+~") not in space.distributions}

    here = budget(space.fixed)
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        if "overrides" not in t.user_attrs:
            continue
        theirs = budget(t.user_attrs["overrides"])
        if theirs != here:
            shown = lambda b: " ".join(f"{k}={b[k]}" for k in sorted(b)) or "(none fixed)"
            raise SearchSpaceError(
                f"study '{study.study_name}' trained its trials with {shown(theirs)}, this "
                f"command with {shown(here)}: their values would not compare. Give the "
                "same budget, or name a new hydra.sweeper.study_name")
        return  # every trial of a study got the same fixed overrides: one is enough


def check_failure_rate(study: "optuna.Study", settings: Mapping[str, Any],
                       first_trial: int) -> None:
    """Stop when too many of the trials this command started (numbers from
    ``first_trial``) failed, or when it has seen as many failures as it was asked for
    trials (with max_failure_rate=1.0 a failure that every trial meets would otherwise
    never end). Earlier runs' failures do not count: after a mistake is fixed (a typo in
    a searched key, a missing data file), the same command goes on with the study."""
    trials = [t for t in study.get_trials(deepcopy=False, states=FINISHED + (TrialState.FAIL,))
              if t.number >= first_trial and ran(t)]
    failed = [t for t in trials if t.state == TrialState.FAIL]
    rate, limit = len(failed) / max(len(trials), 1), float(settings["max_failure_rate"])
    enough = len(trials) >= int(settings["min_trials_for_failure_rate"])
    cap = max(int(settings["n_trials"]), int(settings["min_trials_for_failure_rate"]))
    if not failed or not ((enough and rate > limit) or len(failed) >= cap):
        return
    reason = failed[-1].user_attrs.get("fail_reason", "no reason recorded")
    why = (f"{rate:.0%} > hydra.sweeper.max_failure_rate={limit:.0%}" if rate > limit
           else f"as many failures as hydra.sweeper.n_trials={settings['n_trials']}")
    # 2 when every failure was bad input (a missing data file), else 3 (sweep.errors)
    bad_input = all(t.user_attrs.get(EXIT_CODE_ATTR) == 2 for t in failed)
    raise SweepAborted(
        f"{len(failed)} of the {len(trials)} trials this run finished failed ({why}); "
        f"the last: {reason}. Fix the cause and run the same command again: the study "
        "goes on, and only the new run's trials count towards the rate",
        exit_code=2 if bad_input else 3)


def refuse_secrets(settings: Mapping[str, Any], config: DictConfig) -> None:
    """No password in the storage URL or the task's config (``sweep.secrets``): before
    multirun.yaml, the jobs' overrides and their runs would copy it."""
    from sweep.secrets import SecretInConfig, refuse_in_values, walk

    try:
        refuse_in_values([("hydra.sweeper.storage", settings["storage"])])
        for key in config:
            if key != "hydra":
                node = config[key]
                if isinstance(node, (DictConfig, ListConfig)):
                    node = OmegaConf.to_container(node, resolve=True)
                refuse_in_values(walk(node, f"{key}."))
    except SecretInConfig as error:
        raise SweepAborted(str(error)) from None
