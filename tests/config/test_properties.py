"""Properties, checked on generated inputs (hypothesis, derandomized: the same examples at
every run, no example database written).

1. The search-space grammar: every valid expression maps to the Optuna distribution it
   means (bounds, step, log, choices); every invalid one, and any text at all, is either a
   search space or one line of SearchSpaceError naming the key, never another exception.
2. Data: any valid record, in any accepted shape and with any text (newlines, U+2028,
   control characters, the chat template's own markers), read from a JSONL file, becomes
   an example whose loss-masked positions decode to exactly the answer and the template's
   end of turn, and whose unmasked positions are exactly the prompt the model will see.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from hydra_plugins.sweep_optuna._search_space import SearchSpaceError, parse_search_space
from sweep.config.schema import DataConfig, DataFormat

PROPERTY = settings(derandomize=True, database=None, deadline=None, max_examples=150,
                    suppress_health_check=[HealthCheck.too_slow])

# ---------------------------------------------------------------- 1. search-space grammar

KEYS = st.sampled_from(["lora.rank", "optimizer.lr", "k", "train.grad_accumulation", "a_b.c_d"])
RESERVED = {"true", "false", "null", "nan", "inf", "choice", "range", "interval", "tag", "int",
            "float", "str", "bool", "glob", "sort", "shuffle", "json_str", "extend_list"}
INTS = st.integers(-10**6, 10**6)
FLOATS = st.floats(-1e12, 1e12, allow_nan=False)
WORDS = st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True).filter(lambda w: w not in RESERVED)
QUOTED = st.text(st.characters(codec="ascii", categories=["L", "N", "Zs", "Pd"]), min_size=1,
                 max_size=10).map(lambda s: ("'" + s + "'", s))


def literal(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


# a value and how it is written: ints, floats, bare words, quoted strings, booleans
VALUES = st.one_of(*(s.map(lambda v: (literal(v), v)) for s in (INTS, FLOATS, st.booleans())),
                   WORDS.map(lambda v: (v, v)), QUOTED)


def space(key: str, expr: str):
    return parse_search_space({key: expr}).distributions[key]


def refused(key: str, expr: str) -> str:
    with pytest.raises(SearchSpaceError) as error:
        parse_search_space({key: expr})
    text = str(error.value)
    assert text.startswith(f"{key}: ") or f"'{key}=" in text, text
    assert "\n" not in text, text
    return text


@PROPERTY
@given(KEYS, st.lists(VALUES, min_size=1, max_size=6, unique_by=lambda wv: wv[1]),
       st.booleans())
def test_choices_are_categorical(key, written, bare) -> None:
    # unique_by compares with ==, as Optuna does: 1, 1.0 and true are one value to it
    texts, values = [w for w, _ in written], [v for _, v in written]
    expr = ",".join(texts) if bare and len(texts) > 1 else f"choice({', '.join(texts)})"
    got = space(key, expr)
    assert isinstance(got, CategoricalDistribution)
    assert list(got.choices) == values
    assert [type(c) for c in got.choices] == [type(v) for v in values]


@PROPERTY
@given(KEYS, INTS, st.integers(1, 10**4), st.integers(1, 50), st.booleans(),
       st.sampled_from([1, 2, 3]))
def test_integer_ranges(key, start, span, step, down, form) -> None:
    stop = start + span
    if form == 1:
        start, stop, step, down = 0, span, 1, False
        expr = f"range({stop})"
    elif form == 2:
        step, down = 1, False
        expr = f"range({start}, {stop})"
    else:
        step = -step if down else step
        start, stop = (stop, start) if down else (start, stop)
        expr = f"range({start}, {stop}, {step})"
    expected = list(range(start, stop, step))
    got = space(key, expr)
    assert got == IntDistribution(min(expected), max(expected), step=abs(step))


@PROPERTY
@given(KEYS, st.integers(-40, 40), st.integers(1, 40), st.integers(1, 8), st.booleans())
def test_float_ranges(key, start, span, step, down) -> None:
    low, high, size = start / 20, (start + span) / 20, step / 20  # on a 0.05 grid
    n = math.ceil(span / step)  # the values low, low + size, ... below high
    expr = f"range({high!r}, {low!r}, {-size!r})" if down else f"range({low!r}, {high!r}, {size!r})"
    got = space(key, expr)
    if n == 1:
        assert isinstance(got, CategoricalDistribution) and len(got.choices) == 1
        assert got.choices[0] == pytest.approx(high if down else low)
        return
    assert isinstance(got, FloatDistribution) and not got.log
    assert got.step == pytest.approx(size)
    values = [high - i * size for i in range(n)] if down else [low + i * size for i in range(n)]
    assert (got.low, got.high) == pytest.approx((min(values), max(values)))


@PROPERTY
@given(KEYS, FLOATS, FLOATS, st.booleans())
def test_intervals(key, a, b, log) -> None:
    low, high = sorted((a, b))
    assume(low < high and (not log or low > 0))
    expr = f"interval({low!r}, {high!r})"
    got = space(key, f"tag(log, {expr})" if log else expr)
    assert got == FloatDistribution(low, high, log=log)


@PROPERTY
@given(KEYS, INTS, INTS, st.booleans(), st.booleans())
def test_integer_intervals_and_log_ranges(key, a, b, log, as_range) -> None:
    low, high = sorted((a, b))
    assume(low < high and (not log or low >= 1))
    expr = f"range({low}, {high + 1})" if as_range else f"int(interval({low}, {high}))"
    got = space(key, f"tag(log, {expr})" if log else expr)
    assert got == IntDistribution(low, high, log=log)


def _bad_expressions():
    ordered = st.tuples(FLOATS, FLOATS).map(sorted)
    return st.one_of(
        ordered.map(lambda ab: f"interval({ab[1]!r}, {ab[0]!r})"),  # high, low (or equal)
        INTS.map(lambda a: f"int(interval({a}, {a}))"),
        st.tuples(st.floats(-1e6, 0), st.floats(0, 1e6, exclude_min=True)).map(
            lambda ab: f"tag(log, interval({ab[0]!r}, {ab[1]!r}))"),
        st.tuples(st.integers(-100, 0), st.integers(1, 100)).map(
            lambda ab: f"tag(log, int(interval({ab[0]}, {ab[1]})))"),
        st.tuples(st.integers(-100, 0), st.integers(2, 100)).map(
            lambda ab: f"tag(log, range({ab[0]}, {ab[1]}))"),
        st.tuples(INTS, INTS, st.integers(1, 9)).map(  # empty in the step's direction
            lambda t: f"range({max(t[:2])}, {min(t[:2])}, {t[2]})"),
        st.tuples(INTS, INTS, st.integers(1, 9)).map(
            lambda t: f"range({min(t[:2])}, {max(t[:2])}, {-t[2]})"),
        INTS.map(lambda a: f"range({a}, {a + 10}, 0)"),
        VALUES.map(lambda wv: f"choice({wv[0]}, {wv[0]})"),
        INTS.map(lambda a: f"choice({a}, {float(a)!r})"),
        st.sampled_from(["choice(1, true)", "choice(0, false)", "choice(true, 1.0)"]),
        st.just("choice()"),
        st.sampled_from(["interval(nan, 1)", "interval(0, inf)", "interval(-inf, 0)",
                         "tag(log, interval(1e-5, inf))", "range(0, inf)", "range(nan)",
                         "range(0, 1, nan)"]),
        st.sampled_from(["tag(log, choice(1, 2))", "tag(loglog, interval(1, 2))",
                         "shuffle(choice(1, 2))", "choice(1, 2", "glob(*)", "range(1,",
                         "interval(1)", "choice([1, 2], [3])", "tag(log, range(2, 20, 2))",
                         "tag(log, range(0.1, 0.5, 0.1))"]),
    )


@PROPERTY
@given(KEYS, _bad_expressions())
def test_invalid_spaces_are_one_line_naming_the_key(key, expr) -> None:
    refused(key, expr)


GRAMMAR = st.lists(st.sampled_from(["choice(", "range(", "interval(", "int(", "tag(", "log", ", ",
                                     ")", ",", "=", "-", "1", "0", "2.5", "1e-3", "nan", "inf",
                                     "true", "null", "'", '"', "[", "]", "{", "}", ":", "*", "$",
                                     "\\", "\n", "x", " "]), max_size=12).map("".join)


@PROPERTY
@given(KEYS, st.one_of(GRAMMAR, st.text(max_size=20)))
def test_any_text_is_a_space_or_one_line_naming_the_key(key, expr) -> None:
    try:
        parse_search_space({key: expr})
    except SearchSpaceError as error:
        text = str(error)
        assert text.startswith(f"{key}: ") or f"'{key}=" in text, text
        assert "\n" not in text, text


# ------------------------------------------------------------------ 2. data normalisation

# the chat template of SmolLM2 (the tiny model's tokenizer) ends a turn so
END_OF_TURN = "<|im_end|>\n"
MARKERS = ["<|im_start|>", "<|im_end|>", "assistant\n", "\n", "\r\n", "\u2028", "\x85", " ",
           "  ", "\t", "\n\n\n", "é", "😀", "０１"]
# every character but those SmolLM2's vocabulary cannot encode (tested apart, below)
DROPPED = "\x04\x06\x13\x14\x16\x1d\U00040000\U0008ffff"
CHARACTERS = st.characters(exclude_categories=["Cs"], exclude_characters=DROPPED[:6]).filter(
    lambda c: not 0x40000 <= ord(c) < 0xC0000)
TEXT = st.lists(st.one_of(st.text(CHARACTERS, max_size=12), st.sampled_from(MARKERS)),
                max_size=6).map("".join)
FILLED = TEXT.filter(lambda s: s.strip())  # required fields must not be blank


@pytest.fixture(scope="module")
def tokenizer():
    from sweep.config.schema import ModelConfig, ModelSource
    from sweep.models.loader import load_base

    return load_base(ModelConfig(name="tiny", source=ModelSource.tiny, path="tiny",
                                 quantize=False), seed=0).tokenizer


@st.composite
def records(draw):
    """(record, the answer, its format)."""
    fmt = draw(st.sampled_from(["chat", "alpaca", "qa", "completion"]))
    answer = draw(FILLED)
    if fmt == "qa":
        return {"question": draw(FILLED), "answer": answer}, answer, fmt
    if fmt == "completion":
        return {"prompt": draw(FILLED), "completion": answer}, answer, fmt
    if fmt == "alpaca":
        record = {"instruction": draw(FILLED), "output": answer}
        extra = draw(st.one_of(st.none(), TEXT))
        if extra is not None or draw(st.booleans()):
            record["input"] = extra
        return record, answer, fmt
    turns = draw(st.lists(st.tuples(FILLED, FILLED), max_size=2)) + [(draw(FILLED), answer)]
    messages = [{"role": "system", "content": draw(TEXT)}] if draw(st.booleans()) else []
    for question, reply in turns:
        messages += [{"role": "user", "content": question},
                     {"role": "assistant", "content": reply}]
    return {"messages": messages}, answer, fmt


def write_folder(folder: Path, record: dict, ascii_only: bool, crlf: bool, bom: bool) -> None:
    line = json.dumps(record, ensure_ascii=ascii_only) + ("\r\n" if crlf else "\n")
    for name in ("train.jsonl", "valid.jsonl"):
        (folder / name).write_bytes((b"\xef\xbb\xbf" if bom else b"") + line.encode("utf-8"))


def targets(dataset, max_seq_length: int = 4096):
    """The one batch's tokens and its loss mask, as ``masked_cross_entropy`` builds it."""
    from sweep.data.batches import iterate_batches

    tokens, positions, n_tokens = next(iterate_batches(dataset, 1, max_seq_length))
    tokens, positions = np.array(tokens)[0], np.array(positions)
    return tokens[:n_tokens], tokens[1:][positions[positions >= 0]].tolist()  # no padding


