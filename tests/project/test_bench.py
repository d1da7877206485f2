"""The benchmark harness runs end to end (on the tiny model) and prints every row."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow


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


def test_eval_speed_bench_prints_both_ways() -> None:
    out = subprocess.run([sys.executable, "-m", "bench.eval_speed", "--model",
                          "tiny", "--sequential", "2"], cwd=ROOT, capture_output=True, text=True,
                         timeout=1200)
    assert out.returncode == 0, out.stderr[-3000:]
    for row in ["one at a time (mlx_lm.generate)", "batched (batch_generate", "speed-up",
                "base + adapter answers, whole test split", "same answer batched"]:
        assert row in out.stdout
