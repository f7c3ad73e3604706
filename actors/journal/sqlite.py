"""The sqlite task store: one file, WAL mode, batches committed in one transaction each.

Each task is one row: the full record as JSON (``TaskRecord.model_dump_json()``; never
pickle) plus copies of the fields that queries filter or sort on. The JSON is the source of
truth; the columns are derived from it on every write.

``durability="normal"`` (``synchronous=NORMAL``) keeps every commit across a crash or
kill of the process; ``durability="fsync"`` (``synchronous=FULL``) also across a power loss.

The schema is versioned (table ``schema_version``) and migrated on open by the steps in
:data:`MIGRATIONS`; a file from a newer Arbiter is refused, never modified.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import uuid
from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any, Final, Self

from actors.journal._codec import decode_counts, decode_record, decode_version
from actors.journal.store import (
    DEFAULT_LIST_LIMIT,
    PRUNED_BY_DEFAULT,
    SCHEMA_VERSION,
    Durability,
    StoreStatistics,
    TaskStore,
    check_limit,
    check_prune,
    count_commit,
    new_statistics,
    parse_task_id,
)
from messages import (
    InvalidMessage,
    StoreCorrupt,
    StoreError,
    StoreUnavailable,
    TaskRecord,
    TaskState,
    UnknownTask,
)
from messages.task import TERMINAL_STATES

__all__ = ["MIGRATIONS", "SqliteStore"]

MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    # 1: tasks, with the queried fields as columns, and the sequence counter.
    (
        """
        CREATE TABLE tasks (
            task_id          TEXT PRIMARY KEY NOT NULL,
            sequence         INTEGER NOT NULL UNIQUE,
            state            TEXT NOT NULL,
            priority         INTEGER NOT NULL,
            type             TEXT NOT NULL,
            idempotency_key  TEXT UNIQUE,
            next_attempt_at  TEXT,
            owner            TEXT,
            lease_expires_at TEXT,
            created_at       TEXT NOT NULL,
            updated_at       TEXT NOT NULL,
            record           TEXT NOT NULL
        )
        """,
        "CREATE INDEX tasks_state_sequence ON tasks (state, sequence)",
        "CREATE TABLE counters (name TEXT PRIMARY KEY NOT NULL, value INTEGER NOT NULL)",
        "INSERT INTO counters (name, value) VALUES ('next_sequence', 1)",
    ),
    # 2: shared mode (runners, leader leases) is postgres only: nothing to do here.
    (),
    # 3: the index of delayed tasks for promotion is postgres only (shared mode) too.
    (),
)
"""Schema migrations: step ``i`` (0-based) takes a store from version ``i`` to ``i + 1``."""

if len(MIGRATIONS) != SCHEMA_VERSION:  # pragma: no cover - a programming error
    raise RuntimeError("MIGRATIONS must have SCHEMA_VERSION steps")

# Primary result codes (https://sqlite.org/rescode.html).
_SQLITE_CORRUPT: Final = 11
_SQLITE_NOTADB: Final = 26
_UNAVAILABLE_CODES: Final = frozenset(
    {
        3,  # SQLITE_PERM
        5,  # SQLITE_BUSY
        6,  # SQLITE_LOCKED
        7,  # SQLITE_NOMEM
        8,  # SQLITE_READONLY
        9,  # SQLITE_INTERRUPT
        10,  # SQLITE_IOERR
        13,  # SQLITE_FULL
        14,  # SQLITE_CANTOPEN
        15,  # SQLITE_PROTOCOL
    }
)

_TERMINAL: Final = tuple(sorted(state.value for state in TERMINAL_STATES))
_INSERT_SQL: Final = """
    INSERT INTO tasks (
        task_id, sequence, state, priority, type, idempotency_key,
        next_attempt_at, owner, lease_expires_at, created_at, updated_at, record
    ) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT DO NOTHING
"""
_UPDATE_SQL: Final = """
    UPDATE tasks SET
        state = ?, priority = ?, type = ?, idempotency_key = ?,
        next_attempt_at = ?, owner = ?, lease_expires_at = ?, created_at = ?,
        updated_at = ?, record = ?
    WHERE task_id = ?
    RETURNING sequence
"""
_RECOVERABLE_SQL: Final = f"""
    SELECT record FROM tasks
    WHERE state NOT IN ({", ".join("?" * len(_TERMINAL))})
    ORDER BY priority DESC, sequence
