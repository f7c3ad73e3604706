"""The pure core of the retry actor: backoff with full jitter, the retry decision, and the
timer heap of tasks waiting for their next attempt.

No threads, no clock, no randomness of its own: the shell passes the current time and a
``rand`` callable in, so every decision is reproducible in tests.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import NamedTuple, TypeAlias

from messages.task import TaskRecord, TaskSpec

__all__ = [
    "RetryDecision",
    "RetryPolicy",
    "RetryReason",
    "RetrySchedulerCore",
    "backoff_bound",
    "backoff_delay",
    "decide",
]


def _check_real(name: str, value: float, minimum: float, *, inclusive: bool = True) -> None:
    # bool is an int; True as a delay is almost certainly a bug, so refuse it explicitly.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if value < minimum or (not inclusive and value == minimum):
        relation = ">=" if inclusive else ">"
        raise ValueError(f"{name} must be {relation} {minimum}, got {value!r}")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How a failed task is retried.

    The n-th failed attempt waits a uniformly random time in
    ``[0, min(cap_s, base_s * factor ** (n - 1))]`` ("full jitter") before the next one;
    a task gets at most ``max_attempts`` attempts in total. Errors whose type name is in
    ``non_retryable`` are dead-lettered at once. ``cap_s`` below ``base_s`` is allowed (every
    delay is then capped), since a task's overrides may set either one alone.
    """

    base_s: float = 1.0
    factor: float = 2.0
    cap_s: float = 30.0
    max_attempts: int = 3
    non_retryable: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        """Refuse nonsense: negative or non-finite delays, factor < 1, max_attempts < 1."""
        _check_real("base_s", self.base_s, 0.0)
        # factor < 1 would make later attempts wait less than earlier ones.
        _check_real("factor", self.factor, 1.0)
        _check_real("cap_s", self.cap_s, 0.0)
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int):
            raise TypeError(f"max_attempts must be an int, got {self.max_attempts!r}")
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        # Typed as object: callers may pass any collection, which is normalised here.
        names: object = self.non_retryable
        # A lone string would silently become a set of its characters.
        if isinstance(names, str) or not isinstance(names, Iterable):
            raise TypeError("non_retryable must be a collection of exception type names")
        frozen = frozenset(names)
        if not all(isinstance(name, str) for name in frozen):
            raise TypeError("non_retryable must contain exception type names (str)")
        object.__setattr__(self, "non_retryable", frozen)

    def for_task(self, spec: TaskSpec) -> RetryPolicy:
        """This policy with the task's overrides (``max_attempts``, ``backoff_base_s``,
        ``backoff_cap_s``) applied where the spec sets them."""
        return dataclasses.replace(
            self,
            base_s=self.base_s if spec.backoff_base_s is None else spec.backoff_base_s,
            cap_s=self.cap_s if spec.backoff_cap_s is None else spec.backoff_cap_s,
            max_attempts=self.max_attempts if spec.max_attempts is None else spec.max_attempts,
        )


def backoff_bound(policy: RetryPolicy, attempt: int) -> float:
    """The largest delay after failed attempt ``attempt`` (1-based):
    ``min(cap_s, base_s * factor ** (attempt - 1))``."""
    if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 1:
        raise ValueError(f"attempt must be an integer >= 1, got {attempt!r}")
    try:
        raw = policy.base_s * policy.factor ** (attempt - 1)
    except OverflowError:
        # factor ** n overflows a float long before attempt counts get absurd; the cap wins,
        # unless the base is 0 (0 * anything is 0: "retry at once" stays at once).
        return policy.cap_s if policy.base_s > 0 else 0.0
    return min(policy.cap_s, raw)


def backoff_delay(policy: RetryPolicy, attempt: int, rand: Callable[[], float]) -> float:
    """Seconds to wait after failed attempt ``attempt`` (1-based), with full jitter:
    ``rand() * backoff_bound(policy, attempt)``.

    ``rand`` returns a float in [0, 1) (``random.random``); 1.0 is tolerated. Full jitter
    spreads retries of tasks that failed together over the whole window, so they do not
    come back as a thundering herd.
    """
    bound = backoff_bound(policy, attempt)
    fraction = rand()
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"rand() must return a value in [0, 1), got {fraction!r}")
    return bound * fraction


