"""Unit and property tests of the retry actor's pure core: policy, backoff, decide, timers."""

from __future__ import annotations

import dataclasses
import math
import random
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from actors.core.retry import (
    RetryDecision,
    RetryPolicy,
    RetryReason,
    RetrySchedulerCore,
    backoff_bound,
    backoff_delay,
    decide,
)
from messages.task import TaskRecord, TaskSpec, new_task_id

BASE = datetime(2025, 1, 1, tzinfo=UTC)
PROPERTY = settings(max_examples=200, deadline=None)


def make_record(type: str = "work", task_id: uuid.UUID | None = None, **spec: object) -> TaskRecord:
    """A TaskRecord whose TaskSpec takes ``spec`` as keyword fields."""
    return TaskRecord(
        task_id=task_id or new_task_id(),
        spec=TaskSpec(type=type, **spec),  # type: ignore[arg-type]
        created_at=BASE,
        updated_at=BASE,
    )


def fixed(value: float) -> Callable[[], float]:
    return lambda: value


def never_called() -> float:
    raise AssertionError("rand must not be called for this decision")


def ids(records: Iterable[TaskRecord]) -> list[uuid.UUID]:
    return [record.task_id for record in records]


# -- RetryPolicy ---------------------------------------------------------------------------


def test_policy_defaults() -> None:
    policy = RetryPolicy()
    assert (policy.base_s, policy.factor, policy.cap_s, policy.max_attempts) == (
        1.0,
        2.0,
        30.0,
        3,
    )
    assert policy.non_retryable == frozenset()
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.base_s = 2.0  # type: ignore[misc]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("base_s", -0.1),
        ("base_s", math.nan),
        ("base_s", math.inf),
        ("factor", 0.5),
        ("factor", 0.0),
        ("factor", -2.0),
        ("factor", math.inf),
        ("cap_s", -1.0),
        ("cap_s", math.nan),
        ("max_attempts", 0),
        ("max_attempts", -3),
    ],
)
def test_policy_refuses_nonsense_values(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        RetryPolicy(**{field: value})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("base_s", "1"),
        ("base_s", True),
        ("cap_s", None),
        ("max_attempts", 2.0),
        ("max_attempts", True),
        ("non_retryable", "ValueError"),
        ("non_retryable", 3),
        ("non_retryable", ["ValueError", 3]),
    ],
)
def test_policy_refuses_wrong_types(field: str, value: object) -> None:
    with pytest.raises(TypeError):
        RetryPolicy(**{field: value})  # type: ignore[arg-type]


def test_policy_accepts_edge_values_and_normalises_names() -> None:
    policy = RetryPolicy(base_s=0, factor=1, cap_s=0.0, max_attempts=1)
    assert policy.base_s == 0
    names = RetryPolicy(non_retryable=["KeyError", "KeyError", "TypeError"])  # type: ignore[arg-type]
    assert names.non_retryable == frozenset({"KeyError", "TypeError"})
    assert isinstance(names.non_retryable, frozenset)
    # cap below base is allowed: a task may override only one of the two.
    assert RetryPolicy(base_s=10.0, cap_s=5.0).cap_s == 5.0


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"base_s": -0.5}, ValueError, "base_s must be >= 0.0, got -0.5"),
        ({"factor": 0.5}, ValueError, "factor must be >= 1.0, got 0.5"),
        ({"cap_s": -1.0}, ValueError, "cap_s must be >= 0.0, got -1.0"),
        ({"cap_s": math.inf}, ValueError, "cap_s must be finite, got inf"),
        ({"base_s": "1"}, TypeError, "base_s must be a number, got str"),
        ({"factor": None}, TypeError, "factor must be a number, got NoneType"),
        ({"max_attempts": 2.0}, TypeError, "max_attempts must be an int, got 2.0"),
        ({"max_attempts": 0}, ValueError, "max_attempts must be >= 1, got 0"),
        (
            {"non_retryable": "KeyError"},
            TypeError,
            "non_retryable must be a collection of exception type names",
        ),
        (
            {"non_retryable": ["KeyError", 3]},
            TypeError,
            "non_retryable must contain exception type names (str)",
        ),
    ],
)
def test_policy_errors_say_what_is_wrong(
    options: dict[str, object], error: type[Exception], message: str
) -> None:
    with pytest.raises(error) as info:
        RetryPolicy(**options)  # type: ignore[arg-type]
    assert str(info.value) == message


