"""The study's MLflow parent run and its end-of-sweep report.

One parent run per study (its id is kept in the study, so a resumed sweep reuses it);
every trial's run is its child. At the end the parent gets the best value and params, the
leaderboard (CSV and Markdown, from _leaderboard.py), plots (PNG, drawn in _plots.py), the
best config as YAML and a copy of the best adapter; the terminal gets the leaderboard.
"""

from __future__ import annotations

import json
import logging
import shutil
import textwrap
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import optuna
from omegaconf import DictConfig, OmegaConf
from optuna.trial import FrozenTrial, TrialState

from sweep.testing.faults import point
from sweep.study.winner import best_trials

from sweep.study import PARENT_ATTR
from sweep.study.trials import ran

from hydra_plugins.sweep_optuna._leaderboard import (format_value, leaderboard,
                                                     leaderboard_text, to_csv, to_markdown)
from hydra_plugins.sweep_optuna._proposals import SweepAborted
from hydra_plugins.sweep_optuna._search_space import SearchSpace

log = logging.getLogger("sweep.sweeper")
PARENT_WAIT = 60.0  # seconds a process that did not make the study waits for its parent run


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
        started_from = self.study.user_attrs.get("warm_start")  # _warm_start.WARM_START_ATTR
        if started_from:
            self.client.set_tag(self.run_id, "sweep.warm_start", json.dumps(started_from))
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
            if self.study.user_attrs.get("terminated"):  # _terminate.TERMINATED_ATTR
                self.client.set_tag(self.run_id, "sweep.terminated",
                                    self.study.user_attrs["terminated"])
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
            infeasible = [t for t in self.study.get_trials(deepcopy=False,
                                                           states=(TrialState.COMPLETE,))
                          if ran(t) and t.constraints]
            if infeasible:  # each missed a bound: say by how much the nearest did
                near = min(infeasible,
                           key=lambda t: sum(max(v, 0) for v in t.constraints.values()))
                missed = ", ".join(f"{k} (short by {v:.3g})" for k, v in near.constraints.items()
                                   if v > 0)
                print(f"\nno trial met hydra.sweeper.constraints, so there is no winner to "
                      f"ship; the nearest, trial {near.number}, missed {missed} "
                      "(docs/search.md#objectives-and-constraints-from-answers)")
            return
        top = best[0]
        lines = [f"best trial {top.number}: "
                 + " ".join(f"{k}={format_value(v)}" for k, v in top.params.items())
                 + f"  ->  {', '.join(f'{v:.4f}' for v in top.values)}"
                 + (f" +- {top.user_attrs['val_loss_se']:.4f} (val_loss over the whole "
                    "validation split)" if "val_loss_se" in top.user_attrs else ""),
                 f"best config: {self.folder / 'best_config.yaml'}"]
        if (self.folder / "best_adapter").is_dir():
            lines.append(f"best adapter: {self.folder / 'best_adapter'}")
        if self.study.user_attrs.get("terminated"):
            lines.append(f"stopped early: {self.study.user_attrs['terminated']}")
        # paths stay whole (on a line of their own if need be), so they can be copied
        print("\n" + "\n".join(textwrap.fill(line, width, subsequent_indent="  ",
                                              break_long_words=False,
                                              break_on_hyphens=False) for line in lines))
