"""The whole pipeline through the host API: real actors, real threads, the memory store."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from messages import (
    AgentSpec,
    InvalidMessage,
    LifecycleEvent,
    PayloadTooLarge,
    PermanentError,
    QueueFull,
    TaskCancelledError,
    TaskFailedError,
    TaskSpec,
    TaskState,
    TaskTimeout,
    UnknownAgent,
    utcnow,
)
from messages.supervision import GetStatistics
from supervisor import RunnerConfig, TaskContext, TaskRunner
from tests.conftest import WAIT_S, wait_for

FAST_RETRY = {"backoff_base_s": 0.001, "backoff_cap_s": 0.01}


@pytest.fixture
def make_runner() -> Iterator[Callable[..., TaskRunner]]:
    runners: list[TaskRunner] = []

    def _make(**options: Any) -> TaskRunner:
        runner = TaskRunner.start(RunnerConfig(**{**FAST_RETRY, **options}))
        runners.append(runner)
        return runner

    yield _make
    for runner in runners:
        runner.stop(drain=False)


def echo(task: TaskContext) -> dict[str, Any]:
    return {"payload": task.payload, "attempt": task.attempt, "agent": task.agent_id}


class Gate:
    """A handler that blocks until opened, recording the order tasks started in."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.started: list[Any] = []
        self.first_started = threading.Event()
        self._lock = threading.Lock()

    def __call__(self, task: TaskContext) -> Any:
        with self._lock:
            self.started.append(task.payload)
        self.first_started.set()
        if not self.open.wait(WAIT_S):
            raise TimeoutError("gate never opened")
        return task.payload


def agent(agent_id: str = "a1", *caps: str, concurrency: int = 1) -> AgentSpec:
    return AgentSpec(
        agent_id=agent_id, capabilities=frozenset(caps or ("code",)), max_concurrency=concurrency
    )


# -- the happy path -------------------------------------------------------------------------


def test_submit_runs_the_task_and_returns_its_result(
    make_runner: Callable[..., TaskRunner],
) -> None:
    runner = make_runner()
    runner.register_agent(agent(), echo)
    handle = runner.submit(TaskSpec(type="code", payload={"file": "a.py"}))
    assert handle.result(timeout=WAIT_S) == {
        "payload": {"file": "a.py"},
        "attempt": 1,
        "agent": "a1",
    }
    record = handle.record()
    assert record.state is TaskState.COMPLETED
    assert record.attempt == 1
    assert [a.outcome for a in record.history] == ["completed"]
    assert record.agent_id == "a1"


def test_a_started_task_is_running_in_the_store_before_its_handler_runs(
    make_runner: Callable[..., TaskRunner],
) -> None:
    """The executor gives a worker its job only at the end of its turn, after the
    RUNNING version is written (memory://: by the executor itself), so a handler always
    finds its task RUNNING in this attempt (without a prefetch: a prefetched task is
    made RUNNING as its worker takes it)."""
    runner = make_runner(prefetch_window_ms=0.0, prefetch=0.0)
    seen: list[tuple[TaskState, int]] = []
    store = runner._require_store()
    write = store.apply
    pause = threading.Event()  # never set: a short wait that lets other threads run

    def slow_write(inserts: Any, updates: Any) -> Any:
        # A write that gives up the interpreter first: a worker given its job before
        # the write would run its handler now, and find its task still QUEUED.
        if any(record.state is TaskState.RUNNING for record in updates):
            pause.wait(0.002)
        return write(inserts, updates)

    store.apply = slow_write  # type: ignore[method-assign]

    def look(task: TaskContext) -> None:
        record = runner.get(task.task_id)
        seen.append((record.state, record.attempt))

    runner.register_agent(agent(concurrency=2), look)
    handles = runner.submit_many([{"type": "code"} for _ in range(40)])
    for handle in handles:
        handle.result(WAIT_S)
    assert seen == [(TaskState.RUNNING, 1)] * 40


def test_keyword_and_mapping_submits_are_validated_the_same(
    make_runner: Callable[..., TaskRunner],
) -> None:
    runner = make_runner()
    runner.register_agent(agent(), echo)
    by_keywords = runner.submit(type="code", payload=[1, 2])
    by_mapping = runner.submit({"type": "code", "payload": {"k": None}})
    assert by_keywords.result(WAIT_S)["payload"] == [1, 2]
    assert by_mapping.result(WAIT_S)["payload"] == {"k": None}


def test_async_handlers_run_on_the_agents_loop(make_runner: Callable[..., TaskRunner]) -> None:
    async def handler(task: TaskContext) -> int:
        await asyncio.sleep(0)
        return int(task.payload["n"]) * 2

    runner = make_runner()
    runner.register_agent(agent(concurrency=3), handler)
    handles = runner.submit_many([{"type": "code", "payload": {"n": n}} for n in range(20)])
    assert [h.result(WAIT_S) for h in handles] == [n * 2 for n in range(20)]


