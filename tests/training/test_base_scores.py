"""The base model's validation score is computed by the first trial and read back by the
next ones with the same model, data and settings (tiny model, in this process): the
same values as computing it, and computed again for another split."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from conftest import compose_config, tiny_overrides
from sweep.training.events import EvalReport, Listener
from sweep.trial import run_trial


class Base(Listener):
    def __init__(self) -> None:
        self.report = None

    def on_eval_report(self, report: EvalReport) -> None:
        if report.step == 0 and self.report is None:
            self.report = report


def _base(tmp_path: Path, qa: Path, cache: str, out: str, *extra: str) -> EvalReport:
    overrides = tiny_overrides(tmp_path, qa, "mlflow.enabled=false", f"cache_dir={tmp_path}/{cache}",
                               *extra)
    listener = Base()
    run_trial(compose_config(overrides), tmp_path / out, listeners=[listener])
    return listener.report


def _cached(tmp_path: Path, cache: str) -> list:
    return sorted((tmp_path / cache / "base-scores").glob("*.json"))


def test_the_base_score_is_computed_once_then_read_back(tmp_path: Path, qa_file: Path,
                                                        caplog) -> None:
    first = _base(tmp_path, qa_file, "cache", "a", "lora.rank=4")
    assert len(_cached(tmp_path, "cache")) == 1
    with caplog.at_level(logging.INFO):  # another trial of the study: other LoRA settings
        second = _base(tmp_path, qa_file, "cache", "b", "lora.rank=8", "lora.alpha=64",
                       "optimizer.lr=0.01", "train.grad_accumulation=1")
    assert any("base model's validation scores from" in r.getMessage() for r in caplog.records)
    assert (second.val_loss, second.example_losses) == (first.val_loss, first.example_losses)
    # computed afresh with those settings: the same values (B = 0: the base model exactly)
    fresh = _base(tmp_path, qa_file, "other-cache", "c", "lora.rank=8", "lora.alpha=64")
    assert fresh.val_loss == pytest.approx(first.val_loss, abs=1e-6)
    assert fresh.example_losses == pytest.approx(first.example_losses, abs=1e-6)


def test_another_split_is_scored_again(tmp_path: Path, qa_file: Path) -> None:
    first = _base(tmp_path, qa_file, "cache", "a")
    other = _base(tmp_path, qa_file, "cache", "b", "data.valid_fraction=0.3")
    assert len(_cached(tmp_path, "cache")) == 2
    assert other.examples != first.examples
    # and a cache file that cannot be read is scored again and rewritten, not trusted
    for path in _cached(tmp_path, "cache"):
        path.write_text("{not json")
    again = _base(tmp_path, qa_file, "cache", "c")
    assert again.val_loss == pytest.approx(first.val_loss, abs=1e-6)
    rewritten = []
    for path in _cached(tmp_path, "cache"):
        try:
            rewritten.append(json.loads(path.read_text())["loss"])
        except ValueError:
            pass
    assert rewritten == [pytest.approx(again.val_loss, abs=1e-12)]
