"""The check that keeps shared state out of messages: only immutable values may be sent."""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import uuid
from typing import Any, Final

from pydantic import BaseModel

from messages.base import FrozenDict

__all__ = ["check_immutable", "register_immutable"]

_ATOMS: frozenset[type] = frozenset(
    {
        str,
        int,
        float,
        bool,
        bytes,
        complex,
        type(None),
        uuid.UUID,
        datetime.datetime,
        datetime.date,
        datetime.time,
        datetime.timedelta,
        decimal.Decimal,
        range,
    }
)
# Per-class verdicts so the check costs one dict lookup for message models on the hot path.
_CLASS_VERDICT: dict[type, bool] = {}


def _class_is_frozen(cls: type) -> bool:
    verdict = _CLASS_VERDICT.get(cls)
    if verdict is None:
        if issubclass(cls, BaseModel):
            verdict = bool(cls.model_config.get("frozen"))
        elif dataclasses.is_dataclass(cls):
            params = getattr(cls, "__dataclass_params__", None)
            verdict = bool(params is not None and params.frozen)
        elif issubclass(cls, enum.Enum):
            verdict = True
        else:
            verdict = False
        _CLASS_VERDICT[cls] = verdict
    return verdict


known_frozen: Final = _CLASS_VERDICT.get
"""``known_frozen(type(message)) is True``: a class already found frozen, so the message
needs no :func:`check_immutable` call (a C-level lookup on the hot path of ``tell``)."""


def register_immutable(cls: type) -> None:
    """Declare instances of ``cls`` safe to send (handles such as actor references)."""
    _CLASS_VERDICT[cls] = True


def check_immutable(value: Any, _depth: int = 0) -> None:
    """Raise ``TypeError`` unless ``value`` is immutable all the way down.

    Allowed: frozen pydantic models and frozen dataclasses (trusted to hold immutable
    fields), enums, ``FrozenDict``, tuples and frozensets of allowed values, and the
    scalar types str, int, float, bool, bytes, None, UUID, datetimes and Decimal.
    """
    cls = type(value)
    if cls in _ATOMS:
        return
    if cls is tuple or cls is frozenset:
        if _depth > 32:
            raise TypeError("message nested too deeply to check")
        for item in value:
            check_immutable(item, _depth + 1)
        return
    if cls is FrozenDict:
        for item in value.values():
            check_immutable(item, _depth + 1)
        return
    if _class_is_frozen(cls):
        return
    if isinstance(value, tuple):  # named tuples
        for item in value:
            check_immutable(item, _depth + 1)
        return
    raise TypeError(
        f"cannot send a mutable {cls.__name__}: messages must be immutable "
        "(a frozen model, tuple, frozenset, str, int, float, bool, bytes or None)"
    )