class RetryReason(StrEnum):
    """Why :func:`decide` retried or dead-lettered a task (stable strings, used in events)."""

    RETRYABLE = "retryable"
    PERMANENT_ERROR = "permanent_error"
    NON_RETRYABLE = "non_retryable"
    ATTEMPTS_EXHAUSTED = "attempts_exhausted"
    DEADLINE_EXPIRED = "deadline_expired"


@dataclass(frozen=True, slots=True)
class RetryDecision:
    """The outcome of :func:`decide`: retry after ``delay_s`` seconds, or dead-letter
    (``retry`` False, ``delay_s`` 0.0); ``reason`` is a :class:`RetryReason` value."""

    retry: bool
    delay_s: float
    reason: str


def decide(
    policy: RetryPolicy,
    attempt: int,
    error_type: str,
    permanent: bool,
    now: datetime,
    deadline: datetime | None,
    rand: Callable[[], float],
) -> RetryDecision:
    """Decide what happens to a task whose attempt number ``attempt`` (1-based) just failed.

    Dead-letter, checked in this order, when: the error is permanent (derives from
    PermanentError, as the caller determined), ``error_type`` is in
    ``policy.non_retryable``, ``attempt >= policy.max_attempts``, or the next attempt
    would start at or after ``deadline`` (the queue expires a task whose deadline is
    ``<= now``, so a retry due exactly at the deadline would be wasted). Otherwise retry
    after :func:`backoff_delay`. ``rand`` is called only when a delay is needed.
    """
    if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 1:
        raise ValueError(f"attempt must be an integer >= 1, got {attempt!r}")
    if permanent:
        return RetryDecision(False, 0.0, RetryReason.PERMANENT_ERROR)
    if error_type in policy.non_retryable:
        return RetryDecision(False, 0.0, RetryReason.NON_RETRYABLE)
    if attempt >= policy.max_attempts:
        return RetryDecision(False, 0.0, RetryReason.ATTEMPTS_EXHAUSTED)
    delay = backoff_delay(policy, attempt, rand)
    if deadline is not None and now + timedelta(seconds=delay) >= deadline:
        return RetryDecision(False, 0.0, RetryReason.DEADLINE_EXPIRED)
    return RetryDecision(True, delay, RetryReason.RETRYABLE)


# (due, schedule sequence, task id); the sequence is unique, so the id is never compared.
_TimerEntry: TypeAlias = tuple[float, int, uuid.UUID]


class _Waiting(NamedTuple):
    """A scheduled task: its current heap entry's sequence and due time, and the record."""

    seq: int
    due: float
    record: TaskRecord


