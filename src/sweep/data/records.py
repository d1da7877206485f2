"""Read JSONL records, check them, normalise them to chat messages, and split them.

Five record shapes are accepted (seeds 001, 003 and 004 use the alpaca and Q&A ones):
chat ``messages``, alpaca ``instruction``/``input``/``output``, ``question``/``answer``,
``prompt``/``completion``, and plain ``text``. All but ``text`` become a list of chat
messages so the model's own chat template formats them. Every bad record is reported
with its file and line, all at once (one bad record: one line). No mlx import here.

Lines are split on ``\\n`` only (``\\r\\n`` accepted): ``str.splitlines`` also splits on
U+2028, U+0085 and others that JSON strings may hold raw. A UTF-8 byte-order mark is
skipped. A line over :data:`MAX_LINE_BYTES` is refused without being held in memory.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from sweep.config.schema import DataConfig, DataFormat
from sweep.errors import InputError

__all__ = ["DataError", "Splits", "detect_format", "normalise", "read_jsonl", "load_splits",
           "builtin_path", "MAX_LINE_BYTES"]

log = logging.getLogger(__name__)

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
# A record is a few KiB; 8 MiB is ~2M tokens, far past any train.max_seq_length. A longer
# line is a broken file (a whole data set on one line, a binary file), read in chunks.
MAX_LINE_BYTES = 8 * 2**20
_BOM = b"\xef\xbb\xbf"
_SIGNATURES = {b"\x1f\x8b": "gzip-compressed; decompress it",
               b"\xff\xfe": "UTF-16 (it starts with a UTF-16 byte-order mark); save it as UTF-8",
               b"\xfe\xff": "UTF-16 (it starts with a UTF-16 byte-order mark); save it as UTF-8",
               b"PK\x03\x04": "a zip archive; extract the .jsonl file"}


class DataError(InputError):
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


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    return {str: "a string", list: "an array", dict: "an object"}.get(type(value),
                                                                    type(value).__name__)


def _skip_rest(f, size: int) -> int:
    """Read past the rest of an over-long line, in chunks; its size in bytes."""
    while True:
        chunk = f.readline(2**20)
        size += len(chunk)
        if not chunk or chunk.endswith(b"\n"):
            return size


_BLANK = object()


def _parse(raw: bytes) -> Tuple[Any, Optional[str]]:
    """One line's value (``_BLANK`` for a blank line), or what is wrong with it."""
    try:
        line = raw.decode("utf-8").rstrip("\r\n")  # so that JSON's column is the line's
    except UnicodeDecodeError as error:
        column = len(raw[:error.start].decode("utf-8")) + 1
        return None, f"not UTF-8 (byte 0x{raw[error.start]:02x} at column {column})"
    if not line.strip():
        return _BLANK, None
    try:
        return json.loads(line), None
    except json.JSONDecodeError as error:
        return None, f"invalid JSON ({error.msg} at column {error.colno})"
    except ValueError as error:  # an integer of more than 4300 digits
        return None, f"invalid JSON ({str(error).split(':')[0]})"
    except RecursionError:
        return None, "invalid JSON (nested too deeply)"


def read_jsonl(path: Path) -> Tuple[List[Tuple[int, Any]], List[str]]:
    """(line number, parsed value) for every non-blank line, and the errors."""
    records: List[Tuple[int, Any]] = []
    errors: List[str] = []
    try:
        with path.open("rb") as f:
            head = f.read(4)
            for signature, what in _SIGNATURES.items():
                if head.startswith(signature):
                    raise DataError(f"{path}: not a JSONL text file: it is {what}")
            f.seek(len(_BOM) if head.startswith(_BOM) else 0)
            lines = iter(lambda: f.readline(MAX_LINE_BYTES + 1), b"")
            for number, raw in enumerate(lines, start=1):
                if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
                    errors.append(f"{path}:{number}: line of {_skip_rest(f, len(raw)) / 2**20:.0f}"
                                  f" MiB, over the {MAX_LINE_BYTES // 2**20} MiB a record may "
                                  "have (JSONL holds one record a line)")
                    continue
                value, error = _parse(raw)
                if error:
                    errors.append(f"{path}:{number}: {error}")
                elif value is not _BLANK:
                    records.append((number, value))
    except OSError as error:
        raise DataError(f"data.path={path}: cannot read it ({error.strerror or error})") from None
    return records, errors


def detect_format(record: Any) -> Optional[DataFormat]:
    if not isinstance(record, dict):
        return None
    for fmt, keys in _KEYS.items():
        if all(k in record for k in keys):
            return fmt
    return None


