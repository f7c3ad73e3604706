"""Unit and property tests of the queue actor's pure core (no threads, no clock)."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from actors.core import queue as queue_module
from actors.core.queue import DEFAULT_CAPACITY, TaskQueueCore, key_of, routing_key
from messages.errors import QueueFull
from messages.task import PRIORITY_MAX, PRIORITY_MIN, TaskRecord, TaskSpec, new_task_id

BASE = datetime(2025, 1, 1, tzinfo=UTC)


def make_record(
    type: str = "work",
    priority: int = 0,
    caps: Iterable[str] = (),
    deadline: datetime | None = None,
    task_id: uuid.UUID | None = None,
) -> TaskRecord:
    """A queued-looking TaskRecord with the given routing-relevant fields."""
    spec = TaskSpec(
        type=type, priority=priority, required_capabilities=frozenset(caps), deadline=deadline
    )
    return TaskRecord(task_id=task_id or new_task_id(), spec=spec, created_at=BASE, updated_at=BASE)


def ids(records: Iterable[TaskRecord]) -> list[uuid.UUID]:
    return [record.task_id for record in records]


# -- routing keys --------------------------------------------------------------------------


def test_routing_key_is_type_plus_required_capabilities() -> None:
    assert routing_key(make_record("code", caps={"py", "gpu"})) == frozenset({"code", "py", "gpu"})
    assert routing_key(make_record("code")) == frozenset({"code"})


# -- construction and empty queue ----------------------------------------------------------


def test_empty_queue() -> None:
    queue = TaskQueueCore()
    assert queue.capacity == DEFAULT_CAPACITY == 10_000
    assert len(queue) == 0
    assert queue.free_capacity == DEFAULT_CAPACITY
    assert queue.take(5) == []
    assert queue.keys() == frozenset()
    assert queue.next_deadline() is None
    assert queue.expire(BASE) == []
    assert queue.snapshot() == []
    assert queue.cancel(new_task_id()) is None
    assert queue.get(new_task_id()) is None
    assert new_task_id() not in queue
    assert queue.statistics() == {
        "depth": 0,
        "capacity": DEFAULT_CAPACITY,
        "pushed": 0,
        "taken": 0,
        "cancelled": 0,
        "expired": 0,
        "keys": 0,
        "tombstones": 0,
    }


@pytest.mark.parametrize("capacity", [0, -1, True, 1.5, "3"])
def test_capacity_must_be_a_positive_int(capacity: object) -> None:
    with pytest.raises(ValueError, match="capacity"):
        TaskQueueCore(capacity)  # type: ignore[arg-type]


# -- ordering ------------------------------------------------------------------------------


def test_higher_priority_is_taken_first() -> None:
    queue = TaskQueueCore()
    low, high, mid = make_record(priority=1), make_record(priority=9), make_record(priority=5)
    for record in (low, high, mid):
        queue.push(record)
    assert ids(queue.take(10)) == ids([high, mid, low])


def test_equal_priorities_are_fifo() -> None:
    queue = TaskQueueCore()
    records = [make_record(priority=3) for _ in range(20)]
    for record in records:
        queue.push(record)
    assert ids(queue.take(20)) == ids(records)


def test_take_merges_keys_in_global_priority_and_fifo_order() -> None:
    queue = TaskQueueCore()
    a1 = make_record("a", priority=2)
    b1 = make_record("b", priority=2)
    a2 = make_record("a", priority=2)
    c1 = make_record("c", priority=7)
    b2 = make_record("b", priority=0)
    for record in (a1, b1, a2, c1, b2):
        queue.push(record)
    assert ids(queue.take(3)) == ids([c1, a1, b1])
    assert ids(queue.take(3)) == ids([a2, b2])


def test_repushed_task_goes_to_the_back_of_its_priority() -> None:
    queue = TaskQueueCore()
    first, second = make_record(priority=4), make_record(priority=4)
    queue.push(first)
    queue.push(second)
    [taken] = queue.take(1)
    assert taken.task_id == first.task_id
    queue.push(first)
    third = make_record(priority=4)
    queue.push(third)
    assert ids(queue.take(3)) == ids([second, first, third])


def test_cancelled_then_repushed_task_takes_its_new_place_not_the_old_one() -> None:
    queue = TaskQueueCore()
    first, second = make_record(priority=1), make_record(priority=1)
    queue.push(first)
    queue.push(second)
    assert queue.cancel(first.task_id) == first
    queue.push(first)
    # The old heap entry of `first` (ahead of `second`) must be recognised as a tombstone.
    assert ids(queue.take(2)) == ids([second, first])
    assert len(queue) == 0


def test_repush_under_another_key_and_priority_leaves_no_ghost_in_the_old_key() -> None:
    queue = TaskQueueCore()
    task_id = new_task_id()
    old = make_record("a", priority=9, task_id=task_id)
    other = make_record("a", priority=1)
    queue.push(old)
    queue.push(other)
    queue.cancel(task_id)
    new = make_record("b", priority=0, task_id=task_id)
    queue.push(new)
    assert queue.keys() == {frozenset({"a"}), frozenset({"b"})}
    taken = queue.take(5, lambda key: key == frozenset({"a"}))
    assert ids(taken) == ids([other])
    assert queue.keys() == {frozenset({"b"})}
    assert queue.take(5) == [new]


# -- take: limit and routing ---------------------------------------------------------------


def test_take_respects_limit() -> None:
    queue = TaskQueueCore()
    records = [make_record() for _ in range(5)]
    for record in records:
        queue.push(record)
    assert queue.take(0) == []
    assert ids(queue.take(2)) == ids(records[:2])
    assert len(queue) == 3
    assert ids(queue.take(100)) == ids(records[2:])


def test_take_negative_limit_is_an_error() -> None:
    queue = TaskQueueCore()
    queue.push(make_record())
    with pytest.raises(ValueError, match="limit"):
        queue.take(-1)
    assert len(queue) == 1


def test_unservable_tasks_do_not_block_servable_ones() -> None:
    queue = TaskQueueCore()
    blocked = [make_record("gpu", priority=9) for _ in range(3)]
    servable = make_record("cpu", priority=0)
    for record in [*blocked, servable]:
        queue.push(record)
    taken = queue.take(10, lambda key: "gpu" not in key)
    assert ids(taken) == ids([servable])
    assert ids(queue.snapshot()) == ids(blocked)
    assert queue.take(10, lambda key: False) == []
    assert len(queue) == 3


def test_required_capabilities_are_part_of_the_key() -> None:
    queue = TaskQueueCore()
    plain = make_record("code", priority=1)
    needs_gpu = make_record("code", priority=5, caps={"gpu"})
    queue.push(needs_gpu)
    queue.push(plain)
    agent = frozenset({"code"})
    assert ids(queue.take(5, lambda key: key <= agent)) == ids([plain])
    assert ids(queue.take(5, lambda key: key <= agent | {"gpu"})) == ids([needs_gpu])


def test_can_serve_is_called_once_per_key_not_per_task() -> None:
    queue = TaskQueueCore()
    for index in range(3000):
        queue.push(make_record(f"t{index % 3}", priority=index % 10))
    seen: list[frozenset[str]] = []

    def can_serve(key: frozenset[str]) -> bool:
        seen.append(key)
        return key == frozenset({"t1"})

    taken = queue.take(2000, can_serve)
    assert sorted(seen, key=sorted) == [frozenset({"t0"}), frozenset({"t1"}), frozenset({"t2"})]
    assert len(taken) == 1000
    assert all(record.spec.type == "t1" for record in taken)
    assert queue.keys() == {frozenset({"t0"}), frozenset({"t2"})}


def test_take_of_one_servable_task_among_many_unservable_is_exact() -> None:
    queue = TaskQueueCore(capacity=50_001)
    busy = make_record("busy", priority=9)
    for _ in range(50_000):
        # model_copy skips validation: building 50k records stays cheap.
        queue.push(busy.model_copy(update={"task_id": new_task_id()}))
    lone = make_record("idle", priority=0)
    queue.push(lone)
    calls: list[frozenset[str]] = []

    def can_serve(key: frozenset[str]) -> bool:
        calls.append(key)
        return key == frozenset({"idle"})

    assert queue.take(10, can_serve) == [lone]
    assert len(calls) == 2
    assert len(queue) == 50_000


# -- capacity ------------------------------------------------------------------------------


def test_push_beyond_capacity_raises_queue_full_and_changes_nothing() -> None:
    queue = TaskQueueCore(capacity=2)
    queue.push(make_record())
    assert queue.free_capacity == 1
    queue.push(make_record())
    assert queue.free_capacity == 0
    rejected = make_record()
    with pytest.raises(QueueFull, match=r"queue is full \(2 pending tasks\)"):
        queue.push(rejected)
    assert rejected.task_id not in queue
    assert len(queue) == 2
    assert queue.statistics()["pushed"] == 2
    queue.take(1)
    queue.push(rejected)
    assert rejected.task_id in queue


def test_duplicate_task_id_is_refused_even_when_full() -> None:
    queue = TaskQueueCore(capacity=1)
    record = make_record()
    queue.push(record)
    with pytest.raises(ValueError, match="already queued"):
        queue.push(record)
    with pytest.raises(ValueError, match="already queued"):
        queue.push(make_record("other", priority=5, task_id=record.task_id))
    assert queue.snapshot() == [record]


# -- lookup and cancel ---------------------------------------------------------------------


def test_get_contains_and_cancel() -> None:
    queue = TaskQueueCore()
    keep, drop = make_record(), make_record()
    queue.push(keep)
    queue.push(drop)
    assert drop.task_id in queue
    assert queue.get(drop.task_id) is drop
    assert queue.cancel(drop.task_id) is drop
    assert drop.task_id not in queue
    assert queue.get(drop.task_id) is None
    assert queue.cancel(drop.task_id) is None
    assert len(queue) == 1
    assert queue.take(5) == [keep]
    assert queue.statistics()["cancelled"] == 1


def test_cancelled_head_is_skipped_by_take() -> None:
    queue = TaskQueueCore()
    records = [make_record(priority=2) for _ in range(4)]
    for record in records:
        queue.push(record)
    queue.cancel(records[0].task_id)
    assert queue.statistics()["tombstones"] == 1
    assert ids(queue.take(1)) == ids(records[1:2])
    assert queue.statistics()["tombstones"] == 0


def test_keys_drop_a_key_when_its_last_task_leaves() -> None:
    queue = TaskQueueCore()
    a = make_record("a")
    b1, b2 = make_record("b"), make_record("b", deadline=BASE)
    c = make_record("c")
    for record in (a, b1, b2, c):
        queue.push(record)
    assert queue.keys() == {frozenset({"a"}), frozenset({"b"}), frozenset({"c"})}
    queue.take(1, lambda key: key == frozenset({"a"}))
    assert queue.keys() == {frozenset({"b"}), frozenset({"c"})}
    queue.cancel(c.task_id)
    assert queue.keys() == {frozenset({"b"})}
    queue.cancel(b1.task_id)
    assert queue.expire(BASE) == [b2]
    assert queue.keys() == frozenset()
    assert queue.statistics()["keys"] == 0


def test_cancelling_the_last_task_of_a_key_drops_its_tombstones() -> None:
    queue = TaskQueueCore()
    a1, a2, b = make_record("a"), make_record("a"), make_record("b")
    for record in (a1, a2, b):
        queue.push(record)
    queue.cancel(a1.task_id)
    assert queue.statistics()["tombstones"] == 1
    queue.cancel(a2.task_id)
    assert queue.statistics()["tombstones"] == 0
    assert queue.keys() == {frozenset({"b"})}


def test_tombstones_are_compacted_and_memory_stays_bounded() -> None:
    queue = TaskQueueCore()
    keep = [make_record("k", deadline=BASE + timedelta(days=1)) for _ in range(10)]
    for record in keep:
        queue.push(record)
    # Cancel many tasks that share the key (and have deadlines) with the kept ones.
    for _ in range(1000):
        victim = make_record("k", deadline=BASE + timedelta(hours=1))
        queue.push(victim)
        queue.cancel(victim.task_id)
        stats = queue.statistics()
        assert stats["tombstones"] <= 2 * stats["depth"]
    total_entries = sum(len(bucket.heap) for bucket in queue._buckets.values())
    assert total_entries <= 2 * len(queue)
    assert len(queue._deadlines) <= 2 * len(queue)
    assert ids(queue.take(20)) == ids(keep)


def test_take_compacts_when_the_live_tasks_left_are_few() -> None:
    queue = TaskQueueCore()
    x = [make_record("x", deadline=BASE + timedelta(minutes=i)) for i in range(6)]
    y = [make_record("y") for _ in range(6)]
    for record in [*x, *y]:
        queue.push(record)
    # Tombstones in x's heap and deadline heap: 3 dead vs 9 live, no compaction yet.
    for record in x[1:4]:
        queue.cancel(record.task_id)
    assert queue.statistics()["tombstones"] == 6
    # Taking the y tasks leaves 3 live tasks and 3 dead entries per heap: still bounded.
    queue.take(6, lambda key: key == frozenset({"y"}))
    stats = queue.statistics()
    assert stats["depth"] == 3
    assert stats["tombstones"] <= 2 * stats["depth"]
    # Taking x[0] (earliest deadline) tips the balance and compacts both heaps.
    assert queue.take(1) == [x[0]]
    assert queue.statistics()["tombstones"] == 0
    assert ids(queue.take(5)) == ids(x[4:])


def tombstones(queue: TaskQueueCore) -> int:
    return queue.statistics()["tombstones"]


def test_compaction_waits_until_tombstones_outnumber_live_tasks() -> None:
    queue = TaskQueueCore()
    first, second = make_record(), make_record()
    queue.push(first)
    queue.push(second)
    queue.cancel(first.task_id)
    assert tombstones(queue) == 1  # 1 dead vs 1 live: not yet
    assert queue.take(1) == [second]
    assert tombstones(queue) == 0


def test_emptied_keys_take_their_tombstones_with_them() -> None:
    # Many live tasks elsewhere, so no compaction hides a miscount.
    queue = TaskQueueCore()
    for _ in range(10):
        queue.push(make_record("bulk"))
    # cancel the last live task of a key that holds a tombstone
    a, b = make_record("a", priority=1), make_record("a")
    queue.push(a)
    queue.push(b)
    queue.cancel(b.task_id)
    assert tombstones(queue) == 1
    queue.cancel(a.task_id)
    assert tombstones(queue) == 0
    # take the last live task of a key that holds a tombstone
    c, d = make_record("c", priority=1), make_record("c")
    queue.push(c)
    queue.push(d)
    queue.cancel(d.task_id)
    assert tombstones(queue) == 1
    assert queue.take(1, lambda key: key == frozenset({"c"})) == [c]
    assert tombstones(queue) == 0
    assert len(queue) == 10


def test_take_zero_touches_nothing() -> None:
    queue = TaskQueueCore()
    head, rest = make_record(priority=1), [make_record() for _ in range(3)]
    for record in (head, *rest):
        queue.push(record)
    queue.cancel(head.task_id)  # a tombstone at the head of the heap
    before = queue.statistics()
    assert queue.take(0) == []
    assert queue.statistics() == before == {**before, "tombstones": 1, "depth": 3}


def deadline_queue(n: int) -> tuple[TaskQueueCore, list[TaskRecord]]:
    """n tasks, one per key (so priority heaps hold no tombstones), deadlines a minute apart."""
    queue = TaskQueueCore()
    records = [make_record(f"k{i}", deadline=BASE + timedelta(minutes=i)) for i in range(n)]
    for record in records:
        queue.push(record)
    return queue, records


def test_expire_counts_the_stale_deadline_entries_it_drops() -> None:
    queue, records = deadline_queue(5)
    queue.cancel(records[0].task_id)
    assert tombstones(queue) == 1
    assert queue.expire(BASE) == []  # pops the cancelled task's entry
    assert tombstones(queue) == 0
    assert queue.expire(BASE + timedelta(minutes=1)) == [records[1]]
    assert tombstones(queue) == 0


@pytest.mark.parametrize("how", ["expire", "take"])
def test_deadline_heap_compacts_on_the_live_deadline_count(how: str) -> None:
    queue, records = deadline_queue(5)
    if how == "expire":
        assert queue.expire(BASE) == [records[0]]
    else:
        assert queue.take(1) == [records[0]]
    # 4 live deadlines (a taken task's entry is a tombstone until it surfaces)
    dead_after_leave = 0 if how == "expire" else 1
    assert tombstones(queue) == dead_after_leave
    queue.cancel(records[1].task_id)
    assert tombstones(queue) == dead_after_leave + 1  # still <= the 3 live ones
    queue.cancel(records[2].task_id)
    # expire: 2 dead vs 2 live, kept; take: 3 dead vs 2 live, compacted
    assert tombstones(queue) == (2 if how == "expire" else 0)
    queue.cancel(records[3].task_id)
    assert tombstones(queue) == (0 if how == "expire" else 1)
    assert queue.next_deadline() == records[4].spec.deadline
    assert tombstones(queue) == 0


# -- deadlines -----------------------------------------------------------------------------


def test_expire_removes_due_tasks_in_deadline_order_with_fifo_ties() -> None:
    queue = TaskQueueCore()
    late = make_record(priority=9, deadline=BASE + timedelta(minutes=10))
    tie1 = make_record(priority=0, deadline=BASE + timedelta(minutes=5))
    early = make_record(priority=5, deadline=BASE + timedelta(minutes=1))
    tie2 = make_record(priority=9, deadline=BASE + timedelta(minutes=5))
    never = make_record(priority=1)
    for record in (late, tie1, early, tie2, never):
        queue.push(record)
    assert queue.next_deadline() == early.spec.deadline
    assert queue.expire(BASE) == []
    assert queue.expire(BASE + timedelta(minutes=5)) == [early, tie1, tie2]
    assert queue.next_deadline() == late.spec.deadline
    # Exactly at the deadline counts as expired.
    assert queue.expire(BASE + timedelta(minutes=10)) == [late]
    assert queue.next_deadline() is None
    assert queue.expire(BASE + timedelta(days=365)) == []
    assert queue.snapshot() == [never]
    assert queue.statistics()["expired"] == 4


def test_expire_and_next_deadline_skip_cancelled_and_taken_tasks() -> None:
    queue = TaskQueueCore()
    records = [make_record(deadline=BASE + timedelta(seconds=i)) for i in range(4)]
    for record in records:
        queue.push(record)
    queue.cancel(records[0].task_id)
    assert queue.next_deadline() == records[1].spec.deadline
    assert queue.take(1) == [records[1]]
    assert queue.expire(BASE + timedelta(seconds=2)) == [records[2]]
    assert queue.next_deadline() == records[3].spec.deadline


def test_expire_skips_a_stale_entry_found_past_the_head() -> None:
    queue = TaskQueueCore()
    records = [make_record(deadline=BASE + timedelta(seconds=i)) for i in range(4)]
    for record in records:
        queue.push(record)
    queue.cancel(records[1].task_id)
    assert queue.expire(BASE + timedelta(seconds=2)) == [records[0], records[2]]
    assert ids(queue.snapshot()) == ids(records[3:])


def test_expire_with_timezones_compares_instants() -> None:
    queue = TaskQueueCore()
    plus_two = datetime(2025, 1, 1, 4, 0, tzinfo=timezone(timedelta(hours=2)))
    record = make_record(deadline=plus_two)
    queue.push(record)
    assert queue.expire(datetime(2025, 1, 1, 1, 59, tzinfo=UTC)) == []
    assert queue.expire(datetime(2025, 1, 1, 2, 0, tzinfo=UTC)) == [record]


def test_expire_refuses_naive_now() -> None:
    queue = TaskQueueCore()
    queue.push(make_record(deadline=BASE))
    with pytest.raises(ValueError, match="timezone-aware"):
        queue.expire(datetime(2025, 1, 1))
    assert len(queue) == 1


# -- snapshot and rebuild ------------------------------------------------------------------


def test_snapshot_is_take_order_and_rebuild_preserves_it() -> None:
    queue = TaskQueueCore()
    records = [
        make_record(f"t{i % 3}", priority=i % 4, deadline=BASE if i % 5 == 0 else None)
        for i in range(30)
    ]
    for record in records:
        queue.push(record)
    for record in records[::7]:
        queue.cancel(record.task_id)
    snapshot = queue.snapshot()
    rebuilt = TaskQueueCore.from_snapshot(snapshot, capacity=100)
    assert rebuilt.capacity == 100
    assert rebuilt.snapshot() == snapshot
    assert rebuilt.keys() == queue.keys()
    assert rebuilt.next_deadline() == queue.next_deadline()
    assert rebuilt.statistics()["pushed"] == len(snapshot)
    assert queue.take(100) == snapshot
    assert rebuilt.take(100) == snapshot


def test_rebuild_keeps_every_task_even_beyond_capacity() -> None:
    records = [make_record() for _ in range(5)]
    queue = TaskQueueCore.from_snapshot(records, capacity=3)
    assert len(queue) == 5
    assert queue.free_capacity == 0
    with pytest.raises(QueueFull):
        queue.push(make_record())
    queue.take(3)
    assert queue.free_capacity == 1


def test_rebuild_refuses_duplicate_ids() -> None:
    record = make_record()
    with pytest.raises(ValueError, match="twice"):
        TaskQueueCore.from_snapshot([record, record])


def test_statistics_count_every_exit() -> None:
    queue = TaskQueueCore(capacity=50)
    records = [make_record(deadline=BASE if i < 2 else None) for i in range(10)]
    for record in records:
        queue.push(record)
    queue.cancel(records[5].task_id)
    queue.expire(BASE)
    queue.take(3)
    stats = queue.statistics()
    assert stats == {
        "depth": 4,
        "capacity": 50,
        "pushed": 10,
        "taken": 3,
        "cancelled": 1,
        "expired": 2,
        "keys": 1,
        "tombstones": stats["tombstones"],
    }
    assert (
        stats["depth"] == stats["pushed"] - stats["taken"] - stats["cancelled"] - stats["expired"]
    )


# -- stateful property test against a reference model --------------------------------------

TYPES = ("a", "b", "c")
CAPS = ("x", "y")
NAMES = TYPES + CAPS


class QueueMachine(RuleBasedStateMachine):
    """Drives TaskQueueCore and a sorted-list model with the same operations."""

    def __init__(self) -> None:
        super().__init__()
        self.queue = TaskQueueCore()
        # Model: (-priority, seq, record), kept sorted = take order.
        self.model: list[tuple[int, int, TaskRecord]] = []
        self.seq = 0
        self.known: list[TaskRecord] = []
        self.now = BASE
        self.counts = {"pushed": 0, "taken": 0, "cancelled": 0, "expired": 0}

    @initialize(capacity=st.integers(min_value=1, max_value=25))
    def start(self, capacity: int) -> None:
        self.queue = TaskQueueCore(capacity)

    def _model_ids(self) -> set[uuid.UUID]:
        return {record.task_id for _, _, record in self.model}

    def _push(self, record: TaskRecord) -> None:
        if record.task_id in self._model_ids():
            with pytest.raises(ValueError, match="already queued"):
                self.queue.push(record)
        elif len(self.model) >= self.queue.capacity:
            with pytest.raises(QueueFull):
                self.queue.push(record)
        else:
            self.queue.push(record)
            self.model.append((-record.spec.priority, self.seq, record))
            self.model.sort(key=lambda item: (item[0], item[1]))
            self.seq += 1
            self.counts["pushed"] += 1

    @rule(
        type_=st.sampled_from(TYPES),
        caps=st.frozensets(st.sampled_from(CAPS)),
        priority=st.integers(min_value=0, max_value=3),
        deadline_min=st.none() | st.integers(min_value=0, max_value=20),
    )
    def push_new(
        self, type_: str, caps: frozenset[str], priority: int, deadline_min: int | None
    ) -> None:
        deadline = None if deadline_min is None else BASE + timedelta(minutes=deadline_min)
        record = make_record(type_, priority, caps, deadline)
        self.known.append(record)
        self._push(record)

    @precondition(lambda self: self.known)
    @rule(data=st.data())
    def push_known(self, data: st.DataObject) -> None:
        # Re-pushes (a task coming back) and duplicates (a bug the core must refuse).
        self._push(data.draw(st.sampled_from(self.known)))

    @precondition(lambda self: self.known)
    @rule(data=st.data(), priority=st.integers(min_value=0, max_value=3))
    def push_known_id_with_new_spec(self, data: st.DataObject, priority: int) -> None:
        # The same task id coming back with another priority/key (stale entries must not
        # resurrect the old position).
        old = data.draw(st.sampled_from(self.known))
        record = make_record(data.draw(st.sampled_from(TYPES)), priority, task_id=old.task_id)
        self._push(record)

    @rule(
        limit=st.integers(min_value=0, max_value=6),
        agent=st.none() | st.frozensets(st.sampled_from(NAMES)),
    )
    def take(self, limit: int, agent: frozenset[str] | None) -> None:
        def servable(key: frozenset[str]) -> bool:
            return agent is None or key <= agent

        expected = [item for item in self.model if servable(routing_key(item[2]))][:limit]
        actual = self.queue.take(limit, None if agent is None else servable)
        assert ids(actual) == ids(item[2] for item in expected)
        for item in expected:
            self.model.remove(item)
        self.counts["taken"] += len(expected)

    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        task_id = data.draw(
            st.sampled_from([r.task_id for r in self.known]) if self.known else st.uuids()
        )
        match = [item for item in self.model if item[2].task_id == task_id]
        result = self.queue.cancel(task_id)
        if match:
            assert result is match[0][2]
            self.model.remove(match[0])
            self.counts["cancelled"] += 1
        else:
            assert result is None

    @rule(minutes=st.integers(min_value=0, max_value=6))
    def advance_and_expire(self, minutes: int) -> None:
        self.now += timedelta(minutes=minutes)
        due = [
            item
            for item in self.model
            if item[2].spec.deadline is not None and item[2].spec.deadline <= self.now
        ]
        due.sort(key=lambda item: (item[2].spec.deadline, item[1]))
        assert ids(self.queue.expire(self.now)) == ids(item[2] for item in due)
        for item in due:
            self.model.remove(item)
        self.counts["expired"] += len(due)

    @invariant()
    def matches_model(self) -> None:
        queue = self.queue
        assert len(queue) == len(self.model)
        assert queue.free_capacity == max(0, queue.capacity - len(self.model))
        assert ids(queue.snapshot()) == ids(item[2] for item in self.model)
        assert queue.keys() == {routing_key(item[2]) for item in self.model}
        deadlines = [item[2].spec.deadline for item in self.model if item[2].spec.deadline]
        assert queue.next_deadline() == (min(deadlines) if deadlines else None)
        for _, _, record in self.model:
            assert record.task_id in queue
            assert queue.get(record.task_id) is record
        stats = queue.statistics()
        assert {key: stats[key] for key in self.counts} == self.counts
        assert stats["depth"] == len(self.model)
        assert stats["keys"] == len(queue.keys())
        # Memory bound: dead heap entries never outnumber twice the live tasks.
        assert stats["tombstones"] <= 2 * stats["depth"]
        # And the tombstone count is exact: every heap entry is either live or counted dead
        # (white-box: compaction is triggered by this count).
        entries = sum(len(bucket.heap) for bucket in queue._buckets.values())
        entries += len(queue._deadlines)
        assert stats["tombstones"] == entries - len(self.model) - len(deadlines)

    @invariant()
    def rebuild_from_snapshot_is_equivalent(self) -> None:
        snapshot = self.queue.snapshot()
        rebuilt = TaskQueueCore.from_snapshot(snapshot, capacity=self.queue.capacity)
        assert rebuilt.snapshot() == snapshot


QueueMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestQueueMachine = QueueMachine.TestCase


def well_formed_levels(queue: TaskQueueCore) -> None:
    """White-box: each bucket's ranks list its levels in order, no level is empty, a
    level holds entries of its rank in push order, and ``live`` counts its live entries."""
    for bucket in queue._buckets.values():
        assert bucket.ranks == sorted(bucket.levels)
        live = 0
        for rank, level in bucket.levels.items():
            assert level
            assert all(entry[0] == rank for entry in level)
            seqs = [entry[1] for entry in level]
            assert seqs == sorted(seqs)
            # Live: the index holds that very entry (a re-pushed record has a newer one).
            live += sum(queue._tasks.get(entry[2].task_id.int) is entry for entry in level)
        assert bucket.live == live > 0


class ManyLevelsQueueMachine(QueueMachine):
    """The same model with every priority level, larger takes (runs that cross levels and
    stop at another key's head), and the levels' structure checked after every step."""

    @rule(
        type_=st.sampled_from(TYPES),
        caps=st.frozensets(st.sampled_from(CAPS)),
        priority=st.integers(min_value=PRIORITY_MIN, max_value=PRIORITY_MAX),
        deadline_min=st.none() | st.integers(min_value=0, max_value=20),
    )
    def push_new(
        self, type_: str, caps: frozenset[str], priority: int, deadline_min: int | None
    ) -> None:
        super().push_new(type_, caps, priority, deadline_min)

    @precondition(lambda self: self.known)
    @rule(data=st.data(), priority=st.integers(min_value=PRIORITY_MIN, max_value=PRIORITY_MAX))
    def push_known_id_with_new_spec(self, data: st.DataObject, priority: int) -> None:
        super().push_known_id_with_new_spec(data, priority)

    @rule(
        limit=st.integers(min_value=0, max_value=30),
        agent=st.none() | st.frozensets(st.sampled_from(NAMES)),
    )
    def take(self, limit: int, agent: frozenset[str] | None) -> None:
        super().take(limit, agent)

    @invariant()
    def levels_are_well_formed(self) -> None:
        well_formed_levels(self.queue)


ManyLevelsQueueMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestManyLevelsQueueMachine = ManyLevelsQueueMachine.TestCase


def test_a_run_from_one_key_stops_at_an_earlier_task_of_equal_priority_elsewhere() -> None:
    queue = TaskQueueCore()
    a1, a2 = make_record("a", priority=5), make_record("a", priority=5)
    b1 = make_record("b", priority=5)
    a3, a4 = make_record("a", priority=5), make_record("a", priority=2)
    b2 = make_record("b", priority=9)
    b3 = make_record("b", priority=2)
    for record in (a1, a2, b1, a3, a4, b2, b3):
        queue.push(record)
    assert ids(queue.take(3)) == ids([b2, a1, a2])
    assert ids(queue.take(10)) == ids([b1, a3, a4, b3])
    assert queue.keys() == frozenset()


def test_take_crosses_priority_levels_within_a_key_and_drops_emptied_levels() -> None:
    queue = TaskQueueCore()
    records = [make_record(priority=priority) for priority in (3, 9, 3, 0, 9, 5)]
    for record in records:
        queue.push(record)
    [bucket] = queue._buckets.values()
    assert bucket.ranks == [-9, -5, -3, 0]
    assert ids(queue.take(4)) == ids([records[1], records[4], records[5], records[0]])
    assert bucket.ranks == [-3, 0]
    again = make_record(priority=9)
    queue.push(again)
    assert bucket.ranks == [-9, -3, 0]
    assert ids(queue.take(10)) == ids([again, records[2], records[3]])


def test_take_skips_tombstones_across_levels_and_repushed_ids() -> None:
    queue = TaskQueueCore()
    records = [make_record("k", priority=i % 10) for i in range(40)]
    for record in records:
        queue.push(record)
    for record in records[::3]:
        queue.cancel(record.task_id)
    # Pushed again, under another key: the old entries are tombstones, the new ones live.
    moved = [make_record("m", priority=9, task_id=r.task_id) for r in records[::6]]
    for record in moved:
        queue.push(record)
    well_formed_levels(queue)
    expected = sorted(
        (r for i, r in enumerate(records) if i % 3), key=lambda r: -r.spec.priority
    )  # sorted is stable: FIFO within a priority
    assert ids(queue.take(100, lambda key: key == frozenset({"k"}))) == ids(expected)
    assert ids(queue.take(100)) == ids(moved)
    assert queue.statistics()["tombstones"] == 0


def test_compaction_after_many_tombstones_keeps_only_live_entries_and_levels() -> None:
    queue = TaskQueueCore(capacity=5000)
    keep = [make_record("k", priority=PRIORITY_MIN), make_record("k", priority=PRIORITY_MAX)]
    victims = [make_record("k", priority=i % 10) for i in range(2000)]
    for record in [keep[0], *victims, keep[1]]:
        queue.push(record)
    compactions = 0
    for record in victims:
        before = queue.statistics()["tombstones"]
        queue.cancel(record.task_id)
        stats = queue.statistics()
        assert stats["tombstones"] <= stats["depth"]
        compactions += before > 0 and stats["tombstones"] == 0
    assert compactions >= 1
    # Rebuilt levels hold live entries only, and the levels left with none are gone.
    [bucket] = queue._buckets.values()
    assert len(bucket.heap) <= 2 * len(queue)
    well_formed_levels(queue)
    assert ids(queue.take(5)) == ids([keep[1], keep[0]])
    assert queue.statistics()["tombstones"] == 0


def test_lookups_by_anything_but_a_uuid_find_nothing() -> None:
    queue = TaskQueueCore()
    record = make_record(task_id=uuid.UUID(int=123))
    queue.push(record)
    # The index is keyed by the id's int internally: the int itself must not match.
    assert uuid.UUID(int=123) in queue
    assert 123 not in queue
    assert "x" not in queue
    assert queue.get(123) is None  # type: ignore[arg-type]
    assert queue.cancel(123) is None  # type: ignore[arg-type]
    assert queue.get(uuid.UUID(int=123)) is record
    with pytest.raises(TypeError):
        _ = [] in queue  # unhashable, as a dict lookup by it would raise
    assert len(queue) == 1


def test_routing_keys_are_built_once_per_type_and_requirements(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(queue_module, "_KEYS", {})
    first = key_of("code", frozenset({"python"}))
    assert first == frozenset({"code", "python"})
    assert key_of("code", frozenset({"python"})) is first  # the remembered object
    assert key_of("code", frozenset()) == frozenset({"code"})
    assert len(queue_module._KEYS) == 2
    monkeypatch.setattr(queue_module, "_KEYS_MAX", 2)  # full: keys are built, not kept
    extra = key_of("mail", frozenset())
    assert extra == frozenset({"mail"}) and key_of("mail", frozenset()) is not extra
    assert len(queue_module._KEYS) == 2
    monkeypatch.setattr(queue_module, "_KEYS_MAX", 3)  # one more fits
    kept = key_of("mail", frozenset())
    assert key_of("mail", frozenset()) is kept and len(queue_module._KEYS) == 3
