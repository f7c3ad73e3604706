"""Messages: frozen, strict, JSON-only payloads, clear errors at the boundary."""

from __future__ import annotations

import gc
import json
import sys
import tracemalloc
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from actors import check_immutable
from messages import (
    AgentSpec,
    ArbiterError,
    FrozenDict,
    InvalidMessage,
    TaskRecord,
    TaskSpec,
    freeze_json,
    json_size,
    new_task_id,
    thaw_json,
)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=20,
)


@given(json_values)
def test_freeze_thaw_round_trip_and_immutability(value: object) -> None:
    frozen = freeze_json(value)
    check_immutable(frozen)  # deep-immutable
    hash(frozen)
    assert thaw_json(frozen) == value
    assert json.loads(json.dumps(thaw_json(frozen))) == json.loads(json.dumps(value))


flat_objects = st.dictionaries(
    st.text(max_size=8),
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=300),
    max_size=6,
)


@given(flat_objects)
def test_a_flat_object_is_frozen_with_its_text_as_the_general_path_freezes_it(
    value: dict[str, object],
) -> None:
    frozen = freeze_json(value)
    general = freeze_json({**value, "a key longer than 8": [1]})  # not flat: the general path
    assert type(frozen) is type(general) and frozen == {
        k: v for k, v in general.items() if k != "a key longer than 8"
    }
    assert thaw_json(frozen) == value and frozen is not value
    value.clear()  # the frozen copy is its own
    text = json.dumps(thaw_json(frozen), separators=(",", ":"), ensure_ascii=False)
    kept = getattr(frozen, "_text", None)
    assert kept == (text if len(text) <= 256 else None) or not frozen
    assert json_size(frozen) == len(text.encode())


@pytest.mark.parametrize(
    ("text", "encodings"), [("x" * 200, 1), ("x" * 5000, 0), ('x"y' * 2000, 1)]
)
def test_a_flat_payload_is_encoded_at_most_once_for_freezing_and_sizing(
    monkeypatch: pytest.MonkeyPatch, text: str, encodings: int
) -> None:
    """A short flat object's text is made as it is frozen and kept for the size check; a
    long one's is not made for the size (it is counted from its strings' UTF-8 bytes),
    unless a string needs escapes (then the text is made, once)."""
    import messages.base as base

    calls: list[object] = []
    encode = base._encode_json

    def counting(value: object) -> str:
        calls.append(value)
        return encode(value)

    monkeypatch.setattr(base, "_encode_json", counting)
    frozen = freeze_json({"blob": text, "n": 1})
    expected = len(json.dumps({"blob": text, "n": 1}, separators=(",", ":")))
    assert json_size(frozen) == expected
    assert len(calls) == encodings


def test_a_flat_object_with_a_bad_value_or_key_still_fails_in_the_general_path() -> None:
    with pytest.raises(ValueError, match="keys"):
        freeze_json({"a": 1, 2: "b"})
    with pytest.raises(ValueError, match="JSON number"):
        freeze_json({"a": 1, "f": float("inf")})
    with pytest.raises(ValueError, match="JSON number"):
        freeze_json({"a": 1, "f": float("nan")})
    assert freeze_json({"f": 1.5, "n": None}) == {"f": 1.5, "n": None}


@pytest.mark.parametrize(
    "bad",
    [{1: "int key"}, {"s": {1, 2}}, [b"bytes"], float("nan"), object(), {"d": datetime.now()}],
)
def test_non_json_is_refused(bad: object) -> None:
    with pytest.raises(ValueError, match=r"JSON|keys"):
        freeze_json(bad)
    with pytest.raises(ValidationError):
        TaskSpec(type="t", payload=bad)


def test_deep_nesting_is_refused() -> None:
    value: object = 1
    for _ in range(70):
        value = [value]
    with pytest.raises(ValueError, match="deeper"):
        freeze_json(value)


def test_task_spec_is_frozen_strict_and_forbids_unknown_fields() -> None:
    spec = TaskSpec(type="code", payload={"a": [1, {"b": 2}]}, priority=5)
    with pytest.raises(ValidationError):
        spec.priority = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        spec.payload["a"] = 1  # type: ignore[index]
    with pytest.raises(ValidationError, match="extra"):
        TaskSpec(type="code", colour="red")  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        TaskSpec(type="code", priority="5")  # type: ignore[arg-type]
    for priority in (-1, 10):
        with pytest.raises(ValidationError, match="priority"):
            TaskSpec(type="code", priority=priority)
    with pytest.raises(ValidationError):
        TaskSpec(type="")
    with pytest.raises(ValidationError, match="timezone"):
        TaskSpec(type="t", deadline=datetime(2030, 1, 1))
    with pytest.raises(ValidationError, match="single string"):
        TaskSpec(type="t", required_capabilities="py")  # type: ignore[arg-type]


def test_agent_spec_accepts_sets_and_needs_capabilities() -> None:
    agent = AgentSpec(agent_id="a", capabilities={"code", "py"}, max_concurrency=4)
    assert agent.capabilities == frozenset({"code", "py"})
    with pytest.raises(ValidationError, match="capability"):
        AgentSpec(agent_id="a", capabilities=set())
    with pytest.raises(ValidationError):
        AgentSpec(agent_id="a", capabilities={""})


def test_record_json_round_trip() -> None:
    now = datetime(2026, 1, 2, tzinfo=UTC)
    rec = TaskRecord(
        task_id=new_task_id(),
        spec=TaskSpec(type="t", payload={"x": [1, 2]}, trace_context={"traceparent": "00-a-b-01"}),
        created_at=now,
        updated_at=now,
        result={"ok": True},
    )
    assert TaskRecord.model_validate_json(rec.model_dump_json()) == rec