def _check_string(value: str, what: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:  # json.loads lets "\ud83d" through; tokenizers refuse it
        char = f"\\u{ord(value[error.start]):04x}"
        raise ValueError(f"{what} holds an unpaired surrogate {char} at character "
                         f"{error.start + 1} (half of an escaped UTF-16 pair)") from None


def _text(record: Dict[str, Any], key: str, optional: bool = False) -> str:
    if key not in record:
        if optional:
            return ""
        raise ValueError(f"missing field '{key}'")
    value = record[key]
    if value is None and optional:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"field '{key}' must be a string, got {_json_type(value)}")
    if not optional and not value.strip():
        raise ValueError(f"field '{key}' is empty")
    _check_string(value, f"field '{key}'")
    return value


def _messages(record: Dict[str, Any]) -> List[Dict[str, str]]:
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        got = "an empty array" if isinstance(messages, list) else _json_type(messages)
        raise ValueError(f"field 'messages' must be a non-empty array, got {got}")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ValueError(f"messages[{i}] must be an object, got {_json_type(message)}")
        role, content = message.get("role"), message.get("content")
        if role not in _ROLES:
            said = "no 'role'" if "role" not in message else f"role {role!r}"
            raise ValueError(f"messages[{i}]: {said}; a role is one of {list(_ROLES)}")
        if not isinstance(content, str):
            raise ValueError(f"messages[{i}] ({role}) needs a string 'content', got "
                             f"{_json_type(content)}")
        if role in ("user", "assistant") and not content.strip():
            raise ValueError(f"messages[{i}] ({role}) has an empty 'content'")
        _check_string(content, f"messages[{i}] ({role})")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def normalise(record: Any, fmt: DataFormat, system_prompt: Optional[str],
              mask_prompt: bool) -> Example:
    """One record as an example; raises ValueError saying what is wrong with it."""
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object (one record a line), got {_json_type(record)}")
    if fmt is not DataFormat.auto and not all(k in record for k in _KEYS[fmt]):
        other = detect_format(record)
        if other is not None and other is not fmt:
            raise ValueError(f"keys {sorted(record)} are the {other.value} format, not "
                             f"{fmt.value} ({'/'.join(_KEYS[fmt])}); one format a file")
    if fmt is DataFormat.text:
        return {"text": _text(record, "text")}
    if fmt is DataFormat.chat:
        messages = _messages(record)
    else:
        user: Dict[str, str] = {"role": "user"}
        if fmt is DataFormat.alpaca:
            instruction = _text(record, "instruction")
            extra = _text(record, "input", optional=True)
            # the parts stay apart too, for data.template's {instruction} and {input}
            user.update(content=f"{instruction}\n\n{extra}" if extra.strip() else instruction,
                        instruction=instruction, input=extra)
            answer = _text(record, "output")
        else:
            prompt_key, answer_key = _KEYS[fmt]
            user["content"], answer = _text(record, prompt_key), _text(record, answer_key)
        messages = [user, {"role": "assistant", "content": answer}]
    if system_prompt and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": system_prompt}] + messages
    if mask_prompt and messages[-1]["role"] != "assistant":
        raise ValueError("the last message must be the assistant's (data.mask_prompt=true "
                         "trains on the last answer only)")
    return {"messages": messages}


def _unknown_format(path: Path, number: int, record: Any) -> DataError:
    if not isinstance(record, dict):
        return DataError(f"{path}:{number}: expected a JSON object (one record a line), got "
                         f"{_json_type(record)}")
    near = [f"{'/'.join(keys)} lacks {[k for k in keys if k not in record]}"
            for keys in _KEYS.values() if any(k in record for k in keys)]
    return DataError(
        f"{path}:{number}: cannot tell the format from keys {sorted(record)}; expected "
        + " or ".join("/".join(k) for k in _KEYS.values())
        + (f" ({'; '.join(near)})" if near else "")
    )


def _duplicates(path: Path, numbers: List[int], examples: List[Example]) -> None:
    first: Dict[str, int] = {}
    pairs = []
    for number, example in zip(numbers, examples):
        key = json.dumps(example, sort_keys=True)
        if key in first:
            pairs.append(f"{number} = {first[key]}")
        else:
            first[key] = number
    if pairs:
        log.warning("%s: %d duplicate record(s), kept (line %s%s); a copy in both the train "
                    "and the valid split makes val_loss look better than it is", path,
                    len(pairs), ", ".join(pairs[:5]), ", ..." if len(pairs) > 5 else "")


def _which_format(cfg: DataConfig, fmt: DataFormat, records: List[Tuple[int, Any]]) -> str:
    if fmt is DataFormat.auto:
        return ""
    if cfg.format is DataFormat.auto:
        return f" (format {fmt.value}, from line {records[0][0]})"
    return f" (data.format={fmt.value})"


