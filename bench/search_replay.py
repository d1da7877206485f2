"""How much compute each search needs, replayed on a real grid (bench/search_grid.py).

Every configuration of the grid was trained once at the default sweep's trial budget; a
trial is deterministic given its configuration and seed, so a search that proposes it
observes exactly what was recorded. Whole sweeps are replayed with real Optuna samplers and
the sweeper's own pruner, over many seeds (``bench.sweep_efficiency.replay``), counting the
micro-batches trained until a trial comes within 1% of the whole grid's best value:

- the default space (``hparams_search=lora``: rank and alpha apart) against
  ``lora_priors`` (alpha tied to rank, the lr window and small batches) on the same grid;
- a second study warm-started from a first (``warm_start.mode=enqueue`` of the first's 3
  best, and ``mode=copy``), against the same study started cold;
- 30-trial sweeps with ``terminate.rule=noise``: the compute it saves, and how often it
  stops before the grid's best + 1%;
- the same spaces with ``lora.scaling`` searched (the whole grid), against the best of
  either scaling as well;
- with ``--ray``, Ray Tune's ASHA scheduler with its default searcher on the same grid
  (``bench/search_peer.py``).

    python -m bench.search_replay             # needs the recorded grid; no training
    python -m bench.search_replay --ray       # and Ray Tune's ASHA (pip install -e '.[bench]')
"""

from __future__ import annotations

import argparse
import math
import statistics
from typing import Any, Callable, Dict, List, Optional, Tuple

from bench.search_grid import GRID, load
from bench.search_peer import asha
from bench.sweep_efficiency import replay
from bench.table import Row, print_table

ITERS = 24  # the default trial's prefix: micro-batches 8 and 16 are the pruner's rungs
Space = Tuple[Dict[str, List[Any]], Callable[[Dict[str, Any]], Dict[str, Any]]]


def _lora(scalings: List[str], accumulation: Optional[List[int]] = None) -> Space:
    """The default space on the grid (rank and alpha apart); with both scalings, scaling is
    one more searched key, and ``accumulation`` narrows it (the rsLoRA half was recorded
    at accumulation 1 first: bench/search_grid.py)."""
    grid = {k: v for k, v in GRID.items() if k != "lora.scaling"}
    if accumulation:
        grid["train.grad_accumulation"] = accumulation
    if len(scalings) == 1:
        return grid, lambda p: {"lora.scaling": scalings[0], **p}
    return {"lora.scaling": scalings, **grid}, dict


def _priors() -> Space:
    """conf/hparams_search/lora_priors.yaml on the grid: its ranks, alpha = 1 or 2 x rank,
    the lr values inside its window (2e-4 to 2e-3), accumulation 1 (2 is not recorded)."""
    lrs = [lr for lr in GRID["optimizer.lr"] if 2e-4 <= lr <= 2e-3]
    grid = {"lora.rank": GRID["lora.rank"], "lora.alpha/lora.rank": [1, 2], "optimizer.lr": lrs,
            "train.grad_accumulation": [1]}

    def config(p: Dict[str, Any]) -> Dict[str, Any]:
        return {"lora.scaling": "standard", "lora.rank": p["lora.rank"],
                "lora.alpha": p["lora.alpha/lora.rank"] * p["lora.rank"],
                "optimizer.lr": p["optimizer.lr"],
                "train.grad_accumulation": p["train.grad_accumulation"]}

    return grid, config


def curves_of(space: Space, recorded: Dict[Tuple, Dict[str, Any]]) -> Optional[Dict[Tuple, Any]]:
    """The space's configurations as ``replay`` reads them; None if one is not recorded."""
    import itertools

    grid, config = space
    out = {}
    for values in itertools.product(*grid.values()):
        full = config(dict(zip(grid, values)))
        row = recorded.get(tuple(full[k] for k in GRID))
        if row is None:
            return None
        out[values] = {"curve": {int(k): v for k, v in row["curve"].items()},
                       "examples": {int(k): v for k, v in row["examples"].items()}}
        if "objective" in row:
            out[values].update(objective=row["objective"], objective_se=row["objective_se"])
        else:  # a FAIL trial (diverged, collapsed) at that micro-batch
            out[values]["failed_at"] = row["failed_at"]
    return out


def _median_share(values: List[float], grid_compute: int) -> Tuple[float, int]:
    return statistics.median(values) / grid_compute, sum(math.isinf(v) for v in values)


