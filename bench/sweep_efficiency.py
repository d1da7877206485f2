"""Sweep efficiency: compute to reach the best of an exhaustive grid.

Every configuration of a small grid is trained once, for real, and its validation curve
(the value reported to Optuna at each evaluation) is recorded. A trial is deterministic
given its configuration and seed, so a search strategy that picks that configuration
would observe exactly that curve: the strategies (grid, random, TPE, TPE + median
pruning) are then replayed with real Optuna samplers and pruners over many seeds from the
recorded curves, counting the micro-batches each one trains (every micro-batch holds the
same examples in every trial, so micro-batches are compute).
"""

from __future__ import annotations

import itertools
import json
import math
import statistics
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

GRID = {"optimizer.lr": [3e-5, 1e-4, 3e-4, 1e-3], "lora.rank": [4, 16],
        "train.grad_accumulation": [1, 4]}
Key = Tuple
PRUNER = ("median", {})  # hydra.sweeper.pruner and pruner_kwargs of conf/hparams_search/lora


def record_curves(compose, model: str, iters: int, every: int, tmp: Path,
                  grid: Dict[str, List] = GRID) -> Dict[Key, Dict[int, float]]:
    """Train every configuration of ``grid``; return {config: {micro-batch: val loss}}."""
    from sweep.training.events import Listener
    from sweep.trial import run_trial

    curves: Dict[Key, Dict[int, float]] = {}
    for values in itertools.product(*grid.values()):
        curve: Dict[int, float] = {}

        class Keep(Listener):
            def on_eval_report(self, r):
                curve[r.iteration] = r.val_loss

        overrides = [f"model={model}", f"train.iters={iters}", f"train.eval_every_iters={every}",
                     "train.val_batches=2", "mlflow.enabled=false"]
        overrides += [f"{k}={v}" for k, v in zip(grid, values)]
        run_trial(compose(overrides), tmp / "_".join(map(str, values)), listeners=[Keep()])
        curves[values] = curve
    return curves


def save_curves(curves: Dict[Key, Dict[int, float]], grid: Dict[str, List], path: Path) -> None:
    rows = [{"config": dict(zip(grid, key)), "curve": curve} for key, curve in curves.items()]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"grid": grid, "curves": rows}, indent=1))


def load_curves(path: Path) -> Tuple[Dict[Key, Dict[int, float]], Dict[str, List]]:
    """What :func:`save_curves` wrote: replay strategies without training again."""
    saved = json.loads(Path(path).read_text())
    grid = saved["grid"]
    curves = {tuple(row["config"][k] for k in grid): {int(s): v for s, v in row["curve"].items()}
              for row in saved["curves"]}
    return curves, grid


def _objective(curve: Dict[int, float]) -> float:
    return min(curve.values())  # the trial's best val loss, as run_trial returns it


def replay(curves: Dict[Key, Dict[int, float]], grid: Dict[str, List], strategy: str,
           seed: int, iters: int, target: float, max_trials: int) -> Tuple[float, float, int]:
    """(micro-batches until the best complete value <= target (inf if never), best value
    after ``max_trials`` trials, micro-batches for those trials)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    distributions = {k: optuna.distributions.CategoricalDistribution(v) for k, v in grid.items()}
    sampler = {"random": lambda: optuna.samplers.RandomSampler(seed=seed),
               "tpe": lambda: optuna.samplers.TPESampler(seed=seed),
               "tpe+pruning": lambda: optuna.samplers.TPESampler(seed=seed)}[strategy]()
    from sweep.optuna_link import build_pruner

    # the sweeper's default pruner, built as every job builds it
    pruner = build_pruner(*PRUNER) if strategy == "tpe+pruning" else optuna.pruners.NopPruner()
    study = optuna.create_study(sampler=sampler, pruner=pruner)
    compute, reached, best = 0, math.inf, math.inf
    for _ in range(max_trials):
        trial = study.ask(distributions)
        curve = curves[tuple(trial.params[k] for k in grid)]
        pruned = False
        for step in sorted(s for s in curve if 0 < s < iters):
            trial.report(curve[step], step)
            if trial.should_prune():
                compute += step
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                pruned = True
                break
        if not pruned:
            compute += iters
            value = _objective(curve)
            study.tell(trial, value)
            best = min(best, value)
            if best <= target and reached == math.inf:
                reached = compute
    return reached, best, compute


def summarise(curves: Dict[Key, Dict[int, float]], iters: int, seeds: int = 20,
              grid: Dict[str, List] = GRID) -> List[Tuple[str, float, str, str, object, str]]:
    """Rows: (name, value, unit, goal, met, detail)."""
    best = min(_objective(c) for c in curves.values())
    target = best * 1.01
    grid_compute = len(curves) * iters
    rows = []
    reach: Dict[str, List[float]] = {}
    for strategy in ("random", "tpe", "tpe+pruning"):
        reach[strategy] = [replay(curves, grid, strategy, s, iters, target, 3 * len(curves))[0]
                           for s in range(seeds)]
    fixed_n = max(2, len(curves) // 2)  # the same number of trials, with and without pruning
    plain = [replay(curves, grid, "tpe", s, iters, target, fixed_n) for s in range(seeds)]
    pruned = [replay(curves, grid, "tpe+pruning", s, iters, target, fixed_n) for s in range(seeds)]

    def median(xs: Sequence[float]) -> float:
        return statistics.median(xs)

    for strategy, values in reach.items():
        share = median(values) / grid_compute
        goal = "<= 30%" if strategy == "tpe+pruning" else ""
        met = share <= 0.30 if strategy == "tpe+pruning" else None
        never = sum(math.isinf(v) for v in values)
        rows.append((f"{strategy}: compute to grid best +1%", share, "", goal, met,
                     f"median over {seeds} seeds, of the grid's {grid_compute} micro-batches"
                     + (f"; {never} seeds never reached it" if never else "")))
    saving = 1 - median([p[2] for p in pruned]) / median([p[2] for p in plain])
    same = median([p[1] for p in pruned]) <= median([p[1] for p in plain]) * 1.01
    rows.append((f"pruning saves ({fixed_n} TPE trials)", saving, "", ">= 40%",
                 saving >= 0.40 and same,
                 f"best val loss {median([p[1] for p in pruned]):.4f} with pruning vs "
                 f"{median([p[1] for p in plain]):.4f} without (medians)"))
    rows.append(("grid: best val loss", best, "loss", "", None,
                 f"{len(curves)} configurations x {iters} micro-batches, exhaustive"))
    return rows
