"""The sweep's plots (report/plots/*.png), drawn with matplotlib from the study.

Optuna's matplotlib plots are experimental (every call warns) and leave PRUNED trials out
of the parallel-coordinate plot: in the default sweep, where 4-5 of 6 trials are pruned,
that was one line, and 2 complete trials gave importances that looked meaningful. Here a
pruned trial is drawn at its last reported value and marked as such; importances (Optuna's
fANOVA numbers) need MIN_COMPLETE_FOR_IMPORTANCES complete trials, and with fewer the PNG
still exists but says so in words, so whoever opens the report sees why there are no bars.
Figures are ``matplotlib.figure.Figure`` objects, never pyplot's: no backend is switched,
no global state is left behind, and nothing needs closing.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import optuna
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patheffects import withStroke
from matplotlib.ticker import MaxNLocator, NullLocator
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from sweep.study.winner import best_trials
from sweep.study.trials import ran

__all__ = ["write_plots", "history_figure", "parallel_figure", "importance_figure",
           "intermediate_figure", "pareto_figure", "importances", "objective_names",
           "MIN_COMPLETE_FOR_IMPORTANCES", "PRUNED_LABEL"]

log = logging.getLogger("sweep.sweeper")
MIN_COMPLETE_FOR_IMPORTANCES = 4  # fewer: the forest fits noise; the bars would mean nothing
PRUNED_LABEL = "pruned (last reported)"
_PRUNED_STYLE = {"color": "0.55", "linestyle": "--"}


def objective_names(study: optuna.Study) -> List[str]:
    """The objectives' names as the sweeper stored them, else val_loss, objective 1, ..."""
    n = len(study.directions)
    stored = list(study.user_attrs.get("objectives") or [])
    defaults = ["val_loss"] + [f"objective {i}" for i in range(1, n)]
    return (stored + defaults[len(stored):])[:n]


def _better(study: optuna.Study, index: int = 0) -> str:
    return "lower is better" if study.directions[index] == StudyDirection.MINIMIZE \
        else "higher is better"


def _last_reported(t: FrozenTrial) -> Optional[float]:
    if not t.intermediate_values:
        return None
    value = t.intermediate_values[max(t.intermediate_values)]
    return value if math.isfinite(value) else None


def _points(study: optuna.Study) -> Tuple[List[Tuple[FrozenTrial, float]], Dict[str, List[int]]]:
    """(trial, value) to draw: complete trials at their objective, pruned ones at their last
    reported value; and the numbers of the trials left out, by why."""
    # Jobs report val_loss to the pruner; with another objective it is not on the same axis.
    comparable = objective_names(study)[0] == "val_loss"
    points: List[Tuple[FrozenTrial, float]] = []
    left_out: Dict[str, List[int]] = {}
    for t in filter(ran, study.get_trials(deepcopy=False)):
        value = None
        if t.state == TrialState.COMPLETE and t.values:
            value = t.values[0]
        elif t.state == TrialState.PRUNED and comparable:
            value = _last_reported(t)
        if value is not None and math.isfinite(value):
            points.append((t, value))
        else:
            why = {TrialState.FAIL: "failed", TrialState.PRUNED: "pruned, no value",
                   TrialState.COMPLETE: "no finite value"}.get(t.state, t.state.name.lower())
            left_out.setdefault(why, []).append(t.number)
    return points, left_out


def _left_out_handles(left_out: Dict[str, List[int]]) -> List[Line2D]:
    return [Line2D([], [], linestyle="none", label=f"not drawn, {why}: trial "
                   + ", ".join(map(str, numbers[:8])) + (", ..." if len(numbers) > 8 else ""))
            for why, numbers in left_out.items()]


def _figure() -> Figure:
    return Figure(figsize=(10, 6), layout="constrained")


def _message(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True, fontsize=13,
            transform=ax.transAxes)
    ax.set_axis_off()


