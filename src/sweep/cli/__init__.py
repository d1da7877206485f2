"""The console scripts, one thin Hydra app per module, each composed from the same
``conf/`` (so overrides and ``--cfg job`` work): ``sweep`` (:mod:`sweep.cli.sweep`),
``sweep-eval`` (:mod:`sweep.cli.eval`), ``sweep-export`` (:mod:`sweep.cli.export`),
``sweep-chat`` (:mod:`sweep.cli.chat`)."""

from sweep.cli.sweep import main

__all__ = ["main"]
