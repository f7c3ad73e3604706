"""Delayed tasks and cron entries through a real runner (memory and SQLite stores).

Waits are on task results and counters with timeouts; no test sleeps for ordering. A
delayed task's start is checked against its run time on the records the runner writes.
"""

from __future__ import annotations

import math
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from actors.core.scheduler import cron_key
from messages import (
    AgentSpec,
    CronSpec,
    InvalidMessage,
    LifecycleEvent,
    QueueFull,
    TaskSpec,
    TaskState,
)
from messages.pipeline import Tick
from supervisor import RunnerConfig, TaskContext, TaskRunner
from tests.conftest import WAIT_S, wait_for


class Recorder:
    """A handler that counts runs by task type (thread-safe)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.runs: Counter[str] = Counter()
        self.keys: list[str | None] = []

    def __call__(self, task: TaskContext) -> Any:
        with self.lock:
            self.runs[task.type] += 1
        return task.payload.get("n")


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def runner(recorder: Recorder) -> Iterator[TaskRunner]:
    with TaskRunner.start(RunnerConfig(queue_capacity=2)) as started:
        started.register_agent(
            AgentSpec(agent_id="a", capabilities={"t", "c", "d"}, max_concurrency=2), recorder
        )
        yield started


def scheduler_stats(runner: TaskRunner) -> dict[str, Any]:
    stats: dict[str, Any] = runner.status()["scheduler"]
    return stats


def test_a_delayed_task_waits_pending_and_starts_no_sooner_than_its_run_time(
    runner: TaskRunner,
) -> None:
    handle = runner.submit({"type": "t", "payload": {"n": 1}}, delay_s=0.3)
    waiting = handle.record()
    assert waiting.state is TaskState.PENDING
    assert waiting.next_attempt_at is not None
    assert waiting.next_attempt_at - waiting.created_at == timedelta(seconds=0.3)
    assert handle.result(WAIT_S) == 1
    done = handle.record()
    assert done.history[0].started_at is not None
    assert done.history[0].started_at >= waiting.next_attempt_at
    assert done.next_attempt_at is None
    assert scheduler_stats(runner)["released"] == 1


def test_run_at_delays_until_that_instant_and_a_past_one_runs_at_once(
    runner: TaskRunner,
) -> None:
    later = datetime.now(UTC) + timedelta(seconds=0.2)
    delayed = runner.submit(TaskSpec(type="t", payload={"n": 2}), run_at=later)
    past = runner.submit(TaskSpec(type="t", payload={"n": 3}), run_at=later - timedelta(hours=1))
    assert delayed.record().next_attempt_at == later
    assert past.record().next_attempt_at is None  # queued at once, never PENDING
    assert past.result(WAIT_S) == 3
    assert delayed.result(WAIT_S) == 2
    started = delayed.record().history[0].started_at
    assert started is not None and started >= later


def test_a_cancelled_delayed_task_never_runs(runner: TaskRunner, recorder: Recorder) -> None:
    cancelled = runner.submit({"type": "d"}, delay_s=0.2)
    after = runner.submit({"type": "t", "payload": {"n": 4}}, delay_s=0.3)
    assert cancelled.cancel()
    assert cancelled.state() is TaskState.CANCELLED
    assert not cancelled.cancel()  # already ended
    # The scheduler releases by run time: when the later task has run, the cancelled one
    # would have been released before it.
    assert after.result(WAIT_S) == 4
    assert recorder.runs["d"] == 0
    assert scheduler_stats(runner)["delayed"] == 0


def test_delayed_tasks_hold_no_queue_capacity(runner: TaskRunner) -> None:
    # queue_capacity is 2: five delayed tasks are accepted all the same, and run when due.
    handles = runner.submit_many(
        [{"type": "t", "payload": {"n": n}} for n in range(5)], delay_s=0.1
    )
    assert [h.result(WAIT_S) for h in handles] == [0, 1, 2, 3, 4]
    assert runner.status()["queue"]["admitted"] == 0


def test_a_full_queue_still_refuses_tasks_due_now(recorder: Recorder) -> None:
    gate = threading.Event()

    def blocked(task: TaskContext) -> None:
        gate.wait(WAIT_S)

    with TaskRunner.start(RunnerConfig(queue_capacity=1)) as runner:
        runner.submit({"type": "t"})
        with pytest.raises(QueueFull):
            runner.submit({"type": "t"})
        runner.submit({"type": "t"}, delay_s=3600)  # accepted: it waits outside the queue
        runner.register_agent(AgentSpec(agent_id="a", capabilities={"t"}), blocked)
        gate.set()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"delay_s": 1, "run_at": datetime.now(UTC)}, "not both"),
        ({"delay_s": -1}, "between 0 and"),
        ({"delay_s": math.nan}, "between 0 and"),
        ({"delay_s": math.inf}, "between 0 and"),
        ({"delay_s": True}, "a number of seconds"),
        ({"delay_s": "5"}, "a number of seconds"),
        ({"run_at": datetime(2030, 1, 1)}, "timezone-aware"),
        ({"run_at": "2030-01-01T00:00:00Z"}, "timezone-aware"),
    ],
)
def test_bad_delays_are_refused_at_submit_and_nothing_is_stored(
    runner: TaskRunner, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidMessage, match=message):
        runner.submit({"type": "t"}, **options)
    assert runner.unfinished() == 0


def test_a_deadline_before_the_run_time_is_refused(runner: TaskRunner) -> None:
    deadline = datetime.now(UTC) + timedelta(seconds=10)
    with pytest.raises(InvalidMessage, match="not after its run time"):
        runner.submit(TaskSpec(type="t", deadline=deadline), delay_s=60)
    assert runner.unfinished() == 0
    handle = runner.submit(TaskSpec(type="t", payload={"n": 5}, deadline=deadline), delay_s=0.05)
    assert handle.result(WAIT_S) == 5


def test_drain_does_not_wait_for_tasks_not_yet_due(runner: TaskRunner) -> None:
    far = runner.submit({"type": "t"}, delay_s=3600)
    near = runner.submit({"type": "t", "payload": {"n": 6}}, delay_s=0.05)
    assert runner.drain(timeout=WAIT_S)
    assert near.state() is TaskState.COMPLETED
    assert far.state() is TaskState.PENDING
    assert runner.unfinished() == 1


def test_a_crashed_scheduler_keeps_its_delayed_tasks(
    runner: TaskRunner, logs: list[dict[str, Any]]
) -> None:
    handles = runner.submit_many(
        [{"type": "t", "payload": {"n": n}} for n in range(20)], delay_s=0.3
    )
    runner.inject_crash("scheduler")
    wait_for(lambda: runner.status()["actors"]["scheduler"]["restarts"] == 1)
    assert [h.result(WAIT_S) for h in handles] == list(range(20))
    assert any(
        e["event"] == "supervisor.child_restarted" and e["child"] == "scheduler" for e in logs
    )


def test_delayed_tasks_survive_a_restart_of_a_sqlite_runner(
    tmp_path: Path, recorder: Recorder
) -> None:
    url = f"sqlite:///{tmp_path / 'tasks.db'}"
    first = TaskRunner.start(RunnerConfig(store=url))
    later = first.submit({"type": "t", "payload": {"n": 7}}, delay_s=0.5)
    passed = first.submit({"type": "t", "payload": {"n": 8}}, delay_s=0.05)
    far = first.submit({"type": "t", "payload": {"n": 9}}, delay_s=3600)
    run_at = later.record().next_attempt_at
    first.stop(drain=False)  # no agent here: the delayed tasks stay in the file
    with TaskRunner.start(RunnerConfig(store=url)) as second:
        assert second.get(far.task_id).state is TaskState.PENDING
        second.register_agent(AgentSpec(agent_id="a", capabilities={"t"}), recorder)
        assert second.handle(passed.task_id).result(WAIT_S) == 8
        assert second.handle(later.task_id).result(WAIT_S) == 7
        started = second.get(later.task_id).history[0].started_at
        assert run_at is not None and started is not None and started >= run_at
        assert second.status()["scheduler"]["delayed"] == 1  # the far one waits
        assert far.task_id not in {r.task_id for r in second.dead_letters()}


def test_a_delayed_task_stored_by_another_process_is_picked_up(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'tasks.db'}"
    recorder = Recorder()
    with TaskRunner.start(RunnerConfig(store=url, pickup_interval_s=0.01)) as worker:
        worker.register_agent(AgentSpec(agent_id="a", capabilities={"t"}), recorder)
        with TaskRunner.start(RunnerConfig(store=url, recover=False)) as submitter:
            handle = submitter.submit({"type": "t", "payload": {"n": 10}}, delay_s=0.2)
            run_at = handle.record().next_attempt_at
        assert worker.handle(handle.task_id).result(WAIT_S) == 10
        started = worker.get(handle.task_id).history[0].started_at
        assert run_at is not None and started is not None and started >= run_at


# -- cron ------------------------------------------------------------------------------------
EVERY_SECOND = "* * * * * *"


def cron_tasks(runner: TaskRunner, name: str) -> list[str]:
    """Idempotency keys of the tasks cron entry ``name`` submitted, in the store."""
    store = runner._require_store()
    return sorted(
        r.spec.idempotency_key or ""
        for r in store.list_tasks(limit=10_000)
        if (r.spec.idempotency_key or "").startswith(f"cron:{name}:")
    )


def test_a_cron_entry_submits_one_task_per_fire_time(
    runner: TaskRunner, recorder: Recorder, logs: list[dict[str, Any]]
) -> None:
    first = runner.add_cron(CronSpec(name="beat", cron=EVERY_SECOND, task=TaskSpec(type="c")))
    assert first > datetime.now(UTC) - timedelta(seconds=1)
    assert [e["name"] for e in runner.cron_entries()] == ["beat"]
    wait_for(lambda: recorder.runs["c"] >= 2)
    keys = cron_tasks(runner, "beat")
    assert len(keys) == len(set(keys)) >= 2
    assert keys[0] == f"cron:beat:{first.isoformat()}"
    # (logged once the journal answered: possibly after the task ran)
    wait_for(lambda: sum(e["event"] == "scheduler.cron_fired" for e in logs) >= 2)
    fired = [e for e in logs if e["event"] == "scheduler.cron_fired"]
    assert [e["fire"] for e in fired][:2] == [k.removeprefix("cron:beat:") for k in keys[:2]]


def test_a_removed_cron_entry_fires_no_more(runner: TaskRunner, recorder: Recorder) -> None:
    runner.add_cron(CronSpec(name="gone", cron=EVERY_SECOND, task=TaskSpec(type="c")))
    wait_for(lambda: scheduler_stats(runner)["cron_fired"] >= 1)
    assert runner.remove_cron("gone")
    assert not runner.remove_cron("gone")
    fired = scheduler_stats(runner)["cron_fired"]
    runner.add_cron(CronSpec(name="other", cron=EVERY_SECOND, task=TaskSpec(type="d")))
    wait_for(lambda: recorder.runs["d"] >= 2)
    assert len(cron_tasks(runner, "gone")) == fired
    # "other" may fire between two reads: its count in the store brackets the counter.
    before = len(cron_tasks(runner, "other"))
    counted = scheduler_stats(runner)["cron_fired"]
    after = len(cron_tasks(runner, "other"))
    assert fired + before <= counted <= fired + after
    assert [e["name"] for e in runner.cron_entries()] == ["other"]


def test_cron_entries_in_the_config_start_with_the_runner(recorder: Recorder) -> None:
    entry = CronSpec(name="boot", cron=EVERY_SECOND, task=TaskSpec(type="c"))
    with TaskRunner.start(RunnerConfig(cron=(entry,))) as runner:
        runner.register_agent(AgentSpec(agent_id="a", capabilities={"c"}), recorder)
        wait_for(lambda: recorder.runs["c"] >= 1)
    with pytest.raises(ValueError, match="distinct names"):
        RunnerConfig(cron=(entry, entry))


class ShiftedClock:
    """The system's clock, with wall time moved by ``offset`` (the test sets it)."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def monotonic(self) -> float:
        return time.monotonic()

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset


