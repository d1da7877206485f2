"""``hydra.sweeper.custom_search_space``: the user's function ``(cfg, trial)``, called after
a trial's params are suggested, as in Hydra's stock Optuna sweeper. What it suggests is
the trial's own (conditional parameters); the mapping it returns becomes overrides
(derived values). Errors in it are one line naming the setting."""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

import optuna

from sweep.errors import first_line

from hydra_plugins.sweep_optuna._errors import SweepAborted
from hydra_plugins.sweep_optuna._search_space import SearchSpace

__all__ = ["load_custom", "custom_overrides"]


def load_custom(name: Optional[str], config: Any):
    """``hydra.sweeper.custom_search_space``: a function ``(cfg, trial)`` called after the
    params are suggested (as in Hydra's stock Optuna sweeper); it may suggest more and
    return a mapping of overrides. None when not set."""
    if not name:
        return None
    from hydra.utils import get_method

    try:
        function = get_method(str(name))
    except Exception as error:
        raise SweepAborted(f"hydra.sweeper.custom_search_space={name}: not a function that "
                           f"can be imported ({first_line(error)})") from None

    def custom(trial: optuna.trial.Trial) -> Any:
        return function(config, trial)

    custom.name = str(name)
    return custom


def custom_overrides(space: SearchSpace, trial: optuna.trial.Trial) -> Dict[str, Any]:
    """What ``hydra.sweeper.custom_search_space`` adds to a trial: the params it suggests
    are the trial's own; the mapping it returns (conditional or derived values) becomes
    overrides."""
    if space.custom is None:
        return {}
    name = getattr(space.custom, "name", "hydra.sweeper.custom_search_space")
    try:
        extra = space.custom(trial)
    except (optuna.TrialPruned, SweepAborted):
        raise
    except Exception as error:
        raise SweepAborted(f"hydra.sweeper.custom_search_space={name} raised "
                           f"{type(error).__name__}: {error}") from None
    if extra is None:
        return {}
    if not isinstance(extra, Mapping):
        raise SweepAborted(f"hydra.sweeper.custom_search_space={name} returned "
                           f"{type(extra).__name__}: a mapping of key -> value, or None")
    clash = sorted(set(extra) & (set(trial.params) | set(space.derived_keys())))
    if clash:
        raise SweepAborted(f"hydra.sweeper.custom_search_space={name} returned {clash}, "
                           "already searched: return only keys the space does not set")
    return dict(extra)
