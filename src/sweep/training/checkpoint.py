"""A run's whole training state on disk: written atomically, read back whole or not at all.

A checkpoint is a folder ``checkpoints/mb-000120`` (named by the micro-batches trained):

- ``adapters.safetensors``, ``adapter_config.json``: the adapter as it is (mlx-lm loads it);
- ``optimizer.safetensors``: the optimizer's state (moments, step count, learning rate);
- ``extra.safetensors``: gradients accumulated in an unfinished optimizer step and the best
  weights so far (either may be absent);
- ``state.json``: counters, the position in the data order, the validation history, the
  config fingerprint, and the SHA-256 of every other file.

Nothing is pickled. A checkpoint is written into a hidden folder that is renamed into
place, and only then does ``checkpoints/latest`` name it; a kill at any moment leaves the
previous checkpoint whole and named. Reading checks every file against its digest, so a
truncated or altered file is refused (:class:`CheckpointError`, one line naming it).

The data order and the random state need not be saved: the batches follow
``seed`` (a resumed run skips the ones already trained) and the dropout masks of each
micro-batch are drawn from a key derived from ``seed`` and its number.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import mlx.core as mx

from sweep.errors import InputError

__all__ = ["Checkpoint", "Checkpoints", "CheckpointError", "write", "read", "candidates", "latest",
           "FORMAT", "STATE_FILE"]

FORMAT = 1
STATE_FILE = "state.json"
POINTER = "latest"
ARRAY_FILES = ("adapters", "optimizer", "extra")


class CheckpointError(InputError):
    """A checkpoint that cannot be resumed from (missing, partial, corrupt, or made for
    another config); the message names the file."""


@dataclass
class Checkpoint:
    path: Path
    state: Dict[str, Any]  # counters and history (state.json)
    arrays: Dict[str, Dict[str, mx.array]]  # file stem -> flat name -> array


class Checkpoints:
    """Where a run writes its checkpoints (``root``), what each also records (``meta``:
    the config fingerprint, the tracking run), and how many are kept."""

    def __init__(self, root: Path, adapter_config: Dict[str, Any],
                 meta: Optional[Dict[str, Any]] = None, keep: int = 2):
        self.root, self.adapter_config = Path(root), adapter_config
        self.meta, self.keep = dict(meta or {}), keep

    def save(self, state: Dict[str, Any], arrays: Dict[str, Dict[str, mx.array]]) -> Path:
        return write(self.root, {**self.meta, **state}, arrays, self.adapter_config, self.keep)


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write(root: Path, state: Dict[str, Any], arrays: Dict[str, Dict[str, mx.array]],
          adapter_config: Dict[str, Any], keep: int = 2) -> Path:
    """Write a checkpoint under ``root`` (``<root>/mb-<iteration>``), point ``latest`` at
    it, and remove all but the newest ``keep``. Returns its folder."""
    from sweep.testing.faults import point

    root.mkdir(parents=True, exist_ok=True)
    name = f"mb-{int(state['iteration']):07d}"
    final = root / name
    tmp = root / f".{name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    files: Dict[str, str] = {}
    for stem, tree in arrays.items():
        if stem not in ARRAY_FILES:
            raise ValueError(f"unknown checkpoint file {stem}")
        if not tree and stem != "adapters":
            continue
        path = tmp / f"{stem}.safetensors"
        mx.save_safetensors(str(path), tree)
        files[path.name] = _digest(path)
    config_file = tmp / "adapter_config.json"
    config_file.write_text(json.dumps(adapter_config, indent=2))
    files[config_file.name] = _digest(config_file)
    (tmp / STATE_FILE).write_text(json.dumps({"format": FORMAT, **state, "files": files},
                                             indent=1))
    for path in tmp.iterdir():
        with open(path, "rb") as f:
            os.fsync(f.fileno())
    point("checkpoint_write")  # written, not yet in place
    if final.exists():  # the same micro-batch again (a stop right after a periodic save)
        shutil.rmtree(final)
    tmp.rename(final)
    _fsync_folder(root)
    pointer = root / f".{POINTER}.tmp-{os.getpid()}"
    pointer.write_text(name + "\n")
    pointer.replace(root / POINTER)
    _fsync_folder(root)
    for old in candidates(root)[max(keep, 1):]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def candidates(root: Path) -> List[Path]:
    """The checkpoint folders under ``root``, newest first (``latest``'s first)."""
    if not root.is_dir():
        return []
    found = sorted((p for p in root.glob("mb-*") if p.is_dir()), reverse=True)
    pointer = root / POINTER
    if pointer.is_file():
        named = root / pointer.read_text().strip()
        if named in found:
            found.remove(named)
            found.insert(0, named)
    return found


def latest(root: Path) -> Optional[Path]:
    found = candidates(root)
    return found[0] if found else None


def read(path: Path) -> Checkpoint:
    """Read the checkpoint folder ``path``, checking every file; :class:`CheckpointError`
    if anything is wrong."""
    path = Path(path)
    state_file = path / STATE_FILE
    if not state_file.is_file():
        raise CheckpointError(f"{state_file}: no such file (not a checkpoint, or a partial one)")
    try:
        state = json.loads(state_file.read_text())
    except (ValueError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{state_file}: not valid JSON ({error}); the checkpoint is "
                              "partial or corrupt") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{state_file}: format {state.get('format') if isinstance(state, dict) else '?'}"
                              f", this version reads format {FORMAT}")
    arrays: Dict[str, Dict[str, mx.array]] = {}
    for name, digest in state.get("files", {}).items():
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"{file}: missing; the checkpoint is partial")
        if _digest(file) != digest:
            raise CheckpointError(f"{file}: its SHA-256 is not the one {state_file} records; "
                                  "the file is truncated or was changed")
        if file.suffix == ".safetensors":
            arrays[file.stem] = dict(mx.load(str(file)))
    if "adapters" not in arrays:
        raise CheckpointError(f"{path / 'adapters.safetensors'}: missing; the checkpoint is "
                              "partial")
    return Checkpoint(path, state, arrays)


