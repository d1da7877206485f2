"""The facade Hydra instantiates; the work (and optuna/mlflow imports) is in ``_impl``."""


import logging
import sys
from typing import Any, List

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

from hydra_plugins.sweep_optuna.config import SweepOptunaConf  # noqa: F401  (registers it)


class SweepOptunaSweeper(Sweeper):
    def __init__(self, **settings: Any) -> None:
        from hydra_plugins.sweep_optuna._impl import SweeperImpl

        self._impl = SweeperImpl(settings)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        self._impl.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: List[str]) -> Any:
        from hydra_plugins.sweep_optuna._proposals import SweepAborted

        try:
            return self._impl.sweep(arguments)
        except SweepAborted as stop:  # bad settings or too many failures: one line
            logging.getLogger("sweep.sweeper").error("%s", stop)
            sys.exit(stop.exit_code)
