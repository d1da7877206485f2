"""What the end-to-end tests share: the sweep command, a test's stores, and an MLflow
database migrated once per session and copied into each test's folder.

MLflow migrates a new SQLite store when it is first opened (2-3 s of Alembic here, per
test); :func:`stores` copies a database that one session made instead, so a test pays
for the copy only. Build a command with :func:`sweep_cmd` and run it with :func:`run`;
``zero_cost=True`` selects the zero-cost trial runner (``runner._target_``) where the test
checks the sweeper, not the training.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from sweep.testing.zero_cost import TARGET as ZERO_COST  # light: no model, no mlx

ROOT = Path(__file__).resolve().parents[1]
SWEEP = [sys.executable, "-m", "sweep"]
# the tiny model trained briefly, evaluated at the same points in every trial
# (train.iters: not the default search's budget in epochs, nor its prefix)
TINY = ["model=tiny", "train.iters=8", "train.epochs=null", "train.stop_after_epochs=null",
        "train.val_batches=2", "train.eval_every_iters=4"]

_template: Optional[Path] = None


def migrated_mlflow_db() -> Path:
    """An empty MLflow SQLite store at the installed MLflow's schema, made once per process."""
    global _template
    if _template is None:
        path = Path(tempfile.mkdtemp(prefix="sweep-mlflow-template-")) / "m.db"
        made = subprocess.run(
            [sys.executable, "-c", "import sys; from mlflow.tracking import MlflowClient; "
             "MlflowClient(sys.argv[1]).search_experiments()", f"sqlite:///{path}"],
            capture_output=True, text=True, timeout=300)
        assert made.returncode == 0 and path.is_file(), made.stderr[-2000:]
        _template = path
    return _template


@dataclass(frozen=True)
class Stores:
    """A test's study (``o.db``, study ``s``), MLflow store (``m.db``) and sweep folder."""

    folder: Path

    @property
    def study_url(self) -> str:
        return f"sqlite:///{self.folder}/o.db"

    @property
    def mlflow_uri(self) -> str:
        return f"sqlite:///{self.folder}/m.db"

    @property
    def sweep_dir(self) -> Path:
        return self.folder / "sweep"

    def overrides(self, study: str = "s") -> List[str]:
        return [f"hydra.sweeper.storage={self.study_url}", f"hydra.sweeper.study_name={study}",
                f"mlflow.tracking_uri={self.mlflow_uri}", f"hydra.sweep.dir={self.sweep_dir}"]

    def study(self, name: str = "s"):
        import optuna

        return optuna.load_study(study_name=name, storage=self.study_url)

    def runs(self, experiment: str = "sweep"):
        """``(client, runs)`` of the experiment, every run."""
        from mlflow.tracking import MlflowClient

        client = MlflowClient(self.mlflow_uri)
        found = client.get_experiment_by_name(experiment)
        if found is None:
            return client, []
        return client, client.search_runs([found.experiment_id], max_results=1000)


def stores(folder: Path) -> Stores:
    """``folder``'s stores, its MLflow database a copy of the session's migrated one."""
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "m.db").exists():
        shutil.copyfile(migrated_mlflow_db(), folder / "m.db")
    return Stores(folder)


def write_qa(path: Path, count: int = 50) -> Path:
    """A small question-answer file that the tiny model can learn a little of."""
    with path.open("w") as f:
        for i in range(count):
            f.write(json.dumps({"question": f"What does Article {i % 7} protect? ({i})",
                                "answer": f"Article {i % 7} protects right {i % 3}."}) + "\n")
    return path


def sweep_cmd(where: Stores, *overrides: str, n_trials: Optional[int] = 4, study: str = "s",
              tiny: bool = True, multirun: bool = True) -> List[str]:
    """``sweep -m`` on ``where``'s stores (the tiny model unless ``tiny=False``)."""
    trials = [f"hydra.sweeper.n_trials={n_trials}"] if n_trials is not None else []
    return [*SWEEP, *(["-m"] if multirun else []), *(TINY if tiny else []), *trials,
            *where.overrides(study), *overrides]


def worded_sweep(tmp: Path, *extra: str) -> List[str]:
    """A one-trial sweep on the tiny model trained enough (lr 5e-3, 16 micro-batches) that
    it answers with words: after a few micro-batches at the usual rates it answers newlines."""
    qa = write_qa(tmp / "qa.jsonl", 40)
    return sweep_cmd(stores(tmp), "data=jsonl", f"data.path={qa}", "train.iters=16",
                     "train.grad_accumulation=1", "train.eval_every_iters=8",
                     "train.val_batches=1", "lora.rank=8", "lora.alpha=choice(16)",
                     "optimizer.lr=5e-3", "eval.after_sweep=false", *extra, n_trials=1)


def zero_cost(cmd: Sequence[str]) -> List[str]:
    """``cmd`` with the zero-cost trial runner, and without the winner's evaluation and
    registration (there is no adapter): for tests of the sweeper, not of training."""
    return [*cmd, f"runner._target_={ZERO_COST}", "eval.after_sweep=false",
            "registry.after_sweep=false"]


def run(cmd: Sequence[str], *, timeout: float = 900, env: Optional[Dict[str, str]] = None,
        cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
