"""A corpus of bad data files: each is refused with one line naming the file and the line
(or the field) at fault, as a DataError (exit status 2 through the CLI, no traceback, no
MLflow run). What is accepted on purpose is here too: a UTF-8 byte-order mark, CRLF, raw
U+2028 in strings, duplicates (with a warning), and over-long examples (cut, with a
warning that counts them; or dropped)."""

from __future__ import annotations

import builtins
import json
import logging
import os
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Callable, Dict, List, Union

import pytest

from conftest import ROOT, tiny_overrides
from sweep.config.schema import DataConfig, DataFormat, TrainConfig
from sweep.data.records import MAX_LINE_BYTES, DataError, load_splits

Q = {"question": "What does Article 21 protect?", "answer": "Life and personal liberty."}
CHAT = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
Line = Union[str, bytes, dict, list]


def qa(i: int) -> dict:
    return {"question": f"Question {i}?", "answer": f"Answer {i}."}


def write(path: Path, lines: List[Line], end: bytes = b"\n") -> Path:
    def encode(x: Line) -> bytes:
        if isinstance(x, bytes):
            return x
        return (x if isinstance(x, str) else json.dumps(x)).encode("utf-8")

    path.write_bytes(b"".join(encode(x) + end for x in lines))
    return path


def good(n: int = 10) -> List[Line]:
    return [qa(i) for i in range(n)]


def with_bad(line: Line, at: int = 3, n: int = 10) -> List[Line]:
    """``n`` good records with ``line`` as line ``at``."""
    lines = good(n)
    lines.insert(at - 1, line)
    return lines


def chat(*messages: dict) -> dict:
    return {"messages": list(messages)}


def user(text: str = "Hi") -> dict:
    return {"role": "user", "content": text}


def assistant(text: str = "Hello") -> dict:
    return {"role": "assistant", "content": text}


def chats(bad: dict, at: int = 2) -> List[Line]:
    lines: List[Line] = [chat(user(f"Q{i}"), assistant(f"A{i}")) for i in range(8)]
    lines.insert(at - 1, bad)
    return lines


