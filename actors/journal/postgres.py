"""The PostgreSQL task store: many runner processes on many hosts share one database.

Each task is one row of table ``tasks``: the full record as JSON (``TaskRecord``'s own
JSON, in a ``json`` column, kept verbatim; never pickle) plus copies of the fields that
queries filter or sort on. As in the sqlite store, the JSON is the source of truth and the
columns are derived from it on every write.

URL: ``postgresql://user:password@host:port/dbname?schema=NAME&sslmode=...`` (or
``postgres://``). ``schema`` (default ``public``) names the PostgreSQL schema that holds
the tables; it is created when missing. Every other query parameter goes to libpq as is
(``sslmode``, ``application_name``, ``connect_timeout``, ``passfile``, ...). Without
``connect_timeout`` in the URL, connecting gives up after :data:`DEFAULT_CONNECT_TIMEOUT`
seconds. What the URL leaves out, libpq takes from the environment (``PGHOST``,
``PGPORT``, ``PGUSER``, ``PGPASSWORD``, ``PGDATABASE``, ``PGPASSFILE``...): with
``postgresql:///?schema=arbiter`` no secret needs to be in the URL at all.

Nothing hangs on a slow or broken network: ``statement_timeout`` (our own parameter, in
seconds, default :data:`DEFAULT_STATEMENT_TIMEOUT`; 0 turns it off) bounds every statement
on the server, lock waits included; TCP keepalives and ``tcp_user_timeout`` (libpq's,
defaults below unless the URL sets them) find a dead peer. Such a failure is a
``StoreUnavailable``, which the journal retries (see ``actors.journal.actor``). A session
idle inside a transaction for 10 s (a runner paused mid-transaction would otherwise keep
its locked rows from the other runners' claims and rescues) is ended by the server.

Sequences come from an identity column's sequence (``nextval``), so they are unique and
increasing across every process, and never reused: a rolled-back batch or a duplicate
leaves a gap. Writes are batches in one transaction each, with one ``INSERT ... SELECT FROM
unnest(...) ON CONFLICT DO NOTHING`` for all the inserts of a batch.

The schema is versioned (table ``schema_version``) and migrated on open, under an advisory
lock so that processes opening together do not race; a schema from a newer Arbiter is
refused, never modified.

The store is *shared* (``shared`` is True): many runners use it at once. A runner
``claim``s unowned QUEUED tasks (``SELECT ... FOR UPDATE SKIP LOCKED``: two claimers never
get the same task), which sets ``owner`` and ``lease_expires_at`` (the database's clock);
it ``renew``s its leases, and any runner ``rescue_expired``s the tasks of a runner that
stopped renewing. Updates of a leased record are *fenced*: refused when the stored owner
is another one, or the stored attempt is newer (:meth:`PostgresStore.apply_fenced`). A
transaction that makes tasks claimable sends ``NOTIFY`` on the schema's channel, so idle
runners wake at once (``listen``). Tables ``runners`` (heartbeats, for ``arbiter status``)
and ``leaders`` (leader leases) come with schema version 2.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Self, TypeVar
from urllib.parse import unquote, urlsplit

import psycopg
import psycopg.errors
import structlog
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import TupleRow
from psycopg_pool import ConnectionPool
from psycopg_pool.base import AttemptWithBackoff

from actors.journal._codec import decode_counts, decode_record, decode_version
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
    redact_url,
)
from messages import (
    Attempt,
    InvalidMessage,
    StoreCorrupt,
    StoreError,
    StoreUnavailable,
    TaskRecord,
    TaskState,
    UnknownTask,
)
from messages.task import TERMINAL_STATES

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_SCHEMA",
    "DEFAULT_STATEMENT_TIMEOUT",
    "MIGRATIONS",
    "PostgresStore",
    "channel_name",
]

_log = structlog.get_logger("arbiter.store")

DEFAULT_SCHEMA: Final = "public"
DEFAULT_CONNECT_TIMEOUT: Final = 5.0
"""Seconds to wait for a connection (libpq ``connect_timeout``, and the pool's wait)."""
DEFAULT_STATEMENT_TIMEOUT: Final = 30.0
"""Seconds a statement may run (or wait for a lock) before the server cancels it."""
_IDLE_IN_TRANSACTION_MS: Final = 10_000  # a session idle this long inside a transaction ends
_TCP_DEFAULTS: Final = {  # libpq: probe an idle connection after 10 s, drop after 3 misses
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "5",
    "keepalives_count": "3",
    "tcp_user_timeout": "30000",  # ms unacknowledged before the kernel drops the connection
}

_MAX_IDENTIFIER_BYTES: Final = 63  # PostgreSQL truncates longer names (NAMEDATALEN - 1)
_RETRIES: Final = 3  # attempts of a batch that lost a deadlock or serialization race

MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    # 1: tasks, with the queried fields as columns; the identity column is the sequence.
    (
        """
        CREATE TABLE {schema}.tasks (
            task_id          uuid PRIMARY KEY,
            sequence         bigint GENERATED BY DEFAULT AS IDENTITY NOT NULL UNIQUE,
            state            text NOT NULL,
            priority         integer NOT NULL,
            type             text NOT NULL,
            idempotency_key  text UNIQUE,
            next_attempt_at  timestamptz,
            owner            text,
            lease_expires_at timestamptz,
            created_at       timestamptz NOT NULL,
            updated_at       timestamptz NOT NULL,
            record           json NOT NULL
        )
        """,
        "CREATE INDEX tasks_state_sequence ON {schema}.tasks (state, sequence)",
        "CREATE INDEX tasks_live_priority_sequence ON {schema}.tasks (priority DESC, sequence) "
        "WHERE state NOT IN ('CANCELLED', 'COMPLETED', 'DEAD_LETTERED')",
    ),
    # 2: shared mode: runners and their heartbeats, leader leases, claim and lease indexes.
    # IF NOT EXISTS: a store an operator set back to version 1 migrates again cleanly.
    (
        """
        CREATE TABLE IF NOT EXISTS {schema}.runners (
            runner_id    text PRIMARY KEY,
            host         text NOT NULL,
            pid          integer NOT NULL,
            started_at   timestamptz NOT NULL DEFAULT now(),
            heartbeat_at timestamptz NOT NULL DEFAULT now()
        )
        """,
        """
        CREATE TABLE IF NOT EXISTS {schema}.leaders (
            name             text PRIMARY KEY,
            owner            text NOT NULL,
            acquired_at      timestamptz NOT NULL DEFAULT now(),
            lease_expires_at timestamptz NOT NULL
        )
        """,
        "CREATE INDEX IF NOT EXISTS tasks_claimable ON {schema}.tasks (priority DESC, sequence) "
        "WHERE owner IS NULL AND state IN ('QUEUED', 'RETRY_WAIT')",
        "CREATE INDEX IF NOT EXISTS tasks_lease ON {schema}.tasks (lease_expires_at) "
        "WHERE lease_expires_at IS NOT NULL "
        "AND state NOT IN ('CANCELLED', 'COMPLETED', 'DEAD_LETTERED')",
        "CREATE INDEX IF NOT EXISTS tasks_owner ON {schema}.tasks (owner) "
        "WHERE owner IS NOT NULL AND state NOT IN ('CANCELLED', 'COMPLETED', 'DEAD_LETTERED')",
        # Columns for fencing (the attempt) and claiming (the required capabilities): no
        # query reads the JSON, which json operators refuse when it has a \u0000 escape.
        "ALTER TABLE {schema}.tasks ADD COLUMN IF NOT EXISTS attempt integer",
        "ALTER TABLE {schema}.tasks "
        "ADD COLUMN IF NOT EXISTS required jsonb NOT NULL DEFAULT '[]'::jsonb",
        "UPDATE {schema}.tasks SET attempt = (record->>'attempt')::integer, "
        "required = COALESCE((record->'spec'->'required_capabilities')::jsonb, '[]'::jsonb) "
        "WHERE attempt IS NULL AND strpos(record::text, '\\u0000') = 0",
        # Unfinished tasks of a version 1 runner (owner set, no lease) get an expired
        # lease: the first rescue frees them (counting an interrupted attempt).
        "UPDATE {schema}.tasks SET lease_expires_at = now() "
        "WHERE owner IS NOT NULL AND lease_expires_at IS NULL "
        "AND state NOT IN ('CANCELLED', 'COMPLETED', 'DEAD_LETTERED')",
    ),
    # 3: delayed tasks (PENDING until their run time), found by run time for promotion;
    # finished ones, found by age for pruning.
    (
        "CREATE INDEX IF NOT EXISTS tasks_delayed ON {schema}.tasks (next_attempt_at) "
        "WHERE owner IS NULL AND state = 'PENDING'",
        "CREATE INDEX IF NOT EXISTS tasks_finished ON {schema}.tasks (updated_at) "
        "WHERE state IN ('CANCELLED', 'COMPLETED', 'DEAD_LETTERED')",
    ),
)
"""Schema migrations: step ``i`` (0-based) takes a store from version ``i`` to ``i + 1``.

Each statement is a :class:`psycopg.sql.SQL` template; ``{schema}`` is the store's schema.
"""

