"""The task state machine, checked against its transition table and by model."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from pydantic import ValidationError

import messages.task as task_module
from messages import (
    MANUAL_TRANSITIONS,
    TERMINAL_STATES,
    TRANSITIONS,
    AgentSpec,
    InvalidTransition,
    TaskRecord,
    TaskSpec,
    TaskState,
    check_transition,
    new_task_id,
    utcnow,
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


def test_manual_is_off_by_default() -> None:
    with pytest.raises(InvalidTransition):
        check_transition(S.DEAD_LETTERED, S.QUEUED)
    assert check_transition(S.DEAD_LETTERED, S.QUEUED, manual=True) is S.QUEUED


def test_moved_stamps_the_time_applies_changes_and_names_the_task() -> None:
    before = record(S.QUEUED)
    at = before.updated_at + timedelta(seconds=5)
    after = before.moved(S.ASSIGNED, at=at, agent_id="a1", attempt=2)
    assert (after.state, after.updated_at, after.agent_id, after.attempt) == (
        S.ASSIGNED,
        at,
        "a1",
        2,
    )
    assert (before.state, before.updated_at, before.agent_id) == (S.QUEUED, before.created_at, None)
    with pytest.raises(InvalidTransition) as info:
        before.moved(S.COMPLETED, at=at)
    assert info.value.task_id == before.task_id
    assert str(before.task_id) in str(info.value)


@given(source=st.sampled_from(list(S)), path=st.lists(st.sampled_from(list(S)), max_size=3))
def test_moved_via_allows_exactly_the_paths_of_the_table(
    source: TaskState, path: list[TaskState]
) -> None:
    before = record(source)
    at = before.updated_at + timedelta(seconds=1)
    if not path:
        with pytest.raises(ValueError, match="at least one state"):
            before.moved_via(at=at)
        return
    hops = list(zip([source, *path], path, strict=False))
    if all((a.value, b.value) in REFERENCE for a, b in hops):
        after = before.moved_via(*path, at=at, attempt=4)
        assert (after.state, after.updated_at, after.attempt) == (path[-1], at, 4)
        assert before.state is source
    else:
        with pytest.raises(InvalidTransition) as info:
            before.moved_via(*path, at=at)
        assert info.value.task_id == before.task_id


# new_task_id: a UUIDv7 (RFC 9562): 48-bit Unix ms timestamp, version 7, 12 random bits
# (rand_a), variant 0b10, 62 random bits (rand_b). Clock and randomness are pinned.
NS = 1_767_225_600_123_456_789  # 2026-01-01T00:00:00.123456789Z
MIXED = bytes.fromhex("a5c3f00f5a3c96e1d2b4c8e7f1a29384")


def pinned_task_id(
    monkeypatch: pytest.MonkeyPatch, ns: int, random: bytes
) -> tuple[uuid.UUID, int]:
    """A new_task_id made at ``ns`` from ``random``, and the int of the bytes it drew."""
    drawn: list[bytes] = []

    def urandom(n: int) -> bytes:
        drawn.append(random[:n])
        return random[:n]

    with monkeypatch.context() as patch:
        patch.setattr(time, "time_ns", lambda: ns)
        patch.setattr(task_module, "_random_bytes", urandom)
        task_id = new_task_id()
    assert len(drawn) == 1
    return task_id, int.from_bytes(drawn[0], "big")


@pytest.mark.parametrize("random", [MIXED, bytes(16), b"\xff" * 16], ids=["mixed", "0s", "1s"])
def test_task_ids_are_uuid7_with_the_time_and_drawn_random_bits(
    monkeypatch: pytest.MonkeyPatch, random: bytes
) -> None:
    task_id, drawn = pinned_task_id(monkeypatch, NS, random)
    assert task_id.version == 7
    assert task_id.variant == uuid.RFC_4122
    assert task_id.int >> 80 == NS // 1_000_000
    assert (task_id.int >> 64) & 0xFFF == (drawn >> 62) & 0xFFF
    assert task_id.int & ((1 << 62) - 1) == drawn & ((1 << 62) - 1)


def test_task_id_timestamp_wraps_at_48_bits(monkeypatch: pytest.MonkeyPatch) -> None:
    ms = (1 << 48) + 12_345  # far future: only the low 48 bits of the ms count fit
    task_id, _ = pinned_task_id(monkeypatch, ms * 1_000_000 + 999_999, MIXED)
    assert task_id.int >> 80 == 12_345
    assert task_id.version == 7
    assert task_id.variant == uuid.RFC_4122


@given(st.lists(st.integers(min_value=0, max_value=(1 << 48) - 1), min_size=2, max_size=20))
def test_task_ids_sort_by_creation_millisecond(stamps_ms: list[int]) -> None:
    with pytest.MonkeyPatch.context() as patch:
        ids = []
        for ms in stamps_ms:
            patch.setattr(time, "time_ns", lambda ms=ms: ms * 1_000_000 + 500_000)
            ids.append(new_task_id())
    assert [i.int >> 80 for i in ids] == stamps_ms
    by_id = sorted(range(len(ids)), key=lambda k: ids[k])
    assert [stamps_ms[k] for k in by_id] == sorted(stamps_ms)


def test_utcnow_is_aware_utc_now() -> None:
    before = datetime.now(UTC)
    now = utcnow()
    after = datetime.now(UTC)
    assert now.tzinfo is UTC
    assert before <= now <= after


# Validation at the boundary: the messages are what a host sees, so they are checked too.
def test_capability_names_are_1_to_200_characters() -> None:
    assert AgentSpec(agent_id="a", capabilities={"c" * 200}).capabilities == {"c" * 200}
    for bad in ("", "c" * 201):
        with pytest.raises(ValidationError, match="capability names must be 1 to 200 characters"):
            AgentSpec(agent_id="a", capabilities={"ok", bad})
    with pytest.raises(ValidationError, match="expected a collection of strings, got a single"):
        TaskSpec(type="t", required_capabilities="py")  # type: ignore[arg-type]


def test_deadline_must_be_timezone_aware() -> None:
    aware = datetime(2026, 1, 1, tzinfo=UTC)
    assert TaskSpec(type="t", deadline=aware).deadline == aware
    with pytest.raises(ValidationError, match="datetimes must be timezone-aware"):
        TaskSpec(type="t", deadline=datetime(2026, 1, 1))


def test_trace_context_is_kept_and_must_map_strings_to_strings() -> None:
    spec = TaskSpec(type="t", trace_context={"traceparent": "00-a-b-01", "state": "x"})
    assert dict(spec.trace_context) == {"traceparent": "00-a-b-01", "state": "x"}
    assert spec.model_dump()["trace_context"] == {"traceparent": "00-a-b-01", "state": "x"}
    for bad in ({"traceparent": 1}, {1: "x"}):
        with pytest.raises(ValidationError, match="trace context keys and values must be strings"):
            TaskSpec(type="t", trace_context=bad)
    with pytest.raises(ValidationError, match="expected a mapping of strings"):
        TaskSpec(type="t", trace_context=["traceparent"])


def test_a_record_handed_back_unstarted_is_queued_without_its_agent() -> None:
    queued = record(S.QUEUED)
    at = queued.updated_at + timedelta(seconds=2)
    assert queued.handed_back(at=at) is queued  # as the router hands tasks over
    assigned = queued.moved(S.ASSIGNED, at=at, agent_id="a1")
    back = assigned.handed_back(at=at)
    assert (back.state, back.agent_id, back.updated_at) == (S.QUEUED, None, at)
    with pytest.raises(InvalidTransition):
        record(S.RUNNING).handed_back(at=at)  # a started attempt counts: not this way
