"""Checkpoints of the whole training state (tiny model, in this process): a run resumed
from one ends exactly as an unbroken run does, trains no micro-batch twice, refuses a
corrupt or foreign checkpoint in one line, and early stopping stops where it should."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import List

import pytest

from conftest import compose_config, tiny_overrides
from sweep.training.checkpoint import CheckpointError, candidates
from sweep.training.events import EvalReport, Listener, TrainReport
from sweep.trial import run_trial

# a learning rate that moves the tiny model, and dropout, so that the optimizer state and
# the random state both matter
MOVING = ["train.iters=12", "optimizer.lr=0.01", "lora.dropout=0.1", "train.eval_every=2",
          "mlflow.enabled=false"]


class Recorder(Listener):
    def __init__(self) -> None:
        self.trained: List[int] = []
        self.evals: List[EvalReport] = []

    def on_train_report(self, report: TrainReport) -> None:
        self.trained.append(report.iteration)

    def on_eval_report(self, report: EvalReport) -> None:
        self.evals.append(report)


def _run(tmp_path: Path, qa: Path, out: str, *extra: str, listener: Listener = Listener()):
    overrides = tiny_overrides(tmp_path, qa, *MOVING, *extra)
    return run_trial(compose_config(overrides), tmp_path / out, overrides=overrides,
                     listeners=[listener])


def _qa(folder: Path) -> Path:
    from conftest import QA

    qa = folder / "qa.jsonl"
    qa.write_text("".join(json.dumps({"question": f"{q} ({i})", "answer": a}) + "\n"
                          for i, (q, a) in enumerate(QA[i % len(QA)] for i in range(40))))
    return qa


@pytest.fixture(scope="module")
def unbroken(tmp_path_factory) -> float:
    """The objective of the run the resumed ones must reproduce."""
    tmp = tmp_path_factory.mktemp("unbroken")
    return _run(tmp, _qa(tmp), "out").best_val_loss


def _fault(monkeypatch, spec: str) -> None:
    from sweep.testing import faults

    monkeypatch.setattr(faults, "_passes", {})  # counted from this run's first pass
    monkeypatch.setenv("SWEEP_FAULT", spec)


def _crashed(tmp_path: Path, monkeypatch, iteration: int, out: str = "out") -> Path:
    """A run with a checkpoint every step that crashes at micro-batch ``iteration``; the
    data file, for the run that resumes it."""
    qa = _qa(tmp_path)
    _fault(monkeypatch, f"train_step:raise@{iteration}")
    with pytest.raises(RuntimeError, match="injected fault"):
        _run(tmp_path, qa, out, "train.save_every=1")
    monkeypatch.delenv("SWEEP_FAULT")
    return qa


def test_a_crashed_run_resumed_ends_as_an_unbroken_one(tmp_path: Path, monkeypatch,
                                                       unbroken: float) -> None:
    qa = _crashed(tmp_path, monkeypatch, 8)
    folders = candidates(tmp_path / "out" / "checkpoints")
    assert [f.name for f in folders] == ["mb-0000006", "mb-0000004"]  # keep_checkpoints=2
    recorder = Recorder()
    result = _run(tmp_path, qa, "out", "train.save_every=1", "train.resume=auto",
                  listener=recorder)
    assert result.best_val_loss == pytest.approx(unbroken, abs=1e-6)
    assert recorder.trained == [8, 10, 12]  # nothing before the checkpoint again
    assert result.train.iterations == 12


def test_resume_mid_step_keeps_the_accumulated_gradients(tmp_path: Path, monkeypatch,
                                                         unbroken: float) -> None:
    """A stop (SIGTERM, Ctrl-C) saves after any micro-batch, mid-step included."""
    import signal

    qa = _qa(tmp_path)
    _fault(monkeypatch, "train_step:term@5")
    previous = signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt))
    try:
        with pytest.raises(KeyboardInterrupt):
            _run(tmp_path, qa, "out")
    finally:
        signal.signal(signal.SIGTERM, previous)
    monkeypatch.delenv("SWEEP_FAULT")
    saved = json.loads((tmp_path / "out" / "checkpoints" / "mb-0000005" / "state.json").read_text())
    assert (saved["iteration"], saved["step"], saved["in_step"]) == (5, 2, 1)
    result = _run(tmp_path, qa, "out", f"train.resume={tmp_path}/out/checkpoints")
    assert result.best_val_loss == pytest.approx(unbroken, abs=1e-6)


@pytest.mark.parametrize("epochs", [0.5, 0.625])  # 8 micro-batches an epoch: 4 (a step's
def test_a_run_stopped_at_a_prefix_goes_on_as_an_unbroken_one(  # end) and 5 (mid-step)
        tmp_path: Path, unbroken: float, epochs: float) -> None:
    """train.stop_after_epochs: the schedule stays over the whole budget, the run stops
    with a checkpoint there (scored on the whole split), and train.resume=auto without it
    ends as the unbroken run does, training nothing twice."""
    qa = _qa(tmp_path)
    first = Recorder()
    paused = _run(tmp_path, qa, "out", f"train.stop_after_epochs={epochs}", listener=first)
    at = round(epochs * 8)
    assert paused.train.paused and paused.train.iterations == at
    assert first.evals[-1].final and first.evals[-1].iteration == at
    assert [f.name for f in candidates(tmp_path / "out" / "checkpoints")][0] == f"mb-{at:07d}"
    rest = Recorder()
    result = _run(tmp_path, qa, "out", "train.resume=auto", listener=rest)
    assert not result.train.paused and result.train.iterations == 12
    assert rest.trained[0] > at
    assert result.best_val_loss == pytest.approx(unbroken, abs=1e-6)


def test_a_corrupt_checkpoint_is_refused_in_one_line(tmp_path: Path, monkeypatch, caplog,
                                                     unbroken: float) -> None:
    qa = _crashed(tmp_path, monkeypatch, 8)
    newest = tmp_path / "out" / "checkpoints" / "mb-0000006" / "optimizer.safetensors"
    newest.write_bytes(newest.read_bytes()[:100])  # a torn write
    recorder = Recorder()
    with caplog.at_level(logging.INFO):
        result = _run(tmp_path, qa, "out", "train.resume=auto", listener=recorder)
    refused = [r.getMessage() for r in caplog.records if "refusing checkpoint" in r.getMessage()]
    assert len(refused) == 1 and str(newest) in refused[0] and "SHA-256" in refused[0]
    assert recorder.trained[0] == 6  # from the older one
    assert result.best_val_loss == pytest.approx(unbroken, abs=1e-6)


def test_no_whole_checkpoint_starts_over(tmp_path: Path, monkeypatch, caplog) -> None:
    qa = _crashed(tmp_path, monkeypatch, 4)
    (tmp_path / "out" / "checkpoints" / "mb-0000002" / "state.json").write_text("{")
    recorder = Recorder()
    with caplog.at_level(logging.INFO):
        _run(tmp_path, qa, "out", "train.resume=auto", listener=recorder)
    assert recorder.trained[0] == 2 and recorder.evals[0].step == 0  # from the beginning
    assert any("training starts from the beginning" in r.getMessage() for r in caplog.records)


def test_a_checkpoint_of_another_config_is_refused(tmp_path: Path, monkeypatch) -> None:
    qa = _crashed(tmp_path, monkeypatch, 4)
    with pytest.raises(CheckpointError, match=r"optimizer.lr=0.02 \(the checkpoint's: 0.01\)"):
        _run(tmp_path, qa, "out", "train.resume=auto", "optimizer.lr=0.02")
    with pytest.raises(CheckpointError, match="train.resume=/no/such: no such checkpoint"):
        _run(tmp_path, qa, "out", "train.resume=/no/such")


def test_auto_finds_the_same_config_in_an_earlier_run_folder(tmp_path: Path, monkeypatch,
                                                             unbroken: float) -> None:
    """``outputs/runs/<day>/<time>``: a re-run gets a new folder and still resumes."""
    qa = _crashed(tmp_path, monkeypatch, 8, out="runs/day/10-00-00")
    recorder = Recorder()
    result = _run(tmp_path, qa, "runs/day/10-05-00", "train.resume=auto", listener=recorder)
    assert recorder.trained[0] == 8
    assert result.best_val_loss == pytest.approx(unbroken, abs=1e-6)


CURVE = [3.0, 2.5, 2.6, 2.4, 2.45, 2.5, 2.35, 2.3, 2.25, 2.2, 2.15, 2.1, 2.05]


@pytest.mark.parametrize("patience,steps,best", [(2, 5, 3), (1, 2, 1), (None, 12, 12)])
def test_early_stopping_stops_at_the_right_evaluation(tmp_path: Path, monkeypatch, patience,
                                                      steps: int, best: int) -> None:
    """The real loop, with the validation losses scripted (a real curve depends on the
    machine's floating point): base 3.0 at step 0, then one evaluation a step; the last
    evaluation (whole split) of a stopped run scores the last weights 2.7, worse than the best."""
    import numpy as np

    from sweep.training.scoring import Score
    from sweep.training.validation import Validation

    script = iter(CURVE[:steps + 1] + ([2.7] if steps < 12 else []))

    def scripted(self, max_batches: int) -> Score:
        loss = next(script)
        return Score(loss, 0.01, np.array([0]), np.array([loss]), np.array([1]))

    monkeypatch.setattr(Validation, "_score", scripted)
    qa = _qa(tmp_path)
    recorder = Recorder()
    extra = [] if patience is None else [f"train.early_stop_patience={patience}"]
    result = _run(tmp_path, qa, "out", "train.iters=24", "train.eval_every=1", *extra,
                  f"cache_dir={tmp_path}/cache", listener=recorder)  # its own base score
    during = [e.step for e in recorder.evals if not e.final]
    # a stopped run's stopping evaluation is one of those during training; an unbroken
    # run's last step has only the final one
    assert during == list(range(steps + 1 if steps < 12 else steps))
    assert result.train.steps == steps and result.best_step == best
    assert result.best_val_loss == min(CURVE[:steps + 1])
    assert result.train.stopped_early == (steps < 12)
