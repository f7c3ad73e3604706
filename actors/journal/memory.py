"""An in-process task store: the library's default, and the reference for the contract.

It is a real backend, not a test double: same semantics as the sqlite store (sequences,
idempotent inserts, all-or-nothing batches), minus durability. Data lives in the object,
so closing and re-opening the same ``MemoryStore`` keeps it; it is lost with the process.

Finished tasks (COMPLETED, CANCELLED, DEAD_LETTERED) are kept packed, keyed by the task
id's integer: their record's fields as one flat tuple of plain values (numbers, strings,
datetimes; a JSON payload or result as its encoded bytes), which the cyclic garbage
collector does not track; packing costs about a fifth of pydantic's JSON encoding, which
the store used before. A store holding a million finished tasks then costs the
collector's full passes nothing for them; kept as objects (a record, its spec, payload,
history and id: eight tracked objects a task) each full pass scanned them all, which on
the benchmark VM was a 58 ms pause with 10,000 finished tasks and 0.3 s with 100,000. A
finished record is decoded again when it is read (``get``, ``list_tasks``), which the hot
path never does (a task's handle gets the record from the journal).
"""

from __future__ import annotations

import json
import threading
import uuid
from collections import deque
from collections.abc import Collection, Sequence
from datetime import datetime
from itertools import chain
from operator import itemgetter
from typing import Any, Final, Self, TypeAlias

from actors.journal.store import (
    DEFAULT_LIST_LIMIT,
    PRUNED_BY_DEFAULT,
    SCHEMA_VERSION,
    StoreStatistics,
    TaskStore,
    check_limit,
    check_prune,
    count_commit,
    new_statistics,
    parse_task_id,
)
from messages import InvalidMessage, StoreError, TaskRecord, TaskState, UnknownTask
from messages.base import EMPTY_FROZEN_DICT, freeze_json, json_text
from messages.task import TERMINAL_STATES, Attempt, TaskSpec

__all__ = ["MemoryStore"]

_ABSENT = object()

_Packed: TypeAlias = tuple[Any, ...]
"""A finished task as the store keeps it: its sequence, its state's value, then the rest
of its fields, all in one flat tuple (nested tuples would leave the collector tracking
the outer one until its second pass)."""
_Entry: TypeAlias = TaskRecord | _Packed

# The fields packed as they are (every one of them a number, string, datetime or None),
# and the others, converted: the id (its integer), the state (its value), the spec (its
# fields, inline), JSON values (encoded) and the history (each attempt's fields, inline).
_RECORD_SPECIAL: Final = ("task_id", "spec", "state", "result", "history")
_SPEC_SPECIAL: Final = ("payload", "required_capabilities", "trace_context")
_RECORD_PLAIN: Final = tuple(f for f in TaskRecord.model_fields if f not in _RECORD_SPECIAL)
_SPEC_PLAIN: Final = tuple(f for f in TaskSpec.model_fields if f not in _SPEC_SPECIAL)
_ATTEMPT_FIELDS: Final = tuple(Attempt.model_fields)
_record_plain: Final = itemgetter(*_RECORD_PLAIN)
_spec_plain: Final = itemgetter(*_SPEC_PLAIN)
_attempt_fields: Final = itemgetter(*_ATTEMPT_FIELDS)
_HEAD: Final = 7
"""sequence, state, task id, payload, trace context, result, number of capabilities"""
_JSON_SCALARS: Final = frozenset({str, int, float, bool, type(None)})
_EMPTY_JSON: Final = b"{}"
_STATE_VALUES: Final = {state: state.value for state in TaskState}
"""Each state's plain string (cheaper than the enum's ``value`` property)."""
_UPDATED_AT: Final = _RECORD_PLAIN.index("updated_at")
_KEY: Final = len(_RECORD_PLAIN) + _SPEC_PLAIN.index("idempotency_key")
"""Where a packed task keeps its ``updated_at`` and idempotency key, after its head and
its capabilities."""

