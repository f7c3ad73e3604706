"""The pure core of the queue actor: pending tasks by priority, FIFO ties, capacity, deadlines.

No threads, no clock, no I/O: the actor shell passes the current time in and turns the
results into messages. Everything here is single-threaded by construction (one actor owns
one core).

Layout: one bucket per *routing key* (the task type plus its required capabilities), so a
task that no agent can serve right now never blocks the tasks behind it (no head-of-line
blocking), plus one heap of deadlines. A bucket holds one FIFO ``deque`` per priority
level present in it (priorities are small integers, so a bucket has a handful of levels):
a push appends to its level and a take pops from the front of the highest non-empty one,
both O(1), where a heap costs O(log n). Each level is in push order, so the front of a
bucket's highest level is the bucket's first task by ``(-priority, sequence)``.

Removal other than from a level's front (cancel, expiry) is lazy: the entry stays as a
tombstone and is skipped when it reaches the front; the levels and the deadline heap are
compacted once their tombstones outnumber live entries, so memory stays within twice the
live size.

Memory: a pending task costs one tuple ``(-priority, sequence, record)``, held both by its
level and by the id index (the index holding *that very tuple* is what makes the level's
entry live), plus the record itself, which is the one the store keeps (shared, not copied).
The index is keyed by ``task_id.int``, the integer the UUID hashes by, so looking a task up
hashes an int in C rather than calling ``uuid.UUID.__hash__``.
"""

from __future__ import annotations

import heapq
import sys
import uuid
from bisect import insort
from collections import deque
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

# (-priority, push sequence, record): the negated priority (the *rank*) sorts the highest
# priority first; the sequence is unique, so comparing entries never reaches the record.
# The same tuple is the task's entry in the id index: a level's entry is live when the
# index holds that very tuple (a task pushed again gets a new one).
_Entry: TypeAlias = tuple[int, int, TaskRecord]
# (deadline, push sequence, task_id.int), a heap ordered the same way.
_DeadlineEntry: TypeAlias = tuple[datetime, int, int]

_NO_BOUND = sys.maxsize  # above every rank and sequence: a run of takes nothing stops


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


_NOTHING: frozenset[object] = frozenset()


def _index_key(task_id: object) -> int | None:
    """The id index's key for ``task_id``: its ``int`` for a UUID, None for anything else
    (which no task has; an unhashable one raises TypeError, as a dict lookup by it would)."""
    if isinstance(task_id, uuid.UUID):
        return task_id.int
    _ = task_id in _NOTHING  # hashes it
    return None


class _Bucket:
    """The tasks of one routing key: a FIFO deque per priority level present, with the
    count of live (not tombstoned) entries.

    ``levels`` maps a rank (``-priority``) to its entries in push order; ``ranks`` lists
    the ranks of ``levels`` in ascending order, so ``levels[ranks[0]]`` is the highest
    priority level. A level is dropped when it is emptied at its front (or by compaction),
    so every level listed holds at least one entry (live or tombstone).
    """

    __slots__ = ("key", "levels", "live", "ranks")

    def __init__(self, key: RoutingKey) -> None:
        self.key = key
        self.levels: dict[int, deque[_Entry]] = {}
        self.ranks: list[int] = []
        self.live = 0

    def add_level(self, rank: int) -> deque[_Entry]:
        """A new, empty level for ``rank`` (not in ``levels`` yet)."""
        level: deque[_Entry] = deque()
        self.levels[rank] = level
        insort(self.ranks, rank)
        return level

    @property
    def size(self) -> int:
        """Every entry of the bucket, live or tombstone. O(levels)."""
        return sum(map(len, self.levels.values()))

    @property
    def heap(self) -> list[_Entry]:
        """A copy of every entry, live or tombstone, highest level first (O(n): for
        inspection; the name is that of the binary heap the levels replaced)."""
        return [entry for rank in self.ranks for entry in self.levels[rank]]