def reach_rows(spaces: Dict[str, Space], recorded, targets: Dict[str, Tuple[float, str]],
               grid_compute: int, seeds: int) -> Tuple[List[Row], Dict[str, float]]:
    """For each space and each target ({label: (value, what it is)}): the median compute
    of TPE + the sweeper's pruner until a trial is within the target."""
    rows, shares = [], {}
    for name, space in spaces.items():
        curves = curves_of(space, recorded)
        if curves is None:
            rows.append(Row(f"{name}: compute to grid best +1%", math.nan, "", "", None,
                            "not all of its configurations are recorded yet"))
            continue
        for label, (target, what) in targets.items():
            if label != "standard" and "lora.scaling" not in space[0]:
                continue  # a space without rsLoRA is measured against the standard half
            reached = [replay(curves, space[0], "tpe+pruning", s, ITERS, target,
                              3 * len(curves))["reached"] for s in range(seeds)]
            share, never = _median_share(reached, grid_compute)
            if label == "standard":
                shares[name] = share
            rows.append(Row(f"{name}: compute to {what} +1%", share, "", "", None,
                            f"TPE + paired median, median over {seeds} seeds, {len(curves)} "
                            f"configurations; {statistics.median(reached):g} micro-batches, "
                            f"a share of the standard half's {grid_compute}"
                            + (f"; {never} seeds never reached it" if never else "")))
    return rows, shares


def warm_rows(space: Space, recorded, target: float, grid_compute: int, seeds: int,
              first_trials: int = 10, top_k: int = 3) -> List[Row]:
    """A first study (TPE + pruning, ``first_trials``), then a second on the same space:
    cold, with the first's ``top_k`` best enqueued, or with its trials copied."""
    import optuna

    curves = curves_of(space, recorded)
    if curves is None:
        return []
    grid = space[0]
    distributions = {k: optuna.distributions.CategoricalDistribution(v) for k, v in grid.items()}

    def first(seed: int) -> optuna.Study:
        holder: Dict[str, optuna.Study] = {}

        def keep(study: optuna.Study) -> bool:
            holder["study"] = study
            return False

        replay(curves, grid, "tpe+pruning", 1000 + seed, ITERS, -math.inf, first_trials,
               stop=keep)
        return holder["study"]

    def enqueue(earlier: optuna.Study):
        done = sorted((t for t in earlier.trials if t.state.name == "COMPLETE"),
                      key=lambda t: t.value)[:top_k]
        return lambda study: [study.enqueue_trial(dict(t.params)) for t in done]

    def copy(earlier: optuna.Study):
        finished = [t for t in earlier.trials if t.state.name in ("COMPLETE", "PRUNED")]
        return lambda study: study.add_trials([optuna.trial.create_trial(
            state=t.state, params=t.params, distributions=distributions, values=t.values,
            intermediate_values=t.intermediate_values, user_attrs=t.user_attrs)
            for t in finished])

    rows = []
    for mode, make in (("cold", None), ("enqueue top 3", enqueue), ("copy", copy)):
        reached = []
        for s in range(seeds):
            warm = make(first(s)) if make else None
            reached.append(replay(curves, grid, "tpe+pruning", s, ITERS, target,
                                  3 * len(curves), warm=warm)["reached"])
        share, never = _median_share(reached, grid_compute)
        rows.append(Row(f"second study, {mode}: compute to grid best +1%", share, "",
                        "<= 10%" if make else "", share <= 0.10 if make else None,
                        f"after a first study of {first_trials} TPE trials; median over "
                        f"{seeds} seeds" + (f"; {never} never reached it" if never else "")))
    return rows


