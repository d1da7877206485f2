"""``sweep-status``: a study's progress, read from its storage by any machine that reaches it.

Read-only: a missing SQLite file is refused (SQLAlchemy would create it on connect, even
with ``skip_table_creation``), a database without Optuna's tables is refused, and the
storage is opened with ``skip_table_creation=True``, which on an existing Optuna storage
writes nothing. Stale trials are shown, never failed (``fail_stale_trials`` would write).

Heartbeats: Optuna has no public read of heartbeat times (``RDBStorage._get_stale_trial_ids``
is private and only answers stale or not), so :func:`heartbeat_ages` runs one SELECT on
Optuna's ``trial_heartbeats`` table (``optuna/storages/_rdb/models.py``, TrialHeartbeatModel)
through ``storage.engine``, and measures the age on the database's clock, as Optuna does: the
beats are written with the database's ``now()``, whatever the clocks of the workers.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import sys
import time
from typing import Any, Dict, Optional, Sequence, TextIO

import optuna
from optuna.trial import FrozenTrial, TrialState

from sweep.errors import InputError, first_line
from sweep.study.winner import best_trials
from sweep.study.link import HEARTBEAT_ATTR
from sweep.paths import mask_password, sqlite_file
from sweep.study.storages import BEAT_ATTR, is_grpc, open_url
from sweep.study._compat import has_heartbeat, heartbeat_ages as database_heartbeat_ages
from sweep.study import FINISHED_ATTR
from sweep.study.trials import ran

__all__ = ["StatusError", "open_readonly", "load_study", "heartbeat_ages", "study_status",
           "render_text", "render", "show"]

STATES = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")


class StatusError(InputError):
    """The storage or the study cannot be read; one line naming the key."""



def open_readonly(url: str, key: str = "hydra.sweeper.storage") -> optuna.storages.RDBStorage:
    """The study storage at ``url``, opened without creating a file, a table or a row."""
    import sqlalchemy

    shown = mask_password(url)
    if is_grpc(url):  # the proxy's database already has its tables; it creates nothing here
        try:
            return open_url(url)
        except (ConnectionError, ValueError) as error:
            raise StatusError(f"{key}={shown}: {error}") from None
    path = sqlite_file(url)
    if path is not None and not path.is_file():
        raise StatusError(f"{key}={shown}: no such SQLite file {path} (sweep-status reads "
                          "an existing study storage and creates nothing)")
    try:
        engine = sqlalchemy.create_engine(url)
        try:
            tables = set(sqlalchemy.inspect(engine).get_table_names())
        finally:
            engine.dispose()
        if not {"studies", "trials", "version_info"} <= tables:
            raise StatusError(f"{key}={shown}: no Optuna study tables in it (no sweep has "
                              "used this storage)")
        return optuna.storages.RDBStorage(url, skip_table_creation=True)
    except StatusError:
        raise
    except Exception as error:  # an unreachable server, a bad URL, a missing driver
        raise StatusError(f"{key}={shown}: cannot open the study's storage "
                          f"({type(error).__name__}: {mask_password(first_line(error))})"
                          ) from None


def load_study(storage: optuna.storages.RDBStorage, name: str, url: str) -> optuna.Study:
    """Study ``name``, or a StatusError listing the studies the storage holds."""
    names = optuna.study.get_all_study_names(storage)
    if name not in names:
        there = ", ".join(sorted(names)) or "none"
        raise StatusError(f"hydra.sweeper.study_name={name}: no such study in "
                          f"{mask_password(url)} (studies there: {there})")
    return optuna.load_study(study_name=name, storage=storage)


def heartbeat_ages(storage: optuna.storages.RDBStorage, study_id: int) -> Dict[int, float]:
    """Seconds since each trial's last heartbeat (trials that beat), by trial number.
    Behind a gRPC proxy, the beat each job writes into its trial (``sweep.study.storages``)."""
    if not has_heartbeat(storage):
        now_s = time.time()
        running = storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))
        return {t.number: now_s - float(t.user_attrs[BEAT_ATTR]) for t in running
                if isinstance(t.user_attrs.get(BEAT_ATTR), (int, float))}

    return database_heartbeat_ages(storage, study_id)


def _num(value: Optional[float]) -> Optional[float]:
    return value if value is not None and math.isfinite(value) else None


def _trial(t: FrozenTrial) -> Dict[str, Any]:
    return {"number": t.number, "values": list(t.values or []), "params": dict(t.params)}


def study_status(study: optuna.Study, storage: optuna.storages.RDBStorage, url: str,
                 settings: Any, failures: int = 5, front: int = 5,
                 now: Optional[dt.datetime] = None) -> Dict[str, Any]:
    """Everything ``sweep-status`` shows, as plain JSON-ready values. ``settings`` is the
    composed ``hydra.sweeper`` (``n_trials``, ``grace_period``, ``heartbeat_interval``)."""
    trials = study.get_trials(deepcopy=False)
    counts = {s: sum(1 for t in trials if t.state.name == s and ran(t)) for s in STATES}
    attrs = study.user_attrs
    single = len(study.directions) == 1
    best, pareto = None, None
    winners = best_trials(study)
    if single and winners:
        best = _trial(winners[0])
    elif not single:
        on_front = sorted(winners, key=lambda t: t.number)
        pareto = {"size": len(on_front), "trials": [_trial(t) for t in on_front[:front]]}
    grace = int(settings.grace_period)
    beats = heartbeat_ages(storage, storage.get_study_id_from_name(study.study_name))
    now = now or dt.datetime.now()  # Optuna stamps datetime_start with the asking host's clock
    running = []
    for t in (t for t in trials if t.state == TrialState.RUNNING):
        steps = t.intermediate_values
        last = max(steps) if steps else None
        beat = beats.get(t.number)
        running.append({
            "number": t.number, "params": dict(t.params),
            "host": t.user_attrs.get("host", t.user_attrs.get("sweeper_host")),
            "pid": t.user_attrs.get("pid", t.user_attrs.get("sweeper_pid")),
            "age_seconds": (now - t.datetime_start).total_seconds() if t.datetime_start else None,
            "last_step": last, "last_value": _num(steps[last]) if steps else None,
            "heartbeat_seconds": beat, "stale": beat is not None and beat > grace})
    failed = [t for t in trials if t.state == TrialState.FAIL and ran(t)][::-1][:failures]
    return {
        "study": study.study_name, "storage": mask_password(url),
        "objectives": [getattr(o, "value", o) for o in attrs.get("objectives")
                       or settings.objectives],  # the composed config's are Enum members
        "directions": [d.name.lower() for d in study.directions],
        "n_trials": int(settings.n_trials),
        "finished": counts["COMPLETE"] + counts["PRUNED"],
        "states": counts, "not_run": sum(1 for t in trials if not ran(t)),
        "best": best, "pareto_front": pareto,
        "whole_budget": attrs.get(FINISHED_ATTR) or None,
        "heartbeat_interval": int(attrs.get(HEARTBEAT_ATTR, settings.heartbeat_interval)),
        "grace_period": grace, "running": running,
        "recent_failures": [{"number": t.number, "reason": _reason(t)} for t in failed],
        "time": now.isoformat(timespec="seconds"),
    }


def _reason(t: FrozenTrial) -> Optional[str]:
    lines = str(t.user_attrs.get("fail_reason") or "").strip().splitlines()
    return lines[0] if lines else None


def _value(v: float) -> str:
    return f"{v:.4f}" if abs(v) < 1e4 else f"{v:.0f}"


def _params(params: Dict[str, Any]) -> str:
    return " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in params.items())


def _duration(seconds: Optional[float]) -> str:
    if seconds is None:
        return "?"
    s = int(max(seconds, 0))
    if s < 60:
        return f"{s}s"
    return f"{s // 60}m{s % 60:02d}s" if s < 3600 else f"{s // 3600}h{s % 3600 // 60:02d}m"


def _scored(t: Dict[str, Any], objectives: Sequence[str]) -> str:
    values = ", ".join(f"{n} {_value(v)}" for n, v in zip(objectives, t["values"]))
    return f"trial {t['number']}: {values}  {_params(t['params'])}"


def render_text(s: Dict[str, Any]) -> str:
    """The status for people: one line per fact, one per running trial and failure."""
    goals = ", ".join(f"{o} ({d})" for o, d in zip(s["objectives"], s["directions"]))
    lines = [f"study       {s['study']}", f"storage     {s['storage']}",
             f"objectives  {goals}",
             f"progress    {s['finished']} of {s['n_trials']} finished (complete or pruned)",
             "trials      " + ", ".join(f"{k} {v}" for k, v in s["states"].items())
             + f"; not run {s['not_run']}"]
    if s["pareto_front"] is not None:
        front = s["pareto_front"]
        lines.append(f"pareto      {front['size']} trial(s) on the front")
        lines += [f"  {_scored(t, s['objectives'])}" for t in front["trials"]]
    else:
        lines.append(f"best        {_scored(s['best'], s['objectives']) if s['best'] else '-'}")
    done = s.get("whole_budget")
    if done and done.get("state") == "done":
        lines.append(f"winner      trial {done['trial']} trained to its whole budget "
                     f"({done['iterations']} micro-batches): val_loss {_value(done['val_loss'])}"
                     f" +- {_value(done['val_loss_se'])} (searched: "
                     f"{_value(done['search_val_loss'])})")
    elif done:
        lines.append(f"winner      trial {done['trial']} training on to its whole budget "
                     f"({done.get('host')} pid {done.get('pid')}, since "
                     f"{_duration(time.time() - done['started']) if done.get('started') else '?'})")
    lines.append(f"running     {len(s['running'])} (heartbeat every {s['heartbeat_interval']} s, "
                 f"stale after {s['grace_period']} s without one)")
    for r in s["running"]:
        value = (f"step {r['last_step']}: {_value(r['last_value'])}"
                 if r["last_value"] is not None else
                 f"step {r['last_step']}: not finite" if r["last_step"] is not None
                 else "no value yet")
        beat = (f"heartbeat {r['heartbeat_seconds']:.0f} s ago"
                if r["heartbeat_seconds"] is not None else "no heartbeat yet")
        lines.append(f"  trial {r['number']}  {r['host']} pid {r['pid']}  age "
                     f"{_duration(r['age_seconds'])}  {value}  {beat}"
                     + ("  STALE" if r["stale"] else ""))
    if s["recent_failures"]:
        lines.append(f"failures    the {len(s['recent_failures'])} most recent")
        lines += [f"  trial {f['number']}  {(f['reason'] or 'no reason recorded')[:160]}"
                  for f in s["recent_failures"]]
    return "\n".join(lines)


def render(status: Dict[str, Any], fmt: str, one_line: bool = False) -> str:
    """``text`` or ``json`` (indented, or one object a line when watching)."""
    if fmt == "json":
        return json.dumps(status, indent=None if one_line else 2)
    return render_text(status)


def show(sweeper: Any, cfg: Any, out: TextIO = sys.stdout) -> None:
    """Print the status of the study that ``sweeper`` (the composed ``hydra.sweeper``) names;
    ``cfg`` is ``status.*``. With ``cfg.watch``, again every ``watch`` seconds until Ctrl-C;
    a storage that stops answering meanwhile is one line on stderr, and the next print
    tries again."""
    url, name = str(sweeper.storage), str(sweeper.study_name)
    storage = open_readonly(url)
    study = load_study(storage, name, url)
    fmt = getattr(cfg.format, "value", cfg.format)
    while True:
        try:
            text = render(study_status(study, storage, url, sweeper, cfg.failures, cfg.front),
                          fmt, one_line=bool(cfg.watch))
        except Exception as error:  # noqa: BLE001  (watching: the next print tries again)
            if not cfg.watch:
                raise
            print(f"sweep-status: hydra.sweeper.storage={mask_password(url)}: no answer "
                  f"({type(error).__name__}: {mask_password(first_line(error))})",
                  file=sys.stderr, flush=True)
        else:
            if cfg.watch and fmt == "text":  # a screen a print, as watch(1) does
                out.write("\x1b[H\x1b[2J" if out.isatty() else "\n")
                text = f"{dt.datetime.now():%Y-%m-%d %H:%M:%S}\n{text}"
            print(text, file=out, flush=True)
        if not cfg.watch:
            return
        time.sleep(cfg.watch)
