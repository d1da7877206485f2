"""``sweep-status``: a study's progress, from any machine that reaches its storage
(:mod:`sweep.study.status`): trials by state, the best so far, the running
trials with their host, pid, age, last value and heartbeat, the recent failures. The study
is the one ``sweep -m`` with the same overrides works (``hydra.sweeper.storage``,
``hydra.sweeper.study_name``, ``hparams_search=...``). ``status.watch=SECONDS`` prints
again until Ctrl-C (exit 0); ``status.format=json`` for scripts. Read-only, and no MLX:
no runtime set-up, no run folder, nothing written. Bad input is one line and exit 2.
"""

from __future__ import annotations

import os
import sys
from typing import List, Optional, Sequence

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from sweep.config import CONFIG_DIR, register
from sweep.errors import SweepError

register()

# nothing written: no run folder, no .hydra/ copy, no log file (an override given wins)
QUIET = {"hydra.run.dir": ".", "hydra.output_subdir": "null", "hydra/job_logging": "none",
         "hydra/hydra_logging": "none"}


def with_quiet(argv: Sequence[str]) -> List[str]:
    """``argv`` with the QUIET overrides the user did not give, next to the user's own
    overrides (argparse takes Hydra's overrides as one run of arguments)."""
    given = {a.split("=", 1)[0].lstrip("+~") for a in argv if "=" in a}
    extra = [f"{k}={v}" for k, v in QUIET.items() if k not in given]
    at = next((i for i, a in enumerate(argv) if "=" in a and not a.startswith("-")), len(argv))
    return [*argv[:at], *extra, *argv[at:]]


def _settings(cfg: DictConfig):
    from sweep.config import ConfigError

    try:
        return OmegaConf.to_object(cfg.status)
    except Exception as error:  # OmegaConf wraps errors raised in __post_init__
        cause = error.__cause__ or error.__context__
        if isinstance(cause, ConfigError):
            raise cause from None
        raise


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")
def app(cfg: DictConfig) -> None:
    from sweep.study.status import show

    watch: Optional[float] = None
    try:
        settings = _settings(cfg)
        watch = settings.watch
        show(HydraConfig.get().sweeper, settings)
    except SweepError as error:
        print(f"sweep-status: {error}", file=sys.stderr, flush=True)
        sys.exit(error.exit_code)
    except KeyboardInterrupt:  # ends status.watch
        sys.exit(0 if watch else 130)
    except BrokenPipeError:  # `sweep-status | head`: the reader has gone
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)


def main() -> None:
    from sweep.secrets import refuse_in_argv

    refuse_in_argv("sweep-status")
    sys.argv[1:] = with_quiet(sys.argv[1:])
    app()


if __name__ == "__main__":
    main()
