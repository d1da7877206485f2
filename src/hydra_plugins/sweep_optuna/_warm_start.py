"""``hydra.sweeper.warm_start``: a new study that starts from what an earlier one learnt.

Two modes, from an earlier study (``study``, in ``storage`` or the sweep's own) or from a
``best_config.yaml`` (``config``, a sweep's report):

- ``enqueue``: the earlier ``top_k`` best configurations become this study's first
  trials (``study.enqueue_trial``), trained under this sweep's settings. A value outside
  this space is clipped to it (an interval) or dropped (a choice), each with one line,
  and the sampler draws what is missing.
- ``copy``: the earlier finished trials, with their values and intermediate values, are
  added to this study (``study.add_trials``) so that its sampler and pruner learn from
  them at no compute. Their values only compare if they were measured the same way, so
  it is refused, in one line, unless the settings that define the objective (model,
  data, budget, evaluation points, objectives: :func:`objective_settings`, recorded on
  every study) match. Copied trials carry the user attr ``copied_from`` and are never
  the winner: they have no adapter here (``sweep.study.winner``).

Each study records what it was started from (its user attr ``warm_start``); the same
command run again (a resumed sweep) does not add the trials a second time.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf
from optuna.distributions import (BaseDistribution, CategoricalDistribution, FloatDistribution,
                                  IntDistribution)
from optuna.trial import FrozenTrial, TrialState

from sweep.study.trials import COPIED_ATTR

from hydra_plugins.sweep_optuna._proposals import SweepAborted, config_key
from hydra_plugins.sweep_optuna._search_space import SearchSpace

__all__ = ["OBJECTIVE_KEYS", "SETTINGS_ATTR", "WARM_START_ATTR", "objective_settings",
           "to_params", "warm_start", "start"]

log = logging.getLogger("sweep.sweeper")

# what a trial's value depends on besides its params: a study records them
OBJECTIVE_KEYS = ("seed", "model.name", "model.path", "model.source", "data.name", "data.path",
                  "data.format", "data.mask_prompt", "data.system_prompt", "data.valid_fraction",
                  "data.max_examples", "train.batch_size", "train.iters", "train.epochs",
                  "train.stop_after_epochs", "train.max_seq_length", "train.eval_every",
                  "train.eval_every_iters", "train.eval_every_epochs", "train.val_batches",
                  "train.drop_long_examples")
SETTINGS_ATTR = "objective_settings"  # study user attr: {key: value}
WARM_START_ATTR = "warm_start"  # study user attr: what the study was started from


_PARSER = OverridesParser.create()


def _parsed(line: str) -> Tuple[str, Any]:
    override = _PARSER.parse_overrides([line])[0]
    return override.get_key_element().lstrip("+~"), override.value()


def objective_settings(config: DictConfig, space: SearchSpace,
                       objectives: List[str]) -> Dict[str, Any]:
    """The settings that define what a trial's values mean: :data:`OBJECTIVE_KEYS` as the
    trials get them (the sweep's fixed overrides over the composed config; "searched"
    for a key the space searches), and the objectives."""
    fixed = dict(_parsed(line) for line in space.fixed)
    searched = set(space.distributions) | set(space.derived_keys())
    out: Dict[str, Any] = {}
    for key in OBJECTIVE_KEYS:
        if key in searched:
            out[key] = "searched"
        else:
            value = fixed[key] if key in fixed else OmegaConf.select(
                config, key, default=None, throw_on_missing=False)
            out[key] = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
            if hasattr(out[key], "value"):  # an Enum
                out[key] = out[key].value
    out["objectives"] = list(objectives)
    return out


def _clip(key: str, value: Any, d: BaseDistribution, notes: List[str]) -> Optional[Any]:
    if isinstance(d, CategoricalDistribution):
        if value in d.choices:
            return next(c for c in d.choices if c == value)
        notes.append(f"{key}={value!r} is not among {list(d.choices)}: left to the sampler")
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        notes.append(f"{key}={value!r} is not a number: left to the sampler")
        return None
    low, high = d.low, d.high
    clipped = min(max(value, low), high)
    if isinstance(d, IntDistribution):
        clipped = int(low + round((clipped - low) / d.step) * d.step)
    elif isinstance(d, FloatDistribution) and d.step is not None:
        clipped = low + round((clipped - low) / d.step) * d.step
    if clipped != value:
        notes.append(f"{key}={value!r} is outside this space: clipped to {clipped!r}")
    return int(clipped) if isinstance(d, IntDistribution) else float(clipped)


def to_params(values: Mapping[str, Any], space: SearchSpace) -> Tuple[Dict[str, Any], List[str]]:
    """An earlier configuration (``{key: value}``) as params of ``space``: a derived key's
    factor from the key and its base; values outside the space clipped or dropped; with
    one note per change."""
    params: Dict[str, Any] = {}
    notes: List[str] = []
    for name, d in space.distributions.items():
        if name in space.derived:
            key, base = space.derived[name]
            base_value = values.get(base, space.bases.get(base))
            if key not in values or not base_value:
                notes.append(f"{name}: no {key} or {base} to derive it from: left to the sampler")
                continue
            value = values[key] / base_value
            value = int(value) if float(value).is_integer() and isinstance(d, (
                IntDistribution, CategoricalDistribution)) else value
        elif name in values:
            value = values[name]
        else:
            notes.append(f"{name}: not set there: left to the sampler")
            continue
        kept = _clip(name, value, d, notes)
        if kept is not None:
            params[name] = kept
    return params, notes


def _values_of(t: FrozenTrial) -> Dict[str, Any]:
    """What a trial was trained with: its overrides (derived keys included), else params."""
    lines = t.user_attrs.get("overrides")
    if not lines:
        return dict(t.params)
    return dict(_parsed(line) for line in lines)


def _earlier_study(settings: Mapping[str, Any], storage) -> optuna.Study:
    ws = settings["warm_start"]
    url = ws.get("storage") or settings["storage"]
    try:
        return optuna.load_study(study_name=str(ws["study"]),
                                 storage=storage if url == settings["storage"] else str(url))
    except KeyError:
        raise SweepAborted(f"hydra.sweeper.warm_start.study={ws['study']}: no such study in "
                           f"{str(url).split('@')[-1]}") from None


def _ranked(study: optuna.Study) -> List[FrozenTrial]:
    """The earlier study's complete trials, best first by its first objective."""
    sign = 1.0 if study.directions[0] == optuna.study.StudyDirection.MINIMIZE else -1.0
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.values and COPIED_ATTR not in t.user_attrs]
    return sorted(done, key=lambda t: (sign * t.values[0], t.number))


