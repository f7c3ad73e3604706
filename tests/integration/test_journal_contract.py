"""The contract every journal store backend keeps, run against each of them.

A backend is a :class:`Backend`: it makes a fresh open store and can close and re-open it
(for sqlite and postgres: a new object on the same data, so what is checked comes from the
database).

The postgres backend runs against ``postgresql://127.0.0.1:5432/test`` (override with the
environment variable ``ARBITER_TEST_POSTGRES_URL``), each test in a fresh schema of its own,
dropped afterwards. When PostgreSQL is unreachable those tests skip, saying why; when the
environment variable ``CI`` is set they fail instead.
"""

from __future__ import annotations

import functools
import os
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.journal import (
    SCHEMA_VERSION,
    MemoryStore,
    SqliteStore,
    TaskStore,
    open_store,
    redact_url,
    store_for_url,
)
from messages import (
    Attempt,
    InvalidMessage,
    StoreError,
    TaskRecord,
    TaskSpec,
    TaskState,
    UnknownTask,
)
from messages.task import TERMINAL_STATES

T0 = datetime(2025, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


def make_record(
    *,
    task_id: uuid.UUID | None = None,
    key: str | None = None,
    priority: int = 0,
    state: TaskState = TaskState.QUEUED,
    type: str = "work",
    payload: Any = None,
    at: datetime = T0,
    **changes: Any,
) -> TaskRecord:
    """A valid record; every field can be overridden."""
    spec = TaskSpec(
        type=type,
        payload=payload if payload is not None else {"n": 1},
        priority=priority,
        idempotency_key=key,
    )
    return TaskRecord(
        task_id=task_id or uuid.uuid4(),
        spec=spec,
        state=state,
        created_at=at,
        updated_at=at,
        **changes,
    )


def moved(record: TaskRecord, state: TaskState, **changes: Any) -> TaskRecord:
    """``record`` in another state, without the state machine's check (stores don't check)."""
    return record.model_copy(update={"state": state, **changes})


@dataclass
class Backend:
    """Makes stores of one kind, and re-opens them as a restarted process would."""

    name: str
    make: Callable[[], TaskStore]
    reopen: Callable[[TaskStore], TaskStore]


def memory_backend() -> Backend:
    def reopen(store: TaskStore) -> TaskStore:
        store.close()
        return store.open()

    return Backend("memory", lambda: open_store("memory://"), reopen)


def sqlite_backend(directory: Path) -> Backend:
    path = directory / "tasks.db"

    def reopen(store: TaskStore) -> TaskStore:
        store.close()
        return open_store(f"sqlite:///{path}")

    return Backend("sqlite", lambda: open_store(f"sqlite:///{path}"), reopen)


POSTGRES_URL = os.environ.get("ARBITER_TEST_POSTGRES_URL", "postgresql://127.0.0.1:5432/test")


@functools.cache
def postgres_unreachable() -> str | None:
    """Why the test database cannot be used, or None when it can (asked once a run)."""
    try:
        import psycopg
    except ImportError as exc:
        return f"psycopg is not installed ({exc}); pip install -e '.[postgres]'"
    try:
        with psycopg.connect(POSTGRES_URL, connect_timeout=3, autocommit=True) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        return (
            f"PostgreSQL at {redact_url(POSTGRES_URL)} is unreachable: {' '.join(str(exc).split())}"
        )
    return None


def require_postgres() -> None:
    """Skip the calling test when PostgreSQL is unreachable; under ``CI``, fail it."""
    reason = postgres_unreachable()
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so the postgres tests must run)", pytrace=False)
    pytest.skip(reason)


def with_schema(url: str, schema: str) -> str:
    """``url`` with the store option ``schema=`` added."""
    return f"{url}{'&' if '?' in url else '?'}schema={schema}"