def test_handlers_load_from_module_paths(make_runner: Callable[..., TaskRunner]) -> None:
    runner = make_runner()
    runner.register_agent(agent(), "tests.integration.test_pipeline:echo")
    assert runner.submit(type="code").result(WAIT_S)["attempt"] == 1
    with pytest.raises(InvalidMessage, match="module:function"):
        runner.register_agent(agent("a2"), "no_colon_here")
    with pytest.raises(InvalidMessage, match="cannot import"):
        runner.register_agent(agent("a3"), "no_such_module_xyz:f")


# -- the queue ------------------------------------------------------------------------------


def test_higher_priority_runs_first_and_fifo_among_equals(
    make_runner: Callable[..., TaskRunner],
) -> None:
    gate = Gate()
    runner = make_runner()
    runner.register_agent(agent(), gate)
    runner.submit(type="code", payload="blocker")
    assert gate.first_started.wait(WAIT_S)
    # The only agent is busy, so everything below waits in the queue.
    order = [("low-1", 0), ("high-1", 9), ("mid", 5), ("low-2", 0), ("high-2", 9)]
    handles = [runner.submit(type="code", payload=name, priority=p) for name, p in order]
    gate.open.set()
    for handle in handles:
        handle.result(WAIT_S)
    assert gate.started == ["blocker", "high-1", "high-2", "mid", "low-1", "low-2"]


def test_full_queue_pushes_back_and_loses_nothing(make_runner: Callable[..., TaskRunner]) -> None:
    gate = Gate()
    runner = make_runner(queue_capacity=2)
    runner.register_agent(agent(), gate)
    first = runner.submit(type="code", payload=0)
    assert gate.first_started.wait(WAIT_S)  # it left the queue: its credit is back
    waiting = [runner.submit(type="code", payload=n) for n in (1, 2)]
    with pytest.raises(QueueFull, match="queue is full"):
        runner.submit(type="code", payload=3)
    assert runner.status()["counts"]["queued"] == 2  # the refused task was never stored
    gate.open.set()
    assert [h.result(WAIT_S) for h in (first, *waiting)] == [0, 1, 2]
    assert runner.submit(type="code", payload=4).result(WAIT_S) == 4


def test_submit_can_wait_for_room(make_runner: Callable[..., TaskRunner]) -> None:
    gate = Gate()
    runner = make_runner(queue_capacity=1, submit_timeout_s=WAIT_S)
    runner.register_agent(agent(), gate)
    runner.submit(type="code", payload=0)
    assert gate.first_started.wait(WAIT_S)
    runner.submit(type="code", payload=1)  # fills the queue
    opener = threading.Timer(0.05, gate.open.set)
    opener.start()
    try:
        # Blocks until the agent finishes task 0 and takes task 1 out of the queue.
        assert runner.submit(type="code", payload=2).result(WAIT_S) == 2
    finally:
        opener.cancel()


@pytest.mark.parametrize("store", ["memory://", "sqlite"])
def test_a_used_idempotency_key_returns_the_existing_task_and_gives_its_credit_back(
    make_runner: Callable[..., TaskRunner], store: str, tmp_path: Path
) -> None:
    # memory:// stores new tasks from the submitting thread (concurrent_inserts); sqlite
    # through the journal's thread. Both answer a duplicate the same way.
    url = store if store == "memory://" else f"sqlite:///{tmp_path}/tasks.db"
    gate = Gate()
    runner = make_runner(store=url, queue_capacity=2)
    first = runner.submit(type="code", payload=1, idempotency_key="k1")
    again = runner.submit(type="code", payload=2, idempotency_key="k1")
    assert again.task_id == first.task_id
    # The duplicate holds no credit: there is room for exactly one more task.
    second = runner.submit(type="code", payload=3)
    with pytest.raises(QueueFull):
        runner.submit(type="code", payload=4)
    runner.register_agent(agent(), gate)
    gate.open.set()
    assert [first.result(WAIT_S), second.result(WAIT_S)] == [1, 3]
    assert gate.started == [1, 3]  # the duplicate never ran
    assert runner.status()["counts"]["completed"] == 2


def test_the_memory_store_takes_submits_without_a_journal_commit(
    make_runner: Callable[..., TaskRunner],
) -> None:
    runner = make_runner()
    journal = runner._peers.get("journal")
    commits = runner._actor_statistics(journal)["commits"]
    handles = runner.submit_many([{"type": "code", "payload": n} for n in range(3)])
    # Stored before submit returned, by the calling thread; the journal wrote nothing.
    assert [runner.get(h.task_id).state for h in handles] == [TaskState.QUEUED] * 3
    assert runner._actor_statistics(journal)["commits"] == commits
    runner.register_agent(agent(), echo)
    assert [h.result(WAIT_S)["payload"] for h in handles] == [0, 1, 2]


