"""The end-of-sweep report on in-memory studies (no training): every plot is written,
pruned trials are drawn and marked, importances say when there are too few complete
trials, nothing warns, and the terminal leaderboard fits the width it is given."""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import optuna
import pytest
from matplotlib.figure import Figure
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState

from hydra_plugins.sweep_optuna._plots import (PRUNED_LABEL, history_figure, importance_figure,
                                               importances, intermediate_figure,
                                               parallel_figure, pareto_figure, write_plots)
from hydra_plugins.sweep_optuna._leaderboard import format_table, leaderboard, leaderboard_text
from hydra_plugins.sweep_optuna._parent_run import StudyReport

SPACE = {"lora.rank": CategoricalDistribution((4, 8, 16, 32)),
         "optimizer.lr": FloatDistribution(5e-5, 2e-3, log=True),
         "train.grad_accumulation": CategoricalDistribution((1, 2, 4, 8))}
PNGS = {"optimization_history", "parallel_coordinate", "param_importances",
        "intermediate_values"}


def add(study: optuna.Study, state: TrialState, reports: Sequence[float],
        value: Optional[float] = None, rank: int = 8, lr: float = 1e-4) -> int:
    """One trial as the sweeper and its job leave it: params, reports at steps 8, 16, ..."""
    study.enqueue_trial({"lora.rank": rank, "optimizer.lr": lr, "train.grad_accumulation": 2})
    trial = study.ask(SPACE)
    for i, loss in enumerate(reports, start=1):
        trial.report(loss, 8 * i)
    if state == TrialState.COMPLETE:
        trial.set_user_attr("val_loss_se", 0.05)
    study.tell(trial, value if state == TrialState.COMPLETE else None, state=state)
    return trial.number


def make_study(n_complete: int = 2, name: str = "report") -> Dict[str, object]:
    """Complete trials, three pruned (reports only) and a failed one; like the default sweep."""
    study = optuna.create_study(study_name=name, direction="minimize")
    study.set_user_attr("objectives", ["val_loss"])
    complete = [add(study, TrialState.COMPLETE, [2.8, 2.7, 2.6 + 0.01 * i], 2.6 + 0.01 * i,
                    rank=(4, 8, 16, 32)[i % 4], lr=6e-5 * 1.8 ** i) for i in range(n_complete)]
    pruned = {add(study, TrialState.PRUNED, [3.0 + 0.1 * i], rank=32, lr=1.5e-3): 3.0 + 0.1 * i
              for i in range(3)}
    failed = add(study, TrialState.FAIL, [], lr=2e-3)
    return {"study": study, "complete": complete, "pruned": pruned, "failed": failed}


@pytest.fixture(autouse=True)
def quiet_optuna():
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "Trial 3 finished" lines
    yield
    optuna.logging.set_verbosity(verbosity)


def lines_of(fig: Figure, label: str = "") -> Dict[str, object]:
    ax = next(a for a in fig.axes if a.get_label() == label) if label else fig.axes[0]
    return {line.get_gid(): line for line in ax.lines if line.get_gid()}


def legend_texts(fig: Figure) -> List[str]:
    return [t.get_text() for ax in fig.axes if ax.get_legend()
            for t in ax.get_legend().get_texts()]


def test_every_plot_is_written_as_a_png(tmp_path: Path) -> None:
    written = write_plots(make_study(n_complete=5)["study"], tmp_path / "plots")
    assert {p.stem for p in written} == PNGS
    for path in written:
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, path


def test_parallel_coordinates_draw_complete_and_pruned_trials() -> None:
    s = make_study()
    fig = parallel_figure(s["study"])
    drawn = lines_of(fig, "lines")
    assert set(drawn) == {f"trial {n}" for n in [*s["complete"], *s["pruned"]]}
    assert f"trial {s['failed']}" not in drawn
    by_axis = {ax.get_label(): ax for ax in fig.axes}
    low, high = by_axis["val_loss"].get_ylim()
    for number, last in s["pruned"].items():
        line = drawn[f"trial {number}"]
        assert line.get_linestyle() == "--"
        assert low + line.get_ydata()[-1] * (high - low) == pytest.approx(last)
    assert drawn[f"trial {s['complete'][0]}"].get_linestyle() == "-"
    assert by_axis["optimizer.lr"].get_yscale() == "log"
    assert by_axis["lora.rank"].get_yscale() == "linear"
    assert [t.get_text() for t in by_axis["lora.rank"].get_yticklabels()] == ["4", "8", "16", "32"]
    assert PRUNED_LABEL in legend_texts(fig)
    assert any(f"failed: trial {s['failed']}" in t for t in legend_texts(fig))


