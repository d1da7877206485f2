"""Short-horizon bias: does a short trial rank configurations as their full training does?

Each configuration of ``GRID`` (accumulation 1-8, learning rate 1e-4 to 1e-3; rank 16,
alpha 32, everything else the default sweep's) is trained on the shipped data to
``--epochs`` (2), and scored on the whole validation split every ``--every`` micro-batches
(24: the default sweep's budget until now is the first rung), each example's loss kept.
Each is also trained at that short budget alone (``train.iters=24``, its schedule over
those 24), as the default sweep trained it. Every evaluation is appended to
``bench/results/horizon.jsonl`` as it comes, so the replay (rank correlation of each rung
with the full budget, the pick of each budget, pruners at rungs in epochs) needs no
training; a run stopped midway goes on from the configurations' checkpoints
(``train.resume=auto``) and trains nothing twice.

    python -m bench.horizon              # train what is missing (hours on 2 CPU cores), then the table
    python -m bench.horizon --replay     # the table from the saved values only
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from bench.table import Row, print_table

RESULTS = Path(__file__).resolve().parent / "results" / "horizon.jsonl"
GRID: List[Dict[str, Any]] = [  # (accumulation, lr): every accumulation at two rates,
    {"train.grad_accumulation": a, "optimizer.lr": lr}  # trained in this order (a grid
    for a, lr in [(1, 1e-4), (1, 5e-4), (8, 1e-3), (4, 5e-4), (2, 1e-3), (8, 2e-4),
                  (4, 1e-4), (2, 2e-4)]]  # stopped midway still spans the accumulations)
FIXED = ["lora.rank=16", "lora.alpha=32", "mlflow.enabled=false"]
SHORT = 24  # micro-batches: the default sweep's budget before multi-fidelity


def name(config: Dict[str, Any]) -> str:
    return ",".join(f"{k.split('.')[-1]}={v:g}" for k, v in config.items())


def load(path: Optional[Path] = None) -> Dict[Tuple[str, str], Dict[int, Dict[str, Any]]]:
    """{(config, budget "full" | "short"): {micro-batch: record}}; a later record of the
    same evaluation (a resumed run redoing one after its checkpoint) replaces the earlier."""
    out: Dict[Tuple[str, str], Dict[int, Dict[str, Any]]] = {}
    path = path or RESULTS
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            out.setdefault((r["config"], r["budget"]), {})[r["iteration"]] = r
    return out


def record(config: Dict[str, Any], budget: str, overrides: Sequence[str], folder: Path,
           path: Optional[Path] = None, only: Sequence[int] = ()) -> None:
    """Train one configuration at one budget, appending each evaluation to ``path``."""
    from sweep.config import compose
    from sweep.training.events import Listener
    from sweep.trial import run_trial

    path = path or RESULTS
    path.parent.mkdir(parents=True, exist_ok=True)

    class Append(Listener):
        def on_eval_report(self, r) -> None:
            if only and (r.final or r.iteration not in only):
                return
            row = {"config": name(config), "budget": budget, "iteration": r.iteration,
                   "step": r.step, "trained_tokens": r.trained_tokens, "final": r.final,
                   "val_loss": r.val_loss, "val_loss_se": r.val_loss_se,
                   "last_val_loss": None if math.isnan(r.last_val_loss) else r.last_val_loss,
                   "examples": list(r.examples), "example_losses": list(r.example_losses),
                   "example_tokens": list(r.example_tokens)}
            with path.open("a") as f:
                f.write(json.dumps(row) + "\n")

    cfg = compose([*FIXED, *overrides, *(f"{k}={v}" for k, v in config.items())])
    result = run_trial(cfg, folder, listeners=[Append()])
    print(f"  {name(config)} {budget}: {result.best_val_loss:.4f} +- "
          f"{result.best_val_loss_se:.4f} ({result.seconds:.0f} s)", flush=True)


EARLY = 8  # micro-batches: the default sweep's pruning rungs are 8 and 16


def train_early(epochs: float, out: Path, n_train: int = 570, batch: int = 4) -> None:
    """The full runs' values at micro-batches 8 and 16, where the default sweep prunes: the
    same 2-epoch run stopped at 16 (``train.stop_after_epochs``, an exact prefix: an
    evaluation changes no weight), scored there on the whole split; kept as the full
    budget's rungs 8 and 16."""
    done = load()
    for config in GRID:
        seen = done.get((name(config), "full"), {})
        if EARLY in seen and 2 * EARLY in seen:
            continue
        record(config, "full", [f"train.epochs={epochs}", f"train.eval_every_iters={EARLY}",
                                "train.val_batches=-1",
                                f"train.stop_after_epochs={2 * EARLY * batch / n_train:.6f}"],
               out / "early" / name(config), only=(EARLY, 2 * EARLY))


