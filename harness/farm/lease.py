"""The lease held on a board itself: one measurement at a time on a board, across runs and hosts.

The lease is a directory made atomically with ``mkdir`` under the board's remote root (``board.lease``; on the local
transport ``sparsebench-board.lease`` in its temporary root) holding ``owner``: a JSON record (host, pid, run_id,
started, refreshed, ttl_s, token). Everything happens in one small POSIX shell script run on the board through
``transport.run(["sh", "-c", ...])``, so the same code works for the local and the ssh transport, and the clock that
ages a lease is the board's (the ``owner`` file's mtime), not the hosts'.

A lease is stale -- taken over -- when its owner has not refreshed it for ``ttl_s`` seconds (or the owner ran on
this host and its process is gone) AND no job of that owner is alive on the board: the work directories carry the
``.sparsebench-job`` marker (which harness process made them) and ``.sparsebench-pid`` (the runner's process group);
a live runner pid means the owner is still measuring, whatever its refreshes say. Takeover is race-free: under a
short ``board.lease.takeover`` lock (mkdir), the stale lease is renamed away only if its owner record is still the
one judged stale, then the new lease is made with mkdir -- of concurrent acquirers exactly one wins.

Transports with ``exclusive = True`` (TVM's RPC tracker hands a server to one client at a time: that is the lease)
need none: :class:`BoardLease` does nothing for them.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import tempfile
import time

from ..errors import HarnessError
from ..transports.base import JOB_MARKER, JOB_PID, Transport, TransportError, pid_alive

DEFAULT_TTL_S = 120.0

_SCRIPT = r"""
op=$1; root=$2; name=$3; mode=$4; token=$5; owner=$6; expect=$7
case $root in "~") root=$HOME;; "~/"*) root=$HOME/${root#"~/"};; /*) ;; *) root=$HOME/$root;; esac
lease=$root/$name
mtime() { stat -c %Y "$1" 2>/dev/null || date -r "$1" +%s 2>/dev/null || echo 0; }
show() {
  echo "OWNER $(cat "$lease/owner" 2>/dev/null | tr -d '\n')"
  if [ -f "$lease/owner" ]; then t=$(mtime "$lease/owner"); else t=$(mtime "$lease"); fi
  echo "AGE $(( $(date +%s) - t ))"
  if [ "$mode" = local ]; then set -- "$root"/sparsebench-*/JOBMARK; else set -- "$root"/*/*/JOBMARK; fi
  for m in "$@"; do
    [ -f "$m" ] || continue
    p=$(cat "${m%/JOBMARK}/JOBPID" 2>/dev/null)
    case $p in ''|*[!0-9]*) continue;; esac
    kill -0 "$p" 2>/dev/null && echo "JOB $(tr -d '\n' < "$m")"
  done
}
write() { printf '%s\n' "$owner" > "$lease/owner.$token" && mv -f "$lease/owner.$token" "$lease/owner"; }
ours() { case $(cat "$lease/owner" 2>/dev/null) in *"\"$token\""*) return 0;; esac; return 1; }
case $op in
acquire)
  mkdir -p "$root" || exit 3
  if mkdir "$lease" 2>/dev/null; then write && echo ACQUIRED; else echo BUSY; show; fi;;
takeover)
  tk=$lease.takeover
  if ! mkdir "$tk" 2>/dev/null; then
    [ $(( $(date +%s) - $(mtime "$tk") )) -gt 60 ] && rmdir "$tk" 2>/dev/null
    echo BUSY; show; exit 0
  fi
  cur=$(cat "$lease/owner" 2>/dev/null | tr -d '\n')
  if [ -d "$lease" ] && [ "$cur" = "$expect" ]; then
    mv "$lease" "$lease.stale.$token" && rm -rf "$lease.stale.$token"
  fi
  if mkdir "$lease" 2>/dev/null; then write && echo ACQUIRED; else echo BUSY; show; fi
  rmdir "$tk";;
refresh)
  if ours; then write && echo REFRESHED; else echo LOST; show; fi;;
release)
  if ours; then mv "$lease" "$lease.stale.$token" && rm -rf "$lease.stale.$token"; echo RELEASED
  else echo NOTOURS; fi;;
show)
  if [ -d "$lease" ]; then echo HELD; show; else echo FREE; fi;;
esac
exit 0
""".replace("JOBMARK", JOB_MARKER).replace("JOBPID", JOB_PID)


class BoardBusy(HarnessError):
    """The board is leased by another run (``holder``: its owner record); the message names it and what to do."""

    def __init__(self, message: str, holder: dict | None = None):
        super().__init__(message)
        self.holder = holder or {}


def _where(transport: Transport) -> tuple[str, str, str]:
    """(root, lease directory name, job layout) of the lease on this transport's board."""
    if transport.name == "local":
        return getattr(transport, "_root", None) or tempfile.gettempdir(), "sparsebench-board.lease", "local"
    return getattr(transport, "remote_root", None) or "~/.cache/sparsebench", "board.lease", "ssh"


