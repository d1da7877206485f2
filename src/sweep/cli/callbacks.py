"""Hydra callbacks of every ``sweep`` command (``hydra.callbacks`` in ``conf/config.yaml``).

:class:`OutputFolder` makes the run's (or the sweep's) output folder before Hydra does:
a folder that cannot be made (a file in the way, no permission) is one line naming
``hydra.run.dir`` or ``hydra.sweep.dir`` and exit status 2, where Hydra's own ``mkdir``
would end in a traceback and status 1.
"""

from __future__ import annotations

import sys
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from sweep.errors import SweepError
from sweep.paths import ensure_folder

__all__ = ["OutputFolder"]


class OutputFolder(Callback):
    def _ensure(self, config: DictConfig, key: str) -> None:
        value = str(config.hydra[key.split(".")[1]].dir)
        try:
            ensure_folder(value, key, value)
        except SweepError as error:
            print(f"sweep: {error}", file=sys.stderr, flush=True)
            sys.exit(2)

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._ensure(config, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._ensure(config, "hydra.sweep.dir")