@PROPERTY
@given(records(), st.one_of(st.none(), FILLED), st.booleans(), st.booleans(), st.booleans())
def test_the_masked_targets_are_exactly_the_answer(tokenizer, tmp_path_factory, drawn, system,
                                                   ascii_only, crlf, bom) -> None:
    from sweep.data.batches import tokenize
    from sweep.data.records import load_splits

    record, answer, fmt = drawn
    folder = tmp_path_factory.mktemp("record")
    write_folder(folder, record, ascii_only, crlf, bom)
    splits = load_splits(DataConfig(path=str(folder), system_prompt=system), seed=0)
    (example,) = splits.train
    messages = example["messages"]
    assert messages[-1] == {"role": "assistant", "content": answer}
    tokens, answer_ids = targets(tokenize(splits.train, tokenizer, True))
    assert tokenizer.decode(answer_ids) == answer + END_OF_TURN
    prompt = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True,
                                           tokenize=False)
    assert tokenizer.decode(tokens[:len(tokens) - len(answer_ids)].tolist()) == prompt
    if system and (fmt != "chat" or record["messages"][0]["role"] != "system"):
        assert messages[0] == {"role": "system", "content": system}
        assert prompt.startswith(f"<|im_start|>system\n{system}<|im_end|>")
    unmasked = tokenize(splits.train, tokenizer, False)
    _, whole = targets(unmasked)
    assert tokenizer.decode(unmasked[0][0]) == tokenizer.apply_chat_template(messages,
                                                                               tokenize=False)
    assert len(whole) == len(unmasked[0][0]) - 1  # every position but the first is a target