def test_history_marks_pruned_trials_at_their_last_reported_value() -> None:
    s = make_study()
    fig = history_figure(s["study"])
    drawn = lines_of(fig)
    assert list(drawn["pruned"].get_xdata()) == list(s["pruned"])
    assert list(drawn["pruned"].get_ydata()) == pytest.approx(list(s["pruned"].values()))
    assert list(drawn["complete"].get_xdata()) == s["complete"]
    assert min(drawn["best"].get_ydata()) == pytest.approx(2.6)
    assert PRUNED_LABEL in legend_texts(fig)
    assert any(f"failed: trial {s['failed']}" in t for t in legend_texts(fig))
    ax = fig.axes[0]
    assert ax.get_xlabel() == "trial number" and ax.get_ylabel().startswith("val_loss")


def test_intermediate_values_mark_pruned_trials() -> None:
    s = make_study()
    drawn = lines_of(intermediate_figure(s["study"]))
    for number in s["pruned"]:
        assert drawn[f"trial {number}"].get_linestyle() == "--"
    assert list(drawn[f"trial {s['complete'][0]}"].get_xdata()) == [8, 16, 24]
    assert f"trial {s['failed']}" not in drawn


def test_two_complete_trials_are_too_few_for_importances() -> None:
    study = make_study(n_complete=2)["study"]
    values, note = importances(study)
    assert values is None and "too few complete trials (2)" in note
    fig = importance_figure(study)
    assert not fig.axes[0].patches  # no bars
    assert any("too few complete trials (2)" in t.get_text().lower() for t in fig.axes[0].texts)


def test_enough_complete_trials_give_importance_bars() -> None:
    study = make_study(n_complete=6)["study"]
    values, note = importances(study)
    assert values is not None and set(values) == set(SPACE)
    assert sum(values.values()) == pytest.approx(1.0) and "6 complete trials" in note
    assert len(importance_figure(study).axes[0].patches) == len(SPACE)


def test_multi_objective_draws_a_pareto_front(tmp_path: Path) -> None:
    study = optuna.create_study(directions=["minimize", "minimize"])
    study.set_user_attr("objectives", ["val_loss", "trainable_parameters"])
    for loss, size in [(2.6, 4e5), (2.7, 1e5), (2.8, 3e5), (2.65, 2e5)]:
        trial = study.ask(SPACE)
        study.tell(trial, [loss, size])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        written = write_plots(study, tmp_path)
    assert {p.stem for p in written} == {"pareto_front", "param_importances"}
    assert not caught, [str(w.message) for w in caught]
    fig = pareto_figure(study)
    front = lines_of(fig)["front"]
    assert sorted(front.get_xdata()) == [2.6, 2.65, 2.7]  # (2.8, 3e5) is dominated
    assert fig.axes[0].get_ylabel().startswith("trainable_parameters")


@pytest.mark.parametrize("n_complete", [0, 1, 2, 5])
def test_plots_of_small_studies_warn_nothing(tmp_path: Path, n_complete: int,
                                             capfd: pytest.CaptureFixture) -> None:
    study = make_study(n_complete=n_complete)["study"]
    capfd.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        written = write_plots(study, tmp_path)
    assert not caught, [f"{w.category.__name__}: {w.message}" for w in caught]
    assert {p.stem for p in written} == PNGS
    assert capfd.readouterr().err == ""  # nor a logged warning


@pytest.mark.parametrize("width", [60, 200])
def test_the_leaderboard_fits_the_width(width: int) -> None:
    study = make_study(n_complete=3)["study"]
    text = leaderboard_text(study, leaderboard(study), width)
    assert max(len(line) for line in text.splitlines()) <= width
    for header in ["rank", "trial", "state", "val_loss", "last reported", *SPACE, "seconds"]:
        assert re.search(rf"(^|\s){re.escape(header)}(\s|$)", text, re.M), header
    blocks = text.split("\n\n")
    assert len(blocks) == 1 if width == 200 else len(blocks) > 1
    rows = leaderboard(study)
    for i, block in enumerate(blocks):  # every row in every block, the trial column first
        body = block.splitlines()[-len(rows):]
        assert [int(line.split()[1 if i == 0 else 0]) for line in body] == \
            [r["trial"] for r in rows]


def test_a_cell_wider_than_the_terminal_wraps() -> None:
    long = "x" * 90
    text = format_table(["trial", "name"], [["0", long], ["1", "short"]], 40)
    assert max(len(line) for line in text.splitlines()) <= 40
    assert "".join(re.findall("x+", text)) == long


def test_the_printed_report_uses_the_terminal_width(tmp_path: Path, capsys,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "60")  # shutil.get_terminal_size reads it first
    study = make_study(n_complete=3)["study"]
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}})
    report = StudyReport(study, config, {}, space=None)
    report._print(leaderboard(study), [study.best_trial])
    out = capsys.readouterr().out
    assert "best trial 0:" in out and "optimizer.lr" in out
    too_long = [line for line in out.splitlines() if len(line) > 60]
    # only a path, kept whole on its own line so that it can be copied
    assert all(line.strip().startswith(str(tmp_path)) for line in too_long), too_long