_Finished: TypeAlias = dict[TaskState, deque[tuple[datetime, int]]]
"""Per finished state, ``(updated_at, task id's int)`` in the order tasks finished."""


def _pack_json(value: Any) -> Any:
    """A frozen JSON value as an untracked one: a scalar as it is, else its JSON bytes."""
    if value is EMPTY_FROZEN_DICT:
        return _EMPTY_JSON
    if type(value) in _JSON_SCALARS:
        return value
    return json_text(value).encode()


def _unpack_json(value: Any) -> Any:
    if type(value) is bytes:
        return EMPTY_FROZEN_DICT if value == _EMPTY_JSON else freeze_json(json.loads(value))
    return value


def _pack(record: TaskRecord) -> _Packed:
    fields = record.__dict__
    spec = fields["spec"].__dict__
    capabilities = spec["required_capabilities"]
    history = fields["history"]
    return (
        fields["sequence"],
        _STATE_VALUES[fields["state"]],
        fields["task_id"].int,
        _pack_json(spec["payload"]),
        _pack_json(spec["trace_context"]),
        _pack_json(fields["result"]),
        len(capabilities),
        *(sorted(capabilities) if capabilities else ()),
        *_record_plain(fields),
        *_spec_plain(spec),
        # (the commonest history, one attempt, without the generator)
        *(
            _attempt_fields(history[0].__dict__)
            if len(history) == 1
            else chain.from_iterable(_attempt_fields(a.__dict__) for a in history)
        ),
    )


def _unpack(entry: _Entry) -> TaskRecord:
    if isinstance(entry, TaskRecord):
        return entry
    _, state, task_int, payload, trace, result, n_capabilities = entry[:_HEAD]
    at = _HEAD + n_capabilities
    record = dict(zip(_RECORD_PLAIN, entry[at : at + len(_RECORD_PLAIN)], strict=True))
    at += len(_RECORD_PLAIN)
    spec = dict(zip(_SPEC_PLAIN, entry[at : at + len(_SPEC_PLAIN)], strict=True))
    at += len(_SPEC_PLAIN)
    spec["payload"] = _unpack_json(payload)
    spec["trace_context"] = _unpack_json(trace)
    spec["required_capabilities"] = frozenset(entry[_HEAD : _HEAD + n_capabilities])
    size = len(_ATTEMPT_FIELDS)
    record["history"] = tuple(
        Attempt.fast(**dict(zip(_ATTEMPT_FIELDS, entry[i : i + size], strict=True)))
        for i in range(at, len(entry), size)
    )
    record["task_id"] = uuid.UUID(int=task_int)
    record["spec"] = TaskSpec.fast(**spec)
    record["state"] = TaskState(state)
    record["result"] = _unpack_json(result)
    return TaskRecord.fast(**record)


