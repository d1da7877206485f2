"""A whole trial on the tiny model: MLflow run contents, the adapter loads into mlx-lm,
the CLI returns, and bad input exits 2 with one clear line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import ROOT, compose_config, tiny_overrides
from sweep.trial import run_trial

SWEEP = [sys.executable, "-m", "sweep"]


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*SWEEP, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "HYDRA_FULL_ERROR": "0"})


@pytest.fixture
def trial(tmp_path: Path, qa_file: Path, mlflow_store: str):
    overrides = tiny_overrides(tmp_path, qa_file)
    result = run_trial(compose_config(overrides), tmp_path / "out", overrides=overrides)
    return result, MlflowClient(f"sqlite:///{tmp_path}/mlflow/m.db")


def test_trial_logs_params_metrics_and_adapter(trial) -> None:
    result, client = trial
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["lora.rank"] == "16" and params["lora.scale"] == "2.0"
    assert int(params["trainable_parameters"]) == result.trainable_parameters > 0
    assert params["optimizer.lr"] == "0.0002" and params["train.grad_accumulation"] == "2"
    history = {k: client.get_metric_history(run.info.run_id, k)
               for k in ("train_loss", "val_loss", "val_ppl", "learning_rate", "grad_norm",
                         "tokens_per_sec", "peak_memory_gb")}
    # steps are micro-batches (accumulation 2: optimizer steps 1 and 2 end at 2 and 4)
    assert [m.step for m in history["val_loss"]] == [0, 2, 4]
    assert [m.step for m in history["train_loss"]] == [2, 4]
    assert run.data.metrics["best_val_loss"] == pytest.approx(result.best_val_loss)
    se = client.get_metric_history(run.info.run_id, "val_loss_se")
    assert se[-1].step == 4 and 0 < se[-1].value < 1
    assert run.data.metrics["best_val_loss_se"] == pytest.approx(result.best_val_loss_se)
    assert params["data.valid_answer_tokens"] != "0" and params["data.train_cut_examples"] == "0"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "adapter")}
    assert artifacts == {"adapter/adapters.safetensors", "adapter/adapter_config.json"}
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # UI view
    configs = {a.path for a in client.list_artifacts(run.info.run_id, "config")}
    assert configs == {"config/config.yaml", "config/overrides.yaml"}


def test_logged_adapter_loads_in_mlx_lm_and_generates(trial, tmp_path: Path) -> None:
    import mlflow
    from mlx_lm import generate, load

    result, client = trial
    mlflow.set_tracking_uri(client._tracking_client.tracking_uri)
    local = mlflow.artifacts.download_artifacts(run_id=result.run_id, artifact_path="adapter",
                                                dst_path=str(tmp_path / "dl"))
    model, tokenizer = load(result.model_dir, adapter_path=local)
    from mlx_lm.tuner.lora import LoRALinear

    assert isinstance(model.layers[0].self_attn.q_proj, LoRALinear)
    assert isinstance(model.layers[-1].mlp.down_proj, LoRALinear)
    text = generate(model, tokenizer, "Hello", max_tokens=4)
    assert isinstance(text, str)
    cli = subprocess.run([sys.executable, "-m", "mlx_lm", "generate", "--model", result.model_dir,
                          "--adapter-path", local, "--prompt", "Hi", "--max-tokens", "3"],
                         capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0, cli.stderr[-2000:]


def test_cli_runs_a_trial(tmp_path: Path, qa_file: Path, mlflow_store: str) -> None:
    out = run_cli(*tiny_overrides(tmp_path, qa_file), f"hydra.run.dir={tmp_path}/run",
                  cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "run" / "adapter" / "adapters.safetensors").is_file()
    runs = MlflowClient(f"sqlite:///{tmp_path}/mlflow/m.db").search_runs(
        [MlflowClient(f"sqlite:///{tmp_path}/mlflow/m.db").get_experiment_by_name("sweep")
         .experiment_id])
    assert [r.info.status for r in runs] == ["FINISHED"]


@pytest.mark.parametrize(
    "override,message",
    [
        ("lora.rank=-4", "lora.rank=-4: must be > 0"),
        ("model.path=/no/such.gguf", "model.path='/no/such.gguf'"),
        ("data.path=/no/such.jsonl", "no such file /no/such.jsonl"),
    ],
)
def test_bad_input_exits_2_with_one_clear_line(tmp_path: Path, qa_file: Path, override,
                                               message) -> None:
    overrides = [o for o in tiny_overrides(tmp_path, qa_file)
                 if not (override.startswith("model.") and o == "model=tiny")]
    out = run_cli(*overrides, override, f"hydra.run.dir={tmp_path}/run", cwd=ROOT)
    assert out.returncode == 2
    assert message in out.stdout + out.stderr
    assert "Traceback" not in out.stdout + out.stderr


def test_a_meaningless_trial_exits_3_not_2(tmp_path: Path, qa_file: Path) -> None:
    """Bad input (exit 2) and a trial that ran but means nothing (exit 3) are told apart."""
    out = run_cli(*tiny_overrides(tmp_path, qa_file), "train.max_seq_length=12",
                  f"hydra.run.dir={tmp_path}/run", cwd=ROOT)
    said = out.stdout + out.stderr
    assert out.returncode == 3, said[-2000:]
    assert "no answer token left" in said and "Traceback" not in said


def test_bad_record_exits_2_naming_file_and_line(tmp_path: Path, qa_file: Path) -> None:
    with qa_file.open("a") as f:
        f.write('{"question": "unterminated\n')
    out = run_cli(*tiny_overrides(tmp_path, qa_file), f"hydra.run.dir={tmp_path}/run", cwd=ROOT)
    assert out.returncode == 2
    assert f"{qa_file}:41: invalid JSON" in out.stdout + out.stderr


def test_failed_trial_is_marked_failed_in_mlflow(tmp_path: Path, qa_file: Path,
                                                 mlflow_store: str) -> None:
    overrides = tiny_overrides(tmp_path, qa_file, "optimizer=sgd", "optimizer.lr=1e30",
                               "train.max_grad_norm=null")
    with pytest.raises(FloatingPointError):
        run_trial(compose_config(overrides), tmp_path / "out")
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow/m.db")
    runs = client.search_runs([client.get_experiment_by_name("sweep").experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]