def test_for_task_without_overrides_keeps_the_policy() -> None:
    policy = RetryPolicy(
        base_s=0.5, factor=3.0, cap_s=9.0, max_attempts=4, non_retryable=frozenset({"E"})
    )
    assert policy.for_task(TaskSpec(type="t")) == policy


def test_for_task_applies_each_override() -> None:
    policy = RetryPolicy(
        base_s=0.5, factor=3.0, cap_s=9.0, max_attempts=4, non_retryable=frozenset({"E"})
    )
    spec = TaskSpec(type="t", max_attempts=7, backoff_base_s=2.0, backoff_cap_s=60.0)
    assert policy.for_task(spec) == RetryPolicy(
        base_s=2.0, factor=3.0, cap_s=60.0, max_attempts=7, non_retryable=frozenset({"E"})
    )
    only_cap = policy.for_task(TaskSpec(type="t", backoff_cap_s=0.1))
    assert (only_cap.base_s, only_cap.cap_s, only_cap.max_attempts) == (0.5, 0.1, 4)
    only_attempts = policy.for_task(TaskSpec(type="t", max_attempts=1))
    assert (only_attempts.base_s, only_attempts.cap_s, only_attempts.max_attempts) == (0.5, 9.0, 1)


# -- backoff -------------------------------------------------------------------------------


def test_backoff_bound_grows_exponentially_up_to_the_cap() -> None:
    policy = RetryPolicy(base_s=1.0, factor=2.0, cap_s=30.0)
    assert [backoff_bound(policy, n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]
    assert backoff_bound(RetryPolicy(base_s=0.25, factor=3.0, cap_s=100.0), 3) == 2.25


def test_backoff_bound_survives_float_overflow() -> None:
    policy = RetryPolicy(base_s=1.0, factor=10.0, cap_s=42.0, max_attempts=1000)
    assert backoff_bound(policy, 10_000) == 42.0
    assert backoff_delay(policy, 10_000, fixed(0.5)) == 21.0
    assert backoff_bound(RetryPolicy(base_s=0.0, factor=10.0), 10_000) == 0.0


@pytest.mark.parametrize("attempt", [0, -1, True, 1.0])
def test_backoff_refuses_bad_attempts(attempt: object) -> None:
    with pytest.raises(ValueError, match="attempt"):
        backoff_bound(RetryPolicy(), attempt)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="attempt"):
        backoff_delay(RetryPolicy(), attempt, fixed(0.5))  # type: ignore[arg-type]


def test_backoff_delay_is_the_random_fraction_of_the_bound() -> None:
    policy = RetryPolicy(base_s=1.0, factor=2.0, cap_s=30.0)
    assert backoff_delay(policy, 1, fixed(0.0)) == 0.0
    assert backoff_delay(policy, 3, fixed(0.5)) == 2.0
    assert backoff_delay(policy, 6, fixed(0.25)) == 7.5
    assert backoff_delay(policy, 6, fixed(1.0)) == 30.0


@pytest.mark.parametrize("bad", [-0.01, 1.01, math.nan, math.inf])
def test_backoff_delay_refuses_out_of_range_rand(bad: float) -> None:
    with pytest.raises(ValueError, match="rand"):
        backoff_delay(RetryPolicy(), 1, fixed(bad))


policies = st.builds(
    RetryPolicy,
    base_s=st.floats(min_value=0.0, max_value=100.0),
    factor=st.floats(min_value=1.0, max_value=10.0),
    cap_s=st.floats(min_value=0.0, max_value=1000.0),
    max_attempts=st.integers(min_value=1, max_value=50),
)
attempts = st.integers(min_value=1, max_value=60)
fractions = st.floats(min_value=0.0, max_value=1.0, exclude_max=True)


