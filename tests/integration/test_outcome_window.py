"""The outcome window on a real SQLite store: while the store commits nothing, the agents
run at most ``commit_window`` + their slots attempts, then wait; once commits go through,
everything completes, each task run once."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from messages import AgentSpec, TaskState
from supervisor import RunnerConfig, TaskContext, TaskRunner
from tests.conftest import WAIT_S, wait_for

TASKS = 60
WINDOW = 5
SLOTS = 3


class Executions:
    """Counts handler runs per task, and wakes waiters on every run."""

    def __init__(self) -> None:
        self.lock = threading.Condition()
        self.runs: dict[str, int] = {}

    def record(self, task: TaskContext) -> None:
        with self.lock:
            key = str(task.task_id)
            self.runs[key] = self.runs.get(key, 0) + 1
            self.lock.notify_all()

    @property
    def total(self) -> int:
        with self.lock:
            return sum(self.runs.values())

    def exceeds(self, count: int, within_s: float) -> bool:
        """True if more than ``count`` runs happen within ``within_s`` seconds."""
        with self.lock:
            return self.lock.wait_for(lambda: sum(self.runs.values()) > count, within_s)


def _sync_handler(executions: Executions) -> Any:
    def handle(task: TaskContext) -> dict[str, int]:
        executions.record(task)
        return {"ok": 1}

    return handle


def _async_handler(executions: Executions) -> Any:
    async def handle(task: TaskContext) -> dict[str, int]:
        executions.record(task)
        await asyncio.sleep(0)
        return {"ok": 1}

    return handle


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_store_that_commits_nothing_holds_the_agents_at_the_window(
    tmp_path: Path, kind: str
) -> None:
    path = tmp_path / "tasks.db"
    # The journal keeps retrying a locked store (an outage) well past this test's waits.
    url = f"sqlite:///{path}?busy_timeout=0.05"
    config = RunnerConfig(store=url, commit_window=WINDOW, store_outage_s=120.0)
    executions = Executions()
    handler = _sync_handler(executions) if kind == "sync" else _async_handler(executions)
    with TaskRunner.start(config) as runner:
        handles = runner.submit_many([{"type": "work", "payload": {"n": n}} for n in range(TASKS)])
        holder = sqlite3.connect(path)
        holder.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
        try:
            runner.register_agent(
                AgentSpec(agent_id="w", capabilities={"work"}, max_concurrency=SLOTS), handler
            )
            limit = WINDOW + SLOTS
            wait_for(lambda: executions.total == limit)
            # Nothing is committed, so no credit comes back: no attempt past the window.
            assert not executions.exceeds(limit, within_s=0.5)
            window = runner.status()["commit_window"]
            assert window["limit"] == limit
            assert window["unsettled"] == limit
            assert window["waits"] >= 1
        finally:
            holder.rollback()
            holder.close()
        assert runner.drain(WAIT_S * 3)
        assert all(runner.get(h.task_id).state is TaskState.COMPLETED for h in handles)
        assert executions.total == TASKS
        assert set(executions.runs.values()) == {1}  # each run once
        assert runner.status()["commit_window"]["unsettled"] == 0


def test_credits_come_back_for_cancelled_and_timed_out_attempts(tmp_path: Path) -> None:
    """A given-up attempt gives its credit back at once, even while its thread runs on."""
    release = threading.Event()
    started = threading.Semaphore(0)

    def stuck(task: TaskContext) -> None:
        started.release()
        release.wait(WAIT_S * 2)

    config = RunnerConfig(store=f"sqlite:///{tmp_path / 't.db'}", commit_window=0)
    with TaskRunner.start(config) as runner:
        runner.register_agent(
            AgentSpec(agent_id="w", capabilities={"work"}, max_concurrency=2), stuck
        )
        first = runner.submit(type="work")
        second = runner.submit(type="work", timeout_s=0.2, max_attempts=1)
        for _ in range(2):
            assert started.acquire(timeout=WAIT_S)
        assert runner.status()["commit_window"]["unsettled"] == 2
        first.cancel()
        # Both given up (one cancelled, one timed out): no credit is held for them, though
        # both threads are still inside the handler.
        wait_for(lambda: runner.status()["commit_window"]["unsettled"] == 0)
        wait_for(lambda: second.state() is TaskState.DEAD_LETTERED)  # timed out, no retry
        assert first.state() is TaskState.CANCELLED
        release.set()
        runner.stop(drain=False)


def test_a_memory_store_has_no_window(tmp_path: Path) -> None:
    with TaskRunner.start(RunnerConfig()) as runner:
        assert "commit_window" not in runner.status()
    with TaskRunner.start(RunnerConfig(store=f"sqlite:///{tmp_path / 't.db'}")) as runner:
        runner.register_agent(
            AgentSpec(agent_id="w", capabilities={"work"}, max_concurrency=4), lambda t: None
        )
        assert runner.status()["commit_window"] == {"limit": 256 + 4, "unsettled": 0, "waits": 0}
        runner.deregister_agent("w")
        assert runner.status()["commit_window"]["limit"] == 256


def test_an_orphaned_write_gives_its_credits_back(tmp_path: Path) -> None:
    """A Persist the journal failed on twice (redelivered once already) is orphaned: its
    outcomes will never be committed, so its credits must not stay held."""
    from messages.pipeline import Persist
    from messages.supervision import DeadLetter

    with TaskRunner.start(RunnerConfig(store=f"sqlite:///{tmp_path / 't.db'}")) as runner:
        window = runner._window
        assert window is not None
        for _ in range(3):
            window.enter()
        failed = Persist.fast(records=(), redelivered=True, settles=2)
        runner.system.dead_letter_office.publish(
            DeadLetter(recipient="journal", message=failed, reason="crashed")
        )
        assert runner.status()["commit_window"]["unsettled"] == 1


def test_crashes_of_every_actor_on_the_way_leak_no_credit(tmp_path: Path) -> None:
    """With no room beyond the slots, a credit lost in a crash (a write dropped, an
    attempt given back without its credit) would stop the workers for good: the run
    would not drain. Journal, agents, queue, router and retry crash all along."""
    config = RunnerConfig(
        store=f"sqlite:///{tmp_path / 't.db'}",
        commit_window=0,
        max_restarts=10_000,
        within_s=1.0,
        backoff_base_s=0.001,
        backoff_cap_s=0.01,
    )
    failing = iter(range(1_000_000))

    def sometimes_failing(task: TaskContext) -> int:
        if next(failing) % 20 == 0:
            raise RuntimeError("a failed attempt (retried)")
        return 1

    async def quick(task: TaskContext) -> int:
        return 2

    with TaskRunner.start(config) as runner:
        runner.register_agent(
            AgentSpec(agent_id="s", capabilities={"a"}, max_concurrency=4), sometimes_failing
        )
        runner.register_agent(AgentSpec(agent_id="y", capabilities={"b"}, max_concurrency=4), quick)
        stop = threading.Event()

        def crash_all_along() -> None:
            victims = ("journal", "agent:s", "agent:y", "queue", "router", "retry")
            number = 0
            while not stop.wait(0.01):  # (a pace for the crashes, not an ordering)
                runner.inject_crash(victims[number % len(victims)])
                number += 1

        crasher = threading.Thread(target=crash_all_along)
        crasher.start()
        try:
            runner.submit_many([{"type": "a" if n % 2 else "b"} for n in range(2000)])
            assert runner.drain(WAIT_S * 6)
        finally:
            stop.set()
            crasher.join(WAIT_S)
        status = runner.status()
        # Every task ended (none lost, none stuck); a task can rarely use up its three
        # attempts (a handler failure every 20th attempt, and an attempt counted each time
        # its agent crashes under it): then it is dead-lettered, as it should be.
        counts = status["counts"]
        assert counts["completed"] + counts["dead_lettered"] == 2000
        assert counts["dead_lettered"] <= 20
        assert status["restarts"] > 0
        assert status["commit_window"]["unsettled"] == 0
        assert status["commit_window"]["waits"] > 0  # the window was full, often