class MemoryStore(TaskStore):
    """Task records in dictionaries, guarded by one lock.

    Every operation holds the lock for its whole duration, so a reader in another thread
    (``status``) sees each batch entirely or not at all. A failing batch is undone from an
    undo log before the lock is released.
    """

    concurrent_inserts = True  # every operation holds the lock: any thread may insert

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._open = False
        # By ``task_id.int``; insertion order == sequence order. A live task is its record,
        # a finished one is packed (see the module's docstring).
        self._tasks: dict[int, _Entry] = {}
        self._keys: dict[str, int] = {}  # idempotency key -> task_id.int
        self._counts: dict[TaskState, int] = dict.fromkeys(TaskState, 0)
        self._next_sequence = 1
        self._stats: StoreStatistics = new_statistics()
        # Finished tasks in the order they finished, for prune: None until the first
        # prune (a store that is never pruned keeps no second entry per finished task).
        self._finished: _Finished | None = None

    # -- lifecycle -----------------------------------------------------------------------

    def open(self) -> Self:
        """Mark the store open (the data is kept from any earlier opening)."""
        with self._lock:
            self._open = True
        return self

    def close(self) -> None:
        """Mark the store closed; the data stays in this object."""
        with self._lock:
            self._open = False

    @property
    def is_open(self) -> bool:
        """True between ``open()`` and ``close()``."""
        return self._open

    def sequence_hint(self) -> int:
        """The sequence of the next insert (read without the lock: another thread's insert
        meanwhile only makes the hint stale, and a stale one costs a copy per record)."""
        return self._next_sequence

    def _check_open(self) -> None:
        if not self._open:
            raise StoreError(f"store {self.url} is not open")

    # -- writes --------------------------------------------------------------------------

    def apply(
        self, inserts: Sequence[TaskRecord], updates: Sequence[TaskRecord]
    ) -> list[TaskRecord]:
        """Insert then update in one all-or-nothing step; return the inserted records."""
        with self._lock:
            self._check_open()
            if not inserts and not updates:
                return []
            if not inserts and self._update_live(updates):
                count_commit(self._stats, 0, 0, len(updates))
                return []
            if not updates and self._insert_new(inserts):
                count_commit(self._stats, len(inserts), 0, 0)
                return list(inserts)
            batch = _Batch(self)
            try:
                stored = [batch.insert(record) for record in inserts]
                for record in updates:
                    batch.update(record)
            except BaseException:
                batch.undo()
                self._stats["rollbacks"] += 1
                raise
            count_commit(self._stats, batch.inserted, batch.duplicates, batch.updated)
            return stored

    def _update_live(self, updates: Sequence[TaskRecord]) -> bool:
        """The pipeline's commonest batch, written without an undo log: new versions of
        distinct tasks that are stored, not finished, keep their idempotency key and their
        sequence. Everything is checked (and packed) before anything is written, so there
        is nothing to undo. False, having changed nothing, for any other batch: the
        general path (:class:`_Batch`) decides it, and explains what is wrong with it."""
        tasks = self._tasks
        seen: set[int] = set()
        writes: list[tuple[int, _Entry, TaskState, TaskState]] = []
        for record in updates:
            task_int = record.task_id.int
            current = tasks.get(task_int)
            if type(current) is not TaskRecord or task_int in seen:
                return False  # unknown, finished (packed), or twice in the batch
            spec, stored_spec = record.spec, current.spec
            if (
                spec is not stored_spec and spec.idempotency_key != stored_spec.idempotency_key
            ) or record.sequence != current.sequence:
                return False
            seen.add(task_int)
            state = record.state
            entry = _pack(record) if state in TERMINAL_STATES else record
            writes.append((task_int, entry, state, current.state))
        counts = self._counts
        finished = self._finished
        for task_int, entry, state, old_state in writes:
            tasks[task_int] = entry
            counts[state] += 1
            counts[old_state] -= 1
            if finished is not None and type(entry) is tuple:
                finished[state].append((entry[_HEAD + entry[_HEAD - 1] + _UPDATED_AT], task_int))
        return True

    def _insert_new(self, inserts: Sequence[TaskRecord]) -> bool:
        """The submit path's batch, written without an undo log: distinct new tasks, live,
        without idempotency keys, made with the store's sequence hint (so stored as they
        are). Everything is checked before anything is written. False, having changed
        nothing, for any other batch: the general path (:class:`_Batch`) decides it."""
        tasks = self._tasks
        sequence = self._next_sequence
        for offset, record in enumerate(inserts):
            if (
                record.sequence != sequence + offset
                or record.spec.idempotency_key is not None
                or record.task_id.int in tasks
                or record.state in TERMINAL_STATES
            ):
                return False
        if len(inserts) > 1 and len({record.task_id.int for record in inserts}) < len(inserts):
            return False  # one task twice in the batch: the general path keeps the first
        counts = self._counts
        for record in inserts:
            tasks[record.task_id.int] = record
            counts[record.state] += 1
        self._next_sequence = sequence + len(inserts)
        return True

    def prune(
        self,
        before: datetime,
        states: Collection[TaskState] = PRUNED_BY_DEFAULT,
        limit: int = DEFAULT_LIST_LIMIT,
    ) -> int:
        """Delete finished tasks updated before ``before`` (see TaskStore.prune), in the
        order they finished. The first prune indexes the finished tasks (one pass over the
        store); from then on each finished task is noted as it finishes."""
        checked = check_prune(before, states, limit)
        with self._lock:
            self._check_open()
            finished = self._finished
            if finished is None:
                finished = self._finished = self._index_finished()
            tasks, keys, counts = self._tasks, self._keys, self._counts
            deleted = 0
            for state in checked:
                line = finished[state]
                value = _STATE_VALUES[state]
                while line and deleted < limit and line[0][0] < before:
                    at, task_int = line.popleft()
                    entry = tasks.get(task_int)
                    if type(entry) is not tuple or entry[1] != value:
                        continue  # gone, or live again (a re-queued dead letter)
                    base = _HEAD + entry[_HEAD - 1]
                    if entry[base + _UPDATED_AT] != at:
                        continue  # an older note of a task that finished again since
                    del tasks[task_int]
                    key = entry[base + _KEY]
                    if key is not None:
                        del keys[key]
                    counts[state] -= 1
                    deleted += 1
            return deleted

    def _index_finished(self) -> _Finished:
        """Every finished task, per state, oldest ``updated_at`` first."""
        finished: _Finished = {state: deque() for state in TERMINAL_STATES}
        found: dict[TaskState, list[tuple[datetime, int]]] = {s: [] for s in TERMINAL_STATES}
        states = {state.value: state for state in TERMINAL_STATES}
        for task_int, entry in self._tasks.items():
            if type(entry) is tuple:
                base = _HEAD + entry[_HEAD - 1]
                found[states[entry[1]]].append((entry[base + _UPDATED_AT], task_int))
        for state, notes in found.items():
            notes.sort()
            finished[state].extend(notes)
        return finished

    # -- reads ---------------------------------------------------------------------------

    def get(self, task_id: uuid.UUID | str) -> TaskRecord | None:
        """The stored record with this id, or None."""
        with self._lock:
            self._check_open()
            key = parse_task_id(task_id)
            entry = None if key is None else self._tasks.get(key.int)
            return None if entry is None else _unpack(entry)

    def get_by_idempotency_key(self, key: str) -> TaskRecord | None:
        """The stored record with this idempotency key, or None."""
        with self._lock:
            self._check_open()
            task_int = self._keys.get(key)
            return None if task_int is None else _unpack(self._tasks[task_int])

    def list_tasks(
        self,
        state: TaskState | None = None,
        limit: int = DEFAULT_LIST_LIMIT,
        *,
        after_sequence: int = 0,
    ) -> list[TaskRecord]:
        """Up to ``limit`` records (of ``state``, if given) ordered by sequence."""
        check_limit(limit, after_sequence)
        with self._lock:
            self._check_open()
            found: list[TaskRecord] = []
            if limit == 0:
                return found
            wanted = None if state is None else TaskState(state)
            for entry in self._tasks.values():
                if isinstance(entry, TaskRecord):
                    if entry.sequence <= after_sequence:
                        continue
                    if wanted is None or entry.state is wanted:
                        found.append(entry)
                elif entry[0] > after_sequence and (wanted is None or entry[1] == wanted.value):
                    found.append(_unpack(entry))
                else:
                    continue
                if len(found) >= limit:
                    break
            return found

    def counts(self) -> dict[TaskState, int]:
        """How many tasks are in each state."""
        with self._lock:
            self._check_open()
            return dict(self._counts)

    def recoverable(self) -> list[TaskRecord]:
        """Every non-terminal task, by (priority desc, sequence asc)."""
        with self._lock:
            self._check_open()
            live = [
                r
                for r in self._tasks.values()
                if isinstance(r, TaskRecord) and r.state not in TERMINAL_STATES
            ]
        live.sort(key=lambda r: (-r.spec.priority, r.sequence))
        return live

    # -- introspection -------------------------------------------------------------------

    @property
    def schema_version(self) -> int:
        """Always the current version: a memory store has no older data."""
        return SCHEMA_VERSION

    @property
    def url(self) -> str:
        """``memory://``."""
        return "memory://"

    def statistics(self) -> StoreStatistics:
        """Counters since this store was created."""
        with self._lock:
            return dict(self._stats)