@PROPERTY
@given(policy=policies, attempt=attempts, fraction=fractions)
def test_backoff_delay_stays_within_the_full_jitter_window(
    policy: RetryPolicy, attempt: int, fraction: float
) -> None:
    bound = min(policy.cap_s, policy.base_s * policy.factor ** (attempt - 1))
    assert backoff_bound(policy, attempt) == bound
    delay = backoff_delay(policy, attempt, fixed(fraction))
    assert 0.0 <= delay <= bound
    # Full jitter: the delay is a linear map of rand over the whole window, not a slice.
    assert delay == pytest.approx(fraction * bound, rel=1e-12, abs=0.0)


@PROPERTY
@given(policy=policies, attempt=attempts)
def test_jitter_reaches_both_ends_of_the_window(policy: RetryPolicy, attempt: int) -> None:
    bound = backoff_bound(policy, attempt)
    assert backoff_delay(policy, attempt, fixed(0.0)) == 0.0
    top = backoff_delay(policy, attempt, fixed(math.nextafter(1.0, 0.0)))
    assert top == pytest.approx(bound, rel=1e-12, abs=0.0)


def test_jitter_with_a_real_generator_spreads_over_the_window() -> None:
    policy = RetryPolicy(base_s=1.0, factor=2.0, cap_s=8.0)
    rng = random.Random(1234)
    delays = [backoff_delay(policy, 5, rng.random) for _ in range(5000)]
    assert all(0.0 <= delay <= 8.0 for delay in delays)
    assert min(delays) < 0.1
    assert max(delays) > 7.9
    # Every eighth of the window gets a fair share (expected 625 each).
    buckets = [0] * 8
    for delay in delays:
        buckets[min(7, int(delay))] += 1
    assert all(500 < count < 750 for count in buckets)


@PROPERTY
@given(policy=policies, attempt=attempts, fraction=fractions)
def test_backoff_upper_bound_never_decreases(
    policy: RetryPolicy, attempt: int, fraction: float
) -> None:
    assert backoff_bound(policy, attempt + 1) >= backoff_bound(policy, attempt)
    assert backoff_delay(policy, attempt + 1, fixed(fraction)) >= backoff_delay(
        policy, attempt, fixed(fraction)
    )
    assert backoff_bound(policy, attempt) <= policy.cap_s


# -- decide --------------------------------------------------------------------------------


def test_decide_retries_with_the_backoff_delay() -> None:
    policy = RetryPolicy(base_s=1.0, factor=2.0, cap_s=30.0, max_attempts=5)
    decision = decide(policy, 2, "OSError", False, BASE, None, fixed(0.5))
    assert decision == RetryDecision(retry=True, delay_s=1.0, reason="retryable")
    assert decision.reason is RetryReason.RETRYABLE


def test_decide_dead_letters_permanent_errors_first() -> None:
    policy = RetryPolicy(max_attempts=1, non_retryable=frozenset({"Boom"}))
    decision = decide(policy, 1, "Boom", True, BASE, BASE, never_called)
    assert decision == RetryDecision(False, 0.0, "permanent_error")


def test_decide_dead_letters_non_retryable_error_types() -> None:
    policy = RetryPolicy(max_attempts=1, non_retryable=frozenset({"KeyError"}))
    decision = decide(policy, 1, "KeyError", False, BASE, None, never_called)
    assert decision == RetryDecision(False, 0.0, "non_retryable")
    # Matching is by exact type name.
    other = decide(
        RetryPolicy(non_retryable=frozenset({"KeyError"})), 1, "Key", False, BASE, None, fixed(0)
    )
    assert other.retry


def test_decide_dead_letters_when_attempts_are_exhausted() -> None:
    policy = RetryPolicy(max_attempts=3)
    assert decide(policy, 2, "E", False, BASE, None, fixed(0.1)).retry
    assert decide(policy, 3, "E", False, BASE, None, never_called) == RetryDecision(
        False, 0.0, "attempts_exhausted"
    )
    assert decide(policy, 4, "E", False, BASE, None, never_called).reason == "attempts_exhausted"


def test_decide_dead_letters_when_the_retry_would_reach_the_deadline() -> None:
    policy = RetryPolicy(base_s=10.0, factor=2.0, cap_s=60.0, max_attempts=10)
    # attempt 1: window [0, 10]; rand 0.5 -> 5 s.
    just_after = BASE + timedelta(seconds=5, microseconds=1)
    assert decide(policy, 1, "E", False, BASE, just_after, fixed(0.5)) == RetryDecision(
        True, 5.0, "retryable"
    )
    at = BASE + timedelta(seconds=5)
    assert decide(policy, 1, "E", False, BASE, at, fixed(0.5)) == RetryDecision(
        False, 0.0, "deadline_expired"
    )
    past = BASE - timedelta(seconds=1)
    assert decide(policy, 1, "E", False, BASE, past, fixed(0.0)).reason == "deadline_expired"


