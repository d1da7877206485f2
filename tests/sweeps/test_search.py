"""The search beyond a plain space, end to end on the zero-cost runner: derived keys
(``ratio``), ``custom_search_space``."""

from __future__ import annotations

from pathlib import Path

import pytest
from optuna.trial import TrialState

import harness

pytestmark = pytest.mark.slow
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
HERE = Path(__file__).resolve().parent


def sweep(tmp: Path, *extra: str, n: int = 4, env=None):
    cmd = harness.zero_cost(harness.sweep_cmd(harness.stores(tmp), *extra, n_trials=n))
    return harness.run(cmd, env=env)


def test_a_derived_alpha_is_ratio_times_rank(tmp_path: Path) -> None:
    out = sweep(tmp_path, "hydra.sweeper.params={lora.rank: 'choice(4, 8, 16)', "
                          "lora.alpha: 'ratio(lora.rank, choice(1, 2, 4))', "
                          "optimizer.lr: 'tag(log, interval(1e-4, 1e-3))'}")
    assert out.returncode == 0, out.stderr[-3000:]
    stores = harness.Stores(tmp_path)
    trials = stores.study().get_trials(states=FINISHED)
    assert len(trials) == 4
    client, runs = stores.runs()
    by_trial = {r.data.tags.get("sweep.trial"): r for r in runs if "sweep.trial" in r.data.tags}
    for t in trials:
        alpha = t.params["lora.alpha/lora.rank"] * t.params["lora.rank"]
        assert t.user_attrs["derived"] == {"lora.alpha": alpha}
        assert f"lora.alpha={alpha}" in t.user_attrs["overrides"]
        assert float(by_trial[str(t.number)].data.params["lora.alpha"]) == alpha


def test_custom_search_space_adds_conditional_params_and_overrides(tmp_path: Path) -> None:
    out = sweep(tmp_path, "hydra.sweeper.params={lora.rank: 'choice(4, 8)'}",
                "+hydra.sweeper.custom_search_space=custom_space.dropout_for_large_ranks",
                n=4, env={"PYTHONPATH": str(HERE)})
    assert out.returncode == 0, out.stderr[-3000:]
    stores = harness.Stores(tmp_path)
    _, runs = stores.runs()
    by_trial = {r.data.tags.get("sweep.trial"): r for r in runs if "sweep.trial" in r.data.tags}
    trials = stores.study().get_trials(states=FINISHED)
    assert {t.params["lora.rank"] for t in trials} == {4, 8}
    for t in trials:
        run = by_trial[str(t.number)].data.params
        assert float(run["optimizer.weight_decay"]) == pytest.approx(0.001 * t.params["lora.rank"])
        if t.params["lora.rank"] >= 8:
            assert 0 <= t.params["lora.dropout"] <= 0.2
            assert float(run["lora.dropout"]) == t.params["lora.dropout"]
        else:
            assert "lora.dropout" not in t.params


@pytest.mark.parametrize("setting,message", [
    ("+hydra.sweeper.custom_search_space=custom_space.nowhere", "not a function that can be"),
    ("hydra.sweeper.params={lora.alpha: 'ratio(lora.rnak, choice(1, 2))'}",
     "lora.rnak is neither searched nor a key of the config"),
])
def test_bad_search_additions_are_one_line(tmp_path: Path, setting, message) -> None:
    out = sweep(tmp_path, setting, env={"PYTHONPATH": str(HERE)})
    said = out.stdout + out.stderr
    assert out.returncode == 2 and message in said and "Traceback" not in said, said[-2000:]


def _best_first(s):
    done = s.get_trials(states=(TrialState.COMPLETE,))
    return sorted(done, key=lambda t: (t.value, t.number))


