"""OmegaConf resolvers the config tree uses (registered by :func:`sweep.config.register`).

``${sweep_data_id:${data.name},${data.path}}`` names the data in the automatic study
name: the built-in set by its name (``legal_qa``); a user's file by its group name, its
file name and a digest of its absolute path (``jsonl-contracts-3fa2c1``), so two data files
never share one study, and a study resumes only on the data it was run on.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

__all__ = ["data_id", "register_resolvers"]


def data_id(name: str, path: str) -> str:
    path = str(path)
    if path.startswith("builtin:"):
        return str(name)
    resolved = Path(path).expanduser().resolve()
    digest = hashlib.sha1(str(resolved).encode()).hexdigest()[:6]
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", resolved.stem).strip("-") or "data"
    return f"{name}-{stem}-{digest}"


def register_resolvers() -> None:
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver("sweep_data_id", data_id, replace=True)