@pytest.mark.parametrize("attempt", [0, -1, True, 1.0, 2.0])
@pytest.mark.parametrize(
    ("error_type", "permanent"),
    [("E", False), ("E", True), ("KeyError", False)],
    ids=["retryable", "permanent", "non-retryable"],
)
def test_decide_refuses_bad_attempts(attempt: int, error_type: str, permanent: bool) -> None:
    # checked before any dead-letter shortcut, not only where a delay is computed
    policy = RetryPolicy(non_retryable=frozenset({"KeyError"}))
    with pytest.raises(ValueError, match=r"attempt must be an integer >= 1, got "):
        decide(policy, attempt, error_type, permanent, BASE, None, never_called)


def test_retry_decision_is_frozen() -> None:
    decision = RetryDecision(True, 1.0, "retryable")
    with pytest.raises(dataclasses.FrozenInstanceError):
        decision.retry = False  # type: ignore[misc]


ERROR_TYPES = ("ValueError", "KeyError", "OSError")


@PROPERTY
@given(
    policy=policies,
    non_retryable=st.frozensets(st.sampled_from(ERROR_TYPES)),
    attempt=st.integers(min_value=1, max_value=60),
    error_type=st.sampled_from(ERROR_TYPES),
    permanent=st.booleans(),
    deadline_s=st.none() | st.floats(min_value=-10.0, max_value=2000.0),
    fraction=fractions,
)
def test_decide_matches_its_specification(
    policy: RetryPolicy,
    non_retryable: frozenset[str],
    attempt: int,
    error_type: str,
    permanent: bool,
    deadline_s: float | None,
    fraction: float,
) -> None:
    policy = dataclasses.replace(policy, non_retryable=non_retryable)
    deadline = None if deadline_s is None else BASE + timedelta(seconds=deadline_s)
    decision = decide(policy, attempt, error_type, permanent, BASE, deadline, fixed(fraction))
    delay = backoff_delay(policy, attempt, fixed(fraction))
    if permanent:
        expected = "permanent_error"
    elif error_type in non_retryable:
        expected = "non_retryable"
    elif attempt >= policy.max_attempts:
        expected = "attempts_exhausted"
    elif deadline is not None and BASE + timedelta(seconds=delay) >= deadline:
        expected = "deadline_expired"
    else:
        expected = "retryable"
    assert decision.reason == expected
    assert decision.retry == (expected == "retryable")
    if decision.retry:
        assert decision.delay_s == delay
        assert 0.0 <= decision.delay_s <= backoff_bound(policy, attempt)
        assert deadline is None or BASE + timedelta(seconds=decision.delay_s) < deadline
    else:
        assert decision.delay_s == 0.0


# -- RetrySchedulerCore --------------------------------------------------------------------


def test_empty_scheduler() -> None:
    timers = RetrySchedulerCore()
    assert len(timers) == 0
    assert timers.next_due() is None
    assert timers.pop_due(1e9) == []
    assert timers.snapshot() == []
    assert timers.cancel(new_task_id()) is None
    assert timers.get(new_task_id()) is None
    assert timers.due_of(new_task_id()) is None
    assert timers.statistics() == {
        "depth": 0,
        "scheduled": 0,
        "fired": 0,
        "cancelled": 0,
        "tombstones": 0,
    }


def test_pop_due_releases_in_due_order_with_ties_in_schedule_order() -> None:
    timers = RetrySchedulerCore()
    late, tie1, early, tie2 = (make_record() for _ in range(4))
    timers.schedule(late, 30.0)
    timers.schedule(tie1, 20.0)
    timers.schedule(early, 10)
    timers.schedule(tie2, 20.0)
    assert len(timers) == 4
    assert timers.next_due() == 10
    assert timers.pop_due(9.999) == []
    assert timers.pop_due(20.0) == [early, tie1, tie2]
    assert timers.next_due() == 30.0
    assert late.task_id in timers
    assert timers.get(late.task_id) is late
    assert timers.due_of(late.task_id) == 30.0
    assert timers.pop_due(100.0) == [late]
    assert len(timers) == 0
    assert timers.next_due() is None


