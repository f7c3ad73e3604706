"""The frozen message base and deep-immutable JSON values.

Every message is a pydantic model with ``frozen=True`` and ``extra="forbid"``; JSON values
(payloads, results) are converted on validation into immutable containers: objects become
:class:`FrozenDict`, arrays become tuples. So nothing mutable ever crosses a thread.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, ItemsView, Iterator, KeysView, Mapping, ValuesView
from typing import Annotated, Any, Final, Self, TypeAlias

from pydantic import BaseModel, BeforeValidator, ConfigDict, PlainSerializer

__all__ = [
    "EMPTY_FROZEN_DICT",
    "FrozenDict",
    "JsonValue",
    "Message",
    "freeze_json",
    "json_size",
    "json_text",
    "thaw_json",
]


class FrozenDict(Mapping[str, Any]):
    """An immutable, hashable mapping used for JSON objects inside messages."""

    __slots__ = ("_data", "_hash", "_text")

    def __init__(self, data: Mapping[str, Any] | None = None) -> None:
        self._data: dict[str, Any] = dict(data) if data else {}
        self._hash: int | None = None
        # Its compact JSON text once asked for, if short (:func:`json_text`): the size
        # check at submit and the memory store's packing of the finished task encode a
        # small payload once, and a big one costs no second copy while it is queued.
        self._text: str | None = None

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    # The dict's own views and lookups (in C), not the Mapping mixins' Python ones: the
    # hot path walks payloads (thawing, encoding) for every task.
    def __contains__(self, key: object) -> bool:
        return key in self._data

    def get(self, key: str, default: Any = None) -> Any:
        return self._data.get(key, default)

    def keys(self) -> KeysView[str]:
        return self._data.keys()

    def values(self) -> ValuesView[Any]:
        return self._data.values()

    def items(self) -> ItemsView[str, Any]:
        return self._data.items()

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


EMPTY_FROZEN_DICT: FrozenDict = FrozenDict()
"""The one empty FrozenDict: every empty JSON object and empty default shares it (it is
immutable), so an empty payload or trace context costs no memory per message."""


def empty_frozen_dict() -> FrozenDict:
    """``EMPTY_FROZEN_DICT``, as a pydantic ``default_factory``."""
    return EMPTY_FROZEN_DICT


_SCALARS = (str, int, float, bool, type(None))


def freeze_json(value: Any, _depth: int = 0) -> Any:
    """Return ``value`` as a deep-immutable JSON value, or raise ``ValueError``.

    Accepts what ``json`` can encode: objects with string keys, arrays (list or tuple),
    strings, finite numbers, booleans and None. Anything else (sets, bytes, objects, NaN)
    is refused, so a payload is always portable to every store.
    """
    if type(value) is dict:
        # The commonest payload and result: a small flat object of strings, numbers,
        # booleans and nulls. One pass checks it, and a short one's text is made at once:
        # the size check at submit and the store's packing of the finished task need it.
        chars = 0  # of its strings: a long one makes a text too long to keep
        for key, item in value.items():
            if type(key) is not str:
                break
            kind = type(item)
            if kind is str:
                chars += len(item)
            elif kind not in _FLAT_EXACT and (kind is not float or not _isfinite(item)):
                break
        else:
            return _flat_frozen(value, chars <= _KEPT_TEXT) if value else EMPTY_FROZEN_DICT
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
        return FrozenDict(out) if out else EMPTY_FROZEN_DICT
    if isinstance(value, list | tuple):
        return tuple(freeze_json(item, _depth + 1) for item in value)
    raise ValueError(f"value of type {type(value).__name__} is not JSON")


def thaw_json(value: Any) -> Any:
    """Return a plain (mutable) JSON copy of a frozen value, for encoding or for a handler."""
    if type(value) is FrozenDict:
        data = value._data
        for item in data.values():
            if type(item) not in _FLAT:
                break
        else:
            return data.copy()  # flat: a copy of its dict is the whole thaw
    if isinstance(value, Mapping):
        return {key: thaw_json(item) for key, item in value.items()}
    if isinstance(value, tuple | list):
        return [thaw_json(item) for item in value]
    return value


def _no_default(value: Any) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _make_encoder() -> Callable[[Any], str]:
    """``json.dumps(value, separators=(",", ":"), ensure_ascii=False)`` for containers,
    as one C encoder made once: ``JSONEncoder.encode`` builds a new one on every call,
    which costs more than encoding a small payload."""
    make = getattr(json.encoder, "c_make_encoder", None)
    plain = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
    if make is None:  # a Python without the C accelerator
        return plain
    encoder = make(
        None, _no_default, json.encoder.encode_basestring, None, ":", ",", False, False, True
    )
    join = "".join

    def encode(value: Any) -> str:
        if type(value) is dict or type(value) is list:
            return join(encoder(value, 0))
        return plain(value)  # (a scalar: the C encoder wants a container)

    return encode


_encode_json = _make_encoder()

_FLAT = frozenset({str, int, float, bool, type(None)})
_FLAT_EXACT = frozenset({str, int, bool, type(None)})
"""JSON scalars that need no check beyond their type (a float must be finite)."""
_isfinite = math.isfinite
_KEPT_TEXT = 256
"""A FrozenDict keeps its JSON text if it is at most this many characters."""
_new_frozen = object.__new__
_set_frozen_data = FrozenDict.__dict__["_data"].__set__
_set_frozen_hash = FrozenDict.__dict__["_hash"].__set__
_set_frozen_text = FrozenDict.__dict__["_text"].__set__


def _flat_frozen(data: dict[str, Any], short: bool) -> FrozenDict:
    """``FrozenDict(data)`` for a non-empty flat object of exact JSON scalar types (checked
    by the caller), with its text if it is ``short`` enough to be kept (a long one is made
    once, when asked for: it is not kept, so making it here would make it twice)."""
    frozen: FrozenDict = _new_frozen(FrozenDict)
    copy = data.copy()
    _set_frozen_data(frozen, copy)
    _set_frozen_hash(frozen, None)
    text = _encode_json(copy) if short else None
    _set_frozen_text(frozen, text if text is not None and len(text) <= _KEPT_TEXT else None)
    return frozen


def json_text(value: Any) -> str:
    """The compact JSON text of a frozen (or plain) JSON value (a FrozenDict keeps its
    own, made once: it is immutable)."""
    if value is EMPTY_FROZEN_DICT:  # the commonest payload: ``{}``
        return "{}"
    if type(value) is FrozenDict:
        text = value._text
        if text is None:
            if all(type(item) in _FLAT for item in value._data.values()):
                text = _encode_json(value._data)  # flat: nothing to thaw (str keys)
            else:
                text = _encode_json(thaw_json(value))  # json encodes tuples as lists
            if len(text) <= _KEPT_TEXT:
                value._text = text
        return text
    return _encode_json(thaw_json(value))


_ESCAPED: Final = bytes(range(0x20)) + b'"\\'
"""The bytes JSON writes escaped in a string: control characters, quote, backslash (in
UTF-8 no other character's bytes are below 0x80)."""


def _flat_size(data: dict[str, Any]) -> int | None:
    """Bytes of the compact UTF-8 JSON text of a non-empty flat object (exact JSON scalar
    values, ``str`` keys), counted without making the text: a long string's text costs
    several times its UTF-8 encoding and a scan for escapes. None if a string needs
    escapes (the caller makes the text then)."""
    if not data:
        return 2
    size = 2 * len(data) + 1  # the braces, a colon a member, the commas between them
    for key, item in data.items():
        encoded = key.encode()
        if len(encoded.translate(None, _ESCAPED)) != len(encoded):
            return None
        size += len(encoded) + 2
        kind = type(item)
        if kind is str:
            encoded = item.encode()
            if len(encoded.translate(None, _ESCAPED)) != len(encoded):
                return None
            size += len(encoded) + 2
        elif kind is bool:
            size += 4 if item else 5
        elif item is None:
            size += 4
        else:
            size += len(repr(item))  # an int or a finite float, as ``json`` writes them
    return size


def json_size(value: Any) -> int:
    """Bytes of the compact UTF-8 JSON encoding of ``value``."""
    if value is EMPTY_FROZEN_DICT:
        return 2
    if (
        type(value) is FrozenDict
        and value._text is None
        and all(type(item) in _FLAT for item in value._data.values())
    ):
        # A long flat payload (a short one keeps its text): its size without its text,
        # which is not kept (the store's packing makes it, once).
        try:
            size = _flat_size(value._data)
        except UnicodeEncodeError:
            size = None  # a lone surrogate: the text's encoding below says so
        if size is not None:
            return size
    text = json_text(value)
    return len(text) if text.isascii() else len(text.encode())


JsonValue: TypeAlias = Annotated[
    Any,
    BeforeValidator(freeze_json),
    PlainSerializer(thaw_json, when_used="always"),
]
"""A JSON value, frozen on validation and thawed on serialisation."""


class Message(BaseModel):
    """Base of every message: frozen, no unknown fields, strict types.

    Messages are kept compact in memory (a runner holds one task record per queued task):
    every message built by :meth:`fast`, :meth:`evolve` or validation keeps its fields in
    a *key-sharing* dict (CPython stores the field names once per class and only the
    values per instance: about 40% of an ordinary dict) and shares its "fields set" with
    the other messages of its class that set the same fields. Both are invisible to
    pydantic and to callers: the dict is an ordinary ``dict``, and a frozen model never
    changes its fields set in place (pydantic copies it in ``model_copy``).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    def model_post_init(self, context: Any, /) -> None:
        """After validation: the same values moved into a compact dict, the fields set
        shared with equal ones (see the class docstring)."""
        cls = type(self)
        shape = _SHAPES.get(cls) or _shape(cls)
        data = self.__dict__
        template = shape.template
        if len(data) == len(template):  # every field is set (not a partial construct)
            compact = template.copy()
            compact.update(data)
            _set_dict(self, compact)
        fields_set = self.__pydantic_fields_set__
        if isinstance(fields_set, set):
            _set_fields_set(self, shape.fields_sets.setdefault(frozenset(fields_set), fields_set))

    @classmethod
    def fast(cls, **values: Any) -> Self:
        """Build from values already validated (inside the runtime), skipping validation.

        Like :meth:`model_construct` but without its per-field Python loop: the hot path
        builds several messages per task. Missing fields take their defaults (computed
        once per class; every default of a message is immutable, so sharing is safe).
        Unknown or missing required fields are a bug, refused here with ``TypeError``.
        """
        shape = _SHAPES.get(cls) or _shape(cls)
        keys = values.keys()
        every = len(keys) == len(shape.allowed)
        if not (shape.allowed.issuperset(keys) and (every or shape.required <= keys)):
            raise TypeError(
                f"{cls.__name__}.fast: unknown {sorted(keys - shape.allowed)}, "
                f"missing {sorted(shape.required - keys)}"
            )
        data = shape.template.copy()  # the defaults, in a compact dict
        data.update(values)
        message = _new_object(cls)
        _set_dict(message, data)
        _set_fields_set(message, shape.every if every else set(keys))
        _set_extra(message, None)
        _set_private(message, None)
        return message

    def evolve(self, **changes: Any) -> Self:
        """A copy with ``changes`` (values already valid), without validation.

        Cheaper than ``model_copy(update=...)`` on the hot path: copies share one "fields
        set" object per class (holding every field name), where pydantic would copy a set
        per instance, and a copy of a compact dict is compact. Unknown field names raise
        ``TypeError``.
        """
        return self._evolved(changes)

    def _evolved(self, changes: dict[str, Any]) -> Self:
        """:meth:`evolve` with the changes in a dict (the caller's, not kept)."""
        cls = type(self)
        shape = _SHAPES.get(cls) or _shape(cls)
        if not shape.allowed.issuperset(changes):
            raise TypeError(
                f"{cls.__name__}.evolve: unknown {sorted(changes.keys() - shape.allowed)}"
            )
        data = self.__dict__.copy()
        data.update(changes)
        copy = _new_object(cls)
        _set_dict(copy, data)
        _set_fields_set(copy, shape.every)
        _set_extra(copy, None)
        _set_private(copy, None)
        return copy


# The slots every pydantic model has, set through their descriptors (cheaper than
# ``object.__setattr__`` by name; the hot path builds several messages per task). A
# model class defines no ``__new__`` of its own: ``object.__new__`` makes an empty one.
_new_object = object.__new__
_set_dict = BaseModel.__dict__["__dict__"].__set__
_set_fields_set = BaseModel.__dict__["__pydantic_fields_set__"].__set__
_set_extra = BaseModel.__dict__["__pydantic_extra__"].__set__
_set_private = BaseModel.__dict__["__pydantic_private__"].__set__


class _Shape:
    """What :class:`Message` keeps per class, computed once: field defaults, names, the
    compact template dict, and the shared fields sets."""

    __slots__ = ("allowed", "every", "fields_sets", "holder", "required", "template")

    def __init__(self, cls: type[Message]) -> None:
        fields = cls.model_fields
        defaults = {
            name: field.get_default(call_default_factory=True)
            for name, field in fields.items()
            if not field.is_required()
        }
        self.required = frozenset(name for name, field in fields.items() if field.is_required())
        self.allowed = frozenset(fields)
        # Shared by every copy evolve() makes (and by fast() when given every field);
        # pydantic never mutates the fields set of a frozen model in place.
        self.every: set[str] = set(fields)
        self.fields_sets: dict[frozenset[str], set[str]] = {self.allowed: self.every}
        # Every field, in declaration order, with its default (None for a required one,
        # always overwritten). Its copies share its keys, so each holds only the values.
        self.holder: type = type(f"_{cls.__name__}Fields", (), {})
        self._fill(tuple(fields), defaults)  # the class's shared keys learn the fields
        for _ in range(_SHARED_KEYS_SLACK):
            # CPython (3.11) gives each instance of a class values room for the keys' spare
            # capacity, and shrinks that spare room by one per instance created: after
            # these, a copy of the template holds just the fields' values.
            self.holder()
        self.template = self._fill(tuple(fields), defaults)

    def _fill(self, names: tuple[str, ...], defaults: dict[str, Any]) -> dict[str, Any]:
        # Attributes set on an instance of a plain class, always in the same order, live in
        # a key-sharing dict (the class holds the keys); copies of it stay key-sharing.
        instance = self.holder()
        for name in names:
            setattr(instance, name, defaults.get(name))
        data: dict[str, Any] = instance.__dict__
        return data


_SHAPES: dict[type[Message], _Shape] = {}
_SHARED_KEYS_SLACK = 40


def _shape(cls: type[Message]) -> _Shape:
    shape = _SHAPES.get(cls)
    if shape is None:
        shape = _SHAPES[cls] = _Shape(cls)
    return shape
