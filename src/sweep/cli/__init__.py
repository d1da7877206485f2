"""The console scripts, one thin Hydra app per module, each composed from the same
``conf/`` (so overrides and ``--cfg job`` work): ``sweep`` (:mod:`sweep.cli.sweep`),
``sweep-eval`` (:mod:`sweep.cli.eval`), ``sweep-export`` (:mod:`sweep.cli.export`),
``sweep-chat`` (:mod:`sweep.cli.chat`) and ``sweep-status`` (:mod:`sweep.cli.status`).
Each ``main`` refuses a password in a command-line URL (:mod:`sweep.secrets`), then (but
sweep-status, which needs no MLX) calls :func:`sweep.runtime.setup` before anything
imports mlx; importing these modules sets nothing up."""

from __future__ import annotations

__all__ = ["main"]


def main() -> None:
    """``sweep`` and ``python -m sweep`` (also each extra worker process of a sweep, which
    re-runs the same command): the runtime set-up, then the Hydra app."""
    from sweep import runtime

    runtime.setup()
    from sweep.cli.sweep import main as sweep_main

    sweep_main()
