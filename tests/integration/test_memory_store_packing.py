"""The memory store keeps finished tasks packed (their JSON, in untracked containers).

What a user sees must not change: a finished record reads back equal, in sequence order,
through every read; duplicates, key changes, re-queues of dead letters and a rolled-back
batch behave as for a live record. What changes is what the cyclic garbage collector has
to scan: nothing per finished task.
"""

from __future__ import annotations

import gc
import uuid
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.journal import MemoryStore
from messages import TaskRecord, TaskState, UnknownTask
from messages.task import TERMINAL_STATES, Attempt, TaskSpec
from tests.integration.test_journal_contract import T0, make_record, moved
from tests.unit.test_messages import json_values

FINISHED = sorted(TERMINAL_STATES, key=lambda s: s.value)
LIVE = [s for s in TaskState if s not in TERMINAL_STATES]


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore().open()


def test_finished_records_read_back_equal_through_every_read(store: MemoryStore) -> None:
    live = store.insert([make_record(key=f"k{i}", priority=i) for i in range(6)])
    finished = [moved(r, FINISHED[i % 3], result={"i": i}) for i, r in enumerate(live[:3])]
    store.update(finished)
    for record in finished:
        assert store.get(record.task_id) == record
        assert store.get(str(record.task_id)) == record
        assert store.get_by_idempotency_key(record.spec.idempotency_key or "") == record
    everything = store.list_tasks()
    assert [r.task_id for r in everything] == [r.task_id for r in live]  # sequence order
    assert everything[:3] == finished and everything[3:] == live[3:]
    for state in FINISHED:
        assert store.list_tasks(state) == [r for r in finished if r.state is state]
    assert store.list_tasks(after_sequence=finished[1].sequence) == [finished[2], *live[3:]]
    assert store.list_tasks(limit=2) == finished[:2]
    assert store.dead_letters() == [r for r in finished if r.state is TaskState.DEAD_LETTERED]
    assert store.recoverable() == sorted(live[3:], key=lambda r: -r.spec.priority)
    counts = store.counts()
    assert counts[TaskState.QUEUED] == 3
    assert sum(counts[s] for s in FINISHED) == 3


def test_a_duplicate_of_a_finished_task_returns_the_finished_record(store: MemoryStore) -> None:
    (record,) = store.insert([make_record(key="once")])
    done = moved(record, TaskState.COMPLETED, result=7)
    store.update([done])
    assert store.insert([make_record(task_id=record.task_id)]) == [done]
    assert store.insert([make_record(key="once")]) == [done]
    assert store.statistics()["duplicates"] == 2


def test_a_dead_letter_requeued_is_live_again(store: MemoryStore) -> None:
    (record,) = store.insert([make_record()])
    store.update([moved(record, TaskState.DEAD_LETTERED, last_error="boom")])
    requeued = moved(record, TaskState.QUEUED, attempt=0)
    store.update([requeued])
    assert store.get(record.task_id) == requeued
    assert store.recoverable() == [requeued]
    assert store.counts()[TaskState.DEAD_LETTERED] == 0


def test_a_failed_batch_restores_packed_and_live_entries(store: MemoryStore) -> None:
    a, b = store.insert([make_record(key="a"), make_record(key="b")])
    done_a = moved(a, TaskState.COMPLETED)
    store.update([done_a])
    before = (store.list_tasks(), store.counts(), store.statistics())
    with pytest.raises(UnknownTask):
        store.apply(
            [make_record(key="c")],
            [
                moved(done_a, TaskState.QUEUED),
                moved(b, TaskState.CANCELLED),
                make_record(),  # unknown: the whole batch is undone
            ],
        )
    assert (store.list_tasks(), store.counts()) == before[:2]
    assert store.get(a.task_id) == done_a
    assert store.get_by_idempotency_key("c") is None
    assert store.get_by_idempotency_key("b") == b


