"""The one table every benchmark prints: a row per measure with its unit, goal and whether
the goal was met, under a line naming the machine (the figures mean nothing without it)."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional


@dataclass
class Row:
    name: str
    value: float
    unit: str
    goal: str = ""
    passed: Optional[bool] = None
    detail: str = ""


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import mlx.core as mx

    from sweep.runtime.blas import blas_choice

    return (f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.machine()}, "
            f"Python {platform.python_version()}, mlx {mx.__version__}, "
            f"BLAS {blas_choice().name}")


def print_table(rows: List[Row]) -> None:
    print()
    print(f"| {'measure':<40} | {'value':>10} | {'unit':<9} | {'goal':<9} | met | detail")
    print(f"|{'-' * 42}|{'-' * 12}|{'-' * 11}|{'-' * 11}|-----|-------")
    for r in rows:
        value = f"{r.value:.1%}" if r.unit == "" else f"{r.value:,.4g}" if r.unit == "loss" \
            else f"{r.value:,.2f}"
        met = "" if r.passed is None else ("yes" if r.passed else "NO")
        print(f"| {r.name:<40} | {value:>10} | {r.unit:<9} | {r.goal:<9} | {met:<3} | {r.detail}")


def report(make_rows: Callable[[], List[Row]]) -> None:
    """A benchmark's main: sweep's runtime set up (before mlx is imported), the machine
    line, then the table of ``make_rows()``."""
    from sweep import runtime

    runtime.setup()
    print(f"machine: {machine()}", flush=True)
    print_table(make_rows())
