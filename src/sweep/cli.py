"""``sweep`` / ``python -m sweep``: a thin ``@hydra.main`` over :func:`sweep.trial.run_trial`.

Returns the trial's best validation loss so that a Hydra sweeper can minimise it. Bad
input (config, data, model) is reported as one line naming the key, file or line, and
the process exits with status 2.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from sweep.config import register
from sweep.errors import SweepError

log = logging.getLogger("sweep")
CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "conf")

register()


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def app(cfg: DictConfig) -> float:
    from sweep.trial import run_trial

    hydra_cfg = HydraConfig.get()
    try:
        result = run_trial(cfg, Path(hydra_cfg.runtime.output_dir),
                           overrides=list(hydra_cfg.overrides.task))
    except SweepError as error:
        log.error("%s", error)
        sys.exit(2)
    return result.best_val_loss


def main() -> None:
    app()


if __name__ == "__main__":
    main()
