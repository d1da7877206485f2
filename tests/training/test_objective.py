"""A trial's objective above the noise: per-example losses, the whole validation split at
the end with its standard error, the paired pruner, and trials that mean nothing
(truncated-away answers, a collapsed model) ending FAIL with their reason."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import mlx.core as mx
import numpy as np
import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

import harness
from sweep.config.schema import LoraConfig, OptimizerConfig
from sweep.data.batches import tokenize, truncation
from sweep.models.loader import load_base
from sweep.study.pruning import PairedMedianPruner, examples_attr
from sweep.stats import example_record, paired_loss_difference
from sweep.stats import token_weighted
from sweep.training.lora import apply_lora, save_adapter
from sweep.training.loop import train
from sweep.training.optim import build_optimizer
from sweep.training.scoring import score
from test_training import TINY, Recorder, example, settings


def test_token_weighted_mean_and_standard_error() -> None:
    # losses 1, 2, 4 over 1, 1, 2 tokens: L = (1 + 2 + 8) / 4 = 2.75;
    # n_i (l_i - L) = -1.75, -0.75, 2.5; squares 3.0625 + 0.5625 + 6.25 = 9.875;
    # se = sqrt(9.875 / (3 * 2)) / mean(n) = sqrt(9.875 / 6) / (4/3)
    mean, se = token_weighted([1.0, 2.0, 4.0], [1, 1, 2])
    assert mean == pytest.approx(2.75)
    assert se == pytest.approx(math.sqrt(9.875 / 6) / (4 / 3))
    assert math.isnan(token_weighted([1.0], [3])[1])


def test_paired_loss_difference_cancels_the_examples_difficulty() -> None:
    a = example_record([0, 1, 2, 3], [1.1, 3.1, 5.2, 2.0], [2, 2, 2, 2])
    b = example_record([0, 1, 2, 3], [1.0, 3.0, 5.0, 2.0], [2, 2, 2, 2])
    difference, se = paired_loss_difference(a, b)
    assert difference == pytest.approx(0.1)  # (0.1 + 0.1 + 0.2 + 0) / 4
    # equal token counts: the delta-method se is the plain one, sd(d) / sqrt(m)
    assert se == pytest.approx(np.std([0.1, 0.1, 0.2, 0.0], ddof=1) / 2)
    other_split = example_record([0, 1, 2, 3], [1.0, 3.0, 5.0, 2.0], [2, 3, 2, 2])
    assert paired_loss_difference(a, other_split) is None  # not the same examples
    unpaired = token_weighted(a["l"], a["n"])[1]
    assert se < unpaired / 10


def pruned(z: float, worse_by: float, noise: float = 0.5) -> bool:
    """A study with one completed trial at step 4; a second trial worse by ``worse_by``
    on average, each example off by +-``noise`` (so the paired difference is noisy)."""
    rng = np.random.default_rng(0)
    base = rng.uniform(1, 5, 40)
    study = optuna.create_study(pruner=PairedMedianPruner(z=z))
    first = study.ask()
    first.set_user_attr(examples_attr(4), example_record(range(40), base, [10] * 40))
    first.report(float(base.mean()), 4)
    study.tell(first, float(base.mean()))
    wobble = np.where(np.arange(40) % 2 == 0, noise, -noise)
    mine = base + worse_by + wobble
    trial = study.ask()
    trial.set_user_attr(examples_attr(4), example_record(range(40), mine, [10] * 40))
    trial.report(float(mine.mean()), 4)
    return trial.should_prune()


def test_paired_pruner_does_not_prune_within_the_noise() -> None:
    # se of the paired difference: 0.5 * sqrt(40/39) / sqrt(40) ~ 0.080
    assert not pruned(z=2.0, worse_by=0.1)  # 1.25 se: could be noise
    assert pruned(z=2.0, worse_by=0.3)  # 3.7 se
    assert pruned(z=0.0, worse_by=0.01)  # z=0: Optuna's median rule


@pytest.fixture
def tiny():
    return load_base(TINY, seed=0)


def test_final_value_covers_the_whole_split(tiny, tmp_path: Path) -> None:
    config = apply_lora(tiny.model, LoraConfig(rank=4, dropout=0.0), seed=0)
    train_set = tokenize([example(i) for i in range(24)], tiny.tokenizer, True)
    val_set = tokenize([example(i + 100) for i in range(10)], tiny.tokenizer, True)
    recorder = Recorder()
    result = train(tiny.model, build_optimizer(OptimizerConfig(lr=1e-2), lambda s: mx.array(1e-2)),
                   train_set, val_set, settings(iters=8, val_batches=1), listener=recorder,
                   save_adapter=lambda name: save_adapter(tiny.model, config, tmp_path / name))
    during, last = recorder.evals[:-1], recorder.evals[-1]
    assert all(len(e.examples) == 4 and not e.whole_split for e in during)  # one batch
    assert during[0].examples == during[-1].examples  # the same subset every time
    assert last.final and last.whole_split and sorted(last.examples) == list(range(10))
    assert math.isfinite(last.val_loss_se) and last.val_loss_se > 0
    assert result.best_val_loss_se > 0 and math.isfinite(result.base_val_loss)
    # the objective is the whole-split loss of the adapter kept as best
    tiny.model.load_weights(str(tmp_path / "best" / "adapters.safetensors"), strict=False)
    whole = score(tiny.model, val_set, 4, 128)
    assert whole.n_examples == 10  # the last, partial batch counts too
    assert whole.loss == pytest.approx(result.best_val_loss, abs=1e-5)
    assert whole.loss == pytest.approx(float((whole.losses * whole.counts).sum()
                                             / whole.counts.sum()))


def test_truncation_is_counted(tiny) -> None:
    data = tokenize([example(i) for i in range(4)], tiny.tokenizer, True)
    full = truncation(data, 10_000)
    assert full.cut_examples == 0 and full.answer_tokens_lost == 0 and full.answer_tokens > 0
    offsets = [data[i][1] for i in range(4)]
    cut = truncation(data, min(offsets))  # every prompt reaches the limit
    assert cut.cut_examples == 4 and cut.empty_examples == 4
    assert cut.answer_tokens_lost == full.answer_tokens and cut.answer_tokens_kept == 0


def sweep_once(tmp: Path, qa: Path, *extra: str) -> subprocess.CompletedProcess:
    return harness.run(harness.sweep_cmd(
        harness.stores(tmp), "data=jsonl", f"data.path={qa}", "train.grad_accumulation=1",
        "train.val_batches=4", "hydra.sweeper.min_trials_for_failure_rate=1",
        "hydra.sweeper.max_failure_rate=0.0", "lora.rank=choice(4)", *extra, n_trials=1),
        timeout=600)


def failed_reasons(tmp: Path):
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp}/o.db")
    trials = study.get_trials()
    client = MlflowClient(f"sqlite:///{tmp}/m.db")
    experiment = client.get_experiment_by_name("sweep")
    runs = [r for r in client.search_runs([experiment.experiment_id])
            if r.data.tags.get("sweep.trial") is not None]
    return trials, runs


@pytest.mark.slow
@pytest.mark.parametrize("extra,reason", [
    (("optimizer.lr=10.0",), "collapsed"),
    (("train.max_seq_length=12",), "no answer token left"),
])
def test_meaningless_trial_ends_fail_with_its_reason(tmp_path: Path, qa_file: Path, extra,
                                                     reason) -> None:
    out = sweep_once(tmp_path, qa_file, *extra)
    # the failure-rate stop (max 0%) ends the sweep with a failed trial's status, not bad input's
    assert out.returncode == 3, (out.stdout + out.stderr)[-2000:]
    trials, runs = failed_reasons(tmp_path)
    assert [t.state for t in trials] == [TrialState.FAIL]
    assert trials[0].user_attrs["exit_code"] == 3
    assert reason in trials[0].user_attrs["fail_reason"]
    assert len(runs) == 1 and runs[0].info.status == "FAILED"
    assert reason in runs[0].data.tags["sweep.fail_reason"]
    assert "best val_loss" not in out.stderr + out.stdout


def test_long_examples_are_reported_or_dropped(tmp_path: Path, qa_file: Path) -> None:
    from conftest import compose_config, tiny_overrides
    from sweep.trial import run_trial

    with qa_file.open("a") as f:  # two very long questions among 40 short ones
        for i in range(2):
            f.write(json.dumps({"question": "Explain this at length. " * 60,
                                "answer": "A short answer."}) + "\n")
    for drop in ("false", "true"):
        overrides = tiny_overrides(tmp_path, qa_file, "train.max_seq_length=128", "seed=1",
                                   "data.valid_fraction=0.3",
                                   f"train.drop_long_examples={drop}")
        result = run_trial(compose_config(overrides), tmp_path / drop, overrides=overrides)
        params = MlflowClient(f"sqlite:///{tmp_path}/mlflow/m.db").get_run(
            result.run_id).data.params
        cut = int(params["data.train_cut_examples"]) + int(params["data.valid_cut_examples"])
        if drop == "false":
            assert cut == 2
            lost = int(params["data.train_answer_tokens_lost"]) + \
                int(params["data.valid_answer_tokens_lost"])
            assert lost > 0
        else:
            assert cut == 0
            assert int(params.get("data.train_dropped_examples", 0)) + \
                int(params.get("data.valid_dropped_examples", 0)) == 2
