"""The submit path's shortcuts build exactly what the full path builds.

``simple_spec`` (a dict of ``type``, ``payload`` and ``priority`` validated cheaply),
``json_size``'s fast paths, ``new_task_ids`` (a batch of UUIDv7 ids from one clock
reading and one draw of random bytes) and ``queued_records`` (records from one template)
are each checked against the slow path they replace; the runner's validation errors are
pinned word for word.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import messages.task as task_module
from messages import (
    Attempt,
    FrozenDict,
    InvalidMessage,
    PayloadTooLarge,
    TaskRecord,
    TaskSpec,
    TaskState,
    freeze_json,
    json_size,
    new_task_id,
)
from messages.base import EMPTY_FROZEN_DICT, json_text, thaw_json
from messages.task import (
    PRIORITY_MAX,
    PRIORITY_MIN,
    RandomPool,
    attempt_entry,
    new_task_ids,
    queued_records,
    simple_spec,
)
from supervisor.runner import RunnerConfig, TaskRunner, _validate
from tests.unit.test_messages import json_values

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def outcome(call: Any, *args: Any) -> tuple[str, Any]:
    """What ``call(*args)`` gives: ("ok", value) or ("error", "Type: message")."""
    try:
        return ("ok", call(*args))
    except Exception as exc:  # noqa: BLE001 (any error is an outcome to compare)
        return ("error", f"{type(exc).__name__}: {exc}")


def assert_same_spec(fast: TaskSpec, full: TaskSpec) -> None:
    """Equal, and built the same way: same fields set (the shared one), same compact dict."""
    assert fast == full
    assert fast.model_dump() == full.model_dump()
    assert fast.model_fields_set == full.model_fields_set
    assert fast.model_fields_set is full.model_fields_set  # shared, as validation shares it
    assert list(fast.__dict__.items()) == list(full.__dict__.items())
    assert sys.getsizeof(fast.__dict__) == sys.getsizeof(full.__dict__)
    assert type(fast.type) is str
    assert hash(fast) == hash(full)


# -- simple_spec ----------------------------------------------------------------------
@pytest.mark.parametrize("name", ["noop", "x", "x" * 200, " ", "a.b-c_d:e/f", "\x00"])
def test_a_type_only_dict_gives_the_spec_validation_gives(name: str) -> None:
    fast = simple_spec({"type": name})
    assert fast is not None
    assert_same_spec(fast, TaskSpec.model_validate({"type": name}))
    assert fast.payload is EMPTY_FROZEN_DICT
    assert fast.trace_context is EMPTY_FROZEN_DICT


@pytest.mark.parametrize(
    "value",
    [
        {"type": "noop", "payload": {"n": 1}},
        {"type": "noop", "payload": [1, "two", {"three": None}]},
        {"type": "noop", "payload": 3.5},
        {"type": "noop", "priority": PRIORITY_MIN},
        {"type": "noop", "priority": PRIORITY_MAX},
        {"type": "noop", "payload": {"n": 1}, "priority": PRIORITY_MIN},
        {"type": "noop", "payload": {}, "priority": PRIORITY_MAX},
    ],
)
def test_type_payload_and_priority_take_the_fast_path_to_the_same_spec(
    value: dict[str, Any],
) -> None:
    fast = simple_spec(value)
    assert fast is not None  # taken (not left to the full validation) for these inputs
    assert_same_spec(fast, TaskSpec.model_validate(value))


@pytest.mark.parametrize(
    "value",
    [
        {"type": ""},  # too short
        {"type": "x" * 201},  # too long
        {"type": 5},
        {"type": None},
        {"type": b"noop"},
        {"type": "\ud800"},  # not valid unicode: validation says so
        {"type": "é"},  # valid, but left to the full validation
        {"type": "noop", "priority": True},  # strict: a bool is not an int
        {"type": "noop", "priority": 1.0},
        {"type": "noop", "priority": -1},
        {"type": "noop", "priority": 10**6},
        {"type": "noop", "payload": {1: "x"}},  # not JSON: validation explains it
        {"type": "noop", "payload": float("nan")},
        {"type": "noop", "payload": {"s": {1, 2}}},
        {"type": "noop", "payload": {}, "priority": 1, "timeout_s": 1.0},
        {"type": "noop", "colour": "red"},
        {"typ": "noop"},
        {},
        MappingProxyType({"type": "noop"}),
        [("type", "noop")],
        "noop",
        None,
    ],
)
def test_anything_else_is_left_to_the_full_validation(value: Any) -> None:
    assert simple_spec(value) is None


def test_a_str_subclass_is_left_to_the_full_validation() -> None:
    class Name(str):
        pass

    assert simple_spec({"type": Name("noop")}) is None
    assert type(TaskSpec.model_validate({"type": Name("noop")}).type) is str


def test_the_input_dict_is_not_kept_or_changed() -> None:
    value = {"type": "noop"}
    spec = simple_spec(value)
    assert spec is not None and spec.__dict__ is not value
    value["type"] = "other"
    assert spec.type == "noop"
    assert value == {"type": "other"}


TYPE_VALUES = st.one_of(
    st.text(max_size=210),
    st.text(alphabet=st.characters(codec="ascii"), max_size=210),
    st.integers(),
    st.none(),
    st.booleans(),
    st.binary(max_size=5),
    st.lists(st.text(max_size=3), max_size=2),
)
JSONISH = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(),  # NaN and infinities are not JSON
        st.text(max_size=3),
        st.binary(max_size=2),  # not JSON
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.tuples(inner),
        st.dictionaries(st.one_of(st.text(max_size=2), st.integers(0, 2)), inner, max_size=3),
        st.frozensets(st.integers(0, 3), max_size=2),  # not JSON
    ),
    max_leaves=8,
)
OTHER_FIELDS = st.dictionaries(
    st.sampled_from(["priority", "payload", "colour", "timeout_s", "typ"]),
    st.one_of(
        st.integers(-2, 12),
        st.integers(-(10**6), 10**6),
        st.text(max_size=3),
        st.none(),
        st.just({}),
        JSONISH,
    ),
    max_size=3,
)


@given(TYPE_VALUES, OTHER_FIELDS, st.booleans())
def test_the_runner_validates_every_input_as_the_full_validation_does(
    name: Any, others: dict[str, Any], with_type: bool
) -> None:
    value: dict[str, Any] = {"type": name, **others} if with_type else dict(others)
    runner = TaskRunner(RunnerConfig())  # not started: _check_spec needs only the config
    got = outcome(runner._check_spec, value)
    want = outcome(_validate, TaskSpec, dict(value))
    assert got == want
    fast = simple_spec(value)
    if fast is not None:  # taken only for what the validation accepts
        assert want[0] == "ok"
        assert_same_spec(fast, want[1])


# The runner's messages for bad tasks, word for word as before the fast paths.
@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            {"type": "code", "colour": "red"},
            "InvalidMessage: invalid TaskSpec: colour: Extra inputs are not permitted",
        ),
        (
            {"type": "code", "priority": "high"},
            "InvalidMessage: invalid TaskSpec: priority: Input should be a valid integer",
        ),
        (
            {"type": "code", "priority": 10},
            "InvalidMessage: invalid TaskSpec: priority: Input should be less than or equal to 9",
        ),
        (
            {"type": "code", "priority": -1},
            "InvalidMessage: invalid TaskSpec: priority: "
            "Input should be greater than or equal to 0",
        ),
        (
            {"type": "code", "payload": {1, 2}},
            "InvalidMessage: invalid TaskSpec: payload: Value error, value of type set is not JSON",
        ),
        (
            {"type": "code", "payload": {"x": float("nan")}},
            "InvalidMessage: invalid TaskSpec: payload: Value error, nan is not a JSON number",
        ),
        (
            {"type": ""},
            "InvalidMessage: invalid TaskSpec: type: String should have at least 1 character",
        ),
        (
            {"type": "x" * 201},
            "InvalidMessage: invalid TaskSpec: type: String should have at most 200 characters",
        ),
        ({"type": 5}, "InvalidMessage: invalid TaskSpec: type: Input should be a valid string"),
        (
            {"type": "\ud800"},
            "InvalidMessage: invalid TaskSpec: type: "
            "Input should be a valid string, unable to parse raw data as a unicode string",
        ),
        ({}, "InvalidMessage: invalid TaskSpec: type: Field required"),
        (
            {"type": "code", "timeout_s": 0},
            "InvalidMessage: invalid TaskSpec: timeout_s: Input should be greater than 0",
        ),
        ("code", "InvalidMessage: expected a TaskSpec or a mapping of its fields, got str"),
        (
            {"type": "code", "payload": {"blob": "x" * 200}},
            "PayloadTooLarge: payload is 211 bytes of JSON; the limit is 100",
        ),
    ],
)
def test_the_runner_explains_bad_tasks_as_before(value: Any, message: str) -> None:
    runner = TaskRunner(RunnerConfig(max_payload_bytes=100))
    with pytest.raises((InvalidMessage, PayloadTooLarge)) as info:
        runner._check_spec(value)
    assert f"{type(info.value).__name__}: {info.value}" == message


def test_an_empty_payload_counts_two_bytes_against_the_limit() -> None:
    with pytest.raises(PayloadTooLarge, match="payload is 2 bytes of JSON; the limit is 1"):
        TaskRunner(RunnerConfig(max_payload_bytes=1))._check_spec({"type": "noop"})
    assert (
        TaskRunner(RunnerConfig(max_payload_bytes=2))._check_spec({"type": "noop"}).type == "noop"
    )


def test_validate_takes_specs_models_and_other_mappings_as_before() -> None:
    spec = TaskSpec(type="t", priority=3)
    assert _validate(TaskSpec, spec) is spec
    assert _validate(TaskSpec, MappingProxyType({"type": "t", "priority": 3})) == spec
    value = {"type": "t", "priority": 3, "payload": {"a": [1, {"b": None}]}}
    validated = _validate(TaskSpec, value)
    assert value == {"type": "t", "priority": 3, "payload": {"a": [1, {"b": None}]}}
    assert validated.payload == FrozenDict({"a": (1, FrozenDict({"b": None}))})


# -- json_size ---------------------------------------------------------------------------
def reference_size(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())


JSON = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(),
    ),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@given(JSON)
def test_json_size_is_the_size_of_the_compact_utf8_encoding(value: Any) -> None:
    assert json_size(freeze_json(value)) == reference_size(value)
    assert json_size(value) == reference_size(value)  # unfrozen values too


@given(st.dictionaries(st.text(), st.one_of(st.none(), st.booleans(), st.integers(), st.text())))
def test_json_size_of_flat_objects(value: dict[str, Any]) -> None:
    assert json_size(FrozenDict(value)) == reference_size(value)


LONG_TEXT = st.text(min_size=129, max_size=400) | st.text(
    alphabet=st.sampled_from('ab"\\\x00\x1f\x7fé☃\U0001f600 '), min_size=257, max_size=400
)
"""Strings long enough that a flat object holding one keeps no text (more than 256
characters of JSON): its size is counted from its strings' bytes. Quotes, backslashes and
control characters (escaped in JSON), DEL (not escaped), multi-byte characters."""


@given(
    st.dictionaries(
        st.text(max_size=8) | st.sampled_from(['k"', "k\\", "k\n", "ké"]),
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats(allow_nan=False, allow_infinity=False)
        | LONG_TEXT,
        min_size=1,
        max_size=5,
    ).filter(lambda value: len(json.dumps(value, separators=(",", ":"), ensure_ascii=False)) > 256)
)
def test_json_size_of_long_flat_objects_is_counted_without_their_text(
    value: dict[str, Any],
) -> None:
    frozen = freeze_json(value)
    assert frozen._text is None  # type: ignore[attr-defined]
    assert json_size(frozen) == reference_size(value)


def test_json_size_of_a_long_string_with_a_lone_surrogate_fails_as_its_encoding_does() -> None:
    frozen = freeze_json({"a": "\ud800" * 300})
    with pytest.raises(UnicodeEncodeError):
        json_size(frozen)


def test_json_size_of_the_shared_empty_object_and_others() -> None:
    assert json_size(EMPTY_FROZEN_DICT) == 2
    assert json_size(FrozenDict()) == 2
    assert json_size(FrozenDict({"a": "é"})) == len('{"a":"é"}'.encode())
    assert json_size(FrozenDict({"a": (1, "ü")})) == len('{"a":[1,"ü"]}'.encode())
    assert json_size(FrozenDict({"a": FrozenDict({"b": 1.5})})) == len('{"a":{"b":1.5}}')
    assert json_size((FrozenDict({"k": None}),)) == len('[{"k":null}]')
    assert json_size("☃") == 5 and json_size(None) == 4


@given(json_values)
def test_a_frozen_object_keeps_its_json_text_only_if_short(value: Any) -> None:
    """Encoded once for the size check and once more for nothing: a FrozenDict keeps its
    text (it is immutable) when it is at most 256 characters; a longer one is encoded
    again each time, not kept."""
    frozen = freeze_json({"v": value})
    expected = json.dumps(thaw_json(frozen), separators=(",", ":"), ensure_ascii=False)
    assert json_text(frozen) == expected
    assert json_text(frozen) == expected  # (the kept one, if kept)
    assert json_size(frozen) == len(expected.encode())
    kept = frozen._text  # type: ignore[attr-defined]
    assert kept == (expected if len(expected) <= 256 else None)


def test_a_long_json_text_is_not_kept() -> None:
    long, short = freeze_json({"s": "x" * 300}), freeze_json({"s": "x"})
    assert json_size(long) == 308 and json_size(short) == 9
    assert long._text is None and short._text == '{"s":"x"}'  # type: ignore[attr-defined]


# -- new_task_ids ------------------------------------------------------------------------
NS = 1_767_225_600_123_456_789  # 2026-01-01T00:00:00.123456789Z


def pinned_ids(
    monkeypatch: pytest.MonkeyPatch, count: int, ns: int, random: bytes
) -> tuple[list[uuid.UUID], list[int]]:
    """new_task_ids(count) made at ``ns`` from ``random``, and the sizes of its draws."""
    drawn: list[int] = []

    def urandom(n: int) -> bytes:
        drawn.append(n)
        assert len(random) >= n
        return random[:n]

    with monkeypatch.context() as patch:
        patch.setattr(time, "time_ns", lambda: ns)
        patch.setattr(task_module, "_random_bytes", urandom)
        ids = new_task_ids(count)
    return ids, drawn


def single_ids(monkeypatch: pytest.MonkeyPatch, ns: int, random: bytes) -> list[uuid.UUID]:
    """What new_task_id makes of each 10 bytes of ``random`` at ``ns``."""
    ids = []
    for offset in range(0, len(random), 10):
        with monkeypatch.context() as patch:
            patch.setattr(time, "time_ns", lambda: ns)
            patch.setattr(task_module, "_random_bytes", lambda n, o=offset: random[o : o + n])
            ids.append(new_task_id())
    return ids


def assert_uuid7(task_id: uuid.UUID) -> None:
    assert type(task_id) is uuid.UUID
    assert task_id.version == 7
    assert task_id.variant == uuid.RFC_4122
    assert task_id.is_safe is uuid.SafeUUID.unknown
    assert uuid.UUID(str(task_id)) == task_id
    assert uuid.UUID(int=task_id.int) == task_id
    assert hash(uuid.UUID(int=task_id.int)) == hash(task_id)


def assert_strictly_increasing(ids: list[uuid.UUID]) -> None:
    assert all(a < b for a, b in itertools.pairwise(ids))
    assert all(a.int < b.int for a, b in itertools.pairwise(ids))
    assert [str(i) for i in ids] == sorted(str(i) for i in ids)  # as text, too


@given(
    st.lists(
        st.integers(min_value=0, max_value=(1 << 80) - 1),
        min_size=8,
        max_size=8,
        unique_by=lambda drawn: drawn & ((1 << 74) - 1),  # no tie of the 74 bits used
    )
)
def test_a_batch_holds_what_new_task_id_makes_of_each_10_bytes_sorted(draws: list[int]) -> None:
    random = b"".join(drawn.to_bytes(10, "big") for drawn in draws)
    with pytest.MonkeyPatch.context() as monkeypatch:
        ids, drawn = pinned_ids(monkeypatch, 8, NS, random)
        singles = single_ids(monkeypatch, NS, random)
    assert drawn == [80]  # one draw for the batch
    assert len(set(singles)) == 8
    assert ids == sorted(singles)
    for task_id in ids:
        assert_uuid7(task_id)
        assert task_id.int >> 80 == NS // 1_000_000
    assert_strictly_increasing(ids)


def test_ids_of_a_real_batch_are_uuid7_unique_increasing_and_of_now() -> None:
    before = time.time_ns() // 1_000_000
    ids = new_task_ids(5000)
    after = time.time_ns() // 1_000_000
    assert len(ids) == len(set(ids)) == 5000
    for task_id in ids:
        assert_uuid7(task_id)
    assert_strictly_increasing(ids)
    assert before <= ids[0].int >> 80 <= ids[-1].int >> 80 <= after + 1
    later = new_task_ids(3)
    assert later[0].int >> 80 >= ids[0].int >> 80


@pytest.mark.parametrize(
    "random", [bytes(30), b"\x5a" * 30, bytes.fromhex("00" * 9 + "07") * 3], ids=str
)
def test_tied_random_bits_still_give_strictly_increasing_ids(
    monkeypatch: pytest.MonkeyPatch, random: bytes
) -> None:
    ids, _ = pinned_ids(monkeypatch, 3, NS, random)
    first = single_ids(monkeypatch, NS, random[:10])[0]
    assert ids[0] == first
    assert [i.int for i in ids[1:]] == [
        first.int + 1,
        first.int + 2,
    ]  # the random bits count on (rand_b: the low bits, here far from full)
    for task_id in ids:
        assert_uuid7(task_id)
    assert_strictly_increasing(ids)


def test_tied_all_ones_count_on_into_the_next_millisecond(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ids, _ = pinned_ids(monkeypatch, 3, NS, b"\xff" * 30)
    ms = NS // 1_000_000
    assert ids[0].int >> 80 == ms
    assert (ids[0].int >> 64) & 0xFFF == 0xFFF and ids[0].int & ((1 << 62) - 1) == (1 << 62) - 1
    assert [i.int >> 80 for i in ids[1:]] == [ms + 1, ms + 1]
    assert (ids[1].int >> 64) & 0xFFF == 0 and ids[1].int & ((1 << 62) - 1) == 0
    assert ids[2].int & ((1 << 62) - 1) == 1
    for task_id in ids:
        assert_uuid7(task_id)
    assert_strictly_increasing(ids)


def test_rand_b_carries_into_rand_a_past_the_variant_bits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # rand_a 0x123, rand_b all ones (the 80 bits: 6 unused, 12 rand_a, 62 rand_b), twice.
    drawn = (0x123 << 62 | ((1 << 62) - 1)).to_bytes(10, "big")
    ids, _ = pinned_ids(monkeypatch, 2, NS, drawn * 2)
    assert (ids[1].int >> 64) & 0xFFF == 0x124 and ids[1].int & ((1 << 62) - 1) == 0
    assert ids[1].int >> 80 == NS // 1_000_000
    for task_id in ids:
        assert_uuid7(task_id)
    assert_strictly_increasing(ids)


def test_the_timestamp_wraps_at_48_bits_as_new_task_id_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ms = (1 << 48) + 12_345
    ids, _ = pinned_ids(monkeypatch, 2, ms * 1_000_000 + 999_999, os.urandom(20))
    assert [i.int >> 80 for i in ids] == [12_345, 12_345]
    for task_id in ids:
        assert_uuid7(task_id)


def test_no_ids_draw_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    ids, drawn = pinned_ids(monkeypatch, 0, NS, b"")
    assert ids == [] and drawn == []


@given(st.lists(st.integers(min_value=0, max_value=(1 << 48) - 2), min_size=2, max_size=10))
def test_batches_sort_by_their_millisecond(stamps_ms: list[int]) -> None:
    batches = []
    with pytest.MonkeyPatch.context() as patch:
        for ms in stamps_ms:
            patch.setattr(time, "time_ns", lambda ms=ms: ms * 1_000_000 + 500_000)
            batches.append(new_task_ids(3))
    for batch, ms in zip(batches, stamps_ms, strict=True):
        assert [i.int >> 80 for i in batch] == [ms] * 3
        assert_strictly_increasing(batch)
    by_id = sorted(range(len(batches)), key=lambda k: batches[k][0])
    assert [stamps_ms[k] for k in by_id] == sorted(stamps_ms)


# -- queued_records ----------------------------------------------------------------------
def slow_record(task_id: uuid.UUID, spec: TaskSpec, owner: str | None) -> TaskRecord:
    """What the runner built before queued_records (per task, through TaskRecord.fast)."""
    return TaskRecord.fast(
        task_id=task_id,
        spec=spec,
        state=TaskState.QUEUED,
        attempt=0,
        max_attempts=spec.max_attempts or 3,
        sequence=0,
        created_at=NOW,
        updated_at=NOW,
        next_attempt_at=None,
        last_error=None,
        result=None,
        history=(),
        owner=owner,
        lease_expires_at=None,
        agent_id=None,
    )


@pytest.mark.parametrize("owner", ["runner-1", None])
def test_queued_records_are_what_task_record_fast_builds(owner: str | None) -> None:
    specs = [
        TaskSpec(type="a"),
        TaskSpec(type="b", max_attempts=7, payload={"k": [1, 2]}, priority=4),
        TaskSpec(type="c", deadline=NOW + timedelta(hours=1)),
    ]
    records = queued_records(specs, now=NOW, owner=owner, max_attempts=3)
    assert type(records) is tuple and len(records) == 3
    assert [r.spec for r in records] == specs
    assert all(r.spec is s for r, s in zip(records, specs, strict=True))
    assert [r.max_attempts for r in records] == [3, 7, 3]
    assert_strictly_increasing([r.task_id for r in records])
    for record, spec in zip(records, specs, strict=True):
        assert_uuid7(record.task_id)
        slow = slow_record(record.task_id, spec, owner)
        assert record == slow
        assert record.model_dump() == slow.model_dump()
        assert list(record.__dict__.items()) == list(slow.__dict__.items())
        assert sys.getsizeof(record.__dict__) == sys.getsizeof(slow.__dict__)  # compact
        assert record.model_fields_set is slow.model_fields_set  # the shared "every"
        assert record.__pydantic_extra__ is None and record.__pydantic_private__ is None
        assert (record.state, record.owner, record.created_at) == (TaskState.QUEUED, owner, NOW)
    moved = records[0].moved(TaskState.ASSIGNED, at=NOW, agent_id="a")
    assert (moved.state, moved.agent_id, records[0].state) == (
        TaskState.ASSIGNED,
        "a",
        TaskState.QUEUED,
    )
    assert TaskRecord.model_validate(records[1].model_dump()) == records[1]


def test_records_from_fast_specs_are_as_small_as_from_validated_ones() -> None:
    fast = simple_spec({"type": "noop"})
    assert fast is not None
    full = TaskSpec.model_validate({"type": "noop"})
    (a,) = queued_records([fast], now=NOW, owner="r", max_attempts=3)
    (b,) = queued_records([full], now=NOW, owner="r", max_attempts=3)
    assert a.spec == b.spec
    assert sys.getsizeof(a.__dict__) == sys.getsizeof(b.__dict__)
    assert sys.getsizeof(a.spec.__dict__) == sys.getsizeof(b.spec.__dict__)


def test_no_specs_make_no_records() -> None:
    assert queued_records([], now=NOW, owner=None, max_attempts=3) == ()


@given(
    number=st.integers(min_value=1, max_value=10_000),
    agent_id=st.one_of(st.none(), st.text(min_size=1, max_size=20)),
    started=st.one_of(st.none(), st.just(NOW)),
    ended=st.one_of(st.none(), st.just(NOW + timedelta(seconds=1))),
    outcome=st.sampled_from(["completed", "failed", "timed_out", "abandoned"]),
    error=st.one_of(st.none(), st.text(max_size=50)),
)
def test_attempt_entry_is_what_validation_builds(
    number: int,
    agent_id: str | None,
    started: datetime | None,
    ended: datetime | None,
    outcome: str,
    error: str | None,
) -> None:
    entry = attempt_entry(number, agent_id, started, ended, outcome, error)
    slow = Attempt(
        number=number,
        agent_id=agent_id,
        started_at=started,
        ended_at=ended,
        outcome=outcome,
        error=error,
    )
    assert entry == slow and entry.model_dump() == slow.model_dump()
    assert list(entry.__dict__.items()) == list(slow.__dict__.items())
    assert sys.getsizeof(entry.__dict__) == sys.getsizeof(slow.__dict__)  # compact
    assert entry.model_fields_set == slow.model_fields_set
    assert entry.__pydantic_extra__ is None and entry.__pydantic_private__ is None


def test_queued_records_take_consecutive_sequences_from_a_hint() -> None:
    specs = [TaskSpec(type="a")] * 3
    assert [r.sequence for r in queued_records(specs, now=NOW, owner=None, max_attempts=3)] == [
        0,
        0,
        0,
    ]
    hinted = queued_records(specs, now=NOW, owner=None, max_attempts=3, first_sequence=41)
    assert [r.sequence for r in hinted] == [41, 42, 43]


# -- the pool of random bytes ------------------------------------------------------------


def test_the_pool_hands_out_each_drawn_byte_once_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    source = bytes(range(256)) * 2
    draws: list[int] = []

    def urandom(n: int) -> bytes:
        start = sum(draws)
        draws.append(n)
        return source[start : start + n]

    monkeypatch.setattr(os, "urandom", urandom)
    pool = RandomPool(chunk=64)
    taken = [pool.take(10) for _ in range(6)]  # 60 of the first 64 bytes
    assert draws == [64]
    assert b"".join(taken) == source[:60]
    assert pool.take(10) == source[64:74]  # 4 left: not enough, a new chunk (none reused)
    assert draws == [64, 64]
    assert pool.take(17) == source[128:145]  # over a quarter of the chunk: drawn directly
    assert draws == [64, 64, 17]
    assert pool.take(6) == source[74:80]  # the chunk goes on where it stopped
    assert pool.take(16) == source[80:96]  # a quarter of the chunk: still from the pool
    assert pool.take(16) == source[96:112]
    assert pool.take(16) == source[112:128]  # ends exactly at the chunk's end: no new draw
    assert draws == [64, 64, 17]
    assert pool.take(1) == source[145:146]  # nothing left in the chunk: a new one
    assert draws == [64, 64, 17, 64]


def test_a_new_or_reset_pool_draws_before_it_hands_out(monkeypatch: pytest.MonkeyPatch) -> None:
    draws: list[bytes] = []

    def urandom(n: int) -> bytes:
        draws.append(bytes([len(draws)]) * n)
        return draws[-1]

    monkeypatch.setattr(os, "urandom", urandom)
    pool = RandomPool(chunk=64)
    assert pool.take(2) == b"\x00\x00"  # from a draw, even for fewer bytes than are held
    assert pool.take(3) == b"\x00\x00\x00"
    pool.reset()  # (what a forked child does): the rest of the chunk is never handed out
    assert pool.take(2) == b"\x01\x01"
    assert [len(drawn) for drawn in draws] == [64, 64]


def test_ids_made_in_a_forked_child_are_not_the_parents(tmp_path: Any) -> None:
    new_task_id()  # the pool holds drawn bytes now; the child must not hand them out again
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, as text, to the parent
        try:
            os.close(read)
            os.write(write, " ".join(str(new_task_id()) for _ in range(50)).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = set(pipe.read().split())
    os.waitpid(pid, 0)
    parent = {str(new_task_id()) for _ in range(50)}
    assert len(child) == 50
    assert not child & parent


def test_concurrent_takes_never_share_a_byte() -> None:
    pool = RandomPool(chunk=400)
    taken: list[list[bytes]] = [[] for _ in range(4)]
    barrier = threading.Barrier(4)

    def take(mine: list[bytes]) -> None:
        barrier.wait()
        mine.extend(pool.take(10) for _ in range(500))

    threads = [threading.Thread(target=take, args=(mine,)) for mine in taken]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [piece for mine in taken for piece in mine]
    assert len(every) == 2000 and all(len(piece) == 10 for piece in every)
    assert len(set(every)) == 2000  # 80-bit random pieces: a repeat means a shared byte


def test_new_records_keeps_the_new_tasks_whether_the_store_answers_with_them_or_with_copies() -> (
    None
):
    from actors.journal.actor import new_records

    now = datetime.now(UTC)
    specs = [TaskSpec(type="t", payload={"n": n}) for n in range(3)]
    submitted = task_module.queued_records(specs, now=now, owner=None, max_attempts=3)
    # The memory store answers with the records it was given.
    assert new_records(list(submitted), submitted) == list(submitted)
    # A durable store answers with records it read back: equal ids, other objects.
    copies = [record.evolve() for record in submitted]
    assert new_records(copies, submitted) == copies
    # A duplicate's place holds the existing task (another id): not a new one.
    existing = task_module.queued_records(specs[:1], now=now, owner=None, max_attempts=3)[0]
    answer = [existing, copies[1], submitted[2]]
    assert new_records(answer, submitted) == [copies[1], submitted[2]]
    with pytest.raises(ValueError):
        new_records(answer[:2], submitted)  # an answer of another length is a store's bug
