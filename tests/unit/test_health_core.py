"""Unit and property tests of the health monitor's pure core (time is passed in)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.core.health import OVERALL, HealthCore
from messages import HealthChanged, HealthStatus

H, D, U = HealthStatus.HEALTHY, HealthStatus.DEGRADED, HealthStatus.UNHEALTHY


def moves(changes: list[HealthChanged]) -> list[tuple[str, HealthStatus, HealthStatus]]:
    return [(change.component, change.previous, change.current) for change in changes]


# -- construction and membership -------------------------------------------------------------


@pytest.mark.parametrize(
    ("timeout", "degraded"),
    [(0.0, None), (-1.0, None), (float("nan"), None), (5.0, 5.0), (5.0, 0.0), (5.0, 6.0)],
)
def test_bad_timeouts_are_refused(timeout: float, degraded: float | None) -> None:
    with pytest.raises(ValueError, match=r"heartbeat_timeout_s|degraded_after_s"):
        HealthCore(timeout, degraded)


def test_empty_core_is_healthy_live_and_ready() -> None:
    core = HealthCore(5.0)
    assert core.status() is H
    assert core.liveness()
    assert core.readiness()
    assert core.tick(100.0) == ([], [])
    assert core.components() == ()
    assert core.snapshot() == {
        "status": "HEALTHY",
        "liveness": True,
        "readiness": True,
        "components": {},
    }


def test_register_refuses_duplicates_and_the_reserved_name() -> None:
    core = HealthCore(5.0)
    core.register("queue", critical=True, now=0.0)
    with pytest.raises(ValueError, match="already registered"):
        core.register("queue")
    with pytest.raises(ValueError, match="reserved"):
        core.register(OVERALL)
    assert core.components() == ("queue",)
    assert core.status("queue") is H


@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.heartbeat("ghost", 0.0),
        lambda c: c.report_check("ghost", H, "", 0.0),
        lambda c: c.status("ghost"),
        lambda c: c.deregister("ghost"),
    ],
)
def test_unknown_component_raises_key_error(call: object) -> None:
    core = HealthCore(5.0)
    with pytest.raises(KeyError, match="ghost"):
        call(core)  # type: ignore[operator]


# -- heartbeats ------------------------------------------------------------------------------


def test_missed_heartbeats_make_a_component_unresponsive_once() -> None:
    core = HealthCore(heartbeat_timeout_s=2.0)
    core.register("queue", critical=True, now=0.0)
    core.register("router", now=0.0)
    assert core.tick(1.0) == ([], [])
    core.heartbeat("router", 1.5)
    changes, unresponsive = core.tick(2.0)  # queue silent for 2.0 s: the timeout
    assert moves(changes) == [("queue", H, U), (OVERALL, H, U)]
    assert changes[0].reason == "no heartbeat for 2 s (timeout 2 s)"
    assert changes[1].reason == "critical component 'queue' unhealthy"
    assert unresponsive == ["queue"]
    assert core.silent_for("queue", 2.0) == 2.0  # what the supervisor is told
    assert core.silent_for("router", 2.0) == 0.5
    assert not core.liveness()
    assert not core.readiness()
    # still silent: no new change, not reported again
    assert core.tick(3.0) == ([], [])
    # router goes silent too, later
    changes, unresponsive = core.tick(3.5)
    assert moves(changes) == [("router", H, U)]
    assert unresponsive == ["router"]
    # a heartbeat recovers the queue at once and re-arms its report
    changes = core.heartbeat("queue", 4.0)
    assert moves(changes) == [("queue", U, H), (OVERALL, U, D)]
    assert changes[0].reason == "recovered"
    assert changes[1].reason == "component 'router' UNHEALTHY"
    assert core.liveness()
    assert core.readiness()
    changes, unresponsive = core.tick(6.0)
    assert moves(changes) == [("queue", H, U), (OVERALL, D, U)]
    assert unresponsive == ["queue"]


def test_degraded_before_unresponsive() -> None:
    core = HealthCore(heartbeat_timeout_s=3.0, degraded_after_s=1.0)
    core.register("agent-1", now=0.0)
    assert core.tick(0.5) == ([], [])
    changes, unresponsive = core.tick(1.0)
    assert moves(changes) == [("agent-1", H, D), (OVERALL, H, D)]
    assert changes[0].reason == "heartbeat late by 1 s"
    assert unresponsive == []
    assert core.liveness()
    assert core.readiness()
    changes, unresponsive = core.tick(3.0)
    assert moves(changes) == [("agent-1", D, U)]  # not critical: overall stays DEGRADED
    assert unresponsive == ["agent-1"]
    assert core.status() is D
    assert core.liveness()  # only critical components decide liveness
    assert core.readiness()


def test_clock_starts_at_the_first_tick_when_registered_without_now() -> None:
    core = HealthCore(heartbeat_timeout_s=2.0)
    core.register("late-starter")
    assert core.tick(100.0) == ([], [])  # starts the clock: not 100 s of silence
    assert core.tick(101.9) == ([], [])
    _, unresponsive = core.tick(102.0)
    assert unresponsive == ["late-starter"]


def test_a_reordered_old_heartbeat_does_not_move_the_clock_back() -> None:
    core = HealthCore(heartbeat_timeout_s=2.0)
    core.register("queue", now=0.0)
    core.heartbeat("queue", 5.0)
    core.heartbeat("queue", 1.0)  # delivered late
    assert core.tick(6.5) == ([], [])
    assert core.snapshot()["components"]["queue"]["last_heartbeat"] == 5.0


def test_components_without_heartbeats_never_time_out() -> None:
    core = HealthCore(heartbeat_timeout_s=1.0)
    core.register("store", critical=True, expects_heartbeat=False, now=0.0)
    assert core.tick(1e6) == ([], [])
    assert core.status("store") is H


# -- checks ----------------------------------------------------------------------------------


def test_check_results_set_the_status() -> None:
    core = HealthCore(heartbeat_timeout_s=10.0)
    core.register("store", critical=True, expects_heartbeat=False)
    core.register("cache", now=0.0)
    changes = core.report_check("cache", D, "slow", 1.0)
    assert moves(changes) == [("cache", H, D), (OVERALL, H, D)]
    assert changes[0].reason == "check: slow"
    assert core.report_check("cache", D, "still slow", 1.5) == []
    changes = core.report_check("store", U, "", 2.0)
    assert moves(changes) == [("store", H, U), (OVERALL, D, U)]
    assert changes[0].reason == "check"
    assert core.liveness()  # failing a check is not being unresponsive
    assert not core.readiness()
    changes = core.report_check("store", H, "ok", 3.0)
    assert moves(changes) == [("store", U, H), (OVERALL, U, D)]
    changes = core.report_check("cache", H, "ok", 3.0)
    assert moves(changes) == [("cache", D, H), (OVERALL, D, H)]
    assert changes[1].reason == "recovered"


def test_status_is_the_worse_of_heartbeat_and_check() -> None:
    core = HealthCore(heartbeat_timeout_s=2.0, degraded_after_s=1.0)
    core.register("agent", now=0.0)
    core.report_check("agent", D, "disk 90%", 0.0)
    changes, _ = core.tick(2.0)  # heartbeat UNHEALTHY beats check DEGRADED
    assert moves(changes) == [("agent", D, U)]
    assert changes[0].reason.startswith("no heartbeat")
    changes = core.heartbeat("agent", 2.5)  # heartbeat fine again: the check still says DEGRADED
    assert moves(changes) == [("agent", U, D)]
    assert changes[0].reason == "check: disk 90%"
    core.report_check("agent", U, "disk full", 2.6)
    changes, _ = core.tick(3.6)  # heartbeat DEGRADED, check UNHEALTHY: the check wins
    assert changes == []
    assert core.snapshot()["components"]["agent"]["reason"] == "check: disk full"


def test_on_a_tie_the_heartbeat_reason_is_reported() -> None:
    core = HealthCore(heartbeat_timeout_s=3.0, degraded_after_s=1.0)
    core.register("agent", now=0.0)
    core.report_check("agent", D, "disk 90%", 0.0)
    assert core.snapshot()["components"]["agent"]["reason"] == "check: disk 90%"
    changes, _ = core.tick(1.5)  # heartbeat late (DEGRADED) and check DEGRADED
    assert changes == []
    assert core.snapshot()["components"]["agent"]["reason"] == "heartbeat late by 1.5 s"


def test_a_recovered_component_has_an_empty_reason_and_is_not_unresponsive() -> None:
    core = HealthCore(heartbeat_timeout_s=2.0)
    core.register("agent", now=0.0)
    _, unresponsive = core.tick(2.0)
    assert unresponsive == ["agent"]
    assert core.snapshot()["components"]["agent"]["unresponsive"] is True
    core.heartbeat("agent", 2.5)
    component = core.snapshot()["components"]["agent"]
    assert component["reason"] == ""
    assert component["unresponsive"] is False


# -- overall, deregistration and snapshot ----------------------------------------------------


def test_overall_status_rules() -> None:
    core = HealthCore(heartbeat_timeout_s=10.0)
    core.register("critical", critical=True, expects_heartbeat=False)
    core.register("minor", expects_heartbeat=False)
    core.report_check("minor", U, "down", 0.0)
    assert core.status() is D  # a non-critical UNHEALTHY component only degrades
    core.report_check("critical", D, "slow", 0.0)
    assert core.status() is D  # a critical DEGRADED one too
    core.report_check("critical", U, "down", 0.0)
    assert core.status() is U
    core.report_check("minor", H, "", 0.0)
    assert core.status() is U
    core.report_check("critical", H, "", 0.0)
    assert core.status() is H


def test_deregister_can_restore_the_overall_status() -> None:
    core = HealthCore(heartbeat_timeout_s=1.0)
    core.register("dying", critical=True, now=0.0)
    core.register("fine", expects_heartbeat=False)
    core.tick(5.0)
    assert core.status() is U
    assert not core.liveness()
    changes = core.deregister("dying")
    assert moves(changes) == [(OVERALL, U, H)]
    assert core.liveness()
    assert core.components() == ("fine",)
    assert core.deregister("fine") == []


def test_snapshot_is_json() -> None:
    core = HealthCore(heartbeat_timeout_s=1.0)
    core.register("b", critical=True, now=0.0)
    core.register("a", expects_heartbeat=False)
    core.report_check("a", D, "meh", 0.0)
    core.heartbeat("b", 0.5)
    core.tick(2.0)
    snapshot = core.snapshot()
    assert json.loads(json.dumps(snapshot)) == snapshot
    assert snapshot["status"] == "UNHEALTHY"
    assert (snapshot["liveness"], snapshot["readiness"]) == (False, False)
    assert list(snapshot["components"]) == ["a", "b"]
    assert snapshot["components"]["a"] == {
        "status": "DEGRADED",
        "reason": "check: meh",
        "critical": False,
        "unresponsive": False,
        "last_heartbeat": None,
        "check": "DEGRADED",
    }
    assert snapshot["components"]["b"]["unresponsive"] is True
    assert snapshot["components"]["b"]["last_heartbeat"] == 0.5


# -- property: transitions against a plain model ---------------------------------------------

NAMES = ("a", "b", "c")
CRITICAL = {"a": True, "b": False, "c": True}
TIMEOUT, DEGRADED_AFTER = 2.0, 1.0
RANK = {H: 0, D: 1, U: 2}

events = st.lists(
    st.tuples(
        st.floats(0.0, 1.5),  # time step
        st.one_of(
            st.just(("tick",)),
            st.tuples(st.just("beat"), st.sampled_from(NAMES)),
            # a monitor's tick: several beat at once, the overall status evaluated once
            st.tuples(st.just("beats"), st.lists(st.sampled_from(NAMES), unique=True)),
            st.tuples(st.just("check"), st.sampled_from(NAMES), st.sampled_from([H, D, U])),
        ),
    ),
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(events=events)
def test_transitions_match_a_model(events: list[tuple[float, tuple[object, ...]]]) -> None:
    core = HealthCore(TIMEOUT, DEGRADED_AFTER)
    for name in NAMES:
        core.register(name, critical=CRITICAL[name], now=0.0)
    last_beat = dict.fromkeys(NAMES, 0.0)
    check = dict.fromkeys(NAMES, H)
    status = dict.fromkeys(NAMES, H)
    reported = dict.fromkeys(NAMES, False)
    overall = H
    now = 0.0

    def expected(name: str) -> HealthStatus:
        silent = now - last_beat[name]
        beat = U if silent >= TIMEOUT else D if silent >= DEGRADED_AFTER else H
        return max(beat, check[name], key=RANK.__getitem__)

    def expected_overall() -> HealthStatus:
        if any(CRITICAL[n] and status[n] is U for n in NAMES):
            return U
        return D if any(status[n] is not H for n in NAMES) else H

    for step, event in events:
        now += step
        changed: list[tuple[str, HealthStatus, HealthStatus]] = []
        if event[0] == "tick":
            touched = list(NAMES)
        elif event[0] == "beats":
            touched = list(event[1])  # type: ignore[arg-type]
        else:
            touched = [str(event[1])]
        if event[0] == "beats":
            for name in touched:
                last_beat[name] = now
                reported[name] = False
            changes = core.heartbeats(touched, now)
        elif event[0] == "beat":
            last_beat[str(event[1])] = now
            reported[str(event[1])] = False
            changes = core.heartbeat(str(event[1]), now)
        elif event[0] == "check":
            check[str(event[1])] = event[2]  # type: ignore[assignment]
            changes = core.report_check(str(event[1]), event[2], "r", now)  # type: ignore[arg-type]
        else:
            changes, unresponsive = core.tick(now)
            newly = [n for n in NAMES if now - last_beat[n] >= TIMEOUT and not reported[n]]
            assert unresponsive == newly
            for name in newly:
                reported[name] = True
        for name in touched:
            if expected(name) is not status[name]:
                changed.append((name, status[name], expected(name)))
                status[name] = expected(name)
        if expected_overall() is not overall:
            changed.append((OVERALL, overall, expected_overall()))
            overall = expected_overall()
        assert moves(changes) == changed
        assert all(change.previous is not change.current for change in changes)
        for name in NAMES:
            assert core.status(name) is status[name]
        assert core.status() is overall
        assert core.readiness() == (overall is not U)
        assert core.liveness() == (not any(CRITICAL[n] and reported[n] for n in NAMES))
