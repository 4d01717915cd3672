"""The farm scheduler on a virtual clock: many fake boards, seeded task durations and board failures, no I/O.

``sparsebench farm simulate --boards 200 --jobs 2000`` runs :class:`~harness.farm.scheduler.Scheduler` (the same
core the real farm run uses) as a discrete-event simulation and reports the makespan against the ideal one.
"""

from __future__ import annotations

import heapq
import json
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .scheduler import FAULT, OK, Scheduler, Task


@dataclass(frozen=True)
class FakeBoard:
    name: str
    pool: str = "p0"
    fail_rate: float = 0.0  # chance an attempt faults (at a random point of the task)
    dead: bool = False  # every attempt faults at connect ("drops off the farm")


CONNECT_S = 0.5  # virtual seconds a dead board takes to fail


def make_farm(boards: int, jobs: int, *, fail_rate: float = 0.01, dead: int | None = None, pools: int = 1,
              seed: int = 0, min_s: float = 1.0, max_s: float = 10.0) -> tuple[list[FakeBoard], list[Task]]:
    """``boards`` fake boards (``dead`` of them always fail: default 1 %, at least 1 when boards >= 20) and ``jobs``
    tasks with durations uniform in [min_s, max_s] (the cost the scheduler sees is the true duration)."""
    rng = random.Random(seed)
    if dead is None:
        dead = boards // 100 + (1 if boards >= 20 else 0)
    dead_ix = set(rng.sample(range(boards), min(dead, boards)))
    farm = [FakeBoard(f"b{i:04d}", f"p{i % pools}", fail_rate, i in dead_ix) for i in range(boards)]
    tasks = []
    for j in range(jobs):
        d = rng.uniform(min_s, max_s)
        tasks.append(Task(f"t{j:05d}", f"p{j % pools}", payload=d, cost=d))
    return farm, tasks


def simulate(farm: list[FakeBoard], tasks: list[Task], *, seed: int = 0, max_attempts: int = 3,
             quarantine_after: int = 3, backoff_s: float = 1.0, backoff_max_s: float = 30.0,
             check_exclusive: bool = True) -> dict:
    """Run the scheduler over ``farm`` on a virtual clock. Returns the figures (see :func:`summary`)."""
    rng = random.Random(seed + 1)
    boards = {b.name: b for b in farm}
    t_cpu = 0.0

    def timed(fn, *args, **kw):
        nonlocal t_cpu
        c0 = time.process_time()
        out = fn(*args, **kw)
        t_cpu += time.process_time() - c0
        return out

    sched = timed(Scheduler, tasks, [(b.name, b.pool) for b in farm], max_attempts=max_attempts,
                  quarantine_after=quarantine_after, backoff_s=backoff_s, backoff_max_s=backoff_max_s)
    events: list[tuple[float, int, str, str]] = []  # (time, seq, kind, board) -- kind "ask" | "end"
    seq = 0
    busy: dict[str, tuple[Task, str, float]] = {}  # board -> (task, outcome, started)
    work = {"ok": 0.0, "wasted": 0.0}
    dead_time = 0.0
    last_end = 0.0

    def push(at: float, kind: str, board: str) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(events, (at, seq, kind, board))

    def ask(board: str, now: float) -> None:
        task = timed(sched.next_for, board, now)
        if task is None:
            return
        if check_exclusive:
            assert board not in busy, f"{board} runs two tasks"
        fb = boards[board]
        if fb.dead:
            busy[board] = (task, FAULT, now)
            push(now + CONNECT_S, "end", board)
        elif rng.random() < fb.fail_rate:
            busy[board] = (task, FAULT, now)
            push(now + rng.uniform(0, task.payload), "end", board)
        else:
            busy[board] = (task, OK, now)
            push(now + task.payload, "end", board)

    for b in farm:
        push(0.0, "ask", b.name)
    now = 0.0
    while events:
        now, _, kind, board = heapq.heappop(events)
        if kind == "end":
            task, outcome, started = busy.pop(board)
            if outcome == OK:
                last_end = now
            spent = now - started
            if boards[board].dead:
                dead_time += spent
            else:
                work["ok" if outcome == OK else "wasted"] += spent
            dead = boards[board].dead
            wake = timed(sched.finish, board, task, outcome, now, why="unreachable" if dead else "simulated fault",
                         charge=not dead)
            for name in wake:
                push(now, "ask", name)
            if outcome == OK:
                push(now, "ask", board)
        else:
            ask(board, now)
        for name in timed(sched.due, now):
            push(now, "ask", name)
        if not events and not sched.finished:
            nxt = sched.next_due()
            if nxt is not None:
                now = max(now, nxt)
                for name in timed(sched.due, now):
                    push(now, "ask", name)
        if sched.finished and not busy:
            break
    makespan = last_end
    usable = sum(1 for b in farm if not sched.boards[b.name].quarantined)
    total = sum(t.cost for t in tasks)
    # the ideal: all the work done (and the work lost to faults of boards that stayed) spread evenly over the
    # boards that stayed usable, with no idle time
    ideal = (work["ok"] + work["wasted"]) / usable if usable else float("inf")
    return {"boards": len(farm), "tasks": len(tasks), "done": len(sched.done), "missing": len(sched.missing),
            "total_work_s": round(total, 3), "wasted_work_s": round(work["wasted"], 3),
            "dead_board_s": round(dead_time, 3), "makespan_s": round(makespan, 3), "ideal_s": round(ideal, 3),
            "ratio": round(makespan / ideal, 4) if usable else None, "failures": sched.faults,
            "requeues": sched.requeues, "quarantined": len(sched.quarantined), "usable_boards": usable,
            "scheduler_cpu_s": round(t_cpu, 4), "_sched": sched}