@pytest.mark.parametrize("store", ["memory://", "sqlite"])
def test_pipeline_updates_reach_the_store_in_order_directly_or_through_the_journal(
    make_runner: Callable[..., TaskRunner], store: str, tmp_path: Path
) -> None:
    # memory:// writes each update from the actor that makes it (Wiring.persist); sqlite
    # through the journal's group commits. Either way every version lands, in order: a
    # task that fails, waits (no backoff to speak of) and runs again ends COMPLETED with
    # both attempts, a running task reads RUNNING, a cancelled one CANCELLED.
    url = store if store == "memory://" else f"sqlite:///{tmp_path}/tasks.db"
    runner = make_runner(store=url, backoff_base_s=0.0, backoff_cap_s=0.0)
    journal = runner._peers.get("journal")
    commits = runner._actor_statistics(journal)["commits"]
    gate = Gate()
    failed_once: set[Any] = set()

    def flaky(task: TaskContext) -> Any:
        if task.payload == "gate":
            return gate(task)
        if task.payload not in failed_once:
            failed_once.add(task.payload)
            raise RuntimeError("first attempt fails")
        return task.payload

    runner.register_agent(agent(concurrency=2), flaky)
    held = runner.submit(type="code", payload="gate")
    assert gate.first_started.wait(WAIT_S)
    wait_for(lambda: held.state() is TaskState.RUNNING)
    retried = [runner.submit(type="code", payload=n) for n in range(20)]
    assert [h.result(WAIT_S) for h in retried] == list(range(20))
    for handle in retried:
        record = runner.get(handle.task_id)
        assert record.state is TaskState.COMPLETED
        assert [a.outcome for a in record.history] == ["failed", "completed"]
    assert held.cancel() is True
    assert held.state() is TaskState.CANCELLED
    gate.open.set()
    written = runner._actor_statistics(journal)["commits"] - commits
    assert (written == 0) if store == "memory://" else (written > 0)


def test_concurrent_submitters_queue_tasks_in_store_sequence_order(
    make_runner: Callable[..., TaskRunner],
) -> None:
    # FIFO among equal priorities follows the store's sequences (what a recovery rebuilds),
    # also when several threads submit at once on memory://, which inserts from each one.
    runner = make_runner()
    start = threading.Barrier(4)

    def submit_some(thread: int) -> None:
        start.wait(WAIT_S)
        for n in range(50):
            runner.submit(type="code", payload=[thread, n])

    threads = [threading.Thread(target=submit_some, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT_S)
    started: list[Any] = []
    runner.register_agent(agent(), lambda task: started.append(task.task_id))
    assert runner.drain(WAIT_S)
    by_sequence = sorted(started, key=lambda task_id: runner.get(task_id).sequence)
    assert len(started) == 200 and started == by_sequence


def test_a_queued_task_can_be_cancelled(make_runner: Callable[..., TaskRunner]) -> None:
    gate = Gate()
    runner = make_runner()
    runner.register_agent(agent(), gate)
    runner.submit(type="code", payload="blocker")
    assert gate.first_started.wait(WAIT_S)
    queued = runner.submit(type="code", payload="victim")
    assert queued.cancel() is True
    assert queued.state() is TaskState.CANCELLED
    with pytest.raises(TaskCancelledError):
        queued.result(WAIT_S)
    assert queued.cancel() is False  # already finished
    gate.open.set()
    assert runner.drain(WAIT_S)
    assert "victim" not in gate.started


def test_a_running_task_is_cancelled_cooperatively(make_runner: Callable[..., TaskRunner]) -> None:
    seen = threading.Event()
    started = threading.Event()

    def patient(task: TaskContext) -> str:
        started.set()
        wait_for(task.is_cancelled)
        seen.set()
        return "too late"

    runner = make_runner()
    runner.register_agent(agent(), patient)
    handle = runner.submit(type="code")
    assert started.wait(WAIT_S)
    assert handle.cancel() is True
    assert seen.wait(WAIT_S)
    assert handle.state() is TaskState.CANCELLED


def test_a_task_waiting_for_its_retry_can_be_cancelled(
    make_runner: Callable[..., TaskRunner],
) -> None:
    attempts: list[int] = []
    events: list[LifecycleEvent] = []

    def flaky(task: TaskContext) -> None:
        attempts.append(task.attempt)
        raise RuntimeError("not yet")

    # A backoff far longer than the test: the task waits in the retry scheduler.
    runner = make_runner(backoff_base_s=600.0, backoff_cap_s=600.0, max_attempts=3)
    runner.subscribe(events.append)
    runner.register_agent(agent(), flaky)
    handle = runner.submit(type="code")
    wait_for(lambda: handle.state() is TaskState.RETRY_WAIT)
    assert handle.cancel() is True
    assert handle.state() is TaskState.CANCELLED
    with pytest.raises(TaskCancelledError):
        handle.result(WAIT_S)
    assert handle.cancel() is False
    wait_for(lambda: any(e.name == "task.cancelled" for e in events))
    (cancelled,) = [e for e in events if e.name == "task.cancelled"]
    assert cancelled.task_id == handle.task_id and cancelled.data["where"] == "retry"
    retry = runner._peers.get("retry").ask(GetStatistics())
    assert retry.extra["waiting"] == 0  # its entry in the retry schedule is gone
    assert attempts == [1]  # the first attempt only: no retry ran
    assert runner.drain(WAIT_S)


# -- bad input at the boundary ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"type": "code", "colour": "red"}, "colour"),
        ({"type": "code", "priority": "high"}, "priority"),
        ({"type": "code", "priority": 10}, "priority"),
        ({"type": "code", "priority": -1}, "priority"),
        ({"type": "code", "payload": {1, 2}}, "payload"),
        ({"type": "code", "payload": {"x": float("nan")}}, "payload"),
        ({"type": ""}, "type"),
        ({"payload": {}}, "type"),
        ({"type": "code", "timeout_s": 0}, "timeout_s"),
    ],
)
def test_invalid_tasks_are_refused_before_any_actor_sees_them(
    make_runner: Callable[..., TaskRunner], fields: dict[str, Any], message: str
) -> None:
    runner = make_runner()
    with pytest.raises(InvalidMessage, match=message):
        runner.submit(fields)
    assert sum(runner.status()["counts"].values()) == 0