# id -> (lines of data.jsonl, what the one-line message says ({path} is the file), config)
CASES: Dict[str, tuple] = {
    "malformed-json-line-3": (with_bad('{"question": "q", "answer": ', 3),
                              "{path}:3: invalid JSON (Expecting value at column 29)", {}),
    "malformed-json-line-7": (with_bad("{'question': 'single quotes'}", 7),
                              "{path}:7: invalid JSON (Expecting property name enclosed in "
                              "double quotes at column 2)", {}),
    "two-records-on-one-line": (with_bad(json.dumps(Q) + json.dumps(Q), 2),
                                "{path}:2: invalid JSON (Extra data at column", {}),
    "array-first-line": (with_bad(["What?", "That."], 1),
                         "{path}:1: expected a JSON object (one record a line), got an array", {}),
    "array-later-line": (with_bad(["What?", "That."], 4),
                         "{path}:4: expected a JSON object (one record a line), got an array "
                         "(format qa, from line 1)", {}),
    "number-line": (with_bad("42", 2), "{path}:2: expected a JSON object (one record a line), "
                                       "got a number", {}),
    "string-line": (with_bad('"just text"', 2), "{path}:2: expected a JSON object (one record a "
                                                "line), got a string", {}),
    "missing-answer": (with_bad({"question": "q"}, 5), "{path}:5: missing field 'answer' "
                                                       "(format qa, from line 1)", {}),
    "missing-question": (with_bad({"answer": "a"}, 5), "{path}:5: missing field 'question'", {}),
    "missing-answer-first-line": (with_bad({"question": "q"}, 1),
                                  "{path}:1: cannot tell the format from keys ['question']; "
                                  "expected messages or instruction/output or question/answer or "
                                  "prompt/completion or text (question/answer lacks ['answer'])",
                                  {}),
    "answer-number": (with_bad({"question": "q", "answer": 42}),
                      "{path}:3: field 'answer' must be a string, got a number", {}),
    "answer-list": (with_bad({"question": "q", "answer": ["a", "b"]}),
                    "{path}:3: field 'answer' must be a string, got an array", {}),
    "answer-null": (with_bad({"question": "q", "answer": None}),
                    "{path}:3: field 'answer' must be a string, got null", {}),
    "answer-nested-dict": (with_bad({"question": "q", "answer": {"text": "a"}}),
                           "{path}:3: field 'answer' must be a string, got an object", {}),
    "question-boolean": (with_bad({"question": True, "answer": "a"}),
                         "{path}:3: field 'question' must be a string, got a boolean", {}),
    "empty-answer": (with_bad({"question": "q", "answer": ""}), "{path}:3: field 'answer' is empty",
                     {}),
    "blank-answer": (with_bad({"question": "q", "answer": " \n\t"}),
                     "{path}:3: field 'answer' is empty", {}),
    "unpaired-surrogate": (with_bad('{"question": "q", "answer": "half \\ud83d emoji"}'),
                           "{path}:3: field 'answer' holds an unpaired surrogate \\ud83d at "
                           "character 6", {}),
    "integer-of-5000-digits": (with_bad('{"question": "q", "answer": ' + "9" * 5000 + "}"),
                               "{path}:3: invalid JSON (Exceeds the limit (4300 digits) for "
                               "integer string conversion)", {}),
    "nested-100000-deep": (with_bad("[" * 100_000), "{path}:3: invalid JSON (nested too deeply)",
                           {}),
    "empty-file": ([], "{path}: no records (the file is empty)", {}),
    "only-blank-lines": (["", "  ", "\t", "\r"], "{path}: no records (only blank lines)", {}),
    "too-few-for-the-splits": (good(2), "{path}: 2 record(s) leave no training split after 1 "
                                        "valid and 1 test (data.valid_fraction=0.1, "
                                        "data.test_fraction=0.1)", {}),
    "too-few-for-valid": (good(1), "{path}: 1 record(s) leave no training split after 1 valid "
                                   "(data.valid_fraction=0.1, data.test_fraction=0.0)",
                          {"test_fraction": 0.0}),
    "latin-1-bytes-line-4": (with_bad('{"question": "caf\xe9?", "answer": "a"}'.encode("latin-1"),
                                      4),
                             "{path}:4: not UTF-8 (byte 0xe9 at column 18)", {}),
    "utf-16-file": ([json.dumps(Q).encode("utf-16")],
                    "{path}: not a JSONL text file: it is UTF-16", {}),
    "gzip-file": ([b"\x1f\x8b\x08\x00\x00\x00\x00\x00"], "{path}: not a JSONL text file: it is "
                                                         "gzip-compressed; decompress it", {}),
    "mixed-chat-among-qa": (with_bad(CHAT, 4), "{path}:4: keys ['messages'] are the chat format, "
                                               "not qa (question/answer); one format a file "
                                               "(format qa, from line 1)", {}),
    "mixed-qa-among-chat": (chats(Q, 3), "{path}:3: keys ['answer', 'question'] are the qa format, "
                                         "not chat (messages); one format a file (format chat, "
                                         "from line 1)", {}),
    "mixed-with-data.format": (chats(Q, 5), "{path}:5: keys ['answer', 'question'] are the qa "
                                            "format, not chat (messages); one format a file "
                                            "(data.format=chat)", {"format": DataFormat.chat}),
    "wrong-data.format": (good(), "{path}:1: keys ['answer', 'question'] are the qa format, not "
                                  "data.format=completion (prompt/completion); set data.format=qa "
                                  "or auto", {"format": DataFormat.completion}),
    "chat-unknown-role": (chats(chat(user(), {"role": "bot", "content": "x"})),
                          "{path}:2: messages[1]: role 'bot'; a role is one of ['system', 'user', "
                          "'assistant', 'tool']", {}),
    "chat-no-role": (chats(chat({"content": "x"}, assistant())),
                     "{path}:2: messages[0]: no 'role'", {}),
    "chat-no-assistant-turn": (chats(chat(user(), user("again"))),
                               "{path}:2: the last message must be the assistant's", {}),
    "chat-empty-assistant-turn": (chats(chat(user(), assistant(""))),
                                  "{path}:2: messages[1] (assistant) has an empty 'content'", {}),
    "chat-content-null": (chats(chat(user(), {"role": "assistant", "content": None})),
                          "{path}:2: messages[1] (assistant) needs a string 'content', got null",
                          {}),
    "chat-messages-empty": (chats({"messages": []}),
                            "{path}:2: field 'messages' must be a non-empty array, got an empty "
                            "array", {}),
    "chat-messages-a-string": (chats({"messages": "Hi"}),
                               "{path}:2: field 'messages' must be a non-empty array, got a "
                               "string", {}),
}


@pytest.mark.parametrize("lines,message,config", CASES.values(), ids=CASES.keys())
def test_bad_file_is_one_line_naming_file_and_line(tmp_path: Path, lines, message, config) -> None:
    path = write(tmp_path / "data.jsonl", lines)
    text = refused(DataConfig(path=str(path), **config))
    assert message.format(path=path) in text


