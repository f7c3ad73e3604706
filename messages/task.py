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

import os
import struct
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    PlainSerializer,
    field_validator,
    model_validator,
)

from messages.base import (
    FrozenDict,
    JsonValue,
    Message,
    _set_dict,
    _set_extra,
    _set_fields_set,
    _set_private,
    _shape,
    empty_frozen_dict,
    freeze_json,
)
from messages.errors import InvalidTransition

__all__ = [
    "MANUAL_TRANSITIONS",
    "PRIORITY_MAX",
    "PRIORITY_MIN",
    "TERMINAL_STATES",
    "TRANSITIONS",
    "AgentSpec",
    "Attempt",
    "CronSpec",
    "TaskRecord",
    "TaskSpec",
    "TaskState",
    "attempt_entry",
    "check_transition",
    "new_task_id",
    "new_task_ids",
    "queued_records",
    "simple_spec",
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


# A UUIDv7 (RFC 9562): 48-bit Unix ms timestamp, version 7, 12 random bits (rand_a),
# variant 0b10, 62 random bits (rand_b). The 74 random bits are drawn as 10 bytes (80 bits,
# the top 6 unused): rand_a is bits 62-73 of the drawn int, rand_b its low 62 bits.
_MASK_46: Final = (1 << 46) - 1
_MASK_48: Final = (1 << 48) - 1
_MASK_62: Final = (1 << 62) - 1
_MASK_74: Final = (1 << 74) - 1
_VERSION_VARIANT: Final = (0x7 << 76) | (0b10 << 62)

# A uuid.UUID made as ``uuid.UUID(int=value)`` makes it (its two slots set, ``is_safe``
# unknown), without that constructor's argument checks: the values are made here.
_new_object = object.__new__
_UUID = uuid.UUID
_set_uuid_int = uuid.UUID.__dict__["int"].__set__
_set_uuid_is_safe = uuid.UUID.__dict__["is_safe"].__set__
_SAFE_UNKNOWN = uuid.SafeUUID.unknown
_unpack_80_bits = struct.Struct(">QH").iter_unpack  # 10 bytes: the high 64 bits, the low 16


def _uuid7_int(stamped: int) -> int:
    """The int of the UUIDv7 of ``stamped`` (``ms << 74 | the 74 random bits``)."""
    return (
        ((stamped >> 74) & _MASK_48) << 80
        | ((stamped >> 62) & 0xFFF) << 64
        | (stamped & _MASK_62)
        | _VERSION_VARIANT
    )


def _next_uuid7_int(value: int) -> int:
    """The UUIDv7 int right after ``value``: its 74 random bits plus one, carried into the
    timestamp when they are all ones."""
    stamped = (value >> 80) << 74 | ((value >> 64) & 0xFFF) << 62 | (value & _MASK_62)
    return _uuid7_int(stamped + 1)


class RandomPool:
    """Random bytes from ``os.urandom``, drawn ``chunk`` bytes at a time.

    A task id needs 10 random bytes, and ``os.urandom`` is a system call: cheap when the
    thread is hot (about 1.5 us here) but 5-40 us right after the thread slept, which is
    how a host submits at a low load (measured on the benchmark VM). Drawn 4 KiB at a
    time, each submit takes its bytes from memory. Each byte is handed out once; the
    bytes are the kernel's CSPRNG output all the same. A forked child starts with an
    empty pool (it would otherwise hand out the parent's next bytes again: duplicate
    ids). Draws larger than a quarter of ``chunk`` go to ``os.urandom`` directly.
    """

    def __init__(self, chunk: int = 4096) -> None:
        self.chunk = chunk
        self._lock = threading.Lock()
        self._bytes = b""
        self._at = 0

    def take(self, n: int) -> bytes:
        """``n`` random bytes never handed out before."""
        if n > self.chunk >> 2:
            return os.urandom(n)
        with self._lock:
            at = self._at
            end = at + n
            if end > len(self._bytes):
                self._bytes = os.urandom(self.chunk)
                at, end = 0, n
            self._at = end
            return self._bytes[at:end]

    def reset(self) -> None:
        """Forget the bytes drawn (in a forked child: they are the parent's too)."""
        self._lock = threading.Lock()
        self._bytes = b""
        self._at = 0


_random_pool = RandomPool()
os.register_at_fork(after_in_child=_random_pool.reset)
_random_bytes = _random_pool.take


def new_task_id() -> uuid.UUID:
    """A time-ordered UUID (version 7): ids sort by creation time."""
    ms = time.time_ns() // 1_000_000
    task_id = _new_object(_UUID)
    drawn = int.from_bytes(_random_bytes(10), "big")
    _set_uuid_int(task_id, _uuid7_int(ms << 74 | (drawn & _MASK_74)))
    _set_uuid_is_safe(task_id, _SAFE_UNKNOWN)
    return task_id


def new_task_ids(count: int) -> list[uuid.UUID]:
    """``count`` time-ordered UUIDs (version 7) made at one instant, strictly increasing.

    One clock reading and one draw of random bytes (10 per id) for them all: each id is
    what :func:`new_task_id` makes of its 10 bytes, and the batch is in increasing order
    (sorted by their random bits; in the unlikely tie, an id is the one right after the
    one before it, counting on into the next millisecond if need be, as RFC 9562 allows),
    so the ids of a batch sort in the order of the batch.
    """
    if count <= 0:
        return []
    top = ((time.time_ns() // 1_000_000) & _MASK_48) << 80 | _VERSION_VARIANT
    # The bits under the timestamp, ``rand_a << 64 | rand_b``, of each 80 bits drawn as
    # ``high << 16 | low``: sorting these sorts the ids.
    randoms = sorted(
        [
            (high >> 46 & 0xFFF) << 64 | (high & _MASK_46) << 16 | low
            for high, low in _unpack_80_bits(_random_bytes(10 * count))
        ]
    )
    ids: list[uuid.UUID] = []
    append = ids.append
    new = _new_object
    set_int = _set_uuid_int
    set_is_safe = _set_uuid_is_safe
    last = -1
    for random in randoms:
        value = top | random
        if value <= last:
            value = _next_uuid7_int(last)
        last = value
        task_id = new(_UUID)
        set_int(task_id, value)
        set_is_safe(task_id, _SAFE_UNKNOWN)
        append(task_id)
    return ids


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


_TYPE_MAX_LENGTH: Final = 200


class TaskSpec(Message):
    """A task as a host submits it; validated once, at the boundary.

    ``type`` names the work; an agent can take the task when ``type`` and every one of
    ``required_capabilities`` are among its capabilities. Higher ``priority`` runs first.
    """

    type: str = Field(min_length=1, max_length=_TYPE_MAX_LENGTH)
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


def _check_cron(value: str) -> str:
    fields = value.split()
    # croniter also takes a 7th field (year); five or six (seconds last) are what the
    # docs promise, so nothing else is accepted.
    if not 5 <= len(fields) <= 6 and not (len(fields) == 1 and value.startswith("@")):
        raise ValueError(f"a cron expression has 5 or 6 fields (seconds last), got {value!r}")
    if not croniter.is_valid(value):
        raise ValueError(f"not a valid cron expression: {value!r}")
    return " ".join(fields)


class CronSpec(Message):
    """A task submitted on a cron schedule (``TaskRunner.add_cron``).

    ``cron``: five fields (minute hour day month weekday), a sixth for seconds, or a
    nickname such as ``@hourly``; read in ``timezone`` (an IANA name). At each fire time
    the runner submits ``task`` with the idempotency key ``cron:<name>:<fire time>``
    (ISO 8601, UTC), so a fire time makes at most one task, however many runners fire it.
    A fire time missed while no runner ran is skipped, not caught up.
    """

    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$")
    cron: str = Field(min_length=1, max_length=200)
    task: TaskSpec
    timezone: str = "UTC"

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, value: str) -> str:
        return _check_cron(value)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}") from exc
        return value

    @model_validator(mode="after")
    def _no_own_key(self) -> CronSpec:
        if self.task.idempotency_key is not None:
            raise ValueError(
                "a cron task gets its idempotency key from its fire time; leave it unset"
            )
        return self


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
        changes["state"] = target
        changes["updated_at"] = at
        return self._evolved(changes)

    def moved_via(self, *states: TaskState, at: datetime, **changes: Any) -> TaskRecord:
        """A copy of this record moved through ``states`` in turn, in one copy: it ends in
        the last of them and the versions in the others are never made. Raises
        InvalidTransition if any move is forbidden. An agent uses it for an attempt that
        started and ended before it made the task RUNNING (``ASSIGNED -> RUNNING ->
        COMPLETED``), and for tasks the router handed it as the queue gave them
        (``QUEUED -> ASSIGNED -> RUNNING``)."""
        if not states:
            raise ValueError("moved_via needs at least one state")
        return self.moved_through(states, at, changes)

    def moved_through(
        self, states: tuple[TaskState, ...], at: datetime, changes: dict[str, Any]
    ) -> TaskRecord:
        """:meth:`moved_via` of ``states`` (at least one), with the changes in a dict (the
        caller's, not kept): the agent's way, one call per ended attempt."""
        source = self.state
        for state in states:
            if state not in TRANSITIONS[source]:
                check_transition(source, state, task_id=self.task_id)
            source = state
        changes["state"] = source
        changes["updated_at"] = at
        return self._evolved(changes)

    def handed_back(self, *, at: datetime) -> TaskRecord:
        """A record an agent had and never started, back in the queue: as it is if it was
        handed over QUEUED (as the router does), else moved to QUEUED without its agent."""
        if self.state is TaskState.QUEUED:
            return self
        return self.moved(TaskState.QUEUED, at=at, agent_id=None)

    @property
    def is_terminal(self) -> bool:
        """True when the task will not change state again on its own."""
        return self.state in TERMINAL_STATES


# -- the submit path's shortcuts ---------------------------------------------------------
# A host submits many tasks per second; these build exactly what validation and
# TaskRecord.fast build, with less work per task.


def simple_spec(value: object) -> TaskSpec | None:
    """``TaskSpec.model_validate(value)`` for the commonest inputs, cheaply: a dict of a
    valid ``"type"`` (an ASCII ``str`` of 1 to 200 characters) and, optionally, a
    ``"payload"`` (any JSON value) and a ``"priority"`` (an ``int`` in range). None for
    every other input, which the full validation decides (and explains, if it is
    invalid): other fields, other types, a payload that is not JSON.

    The spec is the one validation makes: the other fields at their defaults, the given
    ones as the fields set (shared as validation shares it), the same compact dict.
    """
    if type(value) is not dict or not value.keys() <= _SIMPLE_KEYS:
        return None
    name = value.get("type")
    if not (type(name) is str and 0 < len(name) <= _TYPE_MAX_LENGTH and name.isascii()):
        return None
    shape = _SPEC_SHAPE
    data = shape.template.copy()  # the defaults, in a compact dict
    data["type"] = name
    has_priority = "priority" in value
    has_payload = "payload" in value
    if has_priority:
        priority = value["priority"]
        if type(priority) is not int or not PRIORITY_MIN <= priority <= PRIORITY_MAX:
            return None
        data["priority"] = priority
    if has_payload:
        try:
            data["payload"] = freeze_json(value["payload"])
        except ValueError:
            return None
    fields_set = _SIMPLE_FIELDS_SETS[has_payload, has_priority]
    spec: TaskSpec = _new_object(TaskSpec)
    _set_dict(spec, data)
    _set_fields_set(spec, fields_set)
    _set_extra(spec, None)
    _set_private(spec, None)
    return spec


_SPEC_SHAPE = _shape(TaskSpec)
_SIMPLE_KEYS: Final = frozenset({"type", "payload", "priority"})
_SIMPLE_FIELDS_SETS: Final[dict[tuple[bool, bool], set[str]]] = {
    (payload, priority): _SPEC_SHAPE.fields_sets.setdefault(keys, set(keys))
    for payload, priority, keys in (
        (False, False, frozenset({"type"})),
        (True, False, frozenset({"type", "payload"})),
        (False, True, frozenset({"type", "priority"})),
        (True, True, _SIMPLE_KEYS),
    )
}
"""The fields sets validation shares (see Message.model_post_init), by (payload given,
priority given)."""


def queued_records(
    specs: Sequence[TaskSpec],
    *,
    now: datetime,
    owner: str | None,
    max_attempts: int,
    first_sequence: int = 0,
    run_at: datetime | None = None,
) -> tuple[TaskRecord, ...]:
    """New records for ``specs``, in state QUEUED, with ids from :func:`new_task_ids`:
    for each spec what ``TaskRecord.fast`` builds given every field (``max_attempts`` the
    spec's, else the one given; created and updated ``now``; ``owner``; sequence 0, or
    ``first_sequence``, ``first_sequence + 1``, ... if that is given: the store's
    :meth:`~actors.journal.store.TaskStore.sequence_hint`), from one template of the
    fields they share.

    ``run_at``: delayed tasks, PENDING until then (``next_attempt_at``), not QUEUED."""
    shape = _RECORD_SHAPE
    template = shape.template.copy()  # compact, as each copy of it
    template.update(
        state=TaskState.QUEUED if run_at is None else TaskState.PENDING,
        attempt=0,
        sequence=0,
        created_at=now,
        updated_at=now,
        next_attempt_at=run_at,
        last_error=None,
        result=None,
        history=(),
        owner=owner,
        lease_expires_at=None,
        agent_id=None,
    )
    every = shape.every
    copy = template.copy
    records: list[TaskRecord] = []
    append = records.append
    sequence = first_sequence
    step = 1 if first_sequence else 0
    for task_id, spec in zip(new_task_ids(len(specs)), specs, strict=True):
        data = copy()
        data["task_id"] = task_id
        data["spec"] = spec
        data["max_attempts"] = spec.max_attempts or max_attempts
        data["sequence"] = sequence
        sequence += step
        record: TaskRecord = _new_object(TaskRecord)
        _set_dict(record, data)
        _set_fields_set(record, every)
        _set_extra(record, None)
        _set_private(record, None)
        append(record)
    return tuple(records)


_RECORD_SHAPE = _shape(TaskRecord)


_ATTEMPT_SHAPE = _shape(Attempt)


def attempt_entry(
    number: int,
    agent_id: str | None,
    started_at: datetime | None,
    ended_at: datetime | None,
    outcome: str,
    error: str | None,
) -> Attempt:
    """``Attempt.fast(...)`` of every field, for the agent's one history entry per attempt:
    the same compact dict and shared fields set, with less work."""
    data = _ATTEMPT_SHAPE.template.copy()
    data["number"] = number
    data["agent_id"] = agent_id
    data["started_at"] = started_at
    data["ended_at"] = ended_at
    data["outcome"] = outcome
    data["error"] = error
    entry: Attempt = _new_object(Attempt)
    _set_dict(entry, data)
    _set_fields_set(entry, _ATTEMPT_SHAPE.every)
    _set_extra(entry, None)
    _set_private(entry, None)
    return entry
