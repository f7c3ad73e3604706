"""The sqlite store on real files: bad files, newer schemas, locks, read-only and full disks.

Every failure must name the file, raise a StoreError subclass, and lose nothing that was
stored before it.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from actors.journal import SCHEMA_VERSION, SqliteStore, open_store
from actors.journal.sqlite import MIGRATIONS
from messages import (
    StoreCorrupt,
    StoreError,
    StoreUnavailable,
    StoreVersionError,
    TaskRecord,
    TaskState,
)
from tests.integration.test_journal_contract import make_record


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """Where the test's database file goes."""
    return tmp_path / "tasks.db"


@pytest.fixture
def filled(db_path: Path) -> Iterator[tuple[SqliteStore, list[TaskRecord]]]:
    """An open store holding three records, with a short busy timeout."""
    store = SqliteStore(db_path, busy_timeout=0.05).open()
    records = store.insert([make_record(key=f"k{i}") for i in range(3)])
    yield store, records
    store.close()


def digest(path: Path) -> str:
    """The file's content hash, to show it was not modified."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def raw(path: Path) -> sqlite3.Connection:
    """A plain sqlite3 connection to the file, as another process would have."""
    return sqlite3.connect(path, isolation_level=None)


def assert_intact(path: Path, records: list[TaskRecord]) -> None:
    """A fresh store on ``path`` holds exactly ``records``."""
    with SqliteStore(path) as again:
        assert again.list_tasks() == records


# -- files that are not (our) stores -----------------------------------------------------


def test_a_file_that_is_not_sqlite_is_corrupt_and_left_untouched(db_path: Path) -> None:
    db_path.write_bytes(b"this is not a database, just some text\n" * 200)
    before = digest(db_path)
    with pytest.raises(StoreCorrupt, match="not a SQLite database") as caught:
        open_store(f"sqlite:///{db_path}")
    assert str(db_path) in str(caught.value)
    assert digest(db_path) == before
    assert sorted(p.name for p in db_path.parent.iterdir()) == ["tasks.db"]


def test_a_corrupt_sqlite_file_is_corrupt(tmp_path: Path, db_path: Path) -> None:
    with SqliteStore(db_path) as store:
        store.insert([make_record(payload={"pad": "x" * 500}) for _ in range(50)])
    data = bytearray(db_path.read_bytes())
    data[100:4096] = os.urandom(3996)  # the schema page, past the 100-byte header
    db_path.write_bytes(bytes(data))
    with pytest.raises(StoreCorrupt, match="corrupt") as caught:
        SqliteStore(db_path).open()
    assert str(db_path) in str(caught.value)


def test_another_applications_database_is_refused_untouched(db_path: Path) -> None:
    conn = raw(db_path)
    conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
    conn.close()
    before = digest(db_path)
    with pytest.raises(StoreCorrupt, match=r"not an Arbiter task store.*invoices") as caught:
        SqliteStore(db_path).open()
    assert str(db_path) in str(caught.value)
    assert digest(db_path) == before


def test_a_malformed_schema_version_table_is_corrupt(db_path: Path) -> None:
    SqliteStore(db_path).open().close()
    conn = raw(db_path)
    conn.execute("INSERT INTO schema_version (version) VALUES (1)")
    conn.close()
    with pytest.raises(StoreCorrupt, match="schema_version"):
        SqliteStore(db_path).open()


def test_an_invalid_stored_record_is_corrupt(
    filled: tuple[SqliteStore, list[TaskRecord]], db_path: Path
) -> None:
    store, records = filled
    conn = raw(db_path)
    conn.execute("UPDATE tasks SET record = '{\"task_id\": 1}' WHERE sequence = 2")
    conn.execute("UPDATE tasks SET record = 42 WHERE sequence = 3")
    conn.close()
    assert store.get(records[0].task_id) == records[0]
    for task in records[1:]:
        with pytest.raises(StoreCorrupt, match="invalid") as caught:
            store.get(task.task_id)
        assert str(db_path) in str(caught.value)


def test_an_unknown_state_in_the_file_is_corrupt(
    filled: tuple[SqliteStore, list[TaskRecord]], db_path: Path
) -> None:
    store, _ = filled
    conn = raw(db_path)
    conn.execute("UPDATE tasks SET state = 'LIMBO' WHERE sequence = 1")
    conn.close()
    with pytest.raises(StoreCorrupt, match="LIMBO"):
        store.counts()


def test_a_sequence_counter_behind_the_data_is_corrupt_and_rolled_back(
    filled: tuple[SqliteStore, list[TaskRecord]], db_path: Path
) -> None:
    store, records = filled
    conn = raw(db_path)
    conn.execute("UPDATE counters SET value = 2 WHERE name = 'next_sequence'")
    conn.close()
    with pytest.raises(StoreCorrupt, match="sequence counter"):
        store.insert([make_record(), make_record()])
    assert store.list_tasks() == records


# -- schema versions and migrations ------------------------------------------------------


def test_a_new_file_is_created_at_the_current_schema(db_path: Path) -> None:
    with SqliteStore(db_path) as store:
        assert store.schema_version == SCHEMA_VERSION == len(MIGRATIONS)
    conn = raw(db_path)
    assert conn.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
    conn.close()


def test_an_empty_existing_file_is_initialised(db_path: Path) -> None:
    db_path.touch()
    with SqliteStore(db_path) as store:
        assert store.schema_version == SCHEMA_VERSION
        assert store.insert([make_record()])[0].sequence == 1


def test_reopening_does_not_migrate_again(
    filled: tuple[SqliteStore, list[TaskRecord]], db_path: Path
) -> None:
    store, records = filled
    store.close()
    assert_intact(db_path, records)
    conn = raw(db_path)
    assert conn.execute("SELECT COUNT(*) FROM schema_version").fetchone() == (1,)
    conn.close()


def test_a_version_zero_file_is_migrated(db_path: Path) -> None:
    conn = raw(db_path)
    conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    conn.execute("INSERT INTO schema_version (version) VALUES (0)")
    conn.close()
    with SqliteStore(db_path) as store:
        assert store.schema_version == SCHEMA_VERSION
        records = store.insert([make_record()])
    assert_intact(db_path, records)
    conn = raw(db_path)
    assert conn.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
    conn.close()


def test_a_failing_migration_is_rolled_back(db_path: Path) -> None:
    conn = raw(db_path)
    conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    conn.execute("INSERT INTO schema_version (version) VALUES (0)")
    conn.execute("CREATE TABLE tasks (stray TEXT)")  # in the way of migration 1
    conn.close()
    with pytest.raises(StoreError, match="already exists") as caught:
        SqliteStore(db_path).open()
    assert str(db_path) in str(caught.value)
    conn = raw(db_path)
    assert conn.execute("SELECT version FROM schema_version").fetchall() == [(0,)]
    assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'counters'").fetchall() == []
    conn.close()


def test_a_newer_schema_version_is_refused_untouched(db_path: Path) -> None:
    SqliteStore(db_path).open().close()
    conn = raw(db_path)
    conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    conn.close()
    before = digest(db_path)
    with pytest.raises(StoreVersionError, match=f"schema version {SCHEMA_VERSION + 1}") as caught:
        SqliteStore(db_path).open()
    assert str(db_path) in str(caught.value)
    assert digest(db_path) == before


# -- unavailable storage -----------------------------------------------------------------


def test_a_missing_directory_is_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "no" / "such" / "dir" / "tasks.db"
    with pytest.raises(StoreUnavailable, match="unable to open") as caught:
        SqliteStore(path).open()
    assert str(path) in str(caught.value)


def _chmod_is_effective(directory: Path) -> bool:
    probe = directory / "probe"
    try:
        probe.write_text("x")
    except PermissionError:
        return True
    probe.unlink()
    return False


def test_a_read_only_directory_is_unavailable(tmp_path: Path) -> None:
    directory = tmp_path / "ro"
    directory.mkdir()
    directory.chmod(0o555)
    try:
        if not _chmod_is_effective(directory):
            pytest.skip("permissions are not enforced for this user (root?)")
        path = directory / "tasks.db"
        with pytest.raises(StoreUnavailable) as caught:
            SqliteStore(path).open()
        assert str(path) in str(caught.value)
    finally:
        directory.chmod(0o755)


def test_a_read_only_existing_store_is_unavailable_and_loses_nothing(tmp_path: Path) -> None:
    directory = tmp_path / "ro"
    directory.mkdir()
    path = directory / "tasks.db"
    with SqliteStore(path) as store:
        records = store.insert([make_record(), make_record()])
    directory.chmod(0o555)
    path.chmod(0o444)
    try:
        if not _chmod_is_effective(directory):
            pytest.skip("permissions are not enforced for this user (root?)")
        with pytest.raises(StoreUnavailable) as caught, SqliteStore(path) as store:
            store.insert([make_record()])
        assert str(path) in str(caught.value)
    finally:
        directory.chmod(0o755)
        path.chmod(0o644)
    assert_intact(path, records)


def test_a_locked_database_is_unavailable_after_the_busy_timeout(
    filled: tuple[SqliteStore, list[TaskRecord]], db_path: Path
) -> None:
    store, records = filled
    other = raw(db_path)
    other.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StoreUnavailable, match="locked") as caught:
            store.insert([make_record(key="late")])
        assert str(db_path) in str(caught.value)
        with pytest.raises(StoreUnavailable, match="locked"):
            store.update([records[0].model_copy(update={"state": TaskState.RUNNING})])
        # WAL: readers are not blocked by the writer's lock
        assert store.list_tasks() == records
        # opening while another process writes works too (no migration needed)
        with SqliteStore(db_path, busy_timeout=0.05) as second:
            assert second.counts()[TaskState.QUEUED] == 3
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert store.list_tasks() == records
    assert store.get_by_idempotency_key("late") is None
    (late,) = store.insert([make_record(key="late")])  # the store still works
    assert late.sequence > records[-1].sequence
    store.close()
    assert_intact(db_path, [*records, late])


def test_a_full_disk_is_unavailable_and_rolls_back_the_batch(
    filled: tuple[SqliteStore, list[TaskRecord]], db_path: Path
) -> None:
    store, records = filled
    # SQLite's own size cap gives a real SQLITE_FULL, as a full disk does.
    ((pages,),) = store._query("PRAGMA page_count", ())
    store._query(f"PRAGMA max_page_count = {pages + 1}", ())
    big = [make_record(payload={"pad": "x" * 4000}) for _ in range(20)]
    with pytest.raises(StoreUnavailable, match="full") as caught:
        store.insert(big)
    assert str(db_path) in str(caught.value)
    assert store.statistics()["rollbacks"] == 1
    assert store.list_tasks() == records
    store._query("PRAGMA max_page_count = 1073741823", ())
    stored = store.insert(big)
    assert len(store.list_tasks()) == len(records) + len(stored)


def test_a_database_without_wal_is_unavailable() -> None:
    with pytest.raises(StoreUnavailable, match="WAL"):
        SqliteStore(":memory:").open()  # in-memory databases have no WAL


def test_a_store_that_is_not_open_refuses_pragmas(db_path: Path) -> None:
    store = SqliteStore(db_path)
    with pytest.raises(StoreError, match="not open"):
        store.pragmas()
    assert store.schema_version == 0


# -- settings ----------------------------------------------------------------------------


def test_wal_mode_and_normal_durability_by_default(db_path: Path) -> None:
    with SqliteStore(db_path) as store:
        assert store.pragmas() == {"journal_mode": "wal", "synchronous": 1, "busy_timeout": 5000}
        conn = raw(db_path)  # WAL is a property of the file: another connection sees it
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        conn.close()


def test_fsync_durability_sets_synchronous_full(db_path: Path) -> None:
    with open_store(f"sqlite:///{db_path}?durability=fsync") as store:
        assert isinstance(store, SqliteStore)
        assert store.pragmas()["synchronous"] == 2  # FULL
    with SqliteStore(db_path, durability="fsync", busy_timeout=0.2) as store:
        assert store.pragmas()["synchronous"] == 2
        assert store.pragmas()["busy_timeout"] == 200


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"durability": "sometimes"}, "durability"),
        ({"busy_timeout": -1.0}, "busy_timeout"),
        ({"busy_timeout": float("nan")}, "busy_timeout"),
    ],
)
def test_bad_settings_are_refused(db_path: Path, options: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SqliteStore(db_path, **options)  # type: ignore[arg-type]


# -- several connections on one file -----------------------------------------------------


def test_two_stores_on_one_file_share_one_sequence(db_path: Path) -> None:
    with SqliteStore(db_path) as one, SqliteStore(db_path) as two:
        a = one.insert([make_record()])
        b = two.insert([make_record(), make_record(key="shared")])
        c = one.insert([make_record(), make_record(key="shared")])
        sequences = [r.sequence for r in [*a, *b, c[0]]]
        assert sequences == sorted(set(sequences))
        assert c[1] == b[1]  # the key is unique across connections
        assert one.list_tasks() == two.list_tasks()
        assert len(one.list_tasks()) == 4


def test_columns_mirror_the_record(db_path: Path) -> None:
    record = make_record(key="k", priority=4, type="render", owner="w1")
    with SqliteStore(db_path) as store:
        (stored,) = store.insert([record])
    conn = raw(db_path)
    row = conn.execute(
        "SELECT task_id, sequence, state, priority, type, idempotency_key, owner, created_at "
        "FROM tasks"
    ).fetchone()
    conn.close()
    assert row == (
        str(record.task_id),
        stored.sequence,
        "QUEUED",
        4,
        "render",
        "k",
        "w1",
        "2025-01-02T03:04:05.678901Z",
    )
    assert uuid.UUID(row[0]) == record.task_id


def test_naive_datetimes_are_taken_as_utc_in_columns(db_path: Path) -> None:
    naive = datetime(2025, 6, 7, 8, 9, 10)
    record = make_record(at=naive, next_attempt_at=naive + timedelta(seconds=1))
    with SqliteStore(db_path) as store:
        store.insert([record])
        back = store.get(record.task_id)
    assert back is not None
    assert back.created_at == naive
    conn = raw(db_path)
    row = conn.execute("SELECT created_at, next_attempt_at FROM tasks").fetchone()
    conn.close()
    assert row == ("2025-06-07T08:09:10.000000Z", "2025-06-07T08:09:11.000000Z")
