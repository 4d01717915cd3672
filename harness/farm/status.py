"""``sparsebench farm status``: the doctor's checks for every board of a farm, in parallel, as one table.

Each board is probed the way ``sparsebench doctor`` probes one device (the board package's probe, read by
:func:`harness.doctor.diagnose`), plus what only a farm needs: does the machine fit the board's profile (an x86_64
host listed as ``rpi5`` would get aarch64 artifacts), and does another run hold the board's lease. A board is
usable when it answers, its runner Python has numpy and a matching TVM runtime, its machine fits the profile and
nobody else holds it; each problem is one ``what -- fix`` line. Board faults never raise: they become problems.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ..config import TargetProfile
from ..errors import EXIT_OK, EXIT_ROWS_ERROR, HarnessError
from .inventory import Board, load_farm

#: uname -m spellings -> one name per architecture (a profile's mtriple starts with one of these)
_ARCH = {"arm64": "aarch64", "aarch64": "aarch64", "amd64": "x86_64", "x86_64": "x86_64", "x64": "x86_64",
         "i386": "x86", "i486": "x86", "i586": "x86", "i686": "x86", "riscv64": "riscv64"}


def _arch(text: str) -> str:
    text = text.lower()
    if text in _ARCH:
        return _ARCH[text]
    if re.match(r"^(arm|thumb)", text):  # armv7l, armv7a, armv8l (32-bit userland), armhf
        return "arm32"
    return text


def profile_mismatch(profile: TargetProfile, machine: str | None) -> str | None:
    """None when the board's ``uname -m`` fits the profile's TVM target (its mtriple's architecture), else one
    sentence naming both, e.g. "board reports x86_64 but profile rpi5 targets aarch64"."""
    triple = str(profile.tvm_target.get("mtriple", "") or "")
    if not machine or not triple:
        return None
    want, have = _arch(triple.split("-")[0]), _arch(machine)
    if want == have:
        return None
    return f"board reports {machine} but profile {profile.name} targets {triple.split('-')[0]} (mtriple {triple})"


@dataclass
class BoardStatus:
    """What one board said (None where it could not tell) and whether a run may use it now."""

    board: str
    url: str
    profile: str
    usable: bool = False
    reachable: bool = False
    python: str | None = None  # the runner Python's version
    tvm: str | None = None  # the TVM runtime's version in that Python
    machine: str | None = None  # uname -m
    sensors: str | None = None  # power sensors found ("none" when none)
    load: float | None = None  # 1-minute load average
    governor: str | None = None  # cpufreq governors, e.g. "performance x4"
    holder: dict | None = None  # the owner record of another run's live lease on the board
    problems: list[str] = field(default_factory=list)  # each "what is wrong -- the fix"
    device: str | None = None  # the transport's device string (user@host:port)
    check_s: float = 0.0  # seconds the check took
    boot_id: str | None = None  # the board's running kernel (two boards with one are one machine)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def _profile_label(board: Board) -> str:
    return Path(board.profile).stem if board.profile.endswith(".toml") else board.profile


def _summarise(status: BoardStatus, probe: dict, python: str, profile: TargetProfile) -> None:
    """Fill ``status`` from the doctor probe's report; its MISSING findings become problems."""
    from ..doctor import diagnose
    from ..device.preflight import host_tvm_version

    os_, cpu = probe.get("os", {}), probe.get("cpu", {})
    status.machine = os_.get("machine") or None
    status.boot_id = os_.get("boot_id") or None
    loadavg = cpu.get("loadavg") or []
    status.load = round(float(loadavg[0]), 2) if loadavg else None
    governors = cpu.get("governors") or {}
    status.governor = ", ".join(f"{g} x{n}" for g, n in sorted(governors.items())) or None
    runtimes = {r.get("requested"): r for r in probe.get("runtimes", [])}
    runtime = runtimes.get(python) or next(iter(runtimes.values()), {})
    status.python = runtime.get("python")
    status.tvm = runtime.get("tvm")
    findings = diagnose(probe, python=python, profile=profile, host_tvm=host_tvm_version())
    sensors = [f.detail.split(":")[0].split(" at ")[0] for f in findings if f.item == "power sensor"
               and f.status == "OK"]
    status.sensors = ", ".join(sensors) or "none"
    for f in findings:
        if f.status == "MISSING" and f.item != "profile":  # the profile check is profile_mismatch's
            status.problems.append(f"{f.item}: {f.detail} -- {f.fix or 'run sparsebench doctor on it'}")


def check_board(board: Board, *, timeout_s: float = 30.0) -> BoardStatus:
    """Probe one board (connect within ``timeout_s``); never raises for board faults -- they become problems."""
    from ..transports import TransportError
    from .lease import describe_holder, lease_holder

    start = time.perf_counter()
    status = BoardStatus(board=board.name, url=board.url, profile=_profile_label(board))
    try:
        profile = board.target()
    except HarnessError as err:
        status.problems.append(f"profile: {err} -- fix profile in the farm file")
        return status
    stamp = time.strftime("%Y%m%d-%H%M%S")
    spec = board.device_spec()
    if board.kind == "ssh":
        spec = dataclasses.replace(spec, connect_timeout_s=timeout_s)
    try:
        transport = spec.transport(profile, run_name=f"farm-status-{stamp}-{board.name}")
    except HarnessError as err:
        if board.kind == "rpc":
            status.problems.append("rpc: not supported yet -- this sparsebench has no rpc transport")
        else:
            status.problems.append(f"device: {err} -- fix the board's url or ssh settings in the farm file")
        return status
    status.device = transport.device
    try:
        if board.kind == "rpc":
            _check_rpc(status, transport, profile)
        else:
            _check_shell(status, transport, spec, profile, lease_holder, describe_holder)
    except TransportError as err:
        if err.step == "connect":
            status.problems.append(f"unreachable: {err} -- check that the board is on and its url is right")
        else:
            status.problems.append(f"{err.step}: {err} -- run sparsebench doctor {board.url} --target "
                                   f"{status.profile}")
    except HarnessError as err:  # DeviceLost and friends: one line each
        status.problems.append(f"{err} -- run sparsebench doctor {board.url} --target {status.profile}")
    finally:
        status.check_s = round(time.perf_counter() - start, 2)
    mismatch = profile_mismatch(profile, status.machine)
    if mismatch:
        status.problems.append(f"{mismatch} -- give the board the profile of its machine in the farm file")
    status.usable = status.reachable and not status.problems
    return status


def _check_rpc(status: BoardStatus, transport, profile: TargetProfile) -> None:
    probe = getattr(transport, "probe", None)
    if probe is None:
        status.problems.append("rpc: not supported yet -- this sparsebench's rpc transport cannot probe boards")
        return
    try:
        report = probe()
    finally:
        transport.close()
    status.reachable = True
    status.tvm = report.get("tvm")
    status.machine = report.get("machine")
    status.python = report.get("python")
    status.sensors = "unavailable: rpc transport"


def _check_shell(status: BoardStatus, transport, spec, profile: TargetProfile, lease_holder, describe_holder) -> None:
    from ..doctor import run_probe
    from ..device.preflight import VENV

    python = spec.python_for(profile) or transport.default_python()
    with transport:  # connects
        status.reachable = True
        checks = [python] + ([f"{VENV}/bin/python"] if python != f"{VENV}/bin/python" else [])
        probe, _ = run_probe(transport, checks, probe_pythons=[transport.default_python(), "python3", python])
        _summarise(status, probe, python, profile)
        holder = lease_holder(transport)
    if holder is not None:
        status.holder = holder
        status.problems.append(f"held by {describe_holder(holder)} -- wait for that run to finish, or choose other "
                               "boards (--boards/--tag)")


def check_boards(boards: Sequence[Board], *, timeout_s: float = 30.0, workers: int = 16) -> list[BoardStatus]:
    """:func:`check_board` for every board, in parallel threads; results in the boards' order."""
    boards = list(boards)
    if not boards:
        return []
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(boards))), thread_name_prefix="farm-status") as pool:
        return list(pool.map(lambda b: check_board(b, timeout_s=timeout_s), boards))