def train_missing(epochs: float, every: int, out: Path) -> None:
    done = load()
    for config in GRID:
        for budget, overrides in (
                ("short", [f"train.iters={SHORT}", f"train.eval_every_iters={every}",
                           "train.val_batches=-1"]),
                ("full", [f"train.epochs={epochs}", f"train.eval_every_iters={every}",
                          "train.val_batches=-1", "train.save_every_minutes=5",
                          "train.resume=auto"])):
            seen = done.get((name(config), budget), {})
            if any(r["final"] for r in seen.values()):
                continue
            record(config, budget, overrides, out / budget / name(config))


def _ranks(values: Sequence[float]) -> np.ndarray:
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(len(values))
    return ranks


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    return float(np.corrcoef(_ranks(a), _ranks(b))[0, 1])


def kendall(a: Sequence[float], b: Sequence[float]) -> float:
    """Kendall's tau-a (no ties in real-valued losses)."""
    n, s = len(a), 0
    for i in range(n):
        for j in range(i + 1, n):
            s += np.sign(a[i] - a[j]) * np.sign(b[i] - b[j])
    return float(s / (n * (n - 1) / 2))


def table(epochs: float) -> List[Row]:
    runs = load()
    configs = [name(c) for c in GRID]
    full = {c: runs.get((c, "full"), {}) for c in configs}
    complete = [c for c in configs if any(r["final"] for r in full[c].values())]
    rows: List[Row] = []
    if len(complete) < 3:
        return [Row("configurations trained to the full budget", len(complete), "count",
                    f"{len(GRID)}", False, "too few to rank; run python -m bench.horizon")]
    final = {c: next(r for r in full[c].values() if r["final"])["val_loss"] for c in complete}
    micro_per_epoch = max(max(full[c]) for c in complete) / epochs
    best = min(complete, key=final.get)
    rungs = sorted(set.intersection(*(
        {i for i, r in full[c].items() if not r["final"] and i > 0} for c in complete)))
    truth = [final[c] for c in complete]
    for rung in rungs:
        at = [full[c][rung]["val_loss"] for c in complete]
        pick = complete[int(np.argmin(at))]
        epoch = f" ({rung / micro_per_epoch:.2f} epochs)"
        rows.append(Row(f"rung at micro-batch {rung}{epoch}", kendall(at, truth),
                        "Kendall", "", None, f"Spearman {spearman(at, truth):.2f}; picks {pick}"
                        f"{' = the full-budget best' if pick == best else ''}"))
    short = {c: runs.get((c, "short"), {}) for c in complete}
    if all(any(r["final"] for r in short[c].values()) for c in complete):
        at = [next(r for r in short[c].values() if r["final"])["val_loss"] for c in complete]
        pick = complete[int(np.argmin(at))]
        rows.append(Row(f"{SHORT} micro-batches alone (old default)",
                        kendall(at, truth), "Kendall", "same pick",
                        pick == best, f"Spearman {spearman(at, truth):.2f}; picks {pick}"))
    rows.append(Row(f"full budget ({epochs:g} epochs) best", final[best], "loss", "", None,
                    f"{best} of {len(complete)} configurations"))
    return rows + prefix_rows({c: full[c] for c in complete}, final, rungs)