def test_schedule_refuses_duplicates_and_bad_due_times() -> None:
    timers = RetrySchedulerCore()
    record = make_record()
    timers.schedule(record, 5.0)
    with pytest.raises(ValueError, match="already scheduled"):
        timers.schedule(record, 1.0)
    for bad in (math.nan, math.inf, -math.inf, True, "5"):
        with pytest.raises(ValueError, match="due"):
            timers.schedule(make_record(), bad)  # type: ignore[arg-type]
    assert timers.snapshot() == [(5.0, record)]


def test_cancel_then_reschedule_uses_the_new_due_time_only() -> None:
    timers = RetrySchedulerCore()
    moved, other = make_record(), make_record()
    timers.schedule(moved, 1.0)
    timers.schedule(other, 2.0)
    assert timers.cancel(moved.task_id) is moved
    assert timers.cancel(moved.task_id) is None
    assert moved.task_id not in timers
    timers.schedule(moved, 3.0)
    # The stale entry at 1.0 must neither fire nor show as the next due time.
    assert timers.next_due() == 2.0
    assert timers.pop_due(1.5) == []
    assert timers.pop_due(3.0) == [other, moved]


def test_pop_due_skips_cancelled_entries() -> None:
    timers = RetrySchedulerCore()
    records = [make_record() for _ in range(4)]
    for due, record in enumerate(records):
        timers.schedule(record, float(due))
    timers.cancel(records[1].task_id)
    assert timers.statistics()["tombstones"] == 1
    assert timers.pop_due(2.0) == [records[0], records[2]]
    assert timers.statistics()["tombstones"] == 0


def test_cancelled_entries_are_compacted() -> None:
    timers = RetrySchedulerCore()
    keep = [make_record() for _ in range(5)]
    for record in keep:
        timers.schedule(record, 100.0)
    for index in range(500):
        victim = make_record()
        timers.schedule(victim, float(index))
        timers.cancel(victim.task_id)
        assert timers.statistics()["tombstones"] <= len(timers)
    assert len(timers._heap) <= 2 * len(timers)
    assert timers.pop_due(100.0) == keep


def test_pop_due_compacts_when_the_waiting_tasks_left_are_few() -> None:
    timers = RetrySchedulerCore()
    early = [make_record() for _ in range(4)]
    late = [make_record() for _ in range(4)]
    for record in early:
        timers.schedule(record, 1.0)
    for record in late:
        timers.schedule(record, 50.0)
    for record in late[:3]:
        timers.cancel(record.task_id)
    assert timers.statistics()["tombstones"] == 3
    # 1 waiting task is left after this, with 3 dead entries behind it: compact.
    assert timers.pop_due(1.0) == early
    assert timers.statistics()["tombstones"] == 0
    assert len(timers._heap) == 1
    assert timers.pop_due(50.0) == late[3:]


def test_compaction_waits_until_tombstones_outnumber_waiting_tasks() -> None:
    timers = RetrySchedulerCore()
    first, second = make_record(), make_record()
    timers.schedule(first, 1.0)
    timers.schedule(second, 2.0)
    timers.cancel(first.task_id)
    assert timers.statistics()["tombstones"] == 1  # 1 dead vs 1 waiting: not yet
    assert len(timers._heap) == 2


def test_tombstones_that_surface_are_counted_off() -> None:
    # Enough tasks keep waiting that no compaction hides a miscount.
    timers = RetrySchedulerCore()
    records = [make_record() for _ in range(8)]
    for due, record in enumerate(records):
        timers.schedule(record, float(due))
    timers.cancel(records[0].task_id)
    assert timers.statistics()["tombstones"] == 1
    assert timers.next_due() == 1.0  # drops the cancelled head
    assert timers.statistics()["tombstones"] == 0
    timers.cancel(records[2].task_id)
    assert timers.pop_due(3.0) == [records[1], records[3]]
    assert timers.statistics()["tombstones"] == 0