def test_finished_tasks_give_the_garbage_collector_nothing_to_scan(store: MemoryStore) -> None:
    """8 tracked objects a finished task before packing (record, spec, payload, history,
    id, ...); none now, so a full collection's pause does not grow with finished tasks."""
    n = 2000
    records = store.insert([make_record(payload={"i": i}) for i in range(n)])
    gc.collect()
    tracked_live = len(gc.get_objects())
    store.update([moved(r, TaskState.COMPLETED, result={"i": 1}) for r in records])
    del records
    gc.collect()
    tracked_finished = len(gc.get_objects())
    # The live records were tracked (several objects each); finished ones are not.
    assert tracked_live - tracked_finished > 3 * n
    assert gc.is_tracked(store._keys) is False
    assert not any(gc.is_tracked(entry) for entry in store._tasks.values())


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 9), st.sampled_from(list(TaskState))), min_size=1, max_size=40
    )
)
def test_reads_agree_with_a_model_whatever_the_states(moves: list[tuple[int, TaskState]]) -> None:
    """Any sequence of state changes over ten tasks: every read equals the model's answer
    (a dict of the last record written per task, in insertion order)."""
    store = MemoryStore().open()
    inserted = store.insert([make_record(key=f"k{i}") for i in range(10)])
    model: dict[uuid.UUID, TaskRecord] = {r.task_id: r for r in inserted}
    for index, state in moves:
        record = moved(model[inserted[index].task_id], state)
        store.update([record])
        model[record.task_id] = record
    assert store.list_tasks() == list(model.values())
    for state in TaskState:
        assert store.list_tasks(state) == [r for r in model.values() if r.state is state]
        assert store.counts()[state] == sum(1 for r in model.values() if r.state is state)
    for task_id, record in model.items():
        assert store.get(task_id) == record
    assert {r.task_id for r in store.recoverable()} == {
        r.task_id for r in model.values() if r.state in LIVE
    }


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 4), st.sampled_from(list(TaskState))), min_size=1, max_size=20
    )
)
def test_the_journal_writes_each_task_once_and_stores_the_same(
    moves: list[tuple[int, TaskState]],
) -> None:
    """The journal keeps only each task's last update of a batch (a RUNNING and its
    COMPLETED taken together): the store ends as if it had applied all of them."""
    from actors.pipeline import last_of_each

    every, once = MemoryStore().open(), MemoryStore().open()
    records = [make_record(key=f"k{i}") for i in range(5)]
    every.insert(records)
    once.insert(records)
    updates = [moved(records[i], state, attempt=n) for n, (i, state) in enumerate(moves)]
    kept = last_of_each(updates)
    assert len(kept) == len({r.task_id for r in updates})
    every.apply((), updates)
    once.apply((), kept)
    assert once.list_tasks() == every.list_tasks()
    assert once.counts() == every.counts()


def test_a_direct_writer_writes_a_task_once_per_batch_and_wakes_its_waiter() -> None:
    """``Wiring.persist`` on ``memory://``: an agent's batch holding a task's RUNNING and
    COMPLETED writes only the COMPLETED (the store ends the same), and whoever waits for
    the task gets it."""
    from actors.pipeline import Admission, EventHub, Peers, ResultWaiters, SystemClock, Wiring
    from actors.timers import TimerService

    store = MemoryStore().open()
    other, task = make_record(), make_record()
    store.insert([task, other])
    waiters = ResultWaiters()
    woken: list[TaskRecord] = []
    waiters.add(task.task_id, woken.append)
    timers = TimerService()
    wiring = Wiring(
        peers=Peers(),
        clock=SystemClock(),
        hub=EventHub(),
        timers=timers,
        waiters=waiters,
        admission=Admission(100, None),
        direct_store=store,
    )
    before = store.statistics()["records_updated"]
    running = moved(task, TaskState.RUNNING, attempt=1)
    done = moved(running, TaskState.COMPLETED)
    try:
        wiring.persist((running, moved(other, TaskState.RUNNING, attempt=1), done))
    finally:
        timers.stop()
    assert store.statistics()["records_updated"] - before == 2  # not 3
    assert store.get(task.task_id).state is TaskState.COMPLETED
    assert store.get(other.task_id).state is TaskState.RUNNING
    assert [r.state for r in woken] == [TaskState.COMPLETED]


