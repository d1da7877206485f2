"""The search replay's grid: every configuration trained once, for real, at the default
sweep's trial budget (one epoch's schedule, its first 0.17 trained, evaluated at
micro-batches 8 and 16 on the subset the pruner compares and at 24 on the whole
validation split), on the shipped data and model.

Each configuration appends one line to ``bench/results/search_grid.jsonl`` as soon as it
has trained (its curve, the per-example losses the paired pruner reads, the objective and
its standard error, the seconds it took), so a recording stopped midway goes on where it
stopped, and the file is kept in the repository: the replays (``bench/search_replay.py``)
need no training.

    python -m bench.search_grid            # train what is missing (about 75 s a config)
    python -m bench.search_grid --status   # how much of the grid is there
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

RESULTS = Path(__file__).resolve().parent / "results" / "search_grid.jsonl"
# scaling first: the standard half is a whole grid for the lora and lora_priors spaces
GRID: Dict[str, List[Any]] = {
    "lora.scaling": ["standard", "rslora"],
    "lora.rank": [8, 32],
    "lora.alpha": [8, 16, 32, 64],
    "optimizer.lr": [1e-4, 3e-4, 1e-3, 3e-3],
    "train.grad_accumulation": [1, 4],
}
# the default search's trial budget (conf/hparams_search/lora.yaml)
FIXED = ["train.epochs=1", "train.stop_after_epochs=0.17", "mlflow.enabled=false"]

Key = Tuple


def configs() -> Iterator[Dict[str, Any]]:
    """In the order they are recorded: the standard half (a whole grid for the lora and
    lora_priors spaces), then rsLoRA at accumulation 1 (with the standard ones at 1, the
    scaling space), then the rest."""
    every = [dict(zip(GRID, values)) for values in itertools.product(*GRID.values())]
    yield from sorted(every, key=lambda c: (c["lora.scaling"] != "standard",
                                            c["train.grad_accumulation"] != 1))


def key(config: Dict[str, Any]) -> Key:
    return tuple(config[k] for k in GRID)


def load(path: Path = RESULTS) -> Dict[Key, Dict[str, Any]]:
    """{configuration key: its record}; the last record of a configuration wins."""
    out: Dict[Key, Dict[str, Any]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                out[key(row["config"])] = row
    return out


def record(config: Dict[str, Any], folder: Path, path: Path = RESULTS) -> Dict[str, Any]:
    """Train ``config`` as a default sweep's trial would; append its record to ``path``."""
    from sweep.config import compose
    from sweep.stats import example_record
    from sweep.training.events import Listener
    from sweep.trial import run_trial

    from sweep.errors import TrialFailed, first_line

    seen: Dict[str, Any] = {"curve": {}, "examples": {}}
    trained = {"iteration": 0}

    class Keep(Listener):
        def on_train_report(self, r) -> None:
            trained["iteration"] = r.iteration

        def on_eval_report(self, r) -> None:
            if r.step > 0 and not r.final:  # what a job reports to its trial
                seen["curve"][r.iteration] = r.val_loss
                seen["examples"][r.iteration] = example_record(
                    r.examples, r.example_losses, r.example_tokens)

    started = time.perf_counter()
    cfg = compose([*FIXED, *(f"{k}={v}" for k, v in config.items())])
    try:
        result = run_trial(cfg, folder, listeners=[Keep()])
    except TrialFailed as error:  # diverged, collapsed: in a sweep, a FAIL trial
        row = {"config": config, **seen, "failed": first_line(error),
               "failed_at": trained["iteration"],
               "seconds": round(time.perf_counter() - started, 1)}
    else:
        row = {"config": config, **seen, "objective": result.best_val_loss,
               "objective_se": result.best_val_loss_se, "iterations": result.train.iterations,
               "seconds": round(time.perf_counter() - started, 1)}
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--status", action="store_true")
    args = parser.parse_args()
    done = load()
    todo = [c for c in configs() if key(c) not in done]
    print(f"{len(done)} of {len(done) + len(todo)} configurations recorded in {RESULTS}")
    if args.status or not todo:
        return
    from sweep import runtime

    runtime.setup()
    for i, config in enumerate(todo, 1):
        folder = Path(tempfile.mkdtemp(prefix="search-grid-"))
        try:
            row = record(config, folder)
        finally:
            shutil.rmtree(folder, ignore_errors=True)  # its checkpoint: 75 MB
        value = (f"{row['objective']:.4f} +- {row['objective_se']:.4f}" if "objective" in row
                 else f"FAIL at micro-batch {row['failed_at']}: {row['failed']}")
        print(f"[{i}/{len(todo)}] {config}: {value} ({row['seconds']:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
