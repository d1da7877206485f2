"""Shared fixtures: compose the real config tree; tiny models; temporary MLflow stores.

``sweep.runtime.setup()`` comes before any test module imports MLX, so that MLX gets the
fast path (BLAS, kernels, heap) in the test processes too, as the commands do. With
``-n 2`` (pytest-xdist) it runs in each worker, not in the controller that starts them: the
runtime's C environment (the compiler wrapper on PATH, the kernels' TMPDIR) is inherited by
children on purpose, and workers that inherited it would be children of a set-up process.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, List, Sequence

import pytest
from omegaconf import DictConfig

import harness
from sweep import runtime
from sweep.config import CONFIG_DIR, compose



def pytest_configure(config) -> None:
    """Before collection, so before any test module imports mlx."""
    import os

    controller = (config.pluginmanager.hasplugin("xdist") and config.getoption("numprocesses", None)
                  and not os.environ.get("PYTEST_XDIST_WORKER"))
    if not controller:
        runtime.setup()

ROOT = harness.ROOT
CONF = CONFIG_DIR


def compose_config(overrides: Sequence[str] = ()) -> DictConfig:
    return compose(overrides)


@pytest.fixture
def compose_cfg() -> Callable[..., DictConfig]:
    return lambda *overrides: compose_config(overrides)


@pytest.fixture
def mlflow_uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/mlflow/m.db"


QA = [
    ("What does Article 21 of the Constitution of India protect?",
     "Article 21 protects the right to life and personal liberty."),
    ("Which article abolishes untouchability?", "Article 17 abolishes untouchability."),
    ("What is the minimum age to be President of India?", "The minimum age is 35 years."),
    ("Who appoints the Chief Justice of India?", "The President of India appoints the CJI."),
]


@pytest.fixture
def qa_file(tmp_path: Path) -> Path:
    path = tmp_path / "qa.jsonl"
    with path.open("w") as f:
        for i in range(40):
            q, a = QA[i % len(QA)]
            f.write(json.dumps({"question": f"{q} ({i})", "answer": a}) + "\n")
    return path


def tiny_overrides(tmp_path: Path, qa: Path, *extra: str) -> List[str]:
    return ["model=tiny", "data=jsonl", f"data.path={qa}", "train.iters=4", "train.epochs=null",
            "train.stop_after_epochs=null",  # in a sweep: not the default search's budget
            "train.grad_accumulation=2", "train.eval_every=1", "train.eval_every_iters=null",
            "train.val_batches=1",
            f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow/m.db", *extra]


@pytest.fixture
def mlflow_store(tmp_path: Path) -> str:
    """``tiny_overrides``' MLflow store, made from the session's migrated database (its
    URI): for tests that run commands and do not check how a new store is made."""
    harness.stores(tmp_path / "mlflow")
    return f"sqlite:///{tmp_path}/mlflow/m.db"


@pytest.fixture(scope="session")
def tiny_sweep(tmp_path_factory):
    """A real sweep of 2 tiny-model trials, its best trial evaluated (and registered):
    ``(folder, data file, completed process)``; the study is ``s`` in ``<folder>/o.db``,
    MLflow in ``<folder>/m.db``, the sweep's output in ``<folder>/sweep``. Shared by the
    evaluation, export, chat, registry and browser tests."""
    tmp = tmp_path_factory.mktemp("swept")
    qa = harness.write_qa(tmp / "qa.jsonl")
    cmd = harness.sweep_cmd(harness.stores(tmp), "data=jsonl", f"data.path={qa}",
                            "data.test_fraction=0.2", "train.grad_accumulation=1",
                            "lora.rank=choice(4,8)", "eval.max_tokens=8", n_trials=2)
    out = harness.run(cmd)
    assert out.returncode == 0, out.stderr[-3000:]
    return tmp, qa, out