def test_oversized_payloads_are_refused(make_runner: Callable[..., TaskRunner]) -> None:
    runner = make_runner(max_payload_bytes=100)
    with pytest.raises(PayloadTooLarge, match="limit is 100"):
        runner.submit(type="code", payload={"blob": "x" * 200})
    runner.submit(type="code", payload={"blob": "x" * 10})  # under the limit: fine
    assert runner.status()["counts"]["queued"] == 1


def test_a_batch_with_one_bad_task_stores_none_of_it(
    make_runner: Callable[..., TaskRunner],
) -> None:
    runner = make_runner()
    with pytest.raises(InvalidMessage):
        runner.submit_many([{"type": "code"}, {"type": "code", "oops": 1}])
    assert sum(runner.status()["counts"].values()) == 0


def test_unknown_agents_and_duplicate_agents_are_errors(
    make_runner: Callable[..., TaskRunner],
) -> None:
    runner = make_runner()
    runner.register_agent(agent(), echo)
    with pytest.raises(ValueError, match="already registered"):
        runner.register_agent(agent(), echo)
    with pytest.raises(UnknownAgent):
        runner.deregister_agent("nobody")
    with pytest.raises(InvalidMessage, match="capabilit"):
        runner.register_agent({"agent_id": "x", "capabilities": []}, echo)


def test_a_non_json_result_dead_letters_the_task(make_runner: Callable[..., TaskRunner]) -> None:
    runner = make_runner()
    runner.register_agent(agent(), lambda task: {1, 2, 3})
    handle = runner.submit(type="code")
    with pytest.raises(TaskFailedError, match="not JSON"):
        handle.result(WAIT_S)
    assert handle.record().attempt == 1  # permanent: no retry


# -- retries and dead letters ------------------------------------------------------------------


class Flaky:
    def __init__(self, failures: int, exc: type[Exception] = RuntimeError) -> None:
        self.failures = failures
        self.exc = exc
        self.calls = 0
        self._lock = threading.Lock()

    def __call__(self, task: TaskContext) -> int:
        with self._lock:
            self.calls += 1
            if self.calls <= self.failures:
                raise self.exc(f"failure {self.calls}")
        return task.attempt


def test_failed_attempts_are_retried_until_success(make_runner: Callable[..., TaskRunner]) -> None:
    runner = make_runner()
    runner.register_agent(agent(), Flaky(2))
    handle = runner.submit(type="code")
    assert handle.result(WAIT_S) == 3
    record = handle.record()
    assert [a.outcome for a in record.history] == ["failed", "failed", "completed"]
    assert record.history[0].error == "RuntimeError: failure 1"


def test_exhausted_attempts_go_to_dead_letters_and_can_be_requeued(
    make_runner: Callable[..., TaskRunner],
) -> None:
    runner = make_runner(max_attempts=2)
    flaky = Flaky(2)
    runner.register_agent(agent(), flaky)
    handle = runner.submit(type="code")
    with pytest.raises(TaskFailedError, match="attempts_exhausted: RuntimeError: failure 2"):
        handle.result(WAIT_S)
    dead = runner.dead_letters()
    assert [r.task_id for r in dead] == [handle.task_id]
    assert len(dead[0].history) == 2
    assert runner.requeue_dead_letters() == 1
    assert handle.result(WAIT_S) == 1  # a fresh attempt count after the operator's requeue
    assert flaky.calls == 3


def test_permanent_errors_are_not_retried(make_runner: Callable[..., TaskRunner]) -> None:
    class Refused(PermanentError):
        pass

    runner = make_runner()
    flaky = Flaky(5, Refused)
    runner.register_agent(agent(), flaky)
    with pytest.raises(TaskFailedError, match="permanent_error"):
        runner.submit(type="code").result(WAIT_S)
    assert flaky.calls == 1


def test_non_retryable_error_names_are_not_retried(make_runner: Callable[..., TaskRunner]) -> None:
    runner = make_runner(non_retryable=frozenset({"KeyError"}))
    flaky = Flaky(5, KeyError)
    runner.register_agent(agent(), flaky)
    with pytest.raises(TaskFailedError, match="non_retryable"):
        runner.submit(type="code").result(WAIT_S)
    assert flaky.calls == 1


