"""``sparsebench run CONFIG --farm FARM.toml``: one config's (model, batch) groups measured across a farm of boards.

Each group (dense, peers and sparse variants together) runs on one board of each profile (``--replicas N``: on N
distinct boards). Compiles are shared per profile (the artifact cache, one compile at a time), the kernel selection
is done once per profile on its first usable board. Every board has one worker thread, its own results-store
connection and its lease for the whole run; a board that faults is retried with backoff, then quarantined, and its
group goes to another board of its profile (or stays missing: exit 4, ``--resume`` measures it).
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import EXIT_OK, EXIT_ROWS_ERROR, DeviceLost, HarnessError
from ..transports import TransportError
from .scheduler import FAULT, Scheduler, Task, run_threaded

from .lease import BoardBusy, BoardLease
from .status import profile_mismatch, shared_machines


class _ConnectFault(HarnessError):
    """The board could not be reached or leased before its task started: the board's fault, not the task's."""


@dataclass(eq=False)
class _Worker:
    board: Any  # harness.farm.inventory.Board
    bench: Any  # harness.bench.Benchmark
    pool: str  # the profile's name
    transport: Any = None
    lease: Any = None
    store: Any = None  # opened in the worker's own thread
    missing_peers: dict = field(default_factory=dict)  # peer -> why the board cannot run it
    problem: str | None = None  # preflight: why the board is left out
    boot_id: str | None = None  # the board's running kernel (two boards with one are one machine)

    @property
    def name(self) -> str:
        return self.board.name

    def connect(self, run_id: str) -> None:
        """A fresh transport, connected, and the board's lease -- the one this run took before a fault, while it
        is still ours (raises _ConnectFault / BoardBusy / DeviceLost)."""
        self.drop_transport()
        t = self.bench.device_spec.transport(self.bench.profile, run_name=run_id)
        try:
            t.connect()
        except DeviceLost:
            raise
        except TransportError as err:
            raise _ConnectFault(str(err)) from None
        self.transport = t
        if self.lease is not None and self.lease.held:
            self.lease.transport = t
            try:
                self.lease.refresh()
                return
            except BoardBusy:  # gone from the board (or taken over): take it again, or be told who has it
                pass
        self.lease = BoardLease(t, board=self.name, run_id=run_id)
        self.lease.acquire()  # BoardBusy

    def drop_transport(self) -> None:
        """Close the transport (a fault: the next task connects afresh); the lease stays ours."""
        if self.transport is not None:
            try:
                self.transport.close()
            except Exception:  # noqa: BLE001 -- best effort
                pass
            self.transport = None

    def close(self) -> None:
        """Give the lease back (when the board can still be reached) and close the transport."""
        if self.transport is not None:
            self.transport.cancelled = False  # a cancel the worker never saw: the release below must run
        if self.lease is not None and self.transport is not None:
            try:
                self.lease.release()
            except Exception:  # noqa: BLE001 -- best effort: a stale lease is taken over later
                pass
        self.lease = None
        self.drop_transport()


def add_farm_run_arguments(p: argparse.ArgumentParser) -> None:
    """``run``'s farm options."""
    g = p.add_argument_group("farm")
    g.add_argument("--farm", type=Path, metavar="FARM.toml", help="run on the boards of this farm inventory")
    g.add_argument("--boards", nargs="+", action="extend", default=[], metavar="NAME|GLOB",
                   help="with --farm: only these boards (names or shell globs)")
    g.add_argument("--tag", action="append", default=[], metavar="TAG",
                   help="with --farm: only boards carrying this tag (repeatable: every tag)")
    g.add_argument("--replicas", type=int, default=1, metavar="N",
                   help="with --farm: each group on N distinct boards of its profile (default 1)")


def cmd_run_farm(args, cfg) -> int:
    """``sparsebench run CONFIG --farm FARM.toml ...``"""
    if args.farm is None:
        raise HarnessError("--boards, --tag and --replicas choose boards of a farm: add --farm FARM.toml")
    given = [flag for flag, value in (("--device", args.device), ("--python", args.python),
                                      ("--identity", args.identity), ("--known-hosts", args.known_hosts),
                                      ("--remote-root", args.remote_root), ("--ssh-config", args.ssh_config))
             if value]
    if given:
        raise HarnessError(f"{', '.join(given)}: not with --farm (each board has its own); set them per board "
                           f"(or in [farm]) in {args.farm}")
    from .inventory import load_farm

    farm = load_farm(args.farm)
    boards = farm.select(args.boards, args.tag)
    return run_farm(cfg, boards, db=args.db or cfg.db, resume=args.resume, replicas=args.replicas, out=args.out,
                    kernels=args.kernels, progress=not args.no_progress, farm_name=farm.name,
                    artifacts=args.artifacts)


