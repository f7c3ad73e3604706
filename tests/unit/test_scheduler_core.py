"""The scheduler's pure core: cron fire times, the cron table, cron keys, CronSpec checks."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.core.scheduler import CronTable, cron_key, next_fire, previous_fire
from messages import CronSpec, TaskSpec, TaskState
from messages.task import queued_records

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
EXPRESSIONS = ["* * * * *", "*/5 * * * *", "0 9 * * 1-5", "* * * * * */7", "@hourly", "30 2 1 * *"]


def cron(name: str = "job", expression: str = "*/5 * * * *", zone: str = "UTC") -> CronSpec:
    return CronSpec(name=name, cron=expression, task=TaskSpec(type="t"), timezone=zone)


def test_next_fire_is_strictly_after_and_previous_fire_is_at_or_before() -> None:
    spec = cron(expression="*/5 * * * *")
    assert next_fire(spec, T0) == T0 + timedelta(minutes=5)  # T0 itself is a fire time
    assert previous_fire(spec, T0) == T0
    assert previous_fire(spec, T0 + timedelta(minutes=4, seconds=59)) == T0
    assert next_fire(spec, T0 + timedelta(seconds=1)) == T0 + timedelta(minutes=5)


def test_fire_times_follow_the_entry_s_time_zone_across_daylight_saving() -> None:
    spec = cron(expression="0 9 * * *", zone="Europe/Berlin")
    winter = next_fire(spec, datetime(2026, 1, 10, tzinfo=UTC))
    summer = next_fire(spec, datetime(2026, 7, 10, tzinfo=UTC))
    assert (winter.hour, summer.hour) == (8, 7)  # 09:00 CET, 09:00 CEST, in UTC
    assert winter.tzinfo is UTC and summer.tzinfo is UTC


@settings(max_examples=200, deadline=None)
@given(
    expression=st.sampled_from(EXPRESSIONS),
    offset_s=st.integers(min_value=0, max_value=400 * 86_400),
)
def test_fire_times_bracket_any_instant(expression: str, offset_s: int) -> None:
    spec = cron(expression=expression)
    now = T0 + timedelta(seconds=offset_s, microseconds=offset_s % 7 * 1000)
    before, after = previous_fire(spec, now), next_fire(spec, now)
    assert before <= now < after
    assert next_fire(spec, before) == after  # nothing fires between them
    assert previous_fire(spec, after) == after


def test_the_table_fires_each_entry_at_its_time_and_then_waits_for_the_next() -> None:
    table = CronTable()
    assert table.next_due() is None and table.pop_due(T0) == []
    first = table.add(cron("a", "*/5 * * * *"), T0)
    table.add(cron("b", "0 * * * *"), T0)
    assert first == T0 + timedelta(minutes=5)  # T0 itself is not fired: added at T0
    assert table.next_due() == first
    assert table.pop_due(first - timedelta(microseconds=1)) == []
    fired = table.pop_due(first)
    assert [(spec.name, at) for spec, at in fired] == [("a", first)]
    assert table.next_due() == first + timedelta(minutes=5)
    assert [e.spec.name for e in table.entries()] == ["a", "b"]


def test_a_late_tick_fires_once_for_the_latest_fire_time_it_passed() -> None:
    table = CronTable()
    table.add(cron("a", "* * * * *"), T0)
    late = T0 + timedelta(minutes=10, seconds=30)
    fired = table.pop_due(late)
    assert [at for _, at in fired] == [T0 + timedelta(minutes=10)]
    assert table.next_due() == T0 + timedelta(minutes=11)


def test_adding_a_name_again_replaces_the_entry_and_remove_stops_it() -> None:
    table = CronTable()
    table.add(cron("a", "* * * * *"), T0)
    table.add(cron("a", "0 * * * *"), T0)
    assert len(table) == 1 and table.next_due() == T0 + timedelta(hours=1)
    assert table.remove("a") and not table.remove("a")
    assert table.pop_due(T0 + timedelta(days=1)) == []


@settings(max_examples=100, deadline=None)
@given(
    expression=st.sampled_from(EXPRESSIONS),
    steps=st.lists(st.integers(min_value=0, max_value=3 * 3600), min_size=1, max_size=30),
)
def test_the_table_matches_a_model_of_coalesced_fires(expression: str, steps: list[int]) -> None:
    """Ticks at increasing times: each fires the entry once if a fire time passed since its
    last fire (for the latest such time), never twice for one time, never early."""
    spec = cron(expression=expression)
    table = CronTable()
    table.add(spec, T0)
    last = T0  # the model: fire times at or before ``last`` are used up
    now = T0
    for step in steps:
        now += timedelta(seconds=step)
        fired = table.pop_due(now)
        latest = previous_fire(spec, now)
        if latest > last:
            assert fired == [(spec, latest)]
            last = latest
        else:
            assert fired == []
        assert table.next_due() == next_fire(spec, now)


def test_a_cron_key_names_the_entry_and_its_fire_time_in_utc() -> None:
    berlin = datetime(2026, 1, 1, 13, 0, tzinfo=UTC).astimezone()
    assert cron_key("report", berlin) == "cron:report:2026-01-01T13:00:00+00:00"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"cron": "not a cron"}, "5 or 6 fields"),
        ({"cron": "* * * * * * *"}, "5 or 6 fields"),
        ({"cron": "61 * * * *"}, "not a valid cron expression"),
        ({"cron": "@sometimes"}, "not a valid cron expression"),
        ({"timezone": "Mars/Olympus"}, "unknown time zone"),
        ({"name": "has space"}, "pattern"),
        ({"task": TaskSpec(type="t", idempotency_key="mine")}, "idempotency key"),
    ],
)
def test_cron_specs_are_checked_at_the_boundary(fields: dict[str, object], message: str) -> None:
    data: dict[str, object] = {"name": "job", "cron": "* * * * *", "task": TaskSpec(type="t")}
    data.update(fields)
    with pytest.raises(ValueError, match=message):
        CronSpec.model_validate(data)


def test_a_cron_spec_normalises_its_whitespace() -> None:
    assert cron(expression="*/5   *  * * *").cron == "*/5 * * * *"


def test_records_made_with_a_run_time_are_pending_until_then() -> None:
    spec = TaskSpec(type="t")
    (queued,) = queued_records([spec], now=T0, owner="r", max_attempts=3)
    (delayed,) = queued_records([spec], now=T0, owner="r", max_attempts=3, run_at=T0 + HOUR)
    assert (queued.state, queued.next_attempt_at) == (TaskState.QUEUED, None)
    assert (delayed.state, delayed.next_attempt_at) == (TaskState.PENDING, T0 + HOUR)
    assert delayed.moved(TaskState.QUEUED, at=T0 + HOUR).state is TaskState.QUEUED


def test_fire_times_and_keys_are_utc_whatever_the_host_s_zone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    try:
        spec = cron(expression="0 9 * * *", zone="Europe/Berlin")
        fire = next_fire(spec, datetime(2026, 7, 10, tzinfo=UTC))
        before = previous_fire(spec, datetime(2026, 7, 10, 12, tzinfo=UTC))
        between = previous_fire(spec, datetime(2026, 7, 10, 6, 59, tzinfo=UTC))
        assert (fire.tzinfo, before.tzinfo, between.tzinfo) == (UTC, UTC, UTC)
        assert before == datetime(2026, 7, 10, 7, tzinfo=UTC)  # 09:00 CEST
        assert between == datetime(2026, 7, 9, 7, tzinfo=UTC)
        assert cron_key("job", fire) == "cron:job:2026-07-10T07:00:00+00:00"
    finally:
        monkeypatch.undo()
        time.tzset()


def test_an_entry_not_due_holds_back_no_other() -> None:
    table = CronTable()
    table.add(cron("a", "0 * * * *"), T0)  # hourly: not due at T0 + 1 min
    table.add(cron("b", "* * * * *"), T0)
    assert [spec.name for spec, _ in table.pop_due(T0 + timedelta(minutes=1))] == ["b"]


def test_a_single_word_that_is_no_nickname_is_refused_by_its_field_count() -> None:
    with pytest.raises(ValueError, match="5 or 6 fields"):
        cron(expression="hourly")