@settings(max_examples=80, deadline=None)
@given(payload=json_values, result=json_values, attempts=st.integers(0, 3), keyed=st.booleans())
def test_a_packed_record_with_every_field_set_reads_back_equal_and_untracked(
    payload: Any, result: Any, attempts: int, keyed: bool
) -> None:
    """Every field of record, spec and attempts survives packing (none is dropped or
    mixed up with its neighbour), whatever the JSON values, and the packed entry is one
    tuple the collector stops tracking at its first pass."""
    later = T0 + timedelta(seconds=3)
    spec = TaskSpec(
        type="review",
        payload=payload,
        priority=7,
        required_capabilities={"python", "rust"},
        timeout_s=12.5,
        max_attempts=4,
        idempotency_key="key-1" if keyed else None,
        deadline=later + timedelta(hours=1),
        trace_context={"traceparent": "00-abc-def-01"},
        backoff_base_s=0.5,
        backoff_cap_s=9.0,
    )
    history = tuple(
        Attempt(
            number=n + 1,
            agent_id=f"agent-{n}",
            started_at=T0 + timedelta(seconds=n),
            ended_at=later,
            outcome="failed",
            error=f"boom {n}",
        )
        for n in range(attempts)
    )
    record = TaskRecord(
        task_id=uuid.uuid4(),
        spec=spec,
        state=TaskState.DEAD_LETTERED,
        attempt=attempts,
        max_attempts=4,
        sequence=0,
        created_at=T0,
        updated_at=later,
        next_attempt_at=later + timedelta(seconds=1),
        last_error="boom",
        result=result,
        history=history,
        owner="runner-a",
        lease_expires_at=later + timedelta(seconds=30),
        agent_id="agent-0",
    )
    store = MemoryStore().open()
    (stored,) = store.insert([moved(record, TaskState.QUEUED)])
    finished = moved(stored, TaskState.DEAD_LETTERED)
    store.update([finished])
    assert store.get(record.task_id) == finished
    assert store.dead_letters() == [finished]
    gc.collect()
    assert not any(gc.is_tracked(entry) for entry in store._tasks.values())


class _GeneralPathOnly(MemoryStore):
    """The store with its undo-log-free path for plain updates turned off: the reference."""

    def _update_live(self, updates: Any) -> bool:
        return False

    def _insert_new(self, inserts: Any) -> bool:
        return False


_CHANGES = st.sampled_from(["state", "same_key", "new_key", "sequence", "unknown", "twice"])


@settings(max_examples=80, deadline=None)
@given(
    st.lists(
        st.lists(
            st.tuples(st.integers(0, 5), st.sampled_from(list(TaskState)), _CHANGES),
            min_size=1,
            max_size=6,
        ),
        min_size=1,
        max_size=8,
    )
)
def test_plain_updates_store_what_the_general_path_stores(
    batches: list[list[tuple[int, TaskState, str]]],
) -> None:
    """Batches of updates of six tasks (state changes, key changes, wrong sequences,
    unknown tasks, a task twice in a batch, finished ones): the store ends with the same
    records, counts and statistics as through the general path alone, and raises the same
    errors with nothing of a refused batch written."""
    fast, general = MemoryStore().open(), _GeneralPathOnly().open()
    records = [make_record(key=f"k{i}") for i in range(6)]
    current = {r.task_id: r for r in fast.insert(records)}
    assert general.insert(records) == list(current.values())
    ids = list(current)
    for batch in batches:
        updates: list[TaskRecord] = []
        for index, state, change in batch:
            record = moved(current[ids[index]], state)
            if change == "new_key":
                record = record.model_copy(
                    update={"spec": record.spec.model_copy(update={"idempotency_key": "x"})}
                )
            elif change == "sequence":
                record = record.model_copy(update={"sequence": record.sequence + 100})
            elif change == "unknown":
                record = record.model_copy(update={"task_id": uuid.uuid4()})
            updates.append(record)
            if change == "twice":
                updates.append(moved(record, TaskState.COMPLETED))
        outcomes = []
        for store in (fast, general):
            try:
                store.apply((), updates)
                outcomes.append(None)
            except Exception as exc:  # noqa: BLE001 - compared below
                outcomes.append(type(exc))
        assert outcomes[0] == outcomes[1]
        assert fast.list_tasks() == general.list_tasks()
        assert fast.counts() == general.counts()
        assert fast.statistics() == general.statistics()
        current = {r.task_id: r for r in fast.list_tasks()}