# ---------------------------------------------------------------------------------------------------------------
# the table and the command


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def format_table(statuses: Sequence[BoardStatus]) -> str:
    """One row per board: board, url, profile, reachable, python, tvm, machine, load, governor, sensors, held by,
    and OK or the number of problems."""
    head = ["board", "url", "profile", "reachable", "python", "tvm", "machine", "load", "governor", "sensors",
            "held by", "status"]
    rows = []
    for s in statuses:
        held = f"run {s.holder.get('run_id')} host {s.holder.get('host')}" if s.holder else "-"
        verdict = "OK" if s.usable else f"{len(s.problems) or 1} problem{'s' if len(s.problems) > 1 else ''}"
        rows.append([s.board, s.url, s.profile, "yes" if s.reachable else "no", _cell(s.python), _cell(s.tvm),
                     _cell(s.machine), _cell(s.load), _cell(s.governor), _cell(s.sensors), held, verdict])
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [head, *rows])


def problem_lines(statuses: Sequence[BoardStatus]) -> list[str]:
    """``board NAME: what -- fix`` for every problem of every unusable board."""
    out = []
    for s in statuses:
        if not s.usable:
            out.extend(f"board {s.board}: {p}" for p in (s.problems or ["not usable -- run sparsebench doctor"]))
    return out


