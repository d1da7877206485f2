"""The study's MLflow parent run and its end-of-sweep report.

One parent run per study (its id is kept in the study, so a resumed sweep reuses it);
every trial's run is its child. At the end the parent gets the best value and params, a
leaderboard (CSV and Markdown), plots (PNG, drawn in _plots.py), the best config as YAML
and a copy of the best adapter; the terminal gets the same leaderboard as a table, in
blocks of columns that fit its width (the trial column repeated), never cut.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import shutil
import textwrap
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import optuna
from omegaconf import DictConfig, OmegaConf
from optuna.trial import FrozenTrial, TrialState

from sweep.testing.faults import point
from sweep.study.winner import best_trials

from sweep.study.trials import ran

from hydra_plugins.sweep_optuna._proposals import SweepAborted
from hydra_plugins.sweep_optuna._search_space import SearchSpace

log = logging.getLogger("sweep.sweeper")
PARENT_ATTR = "mlflow_parent_run_id"
PARENT_WAIT = 60.0  # seconds a process that did not make the study waits for its parent run
_ORDER = {TrialState.COMPLETE: 0, TrialState.PRUNED: 1, TrialState.FAIL: 2,
          TrialState.RUNNING: 3, TrialState.WAITING: 4}


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def _with_se(row: Dict[str, Any], name: str) -> str:
    se = row.get("val_loss_se") if name == "val_loss" else None
    return _fmt(row[name]) + (f" +- {se:.3f}" if se is not None and row[name] is not None
                              and math.isfinite(se) else "")


def leaderboard(study: optuna.Study) -> List[Dict[str, Any]]:
    """One row per trial, best first: complete by value, then pruned, then failed."""
    objectives = study.user_attrs.get("objectives", ["value"])
    keys = sorted({k for t in study.trials for k in t.params})

    def sort_key(t: FrozenTrial):
        last = t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values \
            else math.inf
        primary = t.values[0] if t.values else last
        return (_ORDER.get(t.state, 9), primary if primary is not None else math.inf, t.number)

    rows = []
    for rank, t in enumerate(sorted(filter(ran, study.trials), key=sort_key), start=1):
        row: Dict[str, Any] = {"rank": rank, "trial": t.number, "state": t.state.name}
        for i, name in enumerate(objectives):
            row[name] = t.values[i] if t.values and len(t.values) > i else None
        row["val_loss_se"] = t.user_attrs.get("val_loss_se")  # of the whole-split value
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
    lines += ["| " + " | ".join(_fmt(r[h]) for h in header) + " |" for r in rows]
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
    header = ["rank", "trial", "state", *objectives, "last reported", *params, "seconds"]
    cells = [[str(r["rank"]), str(r["trial"]), r["state"], *(_with_se(r, o) for o in objectives),
              _fmt(r["last_reported"]), *(_fmt(r[p]) for p in params), _fmt(r["seconds"])]
             for r in rows]
    title = textwrap.fill(f"study '{study.study_name}': {len(rows)} trials", max(width, 20))
    return title + "\n" + format_table(header, cells, width, repeat=1, left=("state",))


def check_tracking(config: DictConfig) -> None:
    """Before the study is opened: a tracking server that does not answer is one line in
    about a second (MLflow's client retries for minutes), and the study is untouched."""
    if not OmegaConf.select(config, "mlflow.enabled", default=False):
        return
    from sweep.config.schema import MlflowConfig
    from sweep.errors import SweepError
    from sweep.tracking.mlflow_tracker import check_tracking as check

    try:
        check(MlflowConfig(**OmegaConf.to_container(config.mlflow, resolve=True)))
    except SweepError as error:
        raise SweepAborted(str(error)) from None


class StudyReport:
    def __init__(self, study: optuna.Study, config: DictConfig, settings: Mapping[str, Any],
                 space: SearchSpace):
        self.study = study
        self.config = config
        self.settings = settings
        self.space = space
        self.folder = Path(config.hydra.sweep.dir) / "report"
        self.enabled = bool(OmegaConf.select(config, "mlflow.enabled", default=False))
        self.client = None
        self.run_id: Optional[str] = None

    # -- MLflow parent run -------------------------------------------------------
    def open_parent_run(self, created: bool = True) -> Optional[str]:
        """The study's parent run, made exactly once however many processes start the
        sweep together: the one whose ``create_study`` made the study (``created``)
        makes it; the others wait for its id in the study (``PARENT_WAIT``). A resumed
        study reuses its run; one with none (made with MLflow off, or its creator died
        first) gets the run tagged as its own in the experiment, else a new one."""
        if not self.enabled:
            return None
        from sweep.config.schema import MlflowConfig
        from sweep.tracking.mlflow_tracker import MlflowTracker

        cfg = MlflowConfig(**OmegaConf.to_container(self.config.mlflow, resolve=True))
        tracker = MlflowTracker(cfg)
        self.client = tracker.client
        run_id = self.study.user_attrs.get(PARENT_ATTR)
        if not run_id and not created and not self.study.get_trials(deepcopy=False):
            run_id = self._wait_for_parent()
        if not run_id and not created:
            run_id = self._tagged_parent(tracker)
        if run_id:
            try:
                self.client.update_run(run_id, status="RUNNING")
                self.run_id = run_id
            except Exception as error:
                log.warning("parent run %s of study %s is gone (%s); starting a new one",
                            run_id, self.study.study_name, error)
                run_id = None
        if not run_id:
            point("parent_run")
            tracker.run_name = f"study {self.study.study_name}"
            tracker.start(self._study_params(), {"sweep.kind": "study",
                                                 "sweep.study": self.study.study_name})
            self.run_id = tracker.run_id
        if self.study.user_attrs.get(PARENT_ATTR) != self.run_id:
            self.study.set_user_attr(PARENT_ATTR, self.run_id)
        self.client.set_tag(self.run_id, "sweep.n_trials", str(self.settings["n_trials"]))
        self.mark_dead_runs()
        return self.run_id

    def _wait_for_parent(self) -> Optional[str]:
        deadline = time.monotonic() + PARENT_WAIT
        while time.monotonic() < deadline:
            run_id = self.study.user_attrs.get(PARENT_ATTR)  # user_attrs reads the storage
            if run_id:
                return run_id
            time.sleep(0.5)
        log.warning("study %s: no parent run from the process that made it after %.0f s",
                    self.study.study_name, PARENT_WAIT)
        return None

    def _tagged_parent(self, tracker) -> Optional[str]:
        runs = self.client.search_runs(
            [tracker.experiment_id],
            filter_string=f"tags.`sweep.kind` = 'study' and "
                          f"tags.`sweep.study` = '{self.study.study_name}'",
            order_by=["attributes.start_time ASC"], max_results=1)
        return runs[0].info.run_id if runs else None

    def _study_params(self) -> Dict[str, Any]:
        s = self.settings
        params: Dict[str, Any] = {
            "study_name": self.study.study_name,
            "sampler": s["sampler"],
            "sampler_kwargs": dict(s["sampler_kwargs"] or {}),
            "pruner": s["pruner"],
            "pruner_kwargs": dict(s["pruner_kwargs"] or {}),
            "objectives": list(s["objectives"]),
            "storage": str(s["storage"]).split("@")[-1],  # no password in MLflow
        }
        params.update({f"search.{k}": repr(v) for k, v in self.space.distributions.items()})
        params.update({f"fixed.{f.split('=', 1)[0]}": f.split("=", 1)[1] for f in self.space.fixed})
        return params

    def mark_dead_runs(self) -> None:
        """Child runs of trials that ended FAIL without their job closing the run."""
        if self.client is None:
            return
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
            run_id = t.user_attrs.get("mlflow_run_id")
            if not run_id:
                continue
            try:
                if self.client.get_run(run_id).info.status == "RUNNING":
                    self.client.set_tag(run_id, "sweep.state", "FAIL")
                    self.client.set_terminated(run_id, status="FAILED")
            except Exception as error:
                log.warning("could not close MLflow run %s: %s", run_id, error)

    def close_parent_run(self, status: str, study_readable: bool = True) -> None:
        if self.client is not None and self.run_id:
            if study_readable:
                self.mark_dead_runs()
            self.client.set_terminated(self.run_id, status=status)

    # -- the report --------------------------------------------------------------
    def finish(self) -> None:
        from sweep.testing.faults import point

        point("report")
        self.folder.mkdir(parents=True, exist_ok=True)
        rows = leaderboard(self.study)
        (self.folder / "leaderboard.csv").write_text(to_csv(rows))
        (self.folder / "leaderboard.md").write_text(to_markdown(rows))
        best = best_trials(self.study)
        self._write_best(best)
        self._plots()
        self._print(rows, best)
        if self.client is not None and self.run_id:
            self.mark_dead_runs()
            if best:
                self.client.log_metric(self.run_id, "best_value", best[0].values[0])
                self.client.set_tag(self.run_id, "sweep.best_trial", str(best[0].number))
                if best[0].user_attrs.get("mlflow_run_id"):
                    self.client.set_tag(self.run_id, "sweep.best_run_id",
                                        best[0].user_attrs["mlflow_run_id"])
                for k, v in best[0].params.items():
                    self.client.set_tag(self.run_id, f"best.{k}", str(v))
            counts = {s.name: 0 for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
            for t in filter(ran, self.study.trials):
                if t.state.name in counts:
                    counts[t.state.name] += 1
            for state, n in counts.items():
                self.client.log_metric(self.run_id, f"trials_{state.lower()}", n)
            self.client.log_artifacts(self.run_id, str(self.folder), "report")
            self.client.set_terminated(self.run_id, status="FINISHED")

    def _write_best(self, best: List[FrozenTrial]) -> None:
        if not best:
            return
        if len(self.study.directions) > 1:
            pareto = [r for r in leaderboard(self.study) if r["trial"] in {t.number for t in best}]
            (self.folder / "pareto_front.csv").write_text(to_csv(pareto))
            (self.folder / "pareto_front.md").write_text(to_markdown(pareto))
        top = best[0]
        out_dir = Path(top.user_attrs.get("output_dir", ""))
        lines = [f"# best trial {top.number} of study '{self.study.study_name}': "
                 f"{', '.join(f'{v:.4f}' for v in top.values)}",
                 f"# rerun: sweep {' '.join(top.user_attrs.get('overrides', []))}"]
        config_file = out_dir / "config" / "config.yaml"
        body = config_file.read_text() if config_file.is_file() else OmegaConf.to_yaml(
            OmegaConf.create({"params": top.params}))
        (self.folder / "best_config.yaml").write_text("\n".join(lines) + "\n" + body)
        adapter = out_dir / "adapter"
        if adapter.is_dir():
            target = self.folder / "best_adapter"
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(adapter, target)

    def _plots(self) -> None:
        from hydra_plugins.sweep_optuna._plots import write_plots

        write_plots(self.study, self.folder / "plots")

    def _print(self, rows: List[Dict[str, Any]], best: List[FrozenTrial]) -> None:
        width = shutil.get_terminal_size(fallback=(120, 24)).columns
        print(leaderboard_text(self.study, rows, width))
        if not best:
            return
        top = best[0]
        lines = [f"best trial {top.number}: "
                 + " ".join(f"{k}={_fmt(v)}" for k, v in top.params.items())
                 + f"  ->  {', '.join(f'{v:.4f}' for v in top.values)}"
                 + (f" +- {top.user_attrs['val_loss_se']:.4f} (val_loss over the whole "
                    "validation split)" if "val_loss_se" in top.user_attrs else ""),
                 f"best config: {self.folder / 'best_config.yaml'}"]
        if (self.folder / "best_adapter").is_dir():
            lines.append(f"best adapter: {self.folder / 'best_adapter'}")
        # paths stay whole (on a line of their own if need be), so they can be copied
        print("\n" + "\n".join(textwrap.fill(line, width, subsequent_indent="  ",
                                              break_long_words=False,
                                              break_on_hyphens=False) for line in lines))
