"""What each board of a farm run is doing: a live table (rich) on stderr, or plain lines with ``--no-progress``."""

from __future__ import annotations

import sys
import threading
from dataclasses import dataclass


@dataclass
class _Row:
    doing: str = ""
    done: int = 0
    failed: int = 0
    state: str = "starting"


class FarmProgress:
    """``update(board, doing=..., state=..., done=+n, failed=+n)`` from any thread. Enabled: a rich Live table
    (board, doing, done, failed, state); disabled: one plain line per state change or finished group."""

    def __init__(self, boards: list[str], enabled: bool = True):
        self.rows = {name: _Row() for name in boards}
        self.enabled = enabled
        self._lock = threading.Lock()
        self._live = None

    def __enter__(self):
        if self.enabled:
            from rich.console import Console
            from rich.live import Live

            self._live = Live(self._table(), console=Console(stderr=True), refresh_per_second=4, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc):
        if self._live is not None:
            self._live.update(self._table())
            self._live.__exit__(*exc)
            self._live = None

    def update(self, board: str, *, doing: str | None = None, state: str | None = None, done: int = 0,
               failed: int = 0) -> None:
        with self._lock:
            row = self.rows.setdefault(board, _Row())
            if doing is not None:
                row.doing = doing
            row.done += done
            row.failed += failed
            changed = state is not None and state != row.state
            if state is not None:
                row.state = state
            if self._live is not None:
                self._live.update(self._table())
            elif changed or done or failed:
                what = (f"done {doing}" if done and doing else f"failed {doing}" if failed and doing
                        else f"{row.state} {row.doing}" if row.state in ("connecting", "running") and row.doing
                        else row.state)
                print(f"board {board}: {what} ({row.done} done, {row.failed} failed)", file=sys.stderr, flush=True)

    def _table(self):
        from rich.markup import escape
        from rich.table import Table

        table = Table("board", "doing", "done", "failed", "state", title="farm", title_justify="left")
        for name, row in self.rows.items():
            state = {"quarantined": f"[red]{escape(row.state)}[/red]", "idle": "[dim]idle[/dim]"}.get(
                row.state.split(":")[0], escape(row.state))
            table.add_row(escape(name), escape(row.doing), str(row.done), str(row.failed), state)
        return table