def terminate_rows(space: Space, recorded, target: float, seeds: int, n_trials: int = 30,
                   settings: Optional[Dict[str, Any]] = None) -> List[Row]:
    from hydra_plugins.sweep_optuna._terminate import why_stop

    curves = curves_of(space, recorded)
    if curves is None:
        return []
    settings = settings or {"terminate": {"rule": "noise", "min_trials": 8, "patience": 8,
                                          "z": 1.0}}
    stop = lambda study: why_stop(study, settings, "val_loss") is not None  # noqa: E731
    full = [replay(curves, space[0], "tpe+pruning", s, ITERS, target, n_trials)
            for s in range(seeds)]
    ended = [replay(curves, space[0], "tpe+pruning", s, ITERS, target, n_trials, stop=stop)
             for s in range(seeds)]
    saved = 1 - statistics.median(e["compute"] for e in ended) / \
        statistics.median(f["compute"] for f in full)
    early = sum(1 for e, f in zip(ended, full)
                if math.isinf(e["reached"]) and not math.isinf(f["reached"]))
    t = settings["terminate"]
    detail = (f"rule=noise, min_trials={t['min_trials']}, patience={t['patience']}, "
              f"z={t['z']}; {n_trials}-trial TPE + pruning sweeps, {seeds} seeds; stopped in "
              f"{sum(e['stopped'] is not None for e in ended)} of them")
    return [Row("termination: compute saved", saved, "", ">= 33%", saved >= 1 / 3, detail),
            Row("termination: stopped before the best +1%", early / seeds, "", "<= 5%",
                early / seeds <= 0.05, f"{early} of {seeds} replays that reached it "
                "without termination")]


def asha_rows(space: Space, recorded, target: Tuple[float, str], grid_compute: int,
              seeds: int, name: str = "default space") -> List[Row]:
    """The peer most users would pick instead: Ray Tune's ASHA with its default searcher
    (bench/search_peer.py) on the same curves."""
    curves = curves_of(space, recorded)
    if curves is None:
        return []
    ran = asha(curves, space[0], target[0], ITERS, seeds)
    label = f"Ray Tune ASHA (random search), {name}: compute to {target[1]} +1%"
    if ran is None:
        return [Row(label, math.nan, "", "", None,
                    "not measured: pip install -e '.[bench]' (Ray Tune)")]
    reached, trials = ran
    share, never = _median_share(reached, grid_compute)
    return [Row(label, share, "", "", None, f"median over {seeds} seeds, {len(curves)} "
                f"configurations; {statistics.median(reached):g} micro-batches, "
                f"{statistics.median(trials):g} trials run (median)"
                + (f"; {never} seeds never reached it" if never else ""))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--ray", action="store_true", help="also Ray Tune's ASHA (a bench extra)")
    args = parser.parse_args()
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    recorded = load()
    if not recorded:
        raise SystemExit("no grid recorded: python -m bench.search_grid")
    # the grid's best: of the standard-scaling half, the space both the default search
    # and lora_priors draw from (an rsLoRA configuration neither can propose does not count);
    # the spaces with scaling are also measured against the best of the whole grid
    values = {scaling: [r["objective"] for r in recorded.values()
                        if "objective" in r and r["config"]["lora.scaling"] == scaling]
              for scaling in GRID["lora.scaling"]}
    best = min(values["standard"])
    overall = min(v for vs in values.values() for v in vs)
    standard = sum(r["config"]["lora.scaling"] == "standard" for r in recorded.values())
    target, grid_compute = best * 1.01, standard * ITERS
    targets = {"standard": (target, "grid best (standard scaling)"),
               "overall": (overall * 1.01, "best with either scaling")}
    both = GRID["lora.scaling"]
    spaces = {"lora (default space)": _lora(["standard"]), "lora_priors": _priors(),
              "lora + scaling (accumulation 1)": _lora(both, [1]),
              "lora + scaling (the whole grid)": _lora(both)}
    rows, shares = reach_rows(spaces, recorded, targets, grid_compute, args.seeds)
    if "lora_priors" in shares and "lora (default space)" in shares:
        ratio = shares["lora_priors"] / shares["lora (default space)"]
        rows.append(Row("lora_priors / default space: compute", ratio, "x", "<= 0.5",
                        ratio <= 0.5, "medians of the two rows above"))
    rows += warm_rows(spaces["lora (default space)"], recorded, target, grid_compute,
                      args.seeds)
    rows += terminate_rows(spaces["lora (default space)"], recorded, target, args.seeds)
    if args.ray:
        rows += asha_rows(spaces["lora (default space)"], recorded, targets["standard"],
                          grid_compute, args.seeds)
        rows += asha_rows(spaces["lora + scaling (the whole grid)"], recorded,
                          targets["overall"], grid_compute, args.seeds, "the whole grid")
    rows.append(Row("grid: best val loss (standard scaling)", best, "loss", "", None,
                    f"{standard} configurations x {ITERS} micro-batches; "
                    f"{len(recorded)} recorded in all"))
    rows.append(Row("grid: best val loss (either scaling)", overall, "loss", "", None,
                    f"{len(values['rslora'])} rsLoRA configurations completed"))
    print_table(rows)


if __name__ == "__main__":
    main()
