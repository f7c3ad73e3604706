"""The pure core of the queue actor: pending tasks by priority, FIFO ties, capacity, deadlines.

No threads, no clock, no I/O: the actor shell passes the current time in and turns the
results into messages. Everything here is single-threaded by construction (one actor owns
one core).

Layout: one binary heap per *routing key* (the task type plus its required capabilities),
so a task that no agent can serve right now never blocks the tasks behind it (no
head-of-line blocking), plus one heap of deadlines. Removal other than from a heap's head
(cancel, expiry) is lazy: the heap entry stays as a tombstone and is skipped when it
surfaces; the heaps are compacted once tombstones outnumber live entries, so memory stays
within twice the live size.

Memory: a pending task costs one tuple ``(-priority, sequence, record)``, held both by its
heap and by the id index (the index holding *that very tuple* is what makes the heap entry
live), plus the record itself, which is the one the store keeps (shared, not copied).
"""

from __future__ import annotations

import heapq
import uuid
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import TypeAlias

from messages.errors import QueueFull
from messages.task import TaskRecord

__all__ = ["DEFAULT_CAPACITY", "RoutingKey", "TaskQueueCore", "key_of", "routing_key"]

DEFAULT_CAPACITY = 10_000
"""Pending tasks a queue holds before :meth:`TaskQueueCore.push` raises QueueFull."""

RoutingKey: TypeAlias = frozenset[str]
"""What an agent must offer to take a task: its type and every required capability."""

# (-priority, push sequence, record): the negated priority makes heapq's min-heap pop the
# highest priority first; the sequence is unique, so comparison never reaches the record.
# The same tuple is the task's entry in the id index: a heap entry is live when the index
# holds that very tuple (a task pushed again gets a new one).
_Entry: TypeAlias = tuple[int, int, TaskRecord]
# (deadline, push sequence, task id), same trick.
_DeadlineEntry: TypeAlias = tuple[datetime, int, uuid.UUID]


def routing_key(record: TaskRecord) -> RoutingKey:
    """The routing key of ``record``: ``{spec.type} | spec.required_capabilities``."""
    spec = record.spec
    return key_of(spec.type, spec.required_capabilities)


_KEYS: dict[tuple[str, frozenset[str]], RoutingKey] = {}
_KEYS_MAX = 4096  # distinct (type, required) pairs remembered; past it keys are built


def key_of(task_type: str, required: frozenset[str]) -> RoutingKey:
    """``{task_type} | required``, the same frozenset object for equal inputs (built once:
    the queue and the router look a task's key up several times on its way)."""
    pair = (task_type, required)
    key = _KEYS.get(pair)
    if key is None:
        key = frozenset((task_type,)) | required
        if len(_KEYS) < _KEYS_MAX:
            _KEYS[pair] = key
    return key


class _Bucket:
    """The heap of one routing key, with its count of live (not tombstoned) entries."""

    __slots__ = ("heap", "key", "live")

    def __init__(self, key: RoutingKey) -> None:
        self.key = key
        self.heap: list[_Entry] = []
        self.live = 0