def summary(fig: dict) -> str:
    return (f"{fig['boards']} boards ({fig['usable_boards']} usable, {fig['quarantined']} quarantined), "
            f"{fig['tasks']} tasks: {fig['done']} done, {fig['missing']} missing; total work {fig['total_work_s']:.0f} s "
            f"(+{fig['wasted_work_s']:.0f} s lost to faults); makespan {fig['makespan_s']:.1f} s, ideal "
            f"{fig['ideal_s']:.1f} s, ratio {fig['ratio']}; {fig['failures']} failures, {fig['requeues']} requeues; "
            f"scheduler CPU {fig['scheduler_cpu_s']:.3f} s")


def add_simulate_parser(farm_sub):
    """``farm simulate`` under the ``farm`` command's subparsers holder."""
    p = farm_sub.add_parser("simulate", help="the farm scheduler on a virtual clock with fake boards (a benchmark)")
    p.add_argument("--boards", type=int, default=200, help="fake boards (default 200)")
    p.add_argument("--jobs", type=int, default=2000, help="tasks (default 2000), durations uniform in 1..10 s")
    p.add_argument("--fail-rate", type=float, default=0.01, help="chance a task faults on a board (default 0.01)")
    p.add_argument("--dead", type=int, default=None, help="boards that always fail (default: 1 %% + 1)")
    p.add_argument("--pools", type=int, default=1, help="profiles the boards and tasks are spread over (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, metavar="OUT", help="also write the figures here")
    p.set_defaults(func=cmd_simulate)
    return p


def cmd_simulate(args) -> int:
    from ..errors import HarnessError

    if args.boards < 1 or args.jobs < 1:
        raise HarnessError("farm simulate: --boards and --jobs must be at least 1")
    if not 0.0 <= args.fail_rate < 1.0:
        raise HarnessError(f"farm simulate: --fail-rate {args.fail_rate} must be in [0, 1)")
    if args.pools < 1 or args.pools > args.boards:
        raise HarnessError(f"farm simulate: --pools {args.pools} must be between 1 and --boards")
    farm, tasks = make_farm(args.boards, args.jobs, fail_rate=args.fail_rate, dead=args.dead, pools=args.pools,
                            seed=args.seed)
    fig = simulate(farm, tasks, seed=args.seed)
    fig.pop("_sched")
    print(summary(fig))
    if args.json:
        try:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(fig, indent=1) + "\n")
        except OSError as err:
            raise HarnessError(f"farm simulate: cannot write {args.json} ({err.strerror}); choose another --json") from None
        print(f"figures -> {args.json}", file=sys.stderr)
    return 0 if fig["missing"] == 0 else 3
