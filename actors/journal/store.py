"""The journal's storage contract: :class:`TaskStore`, and opening a store by URL.

A store keeps :class:`~messages.TaskRecord` values durably (or, for ``memory://``, for the
life of the process). Every write is batch-oriented so the journal actor can group-commit
many state transitions in one transaction. Each backend passes the same contract suite
(``tests/integration/test_journal_contract.py``), so they are interchangeable.

Supported URLs::

    memory://                                   in-process, lost at exit (library default)
    sqlite:///relative/path.db                  a file relative to the working directory
    sqlite:////absolute/path.db                 an absolute path
    sqlite:///tasks.db?durability=fsync&busy_timeout=2.5
    postgresql://user:password@host:5432/db     PostgreSQL (needs the ``postgres`` extra)
    postgres://host/db?schema=arbiter&sslmode=require
                                                tables in schema ``arbiter`` (default public);
                                                other options go to libpq

Where a command takes its URL from (:func:`resolve_store_url`): ``--store URL``, else the
first line of ``--store-file PATH``, else ``$ARBITER_STORE``, else the first line of the
file ``$ARBITER_STORE_FILE`` (a mounted secret), else the default. A postgres URL may
leave out what libpq finds in ``PG*`` variables (``postgresql:///?schema=arbiter`` with
``PGHOST``, ``PGUSER``, ``PGPASSWORD`` or ``PGPASSFILE`` set).
"""

from __future__ import annotations

import os
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, ClassVar, Final, Literal, Self
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

from messages import TaskRecord, TaskState
from messages.task import TERMINAL_STATES

__all__ = [
    "PRUNED_BY_DEFAULT",
    "SCHEMA_VERSION",
    "Durability",
    "StoreStatistics",
    "TaskStore",
    "check_prune",
    "open_store",
    "redact_url",
    "resolve_store_url",
    "store_for_url",
]

SCHEMA_VERSION: Final = 3
"""The newest schema version this code knows (every backend reports it once open).

2: the tables of shared mode (``runners``, ``leaders``) and the claim and lease indexes
(postgres; nothing changes for sqlite). 3: the indexes of delayed tasks (promotion) and
of finished ones (pruning), postgres only."""

PRUNED_BY_DEFAULT: Final = (TaskState.COMPLETED, TaskState.CANCELLED)
"""What :meth:`TaskStore.prune` deletes unless told otherwise (dead letters are kept)."""

Durability = Literal["normal", "fsync"]
"""``normal``: a commit survives a crash of the process; ``fsync``: also a power loss."""

StoreStatistics = dict[str, int]
"""Counters of a store: ``commits``, ``rollbacks``, ``records_inserted``, ``duplicates``,
``records_updated``, ``records_written`` (inserted + updated)."""

DEFAULT_LIST_LIMIT: Final = 1000

_POSTGRES_SCHEMES: Final = frozenset({"postgresql", "postgres"})
_SECRET_QUERY_KEYS: Final = frozenset({"password", "passwd", "pass", "secret", "token"})