# -- which checkpoint a run resumes from ---------------------------------------------

TRAINING_KEYS = ("seed", "model.", "lora.", "optimizer.", "scheduler.", "data.", "train.")
NOT_TRAINING = ("train.resume", "train.stop_after_epochs", "train.finish_winner",
                "train.save_every", "train.save_every_minutes",
                "train.keep_checkpoints", "train.report_every", "train.compile",
                "model.path", "model.tokenizer_path")


def training_config(flat: Dict[str, Any]) -> Dict[str, Any]:
    """The keys of a flattened config that decide what training computes: a checkpoint
    resumes only a run with the same ones."""
    return {k: v for k, v in sorted(flat.items())
            if k.startswith(TRAINING_KEYS) and k not in NOT_TRAINING}


def fingerprint(config: Dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def data_digest(dataset: Any) -> str:
    """The SHA-256 of a tokenized split (token ids and prompt lengths, in order)."""
    h = hashlib.sha256()
    for i in range(len(dataset)):
        ids, offset = dataset[i]
        h.update(json.dumps([list(map(int, ids)), int(offset)]).encode())
    return h.hexdigest()[:16]


def differences(saved: Dict[str, Any], current: Dict[str, Any]) -> List[str]:
    keys = sorted(set(saved) | set(current))
    return [f"{k}={current.get(k)!r} (the checkpoint's: {saved.get(k)!r})" for k in keys
            if json.dumps(saved.get(k), default=str) != json.dumps(current.get(k), default=str)]


def _state_of(folder: Path) -> Optional[Dict[str, Any]]:
    try:
        return json.loads((folder / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None


def _earlier_runs(output_dir: Path) -> List[Path]:
    """``checkpoints`` folders of the other runs beside this one (``outputs/runs/<day>/
    <time>``: the same day's and earlier days'), newest first."""
    here = output_dir.resolve()
    found = set(here.parent.glob("*/checkpoints")) | set(here.parent.parent.glob("*/*/checkpoints"))
    found.discard(here / "checkpoints")
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def find_resume(resume: Optional[str], output_dir: Path, config: Dict[str, Any],
                log: Any) -> Optional[Checkpoint]:
    """The checkpoint that ``train.resume`` names, read and checked, or None to start from
    the beginning. ``auto``: the newest whole checkpoint of this run's folder, else of the
    newest earlier run beside it with the same training config. A path: that checkpoint
    (a checkpoint folder, or a ``checkpoints`` folder for its newest). A checkpoint made
    for another training config is refused (:class:`CheckpointError`, naming the keys);
    a partial or corrupt one is refused in one line and an older one (or none) is used."""
    if resume is None:
        return None
    if str(resume) == "auto":
        own = candidates(output_dir / "checkpoints")
        for folder in own:
            state = _state_of(folder)
            if state is not None and state.get("fingerprint") != fingerprint(config):
                raise CheckpointError(
                    f"train.resume=auto: {folder} was made for another training config: "
                    + "; ".join(differences(state.get("config", {}), config)[:3]))
        if not own:
            for root in _earlier_runs(output_dir):
                state = _state_of(latest(root) or root)
                if state is not None and state.get("fingerprint") == fingerprint(config):
                    own = candidates(root)
                    break
        return _first_whole(own, log)
    path = Path(resume).expanduser()
    if not path.exists():
        raise CheckpointError(f"train.resume={resume}: no such checkpoint")
    # a checkpoint folder, or a checkpoints folder: its checkpoints, newest first
    folders = [path] if (path / STATE_FILE).exists() else (candidates(path) or [path])
    state = _state_of(folders[0])
    if state is not None and state.get("fingerprint") != fingerprint(config):
        raise CheckpointError(f"train.resume={resume}: made for another training config: "
                              + "; ".join(differences(state.get("config", {}), config)[:3]))
    return _first_whole(folders, log)


def _first_whole(folders: List[Path], log: Any) -> Optional[Checkpoint]:
    for folder in folders:
        try:
            return read(folder)
        except CheckpointError as error:
            log.warning("refusing checkpoint %s; %s", error,
                        "trying an older one" if folder != folders[-1] else
                        "training starts from the beginning")
    return None
