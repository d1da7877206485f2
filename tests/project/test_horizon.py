"""The short-horizon replay (bench/horizon.py) on made-up values: the correlations are
right, and the table says which rung and which short budget pick the full-budget best."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import horizon


def test_rank_correlations() -> None:
    assert horizon.kendall([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0
    assert horizon.kendall([1, 2, 3, 4], [40, 30, 20, 10]) == -1.0
    assert horizon.kendall([1, 2, 3, 4], [10, 20, 40, 30]) == pytest.approx(4 / 6)
    assert horizon.spearman([1, 2, 3, 4], [10, 20, 40, 30]) == pytest.approx(0.8)


def test_the_table_from_saved_values(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "horizon.jsonl"
    grid = [{"train.grad_accumulation": a, "optimizer.lr": 1e-4} for a in (1, 2, 4)]
    monkeypatch.setattr(horizon, "GRID", grid)
    monkeypatch.setattr(horizon, "RESULTS", path)
    # full budget: 48 micro-batches, rungs at 24 and 48; rung 24 ranks them wrongly
    rung = {1: 2.0, 2: 2.5, 4: 1.9}
    final = {1: 1.5, 2: 1.7, 4: 1.6}
    short = {1: 2.1, 2: 2.6, 4: 2.2}
    rows = []
    for config in grid:
        a, n = config["train.grad_accumulation"], horizon.name(config)
        base = {"config": n, "val_loss_se": 0.01, "examples": [], "example_losses": [],
                "example_tokens": [], "step": 0, "trained_tokens": 0, "last_val_loss": None}
        rows += [{**base, "budget": "full", "iteration": 24, "final": False, "val_loss": rung[a]},
                 {**base, "budget": "full", "iteration": 48, "final": True, "val_loss": final[a]},
                 {**base, "budget": "short", "iteration": 24, "final": True, "val_loss": short[a]}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    table = {r.name: r for r in horizon.table(epochs=2)}
    first = table["rung at micro-batch 24 (1.00 epochs)"]
    assert first.value == pytest.approx(1 / 3) and "picks grad_accumulation=4," in first.detail
    assert "full-budget best" not in first.detail
    old = table[f"{horizon.SHORT} micro-batches alone (old default)"]
    assert old.value == pytest.approx(1.0) and old.passed
    assert table["full budget (2 epochs) best"].value == 1.5
