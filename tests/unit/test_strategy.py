"""Supervision decisions as pure functions: plans, intensity, backoff."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from supervisor import (
    ChildSpec,
    Restart,
    RestartBackoff,
    RestartIntensity,
    RestartPlan,
    Strategy,
    plan_restart,
    should_restart,
)

P, TR, TE = Restart.PERMANENT, Restart.TRANSIENT, Restart.TEMPORARY


@pytest.mark.parametrize(
    ("restart", "normal", "expected"),
    [
        (P, False, True),
        (P, True, True),
        (TR, False, True),
        (TR, True, False),
        (TE, False, False),
        (TE, True, False),
    ],
)
def test_should_restart(restart: Restart, normal: bool, expected: bool) -> None:
    assert should_restart(restart, normal=normal) is expected


def test_one_for_one_restarts_only_the_failed_child() -> None:
    kids = [("a", P), ("b", P), ("c", P)]
    assert plan_restart(Strategy.ONE_FOR_ONE, kids, "b") == RestartPlan(restart=("b",))


def test_one_for_all_restarts_all_and_removes_temporary_siblings() -> None:
    kids = [("a", P), ("t", TE), ("b", TR), ("c", P)]
    plan = plan_restart(Strategy.ONE_FOR_ALL, kids, "b")
    assert plan == RestartPlan(restart=("a", "b", "c"), remove=("t",))


def test_rest_for_one_restarts_the_failed_and_later_children() -> None:
    kids = [("a", P), ("b", P), ("t", TE), ("c", P)]
    plan = plan_restart(Strategy.REST_FOR_ONE, kids, "b")
    assert plan == RestartPlan(restart=("b", "c"), remove=("t",))


def test_a_child_not_to_restart_is_removed_and_siblings_are_untouched() -> None:
    kids = [("a", P), ("b", TR), ("c", P)]
    assert plan_restart(Strategy.ONE_FOR_ALL, kids, "b", normal=True) == RestartPlan(remove=("b",))
    assert plan_restart(Strategy.ONE_FOR_ALL, [("t", TE)], "t") == RestartPlan(remove=("t",))


def test_unknown_child_is_an_error() -> None:
    with pytest.raises(ValueError, match="not a child"):
        plan_restart(Strategy.ONE_FOR_ONE, [("a", P)], "zz")


@given(
    strategy=st.sampled_from(list(Strategy)),
    types=st.lists(st.sampled_from(list(Restart)), min_size=1, max_size=8),
    data=st.data(),
)
def test_plans_only_touch_children_in_scope(
    strategy: Strategy, types: list[Restart], data: st.DataObject
) -> None:
    kids = [(f"c{i}", t) for i, t in enumerate(types)]
    failed_index = data.draw(st.integers(0, len(kids) - 1))
    normal = data.draw(st.booleans())
    failed, failed_type = kids[failed_index]
    plan = plan_restart(strategy, kids, failed, normal=normal)
    assert not set(plan.restart) & set(plan.remove)
    touched = set(plan.restart) | set(plan.remove)
    assert failed in touched
    if not should_restart(failed_type, normal=normal):
        assert plan == RestartPlan(remove=(failed,))
        return
    assert failed in plan.restart
    names = [n for n, _ in kids]
    scope = {
        Strategy.ONE_FOR_ONE: {failed},
        Strategy.ONE_FOR_ALL: set(names),
        Strategy.REST_FOR_ONE: set(names[failed_index:]),
    }[strategy]
    assert touched == scope
    # restarts keep start order
    assert list(plan.restart) == [n for n in names if n in plan.restart]
    assert all(dict(kids)[n] is Restart.TEMPORARY for n in plan.remove)


def test_intensity_default_is_otp_one_in_five_seconds() -> None:
    intensity = RestartIntensity()
    assert intensity.record(0.0) is True
    assert intensity.record(1.0) is False
    assert RestartIntensity().record(0.0) and RestartIntensity().max_restarts == 1


def test_intensity_window_slides() -> None:
    intensity = RestartIntensity(max_restarts=2, within_s=10.0)
    assert intensity.record(0.0)
    assert intensity.record(5.0)
    assert intensity.record(10.0)  # the one at 0.0 left the window
    assert not intensity.record(12.0)
    assert intensity.recent() == 3


def test_intensity_zero_never_allows() -> None:
    assert RestartIntensity(max_restarts=0).record(0.0) is False


@pytest.mark.parametrize(("max_restarts", "within_s"), [(-1, 1.0), (1, 0.0)])
def test_intensity_rejects_nonsense(max_restarts: int, within_s: float) -> None:
    with pytest.raises(ValueError, match="max_restarts"):
        RestartIntensity(max_restarts, within_s)


@given(
    max_restarts=st.integers(0, 5),
    within=st.floats(0.5, 20.0),
    gaps=st.lists(st.floats(0.0, 10.0), min_size=1, max_size=40),
)
def test_intensity_matches_a_reference_model(
    max_restarts: int, within: float, gaps: list[float]
) -> None:
    intensity = RestartIntensity(max_restarts, within)
    now = 0.0
    seen: list[float] = []
    for gap in gaps:
        now += gap
        seen.append(now)
        expected = sum(1 for t in seen if t > now - within) <= max_restarts
        assert intensity.record(now) is expected


def test_backoff_doubles_caps_and_resets() -> None:
    b = RestartBackoff(min_s=0.1, max_s=0.5, random_factor=0.0, reset_after_s=10.0)
    rand = lambda: 0.0  # noqa: E731
    assert [b.delay("x", t, rand) for t in (0.0, 1.0, 2.0, 3.0, 4.0)] == [0.1, 0.2, 0.4, 0.5, 0.5]
    assert b.delay("x", 20.0, rand) == 0.1  # stable for reset_after_s: starts over
    assert b.delay("other", 20.0, rand) == 0.1  # per child


@given(streak=st.integers(0, 80), r=st.floats(0.0, 0.999), factor=st.floats(0.0, 1.0))
def test_backoff_bounds(streak: int, r: float, factor: float) -> None:
    b = RestartBackoff(min_s=0.01, max_s=2.0, random_factor=factor, reset_after_s=1e9)
    delay = 0.0
    for i in range(streak + 1):
        delay = b.delay("x", float(i), lambda: r)
    base = min(2.0, 0.01 * 2.0**streak)
    assert base <= delay <= base * (1 + factor) + 1e-12


def test_backoff_and_childspec_validation() -> None:
    with pytest.raises(ValueError, match="min_s"):
        RestartBackoff(min_s=2.0, max_s=1.0)
    with pytest.raises(ValueError, match="name"):
        ChildSpec(name="a/b", factory=object)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="shutdown"):
        ChildSpec(name="a", factory=object, shutdown_timeout_s=-1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="hang"):
        ChildSpec(name="a", factory=object, hang_timeout_s=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^hang_timeout_s must be > 0$"):
        ChildSpec(name="a", factory=object, hang_timeout_s=-0.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^a dispatcher name must be non-empty$"):
        ChildSpec(name="a", factory=object, dispatcher="")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^shutdown_timeout_s must be >= 0$"):
        ChildSpec(name="a", factory=object, shutdown_timeout_s=-0.1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="non-empty and without '/'"):
        ChildSpec(name="", factory=object)  # type: ignore[arg-type]
    # The edges are accepted: no timeouts, a zero shutdown timeout, a named dispatcher.
    edge = ChildSpec(name="a", factory=object, shutdown_timeout_s=0, dispatcher="d")  # type: ignore[arg-type]
    assert (edge.shutdown_timeout_s, edge.hang_timeout_s, edge.dispatcher) == (0, None, "d")
    assert ChildSpec(name="a", factory=object, hang_timeout_s=0.01).hang_timeout_s == 0.01  # type: ignore[arg-type]


def child(**options: object) -> ChildSpec:
    return ChildSpec(factory=object, **{"name": "a", **options})  # type: ignore[arg-type]


def test_childspec_accepts_its_boundaries() -> None:
    spec = child()
    assert (spec.restart, spec.shutdown_timeout_s, spec.hang_timeout_s) == (P, 5.0, None)
    assert child(shutdown_timeout_s=0).shutdown_timeout_s == 0
    assert child(shutdown_timeout_s=0.5).shutdown_timeout_s == 0.5
    assert child(hang_timeout_s=0.5).hang_timeout_s == 0.5
    with pytest.raises(ValueError, match="hang_timeout_s must be > 0"):
        child(hang_timeout_s=-0.5)
    with pytest.raises(ValueError, match="name"):
        child(name="")


def test_backoff_accepts_zero_and_equal_bounds_and_rejects_the_rest() -> None:
    rand = lambda: 0.5  # noqa: E731
    assert RestartBackoff(min_s=0.0, max_s=1.0).delay("x", 0.0, rand) == 0.0
    fixed = RestartBackoff(min_s=0.5, max_s=0.5, random_factor=0.0)
    assert [fixed.delay("x", t, rand) for t in (0.0, 1.0, 2.0)] == [0.5, 0.5, 0.5]
    for bad in ({"min_s": -0.1}, {"random_factor": -0.1}):
        with pytest.raises(ValueError, match="need 0 <= min_s <= max_s and random_factor >= 0"):
            RestartBackoff(**bad)  # type: ignore[arg-type]


def test_backoff_streak_resets_exactly_after_reset_after_s() -> None:
    rand = lambda: 0.0  # noqa: E731
    b = RestartBackoff(min_s=1.0, max_s=100.0, random_factor=0.0, reset_after_s=10.0)
    # late clocks: only the time since the last restart matters, not the clock's value
    assert [b.delay("x", t, rand) for t in (1000.0, 1001.0, 1010.5)] == [1.0, 2.0, 4.0]
    assert b.delay("x", 1020.5, rand) == 1.0  # exactly reset_after_s later: starts over
    assert b.delay("x", 1030.0, rand) == 2.0  # 9.5 s later: the streak goes on