def test_a_fire_time_whose_task_exists_makes_no_second_task() -> None:
    """The key is the guard: a task already stored under a fire time's key (another
    runner's fire) is found, not duplicated."""
    clock = ShiftedClock()
    with TaskRunner.start(RunnerConfig(), clock=clock) as runner:
        fire = runner.add_cron(CronSpec(name="yearly", cron="0 0 1 1 *", task=TaskSpec(type="c")))
        key = cron_key("yearly", fire)
        mine = runner.submit(TaskSpec(type="c", idempotency_key=key))
        clock.offset = fire - datetime.now(UTC) + timedelta(seconds=1)  # just past the fire
        runner._peers.get("scheduler").tell(Tick.fast(at=0.0))  # look now
        wait_for(lambda: scheduler_stats(runner)["cron_duplicates"] == 1)
        stats = scheduler_stats(runner)
        assert stats["cron_fired"] == 0
        stored = runner._require_store().get_by_idempotency_key(key)
        assert stored is not None and stored.task_id == mine.task_id
        assert cron_tasks(runner, "yearly") == [key]
        # The entry waits for the next year's fire time now.
        (entry,) = runner.cron_entries()
        assert datetime.fromisoformat(entry["next_fire"]).year == fire.year + 1
        runner.stop(drain=False)  # no agent: the task waits in the queue


