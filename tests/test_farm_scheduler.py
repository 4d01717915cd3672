"""The farm scheduler: the pure core, the 200-board virtual-clock simulation, the threaded driver, the CLI."""

from __future__ import annotations

import json
import random
import threading
import time

import pytest

from harness.farm.scheduler import FAULT, OK, Scheduler, Task, run_threaded
from harness.farm.simulate import make_farm, simulate


def _tasks(n, pool="p", cost=1.0):
    return [Task(f"t{i}", pool, cost=cost) for i in range(n)]


def test_longest_first_and_requeue_at_front_on_another_board():
    tasks = [Task("short", "p", cost=1), Task("long", "p", cost=9), Task("mid", "p", cost=5)]
    s = Scheduler(tasks, [("a", "p"), ("b", "p")], backoff_s=2.0)
    t = s.next_for("a", 0.0)
    assert t.key == "long"
    assert s.finish("a", t, FAULT, 1.0, why="lost") == []
    assert s.next_for("a", 1.5) is None  # backoff: 2 s after the fault
    assert s.ready_at("a") == 3.0
    t2 = s.next_for("b", 1.5)
    assert t2.key == "long" and t2.attempts == 2 and t2.tried == {"a"}  # requeued at the front, other board
    assert s.next_for("a", 3.0).key == "mid"


def test_backoff_doubles_then_quarantine_and_the_task_goes_elsewhere():
    s = Scheduler(_tasks(5), [("bad", "p"), ("good", "p")], quarantine_after=3, backoff_s=1.0, max_attempts=9)
    now = 0.0
    waits = []
    for _ in range(3):
        now = max(now, s.ready_at("bad"))
        t = s.next_for("bad", now)
        s.finish("bad", t, FAULT, now, why="device lost", charge=False)
        waits.append(s.ready_at("bad") - now)
    assert waits[:2] == [1.0, 2.0]
    assert "3 faults in a row; last: device lost" in s.quarantined["bad"]
    assert s.next_for("bad", 100.0) is None
    while (t := s.next_for("good", now)) is not None:
        s.finish("good", t, OK, now)
    assert s.finished and len(s.done) == 5 and not s.missing
    assert all(t.attempts == 1 for t in s.done)  # connect faults are not charged to the task


def test_a_task_failing_on_max_attempts_boards_stays_missing():
    s = Scheduler([Task("poison", "p")], [(n, "p") for n in "abcd"], max_attempts=3)
    for name in "abc":
        t = s.next_for(name, 0.0)
        s.finish(name, t, FAULT, 0.0, why="board died during it")
    assert [t.key for t in s.missing] == ["poison"]
    assert "failed on 3 boards (a, b, c)" in s.missing[0].missing
    assert s.next_for("d", 0.0) is None and s.finished


def test_replicas_run_on_distinct_boards_and_unrunnable_ones_are_missing():
    tasks = [Task(f"g{g}#r{r}", "p", group=f"g{g}") for g in range(3) for r in range(3)]
    s = Scheduler(tasks, [("a", "p"), ("b", "p")])  # 3 replicas, 2 boards: one replica per group cannot run
    ran: dict[str, set] = {}
    progress = True
    while progress:
        progress = False
        for name in "ab":
            t = s.next_for(name, 0.0)
            if t:
                ran.setdefault(t.group, set()).add(name)
                s.finish(name, t, OK, 0.0)
                progress = True
    assert s.finished
    assert all(v == {"a", "b"} for v in ran.values())
    assert len(s.done) == 6 and len(s.missing) == 3
    assert all("holds another replica" in t.missing for t in s.missing)


def test_a_pool_without_usable_boards_is_missing_with_why():
    s = Scheduler(_tasks(2, "rpi5") + _tasks(1, "local"), [("x", "local")])
    t = s.next_for("x", 0.0)
    s.finish("x", t, OK, 0.0)
    assert s.next_for("x", 0.0) is None and s.finished
    assert [t.missing for t in s.missing] == ["no usable board of rpi5 in the run"] * 2


