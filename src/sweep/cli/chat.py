"""``sweep-chat target=...``: answers from an adapter streamed in the terminal, with the
model's chat template and the conversation so far (:mod:`sweep.shipping.chat`).
``prompt=...`` prints one answer (for scripts); piped input gets one answer per line;
``adapter=none`` chats with the base model alone, to compare. ``target=`` is a sweep's
output folder (its best trial), an MLflow run id or an adapter folder. Only answers go to
stdout. Bad input is one line and exit status 2.
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


def _log_to_stderr() -> None:
    # Hydra's default console handler writes to stdout, which carries only answers here
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and handler.stream is sys.stdout:
            handler.setStream(sys.stderr)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")
def app(cfg: DictConfig) -> None:
    _log_to_stderr()
    from sweep.shipping.chat import chat

    try:
        chat(cfg, list(HydraConfig.get().overrides.task))
    except SweepError as error:
        log.error("%s", error)
        sys.exit(error.exit_code)
    except KeyboardInterrupt:  # while loading: leave without a traceback
        print(file=sys.stderr)
        sys.exit(130)


def main() -> None:
    from sweep.secrets import refuse_in_argv

    refuse_in_argv("sweep-chat")  # before Hydra writes the command line anywhere
    runtime.setup()  # before anything imports mlx
    app()


if __name__ == "__main__":
    main()
