"""``sweep-eval target=...``: held-out evaluation of an adapter against its base model
(:mod:`sweep.evaluation.heldout`). ``target=`` is a sweep's output folder (its best
trial), an MLflow run id or an adapter folder; ``eval.max_examples`` limits the questions
answered. Bad input is one line and exit status 2.
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
    from sweep.evaluation.heldout import evaluate_target, summary

    try:
        result = evaluate_target(cfg, list(HydraConfig.get().overrides.task))
    except SweepError as error:
        log.error("%s", error)
        sys.exit(error.exit_code)
    print(summary(result), flush=True)
    if result.run_id:
        print(f"logged to MLflow run {result.run_id} (metrics test_*, base_test_*, delta_*; "
              "the answer table under eval/, named by the tag sweep.eval_table)")


def main() -> None:
    from sweep.secrets import refuse_in_argv

    refuse_in_argv("sweep-eval")  # before Hydra writes the command line anywhere
    runtime.setup()  # before anything imports mlx
    app()


if __name__ == "__main__":
    main()
