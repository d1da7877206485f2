"""Held-out evaluation: ``target=`` resolution and its errors, an adapter for another base
model, ``sweep-eval`` through the CLI, and the automatic evaluation of a sweep's best
trial logged to its MLflow run (tiny model)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from conftest import ROOT
from sweep.config.schema import LoraConfig, ModelConfig, ModelSource, TinyArch
from sweep.errors import SweepError
from sweep.models.loader import load_base
from sweep.targets import TargetError, resolve_target
from sweep.training.lora import apply_lora, load_adapter, save_adapter

EVAL = [sys.executable, "-c", "from sweep.cli.eval import main; main()"]


@pytest.mark.parametrize("make,message", [
    (lambda tmp: str(tmp / "missing"), "no such folder, and not an MLflow run id"),
    (lambda tmp: str(tmp), "has no adapters.safetensors"),
    (lambda tmp: str((tmp / "f.txt").write_text("x") and tmp / "f.txt"), "a file"),
    (lambda tmp: None, "target= is required"),
])
def test_bad_targets_are_one_clear_line(tmp_path: Path, make, message) -> None:
    with pytest.raises(TargetError, match=message):
        resolve_target(make(tmp_path))


def test_unknown_run_id(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/m.db"
    MlflowClient(uri).search_experiments()  # creates the store
    with pytest.raises(TargetError, match="no MLflow run with this id"):
        resolve_target("0" * 32, uri)


def test_adapter_for_another_base_model_is_refused(tmp_path: Path) -> None:
    small = ModelConfig(name="tiny", source=ModelSource.tiny, path="tiny", quantize=False)
    other = ModelConfig(name="tiny_wide", source=ModelSource.tiny, path="tiny", quantize=False,
                        arch=TinyArch(hidden_size=96, intermediate_size=192))
    tiny = load_base(small, seed=0)
    config = apply_lora(tiny.model, LoraConfig(rank=4), seed=0)
    save_adapter(tiny.model, config, tmp_path / "adapter")
    wide = load_base(other, seed=0)
    with pytest.raises(SweepError, match="does not fit tiny_wide.*another base model"):
        load_adapter(wide.model, tmp_path / "adapter", "tiny_wide")
    tiny = load_base(small, seed=0)
    load_adapter(tiny.model, tmp_path / "adapter", "tiny")  # its own base: fine


@pytest.fixture(scope="module")
def swept(tiny_sweep):
    return tiny_sweep


@pytest.mark.slow
def test_best_trial_is_evaluated_after_the_sweep(swept) -> None:
    tmp, _, out = swept
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp}/o.db")
    best = study.best_trial
    assert study.user_attrs["evaluated_trial"] == best.number
    client = MlflowClient(f"sqlite:///{tmp}/m.db")
    metrics = client.get_run(best.user_attrs["mlflow_run_id"]).data.metrics
    for name in ("test_loss", "test_ppl", "test_rougeL", "test_bleu", "test_exact_match",
                 "test_f1", "test_citation_recall"):
        assert name in metrics and f"base_{name}" in metrics
    assert metrics["test_examples"] == 10 and metrics["test_loss"] < metrics["base_test_loss"]
    assert "delta_test_loss_se" in metrics
    run = client.get_run(best.user_attrs["mlflow_run_id"])
    table = client.download_artifacts(run.info.run_id, run.data.tags["sweep.eval_table"])
    rows = json.loads(Path(table).read_text())
    assert {"question", "reference", "base_answer", "adapter_answer", "adapter_rougeL"} <= \
        set(rows["columns"]) and len(rows["data"]) == 10
    assert "held-out evaluation" in out.stdout and "test_citation_precision" in out.stdout


@pytest.mark.slow
def test_sweep_eval_command(swept) -> None:
    tmp, qa, _ = swept
    common = ["model=tiny", f"mlflow.tracking_uri=sqlite:///{tmp}/m.db", "eval.max_tokens=8"]
    out = subprocess.run([*EVAL, f"target={tmp}/sweep", "eval.max_examples=3", *common],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "10 test examples (loss), 3 answered" in out.stdout
    client = MlflowClient(f"sqlite:///{tmp}/m.db")
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp}/o.db")
    run = client.get_run(study.best_trial.user_attrs["mlflow_run_id"])
    table = json.loads(Path(client.download_artifacts(
        run.info.run_id, run.data.tags["sweep.eval_table"])).read_text())
    assert len(table["data"]) == 3  # this evaluation's own table, not appended to
    assert "adapter - base" in out.stdout and "test_rougeL" in out.stdout
    # the same adapter by its MLflow run id; base model skipped
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp}/o.db")
    run_id = study.best_trial.user_attrs["mlflow_run_id"]
    out = subprocess.run([*EVAL, f"target={run_id}", "eval.base=false", "eval.max_examples=2",
                          "eval.log_to_mlflow=false", *common], cwd=ROOT, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "2 answered" in out.stdout
    moved = tmp / "moved_sweep"  # a sweep whose relative SQLite path is not found from here
    moved.mkdir(exist_ok=True)
    (moved / "multirun.yaml").write_text(
        "hydra:\n  sweeper:\n    storage: sqlite:///mlruns-elsewhere/o.db\n"
        "    study_name: s\n")
    elsewhere = subprocess.run([*EVAL, f"target={moved}", *common], cwd=tmp,
                               capture_output=True, text=True, timeout=600)
    assert elsewhere.returncode == 2 and "does not exist" in elsewhere.stdout + elsewhere.stderr
    assert not (tmp / "mlruns-elsewhere").exists()  # no empty database left behind
    bad = subprocess.run([*EVAL, f"target={tmp}/nothing-here", *common], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and "no such folder" in bad.stdout + bad.stderr
    assert "Traceback" not in bad.stdout + bad.stderr
    job = subprocess.run([*EVAL, "--cfg", "job", "target=x", "eval.max_examples=5"], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert job.returncode == 0 and "max_examples: 5" in job.stdout
