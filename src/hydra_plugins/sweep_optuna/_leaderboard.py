"""The study's leaderboard: one row per trial (finished ones first, best first), as CSV,
Markdown and a terminal table in blocks of columns that fit its width (the trial column
repeated), never cut."""

from __future__ import annotations

import csv
import io
import math
import textwrap
from typing import Any, Dict, List, Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

from optuna.study import StudyDirection

from sweep.study.objectives import ANSWER_METRICS
from sweep.study.trials import ran
from sweep.study.winner import feasible

__all__ = ["leaderboard", "format_value", "to_csv", "to_markdown", "format_table", "leaderboard_text"]

_ORDER = {TrialState.COMPLETE: 0, TrialState.PRUNED: 1, TrialState.FAIL: 2,
          TrialState.RUNNING: 3, TrialState.WAITING: 4}


def format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def _with_se(row: Dict[str, Any], name: str) -> str:
    se = row.get(f"{name}_se")
    return format_value(row[name]) + (f" +- {se:.3f}" if se is not None and row[name] is not None
                              and math.isfinite(se) else "")


def leaderboard(study: optuna.Study) -> List[Dict[str, Any]]:
    """One row per trial, best first: complete by value, then pruned, then failed."""
    objectives = study.user_attrs.get("objectives", ["value"])
    keys = sorted({k for t in study.trials for k in t.params})
    sign = 1.0 if study.directions[0] == StudyDirection.MINIMIZE else -1.0
    answers = [m for m in ANSWER_METRICS if m not in objectives
               and any(m in t.user_attrs for t in study.trials)]
    constrained = any(t.constraints for t in study.trials)

    def sort_key(t: FrozenTrial):
        # pruned trials' last reports are val_loss (the pruner's): lower is better
        last = t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values \
            else math.inf
        primary = sign * t.values[0] if t.values else last
        return (_ORDER.get(t.state, 9), not feasible(t),
                primary if primary is not None and math.isfinite(primary) else math.inf,
                t.number)

    rows = []
    for rank, t in enumerate(sorted(filter(ran, study.trials), key=sort_key), start=1):
        row: Dict[str, Any] = {"rank": rank, "trial": t.number, "state": t.state.name}
        for i, name in enumerate(objectives):
            row[name] = t.values[i] if t.values and len(t.values) > i else None
        row["val_loss_se"] = t.user_attrs.get("val_loss_se")  # of the whole-split value
        for name in [o for o in objectives if o in ANSWER_METRICS] + answers:
            row.setdefault(name, t.user_attrs.get(name))  # an objective's is its value
            row[f"{name}_se"] = t.user_attrs.get(f"{name}_se")
        if constrained:
            row["feasible"] = (feasible(t) if t.constraints else None)
        if t.intermediate_values:
            row["last_reported"] = t.intermediate_values[max(t.intermediate_values)]
            row["reported_at_iter"] = max(t.intermediate_values)
        else:
            row["last_reported"] = row["reported_at_iter"] = None
        for k in keys:
            row[k] = t.params.get(k)
        row["seconds"] = round(t.duration.total_seconds(), 1) if t.duration else None
        row["mlflow_run_id"] = t.user_attrs.get("mlflow_run_id")
        rows.append(row)
    return rows


def to_csv(rows: List[Dict[str, Any]]) -> str:
    out = io.StringIO()
    if rows:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return out.getvalue()


def to_markdown(rows: List[Dict[str, Any]]) -> str:
    if not rows:
        return "(no trials)\n"
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(format_value(r[h]) for h in header) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]], width: int,
                 repeat: int = 0, left: Sequence[str] = ()) -> str:
    """``rows`` as text no wider than ``width``: the columns that do not fit go into further
    blocks, each starting with column ``repeat`` again; a cell wider than that wraps."""
    sep = "  "
    width = max(width, 20)
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(header)]
    widths[repeat] = min(widths[repeat], width // 3)
    widths = [w if i == repeat else min(w, width - widths[repeat] - len(sep))
              for i, w in enumerate(widths)]
    blocks: List[List[int]] = []
    for i in range(len(header)):
        if blocks and sum(widths[j] + len(sep) for j in blocks[-1]) + widths[i] <= width:
            blocks[-1].append(i)
        else:
            blocks.append([i] if not blocks or i == repeat else [repeat, i])

    def lines(cells: Sequence[str], block: List[int]) -> List[str]:
        wrapped = {i: textwrap.wrap(cells[i], widths[i], break_on_hyphens=False) or [""]
                   for i in block}

        def cell(i: int, k: int) -> str:
            text = wrapped[i][k] if k < len(wrapped[i]) else ""
            return text.ljust(widths[i]) if header[i] in left else text.rjust(widths[i])

        height = max(len(w) for w in wrapped.values())
        return [sep.join(cell(i, k) for i in block).rstrip() for k in range(height)]

    out: List[str] = []
    for block in blocks:
        out += [""] if out else []
        out += lines(header, block) + [sep.join("-" * widths[i] for i in block)]
        for row in rows:
            out += lines(row, block)
    return "\n".join(out)


def leaderboard_text(study: optuna.Study, rows: List[Dict[str, Any]], width: int) -> str:
    """The leaderboard for the terminal: a title and the table, no line wider than width."""
    objectives = study.user_attrs.get("objectives", ["value"])
    params = sorted({k for t in study.trials for k in t.params})
    extra = [m for m in ANSWER_METRICS if rows and m in rows[0] and m not in objectives]
    feasibility = ["feasible"] if rows and "feasible" in rows[0] else []
    header = ["rank", "trial", "state", *objectives, *extra, *feasibility, "last reported",
              *params, "seconds"]
    cells = [[str(r["rank"]), str(r["trial"]), r["state"],
              *(_with_se(r, o) for o in objectives + extra),
              *({True: "yes", False: "no"}.get(r["feasible"], "") for _ in feasibility),
              format_value(r["last_reported"]), *(format_value(r[p]) for p in params),
              format_value(r["seconds"])]
             for r in rows]
    title = textwrap.fill(f"study '{study.study_name}': {len(rows)} trials", max(width, 20))
    return title + "\n" + format_table(header, cells, width, repeat=1, left=("state",))
