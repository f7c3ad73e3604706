"""The router's prefetch policy: fixed and adaptive buffers, and the smoothed latency."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from actors.core.prefetch import MIN_LATENCY_MS, SMOOTHING, PrefetchPolicy, smoothed

slots = st.integers(min_value=1, max_value=256)
multiples = st.floats(min_value=0.0, max_value=100.0)
windows = st.floats(min_value=0.0, max_value=10_000.0)
latencies = st.floats(min_value=0.0, max_value=1e6)


def test_no_prefetch_by_default_whatever_the_latency() -> None:
    policy = PrefetchPolicy()
    assert not policy.adaptive
    assert [policy.buffer(4, latency) for latency in (None, 0.0, 0.01, 1e6)] == [0, 0, 0, 0]


def test_the_fixed_part_is_a_multiple_of_the_slots_rounded_up() -> None:
    assert PrefetchPolicy(multiple=2.0).buffer(4, None) == 8
    assert PrefetchPolicy(multiple=0.5).buffer(3, 123.0) == 2  # ceil(1.5)


def test_the_adaptive_part_is_what_the_agent_finishes_in_the_window() -> None:
    policy = PrefetchPolicy(window_ms=2.0, max_multiple=32.0)
    assert policy.buffer(4, None) == 0  # nothing finished yet: no pace known
    assert policy.buffer(4, 1.0) == 8  # 4 slots x 2 ms / 1 ms
    assert policy.buffer(4, 0.3) == 26  # floor(26.67)
    assert policy.buffer(4, 2.5) == 3  # floor(3.2)
    assert policy.buffer(4, 10.0) == 0  # slower than the window per slot: strict
    assert policy.buffer(4, 0.001) == 128  # capped at 32 x 4
    assert policy.buffer(4, 0.0) == 128  # (0 ms counts as MIN_LATENCY_MS)


def test_the_larger_part_wins() -> None:
    policy = PrefetchPolicy(multiple=1.0, window_ms=2.0, max_multiple=4.0)
    assert policy.buffer(4, 50.0) == 4  # the fixed one, for slow tasks
    assert policy.buffer(4, 0.5) == 16  # the adaptive one, for fast tasks


@given(slots, multiples, windows, multiples, st.one_of(st.none(), latencies))
def test_the_buffer_is_bounded_by_its_parts(
    mc: int, multiple: float, window: float, max_multiple: float, latency: float | None
) -> None:
    policy = PrefetchPolicy(multiple, window, max_multiple)
    buffer = policy.buffer(mc, latency)
    fixed = math.ceil(multiple * mc)
    assert isinstance(buffer, int)
    assert buffer >= fixed
    assert buffer <= max(fixed, math.ceil(max_multiple * mc))
    if latency is None or window == 0 or max_multiple == 0:
        assert buffer == fixed
    else:
        # Never more than the window's worth of work at the agent's pace.
        assert buffer == fixed or buffer * max(latency, MIN_LATENCY_MS) <= window * mc * (1 + 1e-9)


@given(slots, windows.filter(lambda w: w > 0), latencies, latencies)
def test_a_slower_agent_never_gets_a_bigger_buffer(
    mc: int, window: float, a: float, b: float
) -> None:
    policy = PrefetchPolicy(window_ms=window)
    fast, slow = sorted((a, b))
    assert policy.buffer(mc, slow) <= policy.buffer(mc, fast)


@pytest.mark.parametrize(
    "field", [{"multiple": -1.0}, {"window_ms": math.inf}, {"max_multiple": math.nan}]
)
def test_a_bad_policy_is_refused(field: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="finite number >= 0"):
        PrefetchPolicy(**field)


def test_smoothing_starts_at_the_first_latency_and_moves_a_tenth_of_the_way() -> None:
    assert smoothed(None, []) is None
    assert smoothed(None, [4.0]) == 4.0
    assert smoothed(4.0, [14.0]) == pytest.approx(4.0 + SMOOTHING * 10.0)
    assert smoothed(None, [4.0, 14.0, 14.0]) == pytest.approx(4.0 + 10.0 * (1 - 0.9**2))


@given(st.one_of(st.none(), latencies), st.lists(latencies, max_size=50), st.floats(0.01, 1.0))
def test_the_smoothed_latency_stays_within_what_it_saw(
    start: float | None, seen: list[float], alpha: float
) -> None:
    mean = smoothed(start, seen, alpha)
    values = [v for v in [start, *seen] if v is not None]
    if not values:
        assert mean is None
    else:
        assert mean is not None
        assert min(values) * (1 - 1e-9) <= mean <= max(values) * (1 + 1e-9)