def _label(group) -> str:
    return f"{group[0].variant.model}@b{group[0].batch}"


def run_farm(cfg, boards, *, db: Path, resume: str | None = None, replicas: int = 1, out: Path | None = None,
             kernels: str = "ours", progress: bool = True, farm_name: str = "farm", artifacts: Path | None = None) -> int:
    """Run (or resume) ``cfg`` on ``boards``; returns the exit code (0 complete, 3 ERROR rows, 4 groups missing)."""
    from ..bench import Benchmark, _groups, load_models, plan_jobs
    from ..cli import _signame, _stopped, ensure_writable_dir
    from ..store import ResultStore

    if not boards:
        raise HarnessError("--farm: no board selected; check --boards/--tag against `sparsebench farm status`")
    if replicas < 1:
        raise HarnessError(f"--replicas {replicas}: must be at least 1")
    if out is not None:
        ensure_writable_dir(out, "report directory")
    workers: list[_Worker] = []
    for board in boards:
        profile = board.target()
        bench = Benchmark(cfg, None, kernels=kernels, device=board.device_spec(), profile=profile, artifacts=artifacts)
        bench.board = board.name  # the rows name their board (compare shows it)
        workers.append(_Worker(board, bench, profile.name))
    pools: dict[str, list[_Worker]] = {}
    for w in workers:
        pools.setdefault(w.pool, []).append(w)
    short = [f"{pool} has {len(ws)}" for pool, ws in pools.items() if len(ws) < replicas]
    if short:
        raise HarnessError(f"--replicas {replicas} needs {replicas} boards of each profile, but {'; '.join(short)}; "
                           "select more boards or lower --replicas")
    models = load_models(cfg)
    jobs = plan_jobs(cfg, models)
    groups = _groups(jobs)
    store = ResultStore(db)
    lead = workers[0].bench
    lead.store = store
    run_id = lead.start(resume, target=f"farm:{farm_name}",
                        target_json={pool: ws[0].bench.target for pool, ws in pools.items()})
    print(f"run {run_id}: {len(groups)} group(s) x {len(pools)} profile(s) x {replicas} replica(s) on "
          f"{len(workers)} board(s) of farm {farm_name} -> {db}", file=sys.stderr)
    notes = [f"farm {farm_name}: {len(workers)} board(s): "
             + ", ".join(f"{w.name} ({w.pool}, {w.bench.device})" for w in workers)]
    state = {"started": False}
    try:
        return _run(cfg, run_id, store, workers, pools, groups, jobs, db=db, replicas=replicas, out=out,
                    progress=progress, notes=notes, state=state)
    except KeyboardInterrupt as err:
        return _stopped(f"interrupted ({_signame(err)})", run_id, db)
    except HarnessError as err:
        if not state["started"]:
            raise
        return _stopped(str(err), run_id, db)
    finally:
        for w in workers:
            w.close()
        _flush(store, run_id, notes)
        store.close()


def _flush(store, run_id: str, notes: list[str]) -> None:
    """The notes made so far into the run's notes (once each)."""
    while notes:
        note = notes.pop(0)
        try:
            store.add_note(run_id, note)
        except HarnessError:
            pass


def _preflight(w: _Worker, run_id: str, peers, sizes) -> None:
    """Connect, lease, runtime, memory and profile/machine checks; sets ``w.problem`` instead of raising."""
    from ..device.preflight import check_batch_memory, check_cuda, check_runtime, host_tvm_version

    try:
        w.connect(run_id)
        probe = check_runtime(w.transport, w.bench.python, host_tvm=host_tvm_version(),
                              optional=tuple(p.module for p in peers))
        if w.bench.accelerator == "cuda":
            check_cuda(w.transport, w.bench.python)
        check_batch_memory(w.transport.device, probe, sizes)
        machine = probe.get("machine") or _uname(w.transport)
        why = profile_mismatch(w.bench.profile, machine)
        if why:
            raise HarnessError(why + "; fix the board's profile in the farm file")
        w.missing_peers = {p: p.unavailable(probe) for p in peers if p.unavailable(probe)}
        w.boot_id = probe.get("boot_id")
    except HarnessError as err:
        w.problem = str(err)
        w.close()