def test_200_boards_2000_tasks_simulated():
    """200 boards (3 always fail at connect, the others fault 2 % of attempts at a random point), 2000 tasks of
    1..10 s. The bound: makespan <= 1.10 x ideal, ideal = (the work done + the work lost to faults of usable
    boards) / the boards never quarantined -- the usable board-time, no idle."""
    farm, tasks = make_farm(200, 2000, fail_rate=0.02, dead=3, seed=7)
    fig = simulate(farm, tasks, seed=7)
    s = fig.pop("_sched")
    assert fig["quarantined"] == 3 and fig["usable_boards"] == 197
    assert set(s.quarantined) == {b.name for b in farm if b.dead}
    assert fig["done"] + fig["missing"] == 2000
    for t in s.missing:  # only tasks that faulted on max_attempts usable boards
        assert t.attempts == 3 and "failed on 3 boards" in t.missing
    assert fig["failures"] == fig["requeues"] + fig["missing"] > 0  # every failure requeued (or out of attempts)
    assert fig["ratio"] <= 1.10, fig
    assert {t.key for t in s.done} | {t.key for t in s.missing} == {t.key for t in tasks}


def _cpu(boards, jobs):
    best = float("inf")
    for _ in range(3):
        farm, tasks = make_farm(boards, jobs, fail_rate=0.02, seed=3)
        best = min(best, simulate(farm, tasks, seed=3)["scheduler_cpu_s"])
    return best


def test_scheduler_cost_is_linear():
    small, big = _cpu(200, 2000), _cpu(400, 4000)
    assert big <= 3 * max(small, 0.002), (small, big)


def test_threaded_driver_200_boards_one_task_per_board_at_a_time():
    rng = random.Random(5)
    tasks = [Task(f"t{i}", "p", cost=rng.uniform(1, 3)) for i in range(1000)]
    boards = [(f"b{i:03d}", "p") for i in range(200)]
    dead = {"b007", "b100"}
    in_use: dict[str, bool] = {}
    guard = threading.Lock()
    violations = []
    ran = []
    tried = set()

    def execute(board, task):
        with guard:
            if in_use.get(board):
                violations.append(board)
            in_use[board] = True
            tried.add(board)
        try:
            if board in dead:
                raise ConnectionError(f"{board} unreachable")
            time.sleep(task.cost / 1000)
            ran.append(task.key)
        finally:
            with guard:
                in_use[board] = False

    s = Scheduler(tasks, boards, backoff_s=0.01, quarantine_after=2, max_attempts=5)
    t0 = time.monotonic()
    run_threaded(s, execute, classify=lambda err: str(err) if isinstance(err, ConnectionError) else None, poll_s=0.05)
    wall = time.monotonic() - t0
    assert not violations
    assert s.finished and not s.missing and len(s.done) == 1000 and sorted(ran) == sorted(t.key for t in tasks)
    assert set(s.quarantined) <= dead  # a dead board is quarantined unless the work ran out during its backoff
    # a dead board never completes a task; one that was tried shows its faults (on a loaded machine its thread may
    # start after the work ran out: then it was never tried)
    assert all(s.boards[d].done == 0 and (s.boards[d].quarantined or s.boards[d].faults or d not in tried)
               for d in dead), {d: (s.boards[d].done, s.boards[d].faults, d in tried) for d in dead}
    assert wall < 20, wall  # ~10 ms of sleep per board; loose for a loaded 2-core CI


def test_threaded_driver_unclassified_error_stops_the_run():
    s = Scheduler(_tasks(50), [("a", "p"), ("b", "p")])

    def execute(board, task):
        raise RuntimeError("bug")

    with pytest.raises(RuntimeError, match="bug"):
        run_threaded(s, execute, poll_s=0.05)


def test_cli_farm_simulate(tmp_path):
    from conftest import sparsebench

    out = tmp_path / "sim.json"
    r = sparsebench("farm", "simulate", "--boards", "200", "--jobs", "2000", "--fail-rate", "0.01", "--seed", "1",
                    "--json", str(out))
    assert r.returncode == 0, r.stderr
    fig = json.loads(out.read_text())
    assert fig["boards"] == 200 and fig["tasks"] == 2000 and fig["done"] == 2000
    assert fig["ratio"] <= 1.10
    for key in ("total_work_s", "makespan_s", "ideal_s", "failures", "requeues", "quarantined", "scheduler_cpu_s"):
        assert key in fig
    assert "makespan" in r.stdout
    r = sparsebench("farm", "simulate", "--fail-rate", "2")
    assert r.returncode == 2 and "--fail-rate" in r.stderr and "Traceback" not in r.stderr
