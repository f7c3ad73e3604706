"""The sync handler's worker pool (``actors.agent._Workers``) with real threads.

Each job wakes one parked worker, never all of them; jobs run in order on one worker and
side by side on several; shutdown ends every thread; a job submitted while every worker
is busy waits in the line and is taken by the first to finish.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.agent import TaskContext, _Workers
from tests.conftest import WAIT_S, wait_for


def _context(n: int) -> TaskContext:
    return TaskContext(uuid.uuid4(), "noop", {"n": n}, 1, "a1")


class _Pool:
    """A pool whose outcomes are collected, in the order the workers report them."""

    def __init__(self, size: int, handler: Callable[[TaskContext], Any]) -> None:
        self.outcomes: list[Any] = []
        self.lock = threading.Lock()
        self.reported = threading.Condition(self.lock)
        self.workers = _Workers(
            handler, size, f"test-{uuid.uuid4().hex[:8]}", self.report, _now, self.start
        )

    def report(self, done: Any) -> None:
        with self.reported:
            self.outcomes.append(done)
            self.reported.notify_all()

    def start(self, context: TaskContext, started: float) -> None:
        raise AssertionError("no job here is handed early")

    def wait_outcomes(self, count: int) -> list[Any]:
        with self.reported:
            assert self.reported.wait_for(lambda: len(self.outcomes) >= count, WAIT_S)
            return list(self.outcomes)


def _now() -> float:
    return 0.0


@pytest.fixture
def pools() -> Iterator[list[_Pool]]:
    made: list[_Pool] = []
    yield made
    for pool in made:
        pool.workers.shutdown()


def _payload_n(done: Any) -> int:
    context, ok = done[0], done[1]
    assert ok, done
    return int(context.payload["n"])


def test_each_job_wakes_one_parked_worker(pools: list[_Pool]) -> None:
    pool = _Pool(4, lambda task: task.payload["n"])
    pools.append(pool)
    workers = pool.workers
    wait_for(lambda: workers.parked == 4)
    assert workers.parks == 4
    for n in range(50):
        workers.submit(_context(n))
        pool.wait_outcomes(n + 1)
        wait_for(lambda: workers.parked == 4)
    # One worker woke for each job and parked again after it; waking every parked worker
    # (or one waking the next for nothing) would have parked them again too.
    assert workers.parks == 4 + 50
    assert [_payload_n(done) for done in pool.outcomes] == list(range(50))


def test_a_batch_wakes_as_many_workers_as_it_has_jobs(pools: list[_Pool]) -> None:
    barrier = threading.Barrier(3, timeout=WAIT_S)

    def handler(task: TaskContext) -> int:
        barrier.wait()  # three jobs at once, or this breaks
        return int(task.payload["n"])

    pool = _Pool(4, handler)
    pools.append(pool)
    wait_for(lambda: pool.workers.parked == 4)
    pool.workers.submit_all([_context(n) for n in range(3)])
    assert sorted(_payload_n(done) for done in pool.wait_outcomes(3)) == [0, 1, 2]
    assert pool.workers.parked <= 4
    wait_for(lambda: pool.workers.parked == 4)
    assert pool.workers.parks == 4 + 3  # the fourth worker slept through it


def test_jobs_wait_in_the_line_while_every_worker_is_busy(pools: list[_Pool]) -> None:
    release = threading.Event()
    started = threading.Event()

    def handler(task: TaskContext) -> int:
        if task.payload["n"] == 0:
            started.set()
            assert release.wait(WAIT_S)
        return int(task.payload["n"])

    pool = _Pool(1, handler)
    pools.append(pool)
    pool.workers.submit(_context(0))
    assert started.wait(WAIT_S)
    pool.workers.submit_all([_context(1), _context(2)])
    pool.workers.submit(_context(3))
    assert pool.workers.parked == 0
    release.set()
    # The busy worker takes the line's jobs as it finishes, in their order.
    assert [_payload_n(done) for done in pool.wait_outcomes(4)] == [0, 1, 2, 3]
    wait_for(lambda: pool.workers.parked == 1)


def test_one_worker_runs_jobs_in_submission_order(pools: list[_Pool]) -> None:
    pool = _Pool(1, lambda task: task.payload["n"])
    pools.append(pool)
    pool.workers.submit(_context(0))
    pool.workers.submit_all([_context(n) for n in range(1, 20)])
    pool.workers.submit(_context(20))
    assert [_payload_n(done) for done in pool.wait_outcomes(21)] == list(range(21))


def test_a_failing_handler_is_reported_and_the_worker_goes_on(pools: list[_Pool]) -> None:
    def handler(task: TaskContext) -> int:
        if task.payload["n"] == 1:
            raise ValueError("broken handler")
        return int(task.payload["n"])

    pool = _Pool(1, handler)
    pools.append(pool)
    pool.workers.submit_all([_context(n) for n in range(3)])
    outcomes = pool.wait_outcomes(3)
    assert [done[1] for done in outcomes] == [True, False, True]
    assert outcomes[1][3] == "ValueError: broken handler"


def test_shutdown_ends_every_thread(pools: list[_Pool]) -> None:
    pool = _Pool(3, lambda task: None)
    name = pool.workers._name
    wait_for(lambda: pool.workers.parked == 3)
    ours = [t for t in threading.enumerate() if t.name.startswith(f"agent-{name}-")]
    assert len(ours) == 3
    pool.workers.shutdown()
    for thread in ours:
        thread.join(WAIT_S)
        assert not thread.is_alive()


def test_the_given_up_thread_retires_and_its_replacement_stays(pools: list[_Pool]) -> None:
    stuck, hanging = threading.Event(), threading.Event()

    def handler(task: TaskContext) -> None:
        if task.payload["n"] == 0:
            hanging.set()
            assert stuck.wait(WAIT_S)

    pool = _Pool(1, handler)
    pools.append(pool)
    name = pool.workers._name
    live = lambda: [t for t in threading.enumerate() if t.name.startswith(f"agent-{name}-")]  # noqa: E731
    hung = _context(0)
    pool.workers.submit(hung)  # holds the only worker
    assert hanging.wait(WAIT_S)
    hung._cancelled[0] = True  # given up while it runs, as the executor does it
    pool.workers.replace_stuck()
    # The handler still hangs: the replacement runs every job that comes meanwhile (a
    # replacement that retired after its first job left these waiting behind the hang).
    for n in range(1, 4):
        pool.workers.submit(_context(n))
        assert _payload_n(pool.wait_outcomes(n)[-1]) == n
    assert len(live()) == 2
    stuck.set()
    pool.wait_outcomes(4)
    wait_for(lambda: len(live()) == 1)  # the hung thread retired once its handler returned
    pool.workers.submit(_context(4))
    assert _payload_n(pool.wait_outcomes(5)[-1]) == 4


@settings(max_examples=25, deadline=None)
@given(
    size=st.integers(1, 4),
    batches=st.lists(st.integers(0, 6), min_size=1, max_size=8),
)
def test_every_job_runs_exactly_once(size: int, batches: list[int]) -> None:
    pool = _Pool(size, lambda task: task.payload["n"])
    try:
        n = 0
        for batch in batches:
            contexts = [_context(n + i) for i in range(batch)]
            n += batch
            if batch == 1:
                pool.workers.submit(contexts[0])
            else:
                pool.workers.submit_all(contexts)
        if n:
            outcomes = pool.wait_outcomes(n)
            assert sorted(_payload_n(done) for done in outcomes) == list(range(n))
        wait_for(lambda: pool.workers.parked == size)
        assert len(pool.outcomes) == n
    finally:
        pool.workers.shutdown()
