"""The sweeper's search-space grammar (the stock plugin's), parametrized with edge cases."""

from __future__ import annotations

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from hydra_plugins.sweep_optuna._impl import hydra_value
from hydra_plugins.sweep_optuna._search_space import (SearchSpaceError, grid_values,
                                                      parse_search_space)


def dist(expr: str):
    return parse_search_space({"k": expr}).distributions["k"]


@pytest.mark.parametrize(
    "expr,expected",
    [
        ("choice(4, 8, 16)", CategoricalDistribution([4, 8, 16])),
        ("4,8,16", CategoricalDistribution([4, 8, 16])),
        ("choice(adamw, sgd)", CategoricalDistribution(["adamw", "sgd"])),
        ("choice(true, false)", CategoricalDistribution([True, False])),
        ("choice(1e-4, 2e-4)", CategoricalDistribution([1e-4, 2e-4])),
        ("range(4, 17, 4)", IntDistribution(4, 16, step=4)),
        ("range(4, 16, 4)", IntDistribution(4, 12, step=4)),  # stop is exclusive
        ("range(1, 9)", IntDistribution(1, 8)),
        ("range(5)", IntDistribution(0, 4)),
        ("range(0.1, 0.5, 0.1)", FloatDistribution(0.1, 0.4, step=0.1)),
        ("interval(1e-5, 1e-3)", FloatDistribution(1e-5, 1e-3)),
        ("interval(0, 1)", FloatDistribution(0.0, 1.0)),
        ("int(interval(8, 64))", IntDistribution(8, 64)),
        ("tag(log, interval(1e-5, 1e-3))", FloatDistribution(1e-5, 1e-3, log=True)),
        ("tag(log, int(interval(8, 64)))", IntDistribution(8, 64, log=True)),
        ("tag(log, range(1, 65))", IntDistribution(1, 64, log=True)),
    ],
)
def test_grammar_maps_to_optuna(expr, expected) -> None:
    got = dist(expr)
    assert type(got) is type(expected)
    if isinstance(got, FloatDistribution) and got.step is not None:
        assert got.low == pytest.approx(expected.low) and got.high == pytest.approx(expected.high)
        assert got.step == pytest.approx(expected.step)
    else:
        assert got == expected


@pytest.mark.parametrize(
    "expr,message",
    [
        ("range(5, 5)", "is empty"),
        ("range(5, 1)", "is empty"),
        ("interval(3, 1)", "is empty"),
        ("interval(2, 2)", "is empty"),
        ("tag(log, interval(0, 1))", "needs a start > 0"),
        ("tag(log, choice(1, 2))", "needs an interval or a range"),
        ("tag(log, range(2, 20, 2))", "needs step 1"),
        ("tag(log, range(0.1, 0.5, 0.1))", "use interval"),
        ("tag(loglog, interval(1, 2))", "unknown tag"),
        ("shuffle(choice(1, 2))", "shuffle"),
        ("choice(1, 1)", "repeats a value"),
        ("choice(1, 2", "cannot parse"),
        ("glob(*)", "not a sweep"),
    ],
)
def test_bad_search_spaces_are_clear_errors(expr, message) -> None:
    with pytest.raises(SearchSpaceError, match=message):
        dist(expr)
    with pytest.raises(SearchSpaceError, match=r"^k: |'k="):  # names the key
        dist(expr)


def test_fixed_values_and_command_line_overrides_win() -> None:
    space = parse_search_space({"lora.rank": "choice(4, 8)", "seed": "7"},
                               ["lora.rank=choice(16, 32)", "optimizer.lr=1e-3", "seed=8"])
    assert space.distributions == {"lora.rank": CategoricalDistribution([16, 32])}
    assert sorted(space.fixed) == ["optimizer.lr=0.001", "seed=8"]


def test_a_sweep_on_the_command_line_replaces_a_fixed_value() -> None:
    space = parse_search_space({"seed": "7"}, ["seed=1,2"])
    assert space.distributions == {"seed": CategoricalDistribution([1, 2])}
    assert space.fixed == []


def test_grid_values() -> None:
    space = parse_search_space({"a": "choice(x, y)", "b": "range(1, 4)",
                                "c": "range(0.0, 0.3, 0.1)"})
    grid = grid_values(space)
    assert grid["a"] == ["x", "y"] and grid["b"] == [1, 2, 3]
    assert grid["c"] == pytest.approx([0.0, 0.1, 0.2])
    with pytest.raises(SearchSpaceError, match="grid sampler"):
        grid_values(parse_search_space({"lr": "interval(0.1, 1)"}))


