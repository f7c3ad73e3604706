"""Reading the rows of the SQL stores (sqlite, postgres) back into Arbiter values.

Both keep each task as its record's JSON (the source of truth) beside derived columns, a
``state`` column that ``counts`` groups by, and a one-row ``schema_version`` table; what
those rows mean, and which of them are corrupt, is decided here once. Writing rows stays
in each backend: the column order and value types follow that backend's own SQL.

``where`` (and ``unknown``) name the store in error messages: a file's path, or
``postgres store URL``. Callers pass a string they already hold, never one built per row.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from pydantic import ValidationError

from actors.journal.store import SCHEMA_VERSION
from messages import StoreCorrupt, StoreVersionError, TaskRecord, TaskState

__all__ = ["decode_counts", "decode_record", "decode_version"]


def decode_record(data: object, where: str) -> TaskRecord:
    """The record a row's JSON column holds; :class:`~messages.StoreCorrupt` if invalid."""
    try:
        # Not text (a sqlite column takes any type): validate "" to refuse it as invalid.
        return TaskRecord.model_validate_json(data if isinstance(data, str | bytes) else "")
    except ValidationError as exc:
        raise StoreCorrupt(f"{where}: a stored task record is invalid: {exc}") from exc


def decode_counts(rows: Iterable[Sequence[Any]], unknown: str) -> dict[TaskState, int]:
    """Every state's count from ``(state, count)`` rows, zero for a state without a row.

    A state this code does not know raises :class:`~messages.StoreCorrupt` with the
    message ``f"{unknown} {state!r}"``.
    """
    found = dict.fromkeys(TaskState, 0)
    for state, count in rows:
        try:
            found[TaskState(state)] = count
        except ValueError:
            raise StoreCorrupt(f"{unknown} {state!r}") from None
    return found


def decode_version(rows: Sequence[Sequence[Any]], where: str) -> int:
    """The version the rows of a ``schema_version`` table hold (exactly one integer).

    Raises :class:`~messages.StoreCorrupt` for a malformed table and
    :class:`~messages.StoreVersionError` for a version newer than this code knows.
    """
    if len(rows) != 1 or not isinstance(rows[0][0], int):
        raise StoreCorrupt(f"{where}: schema_version table is malformed: {rows!r}")
    version: int = rows[0][0]
    if version > SCHEMA_VERSION:
        raise StoreVersionError(
            f"{where} has schema version {version}, newer than this Arbiter "
            f"knows ({SCHEMA_VERSION}); upgrade Arbiter to open it"
        )
    return version
