"""The postgres store beyond the shared contract: URLs and errors, schemas and versions,
several stores (as several processes would have) writing to one schema at once.

Tests marked ``postgres`` need the test database (see ``test_journal_contract``): they skip
when it is unreachable, and fail instead when the environment variable ``CI`` is set.
"""

from __future__ import annotations

import random
import socket
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.journal import SCHEMA_VERSION, TaskStore, open_store, store_for_url
from messages import (
    InvalidMessage,
    StoreCorrupt,
    StoreError,
    StoreUnavailable,
    StoreVersionError,
    TaskRecord,
    TaskState,
)
from tests.integration.test_journal_contract import (
    _observable,
    _outcome,
    batch_strategy,
    make_record,
    moved,
    postgres_schema,
    require_postgres,
    run_sql,
)

pytest.importorskip("psycopg")

from psycopg import sql

from actors.journal.postgres import DEFAULT_CONNECT_TIMEOUT, PostgresStore


@pytest.fixture
def schema() -> Iterator[tuple[str, str]]:
    """A fresh schema on the test database, as (name, store URL); dropped afterwards."""
    with postgres_schema() as found:
        yield found


def table(schema: str, name: str) -> sql.Identifier:
    return sql.Identifier(schema, name)


# -- URLs and errors (no server needed) --------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://me:hunter2@127.0.0.1:1/test",
        "postgres://me:hunter2@127.0.0.1:1/test?schema=s&connect_timeout=2",
        "postgresql://127.0.0.1:1/test?user=me&password=hunter2",
        "postgresql://me:hunter%32@127.0.0.1:1/test",  # percent-encoded: hunter2
    ],
)
def test_an_unreachable_database_is_unavailable_and_the_password_stays_hidden(
    url: str,
) -> None:
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as caught:
        open_store(url)
    assert time.monotonic() - started < 10
    message = str(caught.value)
    assert "127.0.0.1" in message
    assert "***" in message
    shown = "".join(traceback.format_exception(caught.value))
    assert "hunter2" not in shown
    assert "hunter%32" not in shown
    assert "hunter2" not in repr(store_for_url(url))


def test_a_server_that_never_answers_times_out() -> None:
    silent = socket.create_server(("127.0.0.1", 0))  # accepts connections, says nothing
    try:
        port = silent.getsockname()[1]
        url = f"postgresql://me:hunter2@127.0.0.1:{port}/test?connect_timeout=2"
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="timeout") as caught:
            open_store(url)
        assert time.monotonic() - started < 10
        assert "hunter2" not in str(caught.value)
    finally:
        silent.close()


def test_url_options() -> None:
    store = PostgresStore("postgresql://db/x")
    assert store.schema == "public"
    assert store.connect_timeout == DEFAULT_CONNECT_TIMEOUT
    assert store.schema_version == 0
    tuned = PostgresStore("postgres://db/x?connect_timeout=7&schema=jobs&sslmode=prefer")
    assert (tuned.schema, tuned.connect_timeout) == ("jobs", 7.0)
    overridden = PostgresStore("postgres://db/x?schema=jobs", schema="other", connect_timeout=1)
    assert (overridden.schema, overridden.connect_timeout) == ("other", 1.0)


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("postgresql://db/x?bogus=1", "bad postgres store URL.*bogus"),
        ("postgresql://me:hunter2@db/x?bogus=1", "me:\\*\\*\\*@db"),
        ("postgresql://db/x?schema=", "schema must be"),
        (f"postgresql://db/x?schema={'s' * 64}", "schema must be"),
        ("postgresql://db/x?connect_timeout=soon", "connect_timeout"),
        ("postgresql://db/x?connect_timeout=0", "connect_timeout"),
    ],
)
def test_bad_postgres_urls_are_refused_clearly(url: str, match: str) -> None:
    with pytest.raises(ValueError, match=match) as caught:
        store_for_url(url)
    assert "hunter2" not in str(caught.value)


def test_without_psycopg_the_postgres_store_is_unavailable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)  # makes `import psycopg` fail
    monkeypatch.delitem(sys.modules, "actors.journal.postgres")
    with pytest.raises(StoreUnavailable, match=r"needs psycopg.*\[postgres\]") as caught:
        store_for_url("postgresql://me:hunter2@db/x")
    assert "hunter2" not in str(caught.value)
    assert open_store("memory://").is_open  # the other backends do not need it


# -- schemas and versions ----------------------------------------------------------------


@pytest.mark.postgres
def test_open_creates_a_missing_schema_and_migrates_it() -> None:
    with postgres_schema(create=False) as (name, url):
        assert not run_sql("SELECT 1 FROM pg_namespace WHERE nspname = %s", (name,))
        with open_store(url) as store:
            assert store.schema_version == SCHEMA_VERSION
            (record,) = store.insert([make_record()])
        assert run_sql(sql.SQL("SELECT version FROM {}").format(table(name, "schema_version"))) == [
            (SCHEMA_VERSION,)
        ]
        with open_store(url) as again:  # an existing, current schema: nothing to do
            assert again.get(record.task_id) == record