if len(MIGRATIONS) != SCHEMA_VERSION:  # pragma: no cover - a programming error
    raise RuntimeError("MIGRATIONS must have SCHEMA_VERSION steps")

_TERMINAL: Final = sorted(state.value for state in TERMINAL_STATES)
_INDEXED_TERMINAL: Final = ("CANCELLED", "COMPLETED", "DEAD_LETTERED")  # in MIGRATIONS[0, 1]
if list(_INDEXED_TERMINAL) != _TERMINAL:  # pragma: no cover - a programming error
    raise RuntimeError("the partial indexes of MIGRATIONS must list the terminal states")
_NOT_TERMINAL: Final = "state NOT IN ({})".format(", ".join(f"'{s}'" for s in _INDEXED_TERMINAL))
_CLAIMABLE: Final = (
    "owner IS NULL AND (state = 'QUEUED' OR (state = 'RETRY_WAIT' AND next_attempt_at <= now()))"
)

_COLUMNS: Final = (
    "task_id, sequence, state, priority, type, idempotency_key, "
    "next_attempt_at, owner, lease_expires_at, created_at, updated_at, record, attempt, required"
)
_ARRAYS: Final = (  # binary parameters (%b): no escaping of the JSON text inside arrays
    "%b::uuid[], %b::bigint[], %b::text[], %b::integer[], %b::text[], %b::text[], "
    "%b::timestamptz[], %b::text[], %b::timestamptz[], %b::timestamptz[], "
    "%b::timestamptz[], %b::text[]::json[], %b::integer[], %b::text[]::jsonb[]"
)
_TEMPLATES: Final = {
    # The NOTIFY of new claimable work rides in the same statement (one round trip less;
    # notifications of one transaction with the same channel and payload are folded).
    "insert": f"""
        WITH inserted AS (
            INSERT INTO {{schema}}.tasks ({_COLUMNS})
            SELECT {_COLUMNS} FROM unnest({_ARRAYS}) AS batch ({_COLUMNS})
            ORDER BY batch.sequence
            ON CONFLICT DO NOTHING
            RETURNING sequence
        )
        SELECT sequence, pg_notify(%s, '') FROM inserted
    """,
    "existing": """
        SELECT record::text, lease_expires_at FROM {schema}.tasks
        WHERE task_id = ANY(%s::uuid[]) OR idempotency_key = ANY(%s::text[])
    """,
    "update_check": """
        SELECT task_id, sequence, idempotency_key, owner, attempt, lease_expires_at
        FROM {schema}.tasks
        WHERE task_id = ANY(%s::uuid[]) OR idempotency_key = ANY(%s::text[])
        ORDER BY task_id
        FOR UPDATE
    """,
    "update_one": """
        UPDATE {schema}.tasks SET
            state = %s, priority = %s, type = %s, idempotency_key = %s,
            next_attempt_at = %s, owner = %s, lease_expires_at = %s, created_at = %s,
            updated_at = %s, record = %s::json, attempt = %s, required = %s::jsonb
        WHERE task_id = %s
    """,
    "update_many": f"""
        UPDATE {{schema}}.tasks AS t SET
            state = b.state, priority = b.priority, type = b.type,
            idempotency_key = b.idempotency_key, next_attempt_at = b.next_attempt_at,
            owner = b.owner, lease_expires_at = b.lease_expires_at,
            created_at = b.created_at, updated_at = b.updated_at, record = b.record,
            attempt = b.attempt, required = b.required
        FROM unnest({_ARRAYS}) AS b ({_COLUMNS})
        WHERE t.task_id = b.task_id
    """,
    "nextval": """
        SELECT nextval(pg_get_serial_sequence(%s, 'sequence')) FROM generate_series(1, %s)
    """,
    "get": "SELECT record::text, lease_expires_at FROM {schema}.tasks WHERE task_id = %s",
    "get_by_key": """
        SELECT record::text, lease_expires_at FROM {schema}.tasks WHERE idempotency_key = %s
    """,
    "list_all": """
        SELECT record::text, lease_expires_at FROM {schema}.tasks
        WHERE sequence > %s ORDER BY sequence LIMIT %s
    """,
    "list_state": """
        SELECT record::text, lease_expires_at FROM {schema}.tasks
        WHERE state = %s AND sequence > %s ORDER BY sequence LIMIT %s
    """,
    "counts": "SELECT state, count(*) FROM {schema}.tasks GROUP BY state",
    "recoverable": f"""
        SELECT record::text, lease_expires_at FROM {{schema}}.tasks
        WHERE {_NOT_TERMINAL}
        ORDER BY priority DESC, sequence
    """,
    # -- shared mode (schema version 2) --
    "cancel_unowned": """
        SELECT record::text, now() FROM {schema}.tasks
        WHERE task_id = %s AND owner IS NULL AND state IN ('PENDING', 'QUEUED', 'RETRY_WAIT')
        FOR UPDATE
    """,
    "promote_due": """
        SELECT record::text, now() FROM {schema}.tasks
        WHERE owner IS NULL AND state = 'PENDING' AND next_attempt_at <= now()
        ORDER BY next_attempt_at
        LIMIT %s
        FOR UPDATE SKIP LOCKED
    """,
    "claim_any": f"""
        SELECT record::text, now() FROM {{schema}}.tasks AS t
        WHERE {_CLAIMABLE}
        ORDER BY priority DESC, sequence
        LIMIT %s
        FOR UPDATE OF t SKIP LOCKED
    """,
    "renew": f"""
        UPDATE {{schema}}.tasks AS t SET lease_expires_at = now() + make_interval(secs => %s)
        FROM (
            SELECT task_id FROM {{schema}}.tasks
            WHERE owner = %s AND {_NOT_TERMINAL}
            ORDER BY task_id
            FOR UPDATE
        ) AS mine
        WHERE t.task_id = mine.task_id
    """,
    "expired": f"""
        SELECT record::text, owner, now() FROM {{schema}}.tasks
        WHERE lease_expires_at < now() AND owner IS NOT NULL AND {_NOT_TERMINAL}
        ORDER BY lease_expires_at
        LIMIT %s
        FOR UPDATE SKIP LOCKED
    """,
    "owned": f"""
        SELECT record::text, owner, now() FROM {{schema}}.tasks
        WHERE owner = %s AND {_NOT_TERMINAL}
        ORDER BY task_id
        FOR UPDATE
    """,
    "notify": "SELECT pg_notify(%s, '')",
    "register_runner": """
        INSERT INTO {schema}.runners (runner_id, host, pid) VALUES (%s, %s, %s)
        ON CONFLICT (runner_id) DO UPDATE SET
            host = EXCLUDED.host, pid = EXCLUDED.pid, started_at = now(), heartbeat_at = now()
    """,
    "heartbeat_runner": """
        INSERT INTO {schema}.runners (runner_id, host, pid) VALUES (%s, %s, %s)
        ON CONFLICT (runner_id) DO UPDATE SET heartbeat_at = now()
    """,
    "live_runners": f"""
        SELECT r.runner_id, r.host, r.pid, r.started_at, r.heartbeat_at,
               extract(epoch FROM now() - r.heartbeat_at)::float8,
               (SELECT count(*) FROM {{schema}}.tasks AS t
                WHERE t.owner = r.runner_id AND t.{_NOT_TERMINAL})
        FROM {{schema}}.runners AS r
        WHERE r.heartbeat_at >= now() - make_interval(secs => %s)
        ORDER BY r.runner_id
    """,
    "deregister_runner": "DELETE FROM {schema}.runners WHERE runner_id = %s",
    "try_lead": """
        INSERT INTO {schema}.leaders AS l (name, owner, lease_expires_at)
        VALUES (%s, %s, now() + make_interval(secs => %s))
        ON CONFLICT (name) DO UPDATE SET
            owner = EXCLUDED.owner,
            lease_expires_at = EXCLUDED.lease_expires_at,
            acquired_at = CASE WHEN l.owner = EXCLUDED.owner THEN l.acquired_at ELSE now() END
        WHERE l.owner = EXCLUDED.owner OR l.lease_expires_at < now()
        RETURNING owner
    """,
    "leader": "SELECT owner FROM {schema}.leaders WHERE name = %s AND lease_expires_at >= now()",
    "resign": "DELETE FROM {schema}.leaders WHERE name = %s AND owner = %s",
}