class _Batch:
    """One batch being applied to a :class:`MemoryStore`, with the log to undo it."""

    def __init__(self, store: MemoryStore) -> None:
        self.store = store
        self.inserted = 0
        self.updated = 0
        self.duplicates = 0
        # (task id's int, its entry before this batch touched it, or _ABSENT), in the order
        # written: undone in reverse, so a task written twice gets its oldest one back.
        self._old_tasks: list[tuple[int, object]] = []
        self._old_keys: dict[str, object] = {}
        self._old_counts = dict(store._counts)
        self._old_next_sequence = store._next_sequence

    def _put(
        self,
        task_int: int,
        record: TaskRecord,
        previous: _Entry | None,
        old_state: TaskState | None,
    ) -> None:
        """Store ``record`` in place of ``previous`` (None: a new task) whose state was
        ``old_state``."""
        store = self.store
        self._old_tasks.append((task_int, _ABSENT if previous is None else previous))
        state = record.state
        if state in TERMINAL_STATES:
            store._tasks[task_int] = _pack(record)
            if store._finished is not None:  # (an undone batch leaves a stale note: skipped)
                store._finished[state].append((record.updated_at, task_int))
        else:
            store._tasks[task_int] = record
        counts = store._counts
        counts[state] += 1
        if old_state is not None:
            counts[old_state] -= 1

    def _set_key(self, key: str, task_int: int | None) -> None:
        keys = self.store._keys
        self._old_keys.setdefault(key, keys.get(key, _ABSENT))
        if task_int is None:
            del keys[key]
        else:
            keys[key] = task_int

    def insert(self, record: TaskRecord) -> TaskRecord:
        store = self.store
        task_int = record.task_id.int
        existing = store._tasks.get(task_int)
        key = record.spec.idempotency_key
        if existing is None and key is not None and key in store._keys:
            existing = store._tasks[store._keys[key]]
        if existing is not None:
            self.duplicates += 1
            return _unpack(existing)
        sequence = store._next_sequence
        # A submitter that took MemoryStore.sequence_hint made it with this sequence.
        stored = record if record.sequence == sequence else record.evolve(sequence=sequence)
        store._next_sequence = sequence + 1
        self._put(task_int, stored, None, None)
        if key is not None:
            self._set_key(key, task_int)
        self.inserted += 1
        return stored

    def update(self, record: TaskRecord) -> None:
        store = self.store
        task_int = record.task_id.int
        entry = store._tasks.get(task_int)
        if entry is None:
            raise UnknownTask(f"no task {record.task_id} to update")
        current = _unpack(entry)
        old_key, new_key = current.spec.idempotency_key, record.spec.idempotency_key
        if new_key != old_key:  # (a later version of a record shares its spec: equal keys)
            holder = store._keys.get(new_key) if new_key is not None else None
            if holder is not None:
                raise InvalidMessage(
                    f"idempotency key {new_key!r} of task {record.task_id} "
                    f"already belongs to task {holder}"
                )
            if old_key is not None:
                self._set_key(old_key, None)
            if new_key is not None:
                self._set_key(new_key, task_int)
        if record.sequence != current.sequence:
            record = record.evolve(sequence=current.sequence)
        self._put(task_int, record, entry, current.state)
        self.updated += 1

    def undo(self) -> None:
        store = self.store
        for task_int, old in reversed(self._old_tasks):
            if old is _ABSENT:
                store._tasks.pop(task_int, None)
            else:
                store._tasks[task_int] = old  # type: ignore[assignment]
        for key, old_id in self._old_keys.items():
            if isinstance(old_id, int):
                store._keys[key] = old_id
            else:
                store._keys.pop(key, None)
        store._counts = self._old_counts
        store._next_sequence = self._old_next_sequence
