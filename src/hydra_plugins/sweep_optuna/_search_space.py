"""Hydra override syntax -> Optuna distributions (the stock plugin's grammar).

``choice(a, b)`` and ``a,b`` are categorical; ``range(start, stop[, step])`` is an integer
(or stepped float) distribution with ``stop`` exclusive, as everywhere else in Hydra;
``interval(a, b)`` is a float range, ``int(interval(a, b))`` an integer one, and
``tag(log, ...)`` samples either on a log scale. A plain value is fixed for every trial.

``ratio(base.key, <sweep>)`` (this project's; Hydra's grammar has no such function) derives
a key from another one: ``lora.alpha: ratio(lora.rank, choice(1, 2, 4))`` searches the
factor as the parameter ``lora.alpha/lora.rank`` and gives each trial ``lora.alpha`` =
factor x its ``lora.rank`` (searched or fixed), so alpha moves with the rank instead of
being searched apart from it (LoRA's ridge: docs/search.md).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import (ChoiceSweep, IntervalSweep, Override,
                                              QuotedString, RangeSweep)
from optuna.distributions import (BaseDistribution, CategoricalDistribution, FloatDistribution,
                                  IntDistribution)

__all__ = ["SearchSpaceError", "SearchSpace", "parse_search_space", "to_distribution",
           "grid_values",
           "ratio_param", "resolve_bases", "hydra_value"]


class SearchSpaceError(ValueError):
    """An entry of ``hydra.sweeper.params`` that cannot be searched; names the key."""


@dataclass
class SearchSpace:
    distributions: Dict[str, BaseDistribution]
    fixed: List[str]  # overrides applied to every trial ("key=value")
    # searched factors: parameter name ("lora.alpha/lora.rank") -> (key, base key)
    derived: Dict[str, Tuple[str, str]] = field(default_factory=dict)
    # values of base keys that are not searched (from `fixed` or the composed config)
    bases: Dict[str, Any] = field(default_factory=dict)
    # hydra.sweeper.custom_search_space: (cfg, trial) -> extra overrides or None
    custom: Optional[Callable[[Any, Any], Optional[Mapping[str, Any]]]] = None

    def overrides(self, params: Mapping[str, Any], extra: Mapping[str, Any] = ()) -> List[str]:
        """A trial's overrides: the fixed ones, its params (a derived key as factor x its
        base) and ``extra`` (what ``custom`` returned)."""
        derived = self.derived_values(params)
        out = list(self.fixed)
        for name, value in [*params.items(), *dict(extra).items()]:
            if name in self.derived:  # the factor's place: the key it derives
                name, value = self.derived[name][0], derived[self.derived[name][0]]
            out.append(f"{name}={hydra_value(value)}")
        return out

    def derived_keys(self) -> List[str]:
        return [key for key, _ in self.derived.values()]

    def derived_values(self, params: Mapping[str, Any]) -> Dict[str, Any]:
        """``{key: factor x base}`` of every derived key, for one trial's params."""
        out = {}
        for name, (key, base) in self.derived.items():
            if name not in params:
                continue
            base_value = params[base] if base in params else self.bases.get(base)
            if not isinstance(base_value, (int, float)) or isinstance(base_value, bool):
                raise SearchSpaceError(f"{key}: ratio({base}, ...) needs {base} to be a number "
                                       f"(searched or set), not {base_value!r}")
            value = params[name] * base_value
            out[key] = int(value) if isinstance(value, float) and value.is_integer() and \
                isinstance(base_value, int) and isinstance(params[name], int) else value
        return out


