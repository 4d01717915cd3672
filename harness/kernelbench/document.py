"""The suite's JSON document: its format tag and an atomic writer."""

from __future__ import annotations

import json
from pathlib import Path

#: Format of the JSON document `kernel_suite` returns (bump on incompatible changes).
SUITE_FORMAT = "sparsebench-kernels/1"


def write_json(doc: dict, path: Path) -> Path:
    """Write the suite's document as indented JSON (atomically: a partial file never replaces a good one)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    tmp.replace(path)
    return path
