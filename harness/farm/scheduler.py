"""The farm's scheduling core: which board runs which task next. Pure (no threads, no I/O, no clock of its own).

Tasks belong to a pool (the boards of one profile). Each board asks :meth:`Scheduler.next_for` for work and reports
:meth:`Scheduler.finish`. A board fault requeues the task at the front of its pool (on another board next: a task
never goes back to a board that faulted on it, and replicas of one group run on distinct boards) and puts the board
in exponential backoff; ``quarantine_after`` consecutive faults take it out of the run. A task that faulted on
``max_attempts`` boards stays missing, and so do tasks no usable board may take once every live board is idle.

Costs: per-pool deques (longest task first), a heap of boards in backoff, an exclusion check bounded by ``SCAN``
queue entries -- each decision is O(1)/O(log n), so a run costs linear time in boards and tasks.

Two drivers use this core: :func:`run_threaded` (one worker thread per board) here, and the virtual-clock simulator
in :mod:`harness.farm.simulate`.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

OK = "ok"  # the task ran (its rows are stored, ERROR rows included): done
FAULT = "fault"  # the board failed (lost, unreachable, busy): the task goes back to its pool

SCAN = 32  # queue entries a board looks at past ones it may not take (exclusions are few per board)


@dataclass(eq=False)
class Task:
    key: str
    pool: str
    payload: Any = None
    cost: float = 1.0  # estimated duration: longest first inside a pool
    group: str = ""  # replicas of one group run on distinct boards ("" = the task's own key)
    attempts: int = 0
    tried: set[str] = field(default_factory=set)  # boards that faulted while running it (charged faults)
    board: str | None = None  # where it ran (done) or runs
    missing: str | None = None  # why it was never run


@dataclass(eq=False)
class BoardState:
    name: str
    pool: str
    faults: int = 0  # consecutive
    ready_at: float = 0.0
    quarantined: str | None = None  # why
    idle: bool = False
    task: Task | None = None
    done: int = 0
    failed: int = 0
    last_fault: str = ""


class Scheduler:
    def __init__(self, tasks: Iterable[Task], boards: Iterable[tuple[str, str]], *, max_attempts: int = 3,
                 quarantine_after: int = 3, backoff_s: float = 1.0, backoff_max_s: float = 60.0):
        self.max_attempts = max_attempts
        self.quarantine_after = quarantine_after
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.boards: dict[str, BoardState] = {name: BoardState(name, pool) for name, pool in boards}
        self.tasks: list[Task] = list(tasks)
        self.queues: dict[str, deque[Task]] = {}
        for task in sorted(self.tasks, key=lambda t: -t.cost):  # stable: equal costs keep their order
            self.queues.setdefault(task.pool, deque()).append(task)
        self._group_boards: dict[str, set[str]] = {}
        self._idle: dict[str, set[str]] = {}  # pool -> idle boards
        self._backoff: list[tuple[float, str]] = []  # (ready_at, board)
        self.live = len(self.boards)
        self.idle_count = 0
        self.running = 0
        self.queued = len(self.tasks)
        self.done: list[Task] = []
        self.missing: list[Task] = []
        self.faults = 0
        self.requeues = 0
        self.finished = not self.tasks

    # -- a board asks for work -------------------------------------------------------------------------------
    def next_for(self, board: str, now: float) -> Task | None:
        """The task ``board`` runs next, or None: it is in backoff (ask again at :meth:`ready_at`), quarantined,
        or has nothing it may take now (it is idle until :meth:`finish` returns it among the boards to wake)."""
        b = self.boards[board]
        if self.finished or b.quarantined or b.task is not None or now < b.ready_at:
            return None
        queue = self.queues.get(b.pool)
        if queue:
            for i, task in enumerate(queue):
                if i >= SCAN:
                    break
                if board in task.tried or board in self._group_boards.get(task.group or task.key, ()):
                    continue
                del queue[i]
                self.queued -= 1
                self.running += 1
                task.board = board
                task.attempts += 1
                self._group_boards.setdefault(task.group or task.key, set()).add(board)
                b.task = task
                self._set_idle(b, False)
                return task
        self._set_idle(b, True)
        if self.idle_count == self.live or (self.queued == 0 and self.running == 0):
            self._drain()
        return None

    def hold(self, group: str, boards: Iterable[str]) -> None:
        """``boards`` already hold a replica of ``group`` (from an earlier run): its tasks go to other boards."""
        self._group_boards.setdefault(group, set()).update(boards)

    def ready_at(self, board: str) -> float:
        return self.boards[board].ready_at

    # -- a board reports -------------------------------------------------------------------------------------
    def finish(self, board: str, task: Task, outcome: str, now: float, why: str = "", charge: bool = True) -> list[str]:
        """Record how ``task`` ended on ``board``; returns the idle boards to ask again now (a requeued task may
        fit them). ``why``: the fault's one-line reason (quarantine notes). ``charge=False``: the board failed
        before the task started (connect, lease): the fault is the board's alone and does not count towards the
        task's ``max_attempts``."""
        b = self.boards[board]
        assert b.task is task, f"{board} does not run {task.key}"
        b.task = None
        self.running -= 1
        wake: list[str] = []
        if outcome == OK:
            b.faults = 0
            b.done += 1
            self.done.append(task)
        else:
            self.faults += 1
            b.faults += 1
            b.failed += 1
            b.last_fault = why
            task.board = None
            if charge:  # the task may be what broke the board: it goes to another one
                task.tried.add(board)
            else:
                task.attempts -= 1
            self._group_boards[task.group or task.key].discard(board)
            if task.attempts >= self.max_attempts:
                task.missing = f"failed on {task.attempts} boards ({', '.join(sorted(task.tried))}); last: {why}"
                self.missing.append(task)
            else:
                self.requeues += 1
                self.queues.setdefault(task.pool, deque()).appendleft(task)
                self.queued += 1
                idle = self._idle.get(task.pool)
                if idle:
                    wake = list(idle)
                    for name in wake:
                        self._set_idle(self.boards[name], False)
            if b.faults >= self.quarantine_after:
                self.quarantine(board, f"{b.faults} faults in a row; last: {why}")
            else:
                b.ready_at = now + min(self.backoff_s * 2 ** (b.faults - 1), self.backoff_max_s)
                heapq.heappush(self._backoff, (b.ready_at, board))
        if self.queued == 0 and self.running == 0:
            self._drain()
        return wake

    def quarantine(self, board: str, why: str) -> None:
        """Take ``board`` out of the run (its running task, if any, must still be finished by the driver)."""
        b = self.boards[board]
        if b.quarantined:
            return
        self._set_idle(b, False)
        b.quarantined = why
        self.live -= 1
        if self.live == 0 or (self.live == self.idle_count and self.running == 0):
            self._drain()

    def due(self, now: float) -> list[str]:
        """Boards whose backoff has ended by ``now`` (popped from the heap): ask them again."""
        out = []
        while self._backoff and self._backoff[0][0] <= now:
            _, name = heapq.heappop(self._backoff)
            if not self.boards[name].quarantined:
                out.append(name)
        return out

    def next_due(self) -> float | None:
        return self._backoff[0][0] if self._backoff else None

    @property
    def quarantined(self) -> dict[str, str]:
        return {b.name: b.quarantined for b in self.boards.values() if b.quarantined}

    def _set_idle(self, b: BoardState, idle: bool) -> None:
        if b.idle == idle:
            return
        b.idle = idle
        self.idle_count += 1 if idle else -1
        pool = self._idle.setdefault(b.pool, set())
        (pool.add if idle else pool.discard)(b.name)

    def _drain(self) -> None:
        """Nothing more can run: every queued task is missing, with why."""
        self.finished = True
        for pool, queue in self.queues.items():
            live = [b.name for b in self.boards.values() if b.pool == pool and not b.quarantined] if queue else []
            while queue:
                task = queue.popleft()
                self.queued -= 1
                if not live:
                    names = [b.name for b in self.boards.values() if b.pool == pool]
                    task.missing = (f"no usable board of {pool} left (quarantined: {', '.join(names)})" if names
                                    else f"no usable board of {pool} in the run")
                else:
                    task.missing = (f"every usable board of {pool} ({', '.join(live)}) already faulted on it or "
                                    "holds another replica of its group")
                self.missing.append(task)


