"""``sweep-export target=... output=DIR``: the adapter fused into a standalone mlx-lm
model folder and, for Llama-family models, a GGUF file read back and checked
(:mod:`sweep.shipping.export`). ``target=`` is a sweep's output folder (its best trial),
an MLflow run id or an adapter folder. Bad input is one line and exit status 2.
"""

from __future__ import annotations

import logging
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from sweep import runtime
from sweep.config import CONFIG_DIR, register
from sweep.errors import SweepError

log = logging.getLogger("sweep")

register()


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")
def app(cfg: DictConfig) -> None:
    from sweep.shipping.export import export_target, summary

    try:
        result = export_target(cfg, list(HydraConfig.get().overrides.task))
    except SweepError as error:
        log.error("%s", error)
        sys.exit(error.exit_code)
    print(summary(result), flush=True)


def main() -> None:
    from sweep.secrets import refuse_in_argv

    refuse_in_argv("sweep-export")  # before Hydra writes the command line anywhere
    runtime.setup()  # before anything imports mlx
    app()


if __name__ == "__main__":
    main()
