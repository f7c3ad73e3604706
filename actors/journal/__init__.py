"""The journal's store backends: memory, sqlite (and postgres, later), behind one contract.

>>> from messages import TaskState
>>> store = open_store("memory://")
>>> store.counts()[TaskState.QUEUED]
0
"""

from actors.journal.memory import MemoryStore
from actors.journal.sqlite import SqliteStore
from actors.journal.store import (
    SCHEMA_VERSION,
    Durability,
    StoreStatistics,
    TaskStore,
    open_store,
    redact_url,
    store_for_url,
)

__all__ = [
    "SCHEMA_VERSION",
    "Durability",
    "MemoryStore",
    "SqliteStore",
    "StoreStatistics",
    "TaskStore",
    "open_store",
    "redact_url",
    "store_for_url",
]
