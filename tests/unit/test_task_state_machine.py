"""The task state machine, checked against its transition table and by model."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from messages import (
    MANUAL_TRANSITIONS,
    TERMINAL_STATES,
    TRANSITIONS,
    InvalidTransition,
    TaskRecord,
    TaskSpec,
    TaskState,
    check_transition,
    new_task_id,
)

S = TaskState
# The table from DESIGN.md, written out again independently as the reference.
REFERENCE = {
    ("PENDING", "QUEUED"), ("PENDING", "CANCELLED"),
    ("QUEUED", "ASSIGNED"), ("QUEUED", "CANCELLED"), ("QUEUED", "DEAD_LETTERED"),
    ("ASSIGNED", "RUNNING"), ("ASSIGNED", "QUEUED"), ("ASSIGNED", "CANCELLED"),
    ("RUNNING", "COMPLETED"), ("RUNNING", "FAILED"), ("RUNNING", "SUSPENDED"),
    ("RUNNING", "CANCELLED"), ("RUNNING", "TIMED_OUT"),
    ("SUSPENDED", "RUNNING"), ("SUSPENDED", "CANCELLED"),
    ("FAILED", "QUEUED"), ("FAILED", "RETRY_WAIT"), ("FAILED", "DEAD_LETTERED"),
    ("TIMED_OUT", "QUEUED"), ("TIMED_OUT", "RETRY_WAIT"), ("TIMED_OUT", "DEAD_LETTERED"),
    ("RETRY_WAIT", "QUEUED"), ("RETRY_WAIT", "CANCELLED"), ("RETRY_WAIT", "DEAD_LETTERED"),
}  # fmt: skip


def record(state: TaskState = S.PENDING) -> TaskRecord:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    return TaskRecord(
        task_id=new_task_id(), spec=TaskSpec(type="t"), state=state, created_at=now, updated_at=now
    )


def test_table_matches_the_design() -> None:
    table = {(a.value, b.value) for a, targets in TRANSITIONS.items() for b in targets}
    assert table == REFERENCE
    assert set(TRANSITIONS) == set(TaskState)


def test_terminal_states_have_no_way_out() -> None:
    assert {s.value for s in TERMINAL_STATES} == {"COMPLETED", "CANCELLED", "DEAD_LETTERED"}
    for state in TERMINAL_STATES:
        assert TRANSITIONS[state] == frozenset()


@given(st.sampled_from(list(S)), st.sampled_from(list(S)), st.booleans())
def test_check_transition_agrees_with_the_table(a: TaskState, b: TaskState, manual: bool) -> None:
    allowed = (a.value, b.value) in REFERENCE or (manual and (a, b) in MANUAL_TRANSITIONS)
    if allowed:
        assert check_transition(a, b, manual=manual) is b
    else:
        with pytest.raises(InvalidTransition) as info:
            check_transition(a, b, task_id="t1", manual=manual)
        assert info.value.source is a and info.value.target is b
        assert "t1" in str(info.value)


def test_dead_letter_requeue_is_manual_only() -> None:
    dead = record(S.DEAD_LETTERED)
    with pytest.raises(InvalidTransition):
        dead.moved(S.QUEUED, at=dead.updated_at)
    assert dead.moved(S.QUEUED, at=dead.updated_at, manual=True).state is S.QUEUED


class TaskLifecycle(RuleBasedStateMachine):
    """Random walks through the machine: every step either follows the table or raises,
    and a record never changes in place."""

    def __init__(self) -> None:
        super().__init__()
        self.record = record()
        self.model = "PENDING"
        self.clock = self.record.created_at

    @rule(dest=st.sampled_from(list(S)))
    def move(self, dest: TaskState) -> None:
        target = dest
        self.clock += timedelta(seconds=1)
        before = self.record
        if (self.model, target.value) in REFERENCE:
            self.record = before.moved(target, at=self.clock, attempt=before.attempt + 1)
            self.model = target.value
            assert before.state.value != self.model or before is not self.record
        else:
            with pytest.raises(InvalidTransition):
                before.moved(target, at=self.clock)
        assert before.updated_at <= self.record.updated_at

    @precondition(lambda self: self.model == "DEAD_LETTERED")
    @rule()
    def operator_requeue(self) -> None:
        self.record = self.record.moved(S.QUEUED, at=self.clock, manual=True)
        self.model = "QUEUED"

    @invariant()
    def agrees(self) -> None:
        assert self.record.state.value == self.model
        assert self.record.is_terminal == (
            self.model in {"COMPLETED", "CANCELLED", "DEAD_LETTERED"}
        )


TestTaskLifecycle = TaskLifecycle.TestCase