class TaskQueueCore:
    """Pending tasks, taken highest priority first and FIFO among equal priorities.

    Each push gets a fresh sequence number from the core's own counter, so a task pushed
    again (a retry, a task handed back by the router) goes to the back of its priority.
    A push is O(1) (plus O(log d) for a task with a deadline, d the pending deadlines).
    ``take`` merges only the routing keys the caller can serve and takes from one bucket
    for as long as its tasks come before the other buckets' heads: O(1) per task taken
    within such a run, O(log k) per switch between the k servable keys, independent of the
    tasks it skips.
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
        "_seq",
        "_taken",
        "_tasks",
    )

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        """An empty queue holding at most ``capacity`` (>= 1) pending tasks."""
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"capacity must be an integer >= 1, got {capacity!r}")
        self._capacity = capacity
        # task_id.int -> entry: the same int the UUID hashes and compares by.
        self._tasks: dict[int, _Entry] = {}
        self._buckets: dict[RoutingKey, _Bucket] = {}
        self._deadlines: list[_DeadlineEntry] = []
        self._deadline_live = 0
        # Tombstones per family (levels, deadline heap), each compacted on its own evidence.
        self._dead_priority = 0
        self._dead_deadline = 0
        # The next push's sequence number, which is also the count of pushes so far.
        self._seq = 0
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
        core._capacity = _NO_BOUND  # while rebuilding
        tasks = core._tasks
        for record in records:
            if record.task_id.int in tasks:
                raise ValueError(f"task {record.task_id} appears twice in the snapshot")
            core.push(record)
        core._capacity = capacity
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
        if isinstance(task_id, uuid.UUID):  # inline: the actor asks before every push
            return task_id.int in self._tasks
        return _index_key(task_id) is not None  # False (or TypeError if unhashable)

    def get(self, task_id: uuid.UUID) -> TaskRecord | None:
        """The pending record with this id, or None."""
        key = _index_key(task_id)
        entry = None if key is None else self._tasks.get(key)
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
        keys (routing keys with pending tasks) and tombstones (dead level and deadline-heap
        entries).

        ``depth == pushed - taken - cancelled - expired`` always holds.
        """
        return {
            "depth": len(self._tasks),
            "capacity": self._capacity,
            "pushed": self._seq,
            "taken": self._taken,
            "cancelled": self._cancelled,
            "expired": self._expired,
            "keys": len(self._buckets),
            "tombstones": self._dead_priority + self._dead_deadline,
        }

    # -- commands -----------------------------------------------------------------------

    def push(self, record: TaskRecord) -> None:
        """Add ``record`` behind every pending task of the same priority. O(1), plus
        O(log d) when it has a deadline.

        Raises ValueError if a task with the same id is already pending (a bug in the
        caller, so it is checked first) and QueueFull when the queue is at capacity.
        """
        task_id = record.task_id
        index_key = task_id.int
        tasks = self._tasks
        if index_key in tasks:
            raise ValueError(f"task {task_id} is already queued")
        if len(tasks) >= self._capacity:
            raise QueueFull(f"queue is full ({self._capacity} pending tasks)")
        spec = record.spec
        required = spec.required_capabilities
        key = _KEYS.get((spec.type, required)) or key_of(spec.type, required)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(key)
        seq = self._seq
        self._seq = seq + 1
        rank = -spec.priority
        entry = (rank, seq, record)
        level = bucket.levels.get(rank)
        if level is None:
            level = bucket.add_level(rank)
        level.append(entry)
        bucket.live += 1
        deadline = spec.deadline
        if deadline is not None:
            heapq.heappush(self._deadlines, (deadline, seq, index_key))
            self._deadline_live += 1
        tasks[index_key] = entry

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
        # (head rank, head sequence, bucket) per servable bucket. The bucket at its top
        # gives a run of tasks, until its next one would come after the best head of the
        # other buckets (the smaller child of the top), so switching costs O(log k).
        merge: list[tuple[int, int, _Bucket]] = []
        for bucket in self._buckets.values():
            if can_serve is None or can_serve(bucket.key):
                head = self._live_head(bucket)
                merge.append((head[0], head[1], bucket))
        heapq.heapify(merge)
        taken: list[TaskRecord] = []
        while merge and len(taken) < limit:
            bucket = merge[0][2]
            if len(merge) == 1:
                stop_rank = stop_seq = _NO_BOUND
            else:
                stop_rank, stop_seq, _ = merge[1] if len(merge) == 2 else min(merge[1], merge[2])
            self._take_run(bucket, limit - len(taken), taken, stop_rank, stop_seq)
            if bucket.live:
                head = self._live_head(bucket)
                heapq.heapreplace(merge, (head[0], head[1], bucket))
            else:
                heapq.heappop(merge)
                # Whatever is left in an empty bucket is tombstones; they go with it.
                self._dead_priority -= bucket.size
                del self._buckets[bucket.key]
        if self._deadline_live:
            # Their deadline entries stay in the heap, as tombstones.
            with_deadline = sum(record.spec.deadline is not None for record in taken)
            self._deadline_live -= with_deadline
            self._dead_deadline += with_deadline
        self._taken += len(taken)
        self._maybe_compact()
        return taken

    def cancel(self, task_id: uuid.UUID) -> TaskRecord | None:
        """Remove the pending task ``task_id`` and return it; None if it is not pending.
        O(1) amortised: its entries become tombstones."""
        key = _index_key(task_id)
        entry = None if key is None else self._tasks.pop(key, None)
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
        aware), earliest deadline first, ties in push order. O(log d) per task removed.
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

    def _take_run(
        self, bucket: _Bucket, room: int, taken: list[TaskRecord], stop_rank: int, stop_seq: int
    ) -> None:
        """Move up to ``room`` live tasks of ``bucket`` to ``taken``, in order, while they
        come before ``(stop_rank, stop_seq)``; tombstones met on the way are dropped."""
        tasks = self._tasks
        pop = tasks.pop
        levels = bucket.levels
        ranks = bucket.ranks
        append = taken.append
        count = dead = 0
        while ranks and count < room:
            rank = ranks[0]
            if rank > stop_rank:
                break
            last = stop_seq if rank == stop_rank else _NO_BOUND
            level = levels[rank]
            popleft = level.popleft
            stopped = False
            while level:
                entry = popleft()
                if entry[1] > last:
                    level.appendleft(entry)
                    stopped = True
                    break
                record = entry[2]
                index_key = record.task_id.int
                current = pop(index_key, None)
                if current is entry:
                    append(record)
                    count += 1
                    if count == room:
                        break
                else:  # a tombstone: the task left, or came back as a newer entry
                    dead += 1
                    if current is not None:
                        tasks[index_key] = current
            if not level:
                del levels[rank]
                del ranks[0]
            if stopped:
                break
        bucket.live -= count
        self._dead_priority -= dead

    def _deadline_is_live(self, entry: _DeadlineEntry) -> bool:
        """True when the deadline-heap ``entry`` belongs to its task's current push."""
        current = self._tasks.get(entry[2])
        return current is not None and current[1] == entry[1]

    def _live_head(self, bucket: _Bucket) -> _Entry:
        """The first live entry of a bucket with ``live > 0``, dropping tombstones (and
        emptied levels) in front of it."""
        tasks = self._tasks
        levels = bucket.levels
        ranks = bucket.ranks
        while True:
            level = levels[ranks[0]]
            while level:
                entry = level[0]
                if tasks.get(entry[2].task_id.int) is entry:
                    return entry
                level.popleft()
                self._dead_priority -= 1
            del levels[ranks.pop(0)]

    def _forget_priority_entry(self, record: TaskRecord) -> None:
        """Tombstone the level entry of a task that left other than from a level's front."""
        bucket = self._buckets[routing_key(record)]
        bucket.live -= 1
        if bucket.live:
            self._dead_priority += 1
        else:
            # The leaving task's entry was live, so only the other entries were counted dead;
            # they all go with the bucket.
            self._dead_priority -= bucket.size - 1
            del self._buckets[bucket.key]

    def _maybe_compact(self) -> None:
        # Rebuilding costs O(entries), paid only after more tombstones than live entries
        # have accumulated, so it is amortised O(1) per removal and memory stays <= 2x live.
        if self._dead_priority > len(self._tasks):
            tasks = self._tasks
            for bucket in self._buckets.values():
                levels = bucket.levels
                for rank in bucket.ranks:
                    kept = deque(e for e in levels[rank] if tasks.get(e[2].task_id.int) is e)
                    if kept:
                        levels[rank] = kept
                    else:
                        del levels[rank]
                bucket.ranks = sorted(levels)
            self._dead_priority = 0
        if self._dead_deadline > self._deadline_live:
            self._deadlines = [entry for entry in self._deadlines if self._deadline_is_live(entry)]
            heapq.heapify(self._deadlines)
            self._dead_deadline = 0