def _from_file(path: str) -> Dict[str, Any]:
    file = Path(path).expanduser()
    if not file.is_file():
        raise SweepAborted(f"hydra.sweeper.warm_start.config={path}: no such file")
    try:
        config = OmegaConf.load(file)
    except Exception as error:  # noqa: BLE001  (YAML's error names the line)
        raise SweepAborted(f"hydra.sweeper.warm_start.config={path}: "
                           f"{str(error).splitlines()[0]}") from None

    def leaves(node: Any, prefix: str = "") -> Dict[str, Any]:
        out: Dict[str, Any] = {}
        for k, v in (node.items() if isinstance(node, dict) else []):
            out.update(leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    return leaves(OmegaConf.to_container(config, resolve=False))


def _describe(ws: Mapping[str, Any], settings: Mapping[str, Any]) -> str:
    if ws.get("config"):
        return f"config {ws['config']}"
    where = str(ws.get("storage") or settings["storage"]).split("@")[-1]
    return f"study '{ws['study']}' ({where})"


def _check_copyable(earlier: optuna.Study, here: Dict[str, Any], name: str) -> None:
    theirs = earlier.user_attrs.get(SETTINGS_ATTR)
    if theirs is None:
        raise SweepAborted(f"hydra.sweeper.warm_start.mode=copy: {name} records no objective "
                           "settings (made by an older sweep): use mode=enqueue")
    for key in sorted(set(theirs) | set(here)):
        if theirs.get(key) != here.get(key):
            raise SweepAborted(
                f"hydra.sweeper.warm_start.mode=copy: {name} measured its trials with {key}="
                f"{theirs.get(key)!r}, this sweep with {here.get(key)!r}: their values would "
                "not compare; use mode=enqueue or the same settings")


def start(study: optuna.Study, storage: optuna.storages.BaseStorage, space: SearchSpace,
          settings: Mapping[str, Any], config: DictConfig) -> None:
    """Record what the study's values mean (a later study's warm start compares it), then
    start it from ``hydra.sweeper.warm_start`` if that is set, saying what was added."""
    here = objective_settings(config, space, list(settings["objectives"]))
    if study.user_attrs.get(SETTINGS_ATTR) != here:
        study.set_user_attr(SETTINGS_ATTR, here)
    said = warm_start(study, storage, space, settings, here)
    if said:
        log.info("%s", said)


def warm_start(study: optuna.Study, storage: optuna.storages.BaseStorage, space: SearchSpace,
               settings: Mapping[str, Any], here: Dict[str, Any]) -> Optional[str]:
    """Start ``study`` from ``hydra.sweeper.warm_start``, once; a line saying what was
    added (None when warm_start is off)."""
    ws = dict(settings.get("warm_start") or {})
    if not ws.get("study") and not ws.get("config"):
        return None
    if ws.get("study") and ws.get("config"):
        raise SweepAborted("hydra.sweeper.warm_start: give study or config, not both")
    mode, top_k = str(ws.get("mode", "enqueue")), int(ws.get("top_k", 3))
    if mode not in ("enqueue", "copy"):
        raise SweepAborted(f"hydra.sweeper.warm_start.mode={mode}: choose enqueue or copy")
    if top_k < 1:
        raise SweepAborted(f"hydra.sweeper.warm_start.top_k={top_k}: must be >= 1")
    source = _describe(ws, settings)
    record = {"source": source, "mode": mode, "top_k": top_k}
    done = study.user_attrs.get(WARM_START_ATTR)
    if done is not None and {k: done.get(k) for k in record} == record:
        return f"warm start: already started from {source} ({mode}); nothing added again"
    if ws.get("config"):
        if mode == "copy":
            raise SweepAborted("hydra.sweeper.warm_start.mode=copy needs a study: a "
                               "best_config.yaml holds one configuration and no values")
        earlier = [("best_config", _from_file(str(ws["config"])))]
    else:
        other = _earlier_study(settings, storage)
        if other.study_name == study.study_name and mode == "copy":
            raise SweepAborted("hydra.sweeper.warm_start.study is this sweep's own study")
        if mode == "copy":
            _check_copyable(other, here, source)
            added = _copy(study, other, space)
            record["trials"] = added
            study.set_user_attr(WARM_START_ATTR, record)
            return (f"warm start: copied {len(added)} finished trial(s) of {source} into "
                    f"study '{study.study_name}' (their values and intermediate values)")
        earlier = [(f"trial {t.number}", _values_of(t)) for t in _ranked(other)[:top_k]]
        if not earlier:
            raise SweepAborted(f"hydra.sweeper.warm_start: {source} has no complete trial")
    queued = []
    for label, values in earlier:
        params, notes = to_params(values, space)
        for note in notes:
            log.warning("warm start, %s: %s", label, note)
        if params:
            study.enqueue_trial(params, user_attrs={"warm_start": f"{source} {label}"},
                                skip_if_exists=True)
            queued.append(params)
    record["queued"] = len(queued)
    study.set_user_attr(WARM_START_ATTR, record)
    return (f"warm start: the first {len(queued)} trial(s) are the best of {source}: "
            + "; ".join(" ".join(f"{k}={v}" for k, v in p.items()) for p in queued))


def _copy(study: optuna.Study, other: optuna.Study, space: SearchSpace) -> List[int]:
    """``other``'s finished trials as this study's (params mapped onto ``space``, the
    trials that do not fit it left out with a line each); their numbers there."""
    seen = {config_key(t.params) for t in study.get_trials(deepcopy=False)}
    added, trials = [], []
    for t in other.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        params, notes = to_params(_values_of(t), space)
        if notes or set(params) != set(space.distributions):
            log.warning("warm start: trial %d of %s does not fit this space (%s): not copied",
                        t.number, other.study_name, "; ".join(notes) or "other params")
            continue
        if config_key(params) in seen:
            continue
        seen.add(config_key(params))
        attrs = {k: v for k, v in t.user_attrs.items()
                 if k not in ("mlflow_run_id", "output_dir", "sweeper_host", "sweeper_pid")}
        trials.append(optuna.trial.create_trial(
            state=t.state, params=params,
            distributions={k: space.distributions[k] for k in params},
            values=t.values,
            intermediate_values=dict(t.intermediate_values),
            user_attrs={**attrs, COPIED_ATTR: f"{other.study_name}#{t.number}"}))
        added.append(t.number)
    study.add_trials(trials)
    return added
