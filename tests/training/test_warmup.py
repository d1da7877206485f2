"""``make setup``'s warm-up (sweep.training.warmup) builds the kernels a first trial would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import harness


def warm_up(cache: Path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sweep.training.warmup", *overrides],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "SWEEP_CACHE": str(cache)})


def test_it_fills_an_empty_kernel_cache(tmp_path: Path) -> None:
    qa = harness.write_qa(tmp_path / "qa.jsonl")
    out = warm_up(tmp_path / "cache", "model=tiny", "data=jsonl", f"data.path={qa}",
                  "data.test_fraction=0.2")
    assert out.returncode == 0 and "kernels built" in out.stdout, out.stderr[-2000:]
    if sys.platform.startswith("linux") and os.environ.get("SWEEP_NATIVE_KERNELS") != "0":
        built = list((tmp_path / "cache" / "native-kernels").rglob("*.so"))
        assert len(built) >= 10, built  # the step's, the update's, scoring's and decoding's


def test_a_failure_does_not_stop_set_up_and_says_why(tmp_path: Path) -> None:
    out = warm_up(tmp_path / "cache", "model=tiny", "data=jsonl",
                  f"data.path={tmp_path}/missing.jsonl")
    assert out.returncode == 0
    assert "warm-up skipped" in out.stderr and "missing.jsonl" in out.stderr, out.stderr[-2000:]