# Errors that mean "the database cannot be used now", beyond psycopg.OperationalError.
_UNAVAILABLE: Final = (
    psycopg.OperationalError,
    psycopg.InterfaceError,
    psycopg.errors.InsufficientPrivilege,
    psycopg.errors.ReadOnlySqlTransaction,
    psycopg.errors.CannotConnectNow,
    # The server ended a session left idle inside a transaction (the runner was paused):
    # an InternalError to psycopg, a lost connection to us.
    psycopg.errors.IdleInTransactionSessionTimeout,
)
_RETRYABLE: Final = (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure)
_FENCE_LOG_LIMIT: Final = 20  # store.update_fenced lines per batch (the rest are counted)
_LISTEN_POLL_S: Final = 0.25  # how often the listener thread looks at its stop flag
_LISTEN_BACKOFF_S: Final = (0.1, 5.0)  # reconnection delay: first, most
_CLAIMABLE_STATES: Final = frozenset({TaskState.QUEUED, TaskState.RETRY_WAIT})
_NOT_STARTED: Final = frozenset({TaskState.PENDING, TaskState.QUEUED, TaskState.ASSIGNED})

_T = TypeVar("_T")


def channel_name(schema: str) -> str:
    """The LISTEN/NOTIFY channel of a schema's store: ``arbiter_<schema>_<hash>``, a valid
    identifier of at most 63 bytes whatever the schema's name."""
    clean = re.sub(r"[^a-z0-9_]", "_", schema.lower())[:40]
    digest = hashlib.sha256(schema.encode()).hexdigest()[:8]
    return f"arbiter_{clean}_{digest}"


def _utc(value: datetime | None) -> datetime | None:
    return None if value is None else value.astimezone(UTC)


@dataclass(frozen=True)
class _Target:
    """What a postgres URL names: libpq's connection string and our own options."""

    conninfo: str
    schema: str
    connect_timeout: float
    secrets: tuple[str, ...]
    statement_timeout: float = DEFAULT_STATEMENT_TIMEOUT


