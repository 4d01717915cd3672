"""Shipping the board package (``harness/board``) to a device, and the command that runs one of its modules there.

Everyone who runs code on a board goes through here: the model runner (``session.py``), the doctor's probe, the
emulated verify (through the session) and the kernel timer. The package lands in the job's work directory as
``<workdir>/sparsebench_board/`` and runs as ``python -m sparsebench_board.<module>`` with the work directory as
the current directory, so nothing is installed on the device and nothing from the host package is needed there.
"""

from __future__ import annotations

from ..board import PACKAGE, SHIPPED
from ..paths import BOARD_DIR
from ..transports import Transport


def upload_board(transport: Transport, workdir: str) -> str:
    """Upload every file in :data:`~harness.board.SHIPPED` into ``workdir/sparsebench_board/`` (same sub-folders);
    return the package folder's path on the device. Run its modules with :func:`board_command` and ``cwd=workdir``."""
    root = transport.mkdir(workdir, PACKAGE)
    folders = {"": root}
    for rel in SHIPPED:
        parent, _, name = rel.rpartition("/")
        if parent not in folders:
            where = root
            for part in parent.split("/"):
                where = transport.mkdir(where, part)
            folders[parent] = where
        transport.put(BOARD_DIR / rel, folders[parent], name)
    return root


def board_command(python: str, module: str, *args: str) -> list[str]:
    """``[python, "-m", "sparsebench_board.<module>", *args]``: run it with ``cwd`` = the work directory that
    :func:`upload_board` shipped into. ``module`` is a shipped top-level module (``runner``, ``timer``, ``probe``)."""
    if f"{module}.py" not in SHIPPED:
        known = ", ".join(sorted(rel[:-3] for rel in SHIPPED if "/" not in rel and rel != "__init__.py"))
        raise ValueError(f"unknown board module {module!r}; known: {known}")
    return [python, "-m", f"{PACKAGE}.{module}", *args]
