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
"""

from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from collections.abc import Sequence
from types import TracebackType
from typing import Final, Literal, Self
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

from messages import TaskRecord, TaskState

__all__ = [
    "SCHEMA_VERSION",
    "Durability",
    "StoreStatistics",
    "TaskStore",
    "open_store",
    "redact_url",
    "store_for_url",
]

SCHEMA_VERSION: Final = 1
"""The newest schema version this code knows (every backend reports it once open)."""

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
    batches, never half of one. Writes are batches applied in ONE transaction: either all
    of a batch is stored or, when any part fails, none of it, and the error propagates.

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

    @abstractmethod
    def counts(self) -> dict[TaskState, int]:
        """How many tasks are in each state (every state present, zero included)."""

    @abstractmethod
    def recoverable(self) -> list[TaskRecord]:
        """Every non-terminal task, by (priority desc, sequence asc).

        What a restarted runtime reloads: so the QUEUED ones come back in queue order.
        """

    def dead_letters(self, limit: int = DEFAULT_LIST_LIMIT) -> list[TaskRecord]:
        """Dead-lettered tasks, oldest first (``list_tasks(DEAD_LETTERED, limit)``)."""
        return self.list_tasks(TaskState.DEAD_LETTERED, limit)

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


def check_limit(limit: int, after_sequence: int) -> None:
    """Refuse a negative ``limit`` or ``after_sequence`` (shared by the backends)."""
    if limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    if after_sequence < 0:
        raise ValueError(f"after_sequence must be >= 0, got {after_sequence}")


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