class TaskStore(ABC):
    """Durable storage of task records behind the journal actor.

    A store is owned by one thread (the journal actor's) which does every write; other
    threads may read (``get``, ``counts``, ...) at the same time, and always see whole
    batches, never half of one. A store with ``concurrent_inserts`` also takes inserts
    from any thread (the submitting one). Writes are batches applied in ONE transaction:
    either all of a batch is stored or, when any part fails, none of it, and the error
    propagates.

    Semantics every backend shares:

    * ``sequence`` is assigned by the store on insert, strictly increasing and never reused
      (also across restarts), so FIFO order among equal priorities survives a restart.
      Updates keep the stored sequence whatever the record passed in says.
    * Inserting a record whose ``task_id`` or ``spec.idempotency_key`` is already stored
      (earlier, or earlier in the same batch) stores nothing and returns the existing record
      in its place: inserts are idempotent.
    * Updating an unknown ``task_id`` raises :class:`~messages.UnknownTask`; changing an
      idempotency key to one another task holds raises :class:`~messages.InvalidMessage`.
      Either rolls back the whole batch.
    * Unusable storage raises :class:`~messages.StoreUnavailable` (locked, read-only, disk
      full), :class:`~messages.StoreCorrupt` or :class:`~messages.StoreVersionError`.
    """

    def sequence_hint(self) -> int:
        """The sequence the next inserted record will likely get, if this store can tell
        (0 if not). A submitter may give new records consecutive sequences from it: a store
        that finds a record already holding the sequence it assigns keeps that record as it
        is instead of copying it. Only a hint: the store assigns sequences whatever it says.
        """
        return 0

    # -- lifecycle -----------------------------------------------------------------------

    @abstractmethod
    def open(self) -> Self:
        """Open the store (creating or migrating it as needed) and return it. Idempotent."""

    @abstractmethod
    def close(self) -> None:
        """Release the store's resources. Idempotent; ``open()`` may be called again."""

    @property
    @abstractmethod
    def is_open(self) -> bool:
        """True between ``open()`` and ``close()``."""

    def __enter__(self) -> Self:
        return self.open()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- writes --------------------------------------------------------------------------

    def insert(self, records: Sequence[TaskRecord]) -> list[TaskRecord]:
        """Store new records in one transaction; return them as stored, in order.

        Each returned record carries its assigned ``sequence``; a duplicate (same task id
        or idempotency key as a stored record) is replaced by the existing record.
        """
        return self.apply(records, ())

    def update(self, records: Sequence[TaskRecord]) -> None:
        """Replace stored records (by ``task_id``) in one transaction.

        Raises :class:`~messages.UnknownTask` for an id that is not stored; nothing of the
        batch is applied then.
        """
        self.apply((), records)

    @abstractmethod
    def apply(
        self, inserts: Sequence[TaskRecord], updates: Sequence[TaskRecord]
    ) -> list[TaskRecord]:
        """Insert then update in ONE transaction (group commit); return the inserted records.

        Updates are applied after the inserts, in order, so an update may replace a record
        inserted by the same call; when one id is updated twice, the last one wins.
        """

    # -- reads ---------------------------------------------------------------------------

    @abstractmethod
    def get(self, task_id: uuid.UUID | str) -> TaskRecord | None:
        """The stored record with this id (a UUID or its string), or None."""

    @abstractmethod
    def get_by_idempotency_key(self, key: str) -> TaskRecord | None:
        """The stored record whose ``spec.idempotency_key`` is ``key``, or None."""

    @abstractmethod
    def list_tasks(
        self,
        state: TaskState | None = None,
        limit: int = DEFAULT_LIST_LIMIT,
        *,
        after_sequence: int = 0,
    ) -> list[TaskRecord]:
        """Up to ``limit`` records (of ``state``, if given) ordered by sequence.

        ``after_sequence`` pages through: pass the last sequence of the previous page.
        """

    def list_heads(
        self,
        limit: int = DEFAULT_LIST_LIMIT,
        *,
        after_sequence: int = 0,
        state: TaskState | None = None,
    ) -> list[tuple[int, uuid.UUID, TaskState]]:
        """``(sequence, task_id, state)`` of up to ``limit`` tasks (of ``state``, if given)
        ordered by sequence: a cheap scan for what is new (no record decoded where the
        backend can avoid it).

        ``after_sequence`` pages through, as in :meth:`list_tasks`.
        """
        return [
            (record.sequence, record.task_id, record.state)
            for record in self.list_tasks(state, limit, after_sequence=after_sequence)
        ]

    @abstractmethod
    def prune(
        self,
        before: datetime,
        states: Collection[TaskState] = PRUNED_BY_DEFAULT,
        limit: int = DEFAULT_LIST_LIMIT,
    ) -> int:
        """Delete up to ``limit`` finished tasks in ``states`` (terminal states only) last
        updated before ``before``, oldest first; return how many. Their idempotency keys
        are free again. Raises ValueError for a state that is not terminal."""

    @abstractmethod
    def counts(self) -> dict[TaskState, int]:
        """How many tasks are in each state (every state present, zero included)."""

    @abstractmethod
    def recoverable(self) -> list[TaskRecord]:
        """Every non-terminal task, by (priority desc, sequence asc).

        What a restarted runtime reloads: so the QUEUED ones come back in queue order.
        """

    @property
    def external_writers(self) -> bool:
        """True for a store that other processes may add tasks to while one runner runs
        them (a SQLite file: ``arbiter submit`` beside ``arbiter worker``); that runner
        then looks for such tasks (see ``RunnerConfig.pickup_interval_s``). False for
        ``memory://`` (one process) and for a shared store (claims do it instead)."""
        return False

    def last_sequence(self) -> int:
        """The highest sequence given so far (0 for an empty store). Only stores with
        ``external_writers`` need it."""
        raise NotImplementedError(f"{type(self).__name__} does not track its last sequence")

    def dead_letters(self, limit: int = DEFAULT_LIST_LIMIT) -> list[TaskRecord]:
        """Dead-lettered tasks, oldest first (``list_tasks(DEAD_LETTERED, limit)``)."""
        return self.list_tasks(TaskState.DEAD_LETTERED, limit)

    concurrent_inserts: ClassVar[bool] = False
    """True when any thread may call :meth:`insert` while the journal writes (an
    in-process store behind its own lock). ``submit`` then stores new tasks itself and
    hands them to the queue, instead of a round trip through the journal's thread, which
    on the benchmark VM was 0.24 ms of a 0.25 ms ``submit``. A task's updates still come
    after its insert: nothing can update a task before the queue has it."""

    # -- shared mode: many runners on one store (optional) -------------------------------
    #
    # A store with ``shared = True`` is used by several runner processes at once. Tasks are
    # not owned by whoever submitted them: a runner ``claim``s unowned QUEUED tasks, which
    # gives it a lease (``owner``, ``lease_expires_at``) that it must ``renew``; a lease that
    # expires (the runner died, or paused too long) is rescued by any runner
    # (``rescue_expired``), and a write of the old owner is then refused ("fenced").
    # Lease times are the database's clock, so hosts need not agree on the time.

    @property
    def shared(self) -> bool:
        """True when several runners may share this store (claims, leases, fencing)."""
        return False

    def apply_fenced(
        self, inserts: Sequence[TaskRecord], updates: Sequence[TaskRecord]
    ) -> tuple[list[TaskRecord], frozenset[uuid.UUID]]:
        """Like :meth:`apply`, also returning the ids of tasks whose updates were fenced.

        In a shared store an update of a *leased* record (``owner`` and
        ``lease_expires_at`` set, as :meth:`claim` makes them) is not applied when the
        stored owner differs, or the stored attempt is higher: the lease was lost, another
        runner owns the task now. The rest of the batch is applied, in one transaction.
        Stores that are not shared fence nothing.
        """
        return self.apply(inserts, updates), frozenset()

    def claim(
        self,
        owner: str,
        limit: int,
        lease_s: float,
        capabilities: Collection[frozenset[str]] | None = None,
    ) -> list[TaskRecord]:
        """Take up to ``limit`` unowned QUEUED tasks (and RETRY_WAIT ones now due, moved to
        QUEUED), by (priority desc, sequence asc), for ``owner`` with a lease of
        ``lease_s`` seconds; return them as stored. Two claimers never get the same task.

        ``capabilities``: the capability sets of the claimer's agents; only tasks one of
        them can run (type and required capabilities in the set) are taken. None: any.
        """
        raise NotImplementedError(f"{type(self).__name__} is not a shared store")

    def cancel_unowned(self, task_id: uuid.UUID) -> TaskRecord | None:
        """Cancel ``task_id`` if no runner holds it (delayed, queued or waiting for a
        retry, without an owner); return it as stored, or None if it is not such a task
        (a runner claimed it, it ended, or there is none)."""
        raise NotImplementedError(f"{type(self).__name__} is not a shared store")

    def promote_due(self, limit: int) -> list[TaskRecord]:
        """Move up to ``limit`` unowned delayed tasks (PENDING) whose run time has come to
        QUEUED, for any claimer to take (and notify the claimers); return them as stored.
        Each is promoted by exactly one caller, however many race."""
        raise NotImplementedError(f"{type(self).__name__} is not a shared store")

    def renew(self, owner: str, lease_s: float) -> int:
        """Extend to ``lease_s`` seconds from now the lease of every unfinished task of
        ``owner``; return how many."""
        raise NotImplementedError(f"{type(self).__name__} is not a shared store")

    def rescue_expired(self, limit: int) -> list[TaskRecord]:
        """Free up to ``limit`` unfinished tasks whose lease expired; return them as stored.

        Not started (PENDING, QUEUED, ASSIGNED): QUEUED without owner. RETRY_WAIT: without
        owner, claimable when due. Started (RUNNING, SUSPENDED, FAILED, TIMED_OUT): the
        attempt counts; QUEUED without owner if attempts are left, else DEAD_LETTERED.
        Each expired task is rescued by exactly one caller, however many race.
        """
        raise NotImplementedError(f"{type(self).__name__} is not a shared store")

    def release(self, owner: str) -> list[TaskRecord]:
        """Free every unfinished task of ``owner`` now, as :meth:`rescue_expired` frees an
        expired one (a runner stopping gracefully gives its tasks back)."""
        raise NotImplementedError(f"{type(self).__name__} is not a shared store")

    def listen(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback()`` (on a daemon thread) whenever tasks may have become claimable
        (new tasks, rescued ones, re-queued dead letters), and once after a reconnection;
        returns a function that stops listening."""
        raise NotImplementedError(f"{type(self).__name__} is not a shared store")

    def register_runner(self, runner_id: str, host: str, pid: int) -> None:
        """Record a runner using the store (its heartbeat starts now)."""
        raise NotImplementedError(f"{type(self).__name__} is not a shared store")

    def heartbeat_runner(self, runner_id: str) -> None:
        """The runner is alive (re-registers it if its row is gone)."""
        raise NotImplementedError(f"{type(self).__name__} is not a shared store")

    def live_runners(self, max_age_s: float) -> list[dict[str, Any]]:
        """Runners whose last heartbeat is at most ``max_age_s`` seconds old, as JSON-able
        dicts: runner_id, host, pid, started_at, heartbeat_at, tasks (unfinished owned)."""
        raise NotImplementedError(f"{type(self).__name__} is not a shared store")

    def deregister_runner(self, runner_id: str) -> None:
        """Forget a runner (it stopped)."""
        raise NotImplementedError(f"{type(self).__name__} is not a shared store")

    def try_lead(self, name: str, owner: str, lease_s: float) -> bool:
        """Take the leader lease ``name`` for ``owner`` if it is free or expired, or renew
        it if ``owner`` holds it; True when ``owner`` is the leader for ``lease_s`` now."""
        raise NotImplementedError(f"{type(self).__name__} is not a shared store")

    def resign(self, name: str, owner: str) -> bool:
        """Give up the leader lease ``name`` if ``owner`` holds it; True if it did."""
        raise NotImplementedError(f"{type(self).__name__} is not a shared store")

    def leader(self, name: str) -> str | None:
        """Who holds the unexpired leader lease ``name``, or None."""
        raise NotImplementedError(f"{type(self).__name__} is not a shared store")

    # -- introspection -------------------------------------------------------------------

    @property
    @abstractmethod
    def schema_version(self) -> int:
        """The schema version of the open store."""

    @property
    @abstractmethod
    def url(self) -> str:
        """The store's URL with any password hidden (safe to log)."""

    @abstractmethod
    def statistics(self) -> StoreStatistics:
        """Counters since this object was created (see :data:`StoreStatistics`)."""

    def __repr__(self) -> str:
        state = "open" if self.is_open else "closed"
        return f"<{type(self).__name__} {self.url} {state}>"


def check_prune(
    before: datetime, states: Collection[TaskState], limit: int
) -> tuple[TaskState, ...]:
    """The states of a :meth:`TaskStore.prune`, checked (terminal, sorted); refuse a naive
    ``before`` or a negative ``limit`` (shared by the backends)."""
    if before.tzinfo is None:
        raise ValueError(f"before must be timezone-aware, got {before!r}")
    if limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    checked = tuple(sorted({TaskState(state) for state in states}))
    live = [state.value for state in checked if state not in TERMINAL_STATES]
    if live:
        raise ValueError(f"only finished tasks can be pruned, not {', '.join(live)}")
    return checked


def check_limit(limit: int, after_sequence: int) -> None:
    """Refuse a negative ``limit`` or ``after_sequence`` (shared by the backends)."""
    if limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    if after_sequence < 0:
        raise ValueError(f"after_sequence must be >= 0, got {after_sequence}")


def new_statistics() -> StoreStatistics:
    """Fresh counters for a store: every name of :data:`StoreStatistics`, at zero."""
    return {
        "commits": 0,
        "rollbacks": 0,
        "records_inserted": 0,
        "duplicates": 0,
        "records_updated": 0,
        "records_written": 0,
    }


def count_commit(stats: StoreStatistics, inserted: int, duplicates: int, updated: int) -> None:
    """Count one committed batch in ``stats`` (the caller holds the lock guarding them)."""
    stats["commits"] += 1
    stats["records_inserted"] += inserted
    stats["duplicates"] += duplicates
    stats["records_updated"] += updated
    stats["records_written"] += inserted + updated


def parse_task_id(task_id: uuid.UUID | str) -> uuid.UUID | None:
    """``task_id`` as a UUID; None for a string that is not one (so no task has it)."""
    if isinstance(task_id, uuid.UUID):
        return task_id
    try:
        return uuid.UUID(task_id)
    except (ValueError, TypeError, AttributeError):
        return None


def store_for_url(url: str) -> TaskStore:
    """The store a URL names, NOT opened yet (call ``open()`` in the owning thread).

    Raises ValueError for a malformed URL or unknown scheme, and
    :class:`~messages.StoreUnavailable` for a backend that is not available.
    """
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep:
        raise ValueError(
            f"store URL {redact_url(url)!r} has no scheme; "
            "use memory://, sqlite:///path/to/file.db or postgresql://..."
        )
    if scheme == "memory":
        if rest:
            raise ValueError(f"memory store URL takes no path or options: {redact_url(url)!r}")
        from actors.journal.memory import MemoryStore

        return MemoryStore()
    if scheme == "sqlite":
        return _sqlite_for_url(url)
    if scheme in _POSTGRES_SCHEMES or scheme.startswith("postgresql+"):
        return _postgres_for_url(url)
    raise ValueError(
        f"unknown store scheme {scheme!r} in {redact_url(url)!r}; "
        "supported: memory://, sqlite:///path, postgresql://"
    )


def resolve_store_url(
    url: str | None = None,
    file: str | None = None,
    *,
    default: str,
    environ: Mapping[str, str] | None = None,
) -> str:
    """The store URL to use: ``url``, else the first line of ``file``, else
    ``$ARBITER_STORE``, else the first line of the file ``$ARBITER_STORE_FILE``, else
    ``default``. A file keeps the password out of the command line (``ps``), the shell's
    history and the environment of child processes.

    Raises ValueError for a file that cannot be read or holds no URL (the message names
    the file, never its content).
    """
    env = os.environ if environ is None else environ
    if url:
        return url
    if file:
        return _url_from_file(file, "--store-file")
    if env.get("ARBITER_STORE"):
        return env["ARBITER_STORE"]
    if env.get("ARBITER_STORE_FILE"):
        return _url_from_file(env["ARBITER_STORE_FILE"], "$ARBITER_STORE_FILE")
    return default


def _url_from_file(path: str, origin: str) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            line = handle.readline().strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise ValueError(f"cannot read the store URL from {origin} {path}: {reason}") from None
    if not line:
        raise ValueError(f"{origin} {path} holds no store URL (its first line is empty)")
    return line


def open_store(url: str) -> TaskStore:
    """Open the store a URL names (see the module docstring) and return it.

    Call it in the thread that will own the store.
    """
    return store_for_url(url).open()


def _postgres_for_url(url: str) -> TaskStore:
    """A :class:`~actors.journal.postgres.PostgresStore`; psycopg is imported only here."""
    from messages import StoreUnavailable

    try:
        from actors.journal.postgres import PostgresStore
    except ImportError as exc:
        raise StoreUnavailable(
            f"the postgres store {redact_url(url)} needs psycopg 3 and psycopg-pool "
            f"(pip install 'arbiter-taskrunner[postgres]'): {exc}"
        ) from None
    return PostgresStore(url)


def _sqlite_for_url(url: str) -> TaskStore:
    from actors.journal.sqlite import SqliteStore

    parts = urlsplit(url)
    if parts.netloc:
        raise ValueError(
            f"sqlite URL {redact_url(url)!r} has a host; use sqlite:///relative.db or sqlite:////abs.db"
        )
    path = unquote(parts.path[1:])  # strip the '/' that separates the (empty) host
    if not path or path.endswith("/"):
        raise ValueError(f"sqlite URL {url!r} names no file")
    if path == ":memory:":
        raise ValueError("use memory:// for an in-process store, not sqlite:///:memory:")
    durability: Durability = "normal"
    busy_timeout = 5.0
    for key, value in parse_qsl(parts.query, keep_blank_values=True, strict_parsing=False):
        if key == "durability":
            if value not in ("normal", "fsync"):
                raise ValueError(f"durability must be 'normal' or 'fsync', got {value!r}")
            durability = "fsync" if value == "fsync" else "normal"
        elif key == "busy_timeout":
            try:
                busy_timeout = float(value)
            except ValueError:
                raise ValueError(f"busy_timeout must be seconds, got {value!r}") from None
        else:
            raise ValueError(
                f"unknown sqlite store option {key!r}; known: durability, busy_timeout"
            )
    return SqliteStore(path, durability=durability, busy_timeout=busy_timeout, url=url)


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (in the user info or the query).

    Never raises; a URL without a secret comes back unchanged.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    authority_end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    authority, tail = rest[:authority_end], rest[authority_end:]
    userinfo, at, hostport = authority.rpartition("@")
    if at and ":" in userinfo:
        authority = f"{userinfo.partition(':')[0]}:***@{hostport}"
    before_fragment, hash_sign, fragment = tail.partition("#")
    path, question, query = before_fragment.partition("?")
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(key.lower() in _SECRET_QUERY_KEYS for key, _ in pairs):
            query = urlencode(
                [(k, "***" if k.lower() in _SECRET_QUERY_KEYS else v) for k, v in pairs],
                quote_via=quote,
                safe="*/",
            )
    return f"{scheme}://{authority}{path}{question}{query}{hash_sign}{fragment}"