# -- the threaded driver -------------------------------------------------------------------------------------------
def run_threaded(sched: Scheduler, execute: Callable[[str, Task], None], *,
                 classify: Callable[[BaseException], str | None] = lambda err: None,
                 charged: Callable[[BaseException], bool] = lambda err: True,
                 on_finish: Callable[[str, Task, str, str], None] | None = None,
                 on_exit: Callable[[str], None] | None = None, stop: threading.Event | None = None, poll_s: float = 0.5,
                 on_stop: Callable[[], None] | None = None, stop_wait_s: float = 30.0) -> Scheduler:
    """One worker thread per board: each asks for a task, runs ``execute(board, task)`` (outside the lock), and
    reports. ``classify(err)`` turns an exception into a fault's reason (a board fault: requeue, backoff) or None
    (re-raised: the run stops); ``charged(err)``: whether the fault counts towards the task's attempts (False for
    a board that failed before the task started). ``on_finish(board, task, outcome, why)`` runs under the lock
    after each report; ``on_exit(board)`` in the worker's thread as it ends. ``stop`` set: workers finish their current task and end.
    Interrupted (Ctrl-C in the calling thread): ``on_stop()`` (which stops the running tasks, e.g. cancels the
    transports), then up to ``stop_wait_s`` for the workers to end, then the interrupt goes on."""
    lock = threading.Condition()
    stop = stop or threading.Event()
    errors: list[BaseException] = []

    def worker(board: str) -> None:
        try:
            work(board)
        finally:
            if on_exit is not None:
                on_exit(board)

    def work(board: str) -> None:
        while True:
            with lock:
                while True:
                    if sched.finished or stop.is_set() or errors or sched.boards[board].quarantined:
                        lock.notify_all()
                        return
                    now = time.monotonic()
                    task = sched.next_for(board, now)
                    if task is not None:
                        break
                    if sched.finished:
                        continue
                    b = sched.boards[board]
                    lock.wait(max(0.0, b.ready_at - now) if b.ready_at > now else poll_s)
            charge = True
            try:
                execute(board, task)
                outcome, why = OK, ""
            except BaseException as err:  # noqa: BLE001 -- classified: a board fault, or the run stops
                why = classify(err) if isinstance(err, Exception) else None
                if why is None:
                    with lock:
                        errors.append(err)
                        stop.set()
                        lock.notify_all()
                    return
                outcome, charge = FAULT, charged(err)
            with lock:
                sched.finish(board, task, outcome, time.monotonic(), why=why, charge=charge)
                if on_finish is not None:
                    on_finish(board, task, outcome, why)
                lock.notify_all()

    threads = [threading.Thread(target=worker, args=(name,), name=f"farm-{name}", daemon=True)
               for name in sched.boards]
    for t in threads:
        t.start()
    try:
        for t in threads:
            while t.is_alive():
                t.join(0.2)
    except BaseException:
        stop.set()
        with lock:
            lock.notify_all()
        if on_stop is not None:
            on_stop()
        deadline = time.monotonic() + stop_wait_s
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        raise
    if errors:
        raise errors[0]
    return sched
