"""The journal's store backends: memory, sqlite and postgres, behind one contract.

``PostgresStore`` is imported on first use, so psycopg is needed only for postgres.

>>> from messages import TaskState
>>> store = open_store("memory://")
>>> store.counts()[TaskState.QUEUED]
0
"""

from typing import TYPE_CHECKING

from actors.journal.memory import MemoryStore
from actors.journal.sqlite import SqliteStore
from actors.journal.store import (
    SCHEMA_VERSION,
    Durability,
    StoreStatistics,
    TaskStore,
    open_store,
    redact_url,
    resolve_store_url,
    store_for_url,
)

if TYPE_CHECKING:
    from actors.journal.postgres import PostgresStore

__all__ = [
    "SCHEMA_VERSION",
    "Durability",
    "MemoryStore",
    "PostgresStore",
    "SqliteStore",
    "StoreStatistics",
    "TaskStore",
    "open_store",
    "redact_url",
    "resolve_store_url",
    "store_for_url",
]


def __getattr__(name: str) -> object:
    """``PostgresStore``, imported lazily (it needs psycopg)."""
    if name == "PostgresStore":
        from actors.journal.postgres import PostgresStore

        return PostgresStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