@pytest.mark.postgres
def test_a_newer_schema_version_is_refused_and_left_untouched(schema: tuple[str, str]) -> None:
    name, url = schema
    with open_store(url) as store:
        stored = store.insert([make_record(key="k")])
    newer = SCHEMA_VERSION + 1
    run_sql(sql.SQL("UPDATE {} SET version = %s").format(table(name, "schema_version")), (newer,))
    with pytest.raises(StoreVersionError, match=f"schema version {newer}, newer") as caught:
        open_store(url)
    assert name in str(caught.value)
    assert run_sql(sql.SQL("SELECT version FROM {}").format(table(name, "schema_version"))) == [
        (newer,)
    ]
    run_sql(sql.SQL("UPDATE {} SET version = %s").format(table(name, "schema_version")), (1,))
    with open_store(url) as store:
        assert store.list_tasks() == stored


@pytest.mark.postgres
def test_a_schema_with_a_foreign_tasks_table_is_refused(schema: tuple[str, str]) -> None:
    name, url = schema
    run_sql(sql.SQL("CREATE TABLE {} (id int)").format(table(name, "tasks")))
    with pytest.raises(StoreCorrupt, match="not an Arbiter task store"):
        open_store(url)
    assert not run_sql(
        "SELECT 1 FROM pg_tables WHERE schemaname = %s AND tablename = 'schema_version'", (name,)
    )


@pytest.mark.postgres
def test_stores_in_two_schemas_are_separate(schema: tuple[str, str]) -> None:
    _, url = schema
    with postgres_schema() as (_, other_url), open_store(url) as a, open_store(other_url) as b:
        (record,) = a.insert([make_record(key="k")])
        assert b.get(record.task_id) is None
        assert b.get_by_idempotency_key("k") is None
        (other,) = b.insert([make_record(key="k")])
        assert other.task_id != record.task_id


@pytest.mark.postgres
def test_stored_rows_carry_the_queried_fields_and_the_json(schema: tuple[str, str]) -> None:
    name, url = schema
    with open_store(url) as store:
        (record,) = store.insert([make_record(key="k", priority=4, state=TaskState.RETRY_WAIT)])
    ((state, priority, key, sequence, created, document),) = run_sql(
        sql.SQL(
            "SELECT state, priority, idempotency_key, sequence, created_at, record->>'task_id' "
            "FROM {}"
        ).format(table(name, "tasks"))
    )
    assert (state, priority, key, sequence) == ("RETRY_WAIT", 4, "k", record.sequence)
    assert created == record.created_at
    assert document == str(record.task_id)


@pytest.mark.postgres
def test_nul_characters_are_kept_in_json_and_refused_in_text_columns(
    schema: tuple[str, str],
) -> None:
    _, url = schema
    with open_store(url) as store:
        (kept,) = store.insert([make_record(payload={"a\x00": "b\x00c"}, result="\x00")])
        assert store.get(kept.task_id) == kept
        with pytest.raises(InvalidMessage, match="NUL in idempotency_key"):
            store.insert([make_record(), make_record(key="k\x00")])
        with pytest.raises(InvalidMessage, match="NUL in owner"):
            store.update([moved(kept, TaskState.RUNNING, owner="w\x00")])
        assert store.get_by_idempotency_key("k\x00") is None
        assert store.list_tasks() == [kept]


# -- connections -------------------------------------------------------------------------


@pytest.mark.postgres
def test_a_lost_connection_is_retried_on_a_fresh_one(
    schema: tuple[str, str], logs: list[dict[str, Any]]
) -> None:
    """A pooled connection the server closed (a restart, an idle timeout) is found broken
    at its next use; the write runs again on a fresh connection and nothing is lost."""
    _, url = schema
    application = f"arbiter-test-{uuid.uuid4().hex[:8]}"
    with open_store(f"{url}&application_name={application}") as store:
        (record,) = store.insert([make_record()])
        killed = run_sql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            (application,),
        )
        assert killed
        store.update([moved(record, TaskState.RUNNING)])
        assert store.statistics()["rollbacks"] == 1  # the broken attempt
        got = store.get(record.task_id)
        assert got is not None
        assert got.state is TaskState.RUNNING
    assert [e["retrying"] for e in logs if e["event"] == "store.connection_lost"] == [True]


@pytest.mark.postgres
def test_a_closed_store_refuses_work_and_reopens(schema: tuple[str, str]) -> None:
    _, url = schema
    store = open_store(url)
    (record,) = store.insert([make_record()])
    store.close()
    with pytest.raises(StoreError, match="not open"):
        store.apply([], [])
    store.open()
    try:
        assert store.get(record.task_id) == record
    finally:
        store.close()


