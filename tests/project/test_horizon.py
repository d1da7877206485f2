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
        base = {"config": n, "val_loss_se": 0.01, "examples": [0, 1], "example_tokens": [10, 10],
                "step": 0, "trained_tokens": 0, "last_val_loss": None}

        def at(v):  # two examples either side of the loss: a paired difference with se 0
            return {"val_loss": v, "example_losses": [v - 0.1, v + 0.1]}

        rows += [{**base, "budget": "full", "iteration": 24, "final": False, **at(rung[a])},
                 {**base, "budget": "full", "iteration": 48, "final": True, **at(final[a])},
                 {**base, "budget": "short", "iteration": 24, "final": True, **at(short[a])}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    table = {r.name: r for r in horizon.table(epochs=2)}
    first = table["rung at micro-batch 24 (1.00 epochs)"]
    assert first.value == pytest.approx(1 / 3) and "picks grad_accumulation=4," in first.detail
    assert "full-budget best" not in first.detail
    old = table[f"{horizon.SHORT} micro-batches alone (old default)"]
    assert old.value == pytest.approx(1.0) and old.passed
    assert table["full budget (2 epochs) best"].value == 1.5

    # a sweep of all three that searches micro-batch 24 then finishes its pick: always
    # accumulation 4 (1.6 at the full budget, 0.1 over the best) for 2/3 of the compute
    prefix = table["search to micro-batch 24, pruner none: picks the best"]
    assert prefix.value == 0.0 and "mean regret 0.1000; compute 67%" in prefix.detail
    whole = table["search to the whole budget, pruner none: picks the best"]
    assert whole.value == 1.0 and "mean regret 0.0000; compute 100%" in whole.detail
    # pruned at micro-batch 24 by whichever completed first: accumulation 1, the best,
    # survives only when it comes before accumulation 4
    pruned = table["search to the whole budget, pruner paired_median: picks the best"]
    assert 0.3 < pruned.value < 0.7, pruned