def test_a_bad_cron_spec_is_refused_at_the_boundary(runner: TaskRunner) -> None:
    with pytest.raises(InvalidMessage):
        runner.add_cron({"name": "x", "cron": "every day", "task": {"type": "c"}})
    assert runner.cron_entries() == []


def test_a_cron_fire_the_store_refuses_is_logged_and_the_next_one_stores_its_task(
    tmp_path: Path, logs: list[dict[str, Any]]
) -> None:
    path = tmp_path / "locked.db"
    url = f"sqlite:///{path}?busy_timeout=0.1"
    with TaskRunner.start(RunnerConfig(store=url)) as runner:
        holder = sqlite3.connect(path)
        holder.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
        try:
            runner.add_cron(CronSpec(name="beat", cron=EVERY_SECOND, task=TaskSpec(type="c")))
            wait_for(lambda: scheduler_stats(runner)["cron_failed"] >= 1)
        finally:
            holder.rollback()
            holder.close()
        wait_for(lambda: scheduler_stats(runner)["cron_fired"] >= 1)
        failed = [e for e in logs if e["event"] == "scheduler.cron_failed"]
        assert failed and "locked.db" in failed[0]["error"]
        assert failed[0]["names"] == ["beat"]
        # Fires go on meanwhile: the counter, read before and after, brackets the store.
        before = scheduler_stats(runner)["cron_fired"]
        stored = len(cron_tasks(runner, "beat"))
        assert before <= stored <= scheduler_stats(runner)["cron_fired"]
        runner.stop(drain=False)


def test_lifecycle_events_of_a_delayed_task(runner: TaskRunner) -> None:
    events: list[LifecycleEvent] = []
    runner.subscribe(events.append)
    handle = runner.submit({"type": "t", "payload": {"n": 11}}, delay_s=0.05)
    assert handle.result(WAIT_S) == 11
    started = handle.record().history[0].started_at
    wait_for(lambda: any(e.name == "task.completed" for e in events))
    mine = [e for e in events if e.task_id == handle.task_id]
    assert [e.name for e in mine][:2] == ["task.submitted", "task.queued"]
    run_at = datetime.fromisoformat(mine[0].data["run_at"])
    assert started is not None and run_at <= started
    assert mine[1].at >= run_at  # queued at its run time, not at submit
