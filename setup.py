"""Packaging hook: a wheel carries a copy of the project's ``conf/`` as ``sweep/conf``.

``conf/`` at the project root stays the one source of truth, and an editable install
(``pip install -e .``) reads it there, so edits take effect at once. Package data cannot
reach outside a package, so ``build_py`` copies the tree into the build; everything else
about the package is in ``pyproject.toml``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

CONF = Path(__file__).resolve().parent / "conf"


class BuildPyWithConf(build_py):
    """``build_py``, then ``conf/`` copied to ``<build>/sweep/conf`` (not when editable)."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return  # sweep.config finds the root conf/ of the checkout
        if not (CONF / "config.yaml").is_file():
            raise SystemExit(f"sweep: {CONF / 'config.yaml'} not found; a wheel needs conf/")
        target = Path(self.build_lib) / "sweep" / "conf"
        shutil.rmtree(target, ignore_errors=True)  # a reused build/ keeps no deleted option
        shutil.copytree(CONF, target, ignore=shutil.ignore_patterns("__pycache__", ".*"))


setup(cmdclass={"build_py": BuildPyWithConf})