def history_figure(study: optuna.Study) -> Figure:
    """Objective per trial number, pruned trials marked, best-so-far over complete trials."""
    name = objective_names(study)[0]
    points, left_out = _points(study)
    fig = _figure()
    ax = fig.add_subplot()
    ax.set_title(f"Optimization history of study '{study.study_name}'")
    if not points:
        _message(ax, "No complete or pruned trial with a value to draw")
        return fig
    done = [(t.number, v) for t, v in points if t.state == TrialState.COMPLETE]
    pruned = [(t.number, v) for t, v in points if t.state == TrialState.PRUNED]
    if done:
        ax.plot(*zip(*done), "o", color="C0", markersize=8, label="complete", gid="complete")
        pick = min if study.direction == StudyDirection.MINIMIZE else max
        best = [pick(v for _, v in done[:i + 1]) for i in range(len(done))]
        last = max(t.number for t, _ in points)
        ax.plot([n for n, _ in done] + [last], best + best[-1:], drawstyle="steps-post",
                color="C3", label="best so far (complete trials)", gid="best")
    if pruned:
        ax.plot(*zip(*pruned), "X", color="C1", markersize=9, label=PRUNED_LABEL, gid="pruned")
    ax.set_xlabel("trial number")
    ax.set_ylabel(f"{name} ({_better(study)})")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(handles=ax.get_legend_handles_labels()[0] + _left_out_handles(left_out))
    return fig


@dataclass(frozen=True)
class _Axis:
    """One vertical axis: its limits in the value's own units, scale and ticks."""

    name: str
    low: float
    high: float
    log: bool = False
    choices: Optional[Sequence[Any]] = None

    def position(self, value: Any) -> float:
        """Where value sits along the axis, from 0 (bottom) to 1 (top); NaN if unknown."""
        if value is None:
            return math.nan
        if self.choices is not None:
            try:
                value = CategoricalDistribution(self.choices).to_internal_repr(value)
            except ValueError:  # a choice no longer in the search space
                return math.nan
        f = math.log10 if self.log else float
        return (f(value) - f(self.low)) / (f(self.high) - f(self.low))

    def ticks(self) -> Tuple[List[float], List[str]]:
        """Tick values and labels: the choices; 1-2-5 steps on a log axis; else ~5 steps."""
        if self.choices is not None:
            return list(range(len(self.choices))), [str(c) for c in self.choices]
        if self.log:
            decades = range(math.floor(math.log10(self.low)), math.ceil(math.log10(self.high)) + 1)
            steps = (1, 2, 5) if len(decades) <= 4 else (1,)
            values = [m * 10.0 ** k for k in decades for m in steps]
        else:
            values = list(MaxNLocator(nbins=5).tick_values(self.low, self.high))
        values = [float(v) for v in values
                  if self.low <= v * (1 + 1e-9) and v <= self.high * (1 + 1e-9)]
        return values, _tick_labels(values)


def _tick_labels(values: Sequence[float]) -> List[str]:
    """Plain numbers, or all in short scientific notation (5e-5, 1.5e-4) if any needs it."""
    if all(v == 0 or 1e-2 <= abs(v) < 1e4 for v in values):
        return [f"{v:.4g}" for v in values]
    return ["0" if v == 0 else re.sub(r"e([+-])0*(\d)", r"e\1\2", f"{v:.1e}".replace(".0e", "e"))
            for v in values]


def _param_axis(name: str, dist: BaseDistribution) -> _Axis:
    if isinstance(dist, CategoricalDistribution):
        return _Axis(name, -0.5, len(dist.choices) - 0.5, choices=dist.choices)
    low, high, log = float(dist.low), float(dist.high), bool(getattr(dist, "log", False))
    if low == high:  # a range of one value: centre it
        low, high = (low / 2, high * 2) if log else (low - 0.5, high + 0.5)
    return _Axis(name, low, high, log)


def _value_axis(name: str, values: Sequence[float]) -> _Axis:
    low, high = min(values), max(values)
    pad = (high - low) * 0.05 or max(abs(low) * 0.05, 0.5)
    return _Axis(name, low - pad, high + pad)


def _axis_label(axis: _Axis) -> str:
    text = axis.name if len(axis.name) <= 14 else axis.name.replace(".", ".\n", 1)
    return text + ("\n(log scale)" if axis.log else "")