def refused(cfg: DataConfig) -> str:
    with pytest.raises(DataError) as error:
        load_splits(cfg, seed=0)
    text = str(error.value)
    assert "\n" not in text, text
    return text


# Paths that are not a readable data file; each makes its own.
def _missing(tmp: Path) -> Path:
    return tmp / "nope.jsonl"


def _folder_without_train(tmp: Path) -> Path:
    (tmp / "data").mkdir()
    write(tmp / "data" / "data.jsonl", good())
    return tmp / "data"


def _train_is_a_folder(tmp: Path) -> Path:
    (tmp / "train.jsonl").mkdir()
    write(tmp / "valid.jsonl", good())
    return tmp


def _fifo(tmp: Path) -> Path:
    os.mkfifo(tmp / "pipe.jsonl")  # opening it would wait for a writer for ever
    return tmp / "pipe.jsonl"


PATHS: Dict[str, tuple] = {
    "path-does-not-exist": (_missing, "data.path: no such file {path}"),
    "folder-without-train-and-valid": (_folder_without_train,
                                       "data.path={path}: the folder has no train.jsonl and no "
                                       "valid.jsonl"),
    "train.jsonl-is-a-folder": (_train_is_a_folder,
                                "data.path: {path}/train.jsonl is a folder, not a JSONL file"),
    "named-pipe": (_fifo, "data.path: {path} is not a regular file"),
}


@pytest.mark.parametrize("make,message", PATHS.values(), ids=PATHS.keys())
def test_bad_path_is_one_line_naming_it(tmp_path: Path, make: Callable[[Path], Path],
                                        message: str) -> None:
    path = make(tmp_path)
    started = time.monotonic()
    assert message.format(path=path) in refused(DataConfig(path=str(path)))
    assert time.monotonic() - started < 5


def test_unreadable_file(tmp_path: Path, monkeypatch) -> None:
    path = write(tmp_path / "data.jsonl", good())
    path.chmod(0)
    if os.geteuid() == 0:  # root reads a mode-000 file: refuse the open as the kernel would
        real_open = builtins.open

        def denied(file, *args, **kwargs):
            if str(file) == str(path):
                raise PermissionError(13, "Permission denied", str(file))
            return real_open(file, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", denied)
        monkeypatch.setattr("io.open", denied)
    assert f"data.path={path}: cannot read it (Permission denied)" in \
        refused(DataConfig(path=str(path)))


@pytest.mark.skipif(not Path("/proc/self/mem").is_file(), reason="Linux /proc")
def test_a_read_error_is_one_line() -> None:
    # /proc/self/mem is a regular file whose first read fails with EIO, for root too
    assert "data.path=/proc/self/mem: cannot read it (Input/output error)" in \
        refused(DataConfig(path="/proc/self/mem"))


def test_an_enormous_line_is_refused_without_holding_it(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    with path.open("wb") as f:
        f.write(json.dumps(qa(0)).encode() + b"\n")
        f.write(b'{"question": "q", "answer": "' + b"x" * (50 * 2**20) + b'"}\n')
        for i in range(1, 10):
            f.write(json.dumps(qa(i)).encode() + b"\n")
    started = time.monotonic()
    tracemalloc.start()
    try:
        text = refused(DataConfig(path=str(path)))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert f"{path}:2: line of 50 MiB, over the 8 MiB a record may have" in text
    assert peak < 2 * MAX_LINE_BYTES + 2**20 < 50 * 2**20  # read in chunks, never whole
    assert time.monotonic() - started < 10


def test_several_bad_records_are_listed_at_once(tmp_path: Path) -> None:
    lines = good(30)
    for at in range(2, 28, 2):
        lines.insert(at - 1, {"question": "q"})
    path = write(tmp_path / "data.jsonl", lines + ["[1]"] * 10)
    with pytest.raises(DataError) as error:
        load_splits(DataConfig(path=str(path)), seed=0)
    first, *listed = str(error.value).splitlines()
    assert first == f"23 bad record(s) in {path} (format qa):"
    assert listed[0].strip() == f"{path}:2: missing field 'answer'"
    assert listed[-1].strip() == "... and 3 more" and len(listed) == 21


# Accepted on purpose.

def test_a_utf8_byte_order_mark_is_skipped(tmp_path: Path) -> None:
    plain = load_splits(DataConfig(path=str(write(tmp_path / "a.jsonl", good()))), seed=0)
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + (tmp_path / "a.jsonl").read_bytes())
    assert load_splits(DataConfig(path=str(path)), seed=0) == plain


def test_crlf_line_ends_are_accepted(tmp_path: Path) -> None:
    plain = load_splits(DataConfig(path=str(write(tmp_path / "a.jsonl", good()))), seed=0)
    crlf = write(tmp_path / "crlf.jsonl", good(), end=b"\r\n")
    assert load_splits(DataConfig(path=str(crlf)), seed=0) == plain
    with pytest.raises(DataError, match=r"crlf\.jsonl:3: missing field 'answer'"):
        load_splits(DataConfig(path=str(write(crlf, with_bad({"question": "q"}), end=b"\r\n"))),
                    seed=0)


def test_line_separators_inside_strings_are_not_line_ends(tmp_path: Path) -> None:
    # str.splitlines() cut these records in two (U+2028, U+0085, form feed, ...)
    odd = "one\u2028two\u2029three\x85four\x0cfive\x1cend"
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps({"question": f"{odd} {i}", "answer": odd},
                                       ensure_ascii=False) + "\n" for i in range(10)),
                    encoding="utf-8")
    splits = load_splits(DataConfig(path=str(path), valid_fraction=0.1, test_fraction=0.1), seed=0)
    examples = splits.train + splits.valid + splits.test
    assert len(examples) == 10
    assert {e["messages"][-1]["content"] for e in examples} == {odd}