def _uname(transport) -> str | None:
    try:
        res = transport.run(["uname", "-m"], timeout_s=30)
    except HarnessError:
        return None
    return res.stdout.strip() or None if res.ok else None


def _run(cfg, run_id, store, workers, pools, groups, jobs, *, db, replicas, out, progress, notes, state) -> int:
    from ..cli import _stopped, _write_report
    from ..compile import ArtifactCache
    from ..device.preflight import input_bytes
    from ..store import ResultStore
    from .progress import FarmProgress

    peers = tuple(dict.fromkeys(j.peer for j in jobs if j.peer))
    sizes = [(g[0].variant.model, g[0].batch, input_bytes(g[0].model.shapes_for_batch(g[0].batch))) for g in groups]
    with ThreadPoolExecutor(max_workers=min(16, len(workers))) as pool_ex:
        list(pool_ex.map(lambda w: _preflight(w, run_id, peers, sizes), workers))
    for w in workers:
        if w.problem:
            line = f"board {w.name} left out: {w.problem}"
            print(line, file=sys.stderr)
            notes.append(line)
        for p, why in w.missing_peers.items():
            notes.append(f"peer {p.name}: unavailable on {w.bench.device} ({why})")
    usable = [w for w in workers if not w.problem]
    for line in shared_machines((w.name, w.boot_id) for w in usable):
        print(f"warning: {line}", file=sys.stderr)
        notes.append(line)
    if not usable:
        raise HarnessError("no usable board: " + "; ".join(f"{w.name}: {w.problem}" for w in workers))

    # kernel selection once per profile, on its first usable board
    selections: dict[str, Any] = {}
    for pool, ws in pools.items():
        for w in ws:
            if w.problem:
                continue
            try:
                selections[pool] = w.bench.select([j for j in jobs if not j.peer], w.transport)
            except HarnessError as err:
                w.problem = f"kernel selection failed: {err}"
                line = f"board {w.name} left out: {w.problem}"
                print(line, file=sys.stderr)
                notes.append(line)
                w.close()
                continue
            sel = selections[pool]
            if sel is not None and sel.plan.layers:
                n = sum(1 for x in ws if not x.problem)
                notes.append(f"kernel selection for profile {pool} done on board {w.name}, reused by its {n} board(s)")
            break
    usable = [w for w in workers if not w.problem]

    # the tasks: per profile, per group, the replicas still missing (--resume: rows complete on enough boards)
    done_by: dict[str, set[str]] = {}  # device -> keys measured (not ERROR)
    for key, device in store.completed(run_id):
        done_by.setdefault(device, set()).add(key)
    by_device = {w.bench.device: w.name for w in workers}
    tasks, held = [], {}
    for pool, ws in pools.items():
        devices = [w.bench.device for w in ws]
        for gi, group in enumerate(groups):
            complete = [d for d in devices if all(j.key in done_by.get(d, ()) for j in group)]
            gkey = f"{pool}/{_label(group)}"
            held[gkey] = {by_device[d] for d in complete}
            for r in range(max(0, replicas - len(complete))):
                tasks.append(Task(f"{gkey}#{r}", pool, payload=gi, cost=float(len(group) * group[0].batch),
                                  group=gkey))
    backoff = min((w.bench.profile.reconnect_backoff_s or 1.0) for w in workers)
    sched = Scheduler(tasks, [(w.name, w.pool) for w in usable], max_attempts=3, quarantine_after=3,
                      backoff_s=backoff, backoff_max_s=30.0)
    for gkey, names in held.items():
        sched.hold(gkey, names)
    by_name = {w.name: w for w in usable}
    cache = ArtifactCache()
    counts = {"rows": 0, "errors": 0}
    per_board: dict[str, list] = {}  # board -> [groups, rows, seconds busy measuring]
    lock = threading.Lock()

    with FarmProgress([w.name for w in workers], enabled=progress) as bar:
        for w in workers:
            bar.update(w.name, state=f"left out: {w.problem[:80]}" if w.problem else "ready")

        def execute(board: str, task: Task) -> None:
            w = by_name[board]
            if w.store is None:
                w.store = ResultStore(db)
                w.bench.store = w.store
            group = groups[task.payload]
            bar.update(board, doing=_label(group), state="connecting" if w.transport is None else "running")
            if w.transport is None:
                try:
                    w.connect(run_id)
                except DeviceLost as err:
                    raise _ConnectFault(str(err)) from None
            done = done_by.get(w.bench.device, set()) | {k for k, d in w.store.completed(run_id)
                                                         if d == w.bench.device}
            todo = [j for j in group if j.key not in done and j.peer not in w.missing_peers]
            if w.lease is not None:
                w.lease.refresh()
            bar.update(board, state="running")
            t0 = time.monotonic()
            try:
                rows = w.bench.run_group(run_id, todo, w.transport, cache, selections.get(w.pool)) if todo else []
            except (DeviceLost, TransportError):
                w.drop_transport()  # a fresh transport for the board's next task
                raise
            if w.lease is not None:
                w.lease.refresh()
            with lock:
                counts["rows"] += len(rows)
                counts["errors"] += sum(r.verdict == "ERROR" for r in rows)
                mine = per_board.setdefault(board, [0, 0, 0.0])
                mine[0] += 1
                mine[1] += len(rows)
                mine[2] += time.monotonic() - t0
            bar.update(board, doing=_label(group), done=1, state="idle")

        def classify(err: BaseException) -> str | None:
            if isinstance(err, (_ConnectFault, BoardBusy, DeviceLost, TransportError)):
                return str(err)
            return None

        def charged(err: BaseException) -> bool:
            return not isinstance(err, (_ConnectFault, BoardBusy))

        def on_finish(board: str, task: Task, outcome: str, why: str) -> None:
            if outcome != FAULT:
                return
            b = sched.boards[board]
            if b.quarantined:
                line = f"board {board} quarantined for the run: {b.quarantined}"
                print(line, file=sys.stderr)
                notes.append(line)
                bar.update(board, failed=1, state="quarantined")
            else:
                bar.update(board, failed=1, state=f"backoff: {why[:60]}")
            if task.missing is None:
                notes.append(f"group {task.group} requeued after board {board} failed: {why}")

        state["started"] = True
        def on_exit(board: str) -> None:
            w = by_name[board]
            if w.store is not None:  # opened in this thread, closed in it
                w.store.close()

        started = time.monotonic()
        def on_stop() -> None:  # interrupted: every board's runner is stopped before the leases are given back
            for w in usable:
                if w.transport is not None:
                    w.transport.cancel()

        run_threaded(sched, execute, classify=classify, charged=charged, on_finish=on_finish, on_exit=on_exit,
                     poll_s=0.2, on_stop=on_stop)
        measuring_s = time.monotonic() - started

    for w in usable:
        g, n, busy = per_board.get(w.name, (0, 0, 0.0))
        faults = sched.boards[w.name].failed
        line = (f"board {w.name} ({w.bench.device}): {g} group(s), {n} row(s), busy {busy:.1f} s of the "
                f"{measuring_s:.1f} s measuring phase" + (f", {faults} fault(s)" if faults else ""))
        print(line, file=sys.stderr)
        notes.append(line)

    for b in sched.boards.values():
        if b.faults and not b.quarantined:
            notes.append(f"board {b.name} failed {b.faults} time(s) in a row as the run ended (last: {b.last_fault}); "
                         "not retried: nothing was left for it")
    missing = (list(sched.missing) + [t for q in sched.queues.values() for t in q]
               + [b.task for b in sched.boards.values() if b.task is not None])
    for t in missing:
        notes.append(f"group {t.group} not measured: {t.missing or 'the run stopped'}")
    print(f"run {run_id}: {len(sched.done)} group task(s) done on {len(usable)} board(s), {counts['rows']} row(s) "
          f"measured, {counts['errors']} error row(s), {len(sched.quarantined)} board(s) quarantined",
          file=sys.stderr)
    if missing:
        _flush(store, run_id, notes)
        why = f"{len(missing)} group(s) not measured ({missing[0].group}: {missing[0].missing or 'stopped'})"
        return _stopped(why, run_id, db)
    _flush(store, run_id, notes)
    if out is not None:
        _write_report(store, run_id, out)
    if counts["errors"]:
        print(f"run {run_id}: {counts['errors']} row(s) are ERROR (`sparsebench results {run_id}` shows why); the "
              f"same command with --resume {run_id} retries them", file=sys.stderr)
        return EXIT_ROWS_ERROR
    return EXIT_OK
