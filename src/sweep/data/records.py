"""Read JSONL records, check them, normalise them to chat messages, and split them.

Five record shapes are accepted (seeds 001, 003 and 004 use the alpaca and Q&A ones):
chat ``messages``, alpaca ``instruction``/``input``/``output``, ``question``/``answer``,
``prompt``/``completion``, and plain ``text``. All but ``text`` become a list of chat
messages so the model's own chat template formats them. Every bad record is reported
with its file and line, all at once. No mlx import here.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from sweep.config.schema import DataConfig, DataFormat
from sweep.errors import SweepError

__all__ = ["DataError", "Splits", "detect_format", "normalise", "read_jsonl", "load_splits",
           "builtin_path"]

Example = Dict[str, Any]  # {"messages": [...]} or {"text": "..."}

_KEYS = {
    DataFormat.chat: ("messages",),
    DataFormat.alpaca: ("instruction", "output"),
    DataFormat.qa: ("question", "answer"),
    DataFormat.completion: ("prompt", "completion"),
    DataFormat.text: ("text",),
}
_ROLES = ("system", "user", "assistant", "tool")
_MAX_LISTED = 20


class DataError(SweepError):
    """Bad data: the message names the file and line of every bad record."""


@dataclass
class Splits:
    train: List[Example]
    valid: List[Example]
    test: List[Example]


def builtin_path(name: str) -> Path:
    path = Path(__file__).parent / name
    files = sorted(path.glob("*.jsonl")) if path.is_dir() else []
    if len(files) != 1:
        raise DataError(f"data.path=builtin:{name}: no such built-in data set")
    return files[0]


def read_jsonl(path: Path) -> Tuple[List[Tuple[int, Any]], List[str]]:
    """(line number, parsed value) for every non-blank line, and the parse errors."""
    records, errors = [], []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not UTF-8 text ({error})") from None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append((number, json.loads(line)))
        except json.JSONDecodeError as error:
            errors.append(f"{path}:{number}: invalid JSON ({error.msg} at column {error.colno})")
    return records, errors


def detect_format(record: Any) -> Optional[DataFormat]:
    if not isinstance(record, dict):
        return None
    for fmt, keys in _KEYS.items():
        if all(k in record for k in keys):
            return fmt
    return None


def _text(record: Dict[str, Any], key: str, optional: bool = False) -> str:
    value = record.get(key, "" if optional else None)
    if value is None:
        raise ValueError(f"missing field '{key}'")
    if not isinstance(value, str):
        raise ValueError(f"field '{key}' must be a string, got {type(value).__name__}")
    if not optional and not value.strip():
        raise ValueError(f"field '{key}' is empty")
    return value


def normalise(record: Any, fmt: DataFormat, system_prompt: Optional[str],
              mask_prompt: bool) -> Example:
    """One record as an example; raises ValueError saying what is wrong with it."""
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    if fmt is DataFormat.text:
        return {"text": _text(record, "text")}
    if fmt is DataFormat.chat:
        messages = record.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ValueError("field 'messages' must be a non-empty list")
        for i, message in enumerate(messages):
            if not isinstance(message, dict) or message.get("role") not in _ROLES:
                raise ValueError(f"messages[{i}] needs a 'role' in {list(_ROLES)}")
            if not isinstance(message.get("content"), str):
                raise ValueError(f"messages[{i}] needs a string 'content'")
        messages = [{"role": m["role"], "content": m["content"]} for m in messages]
    else:
        if fmt is DataFormat.alpaca:
            prompt = _text(record, "instruction")
            extra = _text(record, "input", optional=True)
            prompt = f"{prompt}\n\n{extra}" if extra.strip() else prompt
            answer = _text(record, "output")
        else:
            prompt_key, answer_key = _KEYS[fmt]
            prompt, answer = _text(record, prompt_key), _text(record, answer_key)
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
    if system_prompt and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": system_prompt}] + messages
    if mask_prompt and messages[-1]["role"] != "assistant":
        raise ValueError("the last message must be the assistant's (data.mask_prompt=true "
                         "trains on the last answer only)")
    return {"messages": messages}


def _read_file(path: Path, cfg: DataConfig, limit: Optional[int] = None) -> List[Example]:
    if not path.is_file():
        raise DataError(f"data.path: no such file {path}")
    records, errors = read_jsonl(path)
    fmt = cfg.format
    if fmt is DataFormat.auto and records:
        fmt = detect_format(records[0][1]) or DataFormat.auto
        if fmt is DataFormat.auto:
            keys = list(records[0][1]) if isinstance(records[0][1], dict) else records[0][1]
            raise DataError(
                f"{path}:{records[0][0]}: cannot tell the format from keys {keys}; expected "
                + " or ".join("/".join(k) for k in _KEYS.values())
            )
    examples = []
    for number, record in records[:limit] if limit else records:
        try:
            examples.append(normalise(record, fmt, cfg.system_prompt, cfg.mask_prompt))
        except ValueError as error:
            errors.append(f"{path}:{number}: {error}")
    if errors:
        shown = "\n  ".join(errors[:_MAX_LISTED])
        more = f"\n  ... and {len(errors) - _MAX_LISTED} more" if len(errors) > _MAX_LISTED else ""
        raise DataError(f"{len(errors)} bad record(s) in {path} (format {fmt.value}):\n  "
                        f"{shown}{more}")
    if not examples:
        raise DataError(f"{path}: no records")
    return examples


def load_splits(cfg: DataConfig, seed: int) -> Splits:
    """Train/valid/test examples. A single file is shuffled by ``seed`` and split by the
    configured fractions; a folder must hold train.jsonl and valid.jsonl (test optional)."""
    if cfg.path.startswith("builtin:"):
        path = builtin_path(cfg.path.split(":", 1)[1])
    else:
        path = Path(cfg.path).expanduser()
    if path.is_dir():
        train = _read_file(path / "train.jsonl", cfg, cfg.max_examples)
        valid = _read_file(path / "valid.jsonl", cfg)
        test = _read_file(path / "test.jsonl", cfg) if (path / "test.jsonl").exists() else []
        return Splits(train, valid, test)
    examples = _read_file(path, cfg, cfg.max_examples)
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_valid = max(1, round(cfg.valid_fraction * len(order)))
    n_test = round(cfg.test_fraction * len(order))
    if len(order) - n_valid - n_test < 1:
        raise DataError(
            f"{path}: {len(order)} record(s) leave no training split with "
            f"data.valid_fraction={cfg.valid_fraction} and data.test_fraction={cfg.test_fraction}"
        )
    valid = [examples[i] for i in order[:n_valid]]
    test = [examples[i] for i in order[n_valid:n_valid + n_test]]
    train = [examples[i] for i in order[n_valid + n_test:]]
    return Splits(train, valid, test)