def test_warm_start_runs_the_earlier_best_first_once(tmp_path: Path) -> None:
    first = sweep(tmp_path, "hydra.sweeper.study_name=first", n=5)
    assert first.returncode == 0, first.stderr[-3000:]
    stores = harness.Stores(tmp_path)
    earlier = [t.params for t in _best_first(stores.study("first"))[:2]]
    second = sweep(tmp_path, "hydra.sweeper.warm_start.study=first",
                   "hydra.sweeper.warm_start.top_k=2", n=3)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "warm start: the first 2 trial(s) are the best of study 'first'" in second.stdout
    trials = stores.study().get_trials()
    assert [t.params for t in trials[:2]] == earlier
    again = sweep(tmp_path, "hydra.sweeper.warm_start.study=first",
                  "hydra.sweeper.warm_start.top_k=2", n=4)  # the same command, resumed
    assert again.returncode == 0 and "nothing added again" in again.stdout
    trials = stores.study().get_trials()
    assert len(trials) == 4 and "warm_start" not in trials[3].user_attrs
    _, runs = stores.runs()
    parent = [r for r in runs if r.data.tags.get("sweep.kind") == "study"
              and r.data.tags.get("sweep.study") == "s"]
    assert '"mode": "enqueue"' in parent[0].data.tags["sweep.warm_start"]


def test_warm_start_copy_learns_from_earlier_trials_and_refuses_another_objective(
        tmp_path: Path) -> None:
    first = sweep(tmp_path, "hydra.sweeper.study_name=first", n=4)
    assert first.returncode == 0, first.stderr[-3000:]
    stores = harness.Stores(tmp_path)
    refused = sweep(tmp_path, "hydra.sweeper.warm_start.study=first",
                    "hydra.sweeper.warm_start.mode=copy", "train.val_batches=1", n=2)
    said = refused.stdout + refused.stderr
    assert refused.returncode == 2 and "Traceback" not in said
    assert ("hydra.sweeper.warm_start.mode=copy: study 'first' (sqlite:///"
            in said and "measured its trials with train.val_batches=2, this sweep with 1: "
            "their values would not compare" in said), said[-2000:]
    assert not stores.study().get_trials()
    copied = sweep(tmp_path, "hydra.sweeper.warm_start.study=first",
                   "hydra.sweeper.warm_start.mode=copy", n=2)
    assert copied.returncode == 0, copied.stderr[-3000:]
    trials = stores.study().get_trials()
    copies = [t for t in trials if "copied_from" in t.user_attrs]
    own = [t for t in trials if "copied_from" not in t.user_attrs]
    assert len(copies) == 4 and len(own) == 2  # n_trials counts this study's own trials
    assert {t.state for t in copies} <= set(FINISHED)
    board = (stores.sweep_dir / "report" / "leaderboard.csv").read_text().splitlines()
    assert len(board) == 1 + 2  # the copies inform the sampler and pruner, not the board


FLAT = ("hydra.sweeper.params={lora.rank: 'choice(16)', lora.alpha: 'choice(32)', "
        "train.grad_accumulation: 'choice(2)', optimizer.lr: 'interval(4.9e-4, 5.1e-4)'}")


def test_termination_stops_a_flattened_sweep_and_says_why(tmp_path: Path) -> None:
    """Every value within a hundredth of a standard error of the others: after
    min_trials, `patience` trials without a real improvement end the sweep."""
    out = sweep(tmp_path, FLAT, "hydra.sweeper.pruner=none", "hydra.sweeper.terminate.rule=noise",
                "hydra.sweeper.terminate.min_trials=4", "hydra.sweeper.terminate.patience=3",
                n=20)
    assert out.returncode == 0, out.stderr[-3000:]
    stores = harness.Stores(tmp_path)
    trials = stores.study().get_trials()
    assert len(trials) == 4  # trial 0 is the best, then 3 trials within its noise
    assert "Stopping before hydra.sweeper.n_trials=20: the best val_loss" in out.stderr + out.stdout
    assert "has not been beaten by more than 1 standard error(s) in the last 3 trials" in out.stdout
    _, runs = stores.runs()
    parent = [r for r in runs if r.data.tags.get("sweep.kind") == "study"][0]
    assert "rule=noise, patience=3" in parent.data.tags["sweep.terminated"]