def _parse_url(url: str, schema: str | None, connect_timeout: float | None) -> _Target:
    """Split a store URL into libpq's URL and the ``schema`` option; validate both."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower().partition("+")[0]  # postgresql+psycopg:// as well
    if scheme not in ("postgresql", "postgres"):
        raise ValueError(f"not a postgres store URL: {redact_url(url)!r}")
    kept: list[str] = []
    statement_timeout = DEFAULT_STATEMENT_TIMEOUT
    for pair in parts.query.split("&") if parts.query else []:
        key, _, value = pair.partition("=")
        if unquote(key) == "schema":
            if schema is None:
                schema = unquote(value)
        elif unquote(key) == "statement_timeout":
            try:
                statement_timeout = float(unquote(value))
            except ValueError:
                raise ValueError(f"statement_timeout must be seconds, got {value!r}") from None
            if not statement_timeout >= 0:  # also refuses NaN
                raise ValueError(f"statement_timeout must be >= 0 seconds, got {value!r}")
        elif pair:
            kept.append(pair)
    # (not urlunsplit: it drops the "//" of an empty host, which libpq then cannot read)
    query = "&".join(kept)
    conninfo = f"postgresql://{parts.netloc}{parts.path}" + (f"?{query}" if query else "")
    secrets = {unquote(parts.password)} if parts.password else set()
    if os.environ.get("PGPASSWORD"):
        secrets.add(os.environ["PGPASSWORD"])
    try:
        params = conninfo_to_dict(conninfo)
    except psycopg.Error as exc:
        message = _scrub(str(exc).strip(), secrets)
        raise ValueError(f"bad postgres store URL {redact_url(url)!r}: {message}") from None
    password = params.get("password")
    if isinstance(password, str) and password:
        secrets.add(password)
    if schema is None:
        schema = DEFAULT_SCHEMA
    if not schema or len(schema.encode()) > _MAX_IDENTIFIER_BYTES or "\x00" in schema:
        raise ValueError(
            f"schema must be 1 to {_MAX_IDENTIFIER_BYTES} bytes (no NUL), got {schema!r}"
        )
    if connect_timeout is None:
        given = params.get("connect_timeout")
        try:
            connect_timeout = float(given) if given is not None else DEFAULT_CONNECT_TIMEOUT
        except ValueError:
            raise ValueError(f"connect_timeout must be seconds, got {given!r}") from None
    if not connect_timeout > 0:  # also refuses NaN
        raise ValueError(f"connect_timeout must be > 0 seconds, got {connect_timeout!r}")
    return _Target(
        conninfo,
        schema,
        connect_timeout,
        tuple(sorted(secrets, key=len)[::-1]),
        statement_timeout,
    )


def _scrub(text: str, secrets: Sequence[str] | set[str]) -> str:
    """``text`` with every secret replaced by ``***`` (defence in depth: libpq's own
    messages do not contain the password)."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def _timestamp(value: datetime | None) -> datetime | None:
    """A timezone-aware datetime for a timestamptz column (naive ones are taken as UTC)."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def _values(record: TaskRecord) -> tuple[Any, ...]:
    """The column values of ``record``, in ``_COLUMNS`` order.

    PostgreSQL text cannot hold NUL characters: a record with one in a text column (its
    JSON escapes them, so payloads and results may have them) is refused.
    """
    spec = record.spec
    texts = {"type": spec.type, "idempotency_key": spec.idempotency_key, "owner": record.owner}
    for name, text in texts.items():
        if text is not None and "\x00" in text:
            raise InvalidMessage(f"task {record.task_id}: postgres cannot store a NUL in {name}")
    required = sorted(spec.required_capabilities)
    if any("\x00" in name for name in required):
        raise InvalidMessage(
            f"task {record.task_id}: postgres cannot store a NUL in required_capabilities"
        )
    return (
        record.task_id,
        record.sequence,
        record.state.value,
        spec.priority,
        spec.type,
        spec.idempotency_key,
        _timestamp(record.next_attempt_at),
        record.owner,
        _timestamp(record.lease_expires_at),
        _timestamp(record.created_at),
        _timestamp(record.updated_at),
        record.model_dump_json(),
        record.attempt,
        json.dumps(required),
    )


def _columns(records: Sequence[TaskRecord]) -> list[list[Any]]:
    """The batch as one list per column (``_COLUMNS`` order), for ``unnest``."""
    return [list(column) for column in zip(*map(_values, records), strict=True)]


def _update_row(record: TaskRecord) -> tuple[Any, ...]:
    """The parameters of ``update_one`` for ``record``: the columns after the sequence,
    then the id."""
    return (*_values(record)[2:], record.task_id)


class PostgresStore(TaskStore):
    """Task records in PostgreSQL (psycopg 3), through a small connection pool.

    Any thread may call any method: each call takes a pooled connection (autocommit for
    reads, one explicit transaction per batch). A read is one statement, so it sees whole
    batches only. Several stores (in this process or others) may share one schema:
    sequences stay unique, idempotency keys unique; a batch that loses a deadlock against
    another writer is retried (it was rolled back entirely).
    """

    def __init__(
        self,
        url: str,
        *,
        schema: str | None = None,
        connect_timeout: float | None = None,
        min_size: int = 1,
        max_size: int = 4,
    ) -> None:
        """``schema`` and ``connect_timeout`` override the URL's; see the module docstring."""
        if not 0 <= min_size <= max_size or max_size < 1:
            raise ValueError(
                f"need 0 <= min_size <= max_size and max_size >= 1, got {min_size}, {max_size}"
            )
        self._url = url
        self._target = _parse_url(url, schema, connect_timeout)
        # Names the store in messages; made once, as reads decode with it row by row.
        self._where = f"postgres store {redact_url(url)}"
        self._min_size = min_size
        self._max_size = max_size
        self._lock = threading.RLock()
        self._pool: ConnectionPool[psycopg.Connection[TupleRow]] | None = None
        self._version = 0
        table = sql.Identifier(self._target.schema, "tasks")
        self._table_name = table.as_string()
        self._sql: dict[str, bytes] = {
            name: sql.SQL(template.strip())
            .format(schema=sql.Identifier(self._target.schema))
            .as_bytes()
            for name, template in _TEMPLATES.items()
        }
        self._stats: StoreStatistics = new_statistics()
        self._shared_stats: dict[str, int] = {
            "claimed": 0,
            "renewed": 0,
            "rescued": 0,
            "released": 0,
            "fenced": 0,
        }
        self._channel = channel_name(self._target.schema)
        self._runners: dict[str, tuple[str, int]] = {}  # runner_id -> (host, pid)
        self._claim_sql: dict[int, bytes] = {}

    # -- lifecycle -----------------------------------------------------------------------

    def _connect_kwargs(self) -> dict[str, Any]:
        params = conninfo_to_dict(self._target.conninfo)
        kwargs: dict[str, Any] = {"autocommit": True}
        if "connect_timeout" not in params:
            kwargs["connect_timeout"] = max(1, math.ceil(self._target.connect_timeout))
        if "application_name" not in params:
            kwargs["application_name"] = "arbiter"
        # (libpq ignores these on a Unix socket)
        kwargs.update({name: value for name, value in _TCP_DEFAULTS.items() if name not in params})
        # A runner paused (SIGSTOP, a frozen VM) inside a transaction would keep the rows
        # it locked from every other runner (their claims and rescues SKIP LOCKED rows):
        # the server ends such a session after a while, and its transaction with it.
        options = [f"-c idle_in_transaction_session_timeout={_IDLE_IN_TRANSACTION_MS}"]
        if self._target.statement_timeout:
            options.append(f"-c statement_timeout={round(self._target.statement_timeout * 1000)}")
        given = params.get("options")
        kwargs["options"] = " ".join([str(given), *options] if given else options)
        return kwargs

    def open(self) -> Self:
        """Connect, create the schema or migrate it, start the pool. Idempotent.

        Raises StoreUnavailable (unreachable, refused, no privilege), StoreVersionError
        (a newer schema) or StoreCorrupt (the schema holds a foreign ``tasks`` table).
        """
        with self._lock:
            if self._pool is not None:
                return self
            kwargs = self._connect_kwargs()
            try:
                with psycopg.connect(self._target.conninfo, **kwargs) as conn:
                    version = self._prepare(conn)
            except psycopg.Error as exc:
                raise self._translate(exc, "opening") from None
            pool: ConnectionPool[psycopg.Connection[TupleRow]] = _Pool(
                self._target.conninfo,
                kwargs=kwargs,
                min_size=self._min_size,
                max_size=self._max_size,
                open=False,
                timeout=self._target.connect_timeout,
                name=f"arbiter-store-{self._target.schema}",
                num_workers=2,
            )
            try:
                pool.open(wait=self._min_size > 0, timeout=self._target.connect_timeout)
            except psycopg.Error as exc:
                pool.close()
                raise self._translate(exc, "opening its connection pool") from None
            self._pool = pool
            self._version = version
        return self

    def _prepare(self, conn: psycopg.Connection[TupleRow]) -> int:
        """Check the schema and migrate it when it is older; return its version."""
        version = self._read_version(conn)
        if version == SCHEMA_VERSION:
            return version
        schema = sql.Identifier(self._target.schema)
        with conn.transaction():
            conn.execute(
                "SELECT pg_advisory_xact_lock(hashtext(%s))",
                (f"arbiter-migrate:{self._target.schema}",),
            )
            version = self._read_version(conn)  # again, under the lock
            if version == SCHEMA_VERSION:
                return version
            exists = conn.execute(
                "SELECT 1 FROM pg_namespace WHERE nspname = %s", (self._target.schema,)
            ).fetchone()
            if exists is None:  # only CREATE when missing: needs the CREATE privilege
                conn.execute(sql.SQL("CREATE SCHEMA {}").format(schema))
            conn.execute(
                sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {}.schema_version (version integer NOT NULL)"
                ).format(schema)
            )
            conn.execute(
                sql.SQL(
                    "INSERT INTO {0}.schema_version (version) "
                    "SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM {0}.schema_version)"
                ).format(schema)
            )
            for number in range(version + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[number - 1]:
                    conn.execute(sql.SQL(statement.strip()).format(schema=schema))
                conn.execute(
                    sql.SQL("UPDATE {}.schema_version SET version = %s").format(schema),
                    (number,),
                )
        return SCHEMA_VERSION

    def _read_version(self, conn: psycopg.Connection[TupleRow]) -> int:
        """The schema's version: 0 when it holds no store yet; refuse newer and foreign."""
        where = f"{self._where} (schema {self._target.schema!r})"
        tables = {
            name
            for (name,) in conn.execute(
                "SELECT c.relname FROM pg_class c "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = %s AND c.relname = ANY(%s)",
                (self._target.schema, ["tasks", "schema_version"]),
            )
        }
        if "schema_version" not in tables:
            if tables:
                raise StoreCorrupt(
                    f"{where} has a table 'tasks' but no schema_version table: "
                    "it is not an Arbiter task store; use another schema"
                )
            return 0
        rows = conn.execute(
            sql.SQL("SELECT version FROM {}.schema_version").format(
                sql.Identifier(self._target.schema)
            )
        ).fetchall()
        return decode_version(rows, where)

    def close(self) -> None:
        """Close the pool and its connections. Idempotent."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

    @property
    def is_open(self) -> bool:
        """True between ``open()`` and ``close()``."""
        return self._pool is not None

    def _checked_pool(self) -> ConnectionPool[psycopg.Connection[TupleRow]]:
        pool = self._pool
        if pool is None:
            raise StoreError(f"store {self.url} is not open")
        return pool

    # -- writes --------------------------------------------------------------------------

    def apply(
        self, inserts: Sequence[TaskRecord], updates: Sequence[TaskRecord]
    ) -> list[TaskRecord]:
        """Insert then update in ONE transaction; return the inserted records.

        Updates of leased records may be fenced (see :meth:`apply_fenced`)."""
        return self.apply_fenced(inserts, updates)[0]

    def apply_fenced(
        self, inserts: Sequence[TaskRecord], updates: Sequence[TaskRecord]
    ) -> tuple[list[TaskRecord], frozenset[uuid.UUID]]:
        """Insert then update in ONE transaction; return the inserted records and the ids
        of tasks whose updates were fenced (not applied).

        An update of a leased record (``owner`` and ``lease_expires_at`` set, as
        :meth:`claim` makes them) is fenced when the stored owner is another one (the lease
        expired and the task was rescued, maybe claimed again) or the stored attempt is
        higher (a newer attempt of the same owner). When it is applied, the stored lease
        is kept: leases move only by claim, renew and rescue. Other updates are applied
        as they are (an operator's re-queue, a single runner's own writes).
        """
        pool = self._checked_pool()
        if not inserts and not updates:
            return [], frozenset()
        tries = _Tries(self._max_size)
        while True:
            try:
                with tries.connection(pool) as conn, conn.transaction(), conn.cursor() as cur:
                    stored, inserted = self._insert_all(cur, inserts)
                    applied, fenced = self._update_all(cur, updates, fence=True)
                    if not inserted and any(_claimable(r) for r in applied):
                        cur.execute(self._sql["notify"], (self._channel,))  # (inserts did)
            except psycopg.Error as exc:
                self._count(rollbacks=1)
                if tries.again(exc):
                    continue
                raise self._translate(exc, "writing") from exc
            except BaseException:
                self._count(rollbacks=1)
                raise
            with self._lock:
                count_commit(self._stats, inserted, len(inserts) - inserted, len(applied))
            if fenced:
                self._fenced(fenced)
            return stored, frozenset(record.task_id for record, _ in fenced)

    def _fenced(self, fenced: list[tuple[TaskRecord, str | None]]) -> None:
        with self._lock:
            self._shared_stats["fenced"] += len(fenced)
        for record, current in fenced[:_FENCE_LOG_LIMIT]:
            _log.warning(
                "store.update_fenced",
                task_id=str(record.task_id),
                state=record.state.value,
                attempt=record.attempt,
                stale_owner=record.owner,
                current_owner=current,
            )
        if len(fenced) > _FENCE_LOG_LIMIT:
            _log.warning("store.update_fenced", more=len(fenced) - _FENCE_LOG_LIMIT)

    def _count(self, **changes: int) -> None:
        with self._lock:
            for name, change in changes.items():
                self._stats[name] += change

    def _insert_all(
        self, cur: psycopg.Cursor[TupleRow], records: Sequence[TaskRecord]
    ) -> tuple[list[TaskRecord], int]:
        """Insert ``records`` in one statement, duplicates skipped; return them as stored."""
        if not records:
            return [], 0
        cur.execute(self._sql["nextval"], (self._table_name, len(records)))
        sequences = sorted(row[0] for row in cur.fetchall())
        candidates = [
            record.model_copy(update={"sequence": sequence})
            for record, sequence in zip(records, sequences, strict=True)
        ]
        cur.execute(self._sql["insert"], [*_columns(candidates), self._channel])
        inserted = {row[0] for row in cur.fetchall()}
        stored = list(candidates)
        missing = [i for i, c in enumerate(candidates) if c.sequence not in inserted]
        if missing:
            ids = [records[i].task_id for i in missing]
            keys = [k for i in missing if (k := records[i].spec.idempotency_key) is not None]
            cur.execute(self._sql["existing"], (ids, keys))
            by_id: dict[uuid.UUID, TaskRecord] = {}
            by_key: dict[str, TaskRecord] = {}
            for data, lease in cur.fetchall():
                existing = self._decode(data, lease)
                by_id[existing.task_id] = existing
                if existing.spec.idempotency_key is not None:
                    by_key[existing.spec.idempotency_key] = existing
            # What record i met is what was stored BEFORE it: a later record of this batch
            # may have stored its id or key since (when i was skipped for the other one).
            index_of = {candidates[i].sequence: i for i in range(len(records))}

            def before(found: TaskRecord | None, i: int) -> TaskRecord | None:
                """``found`` if it was stored before the batch or by an earlier record."""
                if found is None:
                    return None
                j = index_of.get(found.sequence)
                return found if j is None or j < i else None

            for i in missing:
                record = records[i]
                key = record.spec.idempotency_key
                found = before(by_id.get(record.task_id), i)
                if found is None and key is not None:
                    found = before(by_key.get(key), i)
                if found is None:
                    raise StoreCorrupt(
                        f"postgres store {self.url}: insert of task {record.task_id} "
                        "conflicted on its sequence (was the sequence reset?)"
                    )
                stored[i] = found
        return stored, len(inserted)

    def _update_all(
        self,
        cur: psycopg.Cursor[TupleRow],
        records: Sequence[TaskRecord],
        *,
        fence: bool,
    ) -> tuple[list[TaskRecord], list[tuple[TaskRecord, str | None]]]:
        """Apply ``records`` in order, with the checks of the contract done up front.

        Runs after the batch's inserts, in the same transaction, so it sees them; locks
        the rows (in task id order, so concurrent batches cannot deadlock) until the
        commit. With ``fence``, leased records of a stale owner or attempt are skipped.
        Returns the records applied (as stored) and the fenced ones with the stored owner.
        """
        if not records:
            return [], []
        new_keys = {k for r in records if (k := r.spec.idempotency_key) is not None}
        cur.execute(self._sql["update_check"], ([r.task_id for r in records], list(new_keys)))
        sequence_of: dict[uuid.UUID, int] = {}
        key_of: dict[uuid.UUID, str | None] = {}
        holder: dict[str, uuid.UUID] = {}
        owner_of: dict[uuid.UUID, str | None] = {}
        attempt_of: dict[uuid.UUID, int] = {}
        lease_of: dict[uuid.UUID, datetime | None] = {}
        for task_id, sequence, key, owner, attempt, lease in cur.fetchall():
            sequence_of[task_id] = sequence
            key_of[task_id] = key
            owner_of[task_id] = owner
            attempt_of[task_id] = attempt if isinstance(attempt, int) else 0
            lease_of[task_id] = _utc(lease)
            if key is not None:
                holder[key] = task_id
        keys_change = False
        fixed: list[TaskRecord] = []
        fenced: list[tuple[TaskRecord, str | None]] = []
        for record in records:
            task_id = record.task_id
            sequence = sequence_of.get(task_id)
            if sequence is None:
                raise UnknownTask(f"no task {task_id} to update")
            changes: dict[str, Any] = {}
            if fence and record.owner is not None and record.lease_expires_at is not None:
                current = owner_of[task_id]
                if current != record.owner or record.attempt < attempt_of[task_id]:
                    fenced.append((record, current))
                    continue
                lease = lease_of[task_id]
                if lease is not None and lease != record.lease_expires_at:
                    changes["lease_expires_at"] = lease  # the store owns the lease
            old, new = key_of[task_id], record.spec.idempotency_key
            if new != old:
                keys_change = True
                owner = holder.get(new) if new is not None else None
                if owner is not None:
                    raise InvalidMessage(
                        f"idempotency key {new!r} of task {task_id} already belongs to task {owner}"
                    )
                if old is not None:
                    del holder[old]
                if new is not None:
                    holder[new] = task_id
                key_of[task_id] = new
            if record.sequence != sequence:  # the store owns the sequence
                changes["sequence"] = sequence
            if changes:
                record = record.evolve(**changes)
            owner_of[task_id] = record.owner
            attempt_of[task_id] = record.attempt
            lease_of[task_id] = record.lease_expires_at
            fixed.append(record)
        if not fixed:
            return [], fenced
        try:
            if keys_change:  # one statement each, in order, as the unique check needs
                cur.executemany(self._sql["update_one"], [_update_row(r) for r in fixed])
                expected = len(fixed)
            else:  # the keys stay: only the last update of each task matters
                last = list({r.task_id: r for r in fixed}.values())
                cur.execute(self._sql["update_many"], _columns(last))
                expected = len(last)
        except psycopg.errors.UniqueViolation as exc:  # another process took the key
            raise InvalidMessage(
                f"an idempotency key of this batch already belongs to another task: "
                f"{exc.diag.message_detail or exc}"
            ) from exc
        if cur.rowcount != expected:  # pragma: no cover - tasks are never deleted
            raise UnknownTask(f"{expected - cur.rowcount} task(s) of the batch vanished")
        return fixed, fenced

    # -- shared mode: claims, leases, rescue ---------------------------------------------

    @property
    def shared(self) -> bool:
        """True: several runners (processes, hosts) may use this store at once."""
        return True

    @property
    def channel(self) -> str:
        """The LISTEN/NOTIFY channel of this store's schema."""
        return self._channel

    def _claim_capable_sql(self, sets: int) -> bytes:
        """The claim of tasks that one of ``sets`` capability sets can run: per set, the
        task's type is in it and its required capabilities (column ``required``) too.
        Plain column tests, so the claim walks the ``tasks_claimable`` index in order."""
        statement = self._claim_sql.get(sets)
        if statement is None:
            fits = " OR ".join(["(t.type = ANY(%s::text[]) AND t.required <@ %s::jsonb)"] * sets)
            template = f"""
                SELECT record::text, now() FROM {{schema}}.tasks AS t
                WHERE {_CLAIMABLE} AND ({fits})
                ORDER BY priority DESC, sequence
                LIMIT %s
                FOR UPDATE OF t SKIP LOCKED
            """
            statement = (
                sql.SQL(template.strip())
                .format(schema=sql.Identifier(self._target.schema))
                .as_bytes()
            )
            with self._lock:
                self._claim_sql[sets] = statement
        return statement

    def claim(
        self,
        owner: str,
        limit: int,
        lease_s: float,
        capabilities: Collection[frozenset[str]] | None = None,
    ) -> list[TaskRecord]:
        """Take up to ``limit`` claimable tasks for ``owner`` (see TaskStore.claim).

        One transaction: ``SELECT ... FOR UPDATE SKIP LOCKED`` (a concurrent claimer skips
        the rows this one holds, so no task is given twice), then the records, with owner
        and lease set, are written back through the update path (JSON and columns agree).
        """
        _check_owner(owner)
        _check_lease(lease_s)
        if limit <= 0:
            self._checked_pool()
            return []
        sets: list[list[str]] | None = None
        if capabilities is not None:
            sets = [sorted(caps) for caps in capabilities if caps]
            if not sets:
                self._checked_pool()
                return []

        def work(cur: psycopg.Cursor[TupleRow]) -> list[TaskRecord]:
            if sets is None:
                cur.execute(self._sql["claim_any"], (limit,))
            else:
                params: list[object] = []
                for names in sets:
                    params += [names, json.dumps(names)]
                cur.execute(self._claim_capable_sql(len(sets)), [*params, limit])
            rows = cur.fetchall()
            if not rows:
                return []
            now: datetime = rows[0][1].astimezone(UTC)
            expires = now + timedelta(seconds=lease_s)
            claimed = []
            for data, _ in rows:
                record = decode_record(data, self._where)  # no lease column: it gets a new one
                if record.state is TaskState.RETRY_WAIT:  # its backoff is over
                    record = record.moved(TaskState.QUEUED, at=now, next_attempt_at=None)
                claimed.append(record.evolve(owner=owner, lease_expires_at=expires))
            # The rows are locked and were just read: their sequence and idempotency key
            # are known, so no check round trip (what _update_all does first) is needed.
            cur.execute(self._sql["update_many"], _columns(claimed))
            if cur.rowcount != len(claimed):  # pragma: no cover - locked rows cannot vanish
                raise UnknownTask(f"{len(claimed) - cur.rowcount} claimed task(s) vanished")
            return claimed

        # enable_sort off: walk the tasks_claimable index in order, whatever the planner's
        # statistics say. Just after a bulk submit it has none, and would sort every
        # claimable row (records included; megabytes, on disk) for each claim of a few.
        claimed = self._transaction(
            work, "claiming tasks", durable=False, settings=b"SET LOCAL enable_sort = off"
        )
        self._count_shared(claimed=len(claimed))
        return claimed

    def cancel_unowned(self, task_id: uuid.UUID) -> TaskRecord | None:
        """Cancel an unclaimed task (see TaskStore.cancel_unowned). The row lock orders it
        with claims and promotions: one that took the row first wins, and a claimed task
        (owner set) is not cancelled here."""

        def work(cur: psycopg.Cursor[TupleRow]) -> TaskRecord | None:
            cur.execute(self._sql["cancel_unowned"], (task_id,))
            row = cur.fetchone()
            if row is None:
                return None
            data, now = row
            record = decode_record(data, self._where).moved(
                TaskState.CANCELLED, at=now.astimezone(UTC), next_attempt_at=None
            )
            cur.execute(self._sql["update_many"], _columns([record]))
            return record

        return self._transaction(work, "cancelling a task")

    def prune(
        self,
        before: datetime,
        states: Collection[TaskState] = PRUNED_BY_DEFAULT,
        limit: int = DEFAULT_LIST_LIMIT,
    ) -> int:
        """Delete finished tasks updated before ``before`` (see TaskStore.prune), oldest
        first, walking the ``tasks_finished`` index; rows another transaction holds are
        skipped (a concurrent pruner takes them)."""
        checked = check_prune(before, states, limit)
        if not checked or limit == 0:
            self._checked_pool()
            return 0
        # The states as literals (enum values, never input): the planner can then prove
        # the condition of the partial index, which it cannot for a parameter.
        names = ", ".join(f"'{state.value}'" for state in checked)
        statement = sql.SQL(
            "DELETE FROM {schema}.tasks WHERE task_id IN ("
            f"SELECT task_id FROM {{schema}}.tasks WHERE state IN ({names}) "
            "AND updated_at < %s ORDER BY updated_at LIMIT %s FOR UPDATE SKIP LOCKED)"
        ).format(schema=sql.Identifier(self._target.schema))

        def work(cur: psycopg.Cursor[TupleRow]) -> int:
            cur.execute(statement, (before, limit))
            return max(0, cur.rowcount)

        return self._transaction(work, "pruning finished tasks")

    def promote_due(self, limit: int) -> list[TaskRecord]:
        """Delayed tasks whose run time has come -> QUEUED (see TaskStore.promote_due).

        One transaction: ``SELECT ... FOR UPDATE SKIP LOCKED`` by run time on the
        ``tasks_delayed`` index, the records moved in Python and written back, and a
        ``NOTIFY`` if any moved. Tasks waiting for later are never read."""
        if limit <= 0:
            self._checked_pool()
            return []

        def work(cur: psycopg.Cursor[TupleRow]) -> list[TaskRecord]:
            cur.execute(self._sql["promote_due"], (limit,))
            rows = cur.fetchall()
            if not rows:
                return []
            now: datetime = rows[0][1].astimezone(UTC)
            promoted = [
                decode_record(data, self._where).moved(
                    TaskState.QUEUED, at=now, next_attempt_at=None
                )
                for data, _ in rows
            ]
            cur.execute(self._sql["update_many"], _columns(promoted))
            if cur.rowcount != len(promoted):  # pragma: no cover - locked rows cannot vanish
                raise UnknownTask(f"{len(promoted) - cur.rowcount} promoted task(s) vanished")
            cur.execute(self._sql["notify"], (self._channel,))
            return promoted

        return self._transaction(work, "promoting delayed tasks", durable=False)

    def renew(self, owner: str, lease_s: float) -> int:
        """Extend the lease of every unfinished task of ``owner`` (one statement)."""
        _check_owner(owner)
        _check_lease(lease_s)

        def work(cur: psycopg.Cursor[TupleRow]) -> int:
            cur.execute(self._sql["renew"], (lease_s, owner))
            return max(0, cur.rowcount)

        renewed = self._transaction(work, "renewing leases", durable=False)
        self._count_shared(renewed=renewed)
        return renewed

    def rescue_expired(self, limit: int) -> list[TaskRecord]:
        """Free up to ``limit`` tasks whose lease expired (see TaskStore.rescue_expired).

        ``FOR UPDATE SKIP LOCKED``: of several rescuers racing, exactly one frees each task.
        """
        if limit <= 0:
            self._checked_pool()
            return []

        def work(cur: psycopg.Cursor[TupleRow]) -> tuple[list[TaskRecord], Counter[str]]:
            cur.execute(self._sql["expired"], (limit,))
            return self._free(cur, cur.fetchall(), "lease_expired", "stopped heartbeating")

        rescued, owners = self._transaction(work, "rescuing expired leases", durable=False)
        if rescued:
            self._count_shared(rescued=len(rescued))
            _log_freed("store.lease_rescued", rescued, owners)
        return rescued

    def release(self, owner: str) -> list[TaskRecord]:
        """Free every unfinished task of ``owner`` now (a runner stopping gracefully)."""
        _check_owner(owner)

        def work(cur: psycopg.Cursor[TupleRow]) -> tuple[list[TaskRecord], Counter[str]]:
            cur.execute(self._sql["owned"], (owner,))
            return self._free(cur, cur.fetchall(), "released", "stopped")

        released, owners = self._transaction(work, "releasing leases", durable=False)
        if released:
            self._count_shared(released=len(released))
            _log_freed("store.lease_released", released, owners)
        return released

    def _free(
        self, cur: psycopg.Cursor[TupleRow], rows: Sequence[TupleRow], reason: str, why: str
    ) -> tuple[list[TaskRecord], Counter[str]]:
        """Make the tasks of ``rows`` (record, owner, now) unowned, in this transaction;
        return them as stored, and how many each old owner had."""
        if not rows:
            return [], Counter()
        freed = []
        owners: Counter[str] = Counter()
        for data, owner, now in rows:
            record = decode_record(data, self._where)  # no lease column: freed tasks get none
            owners[str(owner)] += 1
            freed.append(_freed(record, now.astimezone(UTC), f"{reason}: runner {owner} {why}"))
        applied, _ = self._update_all(cur, freed, fence=False)
        if any(_claimable(r) for r in applied):
            cur.execute(self._sql["notify"], (self._channel,))
        return applied, owners

    def listen(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback()`` on each notification of this store's channel (new or
        rescued claimable tasks), on a daemon thread with a connection of its own. A lost
        connection is re-made with backoff, and ``callback()`` is called once after it
        (notifications sent meanwhile are lost). Returns a function that stops it."""
        self._checked_pool()
        listener = _Listener(self, callback)
        listener.start()
        return listener.stop

    # -- runners and leaders -------------------------------------------------------------

    def register_runner(self, runner_id: str, host: str, pid: int) -> None:
        """Record a runner using the store; its heartbeat starts now."""
        _check_owner(runner_id)
        with self._lock:
            self._runners[runner_id] = (host, pid)
        self._execute("register_runner", (runner_id, host, pid), "registering a runner")

    def heartbeat_runner(self, runner_id: str) -> None:
        """The runner is alive (re-registered if its row was removed)."""
        with self._lock:
            host, pid = self._runners.get(runner_id, ("", 0))
        self._execute("heartbeat_runner", (runner_id, host, pid), "heartbeating a runner")

    def live_runners(self, max_age_s: float) -> list[dict[str, Any]]:
        """Runners that heartbeated in the last ``max_age_s`` seconds."""
        rows = self._query("live_runners", (float(max_age_s),))
        return [
            {
                "runner_id": runner_id,
                "host": host,
                "pid": pid,
                "started_at": started.astimezone(UTC).isoformat(),
                "heartbeat_at": beat.astimezone(UTC).isoformat(),
                "heartbeat_age_s": round(max(0.0, age), 3),
                "tasks": tasks,
            }
            for runner_id, host, pid, started, beat, age, tasks in rows
        ]

    def deregister_runner(self, runner_id: str) -> None:
        """Forget a runner (it stopped)."""
        with self._lock:
            self._runners.pop(runner_id, None)
        self._execute("deregister_runner", (runner_id,), "deregistering a runner")

    def try_lead(self, name: str, owner: str, lease_s: float) -> bool:
        """Take (free or expired) or renew (mine) the leader lease ``name``."""
        _check_owner(owner)
        _check_lease(lease_s)

        def work(cur: psycopg.Cursor[TupleRow]) -> bool:
            cur.execute(self._sql["try_lead"], (name, owner, lease_s))
            return cur.fetchone() is not None

        return self._transaction(work, "taking a leader lease")

    def leader(self, name: str) -> str | None:
        """Who holds the unexpired leader lease ``name``, or None."""
        rows = self._query("leader", (name,))
        return str(rows[0][0]) if rows else None

    def resign(self, name: str, owner: str) -> bool:
        """Give up the leader lease ``name`` if ``owner`` holds it; True if it did."""

        def work(cur: psycopg.Cursor[TupleRow]) -> bool:
            cur.execute(self._sql["resign"], (name, owner))
            return cur.rowcount > 0

        return self._transaction(work, "resigning a leader lease")

    def shared_statistics(self) -> dict[str, int]:
        """Counters of shared mode since this object was created: claimed, renewed,
        rescued, released, fenced."""
        with self._lock:
            return dict(self._shared_stats)

    def _count_shared(self, **changes: int) -> None:
        with self._lock:
            for name, change in changes.items():
                self._shared_stats[name] += change

    def _execute(self, name: str, params: Sequence[object], action: str) -> None:
        """One statement about the runners table (not durable: a heartbeat lost in a
        database crash is harmless)."""

        def work(cur: psycopg.Cursor[TupleRow]) -> None:
            cur.execute(self._sql[name], params)

        self._transaction(work, action, durable=False)

    def _transaction(
        self,
        work: Callable[[psycopg.Cursor[TupleRow]], _T],
        action: str,
        *,
        durable: bool = True,
        settings: bytes = b"",
    ) -> _T:
        """Run ``work(cursor)`` in one transaction (retried after a lost deadlock).

        ``settings``: ``SET LOCAL`` statements for this transaction, sent in the same
        round trip as the ``synchronous_commit`` one.

        ``durable=False``: the commit does not wait for the WAL flush (no fsync, ~3 ms
        less). For claims, leases and heartbeats only, whose loss in a database crash
        is harmless: a lost claim leaves the task unowned (the claimer's later writes are
        fenced), a lost renewal or rescue happens again. A later durable commit (the
        journal's) flushes the WAL up to it anyway.
        """
        pool = self._checked_pool()
        tries = _Tries(self._max_size)
        while True:
            try:
                with tries.connection(pool) as conn, conn.transaction(), conn.cursor() as cur:
                    local = b"SET LOCAL synchronous_commit = off; " if not durable else b""
                    if local or settings:  # (no parameters: several statements, one trip)
                        cur.execute(local + settings)
                    return work(cur)
            except psycopg.Error as exc:
                if not tries.again(exc):
                    raise self._translate(exc, action) from exc

    # -- reads ---------------------------------------------------------------------------

    def get(self, task_id: uuid.UUID | str) -> TaskRecord | None:
        """The stored record with this id, or None."""
        key = parse_task_id(task_id)
        if key is None:
            self._checked_pool()
            return None
        return self._one("get", (key,))

    def get_by_idempotency_key(self, key: str) -> TaskRecord | None:
        """The stored record with this idempotency key, or None."""
        if "\x00" in key:  # no stored key has one (see _values)
            self._checked_pool()
            return None
        return self._one("get_by_key", (key,))

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
            return self._many("list_all", (after_sequence, limit))
        return self._many("list_state", (TaskState(state).value, after_sequence, limit))

    def counts(self) -> dict[TaskState, int]:
        """How many tasks are in each state."""
        return decode_counts(self._query("counts", ()), f"{self._where}: unknown state")

    def recoverable(self) -> list[TaskRecord]:
        """Every non-terminal task, by (priority desc, sequence asc)."""
        return self._many("recoverable", ())

    def _query(self, name: str, params: Sequence[object]) -> list[TupleRow]:
        pool = self._checked_pool()
        tries = _Tries(self._max_size)
        while True:
            try:
                with tries.connection(pool) as conn:
                    return conn.execute(self._sql[name], params).fetchall()
            except psycopg.Error as exc:
                if not tries.again(exc):
                    raise self._translate(exc, "reading") from exc

    def _one(self, name: str, params: Sequence[object]) -> TaskRecord | None:
        rows = self._query(name, params)
        return self._decode(rows[0][0], rows[0][1]) if rows else None

    def _many(self, name: str, params: Sequence[object]) -> list[TaskRecord]:
        return [self._decode(data, lease) for data, lease in self._query(name, params)]

    def _decode(self, data: object, lease: datetime | None) -> TaskRecord:
        """The record of a row read with its ``lease_expires_at`` column: its JSON, with
        the lease from the column (authoritative: ``renew`` moves only the column). A row
        read without it (about to get a new lease or none) is ``decode_record``'s alone."""
        record = decode_record(data, self._where)
        if lease is not None and record.lease_expires_at != lease:
            record = record.evolve(lease_expires_at=lease.astimezone(UTC))
        return record

    # -- introspection -------------------------------------------------------------------

    @property
    def schema(self) -> str:
        """The PostgreSQL schema that holds the store's tables."""
        return self._target.schema

    @property
    def connect_timeout(self) -> float:
        """Seconds to wait for a connection."""
        return self._target.connect_timeout

    @property
    def schema_version(self) -> int:
        """The schema's version once open (0 before)."""
        return self._version

    @property
    def url(self) -> str:
        """The store's URL with the password hidden."""
        return redact_url(self._url)

    def statistics(self) -> StoreStatistics:
        """Counters since this object was created."""
        with self._lock:
            return dict(self._stats)

    # -- errors --------------------------------------------------------------------------

    def _translate(self, exc: psycopg.Error, action: str) -> StoreError:
        """The Arbiter error for a psycopg error, naming the store (never its password)."""
        detail = _scrub(" ".join(str(exc).split()) or type(exc).__name__, self._target.secrets)
        sqlstate = getattr(exc, "sqlstate", None)
        if sqlstate:
            detail = f"{detail} [{sqlstate}]"
        message = f"postgres store {self.url} failed {action}: {detail}"
        if isinstance(exc, _UNAVAILABLE):
            return StoreUnavailable(message)
        return StoreError(message)


class _QuickAttempt(AttemptWithBackoff):
    """The pool's reconnection backoff, from 0.1 s doubling to at most 2 s.

    psycopg_pool's own starts at 1 s and doubles without a cap (up to its 5-minute
    reconnect timeout), so after a minute-long outage a pool may wait another minute
    before it tries again: a runner would sit idle that long after the database is back.
    """

    INITIAL_DELAY = 0.1

    def update_delay(self, now: float) -> None:
        super().update_delay(now)
        self.delay = min(self.delay, 2.0)


class _Pool(ConnectionPool[psycopg.Connection[TupleRow]]):
    """A connection pool that reconnects quickly (see :class:`_QuickAttempt`)."""

    def _add_connection(self, attempt: AttemptWithBackoff | None, growing: bool = False) -> None:
        if attempt is None:
            attempt = _QuickAttempt(timeout=self.reconnect_timeout)
        super()._add_connection(attempt, growing)


class _Tries:
    """Whether a failed statement may run again, on another pooled connection.

    After a lost deadlock or serialization race (the transaction was rolled back):
    up to ``_RETRIES`` attempts in all. After a *broken* connection (one the database
    closed while it sat in the pool, e.g. when the database restarted): once more per
    pool slot, so a pool full of dead connections is worked through. Writes are safe to
    repeat even when a commit's outcome was lost with its connection: an insert of a
    stored id is a duplicate (the stored record is returned), an update writes the same
    version again. Anything else (the database is down, a statement timed out) is the
    caller's: the journal waits for the store to come back.
    """

    __slots__ = ("_broken", "_conn", "_limit", "_lost")

    def __init__(self, pool_size: int) -> None:
        self._lost = 0
        self._broken = 0
        self._limit = pool_size + 1
        self._conn: psycopg.Connection[TupleRow] | None = None

    @contextmanager
    def connection(
        self, pool: ConnectionPool[psycopg.Connection[TupleRow]]
    ) -> Iterator[psycopg.Connection[TupleRow]]:
        with pool.connection() as conn:
            self._conn = conn
            yield conn

    def again(self, exc: psycopg.Error) -> bool:
        conn, self._conn = self._conn, None
        if isinstance(exc, _RETRYABLE):
            self._lost += 1
            return self._lost < _RETRIES
        # Any error on a connection that is now broken is its loss (the server restarted,
        # or ended the session: e.g. idle_in_transaction_session_timeout after a pause,
        # which psycopg raises as an InternalError): the write goes again on another.
        if conn is not None and conn.broken:
            self._broken += 1
            _log.info("store.connection_lost", retrying=self._broken < self._limit)
            return self._broken < self._limit
        return False


def _claimable(record: TaskRecord) -> bool:
    """A claimer may take this task (now, or when its backoff is over)."""
    return record.owner is None and record.state in _CLAIMABLE_STATES


def _log_freed(event: str, records: list[TaskRecord], owners: Counter[str]) -> None:
    states = Counter(record.state for record in records)
    _log.warning(
        event,
        tasks=len(records),
        queued=states[TaskState.QUEUED],
        retry_wait=states[TaskState.RETRY_WAIT],
        dead_lettered=states[TaskState.DEAD_LETTERED],
        owners=dict(owners.most_common(20)),
    )


def _check_owner(owner: str) -> None:
    if not owner or "\x00" in owner:
        raise ValueError(f"an owner (runner id) must be a non-empty text without NUL: {owner!r}")


def _check_lease(lease_s: float) -> None:
    if not (0 < lease_s < 86_400 * 365):  # also refuses NaN
        raise ValueError(f"lease_s must be > 0 seconds, got {lease_s!r}")


def _freed(record: TaskRecord, now: datetime, error: str) -> TaskRecord:
    """``record`` without owner or lease, as a rescuer leaves it.

    Not started: QUEUED. Delayed (PENDING with a run time) and RETRY_WAIT: stay (queued
    when due). Started: the attempt counts (its history says how it ended); QUEUED if
    attempts are left, else dead.
    """
    free: dict[str, Any] = {"owner": None, "lease_expires_at": None}
    state = record.state
    if state is TaskState.PENDING and record.next_attempt_at is not None:
        return record.evolve(**free)
    if state in _NOT_STARTED:
        if state is not TaskState.QUEUED:
            record = record.moved(TaskState.QUEUED, at=now, agent_id=None)
        return record.evolve(**free)
    if state is TaskState.RETRY_WAIT:
        return record.evolve(**free)
    if state in (TaskState.RUNNING, TaskState.SUSPENDED):
        if state is TaskState.SUSPENDED:
            record = record.moved(TaskState.RUNNING, at=now)
        attempt = Attempt.fast(
            number=record.attempt,
            agent_id=record.agent_id,
            started_at=record.updated_at,
            ended_at=now,
            outcome="lease_expired",
            error=error,
        )
        record = record.moved(
            TaskState.FAILED, at=now, last_error=error, history=(*record.history, attempt)
        )
    else:  # FAILED, TIMED_OUT: the attempt ended; the retry scheduler had not decided
        record = record.evolve(last_error=f"{error} (after: {record.last_error})")
    if record.attempt < record.max_attempts:
        return record.moved(TaskState.QUEUED, at=now, agent_id=None, next_attempt_at=None, **free)
    return record.moved(TaskState.DEAD_LETTERED, at=now, agent_id=None, **free)


class _Listener:
    """LISTEN on a store's channel on a daemon thread; reconnects with backoff."""

    def __init__(self, store: PostgresStore, callback: Callable[[], None]) -> None:
        self._store = store
        self._callback = callback
        self._stopped = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"arbiter-listen-{store.schema}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop listening (returns within about a quarter of a second)."""
        self._stopped.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=2.0)

    def _call(self) -> None:
        try:
            self._callback()
        except Exception as exc:  # noqa: BLE001 - a bad callback must not stop listening
            _log.error("store.listen_callback_failed", error=repr(exc))

    def _run(self) -> None:
        store = self._store
        statement = sql.SQL("LISTEN {}").format(sql.Identifier(store.channel))
        delay = _LISTEN_BACKOFF_S[0]
        reconnecting = False
        while not self._stopped.is_set():
            try:
                with psycopg.connect(store._target.conninfo, **store._connect_kwargs()) as conn:
                    conn.execute(statement)
                    if reconnecting:
                        _log.info("store.listen_reconnected", store=store.url)
                        self._call()  # what was notified while we were away is lost
                    reconnecting, delay = False, _LISTEN_BACKOFF_S[0]
                    while not self._stopped.is_set():
                        for _ in conn.notifies(timeout=_LISTEN_POLL_S):
                            self._call()
                            if self._stopped.is_set():
                                break
            except psycopg.Error as exc:
                if self._stopped.is_set():
                    return
                detail = _scrub(" ".join(str(exc).split()), store._target.secrets)
                _log.warning("store.listen_failed", store=store.url, error=detail, retry_in_s=delay)
                reconnecting = True
                self._stopped.wait(delay)
                delay = min(delay * 2, _LISTEN_BACKOFF_S[1])