@pytest.mark.parametrize("value", [8, 2.5e-4, 0.00034052591913244707, True, None, "adamw",
                                   "all_linear", "with space", "it's", "sqlite:////tmp/o.db",
                                   "a,b", "x=y"])
def test_sampled_values_round_trip_through_hydra(value) -> None:
    parsed = OverridesParser.create().parse_overrides([f"k={hydra_value(value)}"])[0]
    assert not parsed.is_sweep_override()
    assert parsed.value() == value


@pytest.mark.parametrize("name", ["tpe", "random", "grid", "cmaes", "gp", "qmc", "nsga2"])
def test_every_sampler_builds_seeded_and_samples(name) -> None:
    import optuna

    from hydra_plugins.sweep_optuna._impl import SweepAborted, build_sampler

    space = parse_search_space({"lora.rank": "choice(4, 8)", "optimizer.lr":
                                "choice(1e-4, 1e-3)" if name == "grid" else
                                "tag(log, interval(1e-5, 1e-3))"})
    try:
        import torch  # noqa: F401
        has_torch = True
    except ImportError:
        has_torch = False
    if name == "gp" and not has_torch:
        with pytest.raises(SweepAborted, match="needs PyTorch"):
            build_sampler(name, {}, 0, space, False)
        return

    def sample(seed):
        study = optuna.create_study(sampler=build_sampler(name, {}, seed, space, False))
        params = []
        for i in range(3):
            trial = study.ask(space.distributions)
            study.tell(trial, float(i))
            params.append(trial.params)
        return params

    first = sample(7)
    assert first == sample(7)
    assert all(set(p) == {"lora.rank", "optimizer.lr"} for p in first)


def test_ratio_searches_the_factor_and_derives_the_key() -> None:
    from omegaconf import OmegaConf

    from hydra_plugins.sweep_optuna._search_space import resolve_bases

    space = parse_search_space({"lora.rank": "choice(8, 16)",
                                "lora.alpha": "ratio(lora.rank, choice(1, 2, 4))"})
    assert space.distributions["lora.alpha/lora.rank"] == CategoricalDistribution([1, 2, 4])
    assert "lora.alpha" not in space.distributions
    resolve_bases(space, OmegaConf.create({"lora": {"rank": 16, "alpha": 32.0}}))
    params = {"lora.rank": 8, "lora.alpha/lora.rank": 4}
    assert space.derived_values(params) == {"lora.alpha": 32}
    assert space.overrides(params) == ["lora.rank=8", "lora.alpha=32"]
    assert space.overrides({"lora.rank": 16, "lora.alpha/lora.rank": 1}, {"x.y": "z"}) == \
        ["lora.rank=16", "lora.alpha=16", "x.y=z"]


def test_ratio_of_a_key_that_is_not_searched_reads_the_config() -> None:
    from omegaconf import OmegaConf

    from hydra_plugins.sweep_optuna._search_space import resolve_bases

    config = OmegaConf.create({"lora": {"rank": 16}})
    space = parse_search_space({"lora.alpha": "ratio(lora.rank, interval(0.5, 4.0))"})
    resolve_bases(space, config)
    assert space.overrides({"lora.alpha/lora.rank": 1.5}) == ["lora.alpha=24.0"]
    fixed = parse_search_space({"lora.alpha": "ratio(lora.rank, choice(2))"}, ["lora.rank=4"])
    resolve_bases(fixed, config)  # the command line's fixed value wins over the config
    assert fixed.overrides({"lora.alpha/lora.rank": 2}) == ["lora.rank=4", "lora.alpha=8"]


@pytest.mark.parametrize("params,message", [
    ({"lora.alpha": "ratio(lora.alpha, choice(1, 2))"}, "derives a key from itself"),
    ({"lora.alpha": "ratio(lora.rnak, choice(1, 2))"}, "lora.rnak is neither searched"),
    ({"lora.alpha": "ratio(lora.rank, choice(a, b))"}, "needs numbers as factors"),
    ({"lora.alpha": "ratio(lora.rank, choice(1, 2)"}, "cannot parse"),
    ({"lora.alpha": "ratio(lora.name, choice(1, 2))"}, "needs lora.name to be a number"),
    ({"lora.rank": "ratio(lora.alpha, choice(1, 2))",
      "lora.alpha": "ratio(lora.rank, choice(1, 2))"}, "is itself derived"),
])
def test_bad_ratios_name_the_key(params, message) -> None:
    from omegaconf import OmegaConf

    from hydra_plugins.sweep_optuna._search_space import resolve_bases

    with pytest.raises(SearchSpaceError, match=message):
        space = parse_search_space(params)
        resolve_bases(space, OmegaConf.create({"lora": {"rank": 16, "name": "x"}}))
