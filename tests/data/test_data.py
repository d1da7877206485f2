"""Records: every accepted shape, every bad record reported with file and line, seeded
splits, prompt masking, and the shipped legal data set."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sweep.config.schema import DataConfig, DataFormat
from sweep.data.records import DataError, builtin_path, detect_format, load_splits, normalise

RECORDS = [
    ({"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]},
     DataFormat.chat),
    ({"instruction": "Q", "input": "ctx", "output": "A"}, DataFormat.alpaca),
    ({"instruction": "Q", "output": "A"}, DataFormat.alpaca),
    ({"question": "Q", "answer": "A"}, DataFormat.qa),
    ({"prompt": "Q", "completion": "A"}, DataFormat.completion),
    ({"text": "Plain text."}, DataFormat.text),
]


def write(path: Path, lines) -> Path:
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return path


def cfg(path: Path, **kw) -> DataConfig:
    return DataConfig(path=str(path), **kw)


@pytest.mark.parametrize("record,fmt", RECORDS, ids=[f.value for _, f in RECORDS])
def test_each_shape_is_detected_and_normalised(record, fmt) -> None:
    assert detect_format(record) is fmt
    example = normalise(record, fmt, system_prompt=None, mask_prompt=fmt is not DataFormat.text)
    if fmt is DataFormat.text:
        assert example == {"text": "Plain text."}
    else:
        messages = example["messages"]
        assert messages[-1] == {"role": "assistant", "content": "A"}
        assert messages[0]["role"] == "user" and messages[0]["content"].startswith("Q")
    if fmt is DataFormat.alpaca and "input" in record:
        assert example["messages"][0]["content"] == "Q\n\nctx"


def test_system_prompt_is_prepended() -> None:
    example = normalise({"question": "Q", "answer": "A"}, DataFormat.qa, "Be brief.", True)
    assert example["messages"][0] == {"role": "system", "content": "Be brief."}


def test_every_bad_record_is_reported_with_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.jsonl", [
        {"question": "ok", "answer": "fine"},
        "{not json",
        {"question": "no answer"},
        "",
        {"question": "", "answer": "empty question"},
        {"question": 3, "answer": "number"},
        {"question": "ok", "answer": "fine"},
    ])
    with pytest.raises(DataError) as error:
        load_splits(cfg(path), seed=0)
    text = str(error.value)
    assert "4 bad record(s)" in text
    for line, what in [(2, "invalid JSON"), (3, "missing field 'answer'"),
                       (5, "field 'question' is empty"), (6, "field 'question' must be a string")]:
        assert f"{path}:{line}: {what}" in text


def test_unknown_shape_names_the_line_and_the_accepted_keys(tmp_path: Path) -> None:
    path = write(tmp_path / "odd.jsonl", [{"q": "x", "a": "y"}])
    with pytest.raises(DataError, match=r"odd.jsonl:1: cannot tell the format.*question/answer"):
        load_splits(cfg(path), seed=0)


def test_chat_must_end_with_the_answer_when_masking(tmp_path: Path) -> None:
    path = write(tmp_path / "chat.jsonl", [{"messages": [{"role": "user", "content": "hi"}]}])
    with pytest.raises(DataError, match=r"chat.jsonl:1: the last message must be the assistant"):
        load_splits(cfg(path), seed=0)


def test_empty_file_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no records"):
        load_splits(cfg(write(tmp_path / "empty.jsonl", [""])), seed=0)
    with pytest.raises(DataError, match="no such file"):
        load_splits(cfg(tmp_path / "nope.jsonl"), seed=0)


def test_folder_needs_train_and_valid(tmp_path: Path) -> None:
    write(tmp_path / "train.jsonl", [{"text": "a"}])
    with pytest.raises(DataError, match="valid.jsonl"):
        load_splits(cfg(tmp_path, mask_prompt=False), seed=0)
    write(tmp_path / "valid.jsonl", [{"text": "b"}])
    splits = load_splits(cfg(tmp_path, mask_prompt=False), seed=0)
    assert (len(splits.train), len(splits.valid), len(splits.test)) == (1, 1, 0)


def test_split_is_deterministic_by_seed_and_disjoint(qa_file: Path) -> None:
    a, b = load_splits(cfg(qa_file), seed=1), load_splits(cfg(qa_file), seed=1)
    c = load_splits(cfg(qa_file), seed=2)
    assert a == b
    assert a.valid != c.valid
    assert (len(a.train), len(a.valid), len(a.test)) == (32, 4, 4)
    questions = [[e["messages"][0]["content"] for e in part] for part in (a.train, a.valid, a.test)]
    assert len(set(sum(questions, []))) == 40


def test_too_few_records_leave_no_training_split(tmp_path: Path) -> None:
    path = write(tmp_path / "two.jsonl", [{"text": "a"}, {"text": "b"}])
    with pytest.raises(DataError, match="no training split"):
        load_splits(cfg(path, mask_prompt=False, valid_fraction=0.5, test_fraction=0.4), seed=0)


def test_shipped_legal_data_set() -> None:
    path = builtin_path("legal_qa")
    assert (path.parent / "DATA_CARD.md").is_file()
    splits = load_splits(DataConfig(path="builtin:legal_qa", format=DataFormat.qa), seed=42)
    total = len(splits.train) + len(splits.valid) + len(splits.test)
    assert total >= 400
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert len({r["question"] for r in records}) == len(records)
    assert all(r["source"] and r["answer"] for r in records)
