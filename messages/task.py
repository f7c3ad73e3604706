"""Task data: what a host submits (:class:`TaskSpec`), what the runtime keeps
(:class:`TaskRecord`), agent descriptions (:class:`AgentSpec`) and the task state machine.

The state machine is validated here, in one place::

    PENDING    -> QUEUED | CANCELLED
    QUEUED     -> ASSIGNED | CANCELLED | DEAD_LETTERED (deadline passed while queued)
    ASSIGNED   -> RUNNING | QUEUED | CANCELLED
    RUNNING    -> COMPLETED | FAILED | SUSPENDED | CANCELLED | TIMED_OUT
    SUSPENDED  -> RUNNING | CANCELLED
    FAILED     -> QUEUED | RETRY_WAIT | DEAD_LETTERED
    TIMED_OUT  -> QUEUED | RETRY_WAIT | DEAD_LETTERED
    RETRY_WAIT -> QUEUED | CANCELLED | DEAD_LETTERED

COMPLETED, CANCELLED and DEAD_LETTERED are terminal. An operator may re-queue a
dead letter (``manual=True``), the one way out of a terminal state.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Final

from pydantic import AfterValidator, BeforeValidator, Field, PlainSerializer, model_validator

from messages.base import FrozenDict, JsonValue, Message, empty_frozen_dict
from messages.errors import InvalidTransition

__all__ = [
    "MANUAL_TRANSITIONS",
    "PRIORITY_MAX",
    "PRIORITY_MIN",
    "TERMINAL_STATES",
    "TRANSITIONS",
    "AgentSpec",
    "Attempt",
    "TaskRecord",
    "TaskSpec",
    "TaskState",
    "check_transition",
    "new_task_id",
    "utcnow",
]

PRIORITY_MIN: Final = 0
PRIORITY_MAX: Final = 9


class TaskState(StrEnum):
    """Where a task is in its life."""

    PENDING = "PENDING"
    QUEUED = "QUEUED"
    ASSIGNED = "ASSIGNED"
    RUNNING = "RUNNING"
    SUSPENDED = "SUSPENDED"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    RETRY_WAIT = "RETRY_WAIT"
    TIMED_OUT = "TIMED_OUT"
    CANCELLED = "CANCELLED"
    DEAD_LETTERED = "DEAD_LETTERED"


S = TaskState
TRANSITIONS: Final[dict[TaskState, frozenset[TaskState]]] = {
    S.PENDING: frozenset({S.QUEUED, S.CANCELLED}),
    S.QUEUED: frozenset({S.ASSIGNED, S.CANCELLED, S.DEAD_LETTERED}),
    S.ASSIGNED: frozenset({S.RUNNING, S.QUEUED, S.CANCELLED}),
    S.RUNNING: frozenset({S.COMPLETED, S.FAILED, S.SUSPENDED, S.CANCELLED, S.TIMED_OUT}),
    S.SUSPENDED: frozenset({S.RUNNING, S.CANCELLED}),
    S.FAILED: frozenset({S.QUEUED, S.RETRY_WAIT, S.DEAD_LETTERED}),
    S.TIMED_OUT: frozenset({S.QUEUED, S.RETRY_WAIT, S.DEAD_LETTERED}),
    S.RETRY_WAIT: frozenset({S.QUEUED, S.CANCELLED, S.DEAD_LETTERED}),
    S.COMPLETED: frozenset(),
    S.CANCELLED: frozenset(),
    S.DEAD_LETTERED: frozenset(),
}
"""Allowed automatic transitions: source state -> states it may move to."""

TERMINAL_STATES: Final = frozenset({S.COMPLETED, S.CANCELLED, S.DEAD_LETTERED})
MANUAL_TRANSITIONS: Final = frozenset({(S.DEAD_LETTERED, S.QUEUED)})
"""Transitions only an operator may make (re-queueing a dead letter)."""


def check_transition(
    source: TaskState, target: TaskState, *, task_id: object = None, manual: bool = False
) -> TaskState:
    """Return ``target`` if ``source -> target`` is allowed, else raise InvalidTransition."""
    if target in TRANSITIONS[source]:
        return target
    if manual and (source, target) in MANUAL_TRANSITIONS:
        return target
    raise InvalidTransition(source, target, task_id)


def new_task_id() -> uuid.UUID:
    """A time-ordered UUID (version 7): ids sort by creation time."""
    import os
    import time

    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76
    value |= ((rand >> 62) & 0xFFF) << 64
    value |= 0b10 << 62
    value |= rand & ((1 << 62) - 1)
    return uuid.UUID(int=value)


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


def _to_frozenset(value: Any) -> Any:
    if isinstance(value, str):
        raise ValueError("expected a collection of strings, got a single string")
    if isinstance(value, Iterable):
        return frozenset(value)
    return value


def _check_names(value: frozenset[str]) -> frozenset[str]:
    for name in value:
        if not name or len(name) > 200:
            raise ValueError("capability names must be 1 to 200 characters")
    return value


Capabilities = Annotated[
    frozenset[str], BeforeValidator(_to_frozenset), AfterValidator(_check_names)
]


def _aware(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        raise ValueError("datetimes must be timezone-aware")
    return value


AwareDatetime = Annotated[datetime, AfterValidator(_aware)]


def _to_frozen_str_map(value: Any) -> Any:
    if isinstance(value, dict):
        return FrozenDict(value) if value else empty_frozen_dict()
    return value


def _check_str_map(value: Any) -> FrozenDict:
    if not isinstance(value, FrozenDict):
        raise ValueError("expected a mapping of strings")
    for key, item in value.items():
        if not isinstance(key, str) or not isinstance(item, str):
            raise ValueError("trace context keys and values must be strings")
    return value


TraceContext = Annotated[
    Any,
    BeforeValidator(_to_frozen_str_map),
    AfterValidator(_check_str_map),
    PlainSerializer(dict, when_used="always"),
]


class TaskSpec(Message):
    """A task as a host submits it; validated once, at the boundary.

    ``type`` names the work; an agent can take the task when ``type`` and every one of
    ``required_capabilities`` are among its capabilities. Higher ``priority`` runs first.
    """

    type: str = Field(min_length=1, max_length=200)
    payload: JsonValue = Field(default_factory=empty_frozen_dict)
    priority: int = Field(default=0, ge=PRIORITY_MIN, le=PRIORITY_MAX)
    required_capabilities: Capabilities = frozenset()
    timeout_s: float | None = Field(default=60.0, gt=0)
    max_attempts: int | None = Field(default=None, ge=1, le=1000)
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=200)
    deadline: AwareDatetime | None = None
    trace_context: TraceContext = Field(default_factory=empty_frozen_dict)
    backoff_base_s: float | None = Field(default=None, ge=0)
    backoff_cap_s: float | None = Field(default=None, ge=0)


class AgentSpec(Message):
    """A registered agent: what it can do and how many tasks it runs at once."""

    agent_id: str = Field(min_length=1, max_length=200)
    capabilities: Capabilities
    max_concurrency: int = Field(default=1, ge=1, le=10_000)

    @model_validator(mode="after")
    def _has_capabilities(self) -> AgentSpec:
        if not self.capabilities:
            raise ValueError("an agent needs at least one capability")
        return self


class Attempt(Message):
    """One execution attempt of a task, kept in its history."""

    number: int
    agent_id: str | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    outcome: str
    error: str | None = None


class TaskRecord(Message):
    """Everything the runtime knows about one task. Replaced, never mutated."""

    task_id: uuid.UUID
    spec: TaskSpec
    state: TaskState = TaskState.PENDING
    attempt: int = 0
    max_attempts: int = 3
    sequence: int = 0
    created_at: datetime
    updated_at: datetime
    next_attempt_at: datetime | None = None
    last_error: str | None = None
    result: JsonValue = None
    history: tuple[Attempt, ...] = ()
    owner: str | None = None
    lease_expires_at: datetime | None = None
    agent_id: str | None = None

    def moved(
        self, target: TaskState, *, at: datetime, manual: bool = False, **changes: Any
    ) -> TaskRecord:
        """A copy of this record in state ``target``; raises InvalidTransition if forbidden."""
        if target not in TRANSITIONS[self.state]:  # the common case costs one lookup
            check_transition(self.state, target, task_id=self.task_id, manual=manual)
        return self.evolve(state=target, updated_at=at, **changes)

    @property
    def is_terminal(self) -> bool:
        """True when the task will not change state again on its own."""
        return self.state in TERMINAL_STATES