def test_frozen_dict_behaves_like_a_mapping() -> None:
    d = FrozenDict({"a": 1})
    assert d == {"a": 1} and len(d) == 1 and list(d) == ["a"] and d["a"] == 1
    assert hash(d) == hash(FrozenDict({"a": 1}))
    assert "FrozenDict" in repr(d)
    assert (d == 3) is False
    assert json_size({"a": "é"}) == len('{"a":"é"}'.encode())


def test_error_tree() -> None:
    assert issubclass(InvalidMessage, ArbiterError) and issubclass(InvalidMessage, ValueError)


def test_immutability_check() -> None:
    class Frozen(BaseModel, frozen=True):
        x: int

    class Loose(BaseModel):
        x: int

    @dataclass(frozen=True)
    class FrozenData:
        x: int

    @dataclass
    class LooseData:
        x: int

    for ok in (
        Frozen(x=1),
        FrozenData(1),
        (1, ("a", frozenset({b"x"}))),
        FrozenDict({"a": (1,)}),
        None,
    ):
        check_immutable(ok)
    for bad in (
        Loose(x=1),
        LooseData(1),
        [1],
        (1, {}),
        FrozenDict({"a": [1]}),
        frozenset({(1, ())}) | {1},
    ):
        if bad == frozenset({(1, ())}) | {1}:
            continue
        with pytest.raises(TypeError, match="mutable"):
            check_immutable(bad)
    deep: object = ()
    for _ in range(40):
        deep = (deep,)
    with pytest.raises(TypeError, match="deeply"):
        check_immutable(deep)


def test_fast_construction_equals_validated_construction() -> None:
    from messages.pipeline import WorkDone
    from messages.task import Attempt

    fast = Attempt.fast(number=1, agent_id="a", outcome="completed")
    assert fast == Attempt(number=1, agent_id="a", outcome="completed")
    assert fast.error is None  # default filled in
    assert hash(WorkDone.fast()) is not None
    with pytest.raises(ValidationError):
        fast.agent_id = "b"  # type: ignore[misc]  # still frozen


def test_fast_construction_refuses_unknown_and_missing_fields() -> None:
    from messages.task import Attempt

    with pytest.raises(TypeError, match="unknown \\['colour'\\]"):
        Attempt.fast(number=1, outcome="completed", colour=1)
    with pytest.raises(TypeError, match="missing \\['outcome'\\]"):
        Attempt.fast(number=1, agent_id="a")


def test_evolve_copies_with_changes_and_leaves_the_original_alone() -> None:
    from messages.task import Attempt

    first = Attempt(number=1, agent_id="a", outcome="completed")
    second = first.evolve(outcome="failed", error="boom")
    assert (first.outcome, first.error) == ("completed", None)
    assert second == Attempt(number=1, agent_id="a", outcome="failed", error="boom")
    # pydantic's own copy still works on an evolved model (the shared set is never mutated).
    third = second.model_copy(update={"agent_id": "b"})
    assert third.agent_id == "b"
    assert second.evolve().model_fields_set == set(Attempt.model_fields)
    with pytest.raises(TypeError, match="unknown \\['colour'\\]"):
        first.evolve(colour="red")


NOW = datetime(2025, 1, 1, tzinfo=UTC)


def test_validated_messages_share_fields_sets_without_leaking_changes() -> None:
    first, second = TaskSpec(type="a"), TaskSpec(type="b")
    assert first.model_fields_set == second.model_fields_set == {"type"}
    copied = first.model_copy(update={"priority": 3})
    assert copied.priority == 3
    assert copied.model_fields_set == {"type", "priority"}
    # pydantic copied the (shared) set before adding to it: the others are untouched.
    assert first.model_fields_set == second.model_fields_set == {"type"}
    assert first.model_dump(exclude_unset=True) == {"type": "a"}
    assert TaskSpec(type="c", priority=2).model_fields_set == {"type", "priority"}


def test_compact_messages_behave_like_ordinary_ones() -> None:
    spec = TaskSpec(type="code", payload={"a": [1, {"b": 2}]}, priority=5)
    record = TaskRecord.fast(task_id=new_task_id(), spec=spec, created_at=NOW, updated_at=NOW)
    later = record.evolve(attempt=2)
    assert list(later.__dict__) == list(TaskRecord.model_fields)  # declaration order
    assert (later.attempt, record.attempt, later.spec) == (2, 0, spec)
    assert TaskRecord.model_validate_json(later.model_dump_json()) == later
    assert TaskSpec.model_validate(spec.model_dump()) == spec
    assert repr(spec).startswith("TaskSpec(type='code', payload=FrozenDict(")
    check_immutable(later)


def test_empty_json_objects_share_one_frozen_dict() -> None:
    assert freeze_json({}) is TaskSpec(type="a").payload is TaskSpec(type="b", payload={}).payload
    assert TaskSpec(type="a").trace_context is TaskSpec(type="b", trace_context={}).trace_context
    assert freeze_json({}) == {} and hash(freeze_json({})) == hash(FrozenDict())
    assert freeze_json({"a": {}}) == {"a": {}}


@pytest.mark.skipif(sys.implementation.name != "cpython", reason="CPython's dict layout")
def test_a_stored_task_record_stays_compact() -> None:
    """A queued task costs its record (shared by the store and the queue): keep it small.
    An ordinary 15-key dict alone is ~470 bytes; the key-sharing one ~220."""
    spec = TaskSpec(type="noop")
    record = TaskRecord.fast(task_id=new_task_id(), spec=spec, created_at=NOW, updated_at=NOW)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = [record.evolve(sequence=i) for i in range(1000, 6000)]
        per_record = (tracemalloc.get_traced_memory()[0] - before) / len(kept)
    finally:
        tracemalloc.stop()
    assert per_record < 400, per_record
