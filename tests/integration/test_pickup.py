"""A runner on a SQLite file runs the tasks other processes store while it runs.

``arbiter submit`` (a runner with ``recover=False``) beside ``arbiter worker`` on one file:
the worker's journal looks for QUEUED tasks it does not have, every
``pickup_interval_s``, and queues them. Here the "other process" is a second runner on the
same file (its own connection, its own sequence reads): what it stores, the first one
runs, each task exactly once, its own tasks included.
"""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from messages import AgentSpec, PermanentError, TaskState
from messages.pipeline import Pickup
from supervisor import RunnerConfig, TaskContext, TaskRunner
from tests.conftest import WAIT_S, wait_for


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'tasks.db'}"


@pytest.fixture
def executed() -> Counter[uuid.UUID]:
    return Counter()


@pytest.fixture
def worker(url: str, executed: Counter[uuid.UUID]) -> Iterator[TaskRunner]:
    lock = threading.Lock()

    def handler(task: TaskContext) -> Any:
        with lock:
            executed[task.task_id] += 1
        if task.payload.get("fail"):
            raise PermanentError("told to fail")
        return task.payload.get("n")

    runner = TaskRunner.start(RunnerConfig(store=url, pickup_interval_s=0.01))
    runner.register_agent(AgentSpec(agent_id="a", capabilities={"t"}, max_concurrency=4), handler)
    yield runner
    runner.stop(drain=False)


def submitter(url: str) -> TaskRunner:
    """Another process's `arbiter submit`: stores tasks and runs none."""
    return TaskRunner.start(RunnerConfig(store=url, recover=False))


def picked_up(runner: TaskRunner) -> int:
    stats = runner._actor_statistics(runner._peers.get("journal"))
    return int(stats["picked_up"])


def test_tasks_another_process_stores_are_run_once(
    worker: TaskRunner, url: str, executed: Counter[uuid.UUID]
) -> None:
    other = submitter(url)
    try:
        ids = [
            h.task_id
            for h in other.submit_many({"type": "t", "payload": {"n": n}} for n in range(50))
        ]
    finally:
        other.stop(drain=False)
    results = [worker.wait(task_id, WAIT_S).result for task_id in ids]
    assert results == list(range(50))
    assert executed == Counter(dict.fromkeys(ids, 1))
    assert picked_up(worker) == 50