def run_sql(statement: Any, params: Any = None) -> list[Any]:
    """Run one statement on the test database (autocommit); return its rows, if any."""
    import psycopg

    with psycopg.connect(POSTGRES_URL, connect_timeout=3, autocommit=True) as conn:
        cursor = conn.execute(statement, params)
        return cursor.fetchall() if cursor.description else []


@contextmanager
def postgres_schema(*, create: bool = True) -> Iterator[tuple[str, str]]:
    """A fresh schema with a random name, as (schema, store URL); dropped afterwards."""
    from psycopg import sql

    require_postgres()
    schema = f"arbiter_test_{uuid.uuid4().hex[:16]}"
    if create:
        run_sql(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    try:
        yield schema, with_schema(POSTGRES_URL, schema)
    finally:
        run_sql(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def postgres_backend(url: str) -> Backend:
    def reopen(store: TaskStore) -> TaskStore:
        store.close()
        return open_store(url)

    return Backend("postgresql", lambda: open_store(url), reopen)


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Each backend in turn (postgres: in a fresh schema, dropped after the test)."""
    if request.param == "memory":
        yield memory_backend()
    elif request.param == "sqlite":
        yield sqlite_backend(tmp_path)
    else:
        with postgres_schema() as (_, url):
            yield postgres_backend(url)


@pytest.fixture
def store(backend: Backend) -> Iterator[TaskStore]:
    """A fresh, open store of each backend; closed after the test."""
    opened = backend.make()
    yield opened
    opened.close()


# -- insert / get ------------------------------------------------------------------------


def test_insert_assigns_increasing_sequences_and_get_returns_the_record(
    store: TaskStore,
) -> None:
    records = [make_record(payload={"i": i}) for i in range(5)]
    stored = store.insert(records)
    sequences = [r.sequence for r in stored]
    assert sequences == sorted(sequences)
    assert len(set(sequences)) == 5
    assert sequences[0] >= 1
    for original, back in zip(records, stored, strict=True):
        assert back == original.model_copy(update={"sequence": back.sequence})
        assert store.get(original.task_id) == back
        assert store.get(str(original.task_id)) == back


def test_get_of_unknown_or_malformed_id_is_none(store: TaskStore) -> None:
    store.insert([make_record()])
    assert store.get(uuid.uuid4()) is None
    assert store.get("not-a-uuid") is None
    assert store.get_by_idempotency_key("nobody") is None


def test_sequence_given_by_the_caller_is_ignored(store: TaskStore) -> None:
    (first,) = store.insert([make_record(sequence=999)])
    (second,) = store.insert([make_record(sequence=5)])
    assert first.sequence < second.sequence
    assert second.sequence != 5


def test_empty_batches_do_nothing(store: TaskStore) -> None:
    assert store.insert([]) == []
    store.update([])
    assert store.apply([], []) == []
    assert store.statistics()["commits"] == 0
    assert store.list_tasks() == []


# -- update ------------------------------------------------------------------------------


def test_update_replaces_records_and_keeps_their_sequence(store: TaskStore) -> None:
    a, b = store.insert([make_record(), make_record()])
    running = moved(a, TaskState.RUNNING, attempt=1, agent_id="agent-1", owner="w1")
    store.update([running, moved(b, TaskState.CANCELLED, sequence=0)])
    assert store.get(a.task_id) == running
    got_b = store.get(b.task_id)
    assert got_b is not None
    assert got_b.state is TaskState.CANCELLED
    assert got_b.sequence == b.sequence  # the store owns the sequence


def test_update_of_unknown_id_raises_and_applies_nothing_of_the_batch(
    store: TaskStore,
) -> None:
    (a,) = store.insert([make_record()])
    stranger = make_record()
    with pytest.raises(UnknownTask):
        store.update([moved(a, TaskState.ASSIGNED), stranger])
    assert store.get(a.task_id) == a
    assert store.get(stranger.task_id) is None
    assert store.statistics()["rollbacks"] == 1


def test_the_last_update_of_one_id_in_a_batch_wins(store: TaskStore) -> None:
    (a,) = store.insert([make_record()])
    store.update([moved(a, TaskState.ASSIGNED), moved(a, TaskState.RUNNING)])
    got = store.get(a.task_id)
    assert got is not None
    assert got.state is TaskState.RUNNING


def test_update_may_change_the_idempotency_key_to_a_free_one(store: TaskStore) -> None:
    (a,) = store.insert([make_record(key="old")])
    renamed = a.model_copy(update={"spec": a.spec.model_copy(update={"idempotency_key": "new"})})
    store.update([renamed])
    assert store.get_by_idempotency_key("old") is None
    assert store.get_by_idempotency_key("new") == renamed
    unkeyed = a.model_copy(update={"spec": a.spec.model_copy(update={"idempotency_key": None})})
    store.update([unkeyed])
    assert store.get_by_idempotency_key("new") is None
    # the freed key can be used by a new task
    (b,) = store.insert([make_record(key="new")])
    assert b.task_id != a.task_id


def test_update_taking_another_tasks_key_is_refused_and_rolled_back(store: TaskStore) -> None:
    a, b = store.insert([make_record(key="a"), make_record(key="b")])
    thief = b.model_copy(update={"spec": b.spec.model_copy(update={"idempotency_key": "a"})})
    with pytest.raises(InvalidMessage, match="'a'"):
        store.update([moved(a, TaskState.RUNNING), thief])
    assert store.get(a.task_id) == a
    assert store.get(b.task_id) == b
    assert store.get_by_idempotency_key("a") == a


# -- apply (group commit) ----------------------------------------------------------------


def test_apply_inserts_and_updates_in_one_batch(store: TaskStore) -> None:
    (old,) = store.insert([make_record()])
    new = make_record(priority=3)
    stored = store.apply([new], [moved(old, TaskState.ASSIGNED), moved(new, TaskState.ASSIGNED)])
    assert [r.task_id for r in stored] == [new.task_id]
    assert stored[0].sequence > old.sequence
    assert store.counts()[TaskState.ASSIGNED] == 2
    got_new = store.get(new.task_id)
    assert got_new is not None
    assert got_new.sequence == stored[0].sequence  # the update kept the assigned sequence
    stats = store.statistics()
    assert stats["commits"] == 2
    assert stats["records_inserted"] == 2
    assert stats["records_updated"] == 2
    assert stats["records_written"] == 4


def test_failed_apply_stores_none_of_its_inserts(store: TaskStore) -> None:
    (old,) = store.insert([make_record(key="kept")])
    new = make_record(key="lost")
    with pytest.raises(UnknownTask):
        store.apply([new, make_record()], [moved(old, TaskState.RUNNING), make_record()])
    assert store.get(new.task_id) is None
    assert store.get_by_idempotency_key("lost") is None
    assert store.get(old.task_id) == old
    assert store.list_tasks() == [old]
    assert sum(store.counts().values()) == 1
    (later,) = store.insert([make_record(key="lost")])
    assert later.sequence > old.sequence


# -- idempotency -------------------------------------------------------------------------


def test_idempotency_key_across_batches_returns_the_existing_record(store: TaskStore) -> None:
    (first,) = store.insert([make_record(key="k", payload={"v": 1})])
    (again,) = store.insert([make_record(key="k", payload={"v": 2})])
    assert again == first
    assert store.get_by_idempotency_key("k") == first
    assert len(store.list_tasks()) == 1
    assert store.statistics()["duplicates"] == 1


def test_idempotency_key_within_one_batch_stores_one_task(store: TaskStore) -> None:
    one, other, two = store.insert(
        [make_record(key="k"), make_record(key="other"), make_record(key="k", priority=9)]
    )
    assert two == one
    assert other.sequence > one.sequence
    assert [r.task_id for r in store.list_tasks()] == [one.task_id, other.task_id]


def test_reinserting_a_task_id_returns_the_stored_record(store: TaskStore) -> None:
    (first,) = store.insert([make_record()])
    store.update([moved(first, TaskState.RUNNING)])
    (again,) = store.insert([make_record(task_id=first.task_id, state=TaskState.PENDING)])
    assert again.state is TaskState.RUNNING
    assert again.sequence == first.sequence
    same = make_record()
    x, y = store.insert([same, same])
    assert x == y
    assert len(store.list_tasks()) == 2


def test_the_existing_record_is_returned_even_when_its_key_is_reused_later(
    store: TaskStore,
) -> None:
    (first,) = store.insert([make_record(key="k")])
    store.update([moved(first, TaskState.COMPLETED, result={"ok": True})])
    (again,) = store.insert([make_record(key="k")])
    assert again.state is TaskState.COMPLETED
    assert again.result == {"ok": True}


# -- restart -----------------------------------------------------------------------------


def test_sequence_stays_monotonic_and_data_survives_reopen(backend: Backend) -> None:
    store = backend.make()
    first = store.insert([make_record(key=f"k{i}") for i in range(3)])
    store = backend.reopen(store)
    try:
        assert store.list_tasks() == first
        assert store.schema_version == SCHEMA_VERSION
        (dup,) = store.insert([make_record(key="k1")])
        assert dup == first[1]
        later = store.insert([make_record(), make_record()])
        assert min(r.sequence for r in later) > max(r.sequence for r in first)
        assert later[0].sequence < later[1].sequence
    finally:
        store.close()


def test_json_round_trip_of_every_field(backend: Backend) -> None:
    plus_two = timezone(timedelta(hours=2))
    spec = TaskSpec(
        type="render",
        payload={"text": "héllo ✓", "nested": [1, 2.5, None, True, {"deep": ["x"]}], "n": 0},
        priority=7,
        required_capabilities=frozenset({"gpu", "render"}),
        timeout_s=12.5,
        max_attempts=4,
        idempotency_key="render-1",
        deadline=datetime(2030, 5, 6, 7, 8, 9, 123456, tzinfo=plus_two),
        trace_context={"traceparent": "00-abc-def-01"},
        backoff_base_s=0.5,
        backoff_cap_s=30.0,
    )
    record = TaskRecord(
        task_id=uuid.uuid4(),
        spec=spec,
        state=TaskState.FAILED,
        attempt=2,
        max_attempts=4,
        created_at=T0,
        updated_at=T0 + timedelta(seconds=3, microseconds=1),
        next_attempt_at=datetime(2025, 1, 2, 5, 0, tzinfo=plus_two),
        last_error="ValueError: bad",
        result={"partial": [1, {"a": None}], "float": 1e-7},
        history=(
            Attempt(
                number=1,
                agent_id="a1",
                started_at=T0,
                ended_at=T0 + timedelta(seconds=1),
                outcome="failed",
                error="boom",
            ),
            Attempt(number=2, outcome="timed_out"),
        ),
        owner="host-1:1234",
        lease_expires_at=T0 + timedelta(minutes=5),
        agent_id="a1",
    )
    store = backend.make()
    (stored,) = store.insert([record])
    store = backend.reopen(store)
    try:
        back = store.get(record.task_id)
        assert back == stored
        assert back is not None
        assert back.model_dump() == stored.model_dump()
        assert back.spec.deadline is not None
        assert back.spec.deadline.utcoffset() == timedelta(hours=2)
        assert back.model_dump_json() == stored.model_dump_json()
    finally:
        store.close()


# -- queries -----------------------------------------------------------------------------


def test_recoverable_is_every_live_task_by_priority_then_fifo(store: TaskStore) -> None:
    specs = [
        (TaskState.QUEUED, 1),
        (TaskState.QUEUED, 5),
        (TaskState.COMPLETED, 9),
        (TaskState.RUNNING, 5),
        (TaskState.QUEUED, 5),
        (TaskState.DEAD_LETTERED, 9),
        (TaskState.CANCELLED, 9),
        (TaskState.RETRY_WAIT, 0),
        (TaskState.QUEUED, 1),
        (TaskState.PENDING, 9),
    ]
    stored = store.insert([make_record(state=s, priority=p) for s, p in specs])
    live = [r for r in stored if r.state not in TERMINAL_STATES]
    expected = sorted(live, key=lambda r: (-r.spec.priority, r.sequence))
    got = store.recoverable()
    assert got == expected
    queued = [r for r in got if r.state is TaskState.QUEUED]
    assert [(r.spec.priority, r.sequence) for r in queued] == [
        (5, stored[1].sequence),
        (5, stored[4].sequence),
        (1, stored[0].sequence),
        (1, stored[8].sequence),
    ]


def test_counts_has_every_state(store: TaskStore) -> None:
    assert store.counts() == dict.fromkeys(TaskState, 0)
    a, _, _ = store.insert([make_record(), make_record(), make_record(state=TaskState.PENDING)])
    store.update([moved(a, TaskState.DEAD_LETTERED)])
    counts = store.counts()
    assert set(counts) == set(TaskState)
    assert counts[TaskState.QUEUED] == 1
    assert counts[TaskState.PENDING] == 1
    assert counts[TaskState.DEAD_LETTERED] == 1
    assert sum(counts.values()) == 3


def test_list_tasks_filters_orders_limits_and_pages(store: TaskStore) -> None:
    states = [TaskState.QUEUED, TaskState.COMPLETED] * 5
    stored = store.insert([make_record(state=s, priority=i % 3) for i, s in enumerate(states)])
    assert store.list_tasks() == stored
    queued = [r for r in stored if r.state is TaskState.QUEUED]
    assert store.list_tasks(TaskState.QUEUED) == queued
    assert store.list_tasks(TaskState.QUEUED, limit=2) == queued[:2]
    assert store.list_tasks(TaskState.QUEUED, 2, after_sequence=queued[1].sequence) == (queued[2:4])
    assert store.list_tasks(limit=3, after_sequence=stored[6].sequence) == stored[7:10]
    assert store.list_tasks(TaskState.RUNNING) == []
    assert store.list_tasks(limit=0) == []
    with pytest.raises(ValueError, match="limit"):
        store.list_tasks(limit=-1)
    with pytest.raises(ValueError, match="after_sequence"):
        store.list_tasks(after_sequence=-1)


def test_list_heads_gives_sequence_id_and_state_in_order_and_pages(store: TaskStore) -> None:
    states = [TaskState.QUEUED, TaskState.COMPLETED, TaskState.DEAD_LETTERED] * 3
    stored = store.insert([make_record(state=s) for s in states])
    heads = [(r.sequence, r.task_id, r.state) for r in stored]
    assert store.list_heads() == heads
    assert store.list_heads(4) == heads[:4]
    assert store.list_heads(3, after_sequence=stored[4].sequence) == heads[5:8]
    queued = [h for h in heads if h[2] is TaskState.QUEUED]
    assert store.list_heads(state=TaskState.QUEUED) == queued
    assert store.list_heads(1, after_sequence=queued[0][0], state=TaskState.QUEUED) == queued[1:2]
    done = store.get(stored[0].task_id)
    assert done is not None
    store.update([done.moved(TaskState.ASSIGNED, at=done.updated_at, agent_id="a")])
    assert store.list_heads(1) == [(stored[0].sequence, stored[0].task_id, TaskState.ASSIGNED)]
    assert store.list_heads(limit=0) == []
    with pytest.raises(ValueError, match="after_sequence"):
        store.list_heads(after_sequence=-1)


def test_dead_letters_lists_dead_lettered_tasks_oldest_first(store: TaskStore) -> None:
    stored = store.insert([make_record() for _ in range(4)])
    store.update([moved(stored[2], TaskState.DEAD_LETTERED), moved(stored[0], TaskState.FAILED)])
    store.update([moved(stored[0], TaskState.DEAD_LETTERED)])
    dead = store.dead_letters()
    assert [r.task_id for r in dead] == [stored[0].task_id, stored[2].task_id]
    assert len(store.dead_letters(limit=1)) == 1


# -- pruning -------------------------------------------------------------------------------


def test_prune_deletes_old_finished_tasks_oldest_first_and_frees_their_keys(
    store: TaskStore,
) -> None:
    stored = store.insert([make_record(key=f"k{n}") for n in range(6)])
    hour = timedelta(hours=1)
    store.update(
        [
            moved(stored[0], TaskState.COMPLETED, updated_at=T0 + 2 * hour),
            moved(stored[1], TaskState.CANCELLED, updated_at=T0 + hour),
            moved(stored[2], TaskState.COMPLETED, updated_at=T0 + 5 * hour),  # too recent
            moved(stored[3], TaskState.DEAD_LETTERED, updated_at=T0),  # kept by default
            moved(stored[4], TaskState.RUNNING, updated_at=T0),  # live: never pruned
        ]
    )
    cutoff = T0 + 3 * hour
    assert store.prune(cutoff, limit=0) == 0
    assert store.prune(cutoff, limit=1) == 1
    assert store.prune(cutoff) == 1
    assert store.prune(cutoff) == 0
    assert [store.get(r.task_id) is None for r in stored] == [True, True] + [False] * 4
    counts = store.counts()
    assert (counts[TaskState.COMPLETED], counts[TaskState.CANCELLED]) == (1, 0)
    # A pruned task's key is free: the same key makes a new task.
    (again,) = store.insert([make_record(key="k0")])
    assert again.task_id != stored[0].task_id and store.get(again.task_id) == again
    assert store.get_by_idempotency_key("k1") is None
    # Dead letters go only when asked for.
    assert store.prune(cutoff, states=[TaskState.DEAD_LETTERED]) == 1
    assert store.dead_letters() == []
    assert store.get(stored[4].task_id) is not None


def test_prune_refuses_live_states_and_a_naive_time(store: TaskStore) -> None:
    with pytest.raises(ValueError, match="only finished tasks"):
        store.prune(T0, states=[TaskState.QUEUED])
    with pytest.raises(ValueError, match="timezone-aware"):
        store.prune(T0.replace(tzinfo=None))
    with pytest.raises(ValueError, match="limit"):
        store.prune(T0, limit=-1)


def test_prune_skips_a_dead_letter_requeued_since_and_prunes_what_finishes_later(
    store: TaskStore,
) -> None:
    hour = timedelta(hours=1)
    first, second = store.insert([make_record(), make_record()])
    store.update([moved(first, TaskState.DEAD_LETTERED, updated_at=T0)])
    assert store.prune(T0, states=[TaskState.DEAD_LETTERED]) == 0  # not before T0
    store.update([moved(first, TaskState.QUEUED, updated_at=T0 + hour)])  # operator re-queue
    assert store.prune(T0 + 9 * hour, states=[TaskState.DEAD_LETTERED]) == 0
    store.update([moved(second, TaskState.COMPLETED, updated_at=T0 + hour)])
    store.update([moved(first, TaskState.COMPLETED, updated_at=T0 + 2 * hour)])
    assert store.prune(T0 + 2 * hour) == 1  # only what finished before then
    assert store.get(second.task_id) is None and store.get(first.task_id) is not None
    assert store.prune(T0 + 9 * hour) == 1
    assert sum(store.counts().values()) == 0


# -- lifecycle and introspection ---------------------------------------------------------


def test_lifecycle_open_close_and_context_manager(backend: Backend) -> None:
    store = backend.make()
    assert store.is_open
    assert store.open() is store  # idempotent
    (a,) = store.insert([make_record()])
    store.close()
    store.close()  # idempotent
    assert not is_open(store)
    assert "closed" in repr(store)
    for call in (
        lambda: store.get(a.task_id),
        lambda: store.get("not-a-uuid"),
        lambda: store.get_by_idempotency_key("k"),
        lambda: store.insert([make_record()]),
        lambda: store.list_tasks(),
        store.counts,
        store.recoverable,
    ):
        with pytest.raises(StoreError, match="not open"):
            call()
    with store as again:
        assert again is store
        assert "open" in repr(store)
        assert store.get(a.task_id) == a
    assert not is_open(store)


def is_open(store: TaskStore) -> bool:
    """``store.is_open``, read through a call so that mypy does not narrow it."""
    return store.is_open


def test_url_and_schema_version(store: TaskStore, backend: Backend) -> None:
    assert store.url.startswith(f"{backend.name}://")
    assert store.schema_version == SCHEMA_VERSION
    assert set(store.statistics()) >= {"commits", "rollbacks", "records_written"}


def test_a_reader_thread_sees_whole_batches_only(store: TaskStore) -> None:
    batches, size = 40, 10
    done = threading.Event()

    def read() -> list[int]:
        seen: list[int] = []
        while not done.is_set():
            seen.append(sum(store.counts().values()))
            seen.append(len(store.list_tasks(limit=10_000)))
        return seen

    with ThreadPoolExecutor(max_workers=1) as pool:
        reader = pool.submit(read)
        try:
            for _ in range(batches):
                store.insert([make_record() for _ in range(size)])
        finally:
            done.set()
        seen = reader.result(timeout=30)  # re-raises whatever the reader raised
    assert seen
    assert all(n % size == 0 for n in seen)
    assert sum(store.counts().values()) == batches * size


# -- opening by URL ----------------------------------------------------------------------


def test_open_store_by_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    memory = open_store("memory://")
    assert isinstance(memory, MemoryStore)
    assert memory.is_open
    monkeypatch.chdir(tmp_path)
    relative = store_for_url("sqlite:///sub%20dir/tasks.db?durability=fsync&busy_timeout=0.25")
    assert isinstance(relative, SqliteStore)
    assert not relative.is_open
    assert relative.path == "sub dir/tasks.db"
    assert relative.durability == "fsync"
    (tmp_path / "sub dir").mkdir()
    with relative:
        assert (tmp_path / "sub dir" / "tasks.db").exists()
        assert relative.pragmas()["busy_timeout"] == 250
    absolute = store_for_url(f"sqlite:///{tmp_path}/abs.db")
    assert isinstance(absolute, SqliteStore)
    assert absolute.path == f"{tmp_path}/abs.db"
    assert absolute.durability == "normal"
    assert absolute.url == f"sqlite:///{tmp_path}/abs.db"


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("tasks.db", "no scheme"),
        ("redis://localhost", "unknown store scheme 'redis'"),
        ("memory://named", "takes no path"),
        ("sqlite://", "names no file"),
        ("sqlite:///", "names no file"),
        ("sqlite:///dir/", "names no file"),
        ("sqlite://host/tasks.db", "has a host"),
        ("sqlite:///:memory:", "memory://"),
        ("sqlite:///t.db?durability=sometimes", "durability"),
        ("sqlite:///t.db?busy_timeout=soon", "busy_timeout"),
        ("sqlite:///t.db?busy_timeout=-1", "busy_timeout"),
        ("sqlite:///t.db?journal=off", "unknown sqlite store option 'journal'"),
    ],
)
def test_bad_urls_are_refused_clearly(url: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        store_for_url(url)


def test_unknown_scheme_error_hides_the_password() -> None:
    with pytest.raises(ValueError, match="unknown store scheme") as caught:
        store_for_url("mysql://me:hunter2@db/x")
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize(
    ("url", "schema"),
    [
        ("postgresql://me:hunter2@db:5432/arbiter", "public"),
        ("postgres://db/x?schema=jobs&sslmode=disable", "jobs"),
        ("postgresql+psycopg://x?schema=My%20Schema", "My Schema"),
        ("POSTGRESQL://db/x?connect_timeout=2", "public"),
    ],
)
def test_postgres_urls_make_an_unopened_postgres_store(url: str, schema: str) -> None:
    pytest.importorskip("psycopg")
    from actors.journal import PostgresStore

    store = store_for_url(url)
    assert isinstance(store, PostgresStore)
    assert not store.is_open
    assert store.schema == schema
    assert store.url == redact_url(url)
    assert "hunter2" not in repr(store)


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        ("postgresql://me:hunter2@db:5432/arbiter", "postgresql://me:***@db:5432/arbiter"),
        ("postgresql://me@db/arbiter", "postgresql://me@db/arbiter"),
        ("postgresql://me:p%40ss@db/x?sslmode=require", "postgresql://me:***@db/x?sslmode=require"),
        ("postgresql://me:a:b@c@db/x", "postgresql://me:***@db/x"),
        (
            "postgresql://db/x?user=me&password=hunter2#frag",
            "postgresql://db/x?user=me&password=***#frag",
        ),
        ("postgresql://db?PASSWORD=x", "postgresql://db?PASSWORD=***"),
        ("sqlite:////tmp/a.db", "sqlite:////tmp/a.db"),
        ("memory://", "memory://"),
        ("not a url", "not a url"),
        ("postgresql://[bad:pw@host/x", "postgresql://[bad:***@host/x"),
    ],
)
def test_redact_url(url: str, redacted: str) -> None:
    assert redact_url(url) == redacted


# -- memory and sqlite agree -------------------------------------------------------------

IDS = [uuid.UUID(int=i + 1) for i in range(8)]
KEYS = [None, None, "a", "b", "c"]


@st.composite
def record_strategy(draw: st.DrawFn) -> TaskRecord:
    """A record with an id and key from small pools, so duplicates and conflicts happen."""
    return make_record(
        task_id=draw(st.sampled_from(IDS)),
        key=draw(st.sampled_from(KEYS)),
        priority=draw(st.integers(0, 9)),
        state=draw(st.sampled_from(list(TaskState))),
        payload={"v": draw(st.integers(0, 3))},
        sequence=draw(st.integers(0, 3)),
        at=T0 + timedelta(seconds=draw(st.integers(0, 100))),
    )


batch_strategy = st.tuples(
    st.lists(record_strategy(), max_size=4), st.lists(record_strategy(), max_size=3)
)


def _outcome(store: TaskStore, inserts: list[TaskRecord], updates: list[TaskRecord]) -> object:
    try:
        return store.apply(inserts, updates)
    except (UnknownTask, InvalidMessage) as exc:
        return type(exc)


def _observable(store: TaskStore) -> object:
    return (
        store.list_tasks(limit=100),
        store.counts(),
        store.recoverable(),
        [store.get(task_id) for task_id in IDS],
        [store.get_by_idempotency_key(key) for key in KEYS if key],
        store.statistics(),
    )


@settings(deadline=None)
@given(st.lists(batch_strategy, max_size=8))
def test_memory_and_sqlite_give_the_same_observable_state(
    batches: list[tuple[list[TaskRecord], list[TaskRecord]]],
) -> None:
    with tempfile.TemporaryDirectory() as directory:
        memory = open_store("memory://")
        sqlite = open_store(f"sqlite:///{directory}/tasks.db")
        try:
            for inserts, updates in batches:
                assert _outcome(memory, inserts, updates) == _outcome(sqlite, inserts, updates)
                assert _observable(memory) == _observable(sqlite)
            sqlite.close()
            sqlite.open()
            assert _observable(memory) == _observable(sqlite)
        finally:
            memory.close()
            sqlite.close()