def hydra_value(value: Any) -> str:
    """A sampled value written so that Hydra's override grammar reads it back unchanged."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, int):
        return str(value)
    text = str(value)
    return text if text.replace("_", "").replace("-", "").replace(".", "").isalnum() \
        else "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


RATIO = re.compile(r"^\s*ratio\(\s*([A-Za-z_][\w.]*)\s*,(.*)\)\s*$", re.S)


def ratio_param(key: str, base: str) -> str:
    """The Optuna parameter name of ``key: ratio(base, ...)``: the factor."""
    return f"{key}/{base}"


def _finite(key: str, what: str, *numbers: Any) -> None:
    if not all(isinstance(n, int) or math.isfinite(n) for n in numbers):
        raise SearchSpaceError(f"{key}: {what}{tuple(numbers)} needs finite numbers")


def _range_values(key: str, sweep: RangeSweep) -> List[Any]:
    start, stop, step = sweep.start, sweep.stop, sweep.step
    _finite(key, "range", start, stop, step)
    if step == 0 or (stop - start) / step <= 0:
        raise SearchSpaceError(f"{key}: range({start}, {stop}, {step}) is empty")
    if all(isinstance(v, int) for v in (start, stop, step)):
        return list(range(start, stop, step))
    # in decimal, as written: 0.55 - 10 * 0.05 in floats is 0.050000000000000044, and
    # Optuna then drops the top value to fit the step
    start, stop, step = (Decimal(v if isinstance(v, int) else repr(v)) for v in (start, stop, step))
    return [float(start + i * step) for i in range(math.ceil((stop - start) / step))]


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
        choices = [c.text if isinstance(c, QuotedString) else c for c in value.list]
        if not choices:
            raise SearchSpaceError(f"{key}: choice() is empty")
        for i, c in enumerate(choices):  # Optuna tells 1, 1.0 and true apart by == only
            same = [d for d in choices[:i] if repr(d) == repr(c) or d == c]
            if same:
                raise SearchSpaceError(f"{key}: choice{tuple(choices)} repeats a value "
                                       f"({same[0]!r} and {c!r} are one value to Optuna)")
        if not all(c is None or isinstance(c, (bool, int, float, str)) for c in choices):
            raise SearchSpaceError(f"{key}: choices must be numbers, strings or booleans")
        return CategoricalDistribution(choices)
    if isinstance(value, RangeSweep):
        values = _range_values(key, value)
        low, high, step = min(values), max(values), abs(value.step)  # a step may count down
        if all(isinstance(v, int) for v in (value.start, value.stop, value.step)):
            if log and value.step != 1:
                raise SearchSpaceError(f"{key}: tag(log, range(...)) needs step 1")
            if log and low < 1:
                raise SearchSpaceError(f"{key}: tag(log, range({value.start}, {value.stop})) "
                                       "needs a start >= 1")
            return IntDistribution(low, high, log=log, step=step)
        if log:
            raise SearchSpaceError(f"{key}: tag(log, ...) on a float range; use interval()")
        return FloatDistribution(low, high, step=step) if len(values) > 1 \
            else CategoricalDistribution(values)
    if isinstance(value, IntervalSweep):
        low, high = value.start, value.end
        _finite(key, "interval", low, high)
        if low >= high:
            raise SearchSpaceError(f"{key}: interval({low}, {high}) is empty")
        if log and low <= 0:
            raise SearchSpaceError(f"{key}: tag(log, interval({low}, {high})) needs a start > 0")
        if isinstance(low, int) and isinstance(high, int):
            return IntDistribution(low, high, log=log)
        return FloatDistribution(float(low), float(high), log=log)
    raise SearchSpaceError(f"{key}: {value!r} is not a sweep")


def _reason(error: Exception) -> str:
    """Hydra's parse error in one line (it adds the override and a link around it)."""
    lines = [x.strip() for x in str(error).splitlines() if x.strip()]
    kept = [x for x in lines if not x.startswith(("Error parsing override", "See https://"))]
    return "; ".join(kept or lines) or type(error).__name__


def parse_search_space(params: Mapping[str, str], extra: List[str] = ()) -> SearchSpace:
    """Parse ``hydra.sweeper.params`` and the command line's sweep overrides (these win)."""
    parser = OverridesParser.create()
    lines = [f"{k}={v}" for k, v in params.items()] + list(extra)
    distributions: Dict[str, BaseDistribution] = {}
    fixed: Dict[str, str] = {}
    derived: Dict[str, Tuple[str, str]] = {}
    for line in lines:
        key, _, value = line.partition("=")
        ratio = RATIO.match(value) if isinstance(value, str) else None
        for name in [n for n, (k, _) in derived.items() if k == key.strip()]:
            del derived[name]  # a later entry for the same key wins
        if ratio:
            key, (base, inner) = key.strip(), ratio.groups()
            if base == key:
                raise SearchSpaceError(f"{key}: ratio({base}, ...) derives a key from itself")
            name = ratio_param(key, base)
            factor = _parse(parser, f"{key}={inner.strip()}")
            distributions.pop(key, None)
            fixed.pop(key, None)
            distributions[name] = to_distribution(key, factor.value()) \
                if factor.is_sweep_override() else CategoricalDistribution([factor.value()])
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                       for v in _choices(distributions[name])):
                raise SearchSpaceError(f"{key}: ratio({base}, ...) needs numbers as factors")
            derived[name] = (key, base)
            continue
        override = _parse(parser, line)
        key = override.get_key_element()
        distributions.pop(key, None)
        fixed.pop(key, None)
        if override.is_sweep_override():
            distributions[key] = to_distribution(key, override.value())
        else:
            fixed[key] = f"{key}={override.get_value_element_as_str()}"
    for name, (key, base) in derived.items():
        if any(base == k for k, _ in derived.values()):
            raise SearchSpaceError(f"{key}: ratio({base}, ...): {base} is itself derived")
    return SearchSpace(distributions, list(fixed.values()), derived)


def resolve_bases(space: SearchSpace, config: Any) -> None:
    """Each derived key's base value when the base is not searched: set among the fixed
    overrides, else read from the composed ``config``."""
    from omegaconf import OmegaConf

    parser = OverridesParser.create()
    fixed = {line.split("=", 1)[0]: line for line in space.fixed}
    for key, base in space.derived.values():
        if base in space.distributions:
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                       for v in _choices(space.distributions[base])):
                raise SearchSpaceError(f"{key}: ratio({base}, ...) needs {base} to be searched "
                                       "over numbers")
            continue
        if base in fixed:
            value = _parse(parser, fixed[base]).value()
        else:
            value = OmegaConf.select(config, base, default=None, throw_on_missing=False)
        if value is None:
            raise SearchSpaceError(f"{key}: ratio({base}, ...): {base} is neither searched nor "
                                   "a key of the config")
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise SearchSpaceError(f"{key}: ratio({base}, ...) needs {base} to be a number, "
                                   f"not {value!r}")
        space.bases[base] = value


def _parse(parser: OverridesParser, line: str) -> Override:
    try:
        return parser.parse_overrides([line])[0]
    except Exception as error:  # Hydra's grammar error says where it failed
        shown = line.replace("\n", "\\n").replace("\r", "\\r")
        raise SearchSpaceError(f"cannot parse '{shown}': {_reason(error)}") from None


def _choices(d: BaseDistribution) -> List[Any]:
    if isinstance(d, CategoricalDistribution):
        return list(d.choices)
    return [d.low, d.high]


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
