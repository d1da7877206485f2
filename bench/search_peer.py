"""The peer in the search replays (``python -m bench.search_replay --ray``): Ray Tune's
ASHA scheduler with its default searcher, on the same recorded curves as the sweeper's
replays (bench/search_replay.py). Ray Tune is in the ``bench`` extra (``pip install -e
'.[bench]'``), not a dependency of the sweeper."""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from typing import Any, Dict, List, Optional, Tuple


def asha(curves: Dict[Tuple, Any], grid: Dict[str, List[Any]], target: float, iters: int,
         seeds: int) -> Optional[Tuple[List[float], List[int]]]:
    """For each seed, the micro-batches ASHA trains until a complete trial is within
    ``target`` (inf if never) and the trials it ran; None without Ray Tune.

    One trial at a time, so that the compute counts as in the sweeper's replays; rungs at
    micro-batches 8 and 16 as the sweeper's pruner (grace period 8, reduction factor 2,
    ``max_t`` = ``iters``); the default searcher draws the grid's values at random."""
    # one trial created at a time: otherwise Ray sets up the whole budget's trial folders
    # (3 x the grid) at the start of every seed, which was most of a seed's time
    os.environ.setdefault("TUNE_MAX_PENDING_TRIALS_PG", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # verbose=0 is quiet only in the old one
    try:
        import ray
        from ray import tune
        from ray.tune.schedulers import ASHAScheduler
    except ImportError:
        return None

    def trainable(config: Dict[str, Any]) -> None:
        seen = curves[tuple(config[k] for k in grid)]
        end = seen.get("failed_at", iters)
        for step in sorted(s for s in seen["curve"] if s < min(end, iters)):
            tune.report({"val_loss": seen["curve"][step], "mb": step})
        # a FAIL trial (collapsed at micro-batch 24 on this grid, past every rung) ends with
        # a value no target accepts, having cost what it trained
        tune.report({"val_loss": seen.get("objective", math.inf), "mb": end})

    class Reached(tune.stopper.Stopper):
        """Ends a seed's experiment once a complete trial is within the target:
        what comes after it does not change the figure, and Ray's per-trial overhead
        (about a second here) would otherwise make each seed run the whole budget."""

        def __init__(self) -> None:
            self.hit = False

        def __call__(self, trial_id: str, result: Dict[str, Any]) -> bool:
            self.hit |= result.get("mb") == iters and result["val_loss"] <= target
            return False

        def stop_all(self) -> bool:
            return self.hit

    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False,
             ignore_reinit_error=True)
    reached: List[float] = []
    trials: List[int] = []
    scratch = tempfile.mkdtemp(prefix="sweep-asha-")  # Ray's trial folders, not ~/ray_results
    try:
        for seed in range(seeds):
            tuner = tune.Tuner(
                trainable, param_space={k: tune.choice(v) for k, v in grid.items()},
                tune_config=tune.TuneConfig(
                    metric="val_loss", mode="min", num_samples=3 * len(curves),
                    max_concurrent_trials=1, reuse_actors=True,
                    search_alg=tune.search.BasicVariantGenerator(
                        random_state=seed),
                    scheduler=ASHAScheduler(time_attr="mb", max_t=iters, grace_period=8,
                                            reduction_factor=2)),
                run_config=tune.RunConfig(verbose=0, stop=Reached(), storage_path=scratch))
            # trial ids end in their creation index: with one at a time, the order they ran
            # (a trial created but not started when the experiment ended has no metrics)
            results = sorted((r for r in tuner.fit() if r.metrics.get("mb")),
                             key=lambda r: int(r.metrics["trial_id"].split("_")[-1]))
            compute, hit = 0, math.inf
            for r in results:
                compute += r.metrics["mb"]
                if r.metrics["mb"] == iters and r.metrics["val_loss"] <= target:
                    hit = min(hit, compute)
            trials.append(len(results))
            reached.append(hit)
    finally:
        ray.shutdown()
        shutil.rmtree(scratch, ignore_errors=True)
    return reached, trials