class TaskQueueCore:
    """Pending tasks, taken highest priority first and FIFO among equal priorities.

    Each push gets a fresh sequence number from the core's own counter, so a task pushed
    again (a retry, a task handed back by the router) goes to the back of its priority.
    ``take`` merges only the routing keys the caller can serve, so its cost is
    O(k log n) per task taken for k servable keys, independent of the tasks it skips.
    """

    __slots__ = (
        "_buckets",
        "_cancelled",
        "_capacity",
        "_dead_deadline",
        "_dead_priority",
        "_deadline_live",
        "_deadlines",
        "_expired",
        "_pushed",
        "_seq",
        "_taken",
        "_tasks",
    )

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        """An empty queue holding at most ``capacity`` (>= 1) pending tasks."""
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"capacity must be an integer >= 1, got {capacity!r}")
        self._capacity = capacity
        self._tasks: dict[uuid.UUID, _Entry] = {}
        self._buckets: dict[RoutingKey, _Bucket] = {}
        self._deadlines: list[_DeadlineEntry] = []
        self._deadline_live = 0
        # Tombstones per heap family, so each family is compacted on its own evidence.
        self._dead_priority = 0
        self._dead_deadline = 0
        self._seq = 0
        self._pushed = 0
        self._taken = 0
        self._cancelled = 0
        self._expired = 0

    @classmethod
    def from_snapshot(
        cls, records: Iterable[TaskRecord], capacity: int = DEFAULT_CAPACITY
    ) -> TaskQueueCore:
        """Rebuild a queue from :meth:`snapshot` output (or any list in take order).

        Records are pushed in the given order, so the rebuilt queue takes them in that
        order (within what priorities allow). The capacity is *not* enforced here: a
        restarted actor must not lose accepted tasks because its limit shrank; the queue
        just refuses new pushes until it drains below ``capacity``. Duplicate task ids
        raise ValueError.
        """
        core = cls(capacity)
        for record in records:
            if record.task_id in core._tasks:
                raise ValueError(f"task {record.task_id} appears twice in the snapshot")
            core._insert(record)
        return core

    # -- queries ------------------------------------------------------------------------

    @property
    def capacity(self) -> int:
        """The most pending tasks :meth:`push` accepts."""
        return self._capacity

    @property
    def free_capacity(self) -> int:
        """How many more tasks :meth:`push` accepts right now (0 when full or over)."""
        return max(0, self._capacity - len(self._tasks))

    def __len__(self) -> int:
        """Pending tasks (exact: tombstones are not counted)."""
        return len(self._tasks)

    def __contains__(self, task_id: object) -> bool:
        """True when a task with this id is pending."""
        return task_id in self._tasks

    def get(self, task_id: uuid.UUID) -> TaskRecord | None:
        """The pending record with this id, or None."""
        entry = self._tasks.get(task_id)
        return None if entry is None else entry[2]

    def keys(self) -> frozenset[RoutingKey]:
        """The routing keys that have at least one pending task."""
        # Buckets are dropped the moment their last live task leaves, so every bucket counts.
        return frozenset(self._buckets)

    def next_deadline(self) -> datetime | None:
        """The earliest deadline among pending tasks, or None when none has a deadline."""
        deadlines = self._deadlines
        while deadlines and not self._deadline_is_live(deadlines[0]):
            heapq.heappop(deadlines)
            self._dead_deadline -= 1
        return deadlines[0][0] if deadlines else None

    def snapshot(self) -> list[TaskRecord]:
        """Every pending task, in the order :meth:`take` would return them."""
        # (-priority, sequence) decides: sequences are unique, records are never compared.
        return [entry[2] for entry in sorted(self._tasks.values())]

    def statistics(self) -> dict[str, int]:
        """Counters since construction: depth, capacity, pushed, taken, cancelled, expired,
        keys (routing keys with pending tasks) and tombstones (dead heap entries).

        ``depth == pushed - taken - cancelled - expired`` always holds.
        """
        return {
            "depth": len(self._tasks),
            "capacity": self._capacity,
            "pushed": self._pushed,
            "taken": self._taken,
            "cancelled": self._cancelled,
            "expired": self._expired,
            "keys": len(self._buckets),
            "tombstones": self._dead_priority + self._dead_deadline,
        }

    # -- commands -----------------------------------------------------------------------

    def push(self, record: TaskRecord) -> None:
        """Add ``record`` behind every pending task of the same priority.

        Raises ValueError if a task with the same id is already pending (a bug in the
        caller, so it is checked first) and QueueFull when the queue is at capacity.
        """
        if record.task_id in self._tasks:
            raise ValueError(f"task {record.task_id} is already queued")
        if len(self._tasks) >= self._capacity:
            raise QueueFull(f"queue is full ({self._capacity} pending tasks)")
        self._insert(record)

    def take(
        self, limit: int, can_serve: Callable[[RoutingKey], bool] | None = None
    ) -> list[TaskRecord]:
        """Remove and return up to ``limit`` tasks in priority/FIFO order among the routing
        keys for which ``can_serve(key)`` is true (every key when ``can_serve`` is None).

        ``can_serve`` is called once per routing key per call, never per task; tasks under
        other keys keep their place. ``limit`` 0 returns nothing; a negative one is an error.
        """
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        if limit == 0 or not self._tasks:
            return []
        # A k-way merge over the heads of the servable buckets: the merge heap holds one
        # (head entry, bucket) per servable bucket, so each pick costs O(log k + log n).
        merge: list[tuple[int, int, _Bucket]] = []
        for bucket in self._buckets.values():
            if can_serve is None or can_serve(bucket.key):
                head = self._live_head(bucket)
                merge.append((head[0], head[1], bucket))
        heapq.heapify(merge)
        taken: list[TaskRecord] = []
        tasks = self._tasks
        while merge and len(taken) < limit:
            _, _, bucket = merge[0]
            record = heapq.heappop(bucket.heap)[2]  # live: _live_head checked it
            del tasks[record.task_id]
            taken.append(record)
            bucket.live -= 1
            if record.spec.deadline is not None:
                self._deadline_live -= 1
                self._dead_deadline += 1
            if bucket.live:
                head = self._live_head(bucket)
                heapq.heapreplace(merge, (head[0], head[1], bucket))
            else:
                heapq.heappop(merge)
                # Whatever is left in an empty bucket is tombstones; they go with it.
                self._dead_priority -= len(bucket.heap)
                del self._buckets[bucket.key]
        self._taken += len(taken)
        self._maybe_compact()
        return taken

    def cancel(self, task_id: uuid.UUID) -> TaskRecord | None:
        """Remove the pending task ``task_id`` and return it; None if it is not pending."""
        entry = self._tasks.pop(task_id, None)
        if entry is None:
            return None
        record = entry[2]
        self._forget_priority_entry(record)
        if record.spec.deadline is not None:
            self._deadline_live -= 1
            self._dead_deadline += 1
        self._cancelled += 1
        self._maybe_compact()
        return record

    def expire(self, now: datetime) -> list[TaskRecord]:
        """Remove and return the tasks whose deadline is at or before ``now`` (timezone-
        aware), earliest deadline first, ties in push order. O(log n) per task removed.
        """
        if now.tzinfo is None:
            raise ValueError("now must be timezone-aware (deadlines are)")
        expired: list[TaskRecord] = []
        deadlines = self._deadlines
        while deadlines and deadlines[0][0] <= now:
            entry = heapq.heappop(deadlines)
            if not self._deadline_is_live(entry):
                self._dead_deadline -= 1
                continue
            record = self._tasks.pop(entry[2])[2]
            self._deadline_live -= 1
            self._forget_priority_entry(record)
            expired.append(record)
        self._expired += len(expired)
        self._maybe_compact()
        return expired

    # -- internals ----------------------------------------------------------------------

    def _insert(self, record: TaskRecord) -> None:
        task_id = record.task_id
        seq = self._seq
        self._seq = seq + 1
        key = routing_key(record)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(key)
        entry = (-record.spec.priority, seq, record)
        heapq.heappush(bucket.heap, entry)
        bucket.live += 1
        deadline = record.spec.deadline
        if deadline is not None:
            heapq.heappush(self._deadlines, (deadline, seq, task_id))
            self._deadline_live += 1
        self._tasks[task_id] = entry
        self._pushed += 1

    def _is_live(self, entry: _Entry) -> bool:
        """True when the priority-heap ``entry`` is its task's current one."""
        return self._tasks.get(entry[2].task_id) is entry

    def _deadline_is_live(self, entry: _DeadlineEntry) -> bool:
        """True when the deadline-heap ``entry`` belongs to its task's current push."""
        current = self._tasks.get(entry[2])
        return current is not None and current[1] == entry[1]

    def _live_head(self, bucket: _Bucket) -> _Entry:
        """The first live entry of a bucket with ``live > 0``, popping tombstones above it."""
        heap = bucket.heap
        while not self._is_live(heap[0]):
            heapq.heappop(heap)
            self._dead_priority -= 1
        return heap[0]

    def _forget_priority_entry(self, record: TaskRecord) -> None:
        """Tombstone the bucket entry of a task that left other than by a pop of that heap."""
        bucket = self._buckets[routing_key(record)]
        bucket.live -= 1
        if bucket.live:
            self._dead_priority += 1
        else:
            # The leaving task's entry was live, so only the other entries were counted dead;
            # they all go with the bucket.
            self._dead_priority -= len(bucket.heap) - 1
            del self._buckets[bucket.key]

    def _maybe_compact(self) -> None:
        # Rebuilding costs O(entries), paid only after more tombstones than live entries
        # have accumulated, so it is amortised O(1) per removal and memory stays <= 2x live.
        if self._dead_priority > len(self._tasks):
            for bucket in self._buckets.values():
                bucket.heap = [entry for entry in bucket.heap if self._is_live(entry)]
                heapq.heapify(bucket.heap)
            self._dead_priority = 0
        if self._dead_deadline > self._deadline_live:
            self._deadlines = [entry for entry in self._deadlines if self._deadline_is_live(entry)]
            heapq.heapify(self._deadlines)
            self._dead_deadline = 0