def test_per_task_max_attempts_overrides_the_runner(make_runner: Callable[..., TaskRunner]) -> None:
    runner = make_runner(max_attempts=10)
    flaky = Flaky(5)
    runner.register_agent(agent(), flaky)
    with pytest.raises(TaskFailedError):
        runner.submit(type="code", max_attempts=1).result(WAIT_S)
    assert flaky.calls == 1


def test_a_slow_attempt_times_out_and_is_retried(make_runner: Callable[..., TaskRunner]) -> None:
    calls: list[int] = []

    def slow_once(task: TaskContext) -> int:
        calls.append(task.attempt)
        if task.attempt == 1:
            wait_for(task.is_cancelled)  # runs until the runner gives up on it
        return task.attempt

    runner = make_runner()
    runner.register_agent(agent(concurrency=2), slow_once)
    handle = runner.submit(type="code", timeout_s=0.05)
    assert handle.result(WAIT_S) == 2
    record = handle.record()
    assert [a.outcome for a in record.history] == ["timed_out", "completed"]
    assert "TaskTimeout" in (record.history[0].error or "")


def test_an_agent_keeps_its_concurrency_while_a_timed_out_handler_hangs(
    make_runner: Callable[..., TaskRunner],
) -> None:
    release = threading.Event()

    def hangs_first(task: TaskContext) -> str:
        if task.payload == "hang":
            release.wait(WAIT_S * 3)  # ignores its cancellation: a thread lost for a while
        return str(task.payload)

    runner = make_runner()
    runner.register_agent(agent(concurrency=1), hangs_first)
    try:
        hung = runner.submit(type="code", payload="hang", timeout_s=0.05, max_attempts=1)
        record = runner.wait(hung.task_id, WAIT_S)
        assert record.state is TaskState.DEAD_LETTERED  # timed out, no retry left
        # The one slot is run by the hung thread's replacement, for every task that follows
        # (not only the first: the replacement used to retire after one job).
        handles = [runner.submit(type="code", payload=f"next-{n}") for n in range(3)]
        assert [h.result(WAIT_S) for h in handles] == ["next-0", "next-1", "next-2"]
    finally:
        release.set()


def test_a_short_timeout_started_after_a_long_one_still_fires_on_time(
    make_runner: Callable[..., TaskRunner],
) -> None:
    # The agent watches all its attempts with one timer, armed for the earliest deadline:
    # a later attempt with a nearer deadline must re-arm it, and the long one live on.
    release_long = threading.Event()
    long_started = threading.Event()

    def handler(task: TaskContext) -> str:
        if task.payload["kind"] == "long":
            long_started.set()
            release_long.wait(WAIT_S)
            return "long"
        wait_for(task.is_cancelled)  # only a timeout ends it
        return "short"

    runner = make_runner(max_attempts=1)
    runner.register_agent(agent(concurrency=2), handler)
    long = runner.submit(type="code", payload={"kind": "long"}, timeout_s=WAIT_S * 2)
    assert long_started.wait(WAIT_S)
    short = runner.submit(type="code", payload={"kind": "short"}, timeout_s=0.05)
    with pytest.raises(TaskFailedError, match="TaskTimeout"):
        short.result(WAIT_S)
    assert long.state() is TaskState.RUNNING  # its own deadline is far away
    release_long.set()
    assert long.result(WAIT_S) == "long"
    assert [a.outcome for a in short.record().history] == ["timed_out"]


def test_a_prefetch_holds_tasks_at_the_agent_and_a_held_task_can_be_cancelled(
    make_runner: Callable[..., TaskRunner],
) -> None:
    gate = Gate()
    runner = make_runner(prefetch=1.0)  # one task held per slot, beyond the slot
    runner.register_agent(agent(concurrency=1), gate)
    first = runner.submit(type="code", payload=1)
    assert gate.first_started.wait(WAIT_S)
    held = runner.submit(type="code", payload=2)
    queued = runner.submit(type="code", payload=3)
    wait_for(lambda: runner.status()["agents"][0]["waiting"] == 1)
    assert runner.status()["queue"]["depth"] == 1  # slot 1 + buffer 1: the third waits
    assert held.cancel()
    assert held.state() is TaskState.CANCELLED
    gate.open.set()
    assert first.result(WAIT_S) == 1
    assert queued.result(WAIT_S) == 3
    assert gate.started == [1, 3]  # the cancelled one never ran
    with pytest.raises(TaskCancelledError):
        held.result(WAIT_S)


def test_result_wait_has_a_timeout(make_runner: Callable[..., TaskRunner]) -> None:
    runner = make_runner()  # no agent: the task waits
    handle = runner.submit(type="code")
    with pytest.raises(TaskTimeout):
        handle.result(timeout=0.01)
    assert handle.state() is TaskState.QUEUED


# -- routing -----------------------------------------------------------------------------------