class RetrySchedulerCore:
    """Tasks waiting for their next attempt, released in due order (ties: schedule order).

    Due times are monotonic-clock seconds supplied by the caller. Cancellation is lazy
    (tombstones skipped when they surface), with a compaction once tombstones outnumber
    waiting tasks, so memory stays within twice the live size.
    """

    __slots__ = ("_cancelled", "_dead", "_fired", "_heap", "_scheduled", "_seq", "_waiting")

    def __init__(self) -> None:
        """An empty scheduler."""
        self._heap: list[_TimerEntry] = []
        self._waiting: dict[uuid.UUID, _Waiting] = {}
        self._dead = 0
        self._seq = 0
        self._scheduled = 0
        self._fired = 0
        self._cancelled = 0

    @classmethod
    def from_snapshot(cls, entries: Iterable[tuple[float, TaskRecord]]) -> RetrySchedulerCore:
        """Rebuild a scheduler from :meth:`snapshot` output: ``(due, record)`` pairs.

        Pairs are scheduled in the given order, so equal due times keep their order.
        Due times are monotonic seconds, which are only meaningful within one process:
        a caller restoring across processes must translate them first.
        """
        core = cls()
        for due, record in entries:
            core.schedule(record, due)
        return core

    def __len__(self) -> int:
        """Tasks waiting (exact: tombstones are not counted)."""
        return len(self._waiting)

    def __contains__(self, task_id: object) -> bool:
        """True when a task with this id is waiting."""
        return task_id in self._waiting

    def get(self, task_id: uuid.UUID) -> TaskRecord | None:
        """The waiting record with this id, or None."""
        waiting = self._waiting.get(task_id)
        return None if waiting is None else waiting.record

    def due_of(self, task_id: uuid.UUID) -> float | None:
        """When the waiting task ``task_id`` is due, or None if it is not waiting."""
        waiting = self._waiting.get(task_id)
        return None if waiting is None else waiting.due

    def schedule(self, record: TaskRecord, due: float) -> None:
        """Hold ``record`` until ``due`` (monotonic seconds, finite).

        Raises ValueError if the task is already waiting: rescheduling is cancel + schedule,
        so a stray duplicate failure report cannot silently move a retry.
        """
        if isinstance(due, bool) or not isinstance(due, int | float) or not math.isfinite(due):
            # NaN would corrupt the heap order silently.
            raise ValueError(f"due must be a finite number, got {due!r}")
        task_id = record.task_id
        if task_id in self._waiting:
            raise ValueError(f"task {task_id} is already scheduled for retry")
        seq = self._seq
        self._seq = seq + 1
        heapq.heappush(self._heap, (due, seq, task_id))
        self._waiting[task_id] = _Waiting(seq, due, record)
        self._scheduled += 1

    def next_due(self) -> float | None:
        """The earliest due time among waiting tasks, or None when none waits."""
        heap = self._heap
        while heap and not self._is_live(heap[0]):
            heapq.heappop(heap)
            self._dead -= 1
        return heap[0][0] if heap else None

    def pop_due(self, now: float) -> list[TaskRecord]:
        """Remove and return every task due at or before ``now``, in due order (ties in
        schedule order)."""
        heap = self._heap
        released: list[TaskRecord] = []
        while heap and heap[0][0] <= now:
            entry = heapq.heappop(heap)
            if self._is_live(entry):
                released.append(self._waiting.pop(entry[2]).record)
            else:
                self._dead -= 1
        self._fired += len(released)
        self._maybe_compact()
        return released

    def cancel(self, task_id: uuid.UUID) -> TaskRecord | None:
        """Stop waiting for ``task_id`` and return its record; None if it is not waiting."""
        waiting = self._waiting.pop(task_id, None)
        if waiting is None:
            return None
        self._dead += 1
        self._cancelled += 1
        self._maybe_compact()
        return waiting.record

    def snapshot(self) -> list[tuple[float, TaskRecord]]:
        """Every waiting task as ``(due, record)``, in the order it would be released."""
        ordered = sorted(self._waiting.values(), key=lambda waiting: (waiting.due, waiting.seq))
        return [(waiting.due, waiting.record) for waiting in ordered]

    def statistics(self) -> dict[str, int]:
        """Counters since construction: depth (waiting now), scheduled, fired, cancelled,
        tombstones. ``depth == scheduled - fired - cancelled`` always holds."""
        return {
            "depth": len(self._waiting),
            "scheduled": self._scheduled,
            "fired": self._fired,
            "cancelled": self._cancelled,
            "tombstones": self._dead,
        }

    def _maybe_compact(self) -> None:
        # Rebuilding costs O(entries), paid only after more tombstones than live entries
        # have piled up: amortised O(1) per cancel, and memory stays <= 2x live.
        if self._dead > len(self._waiting):
            self._heap = [entry for entry in self._heap if self._is_live(entry)]
            heapq.heapify(self._heap)
            self._dead = 0

    def _is_live(self, entry: _TimerEntry) -> bool:
        waiting = self._waiting.get(entry[2])
        return waiting is not None and waiting.seq == entry[1]