def test_a_record_made_from_the_sequence_hint_is_stored_as_it_is(store: MemoryStore) -> None:
    """The store assigns sequences whatever a record says; one that already holds the
    sequence it gets is kept as it is (no copy). A stale hint only costs that copy."""
    store.insert([make_record()])  # sequence 1
    hint = store.sequence_hint()
    assert hint == 2
    fresh = [make_record(sequence=hint + i) for i in range(3)]
    stored = store.insert(fresh)
    assert [r.sequence for r in stored] == [2, 3, 4]
    assert all(s is f for s, f in zip(stored, fresh, strict=True))
    stale = [make_record(sequence=hint + i) for i in range(2)]  # 2 and 3 are taken
    again = store.insert(stale)
    assert [r.sequence for r in again] == [5, 6]
    assert all(a is not s and a.task_id == s.task_id for a, s in zip(again, stale, strict=True))
    assert [r.sequence for r in store.list_tasks()] == [1, 2, 3, 4, 5, 6]


_INSERTS = st.sampled_from(["hinted", "stale", "key", "stored", "twice", "finished"])


@settings(max_examples=80, deadline=None)
@given(st.lists(st.lists(_INSERTS, min_size=1, max_size=5), min_size=1, max_size=6))
def test_plain_inserts_store_what_the_general_path_stores(batches: list[list[str]]) -> None:
    """Batches of inserts (records made from the sequence hint, stale sequences,
    idempotency keys new or taken, tasks already stored, one task twice in a batch,
    finished ones): both stores answer the same records and end with the same tasks,
    counts and statistics; a record made from the hint is stored as it is."""
    fast, general = MemoryStore().open(), _GeneralPathOnly().open()
    stored_ids: list[uuid.UUID] = []
    for number, batch in enumerate(batches):
        hint = fast.sequence_hint()
        assert hint == general.sequence_hint()
        inserts: list[TaskRecord] = []
        for offset, kind in enumerate(batch):
            sequence = hint + len(inserts) if kind != "stale" else max(1, hint - 1)
            record = make_record(sequence=sequence)
            if kind == "key":
                record = make_record(sequence=sequence, key=f"k{number % 2}")
            elif kind == "stored" and stored_ids:
                record = make_record(
                    sequence=sequence, task_id=stored_ids[offset % len(stored_ids)]
                )
            elif kind == "finished":
                record = moved(record, TaskState.COMPLETED)
            inserts.append(record)
            if kind == "twice":  # the same task again, at the next sequence
                inserts.append(record.model_copy(update={"sequence": sequence + 1}))
        answers = [store.apply(inserts, ()) for store in (fast, general)]
        assert answers[0] == answers[1]
        plain = all(k == "hinted" for k in batch)
        if plain:
            assert all(a is r for a, r in zip(answers[0], inserts, strict=True))
        assert fast.list_tasks() == general.list_tasks()
        assert fast.counts() == general.counts()
        assert fast.statistics() == general.statistics()
        stored_ids = [record.task_id for record in fast.list_tasks()]
