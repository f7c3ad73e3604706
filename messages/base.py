"""The frozen message base and deep-immutable JSON values.

Every message is a pydantic model with ``frozen=True`` and ``extra="forbid"``; JSON values
(payloads, results) are converted on validation into immutable containers: objects become
:class:`FrozenDict`, arrays become tuples. So nothing mutable ever crosses a thread.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from typing import Annotated, Any, Self, TypeAlias

from pydantic import BaseModel, BeforeValidator, ConfigDict, PlainSerializer

__all__ = [
    "FrozenDict",
    "JsonValue",
    "Message",
    "freeze_json",
    "json_size",
    "thaw_json",
]


class FrozenDict(Mapping[str, Any]):
    """An immutable, hashable mapping used for JSON objects inside messages."""

    __slots__ = ("_data", "_hash")

    def __init__(self, data: Mapping[str, Any] | None = None) -> None:
        self._data: dict[str, Any] = dict(data) if data else {}
        self._hash: int | None = None

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = hash(frozenset(self._data.items()))
        return self._hash

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Mapping):
            return dict(self._data) == dict(other)
        return NotImplemented

    def __repr__(self) -> str:
        return f"FrozenDict({self._data!r})"


_SCALARS = (str, int, float, bool, type(None))


def freeze_json(value: Any, _depth: int = 0) -> Any:
    """Return ``value`` as a deep-immutable JSON value, or raise ``ValueError``.

    Accepts what ``json`` can encode: objects with string keys, arrays (list or tuple),
    strings, finite numbers, booleans and None. Anything else (sets, bytes, objects, NaN)
    is refused, so a payload is always portable to every store.
    """
    if _depth > 64:
        raise ValueError("JSON value nested deeper than 64 levels")
    if isinstance(value, _SCALARS):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{value!r} is not a JSON number")
        return value
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"JSON object keys must be strings, got {type(key).__name__}")
            out[key] = freeze_json(item, _depth + 1)
        return FrozenDict(out)
    if isinstance(value, list | tuple):
        return tuple(freeze_json(item, _depth + 1) for item in value)
    raise ValueError(f"value of type {type(value).__name__} is not JSON")


def thaw_json(value: Any) -> Any:
    """Return a plain (mutable) JSON copy of a frozen value, for encoding or for a handler."""
    if isinstance(value, Mapping):
        return {key: thaw_json(item) for key, item in value.items()}
    if isinstance(value, tuple | list):
        return [thaw_json(item) for item in value]
    return value


def json_size(value: Any) -> int:
    """Bytes of the compact UTF-8 JSON encoding of ``value``."""
    return len(json.dumps(thaw_json(value), separators=(",", ":"), ensure_ascii=False).encode())


JsonValue: TypeAlias = Annotated[
    Any,
    BeforeValidator(freeze_json),
    PlainSerializer(thaw_json, when_used="always"),
]
"""A JSON value, frozen on validation and thawed on serialisation."""


class Message(BaseModel):
    """Base of every message: frozen, no unknown fields, strict types."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    @classmethod
    def fast(cls, **values: Any) -> Self:
        """Build from values already validated (inside the runtime), skipping validation.

        Like :meth:`model_construct` but without its per-field Python loop: the hot path
        builds several messages per task. Missing fields take their defaults (computed
        once per class; every default of a message is immutable, so sharing is safe).
        Unknown or missing required fields are a bug, refused here with ``TypeError``.
        """
        shape = _FAST_SHAPES.get(cls)
        if shape is None:
            fields = cls.model_fields
            shape = (
                {
                    name: field.get_default(call_default_factory=True)
                    for name, field in fields.items()
                    if not field.is_required()
                },
                frozenset(name for name, field in fields.items() if field.is_required()),
                frozenset(fields),
            )
            _FAST_SHAPES[cls] = shape
        defaults, required, allowed = shape
        keys = values.keys()
        if not (required <= keys and keys <= allowed):
            raise TypeError(
                f"{cls.__name__}.fast: unknown {sorted(keys - allowed)}, "
                f"missing {sorted(required - keys)}"
            )
        message = cls.__new__(cls)
        _set = object.__setattr__
        _set(message, "__dict__", {**defaults, **values})
        _set(message, "__pydantic_fields_set__", set(values))
        _set(message, "__pydantic_extra__", None)
        _set(message, "__pydantic_private__", None)
        return message

    def evolve(self, **changes: Any) -> Self:
        """A copy with ``changes`` (values already valid), without validation.

        Cheaper than ``model_copy(update=...)`` on the hot path: copies share one "fields
        set" object per class (holding every field name), where pydantic would copy a set
        per instance. Unknown field names raise ``TypeError``.
        """
        cls = type(self)
        every = _ALL_FIELDS.get(cls)
        if every is None:
            every = _ALL_FIELDS[cls] = set(cls.model_fields)
        if not changes.keys() <= every:
            raise TypeError(f"{cls.__name__}.evolve: unknown {sorted(changes.keys() - every)}")
        data = self.__dict__.copy()
        data.update(changes)
        copy = cls.__new__(cls)
        _set = object.__setattr__
        _set(copy, "__dict__", data)
        _set(copy, "__pydantic_fields_set__", every)
        _set(copy, "__pydantic_extra__", None)
        _set(copy, "__pydantic_private__", None)
        return copy


# Shared by every copy evolve() makes of a class; pydantic only ever mutates its own copies.
_ALL_FIELDS: dict[type[Message], set[str]] = {}
_FAST_SHAPES: dict[type[Message], tuple[dict[str, Any], frozenset[str], frozenset[str]]] = {}
