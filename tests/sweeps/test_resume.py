"""Long trials survive (tiny model, the real commands): a run SIGKILLed mid-training and
run again with ``train.resume=auto`` ends as an unbroken one, on one MLflow curve;
SIGTERM writes a checkpoint before exiting; a sweep's trial killed mid-training goes on
from its checkpoint when the same command runs again, and the study still has exactly
``n_trials`` finished trials."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from optuna.trial import TrialState

import harness
from harness import run, stores, sweep_cmd, write_qa

pytestmark = pytest.mark.slow

# moving weights (lr, dropout) over 16 micro-batches, a whole-state checkpoint every step
RUN = ["model=tiny", "train.iters=16", "train.grad_accumulation=2", "train.val_batches=1",
       "train.eval_every_iters=null", "train.eval_every=2", "optimizer.lr=0.01",
       "lora.dropout=0.1", "train.save_every=1", "train.epochs=null",
       "train.stop_after_epochs=null"]


def _single(where, qa: Path, folder: str, *extra: str):
    return [*harness.SWEEP, *RUN, "data=jsonl", f"data.path={qa}",
            f"mlflow.tracking_uri={where.mlflow_uri}", f"hydra.run.dir={where.folder}/{folder}",
            *extra]


def _curve(client, run_id: str, key: str):
    return [(m.step, m.value) for m in client.get_metric_history(run_id, key)]


def test_a_killed_run_resumes_and_ends_as_an_unbroken_one(tmp_path: Path) -> None:
    where = stores(tmp_path / "s")
    qa = write_qa(tmp_path / "qa.jsonl")
    whole = run(_single(where, qa, "whole"))
    assert whole.returncode == 0, whole.stderr[-3000:]
    killed = run(_single(where, qa, "run"), env={"SWEEP_FAULT": "train_step:kill@11"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert (tmp_path / "s" / "run" / "checkpoints" / "latest").read_text().strip() == "mb-0000010"
    again = run(_single(where, qa, "run", "train.resume=auto"))
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed from" in again.stdout and "mb-0000010" in again.stdout

    client, runs = where.runs()
    by_dir = {Path(r.data.tags["sweep.output_dir"]).name: r for r in runs}
    assert sorted(by_dir) == ["run", "whole"] and len(runs) == 2  # one run for the killed one
    resumed, unbroken = by_dir["run"], by_dir["whole"]
    assert resumed.info.status == "FINISHED"
    assert resumed.data.metrics["best_val_loss"] == pytest.approx(
        unbroken.data.metrics["best_val_loss"], abs=1e-3)
    for key in ("val_loss", "train_loss"):  # one curve, each point once, as the unbroken one
        assert [s for s, _ in _curve(client, resumed.info.run_id, key)] == \
            [s for s, _ in _curve(client, unbroken.info.run_id, key)]


def test_sigterm_writes_a_checkpoint_before_it_exits(tmp_path: Path) -> None:
    where = stores(tmp_path / "s")
    qa = write_qa(tmp_path / "qa.jsonl")
    stopped = run(_single(where, qa, "run", "train.save_every=0"),
                  env={"SWEEP_FAULT": "train_step:term@7"})
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    assert "Traceback" not in stopped.stderr
    assert (tmp_path / "s" / "run" / "checkpoints" / "latest").read_text().strip() == "mb-0000007"
    _, runs = where.runs()
    assert [r.info.status for r in runs] == ["KILLED"]
    again = run(_single(where, qa, "run", "train.save_every=0", "train.resume=auto"))
    assert again.returncode == 0, again.stderr[-3000:]
    _, runs = where.runs()
    assert [r.info.status for r in runs] == ["FINISHED"]


def test_a_killed_sweep_trial_goes_on_from_its_checkpoint(tmp_path: Path) -> None:
    where = stores(tmp_path / "s")
    qa = write_qa(tmp_path / "qa.jsonl")
    cmd = sweep_cmd(where, *RUN[1:], "data=jsonl", f"data.path={qa}", n_trials=2,
                    tiny=False) + ["model=tiny", "eval.after_sweep=false",
                                   "registry.after_sweep=false", "hydra.sweeper.pruner=none"]
    killed = run(cmd, env={"SWEEP_FAULT": "train_step:kill@11", "SWEEP_FAULT_TRIAL": "1"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    again = run(cmd)
    assert again.returncode == 0, again.stderr[-3000:]

    study = where.study()
    states = [t.state for t in study.trials]
    assert states == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]
    first, killed_trial, retry = study.trials
    assert retry.system_attrs["failed_trial"] == 1 and retry.params == killed_trial.params
    assert retry.user_attrs["checkpoint"].endswith("mb-0000014")  # its own newest
    client, runs = where.runs()
    trial_runs = [r for r in runs if "sweep.trial" in r.data.tags]
    assert len(trial_runs) == 2  # the killed trial's run went on: one curve
    continued = next(r for r in trial_runs if r.data.tags["sweep.trial"] == "2")
    assert continued.info.status == "FINISHED"
    assert continued.data.tags["sweep.resumed_from"].endswith("mb-0000010")
    trained = [s for s, _ in _curve(client, continued.info.run_id, "train_loss")]
    assert trained == [2, 4, 6, 8, 10, 12, 14, 16]  # 16 micro-batches in all, not 26
    assert retry.value == pytest.approx(continued.data.metrics["best_val_loss"])


def _prefix_sweep(tmp_path: Path, *extra: str):
    """Stores and a 2-trial tiny sweep whose trials search half an epoch (40 train
    examples: 5 of 10 micro-batches) of a 16-micro-batch budget."""
    where = stores(tmp_path / "s")
    qa = write_qa(tmp_path / "qa.jsonl")
    return where, sweep_cmd(where, *RUN[1:], "data=jsonl", f"data.path={qa}", n_trials=2,
                            tiny=False) + ["model=tiny", "eval.after_sweep=false",
                                           "registry.after_sweep=false",
                                           "hydra.sweeper.pruner=none",
                                           "train.stop_after_epochs=0.5",
                                           "lora.rank=choice(4,8)", *extra]


def test_a_sweep_searches_a_prefix_then_trains_its_winner_on(tmp_path: Path) -> None:
    """train.stop_after_epochs in a sweep: every trial stops there with a checkpoint; the
    best one then goes on to the whole budget as the same MLflow run; running the
    command again trains nothing."""
    where, cmd = _prefix_sweep(tmp_path)
    swept = run(cmd)
    assert swept.returncode == 0, swept.stderr[-3000:]
    assert "trained on to the whole budget (16 micro-batches)" in swept.stdout, swept.stdout

    study = where.study()
    done = study.user_attrs["finished_winner"]
    assert done["trial"] == study.best_trial.number and done["iterations"] == 16
    assert done["search_val_loss"] == pytest.approx(study.best_value)
    client, runs = where.runs()
    trial_runs = {r.data.tags["sweep.trial"]: r for r in runs if "sweep.trial" in r.data.tags}
    assert sorted(trial_runs) == ["0", "1"]  # the winner's run went on: one curve
    stopped_at = {n: [s for s, _ in _curve(client, r.info.run_id, "train_loss")][-1]
                  for n, r in trial_runs.items()}
    winner = str(done["trial"])
    assert stopped_at[winner] == 16
    assert all(4 <= at < 16 for n, at in stopped_at.items() if n != winner), stopped_at
    finished = trial_runs[winner]
    steps = [s for s, _ in _curve(client, finished.info.run_id, "train_loss")]
    assert steps == sorted(set(steps))  # each micro-batch trained once
    assert finished.info.status == "FINISHED" and finished.data.tags["sweep.finished"] == "true"
    assert finished.data.metrics["best_val_loss"] == pytest.approx(done["val_loss"])
    report = next((tmp_path / "s").glob("**/report"))  # the finished adapter is the shipped one
    adapter = Path(finished.data.tags["sweep.output_dir"]) / "adapter" / "adapters.safetensors"
    assert (report / "best_adapter" / "adapters.safetensors").read_bytes() == adapter.read_bytes()
    parent = next(r for r in runs if "sweep.trial" not in r.data.tags)
    assert client.get_run(parent.info.run_id).data.tags["sweep.finished_trial"] == winner

    again = run(cmd)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "trained to its whole budget already" in again.stdout + again.stderr
    assert where.study().user_attrs["finished_winner"] == done


def test_a_winner_trained_elsewhere_is_finished_here_from_its_mlflow_run(tmp_path: Path) -> None:
    """The winner's folder is not on this machine (deleted here): its config and its
    checkpoint come from its MLflow run (mlflow.log_checkpoints), it goes on in this
    sweep's folder, and its MLflow run goes on."""
    import shutil

    where, cmd = _prefix_sweep(tmp_path, "mlflow.log_checkpoints=true")
    searched = run(cmd + ["train.finish_winner=false"])
    assert searched.returncode == 0, searched.stderr[-3000:]
    assert "trained on to the whole budget" not in searched.stdout
    best = where.study().best_trial
    shutil.rmtree(best.user_attrs["output_dir"])  # trained on "another machine"
    finished = run(cmd)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert "trained on another machine" in finished.stdout + finished.stderr
    assert "fetched from its MLflow run" in finished.stdout + finished.stderr
    assert "trained on to the whole budget (16 micro-batches)" in finished.stdout
    done = where.study().user_attrs["finished_winner"]
    assert done["trial"] == best.number and done["run_id"] == best.user_attrs["mlflow_run_id"]
    client, runs = where.runs()
    assert len([r for r in runs if "sweep.trial" in r.data.tags]) == 2  # its run went on
    steps = [s for s, _ in _curve(client, done["run_id"], "train_loss")]
    assert steps[-1] == 16 and steps == sorted(set(steps))


def test_a_winner_killed_while_it_trains_on_goes_on_from_its_newest_checkpoint(
        tmp_path: Path) -> None:
    where, cmd = _prefix_sweep(tmp_path)
    # 40 train examples: 2 trials x 5 micro-batches, then the winner's 7th after its
    # prefix (micro-batch 12); a checkpoint every optimizer step (2 micro-batches)
    killed = run(cmd, env={"SWEEP_FAULT": "train_step:kill@17"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert where.study().user_attrs["finished_winner"]["state"] == "running"
    again = run(cmd)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "trained on to the whole budget (16 micro-batches)" in again.stdout, again.stdout
    assert "resumed from" in again.stdout and "mb-0000010" in again.stdout  # not mb-0000005
    done = where.study().user_attrs["finished_winner"]
    assert done["state"] == "done" and done["iterations"] == 16
    client, _ = where.runs()
    steps = [s for s, _ in _curve(client, done["run_id"], "train_loss")]
    assert steps[-1] == 16 and steps == sorted(set(steps))
