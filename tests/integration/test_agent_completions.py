"""An agent's completion line: handler threads report ended attempts without a message
each; the executor is rung once for all that end before it looks."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from actors.agent import AgentExecutor, AgentState, TaskContext, _Out
from actors.pipeline import Admission, EventHub, Peers, ResultWaiters, SystemClock, Wiring
from messages import AgentSpec, TaskRecord, TaskState, new_task_id
from messages.pipeline import Outcomes, WorkDone
from supervisor import ActorSystem, ChildSpec
from tests.conftest import WAIT_S, wait_for
from tests.integration.test_journal_contract import make_record
from tests.integration.test_supervision import _BLOCKERS, Block, recorder


def _ended(attempt: int = 1) -> tuple[Any, ...]:
    context = TaskContext(new_task_id(), "noop", {}, attempt, "a1")
    return (context, True, None, None, None, False, 1.0)


def test_attempts_that_end_together_ring_the_executor_once(make_system: Any) -> None:
    system: ActorSystem = make_system()
    journal: list[tuple[int, Any]] = []
    # A recorder stands in for the executor: it logs what reaches its mailbox.
    ref = system.spawn(ChildSpec(name="executor", factory=recorder(journal)))
    state = AgentState(
        spec=AgentSpec(agent_id="a1", capabilities={"noop"}), handler=lambda task: None
    )
    state.ref = ref
    _BLOCKERS["busy"] = threading.Event()
    ref.tell(Block("busy"))  # the executor is busy: completions pile up meanwhile
    threads = [threading.Thread(target=state.report_done, args=(_ended(),)) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT_S)
    assert len(state.done) == 5 and state.rung
    _BLOCKERS["busy"].set()
    wait_for(lambda: len(journal) == 1)
    assert journal[0][1] == WorkDone()

    # The executor clears the flag before it empties the line: the next one rings again.
    state.rung = False
    state.done.clear()
    state.report_done(_ended())
    wait_for(lambda: len(journal) == 2)
    assert [message for _, message in journal] == [WorkDone(), WorkDone()]
    assert ref.ask("count") == 3  # nothing else arrived


def test_the_task_context_is_read_only() -> None:
    context = TaskContext(new_task_id(), "noop", {"n": 1}, 2, "a1", trace_context=None)
    assert (context.type, context.payload, context.attempt, context.agent_id) == (
        "noop",
        {"n": 1},
        2,
        "a1",
    )
    assert context.trace_context == {} and context.idempotency_key is None
    assert not context.is_cancelled()
    for name in ("attempt", "payload", "brand_new"):
        with pytest.raises(AttributeError, match="read-only"):
            setattr(context, name, 3)
    with pytest.raises(AttributeError, match="read-only"):
        del context.attempt
    assert "attempt=2" in repr(context)


def _executor(system: ActorSystem) -> AgentExecutor:
    """An executor instance (not started: only its bookkeeping is exercised)."""
    wiring = Wiring(
        peers=Peers(),
        clock=SystemClock(),
        hub=EventHub(),
        timers=system.runtime.timers,
        waiters=ResultWaiters(),
        admission=Admission(100, None),
    )
    state = AgentState(
        spec=AgentSpec(agent_id="a1", capabilities={"work"}, max_concurrency=1),
        handler=lambda task: None,
    )
    return AgentExecutor(state, wiring)


def _handed(
    executor: AgentExecutor, state: TaskState = TaskState.ASSIGNED
) -> tuple[TaskRecord, TaskContext]:
    """A waiting task handed to the workers, as ``_hand_waiting`` leaves it (QUEUED: as the
    router hands tasks over; ASSIGNED: as an earlier router did)."""
    record = make_record(state=state, agent_id="a1" if state is TaskState.ASSIGNED else None)
    record = record.evolve(spec=record.spec.evolve(timeout_s=None))
    context = TaskContext(record.task_id, "work", {}, record.attempt + 1, "a1")
    executor.state.waiting[record.task_id.int] = record
    executor.state.handed[record.task_id.int] = context
    return record, context


def test_a_started_handed_attempt_becomes_running_with_the_workers_start_time(
    make_system: Any,
) -> None:
    executor = _executor(make_system())
    record, context = _handed(executor)
    state = executor.state
    state.started.append((context, 7.0))
    first = _Out()
    executor._take_done(first)  # the start alone
    assert not state.waiting and not state.handed and list(state.running) == [record.task_id.int]
    assert [(r.state, r.attempt) for r in first.persist] == [(TaskState.RUNNING, 1)]
    state.done.append((context, True, None, None, None, False, 7.25))
    second = _Out()
    executor._take_done(second)
    assert not state.running
    assert [(r.state, r.attempt) for r in second.persist] == [(TaskState.COMPLETED, 1)]
    assert second.released == [(record.task_id, "work", True, 250.0)]  # 7.25 - 7.0 s
    (entry,) = second.persist[0].history
    assert (entry.number, entry.outcome) == (1, "completed")
    assert entry.started_at == first.persist[0].updated_at


@pytest.mark.parametrize("ok", [True, False])
def test_an_attempt_started_and_ended_in_one_take_is_written_once(
    make_system: Any, ok: bool
) -> None:
    """ASSIGNED -> its outcome in one version: the RUNNING one would be replaced in the
    same store write, so it is never made (its start is still counted and timed)."""
    executor = _executor(make_system())
    record, context = _handed(executor)
    state = executor.state
    state.started.append((context, 7.0))
    error = None if ok else "ValueError: no"
    state.done.append((context, ok, None, error, None if ok else "ValueError", False, 7.5))
    out = _Out()
    executor._take_done(out)
    assert not state.waiting and not state.handed and not state.running
    outcome = out.persist[0] if ok else out.retry[0][0]
    assert [r.task_id for r in out.persist] == ([record.task_id] if ok else [])
    assert outcome.state is (TaskState.COMPLETED if ok else TaskState.FAILED)
    assert outcome.attempt == 1 and outcome.agent_id == record.agent_id
    assert outcome.last_error == error
    (entry,) = outcome.history
    assert (entry.number, entry.outcome, entry.error) == (1, "completed" if ok else "failed", error)
    assert entry.started_at == entry.ended_at == outcome.updated_at
    assert out.released == [(record.task_id, "work", ok, 500.0)]  # 7.5 - 7.0 s
    assert (state.completed, state.failed) == ((1, 0) if ok else (0, 1))


@pytest.mark.parametrize("together", [True, False])
def test_a_task_handed_over_queued_is_assigned_to_the_agent_by_its_next_version(
    make_system: Any, together: bool
) -> None:
    """The router sends the queue's QUEUED records: the Assign assigns them. The agent's
    first version of a task is RUNNING (or its outcome), with its own id, in one copy."""
    executor = _executor(make_system())
    record, context = _handed(executor, TaskState.QUEUED)
    assert record.agent_id is None
    state = executor.state
    state.started.append((context, 1.0))
    written: list[TaskRecord] = []
    if not together:
        first = _Out()
        executor._take_done(first)
        (running,) = first.persist
        assert (running.state, running.agent_id, running.attempt) == (TaskState.RUNNING, "a1", 1)
        written.append(running)
    state.done.append((context, True, 5, None, None, False, 1.5))
    out = _Out()
    executor._take_done(out)
    (completed,) = out.persist
    assert (completed.state, completed.agent_id, completed.attempt) == (
        TaskState.COMPLETED,
        "a1",
        1,
    )
    assert completed.result == 5 and [a.agent_id for a in completed.history] == ["a1"]
    assert not state.waiting and not state.running


def test_a_start_reported_after_the_task_left_the_agent_is_ignored(make_system: Any) -> None:
    """The race a flag cannot close: a worker checked the cancelled flag, then the task was
    cancelled (or given back), then the worker reported its start."""
    executor = _executor(make_system())
    record, context = _handed(executor)
    state = executor.state
    executor._unhand(record.task_id.int)  # what a cancel does to a handed task
    del state.waiting[record.task_id.int]
    assert context.is_cancelled()
    state.started.append((context, 1.0))
    state.done.append((context, True, None, None, None, False, 2.0))
    out = _Out()
    executor._take_done(out)
    assert not state.running and out.persist == [] and out.released == []
    assert state.zombies == 1  # its result is discarded


def test_outcomes_sent_from_a_turn_disarm_their_fallback_tick(make_system: Any) -> None:
    system: ActorSystem = make_system()
    executor = _executor(system)
    performance: list[tuple[int, Any]] = []
    ticks: list[tuple[int, Any]] = []
    executor.wiring.peers.performance = system.spawn(
        ChildSpec(name="performance", factory=recorder(performance))
    )
    # A recorder stands in for the executor's own ref: any tick that rings lands there.
    tick_target = system.spawn(ChildSpec(name="ticks", factory=recorder(ticks)))
    state = executor.state
    held = state.unreported
    item = ("a1", "work", True, 1.0, 2.0)
    assert held.add([item], executor.wiring, tick_target, state.report_timer) is False
    assert state.report_timer.due is not None
    executor._report()  # as from a turn that follows a task's end
    wait_for(lambda: len(performance) == 1)
    assert performance[0][1] == Outcomes(items=(item,))
    assert state.report_timer.due is None and state.report_timer.handle is None
    # The cancelled tick never rings: a later timer on the same (ordered) service runs,
    # and then the recorder's first message is this question (it answers its count).
    passed = threading.Event()
    system.runtime.timers.call_later(held.delay_s + 0.05, passed.set)
    assert passed.wait(WAIT_S)
    assert tick_target.ask("count") == 1 and [message for _, message in ticks] == ["count"]
