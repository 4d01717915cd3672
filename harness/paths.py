"""Where the project's data lives: shipped files (targets, zoo data) and the per-user cache."""

from __future__ import annotations

import os
from pathlib import Path

#: Repository / install root: holds ``targets/`` and ``schedules/`` next to ``harness/``.
ROOT = Path(__file__).resolve().parent.parent
TARGETS_DIR = ROOT / "targets"
ZOO_DIR = Path(__file__).resolve().parent / "models" / "zoo"
#: The board package (``harness/board``): the files shipped to devices (see ``harness/device/ship.py``).
BOARD_DIR = Path(__file__).resolve().parent / "board"
DEFAULT_DB = Path("results") / "results.db"


def cache_dir() -> Path:
    """Artifact and zoo cache: ``$SPARSEBENCH_CACHE`` or ``~/.cache/sparsebench``."""
    root = os.environ.get("SPARSEBENCH_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "sparsebench")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path