"""


def _timestamp(value: datetime | None) -> str | None:
    """A sortable UTC text form for a column (naive datetimes are taken as UTC)."""
    if value is None:
        return None
    offset = value.utcoffset()
    if offset:
        value = value - offset
    return value.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


class SqliteStore(TaskStore):
    """Task records in one SQLite file (stdlib ``sqlite3``), in WAL mode.

    Owned by one thread, which writes; every call holds one lock, so another thread may
    read (``status``) and sees whole batches only. Several processes may share the file:
    each batch takes the write lock up front (``BEGIN IMMEDIATE``) and waits for it up to
    ``busy_timeout`` seconds, then raises :class:`~messages.StoreUnavailable`.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        durability: Durability = "normal",
        busy_timeout: float = 5.0,
        url: str | None = None,
    ) -> None:
        if durability not in ("normal", "fsync"):
            raise ValueError(f"durability must be 'normal' or 'fsync', got {durability!r}")
        if not busy_timeout >= 0:  # also refuses NaN
            raise ValueError(f"busy_timeout must be >= 0 seconds, got {busy_timeout!r}")
        self._path = os.fspath(path)
        self._durability: Durability = durability
        self._busy_timeout = float(busy_timeout)
        self._url = url if url is not None else f"sqlite:///{self._path}"
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._version = 0
        self._stats: StoreStatistics = new_statistics()

    # -- lifecycle -----------------------------------------------------------------------

    def open(self) -> Self:
        """Open (create, migrate) the file; raise StoreCorrupt/Unavailable/VersionError."""
        with self._lock:
            if self._conn is not None:
                return self
            try:
                conn = sqlite3.connect(
                    self._path,
                    timeout=self._busy_timeout,
                    isolation_level=None,  # we issue BEGIN/COMMIT ourselves
                    check_same_thread=False,  # the lock serialises every use
                )
            except sqlite3.Error as exc:
                raise self._translate(exc, "opening") from exc
            try:
                version = self._prepare(conn)
            except BaseException:
                conn.close()
                raise
            self._conn = conn
            self._version = version
        return self

    def _prepare(self, conn: sqlite3.Connection) -> int:
        """Check the file, set the pragmas, migrate; return the schema version."""
        try:
            # Read first, so a foreign or newer file is refused before anything is written.
            version = self._read_version(conn)
            (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
            if str(mode).lower() != "wal":
                raise StoreUnavailable(
                    f"sqlite store {self._path}: cannot use WAL mode (journal_mode={mode})"
                )
            sync = "FULL" if self._durability == "fsync" else "NORMAL"
            conn.execute(f"PRAGMA synchronous = {sync}")
            if version < SCHEMA_VERSION:
                version = self._migrate(conn)
        except sqlite3.Error as exc:
            raise self._translate(exc, "opening") from exc
        return version

    def _read_version(self, conn: sqlite3.Connection) -> int:
        tables = {
            name
            for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            if not name.startswith("sqlite_")
        }
        if "schema_version" not in tables:
            if tables:
                raise StoreCorrupt(
                    f"{self._path} is a SQLite database but not an Arbiter task store "
                    f"(no schema_version table; it has {', '.join(sorted(tables))})"
                )
            return 0
        rows = conn.execute("SELECT version FROM schema_version").fetchall()
        return decode_version(rows, self._path)

    def _migrate(self, conn: sqlite3.Connection) -> int:
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = self._read_version(conn)  # again, under the write lock
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            conn.execute(
                "INSERT INTO schema_version (version) "
                "SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM schema_version)"
            )
            for number in range(version + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[number - 1]:
                    conn.execute(statement)
                conn.execute("UPDATE schema_version SET version = ?", (number,))
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            raise
        return SCHEMA_VERSION

    def close(self) -> None:
        """Close the connection (checkpointing the WAL). Idempotent."""
        with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                conn.close()

    @property
    def is_open(self) -> bool:
        """True between ``open()`` and ``close()``."""
        return self._conn is not None

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"store {self.url} is not open")
        return self._conn

    # -- writes --------------------------------------------------------------------------

    def apply(
        self, inserts: Sequence[TaskRecord], updates: Sequence[TaskRecord]
    ) -> list[TaskRecord]:
        """Insert then update in ONE transaction; return the inserted records."""
        with self._lock:
            conn = self._connection()
            if not inserts and not updates:
                return []
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise self._translate(exc, "starting a transaction") from exc
            try:
                stored, inserted = self._insert_all(conn, inserts)
                for record in updates:
                    self._update_one(conn, record)
                conn.execute("COMMIT")
            except BaseException as exc:
                _rollback(conn)
                self._stats["rollbacks"] += 1
                if isinstance(exc, sqlite3.Error):
                    raise self._translate(exc, "writing") from exc
                raise
            count_commit(self._stats, inserted, len(inserts) - inserted, len(updates))
            return stored

    def prune(
        self,
        before: datetime,
        states: Collection[TaskState] = PRUNED_BY_DEFAULT,
        limit: int = DEFAULT_LIST_LIMIT,
    ) -> int:
        """Delete finished tasks updated before ``before`` (see TaskStore.prune), oldest
        sequences first, in one transaction."""
        checked = check_prune(before, states, limit)
        if not checked or limit == 0:
            self._connection()
            return 0
        marks = ", ".join("?" * len(checked))
        sql = (
            "DELETE FROM tasks WHERE task_id IN (SELECT task_id FROM tasks "
            f"WHERE state IN ({marks}) AND updated_at < ? ORDER BY sequence LIMIT ?)"
        )
        params = (*(state.value for state in checked), _timestamp(before), limit)
        with self._lock:
            conn = self._connection()
            try:
                conn.execute("BEGIN IMMEDIATE")
                deleted = conn.execute(sql, params).rowcount
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                _rollback(conn)
                raise self._translate(exc, "pruning finished tasks") from exc
            return max(0, deleted)

    def _insert_all(
        self, conn: sqlite3.Connection, records: Sequence[TaskRecord]
    ) -> tuple[list[TaskRecord], int]:
        if not records:
            return [], 0
        (next_sequence,) = conn.execute(
            "SELECT value FROM counters WHERE name = 'next_sequence'"
        ).fetchone()
        first = next_sequence
        stored: list[TaskRecord] = []
        for record in records:
            candidate = record.model_copy(update={"sequence": next_sequence})
            cursor = conn.execute(_INSERT_SQL, _row(candidate))
            if cursor.rowcount == 1:
                stored.append(candidate)
                next_sequence += 1
            else:
                stored.append(self._existing(conn, record))
        if next_sequence != first:
            conn.execute(
                "UPDATE counters SET value = ? WHERE name = 'next_sequence'", (next_sequence,)
            )
        return stored, next_sequence - first

    def _existing(self, conn: sqlite3.Connection, record: TaskRecord) -> TaskRecord:
        """The stored record an insert conflicted with (same id, else same key)."""
        row = conn.execute(
            "SELECT record FROM tasks WHERE task_id = ?", (str(record.task_id),)
        ).fetchone()
        key = record.spec.idempotency_key
        if row is None and key is not None:
            row = conn.execute(
                "SELECT record FROM tasks WHERE idempotency_key = ?", (key,)
            ).fetchone()
        if row is None:
            raise StoreCorrupt(
                f"{self._path}: the sequence counter is behind the stored tasks "
                f"(insert of task {record.task_id} conflicted on its sequence)"
            )
        return decode_record(row[0], self._path)

    def _update_one(self, conn: sqlite3.Connection, record: TaskRecord) -> None:
        try:
            rows = conn.execute(_UPDATE_SQL, _row(record, for_update=True)).fetchall()
        except sqlite3.IntegrityError as exc:
            raise InvalidMessage(
                f"idempotency key {record.spec.idempotency_key!r} of task "
                f"{record.task_id} already belongs to another task"
            ) from exc
        if not rows:
            raise UnknownTask(f"no task {record.task_id} to update")
        (sequence,) = rows[0]
        if sequence != record.sequence:  # the store owns the sequence: keep the stored one
            fixed = record.model_copy(update={"sequence": sequence})
            conn.execute(
                "UPDATE tasks SET record = ? WHERE task_id = ?",
                (fixed.model_dump_json(), str(record.task_id)),
            )

    # -- reads ---------------------------------------------------------------------------

    def get(self, task_id: uuid.UUID | str) -> TaskRecord | None:
        """The stored record with this id, or None."""
        key = parse_task_id(task_id)
        if key is None:
            with self._lock:
                self._connection()
            return None
        return self._one("SELECT record FROM tasks WHERE task_id = ?", (str(key),))

    def get_by_idempotency_key(self, key: str) -> TaskRecord | None:
        """The stored record with this idempotency key, or None."""
        return self._one("SELECT record FROM tasks WHERE idempotency_key = ?", (key,))

    def list_tasks(
        self,
        state: TaskState | None = None,
        limit: int = DEFAULT_LIST_LIMIT,
        *,
        after_sequence: int = 0,
    ) -> list[TaskRecord]:
        """Up to ``limit`` records (of ``state``, if given) ordered by sequence."""
        check_limit(limit, after_sequence)
        if state is None:
            return self._many(
                "SELECT record FROM tasks WHERE sequence > ? ORDER BY sequence LIMIT ?",
                (after_sequence, limit),
            )
        return self._many(
            "SELECT record FROM tasks WHERE state = ? AND sequence > ? ORDER BY sequence LIMIT ?",
            (TaskState(state).value, after_sequence, limit),
        )

    def list_heads(
        self,
        limit: int = DEFAULT_LIST_LIMIT,
        *,
        after_sequence: int = 0,
        state: TaskState | None = None,
    ) -> list[tuple[int, uuid.UUID, TaskState]]:
        """``(sequence, task_id, state)`` by sequence, read from the columns (no record
        JSON decoded): the scan a runner makes for tasks other processes stored."""
        check_limit(limit, after_sequence)
        if state is None:
            sql = "SELECT sequence, task_id, state FROM tasks WHERE sequence > ?"
            params: tuple[object, ...] = (after_sequence, limit)
        else:  # the (state, sequence) index
            sql = "SELECT sequence, task_id, state FROM tasks WHERE state = ? AND sequence > ?"
            params = (TaskState(state).value, after_sequence, limit)
        rows = self._query(sql + " ORDER BY sequence LIMIT ?", params)
        try:
            return [(int(seq), uuid.UUID(tid), TaskState(state)) for seq, tid, state in rows]
        except (TypeError, ValueError) as exc:
            raise StoreCorrupt(f"{self._path}: unreadable task row: {exc}") from exc

    def counts(self) -> dict[TaskState, int]:
        """How many tasks are in each state."""
        rows = self._query("SELECT state, COUNT(*) FROM tasks GROUP BY state", ())
        return decode_counts(rows, f"{self._path}: unknown task state")

    def recoverable(self) -> list[TaskRecord]:
        """Every non-terminal task, by (priority desc, sequence asc)."""
        return self._many(_RECOVERABLE_SQL, _TERMINAL)

    def _query(self, sql: str, params: Sequence[object]) -> list[tuple[Any, ...]]:
        with self._lock:
            conn = self._connection()
            try:
                return conn.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise self._translate(exc, "reading") from exc

    def _one(self, sql: str, params: Sequence[object]) -> TaskRecord | None:
        rows = self._query(sql, params)
        return decode_record(rows[0][0], self._path) if rows else None

    def _many(self, sql: str, params: Sequence[object]) -> list[TaskRecord]:
        return [decode_record(row[0], self._path) for row in self._query(sql, params)]

    # -- introspection -------------------------------------------------------------------

    @property
    def path(self) -> str:
        """The database file's path, as given."""
        return self._path

    @property
    def durability(self) -> Durability:
        """``normal`` (survives a process crash) or ``fsync`` (survives a power loss)."""
        return self._durability

    @property
    def schema_version(self) -> int:
        """The file's schema version once open (0 before)."""
        return self._version

    @property
    def url(self) -> str:
        """The store's URL (a sqlite URL holds no password, but redact anyway)."""
        from actors.journal.store import redact_url

        return redact_url(self._url)

    def statistics(self) -> StoreStatistics:
        """Counters since this object was created."""
        with self._lock:
            return dict(self._stats)

    @property
    def external_writers(self) -> bool:
        """A file: other processes may add tasks (see TaskStore.external_writers)."""
        return True

    def last_sequence(self) -> int:
        """The highest sequence given so far (0 for an empty store)."""
        ((next_sequence,),) = self._query(
            "SELECT value FROM counters WHERE name = 'next_sequence'", ()
        )
        return int(next_sequence) - 1

    def pragmas(self) -> dict[str, object]:
        """The connection's effective settings: journal_mode, synchronous, busy_timeout."""
        found: dict[str, object] = {}
        for name in ("journal_mode", "synchronous", "busy_timeout"):
            ((value,),) = self._query(f"PRAGMA {name}", ())
            found[name] = value
        return found

    # -- errors --------------------------------------------------------------------------

    def _translate(self, exc: sqlite3.Error, action: str) -> StoreError:
        """The Arbiter error for a sqlite3 error, naming the file and the cause."""
        code = getattr(exc, "sqlite_errorcode", None)
        name = getattr(exc, "sqlite_errorname", None) or type(exc).__name__
        primary = code & 0xFF if isinstance(code, int) else None
        detail = f"{exc} [{name}]"
        if primary == _SQLITE_NOTADB:
            return StoreCorrupt(f"{self._path} is not a SQLite database: {detail}")
        if primary == _SQLITE_CORRUPT:
            return StoreCorrupt(f"{self._path} is a corrupt SQLite database: {detail}")
        if primary in _UNAVAILABLE_CODES:
            return StoreUnavailable(f"sqlite store {self._path} failed {action}: {detail}")
        return StoreError(f"sqlite store {self._path} failed {action}: {detail}")


def _row(record: TaskRecord, *, for_update: bool = False) -> tuple[object, ...]:
    """The column values for ``record``: insert order, or update order with the id last."""
    values = (
        record.state.value,
        record.spec.priority,
        record.spec.type,
        record.spec.idempotency_key,
        _timestamp(record.next_attempt_at),
        record.owner,
        _timestamp(record.lease_expires_at),
        _timestamp(record.created_at),
        _timestamp(record.updated_at),
        record.model_dump_json(),
    )
    if for_update:
        return (*values, str(record.task_id))
    return (str(record.task_id), record.sequence, *values)


def _rollback(conn: sqlite3.Connection) -> None:
    """Roll back the open transaction, if sqlite has not already done so."""
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
