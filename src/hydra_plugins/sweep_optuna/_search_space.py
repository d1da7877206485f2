"""Hydra override syntax -> Optuna distributions (the stock plugin's grammar).

``choice(a, b)`` and ``a,b`` are categorical; ``range(start, stop[, step])`` is an integer
(or stepped float) distribution with ``stop`` exclusive, as everywhere else in Hydra;
``interval(a, b)`` is a float range, ``int(interval(a, b))`` an integer one, and
``tag(log, ...)`` samples either on a log scale. A plain value is fixed for every trial.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from optuna.distributions import (BaseDistribution, CategoricalDistribution, FloatDistribution,
                                  IntDistribution)

__all__ = ["SearchSpaceError", "SearchSpace", "parse_search_space", "to_distribution",
           "grid_values"]


class SearchSpaceError(ValueError):
    """An entry of ``hydra.sweeper.params`` that cannot be searched; names the key."""


@dataclass
class SearchSpace:
    distributions: Dict[str, BaseDistribution]
    fixed: List[str]  # overrides applied to every trial ("key=value")


def _range_values(key: str, sweep: RangeSweep) -> List[Any]:
    start, stop, step = sweep.start, sweep.stop, sweep.step
    if step == 0 or (stop - start) / step <= 0:
        raise SearchSpaceError(f"{key}: range({start}, {stop}, {step}) is empty")
    count = math.ceil((stop - start) / step - 1e-9)
    return [start + i * step for i in range(count)]


def to_distribution(key: str, value: Any) -> BaseDistribution:
    """The Optuna distribution for one parsed sweep override value."""
    log = "log" in getattr(value, "tags", set())
    unknown = set(getattr(value, "tags", set())) - {"log"}
    if unknown:
        raise SearchSpaceError(f"{key}: unknown tag(s) {sorted(unknown)}; only 'log' is supported")
    if getattr(value, "shuffle", False):
        raise SearchSpaceError(f"{key}: shuffle() has no meaning for a sampler; remove it")
    if isinstance(value, ChoiceSweep):
        if log:
            raise SearchSpaceError(f"{key}: tag(log, ...) needs an interval or a range, not a choice")
        choices = list(value.list)
        if not choices:
            raise SearchSpaceError(f"{key}: choice() is empty")
        if len(set(map(repr, choices))) != len(choices):
            raise SearchSpaceError(f"{key}: choice{tuple(choices)} repeats a value")
        if not all(c is None or isinstance(c, (bool, int, float, str)) for c in choices):
            raise SearchSpaceError(f"{key}: choices must be numbers, strings or booleans")
        return CategoricalDistribution(choices)
    if isinstance(value, RangeSweep):
        values = _range_values(key, value)
        if all(isinstance(v, int) for v in (value.start, value.stop, value.step)):
            if log and value.step != 1:
                raise SearchSpaceError(f"{key}: tag(log, range(...)) needs step 1")
            return IntDistribution(values[0], values[-1], log=log, step=value.step)
        if log:
            raise SearchSpaceError(f"{key}: tag(log, ...) on a float range; use interval()")
        return FloatDistribution(values[0], values[-1], step=value.step) if len(values) > 1 \
            else CategoricalDistribution(values)
    if isinstance(value, IntervalSweep):
        low, high = value.start, value.end
        if low >= high:
            raise SearchSpaceError(f"{key}: interval({low}, {high}) is empty")
        if log and low <= 0:
            raise SearchSpaceError(f"{key}: tag(log, interval({low}, {high})) needs a start > 0")
        if isinstance(low, int) and isinstance(high, int):
            return IntDistribution(low, high, log=log)
        return FloatDistribution(float(low), float(high), log=log)
    raise SearchSpaceError(f"{key}: {value!r} is not a sweep")


def parse_search_space(params: Mapping[str, str], extra: List[str] = ()) -> SearchSpace:
    """Parse ``hydra.sweeper.params`` and the command line's sweep overrides (these win)."""
    parser = OverridesParser.create()
    lines = [f"{k}={v}" for k, v in params.items()] + list(extra)
    distributions: Dict[str, BaseDistribution] = {}
    fixed: Dict[str, str] = {}
    for line in lines:
        try:
            override: Override = parser.parse_overrides([line])[0]
        except Exception as error:  # Hydra's grammar error says where it failed
            raise SearchSpaceError(f"cannot parse '{line}': {error}") from None
        key = override.get_key_element()
        distributions.pop(key, None)
        fixed.pop(key, None)
        if override.is_sweep_override():
            distributions[key] = to_distribution(key, override.value())
        else:
            fixed[key] = f"{key}={override.get_value_element_as_str()}"
    return SearchSpace(distributions, list(fixed.values()))


def grid_values(space: SearchSpace) -> Dict[str, List[Any]]:
    """Every value of every parameter, for the grid sampler (intervals have no grid)."""
    grid: Dict[str, List[Any]] = {}
    for key, dist in space.distributions.items():
        if isinstance(dist, CategoricalDistribution):
            grid[key] = list(dist.choices)
        elif isinstance(dist, IntDistribution) and not dist.log:
            grid[key] = list(range(dist.low, dist.high + 1, dist.step))
        elif isinstance(dist, FloatDistribution) and dist.step is not None:
            n = int(round((dist.high - dist.low) / dist.step)) + 1
            grid[key] = [dist.low + i * dist.step for i in range(n)]
        else:
            raise SearchSpaceError(f"{key}: the grid sampler needs choice() or range(), "
                                   "not a continuous interval")
    return grid
