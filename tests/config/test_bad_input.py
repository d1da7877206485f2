"""Bad input found before anything runs: one line naming the key, exit status 2, no
traceback, no MLflow run; an unreachable tracking server is said within seconds, not
after minutes of retries (tiny model)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, tiny_overrides

pytestmark = pytest.mark.slow


def _sweep(*args: str, multirun: bool = False) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "sweep", *(["-m"] if multirun else []), *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("override,message", [
    ("model.source=hf model.path={tmp}/nothing", "model.path={tmp}/nothing: no such folder"),
    ("model.source=hf model.path={tmp}", "has no config.json"),
    ("mlflow.tracking_uri=sqlite:///{tmp}/file/m.db", "{tmp}/file is a file, not a folder"),
    ("mlflow.tracking_uri=http://user@127.0.0.1:9/",
     "mlflow.tracking_uri=http://user@127.0.0.1:9/: no MLflow server answers there"),
])
def test_bad_model_and_tracking_settings(tmp_path: Path, qa_file: Path, override,
                                         message) -> None:
    (tmp_path / "file").write_text("x")
    started = time.monotonic()
    out = _sweep(*tiny_overrides(tmp_path, qa_file), f"hydra.run.dir={tmp_path}/run",
                 *override.format(tmp=tmp_path).split())
    said = out.stdout + out.stderr
    assert out.returncode == 2, said[-2000:]
    assert message.format(tmp=tmp_path) in said and "Traceback" not in said
    assert "secret" not in said
    assert time.monotonic() - started < 120  # not MLflow's minutes of retries


@pytest.mark.parametrize("storage,message", [
    ("sqlite:///{tmp}/file/o.db", "{tmp}/file is a file, not a folder"),
    ("postgresql://u@127.0.0.1:9/db", "hydra.sweeper.storage=postgresql://u@127.0.0.1:9/db: "
                                      "cannot open the study's storage"),
])
def test_bad_study_storage(tmp_path: Path, qa_file: Path, storage, message) -> None:
    (tmp_path / "file").write_text("x")
    out = _sweep(*tiny_overrides(tmp_path, qa_file), f"hydra.sweep.dir={tmp_path}/sweep",
                 f"hydra.sweeper.storage={storage.format(tmp=tmp_path)}", multirun=True)
    said = out.stdout + out.stderr
    assert out.returncode == 2, said[-2000:]
    assert message.format(tmp=tmp_path) in said and "Traceback" not in said
    assert ":pw@" not in said


def test_a_corrupt_cached_import_is_imported_again(tmp_path: Path, qa_file: Path) -> None:
    args = [*tiny_overrides(tmp_path, qa_file), f"cache_dir={tmp_path}/cache",
            "mlflow.enabled=false"]
    first = _sweep(*args, f"hydra.run.dir={tmp_path}/run1")
    assert first.returncode == 0, first.stderr[-2000:]
    weights = next((tmp_path / "cache" / "models").glob("tiny-*/model.safetensors"))
    with weights.open("r+b") as f:
        f.truncate(100_000)  # a damaged disk, a copy cut short
    again = _sweep(*args, f"hydra.run.dir={tmp_path}/run2")
    said = again.stdout + again.stderr
    assert again.returncode == 0, said[-2000:]
    assert "cannot be loaded" in said and "importing it again" in said
    assert weights.stat().st_size > 100_000


def test_a_corrupt_model_folder_of_the_user_is_one_line(tmp_path: Path, qa_file: Path) -> None:
    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llama"}')
    (folder / "model.safetensors").write_bytes(b"not safetensors")
    out = _sweep(*tiny_overrides(tmp_path, qa_file), f"hydra.run.dir={tmp_path}/run",
                 "model.source=hf", f"model.path={folder}")
    said = out.stdout + out.stderr
    assert out.returncode == 2, said[-2000:]
    assert f"model.path={folder}: cannot load" in said and "Traceback" not in said


def test_a_train_split_smaller_than_the_batch_records_no_run(tmp_path: Path,
                                                           qa_file: Path) -> None:
    small = tmp_path / "small.jsonl"
    small.write_text("".join(qa_file.read_text().splitlines(True)[:6]))
    out = _sweep(*tiny_overrides(tmp_path, small, "train.batch_size=16"),
                 f"hydra.run.dir={tmp_path}/run")
    said = out.stdout + out.stderr
    assert out.returncode == 2 and "fewer than train.batch_size=16" in said, said[-2000:]
    assert f"data.path={small}" in said and "Traceback" not in said
    db = tmp_path / "mlflow" / "m.db"
    if db.exists():
        from mlflow.tracking import MlflowClient

        client = MlflowClient(f"sqlite:///{db}")
        experiment = client.get_experiment_by_name("sweep")
        assert experiment is None or not client.search_runs([experiment.experiment_id])


@pytest.mark.parametrize("override,message", [
    ("lora.num_layers=99", "lora.num_layers=99: the model has 2 blocks"),
    ("lora.keys=[self_attn.qproj]", "lora.keys: ['self_attn.qproj'] not found in a block"),
])
def test_bad_lora_settings_are_one_line(tmp_path: Path, qa_file: Path, override, message) -> None:
    out = _sweep(*tiny_overrides(tmp_path, qa_file), f"hydra.run.dir={tmp_path}/run", override)
    said = out.stdout + out.stderr
    assert out.returncode == 2, said[-2000:]
    assert message in said and "Traceback" not in said


@pytest.mark.parametrize("multirun", [False, True])
def test_a_run_folder_under_a_file(tmp_path: Path, qa_file: Path, multirun: bool) -> None:
    """Hydra makes the folder before any code of ours; the callback makes it first."""
    (tmp_path / "file").write_text("x")
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    out = _sweep(*tiny_overrides(tmp_path, qa_file), f"{key}={tmp_path}/file/out",
                 multirun=multirun)
    said = out.stdout + out.stderr
    assert out.returncode == 2 and "Traceback" not in said, said[-2000:]
    assert said.strip() == f"sweep: {key}={tmp_path}/file/out: {tmp_path}/file is a file, not a folder"
    assert (tmp_path / "file").read_text() == "x" and not (tmp_path / "mlflow").exists()