def test_tasks_go_only_to_agents_with_every_capability(
    make_runner: Callable[..., TaskRunner],
) -> None:
    runner = make_runner()
    runner.register_agent(agent("py", "code", "python", concurrency=2), echo)
    runner.register_agent(agent("rs", "code", "rust", concurrency=2), echo)
    runner.register_agent(agent("docs", "write", concurrency=2), echo)
    python = [runner.submit(type="code", required_capabilities={"python"}) for _ in range(10)]
    rust = [runner.submit(type="code", required_capabilities={"rust"}) for _ in range(10)]
    write = [runner.submit(type="write") for _ in range(10)]
    assert {h.result(WAIT_S)["agent"] for h in python} == {"py"}
    assert {h.result(WAIT_S)["agent"] for h in rust} == {"rs"}
    assert {h.result(WAIT_S)["agent"] for h in write} == {"docs"}


def test_a_task_waits_for_a_capable_agent(make_runner: Callable[..., TaskRunner]) -> None:
    runner = make_runner()
    runner.register_agent(agent("coder", "code"), echo)
    handle = runner.submit(type="translate")
    with pytest.raises(TaskTimeout):
        handle.result(timeout=0.05)
    runner.register_agent(agent("translator", "translate"), echo)
    assert handle.result(WAIT_S)["agent"] == "translator"


def test_no_capable_agent_before_the_deadline_dead_letters(
    make_runner: Callable[..., TaskRunner],
) -> None:
    runner = make_runner()
    runner.register_agent(agent("coder", "code"), echo)
    handle = runner.submit(type="translate", deadline=utcnow() + timedelta(milliseconds=50))
    with pytest.raises(TaskFailedError, match="no_capable_agent"):
        handle.result(WAIT_S)


def test_routing_decisions_are_events_with_alternatives(
    make_runner: Callable[..., TaskRunner],
) -> None:
    runner = make_runner(routing_strategy="least_loaded")
    routed: list[LifecycleEvent] = []
    got = threading.Event()

    def on_event(event: LifecycleEvent) -> None:
        if event.name == "task.routed":
            routed.append(event)
            got.set()

    runner.subscribe(on_event)
    runner.register_agent(agent("a", concurrency=2), echo)
    runner.register_agent(agent("b", concurrency=2), echo)
    runner.submit(type="code").result(WAIT_S)
    assert got.wait(WAIT_S)
    data = routed[0].data
    assert data["agent_id"] == "a"  # both idle: ties break by id
    assert data["strategy"] == "least_loaded"
    assert [alt["agent_id"] for alt in data["alternatives"]] == ["b"]
    assert "least loaded" in data["reason"]


def test_deregistering_an_agent_requeues_its_unfinished_tasks(
    make_runner: Callable[..., TaskRunner],
) -> None:
    gate = Gate()
    runner = make_runner()
    runner.register_agent(agent("leaving"), gate)
    handle = runner.submit(type="code", payload="moved")
    assert gate.first_started.wait(WAIT_S)
    runner.deregister_agent("leaving")
    runner.register_agent(agent("staying"), echo)
    assert handle.result(WAIT_S)["agent"] == "staying"
    assert [a.outcome for a in handle.record().history] == ["abandoned", "completed"]
    gate.open.set()
    assert runner.agents() == ("staying",)


# -- lifecycle events and status ------------------------------------------------------------------


def test_lifecycle_events_follow_a_task(make_runner: Callable[..., TaskRunner]) -> None:
    runner = make_runner()
    names: list[str] = []
    completed = threading.Event()

    def on_event(event: LifecycleEvent) -> None:
        if event.task_id is not None:
            names.append(event.name)
        if event.name == "task.completed":
            completed.set()

    unsubscribe = runner.subscribe(on_event)
    runner.register_agent(agent(), Flaky(1))
    runner.submit(type="code").result(WAIT_S)
    assert completed.wait(WAIT_S)
    assert names == [
        "task.submitted",
        "task.queued",
        "task.routed",
        "task.started",
        "task.failed",
        "task.retry_scheduled",
        "task.queued",
        "task.routed",
        "task.started",
        "task.completed",
    ]
    unsubscribe()


def test_a_failing_subscriber_does_not_break_the_runner(
    make_runner: Callable[..., TaskRunner],
) -> None:
    runner = make_runner()

    def broken(event: LifecycleEvent) -> None:
        raise ValueError("subscriber bug")

    runner.subscribe(broken)
    runner.register_agent(agent(), echo)
    assert runner.submit(type="code").result(WAIT_S)["attempt"] == 1
    assert runner.restarts() == 0


def test_status_reports_health_queue_agents_and_latencies(
    make_runner: Callable[..., TaskRunner],
) -> None:
    runner = make_runner()
    runner.register_agent(agent(concurrency=2), echo)
    for handle in runner.submit_many([{"type": "code"}] * 20):
        handle.result(WAIT_S)
    status = runner.status()
    assert status["counts"]["completed"] == 20
    assert status["queue"] == {"depth": 0, "capacity": 10_000, "admitted": 0}
    assert status["agents"][0]["agent_id"] == "a1"
    assert status["agents"][0]["completed"] == 20
    assert status["health"]["status"] == "HEALTHY"
    assert status["restarts"] == 0
    # Agents and router report to the performance tracker in batches, within 0.1 s.
    wait_for(lambda: runner.status()["performance"]["end_to_end_ms"]["count"] == 20)
    assert runner.status()["performance"]["route_assign_ms"]["count"] == 20


