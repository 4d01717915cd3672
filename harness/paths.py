"""Where the project's data lives: shipped files (targets, zoo data) and the per-user cache."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

_HERE = Path(__file__).resolve().parent


def _targets_dir() -> Path:
    """The device profiles: ``harness/targets/`` in an installed package (setup.py puts the repository's
    ``targets/`` there), else the checkout's top-level ``targets/`` (a source tree or an editable install)."""
    installed = _HERE / "targets"
    return installed if installed.is_dir() else _HERE.parent / "targets"


TARGETS_DIR = _targets_dir()
ZOO_DIR = _HERE / "models" / "zoo"
#: The board package (``harness/board``): the files shipped to devices (see ``harness/device/ship.py``).
BOARD_DIR = _HERE / "board"
DEFAULT_DB = Path("results") / "results.db"


def cache_dir() -> Path:
    """Artifact and zoo cache: ``$SPARSEBENCH_CACHE`` or ``~/.cache/sparsebench``."""
    root = os.environ.get("SPARSEBENCH_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "sparsebench")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