def test_own_and_foreign_submits_at_once_each_run_exactly_once(
    worker: TaskRunner, url: str, executed: Counter[uuid.UUID]
) -> None:
    other = submitter(url)
    ids: list[uuid.UUID] = []
    lock = threading.Lock()

    def submit(runner: TaskRunner) -> None:
        for n in range(150):
            handle = runner.submit(type="t", payload={"n": n})
            with lock:
                ids.append(handle.task_id)

    try:
        threads = [threading.Thread(target=submit, args=(r,)) for r in (worker, other)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(WAIT_S * 3)
    finally:
        other.stop(drain=False)
    assert len(ids) == 300
    for task_id in ids:
        assert worker.wait(task_id, WAIT_S).state is TaskState.COMPLETED
    assert executed == Counter(dict.fromkeys(ids, 1))  # the worker's own ones not picked up
    assert picked_up(worker) == 150


def test_a_dead_letter_requeued_by_another_process_is_run_again(
    worker: TaskRunner, url: str, executed: Counter[uuid.UUID]
) -> None:
    handle = worker.submit(type="t", payload={"fail": True})
    assert worker.wait(handle.task_id, WAIT_S).state is TaskState.DEAD_LETTERED
    other = submitter(url)
    try:
        assert other.requeue_dead_letters() == 1  # re-queued with its old sequence
    finally:
        other.stop(drain=False)
    wait_for(lambda: executed[handle.task_id] == 2)  # found by the sweep of older tasks
    assert worker.wait(handle.task_id, WAIT_S).state is TaskState.DEAD_LETTERED


def test_a_runner_that_only_submits_picks_up_nothing(url: str) -> None:
    first = submitter(url)
    second = submitter(url)
    try:
        first.submit(type="t")
        second.submit(type="t")
        assert second._peers.get("journal").ask(Pickup()) == 0  # off: it answers 0
        assert picked_up(second) == 0
        assert second.status()["counts"]["queued"] == 2
    finally:
        first.stop(drain=False)
        second.stop(drain=False)


def test_tasks_stored_before_the_start_are_recovered_not_picked_up(
    url: str, executed: Counter[uuid.UUID]
) -> None:
    other = submitter(url)
    try:
        ids = [h.task_id for h in other.submit_many({"type": "t"} for _ in range(20))]
    finally:
        other.stop(drain=False)
    runner = TaskRunner.start(RunnerConfig(store=url, pickup_interval_s=0.01))
    try:
        runner.register_agent(AgentSpec(agent_id="a", capabilities={"t"}), lambda t: None)
        for task_id in ids:
            assert runner.wait(task_id, WAIT_S).state is TaskState.COMPLETED
        assert picked_up(runner) == 0
    finally:
        runner.stop(drain=False)


@pytest.fixture
def asked_only(url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[TaskRunner]:
    """A runner that looks only when the test sends ``Pickup``, with small pages: 10
    heads a page, 2 pages of new heads and 1 page of the sweep per look."""
    import actors.journal.actor as journal_actor

    monkeypatch.setattr(journal_actor, "_PICKUP_PAGE", 10)
    monkeypatch.setattr(journal_actor, "_PICKUP_PAGES", 2)
    monkeypatch.setattr(journal_actor, "_SWEEP_PAGES", 1)
    runner = TaskRunner.start(RunnerConfig(store=url, pickup_interval_s=3600))
    yield runner
    runner.stop(drain=False)


def looks(runner: TaskRunner, count: int) -> list[int]:
    """What each of ``count`` looks, asked one after the other, queued."""
    journal = runner._peers.get("journal")
    return [journal.ask(Pickup(), timeout=WAIT_S) for _ in range(count)]


def test_a_long_backlog_is_looked_through_a_bounded_stretch_at_a_time(
    asked_only: TaskRunner, url: str
) -> None:
    # Each look reads at most _PICKUP_PAGES pages of _PICKUP_PAGE heads (so a million own
    # rows never hold the journal for seconds) and the next look goes on from there:
    # here 2 x 10 heads per look, through 30 own tasks then 50 foreign ones.
    runner = asked_only
    own = [h.task_id for h in runner.submit_many([{"type": "t"}] * 30)]
    other = submitter(url)
    try:
        foreign = [h.task_id for h in other.submit_many([{"type": "t"}] * 50)]
    finally:
        other.stop(drain=False)
    assert looks(runner, 5) == [0, 10, 20, 20, 0]  # heads 1-20 own, 21-40 half, then foreign
    runner.register_agent(AgentSpec(agent_id="a", capabilities={"t"}), lambda task: None)
    for task_id in own + foreign:
        assert runner.wait(task_id, WAIT_S).state is TaskState.COMPLETED


def test_the_sweep_finds_an_old_requeued_task_a_stretch_at_a_time(
    asked_only: TaskRunner, url: str
) -> None:
    # A task re-queued by another process keeps its old sequence, below what the looks
    # have seen: only the sweep through older QUEUED tasks finds it, _SWEEP_PAGES pages of
    # _PICKUP_PAGE heads per look (so a big backlog never makes one look long).
    runner = asked_only

    def fail(task: TaskContext) -> None:
        raise PermanentError("told to fail")

    runner.submit_many([{"type": "waits"}] * 35)  # own, QUEUED: no agent for them
    runner.register_agent(AgentSpec(agent_id="f", capabilities={"fails"}), fail)
    dead = runner.submit(type="fails")
    assert runner.wait(dead.task_id, WAIT_S).state is TaskState.DEAD_LETTERED
    assert looks(runner, 2) == [0, 0]  # seen all 36 (2 pages each); swept heads 1-20
    other = submitter(url)
    try:
        assert other.requeue_dead_letters() == 1
    finally:
        other.stop(drain=False)
    assert looks(runner, 4) == [0, 1, 0, 0]  # heads 21-30, then 31-36 with it
    assert runner.wait(dead.task_id, WAIT_S).state is TaskState.DEAD_LETTERED  # ran again


def test_a_look_that_meets_a_stopped_journal_is_dropped_not_dead_lettered(url: str) -> None:
    """The runner's periodic look is the journal's alarm: when the journal has stopped
    first (a runner stopping between its check and the ring), it rings for nobody, as
    nothing is lost by it, instead of a `supervisor.dead_letter` warning at shutdown."""
    runner = TaskRunner.start(RunnerConfig(store=url, pickup_interval_s=60.0))
    try:
        system = runner.system
        before = [letter for letter in system.dead_letters() if type(letter.message) is Pickup]
        system.stop_child("journal")
        runner._pickup_tick()  # as the timer would, with the runner not stopped yet
        after = [letter for letter in system.dead_letters() if type(letter.message) is Pickup]
        assert after == before == []
    finally:
        runner.stop(drain=False)