def _file_format(path: Path, cfg: DataConfig, records: List[Tuple[int, Any]]) -> DataFormat:
    """``data.format``, or under ``auto`` the first record's shape. A first record of
    another shape than ``data.format`` is said once, not at every line."""
    if not records:
        return cfg.format
    number, first = records[0]
    found = detect_format(first)
    if cfg.format is DataFormat.auto:
        if found is None:
            raise _unknown_format(path, number, first)
        return found
    if found not in (None, cfg.format) and not all(k in first for k in _KEYS[cfg.format]):
        raise DataError(f"{path}:{number}: keys {sorted(first)} are the {found.value} format, "
                        f"not data.format={cfg.format.value} ({'/'.join(_KEYS[cfg.format])}); "
                        f"set data.format={found.value} or auto")
    return cfg.format


def _read_file(path: Path, cfg: DataConfig, limit: Optional[int] = None) -> List[Example]:
    if path.is_dir():
        raise DataError(f"data.path: {path} is a folder, not a JSONL file")
    if not path.exists():
        raise DataError(f"data.path: no such file {path}")
    if not path.is_file():
        raise DataError(f"data.path: {path} is not a regular file")
    records, errors = read_jsonl(path)
    fmt = _file_format(path, cfg, records)
    examples, numbers = [], []
    for number, record in records[:limit] if limit else records:
        try:
            examples.append(normalise(record, fmt, cfg.system_prompt, cfg.mask_prompt))
            numbers.append(number)
        except ValueError as error:
            errors.append(f"{path}:{number}: {error}")
    if len(errors) == 1:
        raise DataError(errors[0] + _which_format(cfg, fmt, records))
    if errors:
        shown = "\n  ".join(errors[:_MAX_LISTED])
        more = f"\n  ... and {len(errors) - _MAX_LISTED} more" if len(errors) > _MAX_LISTED else ""
        raise DataError(f"{len(errors)} bad record(s) in {path} (format {fmt.value}):\n  "
                        f"{shown}{more}")
    if not examples:
        what = "the file is empty" if path.stat().st_size == 0 else "only blank lines"
        raise DataError(f"{path}: no records ({what})")
    _duplicates(path, numbers, examples)
    return examples


def load_splits(cfg: DataConfig, seed: int) -> Splits:
    """Train/valid/test examples. A single file is shuffled by ``seed`` and split by the
    configured fractions (valid, and test when its fraction is > 0, get at least one
    record); a folder must hold train.jsonl and valid.jsonl (test optional)."""
    if cfg.path.startswith("builtin:"):
        path = builtin_path(cfg.path.split(":", 1)[1])
    else:
        path = Path(cfg.path).expanduser()
    if path.is_dir():
        missing = [n for n in ("train.jsonl", "valid.jsonl") if not (path / n).exists()]
        if missing:
            raise DataError(f"data.path={cfg.path}: the folder has no {' and no '.join(missing)} "
                            "(a folder holds train.jsonl and valid.jsonl, and may hold "
                            "test.jsonl; or name one .jsonl file to split)")
        train = _read_file(path / "train.jsonl", cfg, cfg.max_examples)
        valid = _read_file(path / "valid.jsonl", cfg)
        test = _read_file(path / "test.jsonl", cfg) if (path / "test.jsonl").exists() else []
        seen = {json.dumps(e, sort_keys=True) for e in train}
        shared = sum(json.dumps(e, sort_keys=True) in seen for e in valid)
        if shared:
            log.warning("%s: %d of the %d valid.jsonl records are also in train.jsonl; they "
                        "make val_loss look better than it is", path, shared, len(valid))
        return Splits(train, valid, test)
    if not path.exists():
        raise DataError(f"data.path: no such file {path}")
    examples = _read_file(path, cfg, cfg.max_examples)
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_valid = max(1, round(cfg.valid_fraction * len(order)))
    n_test = max(1, round(cfg.test_fraction * len(order))) if cfg.test_fraction > 0 else 0
    if len(order) - n_valid - n_test < 1:
        raise DataError(
            f"{path}: {len(order)} record(s) leave no training split after {n_valid} valid"
            + (f" and {n_test} test" if n_test else "")
            + f" (data.valid_fraction={cfg.valid_fraction}, data.test_fraction="
            f"{cfg.test_fraction})"
        )
    valid = [examples[i] for i in order[:n_valid]]
    test = [examples[i] for i in order[n_valid:n_valid + n_test]]
    train = [examples[i] for i in order[n_valid + n_test:]]
    return Splits(train, valid, test)
