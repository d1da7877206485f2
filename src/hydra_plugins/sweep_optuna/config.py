"""The sweeper's config, stored in Hydra's ConfigStore as ``hydra/sweeper=sweep_optuna``.

Kept free of heavy imports: Hydra imports this module when it scans for plugins.
"""


from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore

from sweep.study.objectives import DIRECTIONS


class Sampler(Enum):
    tpe = "tpe"
    random = "random"
    grid = "grid"
    cmaes = "cmaes"
    gp = "gp"
    qmc = "qmc"
    nsga2 = "nsga2"


class Pruner(Enum):
    median = "median"
    paired_median = "paired_median"  # median, pruning only beyond z paired standard errors
    successive_halving = "successive_halving"
    hyperband = "hyperband"
    none = "none"


# what hydra.sweeper.objectives may name (sweep.study.objectives: names and directions)
Objective = Enum("Objective", {name: name for name in DIRECTIONS})


class WarmStartMode(Enum):
    enqueue = "enqueue"  # the earlier best configurations are the first trials
    copy = "copy"  # the earlier finished trials join the study, values and all


@dataclass
class WarmStartConf:
    """Start from an earlier study or a best_config.yaml (docs/search.md#warm-start)."""
    study: Optional[str] = None  # an earlier study's name
    storage: Optional[str] = None  # where it lives; null = hydra.sweeper.storage
    config: Optional[str] = None  # or a sweep report's best_config.yaml
    top_k: int = 3  # mode=enqueue: how many of its best configurations
    mode: WarmStartMode = WarmStartMode.enqueue


class TerminateRule(Enum):
    none = "none"  # run n_trials
    noise = "noise"  # best not beaten by more than z standard errors in `patience` trials
    regret_bound = "regret_bound"  # Optuna's Terminator (needs PyTorch)
    emmr = "emmr"  # Optuna's Terminator, EMMR evaluator (needs PyTorch)


@dataclass
class TerminateConf:
    """End the sweep early when more trials are not expected to beat the best by more
    than its noise (docs/search.md#knowing-when-to-stop); n_trials stays the limit."""
    rule: TerminateRule = TerminateRule.none
    min_trials: int = 8  # this study's finished trials before the rule may stop it
    patience: int = 8  # rule=noise: finished trials without a real improvement
    z: float = 1.0  # a real improvement: more than z standard errors of the best value


@dataclass
class SweepOptunaConf:
    _target_: str = "hydra_plugins.sweep_optuna.optuna_sweeper.SweepOptunaSweeper"
    n_trials: int = 8  # finished (complete or pruned) trials in the whole study
    storage: str = "sqlite:///mlruns/optuna.db"  # shared by every worker; PostgreSQL across machines
    study_name: str = "sweep"
    sampler: Sampler = Sampler.tpe
    sampler_kwargs: Dict[str, Any] = field(default_factory=dict)
    seed: Optional[int] = None  # sampler seed; null = the task's `seed`
    pruner: Pruner = Pruner.paired_median  # chosen by replaying a real grid (bench/)
    pruner_kwargs: Dict[str, Any] = field(default_factory=dict)
    objectives: List[Objective] = field(default_factory=lambda: [Objective.val_loss])
    # measure -> bound ("val_citation_precision: '>= 0.5'"): the winner must meet them all
    constraints: Dict[str, str] = field(default_factory=dict)
    params: Dict[str, str] = field(default_factory=dict)  # the search space
    # a function (cfg, trial) -> {key: value} | None, called after params are suggested
    custom_search_space: Optional[str] = None
    warm_start: WarmStartConf = field(default_factory=WarmStartConf)
    terminate: TerminateConf = field(default_factory=TerminateConf)
    max_failure_rate: float = 0.5  # stop when more than this share of finished trials FAIL
    min_trials_for_failure_rate: int = 4
    n_workers: int = 1  # processes on this machine sharing the study
    heartbeat_interval: int = 30  # seconds; a RUNNING trial silent for grace_period is FAIL
    grace_period: int = 120
    # a trial stopped after a checkpoint (killed, preempted) is resumed by the next free
    # worker, at most this many times; 0 = never
    max_retry: int = 2


ConfigStore.instance().store(group="hydra/sweeper", name="sweep_optuna", node=SweepOptunaConf,
                             provider="sweep")