@PROPERTY
@given(FILLED, st.booleans(), st.booleans())
def test_plain_text_is_trained_on_whole(tokenizer, tmp_path_factory, text, ascii_only,
                                        crlf) -> None:
    from sweep.data.batches import tokenize
    from sweep.data.records import load_splits

    folder = tmp_path_factory.mktemp("text")
    write_folder(folder, {"text": text}, ascii_only, crlf, bom=False)
    splits = load_splits(DataConfig(path=str(folder), format=DataFormat.text, mask_prompt=False),
                         seed=0)
    assert splits.train == [{"text": text}]
    dataset = tokenize(splits.train, tokenizer, False)
    tokens, trained = targets(dataset)
    eos = tokenizer.eos_token
    assert tokenizer.decode(tokens.tolist()) == (text if text.endswith(eos) else text + eos)
    assert trained == tokens[1:].tolist()


def test_characters_the_tokenizer_cannot_encode_are_warned_about(tokenizer, caplog) -> None:
    """Found by the property above: they vanished from the tokens silently."""
    import logging

    from sweep.data.batches import tokenize, unencodable

    examples = [{"messages": [{"role": "user", "content": f"a{DROPPED[i]}b"},
                              {"role": "assistant", "content": "\U00040000 ok"}]}
                for i in range(3)] + [{"messages": [{"role": "user", "content": "fine"},
                                                    {"role": "assistant", "content": "é😀"}]}]
    assert unencodable(examples, tokenizer) == {"\x04": 1, "\x06": 1, "\x13": 1,
                                                "\U00040000": 3}
    assert all(tokenizer.encode(c, add_special_tokens=False) in ([], [218, 218, 218])
               for c in DROPPED[:7])
    with caplog.at_level(logging.WARNING, logger="sweep.data.batches"):
        tokenize(examples, tokenizer, True)
    assert ("4 character(s) that the tokenizer cannot encode are left out of the tokens: U+0004 "
            "in 1 example(s), U+0006 in 1 example(s), U+0013 in 1 example(s), U+40000 in 3 "
            "example(s)") in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sweep.data.batches"):
        tokenize(examples[3:], tokenizer, True)
    assert caplog.text == ""


def test_an_answer_starting_with_blank_lines_is_not_cut_by_a_token(tokenizer) -> None:
    """Found by the property above: mlx-lm cut the whole conversation's tokens at the
    prompt's length, and BPE had merged the prompt's last newline with the answer's."""
    from sweep.data.batches import tokenize

    messages = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "\n\n\nx"}]
    _, answer_ids = targets(tokenize([{"messages": messages}], tokenizer, True))
    assert tokenizer.decode(answer_ids) == "\n\n\nx" + END_OF_TURN
