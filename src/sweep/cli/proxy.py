"""``sweep-proxy``: Optuna's gRPC storage proxy in front of ``hydra.sweeper.storage``
(:mod:`sweep.study.proxy`), composed like ``sweep`` so the same storage override applies:

    sweep-proxy hydra.sweeper.storage=postgresql+psycopg://sweep@db/optuna proxy.port=13000

Workers then run ``sweep -m hydra.sweeper.storage=grpc://HOST:13000``. No run folder, no
MLX. Bad input is one line and exit 2; SIGTERM and Ctrl-C stop it with exit 0.
"""

from __future__ import annotations

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from sweep.cli.status import with_quiet
from sweep.config import CONFIG_DIR, register
from sweep.errors import SweepError

register()


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")
def app(cfg: DictConfig) -> None:
    import logging

    from sweep.config import ConfigError
    from sweep.study.proxy import serve

    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(message)s")
    try:
        try:
            settings = OmegaConf.to_object(cfg.proxy)
        except Exception as error:  # OmegaConf wraps errors raised in __post_init__
            cause = error.__cause__ or error.__context__
            if isinstance(cause, ConfigError):
                raise cause from None
            raise
        serve(str(HydraConfig.get().sweeper.storage), settings.host, settings.port,
              settings.threads)
    except SweepError as error:
        print(f"sweep-proxy: {error}", file=sys.stderr, flush=True)
        sys.exit(error.exit_code)


def main() -> None:
    from sweep.secrets import refuse_in_argv

    refuse_in_argv("sweep-proxy")
    sys.argv[1:] = with_quiet(sys.argv[1:])
    app()


if __name__ == "__main__":
    main()
