"""Sweep efficiency: compute to reach the best of an exhaustive grid, and which pruner.

Every configuration of a small grid is trained once, for real, and what its job reports
is recorded: the validation loss at each evaluation with each example's loss (what the
pruners see) and the trial's objective (the whole validation split at the end). A trial
is deterministic given its configuration and seed, so a search strategy that picks that
configuration would observe exactly that; strategies and pruners are then replayed with
real Optuna samplers and the sweeper's own pruners over many seeds, counting the
micro-batches each one trains (every micro-batch holds the same examples in every trial,
so micro-batches are compute), and how often the grid's best configuration is pruned.

    python -m bench.sweep_efficiency                 # train the SmolLM2 grid, then replay
    python -m bench.sweep_efficiency --curves FILE   # replay a saved grid
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

from bench.table import Row, print_table

GRID = {"optimizer.lr": [3e-5, 1e-4, 3e-4, 1e-3], "lora.rank": [4, 16],
        "train.grad_accumulation": [1, 4]}
Key = Tuple
Curves = Dict[Key, Dict[str, Any]]  # {"curve": {step: loss}, "examples": {step: record},
#                                      "objective": whole-split loss, "objective_se": ...}
MAX_DRAWS = 20  # as the sweeper (_proposals.MAX_DRAWS)
PRUNER = ("paired_median", {})  # hydra.sweeper.pruner, pruner_kwargs of conf/hparams_search/lora
PRUNERS = {  # the candidates compared: name -> (hydra.sweeper.pruner, pruner_kwargs)
    "median": ("median", {}),
    "median + 1 se (unpaired)": ("paired_median", {"z": 1.0, "paired": False}),
    "paired median, z=1": ("paired_median", {"z": 1.0}),
    "paired median, z=2 (default)": PRUNER,
}


def record_curves(compose, model: str, iters: int, every: int, tmp: Path,
                  grid: Dict[str, List] = GRID, extra: Sequence[str] = ()) -> Curves:
    """Train every configuration of ``grid`` as a sweep's job would (default
    ``train.val_batches``); return what each reported."""
    from sweep.stats import example_record
    from sweep.training.events import Listener
    from sweep.trial import run_trial

    curves: Curves = {}
    for values in itertools.product(*grid.values()):
        seen: Dict[str, Any] = {"curve": {}, "examples": {}}

        class Keep(Listener):
            def on_eval_report(self, r):
                if r.step > 0 and not r.final:  # what the job reports to its trial
                    seen["curve"][r.iteration] = r.val_loss
                    seen["examples"][r.iteration] = example_record(
                        r.examples, r.example_losses, r.example_tokens)

        overrides = [f"model={model}", f"train.iters={iters}", f"train.eval_every_iters={every}",
                     "mlflow.enabled=false", *extra]
        overrides += [f"{k}={v}" for k, v in zip(grid, values)]
        result = run_trial(compose(overrides), tmp / "_".join(map(str, values)),
                           listeners=[Keep()])
        seen["objective"], seen["objective_se"] = result.best_val_loss, result.best_val_loss_se
        curves[values] = seen
        print(f"  {dict(zip(grid, values))}: {result.best_val_loss:.4f} "
              f"+- {result.best_val_loss_se:.4f} ({result.seconds:.0f} s)", flush=True)
    return curves


def save_curves(curves: Curves, grid: Dict[str, List], path: Path) -> None:
    rows = [{"config": dict(zip(grid, key)), **seen} for key, seen in curves.items()]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"grid": grid, "curves": rows}))


def load_curves(path: Path) -> Tuple[Curves, Dict[str, List]]:
    """What :func:`save_curves` wrote: replay strategies without training again."""
    saved = json.loads(Path(path).read_text())
    grid = saved["grid"]
    curves: Curves = {}
    for row in saved["curves"]:
        if "objective" not in row:
            raise SystemExit(f"{path}: recorded before per-example losses; record it again")
        curves[tuple(row["config"][k] for k in grid)] = {
            "curve": {int(s): v for s, v in row["curve"].items()},
            "examples": {int(s): v for s, v in row["examples"].items()},
            "objective": row["objective"], "objective_se": row["objective_se"]}
    return curves, grid


def replay(curves: Curves, grid: Dict[str, List], strategy: str, seed: int, iters: int,
           target: float, max_trials: int, pruner=PRUNER, warm=None, stop=None
           ) -> Dict[str, Any]:
    """One replayed sweep: micro-batches until the best complete value <= target (inf if
    never), best value after ``max_trials`` trials, their micro-batches, and how many
    times the grid's best configuration was proposed and pruned. As in the sweeper, no
    configuration is proposed twice (a repeat is drawn again; here the repeated trial is
    told FAIL, which TPE ignores). ``warm(study)`` starts the study (enqueued or copied
    trials: bench/search_replay.py); ``stop(study)`` ends the sweep before a trial (its
    ``out["stopped"]`` is then the number of trials run)."""
    import optuna

    from sweep.study.link import build_pruner
    from sweep.study.pruning import examples_attr

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    distributions = {k: optuna.distributions.CategoricalDistribution(v) for k, v in grid.items()}
    sampler = {"random": optuna.samplers.RandomSampler,
               "tpe": optuna.samplers.TPESampler}[strategy.split("+")[0]](seed=seed)
    # the sweeper's pruner, built as every job builds it
    pruning = build_pruner(*pruner) if "+pruning" in strategy else optuna.pruners.NopPruner()
    study = optuna.create_study(sampler=sampler, pruner=pruning)
    true_best = min((k for k in curves if "objective" in curves[k]),
                    key=lambda k: curves[k]["objective"])
    out = {"reached": math.inf, "best": math.inf, "compute": 0, "best_pruned": 0,
           "best_proposed": 0, "stopped": None}
    taken, rng = set(), np.random.default_rng(seed)
    if warm is not None:
        warm(study)
    for n in range(max_trials):
        if len(taken) == len(curves):
            break  # the sweeper stops when every point of a discrete space has run
        if stop is not None and stop(study):
            out["stopped"] = n
            break
        trial = study.ask(distributions)
        key = tuple(trial.params[k] for k in grid)
        for attempt in range(MAX_DRAWS + 1):  # the sweeper never repeats a configuration
            if key not in taken:
                break
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            if attempt == MAX_DRAWS - 1:  # then, like the sweeper, a free point at random
                free = [k for k in curves if k not in taken]
                study.enqueue_trial(dict(zip(grid, free[rng.integers(len(free))])))
            trial = study.ask(distributions)
            key = tuple(trial.params[k] for k in grid)
        taken.add(key)
        seen, pruned = curves[key], False
        out["best_proposed"] += key == true_best
        for step in sorted(s for s in seen["curve"] if 0 < s < iters):
            trial.set_user_attr(examples_attr(step), seen["examples"][step])
            trial.report(seen["curve"][step], step)
            if trial.should_prune():
                out["compute"] += step
                out["best_pruned"] += key == true_best
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                pruned = True
                break
        if not pruned and seen.get("failed_at") is not None:  # diverged, collapsed: FAIL
            out["compute"] += seen["failed_at"]
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        elif not pruned:
            out["compute"] += iters
            trial.set_user_attr("val_loss_se", seen["objective_se"])  # what a job records
            study.tell(trial, seen["objective"])
            out["best"] = min(out["best"], seen["objective"])
            if out["best"] <= target and out["reached"] == math.inf:
                out["reached"] = out["compute"]
    return out


def summarise(curves: Curves, iters: int, seeds: int = 20, grid: Dict[str, List] = GRID,
              pruners: Dict[str, Tuple] = None) -> List[Tuple[str, float, str, str, object, str]]:
    """Rows: (name, value, unit, goal, met, detail)."""
    pruners = pruners or {"paired median, z=2 (default)": PRUNER}
    best = min(c["objective"] for c in curves.values())
    target = best * 1.01
    grid_compute = len(curves) * iters
    median = statistics.median
    rows = []
    for strategy in ("random", "tpe"):
        values = [replay(curves, grid, strategy, s, iters, target, 3 * len(curves))["reached"]
                  for s in range(seeds)]
        rows.append(_reach_row(strategy, values, grid_compute, seeds, goal=False))
    fixed_n = max(2, len(curves) // 2)  # the same number of trials, with and without pruning
    plain = [replay(curves, grid, "tpe", s, iters, target, fixed_n) for s in range(seeds)]
    for name, spec in pruners.items():
        reach = [replay(curves, grid, "tpe+pruning", s, iters, target, 3 * len(curves), spec)
                 for s in range(seeds)]
        rows.append(_reach_row(f"tpe+{name}", [r["reached"] for r in reach], grid_compute,
                               seeds, goal=spec == PRUNER))
        runs = [replay(curves, grid, "tpe+pruning", s, iters, target, fixed_n, spec)
                for s in range(seeds)]
        saving = 1 - median([p["compute"] for p in runs]) / median([p["compute"] for p in plain])
        same = median([p["best"] for p in runs]) <= median([p["best"] for p in plain]) * 1.01
        proposed = sum(r["best_proposed"] for r in reach)
        pruned = sum(r["best_pruned"] for r in reach)
        rows.append((f"{name}: pruning saves ({fixed_n} TPE trials)", saving, "",
                     "best kept" if spec == PRUNER else "",
                     (pruned == 0 and same) if spec == PRUNER else None,
                     f"best {median([p['best'] for p in runs]):.4f} with pruning vs "
                     f"{median([p['best'] for p in plain]):.4f} without (medians); grid best "
                     f"pruned {pruned} of {proposed} times proposed"))
    rows.append(("grid: best val loss", best, "loss", "", None,
                 f"{len(curves)} configurations x {iters} micro-batches, exhaustive; "
                 f"objective over the whole validation split"))
    return rows


def _reach_row(name: str, values: List[float], grid_compute: int, seeds: int, goal: bool):
    share = statistics.median(values) / grid_compute
    never = sum(math.isinf(v) for v in values)
    return (f"{name}: compute to grid best +1%", share, "", "<= 30%" if goal else "",
            share <= 0.30 if goal else None,
            f"median over {seeds} seeds, of the grid's {grid_compute} micro-batches"
            + (f"; {never} seeds never reached it" if never else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--curves", type=Path, help="replay a grid saved by an earlier run")
    parser.add_argument("--model", default="smollm2_135m")
    parser.add_argument("--iters", type=int, default=16)
    parser.add_argument("--every", type=int, default=4)
    parser.add_argument("--seeds", type=int, default=20)
    args = parser.parse_args()
    from sweep import paths, runtime
    from sweep.config import compose

    runtime.setup()  # the grid's trials train here, before mlx is imported

    if args.curves:
        curves, grid = load_curves(args.curves)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            curves = record_curves(compose, args.model, args.iters, args.every, Path(tmp))
        grid = GRID
        saved = paths.cache_root() / "bench" / f"grid-curves-{args.model}-v2.json"
        save_curves(curves, grid, saved)
        print(f"grid curves saved to {saved} (replay: --curves {saved})")
    print_table([Row(*r) for r in summarise(curves, args.iters, args.seeds, grid, PRUNERS)])


if __name__ == "__main__":
    main()
