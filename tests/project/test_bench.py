"""The benchmark harnesses run end to end (on the tiny model, or on the recorded grid) and
print every row."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import ROOT


@pytest.mark.slow
def test_bench_quick_prints_every_ratio() -> None:
    out = subprocess.run([sys.executable, "-m", "bench.run", "--quick",
                          "--skip-peft"], cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stderr[-3000:]
    for row in ["matmul peak", "speed vs mlx_lm.lora", "speed vs PyTorch + PEFT",
                "share of matmul peak", "trial overhead", "peak RSS, batch 4 x 512 tokens",
                "tpe+paired median, z=2 (default): compute to grid best +1%",
                "pruning saves", "grid best pruned", "grid: best val loss"]:
        assert row in out.stdout
    assert "machine:" in out.stdout


@pytest.mark.slow
def test_eval_speed_bench_prints_both_ways() -> None:
    out = subprocess.run([sys.executable, "-m", "bench.eval_speed", "--model",
                          "tiny", "--sequential", "2"], cwd=ROOT, capture_output=True, text=True,
                         timeout=1200)
    assert out.returncode == 0, out.stderr[-3000:]
    for row in ["one at a time (mlx_lm.generate)", "batched (batch_generate", "speed-up",
                "base + adapter answers, whole test split", "same answer batched"]:
        assert row in out.stdout


def test_search_replay_prints_every_row_from_the_recorded_grid() -> None:
    """The replays read bench/results/search_grid.jsonl (kept in the repository) and train
    nothing; each search space's row has a value, not the "not recorded" line."""
    out = subprocess.run([sys.executable, "-m", "bench.search_replay", "--seeds", "2"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = {line.split("|")[1].strip(): line for line in out.stdout.splitlines()
            if line.startswith("| ") and "measure" not in line}
    for name in ["lora (default space): compute to grid best (standard scaling) +1%",
                 "lora_priors: compute to grid best (standard scaling) +1%",
                 "lora + scaling (accumulation 1): compute to best with either scaling +1%",
                 "lora_priors / default space: compute",
                 "second study, enqueue top 3: compute to grid best +1%",
                 "termination: compute saved", "grid: best val loss (standard scaling)"]:
        assert name in rows, out.stdout
        assert "nan" not in rows[name].split("|")[2], rows[name]
