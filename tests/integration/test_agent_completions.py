"""An agent's completion line: handler threads report ended attempts without a message
each; the executor is rung once for all that end before it looks."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from actors.agent import AgentState, TaskContext
from messages import AgentSpec, new_task_id
from messages.pipeline import WorkDone
from supervisor import ActorSystem, ChildSpec
from tests.conftest import WAIT_S, wait_for
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
