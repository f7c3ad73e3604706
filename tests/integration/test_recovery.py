"""A runner restarted on the same SQLite file picks up where the last one stopped."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path

from actors.journal import open_store
from messages import AgentSpec, TaskState, utcnow
from supervisor import RunnerConfig, TaskContext, TaskRunner
from tests.conftest import WAIT_S


def record_key(seen: list[str | None], lock: threading.Lock):  # type: ignore[no-untyped-def]
    def handler(task: TaskContext) -> int:
        with lock:
            seen.append(task.idempotency_key)
        return task.attempt

    return handler


def test_queued_tasks_survive_a_stop_and_run_after_restart(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'tasks.db'}"
    first = TaskRunner.start(RunnerConfig(store=url))
    ids = [
        h.task_id for h in first.submit_many([{"type": "t", "priority": n % 3} for n in range(50)])
    ]
    assert first.stop(drain=False) is False  # nothing could run: no agent
    seen: list[str | None] = []
    second = TaskRunner.start(RunnerConfig(store=url))
    try:
        second.register_agent(
            AgentSpec(agent_id="a", capabilities={"t"}), record_key(seen, threading.Lock())
        )
        assert [second.handle(i).result(WAIT_S) for i in ids] == [1] * 50
        assert second.status()["recovered"] == 50
    finally:
        second.stop()
    assert len(seen) == 50


def test_an_interrupted_attempt_counts_and_retry_wait_keeps_its_due_time(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'tasks.db'}"
    first = TaskRunner.start(RunnerConfig(store=url))
    running, waiting, exhausted = first.submit_many(
        [{"type": "t"}, {"type": "t"}, {"type": "t", "max_attempts": 1}]
    )
    first.stop(drain=False)
    # Make the store look like a runner died mid-flight: one task RUNNING (attempt 1), one
    # RUNNING on its last attempt, one waiting for a retry due in the past.
    now = utcnow()
    with open_store(url) as store:
        records = [store.get(h.task_id) for h in (running, waiting, exhausted)]
        assert all(r is not None for r in records)
        r0, r1, r2 = records  # type: ignore[misc]
        store.apply(
            (),
            [
                r0.evolve(state=TaskState.RUNNING, attempt=1, agent_id="gone"),
                r1.evolve(
                    state=TaskState.RETRY_WAIT,
                    attempt=1,
                    next_attempt_at=now - timedelta(seconds=1),
                ),
                r2.evolve(state=TaskState.RUNNING, attempt=1, agent_id="gone"),
            ],
        )
    seen: list[str | None] = []
    second = TaskRunner.start(RunnerConfig(store=url, backoff_base_s=0.001))
    try:
        second.register_agent(
            AgentSpec(agent_id="a", capabilities={"t"}), record_key(seen, threading.Lock())
        )
        assert second.handle(running.task_id).result(WAIT_S) == 2  # attempt 1 counted
        assert second.handle(waiting.task_id).result(WAIT_S) == 2
        dead = second.handle(exhausted.task_id)
        assert second.wait(dead.task_id, WAIT_S).state is TaskState.DEAD_LETTERED
        assert "attempts_exhausted" in (dead.record().last_error or "")
    finally:
        second.stop()


def test_a_recovered_retry_wait_waits_in_the_retry_scheduler_and_can_be_cancelled(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'tasks.db'}"
    first = TaskRunner.start(RunnerConfig(store=url))
    later, soon = first.submit_many([{"type": "t"}, {"type": "t", "payload": 2}])
    first.stop(drain=False)
    now = utcnow()
    with open_store(url) as store:
        waiting = []
        for handle, left in ((later, timedelta(hours=1)), (soon, timedelta(seconds=0.2))):
            record = store.get(handle.task_id)
            assert record is not None
            waiting.append(
                record.evolve(state=TaskState.RETRY_WAIT, attempt=1, next_attempt_at=now + left)
            )
        store.apply((), waiting)
    second = TaskRunner.start(RunnerConfig(store=url))
    try:
        second.register_agent(AgentSpec(agent_id="a", capabilities={"t"}), lambda t: t.attempt)
        assert second.status()["recovered"] == 2
        assert second.cancel(later.task_id)  # the retry scheduler holds it
        assert second.get(later.task_id).state is TaskState.CANCELLED
        done = second.wait(soon.task_id, WAIT_S)
        assert done.result == 2
        started = done.history[-1].started_at
        assert started is not None and started >= now + timedelta(seconds=0.2)
        assert second.get(later.task_id).state is TaskState.CANCELLED
    finally:
        second.stop()


def test_idempotency_keys_deduplicate_across_restarts(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'tasks.db'}"
    with TaskRunner.start(RunnerConfig(store=url)) as first:
        original = first.submit(type="t", idempotency_key="order-42")
        again = first.submit(type="t", idempotency_key="order-42")
        assert again.task_id == original.task_id
        first.stop(drain=False)
    seen: list[str | None] = []
    with TaskRunner.start(RunnerConfig(store=url)) as second:
        assert second.submit(type="t", idempotency_key="order-42").task_id == original.task_id
        second.register_agent(
            AgentSpec(agent_id="a", capabilities={"t"}), record_key(seen, threading.Lock())
        )
        assert second.handle(original.task_id).result(WAIT_S) == 1
        assert second.status()["counts"]["completed"] == 1
    assert seen == ["order-42"]  # the handler sees the key, to make its effect exactly-once


def test_a_corrupt_store_is_a_clear_error_naming_the_file(tmp_path: Path) -> None:
    import pytest

    from messages import StoreCorrupt

    bad = tmp_path / "not-a-db.db"
    bad.write_bytes(b"this is not an sqlite file" * 100)
    with pytest.raises(StoreCorrupt, match=r"not-a-db\.db"):
        TaskRunner.start(RunnerConfig(store=f"sqlite:///{bad}"))
    assert bad.read_bytes() == b"this is not an sqlite file" * 100  # left as it was


def test_a_locked_store_fails_the_submit_clearly_and_loses_nothing(tmp_path: Path) -> None:
    import sqlite3

    import pytest

    from messages import StoreUnavailable

    path = tmp_path / "locked.db"
    url = f"sqlite:///{path}?busy_timeout=0.1"
    with TaskRunner.start(RunnerConfig(store=url)) as runner:
        kept = runner.submit(type="t")
        holder = sqlite3.connect(path)
        holder.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
        try:
            with pytest.raises(StoreUnavailable, match=r"locked\.db"):
                runner.submit(type="t")
        finally:
            holder.rollback()
            holder.close()
        again = runner.submit(type="t")  # the lock is gone: the runner carries on
        assert runner.restarts() <= 1  # the journal may have been restarted; no escalation
        assert runner.get(kept.task_id).state is TaskState.QUEUED
        assert runner.get(again.task_id).state is TaskState.QUEUED
        assert runner.status()["counts"]["queued"] == 2  # the refused submit stored nothing
        runner.stop(drain=False)