def replay_prefix(curves: Dict[str, Dict[int, Dict[str, Any]]], final: Dict[str, float],
                  stop: int, end: int, pruner: Tuple[str, Dict[str, Any]], order: Sequence[str]
                  ) -> Tuple[str, int]:
    """One default-style sweep replayed: the configurations of ``order`` in turn, each
    trained to micro-batch ``stop`` (pruned at the rungs before it by ``pruner``, built as
    every job builds it), the best at ``stop`` then trained on to ``end``. Its pick and the
    micro-batches it trained."""
    import optuna

    from sweep.stats import example_record
    from sweep.study.link import build_pruner
    from sweep.study.pruning import examples_attr

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(pruner=build_pruner(*pruner))
    compute, at_stop = 0, {}
    for config in order:
        trial, seen = study.ask(), curves[config]
        pruned = False
        for rung in sorted(r for r in seen if 0 < r < stop and not seen[r]["final"]):
            r = seen[rung]
            trial.set_user_attr(examples_attr(rung), example_record(
                r["examples"], r["example_losses"], r["example_tokens"]))
            trial.report(r["val_loss"], rung)
            if trial.should_prune():
                compute += rung
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                pruned = True
                break
        if not pruned:
            value = final[config] if stop >= end else seen[stop]["val_loss"]
            compute += min(stop, end)
            at_stop[config] = value
            study.tell(trial, value)
    pick = min(at_stop, key=at_stop.get)
    return pick, compute + max(0, end - stop)


def prefix_rows(curves: Dict[str, Dict[int, Dict[str, Any]]], final: Dict[str, float],
                rungs: Sequence[int], n_trials: int = 6, seeds: int = 200) -> List[Row]:
    """Each prefix a sweep could search (a rung, or the whole budget) with and without the
    paired median pruner at the rungs before it, over ``seeds`` random orders of
    ``n_trials`` configurations: how often the pick is the best at the full budget of the
    configurations it saw, its mean regret (full-budget loss over that best), and its
    compute against training all of them to the full budget."""
    configs = sorted(curves)
    end = max(max(seen) for seen in curves.values())
    n = min(n_trials, len(configs))
    rng = np.random.default_rng(0)
    orders = [list(rng.permutation(configs)[:n]) for _ in range(seeds)]
    rows: List[Row] = []
    for stop in [*(r for r in rungs if r <= max([end // 4, *rungs[:1]])), end]:  # a search's prefixes
        for pruner in (("none", {}), ("paired_median", {})):
            if pruner[0] != "none" and not any(r < stop for r in rungs):
                continue  # no rung before the stop to prune at
            hits, regret, compute = 0, [], []
            for order in orders:
                pick, trained = replay_prefix(curves, final, stop, end, pruner, order)
                best = min(order, key=final.get)
                hits += pick == best
                regret.append(final[pick] - final[best])
                compute.append(trained / (n * end))
            where = "the whole budget" if stop >= end else f"micro-batch {stop}"
            rows.append(Row(f"search to {where}, pruner {pruner[0]}: picks the best",
                            hits / seeds, "share", "", None,
                            f"mean regret {np.mean(regret):.4f}; compute {np.median(compute):.0%}"
                            f" of {n} trials x {end} micro-batches (median of {seeds} orders)"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replay", action="store_true", help="no training: the saved values")
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--every", type=int, default=SHORT, help="micro-batches between rungs")
    parser.add_argument("--out", type=Path, default=Path("outputs/bench/horizon"))
    args = parser.parse_args()
    if not args.replay:
        from sweep import runtime

        runtime.setup()
        train_early(args.epochs, args.out)
        train_missing(args.epochs, args.every, args.out)
    from bench.table import machine

    print(f"Short-horizon bias: each rung against the full budget ({machine()})")
    print_table(table(args.epochs))


if __name__ == "__main__":
    main()