def test_health_checks_feed_the_overall_status(make_runner: Callable[..., TaskRunner]) -> None:
    healthy = threading.Event()
    healthy.set()
    runner = make_runner(health_interval_s=0.01)
    runner.add_health_check("database", healthy.is_set, critical=True)
    wait_for(lambda: runner.status()["health"]["components"]["database"]["status"] == "HEALTHY")
    healthy.clear()
    wait_for(lambda: runner.health().value == "UNHEALTHY")
    healthy.set()
    wait_for(lambda: runner.health().value == "HEALTHY")


def test_stop_drains_before_it_stops() -> None:
    runner = TaskRunner.start(RunnerConfig(**FAST_RETRY))
    runner.register_agent(agent(concurrency=4), echo)
    handles = runner.submit_many([{"type": "code"}] * 50)
    assert runner.stop(timeout=WAIT_S) is True
    assert runner.stop() is True  # idempotent
    with pytest.raises(RuntimeError, match="not accepting"):
        runner.submit(type="code")
    del handles


def test_the_context_manager_stops_the_runner() -> None:
    with TaskRunner.start(RunnerConfig(**FAST_RETRY)) as runner:
        runner.register_agent(agent(), echo)
        runner.submit(type="code").result(WAIT_S)
    assert not runner.system.running


def test_prefetch_takes_tasks_ahead_of_free_slots(make_runner: Callable[..., TaskRunner]) -> None:
    gate = Gate()
    runner = make_runner(prefetch=1.0)
    runner.register_agent(agent(), gate)
    runner.submit(type="code", payload="blocker")
    assert gate.first_started.wait(WAIT_S)
    early = runner.submit(type="code", payload="early", priority=0)
    # The router holds one task ready for the busy agent: it left the queue already.
    wait_for(lambda: runner.status()["queue"]["depth"] == 0)
    late = runner.submit(type="code", payload="late", priority=9)
    gate.open.set()
    early.result(WAIT_S)
    late.result(WAIT_S)
    assert gate.started == ["blocker", "early", "late"]


def test_prefetched_tasks_never_run_more_than_max_concurrency_at_once(
    make_runner: Callable[..., TaskRunner],
) -> None:
    """With a prefetch a sync agent's workers take held tasks straight from their job
    queue; the number of threads still caps what runs at once, and every task starts
    (``task.started``, RUNNING) before it completes, with one attempt."""
    runner = make_runner(prefetch=3.0)
    lock = threading.Lock()
    active = [0, 0]  # now, most at once
    events: list[tuple[str, Any]] = []

    def on_event(event: LifecycleEvent) -> None:
        if event.name in ("task.started", "task.completed"):
            events.append((event.name, event.task_id))

    def busy(task: TaskContext) -> int:
        with lock:
            active[0] += 1
            active[1] = max(active[1], active[0])
        threading.Event().wait(0.001)  # overlap with the other slot's attempt
        with lock:
            active[0] -= 1
        return int(task.payload)

    runner.subscribe(on_event)
    runner.register_agent(agent(concurrency=2), busy)
    handles = [runner.submit(type="code", payload=i) for i in range(200)]
    assert [h.result(WAIT_S) for h in handles] == list(range(200))
    assert active[1] == 2  # both slots were used, never more
    assert all([a.outcome for a in h.record().history] == ["completed"] for h in handles)
    wait_for(lambda: len(events) == 400)
    first: dict[Any, str] = {}
    for name, task_id in events:
        first.setdefault(task_id, name)
    assert set(first.values()) == {"task.started"}


def test_a_prefetched_task_is_running_only_once_a_worker_takes_it_and_times_out_from_then(
    make_runner: Callable[..., TaskRunner],
) -> None:
    gate = Gate()
    runner = make_runner(prefetch=1.0)
    runner.register_agent(agent(concurrency=1), gate)
    blocker = runner.submit(type="code", payload="blocker")
    assert gate.first_started.wait(WAIT_S)
    held = runner.submit(type="code", payload="held", timeout_s=0.3)
    wait_for(lambda: runner.status()["agents"][0]["waiting"] == 1)
    # Held past its own timeout while it waits for the slot: that does not count.
    threading.Event().wait(0.5)
    assert held.state() is not TaskState.RUNNING
    assert runner.status()["agents"][0]["running"] == 1
    gate.open.set()
    assert blocker.result(WAIT_S) == "blocker"
    assert held.result(WAIT_S) == "held"
    assert [a.outcome for a in held.record().history] == ["completed"]
    assert gate.started == ["blocker", "held"]


def _buffers(runner: TaskRunner) -> dict[str, int]:
    return {a["agent_id"]: a["buffer"] for a in runner.status()["agents"]}