def test_without_termination_a_flattened_sweep_runs_n_trials(tmp_path: Path) -> None:
    out = sweep(tmp_path, FLAT, "hydra.sweeper.pruner=none", n=6)
    assert out.returncode == 0 and len(harness.Stores(tmp_path).study().get_trials()) == 6


ONE_KNOB = ("hydra.sweeper.params={lora.rank: 'choice(16)', lora.alpha: 'choice(32)', "
            "train.grad_accumulation: 'choice(2)', optimizer.lr: 'choice(5e-4, 1e-4)'}")


def test_a_constraint_excludes_an_infeasible_trial_from_the_winner(tmp_path: Path) -> None:
    """The zero-cost runner's precision falls with the lr: lr 5e-4 has the better loss
    (2.60) but precision 0.725 < 0.75; lr 1e-4 (2.67, precision 0.9) must win."""
    out = sweep(tmp_path, ONE_KNOB, "hydra.sweeper.pruner=none",
                "+hydra.sweeper.constraints.val_citation_precision='>= 0.75'", n=2)
    assert out.returncode == 0, out.stderr[-3000:]
    stores = harness.Stores(tmp_path)
    s = stores.study()
    by_lr = {t.params["optimizer.lr"]: t for t in s.trials}
    assert by_lr[5e-4].value < by_lr[1e-4].value  # the better loss ...
    from sweep.testing.zero_cost import answer_metrics

    missed = 0.75 - answer_metrics(5e-4)["val_citation_precision"]
    assert by_lr[5e-4].constraints == {"val_citation_precision >= 0.75": pytest.approx(missed)}
    from sweep.study.winner import best

    assert best(s).number == by_lr[1e-4].number  # ... is not the winner
    assert f"best trial {by_lr[1e-4].number}:" in out.stdout
    board = (stores.sweep_dir / "report" / "leaderboard.csv").read_text().splitlines()
    assert board[0].split(",")[:3] == ["rank", "trial", "state"] and "feasible" in board[0]
    assert board[1].split(",")[1] == str(by_lr[1e-4].number)  # feasible first


def test_an_answer_metric_is_an_objective_in_its_direction(tmp_path: Path) -> None:
    out = sweep(tmp_path, ONE_KNOB, "hydra.sweeper.objectives=[val_citation_precision]", n=2)
    assert out.returncode == 0, out.stderr[-3000:]
    s = harness.Stores(tmp_path).study()
    assert s.direction.name == "MAXIMIZE"
    assert s.best_trial.params["optimizer.lr"] == 1e-4 and s.best_trial.value == 0.9
    assert all(not t.intermediate_values for t in s.trials)  # the pruner watches val_loss only


@pytest.mark.parametrize("setting,message", [
    ("+hydra.sweeper.constraints.val_citation_precision='> 0.5'",
     "hydra.sweeper.constraints.val_citation_precision: '> 0.5' is not a bound"),
    ("+hydra.sweeper.constraints.val_politeness='>= 0.5'", "unknown measure 'val_politeness'"),
    ("hydra.sweeper.objectives=[val_politeness]", "val_politeness"),
])
def test_bad_constraints_and_objectives_are_one_line(tmp_path: Path, setting, message) -> None:
    out = sweep(tmp_path, setting)
    said = out.stdout + out.stderr
    assert out.returncode != 0 and message in said and "Traceback" not in said, said[-2000:]