def test_an_alpaca_input_of_null_is_no_input(tmp_path: Path) -> None:
    path = write(tmp_path / "a.jsonl", [{"instruction": f"Do {i}", "input": None, "output": "ok"}
                                        for i in range(10)])
    splits = load_splits(DataConfig(path=str(path)), seed=0)
    assert all(e["messages"][0]["content"].startswith("Do ") for e in splits.train)


def test_a_test_fraction_gives_at_least_one_test_record(tmp_path: Path) -> None:
    splits = load_splits(DataConfig(path=str(write(tmp_path / "a.jsonl", good(4)))), seed=0)
    assert (len(splits.train), len(splits.valid), len(splits.test)) == (2, 1, 1)


def test_duplicates_are_kept_with_a_warning(tmp_path: Path, caplog) -> None:
    lines = good(10) + [qa(0), qa(3), qa(0)]
    with caplog.at_level(logging.WARNING, logger="sweep.data.records"):
        splits = load_splits(DataConfig(path=str(write(tmp_path / "a.jsonl", lines))), seed=0)
    assert len(splits.train) + len(splits.valid) + len(splits.test) == 13
    assert "a.jsonl: 3 duplicate record(s), kept (line 11 = 1, 12 = 4, 13 = 1)" in caplog.text
    assert "val_loss look better" in caplog.text


def test_valid_records_also_in_train_are_warned_about(tmp_path: Path, caplog) -> None:
    write(tmp_path / "train.jsonl", good(10))
    write(tmp_path / "valid.jsonl", [qa(2), qa(20), qa(5)])
    with caplog.at_level(logging.WARNING, logger="sweep.data.records"):
        load_splits(DataConfig(path=str(tmp_path)), seed=0)
    assert "2 of the 3 valid.jsonl records are also in train.jsonl" in caplog.text


def test_no_warning_without_duplicates(tmp_path: Path, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="sweep.data.records"):
        load_splits(DataConfig(path=str(write(tmp_path / "a.jsonl", good()))), seed=0)
    assert caplog.text == ""


# train.max_seq_length: longer examples are cut, with a warning that counts the examples and
# the answer tokens lost; train.drop_long_examples=true drops them; a split left with no
# answer token ends the trial FAIL.

@pytest.fixture(scope="module")
def tokenizer():
    from sweep.config.schema import ModelConfig, ModelSource
    from sweep.models.loader import load_base

    return load_base(ModelConfig(name="tiny", source=ModelSource.tiny, path="tiny",
                                 quantize=False), seed=0).tokenizer


def _sets(tokenizer, long_answers: int, n: int = 8):
    from sweep.data.batches import tokenize

    def example(i: int) -> dict:
        answer = ("word " * 200 if i < long_answers else f"Answer {i}.").strip()
        return {"messages": [user(f"Question {i}?"), assistant(answer)]}

    return (tokenize([example(i) for i in range(n)], tokenizer, True),
            tokenize([example(100 + i) for i in range(4)], tokenizer, True))