def shared_machines(boards) -> list[str]:
    """One line per set of boards that are one machine: ``boards`` is (name, boot id or None) pairs."""
    by_boot: dict[str, list[str]] = {}
    for name, boot_id in boards:
        if boot_id:
            by_boot.setdefault(boot_id, []).append(name)
    return [f"boards {', '.join(names)} are one machine (the same running kernel): measured at the same time they "
            "disturb each other's timings; list one board per machine for numbers to compare"
            for names in by_boot.values() if len(names) > 1]


def cmd_farm_status(args) -> int:
    """``sparsebench farm status``: 0 when every selected board is usable, 3 when one is not, 2 for bad input."""
    farm = load_farm(args.farm)
    boards = farm.select(args.boards or (), args.tag or ())
    statuses = check_boards(boards, timeout_s=args.timeout)
    usable = sum(s.usable for s in statuses)
    if args.json:
        print(json.dumps({"farm": farm.name, "path": str(farm.path), "usable": usable,
                          "unusable": len(statuses) - usable, "boards": [s.to_json() for s in statuses]}, indent=2))
    else:
        print(format_table(statuses))
        for line in problem_lines(statuses):
            print(line)
        for line in shared_machines((s.board, s.boot_id) for s in statuses):
            print(f"warning: {line}")
        print(f"farm {farm.name}: {usable} of {len(statuses)} boards usable")
    sys.stdout.flush()
    return EXIT_OK if usable == len(statuses) else EXIT_ROWS_ERROR


def add_farm_parser(sub) -> argparse._SubParsersAction:
    """Add ``farm`` (with ``farm status``) to the CLI's subparsers ``sub``; return the ``farm`` subparsers holder so
    that other parts add their own ``farm`` subcommands (``farm simulate``)."""
    farm = sub.add_parser("farm", help="a farm of boards (farm.toml): status, simulate")
    farm_sub = farm.add_subparsers(dest="farm_command", required=True)
    p = farm_sub.add_parser("status", help="check every board of a farm in parallel: reachable, Python, TVM, load, "
                                           "governor, sensors, lease; exit 3 if one is unusable")
    p.add_argument("--farm", type=Path, required=True, metavar="FARM.toml", help="the farm's inventory")
    p.add_argument("--boards", nargs="+", action="extend", metavar="NAME|GLOB",
                   help="only these boards (names or shell globs)")
    p.add_argument("--tag", action="append", metavar="TAG", help="only boards with this tag (repeatable: all of them)")
    p.add_argument("--json", action="store_true", help="print the statuses as JSON instead of the table")
    p.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                   help="connect timeout per board (default 30)")
    p.set_defaults(func=cmd_farm_status)
    return farm_sub