def test_validation_answers_on_the_tiny_model(tmp_path: Path) -> None:
    """The real path: the trial's adapter answers validation questions, the metrics are
    the second objective and on the trial's MLflow run."""
    cmd = harness.sweep_cmd(harness.stores(tmp_path), "eval.after_sweep=false",
                            "registry.after_sweep=false", "eval.val_questions=3",
                            "eval.max_tokens=8", "hydra.sweeper.objectives=[val_loss,val_rougeL]",
                            n_trials=1)
    out = harness.run(cmd)
    assert out.returncode == 0, out.stderr[-3000:]
    stores = harness.Stores(tmp_path)
    t = stores.study().trials[0]
    assert len(t.values) == 2 and 0 <= t.values[1] <= 1
    assert t.user_attrs["val_rougeL"] == t.values[1] and "val_citation_precision_se" in t.user_attrs
    _, runs = stores.runs()
    run = [r for r in runs if r.data.tags.get("sweep.trial") == "0"][0]
    assert run.data.metrics["val_rougeL"] == pytest.approx(t.values[1])
    assert run.data.metrics["val_questions"] == 3


def test_the_finished_winner_answers_again_and_says_what_it_missed(tmp_path: Path) -> None:
    """A constrained sweep of prefixes: the winner is trained on to its whole budget and
    answers the validation questions again; a bound it no longer meets is one warning."""
    cmd = harness.sweep_cmd(harness.stores(tmp_path), "eval.after_sweep=false",
                            "registry.after_sweep=false", "eval.val_questions=3",
                            "eval.max_tokens=8", "train.epochs=1", "train.stop_after_epochs=0.5",
                            "+hydra.sweeper.constraints.val_rougeL='>= 0'",
                            "+hydra.sweeper.constraints.val_f1='<= -1'", n_trials=1)
    out = harness.run(cmd)
    assert out.returncode == 0, out.stderr[-3000:]
    s = harness.Stores(tmp_path).study()
    assert s.trials[0].constraints["val_f1 <= -1"] > 0  # infeasible: no winner to finish
    assert "finished_winner" not in s.user_attrs
    assert "no trial met hydra.sweeper.constraints, so there is no winner to ship; the " \
           "nearest, trial 0, missed val_f1 <= -1 (short by" in out.stdout
    cmd = [c for c in cmd if "val_f1" not in c]
    again = harness.run([*cmd, "hydra.sweeper.study_name=t"])
    assert again.returncode == 0, again.stderr[-3000:]
    done = harness.Stores(tmp_path).study("t").user_attrs["finished_winner"]
    assert done["state"] == "done" and "val_rougeL" in done["answers"]
    assert done["missed_constraints"] == {}
    assert "val_rougeL" in done["search"] and "trained on to the whole budget" in again.stdout


def test_lora_priors_searches_its_own_space_in_a_study_of_its_own(tmp_path: Path) -> None:
    """hparams_search=lora_priors (no study_name given: the file's own default)."""
    stores = harness.stores(tmp_path)
    cmd = harness.zero_cost([*harness.SWEEP, "-m", "model=tiny", "hparams_search=lora_priors",
                             "hydra.sweeper.n_trials=4",
                             f"hydra.sweeper.storage={stores.study_url}",
                             f"mlflow.tracking_uri={stores.mlflow_uri}",
                             f"hydra.sweep.dir={stores.sweep_dir}"])
    out = harness.run(cmd)
    assert out.returncode == 0, out.stderr[-3000:]
    import optuna

    (name,) = optuna.get_all_study_names(stores.study_url)
    assert name.startswith("lora_priors_tiny_")
    for t in optuna.load_study(study_name=name, storage=stores.study_url).trials:
        assert t.params["lora.rank"] in (8, 16, 32) and t.params["lora.alpha/lora.rank"] in (1, 2)
        assert 2e-4 <= t.params["optimizer.lr"] <= 2e-3
        assert t.params["train.grad_accumulation"] in (1, 2)
        assert t.user_attrs["derived"]["lora.alpha"] == \
            t.params["lora.alpha/lora.rank"] * t.params["lora.rank"]
        assert "train.stop_after_epochs=0.17" in t.user_attrs["overrides"]