def _call(transport: Transport, op: str, *, token: str = "", owner: str = "", expect: str = "") -> tuple[str, dict]:
    """Run one lease operation on the board: (its first word, the holder it showed: owner record, age_s, jobs)."""
    root, name, mode = _where(transport)
    res = transport.run(["sh", "-c", _SCRIPT, "sh", op, root, name, mode, token, owner, expect], timeout_s=60)
    lines = res.stdout.strip().splitlines()
    if not res.ok or not lines:
        raise TransportError("lease", f"device {transport.device}: the board lease under {root} failed "
                                      f"({res.tail(2) or f'exit {res.exit_code}'}); check that the remote root is "
                                      "writable (remote_root in farm.toml)", res)
    shown: dict = {"owner": None, "raw": "", "age_s": 0.0, "jobs": []}
    for line in lines[1:]:
        word, _, rest = line.partition(" ")
        if word == "OWNER":
            shown["raw"] = rest
            try:
                shown["owner"] = json.loads(rest) if rest else None
            except ValueError:
                shown["owner"] = None
        elif word == "AGE" and rest.lstrip("-").isdigit():
            shown["age_s"] = float(rest)
        elif word == "JOB":
            try:
                shown["jobs"].append(json.loads(rest))
            except ValueError:
                pass
    return lines[0].strip(), shown


def _stale(shown: dict, ttl_s: float) -> bool:
    """Whether the lease shown may be taken over: no live job of its owner on the board, and either not refreshed
    for ``ttl_s`` or its owner ran on this host and is gone."""
    owner = shown["owner"] or {}
    mine = [j for j in shown["jobs"] if j.get("host") == owner.get("host") and j.get("pid") == owner.get("pid")]
    if mine:
        return False
    if shown["age_s"] > ttl_s:
        return True
    try:
        pid = int(owner.get("pid", 0))
    except (TypeError, ValueError):
        return False
    return bool(owner) and owner.get("host") == socket.gethostname() and not pid_alive(pid)


def _holder(shown: dict) -> dict:
    owner = dict(shown["owner"] or {"run_id": None, "host": None, "pid": None})
    owner.pop("token", None)
    owner["age_s"] = shown["age_s"]
    return owner


def lease_holder(transport: Transport) -> dict | None:
    """The owner record (host, pid, run_id, started, refreshed, ttl_s, age_s) of the live lease on the board, or
    None when the board is free, its lease is stale, or the transport needs no lease."""
    if getattr(transport, "exclusive", False):
        return None
    word, shown = _call(transport, "show")
    if word != "HELD":
        return None
    ttl = (shown["owner"] or {}).get("ttl_s", DEFAULT_TTL_S)
    if _stale(shown, float(ttl) if isinstance(ttl, (int, float)) else DEFAULT_TTL_S):
        return None
    return _holder(shown)


def describe_holder(holder: dict) -> str:
    """``run R from host H pid P since T`` for messages and the status table."""
    started = holder.get("started")
    since = (time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(started)) if isinstance(started, (int, float))
             else "an unknown time")
    return (f"run {holder.get('run_id') or '?'} from host {holder.get('host') or '?'} pid {holder.get('pid') or '?'} "
            f"since {since}")


class BoardLease:
    """The lease on one board for one run: ``with BoardLease(transport, board="pi5-a", run_id=...):`` ... .

    :meth:`acquire` raises :class:`BoardBusy` when another live run holds the board; :meth:`refresh` (before and
    after each job) keeps it from going stale; :meth:`release` gives it back (best effort)."""

    def __init__(self, transport: Transport, *, board: str, run_id: str, ttl_s: float = DEFAULT_TTL_S):
        self.transport = transport
        self.board = board
        self.run_id = run_id
        self.ttl_s = float(ttl_s)
        self.token = secrets.token_hex(8)
        self.started: float | None = None
        self.held = False
        self.exclusive = bool(getattr(transport, "exclusive", False))

    def _owner(self) -> str:
        now = time.time()
        return json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "run_id": self.run_id,
                           "board": self.board, "started": self.started or now, "refreshed": now,
                           "ttl_s": self.ttl_s, "token": self.token}, separators=(",", ":"))

    def _busy(self, shown: dict) -> BoardBusy:
        holder = _holder(shown)
        return BoardBusy(f"board {self.board} ({self.transport.device}) is in use by {describe_holder(holder)}; "
                         f"wait for that run to finish or choose other boards (a lease not refreshed for "
                         f"{self.ttl_s:g} s with no job of its run alive on the board is taken over)", holder)

    def acquire(self) -> None:
        """Take the board's lease, taking over a stale one; :class:`BoardBusy` when a live run holds it."""
        if self.exclusive or self.held:
            return
        self.started = time.time()
        word, shown = _call(self.transport, "acquire", token=self.token, owner=self._owner())
        if word != "ACQUIRED" and _stale(shown, self.ttl_s):
            word, shown = _call(self.transport, "takeover", token=self.token, owner=self._owner(),
                                expect=shown["raw"])
        if word != "ACQUIRED":
            raise self._busy(shown)
        self.held = True

    def refresh(self) -> None:
        """Mark the lease as alive now; :class:`BoardBusy` when it was taken over meanwhile (this run was too slow
        to refresh and had no job running on the board)."""
        if self.exclusive or not self.held:
            return
        word, shown = _call(self.transport, "refresh", token=self.token, owner=self._owner())
        if word != "REFRESHED":
            self.held = False
            raise self._busy(shown)

    def release(self) -> None:
        """Give the lease back (only ours: a lease taken over meanwhile is left alone). Never raises."""
        if self.exclusive or not self.held:
            return
        self.held = False
        try:
            _call(self.transport, "release", token=self.token)
        except (HarnessError, OSError):
            pass  # unreachable board: the lease goes stale and is taken over after ttl_s

    def __enter__(self) -> "BoardLease":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