# -- several stores on one schema --------------------------------------------------------


@pytest.mark.postgres
def test_two_stores_writing_at_once_keep_sequences_unique(schema: tuple[str, str]) -> None:
    _, url = schema
    batches, size = 30, 10
    start = threading.Barrier(2)

    def write(store: TaskStore, tag: str) -> list[TaskRecord]:
        start.wait(timeout=30)
        written: list[TaskRecord] = []
        for i in range(batches):
            stored = store.insert([make_record(payload={"w": tag, "i": i}) for _ in range(size)])
            store.update([moved(r, TaskState.ASSIGNED) for r in stored[::2]])
            written.extend(stored)
        return written

    with open_store(url) as a, open_store(url) as b, ThreadPoolExecutor(max_workers=2) as pool:
        from_a, from_b = pool.submit(write, a, "a"), pool.submit(write, b, "b")
        written_a, written_b = from_a.result(timeout=120), from_b.result(timeout=120)
        for written in (written_a, written_b):  # each writer sees its own order kept
            sequences = [r.sequence for r in written]
            assert sequences == sorted(sequences)
        everything = written_a + written_b
        assert len({r.sequence for r in everything}) == 2 * batches * size
        listed = a.list_tasks(limit=10_000)
        assert [r.sequence for r in listed] == sorted(r.sequence for r in everything)
        assert b.list_tasks(limit=10_000) == listed
        assert {r.task_id for r in listed} == {r.task_id for r in everything}
        assert a.counts()[TaskState.ASSIGNED] == batches * size
        (later,) = b.insert([make_record()])
        assert later.sequence > max(r.sequence for r in everything)


@pytest.mark.postgres
def test_an_idempotency_key_is_unique_across_stores(schema: tuple[str, str]) -> None:
    _, url = schema
    keys = [f"key-{i}" for i in range(200)]
    rounds = 3
    start = threading.Barrier(2)

    def submit(store: TaskStore, seed: int) -> list[dict[str, TaskRecord]]:
        shuffler = random.Random(seed)
        seen: list[dict[str, TaskRecord]] = []
        for round_number in range(rounds):
            order = [f"{key}-{round_number}" for key in keys]
            shuffler.shuffle(order)  # opposite orders: the stores wait on each other
            start.wait(timeout=30)
            stored = store.insert([make_record(key=key) for key in order])
            seen.append({r.spec.idempotency_key or "": r for r in stored})
        return seen

    with open_store(url) as a, open_store(url) as b, ThreadPoolExecutor(max_workers=2) as pool:
        from_a, from_b = pool.submit(submit, a, 1), pool.submit(submit, b, 2)
        seen_a, seen_b = from_a.result(timeout=120), from_b.result(timeout=120)
        assert seen_a == seen_b  # both got the one stored record for every key
        assert sum(a.counts().values()) == rounds * len(keys)
        for by_key in seen_a:
            for key, record in by_key.items():
                assert b.get_by_idempotency_key(key) == record
        stats = [a.statistics(), b.statistics()]
        assert sum(s["records_inserted"] for s in stats) == rounds * len(keys)
        assert sum(s["duplicates"] for s in stats) == rounds * len(keys)


# -- postgres and memory agree -----------------------------------------------------------


def _ranked(value: Any, ranks: dict[int, int]) -> Any:
    """``value`` with every record's sequence replaced by its rank among the stored ones.

    Postgres leaves gaps in sequences (duplicates, rolled-back batches); memory does not.
    """
    if isinstance(value, TaskRecord):
        return value.model_copy(update={"sequence": ranks[value.sequence]})
    if isinstance(value, list | tuple):
        return type(value)(_ranked(item, ranks) for item in value)
    if isinstance(value, dict):
        return {key: _ranked(item, ranks) for key, item in value.items()}
    return value


def _normalised(store: TaskStore, value: Any) -> Any:
    listed = store.list_tasks(limit=1000)
    return _ranked(value, {r.sequence: rank for rank, r in enumerate(listed, 1)})


@pytest.mark.postgres
@settings(deadline=None)
@given(st.lists(batch_strategy, max_size=8))
def test_memory_and_postgres_give_the_same_observable_state(
    batches: list[tuple[list[TaskRecord], list[TaskRecord]]],
) -> None:
    require_postgres()
    with postgres_schema() as (_, url):
        memory = open_store("memory://")
        postgres = open_store(url)
        try:
            for inserts, updates in batches:
                expected = _outcome(memory, inserts, updates)
                got = _normalised(postgres, _outcome(postgres, inserts, updates))
                assert got == expected
                assert _normalised(postgres, _observable(postgres)) == _observable(memory)
        finally:
            memory.close()
            postgres.close()