def test_fired_and_cancelled_keep_counting() -> None:
    timers = RetrySchedulerCore()
    records = [make_record() for _ in range(6)]
    for due, record in enumerate(records):
        timers.schedule(record, float(due))
    timers.cancel(records[5].task_id)
    timers.cancel(records[4].task_id)
    assert timers.pop_due(1.0) == records[:2]
    assert timers.pop_due(3.0) == records[2:4]
    stats = timers.statistics()
    assert (stats["fired"], stats["cancelled"], stats["depth"]) == (4, 2, 0)


def test_scheduler_snapshot_and_rebuild() -> None:
    timers = RetrySchedulerCore()
    records = [make_record() for _ in range(6)]
    for index, record in enumerate(records):
        timers.schedule(record, float(index % 3))
    timers.cancel(records[4].task_id)
    snapshot = timers.snapshot()
    assert snapshot == [
        (0.0, records[0]),
        (0.0, records[3]),
        (1.0, records[1]),
        (2.0, records[2]),
        (2.0, records[5]),
    ]
    rebuilt = RetrySchedulerCore.from_snapshot(snapshot)
    assert rebuilt.snapshot() == snapshot
    assert rebuilt.pop_due(10.0) == timers.pop_due(10.0) == [record for _, record in snapshot]


def test_scheduler_statistics() -> None:
    timers = RetrySchedulerCore()
    records = [make_record() for _ in range(5)]
    for index, record in enumerate(records):
        timers.schedule(record, float(index))
    timers.cancel(records[4].task_id)
    timers.pop_due(1.0)
    stats = timers.statistics()
    assert stats == {"depth": 2, "scheduled": 5, "fired": 2, "cancelled": 1, "tombstones": 1}
    assert stats["depth"] == stats["scheduled"] - stats["fired"] - stats["cancelled"]


class SchedulerMachine(RuleBasedStateMachine):
    """Drives RetrySchedulerCore and a plain list model with the same operations."""

    def __init__(self) -> None:
        super().__init__()
        self.timers = RetrySchedulerCore()
        self.model: list[tuple[float, int, TaskRecord]] = []
        self.seq = 0
        self.known: list[TaskRecord] = []

    @rule(due=st.integers(min_value=0, max_value=20).map(float))
    def schedule_new(self, due: float) -> None:
        record = make_record()
        self.known.append(record)
        self.timers.schedule(record, due)
        self.model.append((due, self.seq, record))
        self.seq += 1

    @precondition(lambda self: self.known)
    @rule(data=st.data(), due=st.integers(min_value=0, max_value=20).map(float))
    def schedule_known(self, data: st.DataObject, due: float) -> None:
        record = data.draw(st.sampled_from(self.known))
        if any(item[2].task_id == record.task_id for item in self.model):
            with pytest.raises(ValueError, match="already scheduled"):
                self.timers.schedule(record, due)
        else:
            self.timers.schedule(record, due)
            self.model.append((due, self.seq, record))
            self.seq += 1

    @precondition(lambda self: self.known)
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        record = data.draw(st.sampled_from(self.known))
        match = [item for item in self.model if item[2].task_id == record.task_id]
        result = self.timers.cancel(record.task_id)
        if match:
            assert result is match[0][2]
            self.model.remove(match[0])
        else:
            assert result is None

    @rule(now=st.integers(min_value=-1, max_value=25).map(float))
    def pop_due(self, now: float) -> None:
        due = sorted((item for item in self.model if item[0] <= now), key=lambda i: i[:2])
        assert ids(self.timers.pop_due(now)) == ids(item[2] for item in due)
        for item in due:
            self.model.remove(item)

    @invariant()
    def matches_model(self) -> None:
        ordered = sorted(self.model, key=lambda item: item[:2])
        assert len(self.timers) == len(ordered)
        assert [(due, r.task_id) for due, r in self.timers.snapshot()] == [
            (item[0], item[2].task_id) for item in ordered
        ]
        assert self.timers.next_due() == (ordered[0][0] if ordered else None)
        assert self.timers.statistics()["tombstones"] <= len(ordered)


SchedulerMachine.TestCase.settings = settings(
    max_examples=100,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestSchedulerMachine = SchedulerMachine.TestCase