def test_the_adaptive_prefetch_buffers_for_short_tasks_and_not_for_long_ones(
    make_runner: Callable[..., TaskRunner],
) -> None:
    """Default ``prefetch_window_ms=2``: an agent may hold what it finishes in 2 ms at its
    recent pace. A no-op agent gets a deep buffer (capped at prefetch_max x slots); one
    whose attempts take 20 ms gets none, so its tasks keep strict priorities."""
    runner = make_runner()
    assert (runner.config.prefetch_window_ms, runner.config.prefetch_max) == (2.0, 32.0)

    def slow(task: TaskContext) -> int:
        threading.Event().wait(0.02)  # 20 ms of work
        return int(task.payload)

    runner.register_agent(AgentSpec(agent_id="quick", capabilities={"q"}, max_concurrency=2), echo)
    runner.register_agent(AgentSpec(agent_id="slow", capabilities={"s"}, max_concurrency=2), slow)
    assert _buffers(runner) == {"quick": 0, "slow": 0}  # nothing finished yet: no pace known
    for handle in [runner.submit(type="q", payload=i) for i in range(300)]:
        handle.result(WAIT_S)
    for handle in [runner.submit(type="s", payload=i) for i in range(4)]:
        handle.result(WAIT_S)
    wait_for(lambda: _buffers(runner)["slow"] == 0 and _buffers(runner)["quick"] > 2)
    assert _buffers(runner)["quick"] <= 64  # 32 x 2 slots


def test_no_prefetch_window_keeps_even_a_no_op_agent_unbuffered(
    make_runner: Callable[..., TaskRunner],
) -> None:
    runner = make_runner(prefetch_window_ms=0)
    runner.register_agent(agent(concurrency=2), echo)
    for handle in [runner.submit(type="code", payload=i) for i in range(200)]:
        handle.result(WAIT_S)
    assert _buffers(runner) == {"a1": 0}
    fixed = make_runner(prefetch=1.5, prefetch_window_ms=0)
    fixed.register_agent(agent(concurrency=2), echo)
    wait_for(lambda: _buffers(fixed) == {"a1": 3})  # ceil(1.5 x 2), from registration on


def test_start_freezes_what_is_alive_for_the_garbage_collector_unless_told_not_to() -> None:
    """``gc_freeze`` (default on): the objects alive at start leave the collector's
    generations, so its full collections (the latency tail) scan only newer ones."""
    import gc

    def watched(marker: object) -> bool:
        """Is ``marker`` in the collector's generations (not frozen)?"""
        return any(o is marker for o in gc.get_objects())

    alive: list[object] = [[]]  # a container made before the start: tracked by the GC
    with TaskRunner.start(RunnerConfig(gc_freeze=False)) as runner:
        assert watched(alive)
        runner.stop(drain=False)
    with TaskRunner.start(RunnerConfig()) as runner:
        assert not watched(alive)  # frozen with everything else alive at start
        later: list[object] = [[]]
        assert watched(later)  # what comes after is collected as usual
        runner.stop(drain=False)


def test_unfinished_records_lists_what_is_not_finished_in_queue_order(
    make_runner: Callable[..., TaskRunner],
) -> None:
    runner = make_runner()
    low = runner.submit(type="later", priority=1)
    high = runner.submit(type="later", priority=5)
    runner.register_agent(agent("now", "now"), echo)
    runner.submit(type="now").result(WAIT_S)  # finished: not listed
    listed = runner.unfinished_records()
    assert [r.task_id for r in listed] == [high.task_id, low.task_id]
    assert all(r.state is TaskState.QUEUED for r in listed)


def test_runners_raise_the_young_gc_threshold_and_the_last_one_puts_it_back() -> None:
    import gc

    host = gc.get_threshold()
    try:
        gc.set_threshold(700, 11, 12)
        first = TaskRunner.start(RunnerConfig())
        assert gc.get_threshold() == (50_000, 11, 12)  # the older generations: the host's
        second = TaskRunner.start(RunnerConfig(gc_young_threshold=80_000))
        assert gc.get_threshold() == (80_000, 11, 12)
        first.stop(drain=False)
        assert gc.get_threshold() == (80_000, 11, 12)  # the second one still runs
        second.stop(drain=False)
        assert gc.get_threshold() == (700, 11, 12)
        with TaskRunner.start(RunnerConfig(gc_young_threshold=None)):
            assert gc.get_threshold() == (700, 11, 12)
        gc.set_threshold(90_000, 11, 12)  # the host's is higher already: left alone
        with TaskRunner.start(RunnerConfig()):
            assert gc.get_threshold() == (90_000, 11, 12)
        assert gc.get_threshold() == (90_000, 11, 12)
        gc.set_threshold(700, 11, 12)
        runner = TaskRunner.start(RunnerConfig())
        gc.set_threshold(5_000, 11, 12)  # the host changed it meanwhile: kept at stop
        runner.stop(drain=False)
        assert gc.get_threshold() == (5_000, 11, 12)
    finally:
        gc.set_threshold(*host)