def parallel_figure(study: optuna.Study) -> Figure:
    """One line per complete and pruned trial through an axis per searched parameter and
    the objective; complete lines coloured by the objective, pruned ones grey and dashed."""
    name = objective_names(study)[0]
    points, left_out = _points(study)
    fig = _figure()
    host = fig.add_subplot(label="lines")
    host.set_title(f"Parallel coordinates of study '{study.study_name}'")
    dists: Dict[str, BaseDistribution] = {}
    for t, _ in sorted(points, key=lambda p: p[0].number):
        dists.update(t.distributions)
    if not points or not dists:
        _message(host, "No complete or pruned trial with parameters to draw")
        return fig
    axes = [_param_axis(k, dists[k]) for k in sorted(dists)]
    axes.append(_value_axis(name, [v for _, v in points]))
    xs = range(len(axes))
    minimize = study.direction == StudyDirection.MINIMIZE
    cmap = colormaps["viridis" if minimize else "viridis_r"]  # dark: the best
    complete = [v for t, v in points if t.state == TrialState.COMPLETE] or [0.0]
    norm = Normalize(min(complete), max(complete))
    # pruned lines first, then complete ones from worst to best: the best on top
    for t, v in sorted(points, key=lambda p: (p[0].state == TrialState.COMPLETE,
                                              -p[1] if minimize else p[1])):
        ys = [a.position(t.params.get(a.name)) for a in axes[:-1]] + [axes[-1].position(v)]
        style = _PRUNED_STYLE if t.state == TrialState.PRUNED else {"color": cmap(norm(v))}
        host.plot(xs, ys, linewidth=1.4 if t.state == TrialState.PRUNED else 2.2,
                  gid=f"trial {t.number}", **style)
    host.set_xlim(0, len(axes) - 1)
    host.set_ylim(0, 1)
    host.set_yticks([])
    host.set_xticks(list(xs), [_axis_label(a) for a in axes])
    host.tick_params(axis="x", length=0, pad=8)
    for spine in host.spines.values():
        spine.set_visible(False)
    for i, a in enumerate(axes):
        twin = host.twinx()
        twin.set_label(a.name)
        side = "left" if i == 0 else "right"
        for other in ("top", "bottom", "left", "right"):
            twin.spines[other].set_visible(other == side)
        twin.spines[side].set_position(("axes", i / (len(axes) - 1)))
        twin.yaxis.set_ticks_position(side)
        if a.log:
            twin.set_yscale("log")
        twin.set_ylim(a.low, a.high)
        twin.set_yticks(*a.ticks())
        twin.yaxis.set_minor_locator(NullLocator())
        for label in twin.get_yticklabels():  # readable where lines cross it
            label.set_path_effects([withStroke(linewidth=3, foreground="white")])
    colorbar = fig.colorbar(ScalarMappable(norm, cmap), ax=host, pad=0.07)
    colorbar.set_label(f"{name} of complete trials ({_better(study)})")
    handles = [Line2D([], [], color=cmap(0.0), linewidth=2.2, label="complete"),
               Line2D([], [], linewidth=1.4, label=PRUNED_LABEL, **_PRUNED_STYLE)]
    host.legend(handles=handles + _left_out_handles(left_out), loc="upper center",
                bbox_to_anchor=(0.5, -0.16), ncol=3, frameon=False)
    return fig


def importances(study: optuna.Study, index: int = 0) -> Tuple[Optional[Dict[str, float]], str]:
    """Each parameter's importance for objective ``index`` (fANOVA, summing to 1) and a note
    on what it rests on; None and the reason when there are too few complete trials."""
    n = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    if n < MIN_COMPLETE_FOR_IMPORTANCES:
        return None, (f"too few complete trials ({n}) to estimate importances: need "
                      f"{MIN_COMPLETE_FOR_IMPORTANCES} (pruned trials do not count)")
    try:
        found = optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0),
            target=lambda t: t.values[index])
    except (RuntimeError, ValueError) as error:
        return None, f"importances could not be estimated from {n} complete trials: {error}"
    if not found:
        return None, f"no parameter was searched in all {n} complete trials"
    return {k: float(v) for k, v in found.items()}, f"fANOVA on {n} complete trials"


def importance_figure(study: optuna.Study, index: int = 0) -> Figure:
    name = objective_names(study)[index]
    values, note = importances(study, index)
    fig = _figure()
    ax = fig.add_subplot()
    ax.set_title(f"Parameter importances for {name} in study '{study.study_name}'")
    if values is None:
        _message(ax, note[0].upper() + note[1:] + ".")
        return fig
    ordered = sorted(values.items(), key=lambda kv: kv[1])  # the largest on top
    bars = ax.barh([k for k, _ in ordered], [v for _, v in ordered], color="C0")
    ax.bar_label(bars, fmt="%.2f", padding=3)
    ax.set_xlim(0, max(max(values.values()) * 1.15, 0.1))
    ax.set_xlabel(f"importance for {name} ({note}; the importances sum to 1)")
    ax.set_ylabel("searched parameter")
    return fig