def test_long_examples_are_cut_with_a_warning_that_counts(tokenizer, caplog) -> None:
    from sweep.data.batches import truncation
    from sweep.trial import _fit_to_length

    train_set, val_set = _sets(tokenizer, long_answers=3)
    lengths = [len(train_set[i][0]) for i in range(len(train_set))]
    offsets = [train_set[i][1] for i in range(len(train_set))]
    limit = 64
    lost = sum(max(length - max(limit, o), 0) for length, o in zip(lengths, offsets))
    t = truncation(train_set, limit)
    assert (t.cut_examples, t.answer_tokens_lost, t.empty_examples) == (3, lost, 0)
    assert t.answer_tokens == sum(length - o for length, o in zip(lengths, offsets))
    settings = TrainConfig(max_seq_length=limit)
    with caplog.at_level(logging.WARNING, logger="sweep.trial"):
        kept, _, figures = _fit_to_length(train_set, val_set, settings)
    assert len(kept) == 8 and figures["data.train_cut_examples"] == 3
    assert (f"train split: 3 of 8 examples are longer than train.max_seq_length=64 tokens and "
            f"are cut: {lost} of {t.answer_tokens} answer tokens lost, 0 examples left with no "
            "answer") in caplog.text
    assert "valid split" not in caplog.text


def test_long_examples_can_be_dropped_instead(tokenizer, caplog) -> None:
    from sweep.trial import _fit_to_length

    train_set, val_set = _sets(tokenizer, long_answers=3)
    settings = TrainConfig(max_seq_length=64, drop_long_examples=True)
    with caplog.at_level(logging.WARNING, logger="sweep.trial"):
        kept, _, figures = _fit_to_length(train_set, val_set, settings)
    assert len(kept) == 5 and figures["data.train_dropped_examples"] == 3
    assert "train split: dropped 3 of 8 examples longer than train.max_seq_length=64" \
        in caplog.text
    all_long, _ = _sets(tokenizer, long_answers=8)
    with pytest.raises(DataError, match="the train split has no example of at most train."
                                        "max_seq_length=64 tokens"):
        _fit_to_length(all_long, val_set, settings)


def test_answers_cut_away_entirely_fail_the_trial(tokenizer) -> None:
    from sweep.errors import TrialFailed
    from sweep.trial import _fit_to_length, _require_answer_tokens

    train_set, val_set = _sets(tokenizer, long_answers=0)
    limit = min(train_set[i][1] for i in range(len(train_set)))  # the prompts fill it
    settings = TrainConfig(max_seq_length=limit)
    _, _, figures = _fit_to_length(train_set, val_set, settings)
    with pytest.raises(TrialFailed, match=f"the train split has no answer token left.*"
                                          f"train.max_seq_length={limit} cuts all"):
        _require_answer_tokens(figures, limit)


# End to end: `python -m sweep` (one run, tiny model) exits 2 with one line, no traceback,
# and records no MLflow run.

E2E = {
    "e2e-malformed-json": (lambda tmp: write(tmp / "d.jsonl", with_bad('{"question": ', 6, 40)),
                           "{path}:6: invalid JSON (Expecting value at column 14) (format qa, "
                           "from line 1)"),
    "e2e-latin-1": (lambda tmp: write(tmp / "d.jsonl", with_bad(b'{"question": "\xe9"}', 9, 40)),
                    "{path}:9: not UTF-8 (byte 0xe9 at column 15)"),
    "e2e-mixed-formats": (lambda tmp: write(tmp / "d.jsonl", with_bad(CHAT, 12, 40)),
                          "{path}:12: keys ['messages'] are the chat format, not qa"),
    "e2e-missing-path": (lambda tmp: tmp / "nope.jsonl", "data.path: no such file {path}"),
}


@pytest.mark.slow
@pytest.mark.parametrize("make,message", E2E.values(), ids=E2E.keys())
def test_bad_data_through_the_cli(tmp_path: Path, mlflow_store: str, make, message) -> None:
    """The store exists with its tables made, so that "no run" means something."""
    path = make(tmp_path)
    cmd = [sys.executable, "-m", "sweep", *tiny_overrides(tmp_path, path),
           f"hydra.run.dir={tmp_path}/run"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    said = out.stdout + out.stderr
    assert out.returncode == 2, said[-2000:]
    assert "Traceback" not in said
    errors = [line for line in said.splitlines() if "[ERROR]" in line]
    assert len(errors) == 1 and message.format(path=path) in errors[0], said[-2000:]
    assert said.rstrip().endswith(errors[0])  # nothing after it: one line
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_store)
    experiments = [e.experiment_id for e in client.search_experiments()]
    assert not client.search_runs(experiments)  # none FINISHED, none at all