def intermediate_figure(study: optuna.Study) -> Figure:
    """The values each trial reported to the pruner, by step; pruned trials end in an X."""
    trials = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,
                                                                   TrialState.PRUNED))
              if any(math.isfinite(v) for v in t.intermediate_values.values())]
    fig = _figure()
    ax = fig.add_subplot()
    ax.set_title(f"Values reported during training, study '{study.study_name}'")
    if not trials:
        _message(ax, "No trial reported an intermediate value")
        return fig
    named = len(trials) <= 10  # one colour and legend entry each
    for i, t in enumerate(trials):
        steps = [s for s in sorted(t.intermediate_values)
                 if math.isfinite(t.intermediate_values[s])]
        values = [t.intermediate_values[s] for s in steps]
        pruned = t.state == TrialState.PRUNED
        color = f"C{i % 10}" if named else ("0.55" if pruned else "C0")
        label = f"trial {t.number}" + (f", pruned at step {steps[-1]}" if pruned else "")
        ax.plot(steps, values, marker="o", markersize=4, color=color,
                linestyle="--" if pruned else "-", label=label if named else None,
                gid=f"trial {t.number}")
        if pruned:
            ax.plot(steps[-1:], values[-1:], "X", markersize=11, color=color, gid="pruned")
    handles = ax.get_legend_handles_labels()[0] + [
        Line2D([], [], color="0.3", linestyle="-", label="complete"),
        Line2D([], [], color="0.3", linestyle="--", marker="X", markersize=9,
               label=PRUNED_LABEL)]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_xlabel("step (training iterations, i.e. micro-batches)")
    ax.set_ylabel("val_loss reported to the pruner")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    return fig


def pareto_figure(study: optuna.Study) -> Figure:
    """The first two objectives of the complete trials; the Pareto front marked."""
    names = objective_names(study)
    fig = _figure()
    ax = fig.add_subplot()
    shown = " (the first two of its objectives)" if len(names) > 2 else ""
    ax.set_title(f"Pareto front of study '{study.study_name}'{shown}")
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if t.values and all(math.isfinite(v) for v in t.values[:2])]
    if not complete:
        _message(ax, "No complete trial to draw")
        return fig
    front = {t.number for t in best_trials(study)}
    rest = [t for t in complete if t.number not in front]
    best = sorted((t for t in complete if t.number in front), key=lambda t: t.values)
    if rest:
        ax.plot([t.values[0] for t in rest], [t.values[1] for t in rest], "o", color="0.6",
                label="dominated", gid="dominated")
    ax.plot([t.values[0] for t in best], [t.values[1] for t in best], "o-", color="C3",
            markersize=8, label="Pareto front", gid="front")
    for t in best:
        ax.annotate(f"trial {t.number}", (t.values[0], t.values[1]),
                    textcoords="offset points", xytext=(6, 6), fontsize=9)
    ax.set_xlabel(f"{names[0]} ({_better(study, 0)})")
    ax.set_ylabel(f"{names[1]} ({_better(study, 1)})")
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def write_plots(study: optuna.Study, folder: Path) -> List[Path]:
    """Draws the study's plots into ``folder`` as PNG; returns the files written. A plot
    that cannot be drawn is logged and skipped: the report never fails the sweep."""
    plots: Dict[str, Callable[[optuna.Study], Figure]] = {
        "optimization_history": history_figure, "parallel_coordinate": parallel_figure,
        "param_importances": importance_figure, "intermediate_values": intermediate_figure}
    if len(study.directions) > 1:  # jobs report no intermediate values then
        plots = {"pareto_front": pareto_figure, "param_importances": importance_figure}
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, draw in plots.items():
        try:
            draw(study).savefig(folder / f"{name}.png", dpi=100)
            written.append(folder / f"{name}.png")
        except Exception as error:
            log.warning("plot %s not written: %s", name, error)
    return written
