"""Unit and property tests of the performance core: histogram accuracy, stats, EWMA."""

from __future__ import annotations

import json
import math
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.core.performance import (
    ZERO_THRESHOLD_MS,
    LatencyHistogram,
    OutcomeStats,
    PerformanceCore,
)


def exact_percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile, computed exactly: the value of rank ceil(p/100 * n)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(Fraction(p) * len(ordered) / 100))
    return ordered[rank - 1]


def within(estimate: float | None, exact: float, accuracy: float) -> bool:
    """The histogram's stated bound, with slack for float rounding in log/pow."""
    assert estimate is not None
    if exact < ZERO_THRESHOLD_MS:
        return abs(estimate - exact) < ZERO_THRESHOLD_MS
    return abs(estimate - exact) <= accuracy * exact * (1 + 1e-9)


# -- LatencyHistogram ------------------------------------------------------------------------


def test_empty_histogram() -> None:
    histogram = LatencyHistogram()
    assert histogram.count == 0
    assert histogram.min is None
    assert histogram.max is None
    assert histogram.mean is None
    assert histogram.percentile(50) is None
    assert histogram.bucket_count == 0
    assert histogram.summary() == {
        "count": 0,
        "min": None,
        "max": None,
        "mean": None,
        "p50": None,
        "p95": None,
        "p99": None,
    }


@pytest.mark.parametrize(("accuracy", "buckets"), [(0.0, 10), (1.0, 10), (-0.1, 10), (0.01, 0)])
def test_histogram_options_are_validated(accuracy: float, buckets: int) -> None:
    with pytest.raises(ValueError, match=r"relative_accuracy|max_buckets"):
        LatencyHistogram(accuracy, buckets)


@pytest.mark.parametrize("bad", [-1.0, -1e-12, math.inf, math.nan])
def test_bad_latencies_are_refused(bad: float) -> None:
    histogram = LatencyHistogram()
    with pytest.raises(ValueError, match="latency"):
        histogram.record(bad)
    assert histogram.count == 0


@pytest.mark.parametrize("p", [-1, 100.5, math.nan])
def test_bad_percentiles_are_refused(p: float) -> None:
    histogram = LatencyHistogram()
    histogram.record(1.0)
    with pytest.raises(ValueError, match="percentile"):
        histogram.percentile(p)


def test_exact_statistics() -> None:
    histogram = LatencyHistogram()
    for value in (3.0, 1.0, 2.0, 10.0):
        histogram.record(value)
    assert histogram.count == 4
    assert histogram.min == 1.0
    assert histogram.max == 10.0
    assert histogram.mean == 4.0
    assert histogram.percentile(0) == 1.0
    assert histogram.percentile(25) == 1.0
    assert histogram.percentile(100) == 10.0
    assert histogram.percentile(75) == pytest.approx(3.0, rel=0.01)  # rank 3
    assert histogram.percentile(76) == 10.0  # rank 4 = the exact max
    assert histogram.percentile(50) == pytest.approx(2.0, rel=0.01)
    assert histogram.percentile(50) != 2.0  # an estimate, not the stored value
    assert histogram.relative_accuracy == 0.01
    assert histogram.max_buckets == 2048


def test_percentiles_of_a_uniform_range() -> None:
    histogram = LatencyHistogram()
    values = [float(v) for v in range(1, 1001)]
    for value in values:
        histogram.record(value)
    for p in (1, 10, 50, 90, 95, 99, 99.9):
        assert within(histogram.percentile(p), exact_percentile(values, p), 0.01)
    # log buckets: about ln(1000)/ln(1.0202) ~ 346 of them, not 1000
    assert histogram.bucket_count < 400


def test_zeros_and_tiny_values() -> None:
    histogram = LatencyHistogram()
    for value in (0.0, 0.0, 1e-12, 5.0):
        histogram.record(value)
    assert histogram.min == 0.0
    assert histogram.percentile(50) == 0.0
    assert histogram.percentile(75) == 0.0  # 1e-12 counts as zero: within 1e-9 ms
    assert histogram.percentile(100) == 5.0
    assert histogram.bucket_count == 1
    tiny = LatencyHistogram()
    for value in (1e-12, 2e-12, 3e-12):
        tiny.record(value)
    assert tiny.percentile(50) == 1e-12  # among the zeros, min is reported (exact range)


def test_memory_is_bounded_and_high_percentiles_survive_collapse() -> None:
    histogram = LatencyHistogram(relative_accuracy=0.01, max_buckets=50)
    values = [1.02**k for k in range(400)]  # spans ~ 400 * ln(1.02)/ln(1.0202) buckets
    for value in values:
        histogram.record(value)
        assert histogram.bucket_count <= 50
    assert histogram.count == 400
    for p in (90, 95, 99):
        assert within(histogram.percentile(p), exact_percentile(values, p), 0.01)
    # the lowest percentiles were merged away: they are no longer within 1%
    assert not within(histogram.percentile(10), exact_percentile(values, 10), 0.01)
    # values below the collapsed floor are still counted, in the floor bucket
    histogram.record(0.5)
    assert histogram.count == 401
    assert histogram.min == 0.5
    assert histogram.bucket_count <= 50
    assert within(histogram.percentile(99), exact_percentile([*values, 0.5], 99), 0.01)


def test_merge_equals_recording_everything() -> None:
    left, right, both = LatencyHistogram(), LatencyHistogram(), LatencyHistogram()
    for index in range(500):
        value = (index * 7919 % 1000) / 3.0
        (left if index % 3 else right).record(value)
        both.record(value)
    left.merge(right)
    assert left.summary() == pytest.approx(both.summary())
    for p in (0, 5, 50, 95, 100):
        assert left.percentile(p) == both.percentile(p)
    assert right.count == 500 // 3 + 1  # the other side is unchanged


def test_merge_refuses_a_different_accuracy() -> None:
    with pytest.raises(ValueError, match="relative accuracy"):
        LatencyHistogram(0.01).merge(LatencyHistogram(0.02))


def test_merge_of_collapsed_histograms_stays_bounded() -> None:
    low, high = LatencyHistogram(max_buckets=20), LatencyHistogram(max_buckets=20)
    for k in range(60):
        low.record(1.03**k)
        high.record(1000.0 * 1.03**k)
    low_count = low.bucket_count
    low.merge(high)
    assert low.bucket_count <= 20
    assert low.count == 120
    assert low.min == 1.0
    assert within(
        low.percentile(99), exact_percentile([1000.0 * 1.03**k for k in range(60)], 98), 0.01
    )
    assert low_count == 20
    # merging a collapsed histogram into a fresh one keeps the floor: values below it fold in
    fresh = LatencyHistogram(max_buckets=20)
    fresh.record(0.001)
    fresh.merge(high)
    assert fresh.bucket_count <= 20
    assert fresh.count == 61
    assert fresh.min == 0.001


def test_merge_collapses_when_the_union_needs_too_many_buckets() -> None:
    low, high = LatencyHistogram(max_buckets=10), LatencyHistogram(max_buckets=10)
    for k in range(10):
        low.record(1.05**k)
        high.record(1000.0 * 1.05**k)
    assert low.bucket_count == high.bucket_count == 10
    low.merge(high)
    assert low.bucket_count == 10
    assert low.count == 20
    assert low.max == high.max
    assert within(
        low.percentile(95), exact_percentile([1000.0 * 1.05**k for k in range(10)], 90), 0.01
    )


def test_copy_of_a_collapsed_histogram_is_identical() -> None:
    histogram = LatencyHistogram(max_buckets=5)
    for k in range(30):
        histogram.record(1.1**k)
    clone = histogram.copy()
    assert clone.summary() == histogram.summary()
    assert clone.bucket_count == histogram.bucket_count == 5
    for p in (1, 10, 30, 60, 90):
        assert clone.percentile(p) == histogram.percentile(p)
    clone.record(1e-3)  # below the floor: folded into it, as in the original
    histogram.record(1e-3)
    assert clone.summary() == histogram.summary()


def test_copy_is_independent() -> None:
    histogram = LatencyHistogram()
    histogram.record(1.0)
    clone = histogram.copy()
    clone.record(100.0)
    assert histogram.count == 1
    assert clone.count == 2
    assert clone.max == 100.0


latencies = st.floats(min_value=0.0, max_value=1e7, allow_nan=False, allow_infinity=False)


@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(latencies, min_size=1, max_size=300),
    ps=st.lists(st.floats(0.0, 100.0), min_size=1, max_size=10),
    accuracy=st.sampled_from([0.01, 0.02, 0.05]),
)
def test_percentiles_are_within_the_relative_error(
    values: list[float], ps: list[float], accuracy: float
) -> None:
    histogram = LatencyHistogram(relative_accuracy=accuracy)
    for value in values:
        histogram.record(value)
    for p in [*ps, 0.0, 50.0, 95.0, 99.0, 100.0]:
        estimate = histogram.percentile(p)
        assert within(estimate, exact_percentile(values, p), accuracy), (p, estimate)
    assert histogram.min == min(values)
    assert histogram.max == max(values)
    assert histogram.mean == pytest.approx(math.fsum(values) / len(values), rel=1e-9, abs=1e-9)


@settings(max_examples=100, deadline=None)
@given(
    left=st.lists(latencies, max_size=100),
    right=st.lists(latencies, max_size=100),
)
def test_merged_percentiles_are_within_the_relative_error(
    left: list[float], right: list[float]
) -> None:
    a, b = LatencyHistogram(), LatencyHistogram()
    for value in left:
        a.record(value)
    for value in right:
        b.record(value)
    a.merge(b)
    values = left + right
    assert a.count == len(values)
    if not values:
        assert a.percentile(50) is None
        return
    for p in (0.0, 25.0, 50.0, 90.0, 99.0, 100.0):
        assert within(a.percentile(p), exact_percentile(values, p), 0.01)


# -- PerformanceCore -------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [0.0, -0.1, 1.5, math.nan])
def test_bad_alpha_is_refused(alpha: float) -> None:
    with pytest.raises(ValueError, match="ewma_alpha"):
        PerformanceCore(alpha)


def test_bad_histogram_options_are_refused_up_front() -> None:
    with pytest.raises(ValueError, match="max_buckets"):
        PerformanceCore(max_buckets=0)


def test_unknown_agent_and_type_have_empty_stats() -> None:
    core = PerformanceCore()
    empty = OutcomeStats(0, 0, 0, None, None, None, None, None, None)
    assert core.agent_stats("ghost") == empty
    assert core.type_stats("ghost") == empty
    assert core.total_stats() == empty
    assert core.agent_performance("ghost") == (1.0, 0.0, 0)
    assert core.agents() == ()


def test_outcomes_are_counted_per_agent_type_and_overall() -> None:
    core = PerformanceCore()
    core.record_outcome("a", "code", True, 10.0, now=1.0)
    core.record_outcome("a", "code", False, 30.0, now=2.0)
    core.record_outcome("a", "mail", True, 20.0, now=3.0)
    core.record_outcome("b", "code", True, 40.0, now=4.0)
    a = core.agent_stats("a")
    assert (a.count, a.successes, a.failures) == (3, 2, 1)
    assert a.success_rate == pytest.approx(2 / 3)
    assert a.latency_mean_ms == pytest.approx(20.0)
    assert a.latency_p50_ms == pytest.approx(20.0, rel=0.01)
    assert a.latency_p99_ms == 30.0  # the top rank is the exact max
    code = core.type_stats("code")
    assert (code.count, code.successes, code.failures) == (3, 2, 1)
    total = core.total_stats()
    assert (total.count, total.successes, total.failures) == (4, 3, 1)
    assert core.agents() == ("a", "b")
    success_rate, p50, samples = core.agent_performance("a")
    assert success_rate == pytest.approx(2 / 3)
    assert p50 == pytest.approx(20.0, rel=0.01)
    assert samples == 3


def test_a_bad_latency_records_nothing() -> None:
    core = PerformanceCore()
    with pytest.raises(ValueError, match="latency"):
        core.record_outcome("a", "code", True, -1.0, now=0.0)
    assert core.agents() == ()
    assert core.total_stats().count == 0
    with pytest.raises(ValueError, match="latency"):
        core.record_route_latency(math.nan)


def test_throughput_is_an_ewma_of_outcome_rate() -> None:
    core = PerformanceCore(ewma_alpha=0.5)
    core.record_outcome("a", "code", True, 1.0, now=100.0)
    assert core.agent_stats("a").throughput_per_s is None  # one outcome: no interval yet
    for step in range(1, 11):  # one per second
        core.record_outcome("a", "code", True, 1.0, now=100.0 + step)
    assert core.agent_stats("a").throughput_per_s == pytest.approx(1.0)
    core.record_outcome("a", "code", True, 1.0, now=110.25)  # 4/s sample
    assert core.agent_stats("a").throughput_per_s == pytest.approx(0.5 * 4 + 0.5 * 1.0)
    for step in range(1, 41):  # steady 4 per second: the EWMA converges
        core.record_outcome("a", "code", True, 1.0, now=110.25 + step * 0.25)
    assert core.agent_stats("a").throughput_per_s == pytest.approx(4.0, rel=1e-6)


def test_throughput_counts_batches_at_one_instant() -> None:
    core = PerformanceCore(ewma_alpha=1.0)
    for _ in range(5):
        core.record_outcome("a", "code", True, 1.0, now=10.0)
    assert core.agent_stats("a").throughput_per_s is None  # no time has passed yet
    for _ in range(5):
        core.record_outcome("a", "code", True, 1.0, now=12.0)
    # 4 waiting at t=10 (the first started the clock) + 1 at t=12 over 2 s
    assert core.agent_stats("a").throughput_per_s == pytest.approx(2.5)
    core.record_outcome("a", "code", True, 1.0, now=11.0)  # a stale timestamp: no crash
    assert core.agent_stats("a").throughput_per_s == pytest.approx(2.5)
    core.record_outcome("a", "code", True, 1.0, now=13.0)
    # 4 more at 12, 1 stale, 1 at 13: 6 over 1 s
    assert core.agent_stats("a").throughput_per_s == pytest.approx(6.0)


def test_throughput_decays_when_an_agent_goes_quiet() -> None:
    core = PerformanceCore(ewma_alpha=1.0)
    for step in range(11):
        core.record_outcome("a", "code", True, 1.0, now=step * 0.1)  # 10/s
    assert core.agent_stats("a", now=1.0).throughput_per_s == pytest.approx(10.0)
    assert core.agent_stats("a", now=1.05).throughput_per_s == pytest.approx(10.0)
    assert core.agent_stats("a", now=11.0).throughput_per_s == pytest.approx(0.1)
    assert core.agent_stats("a", now=0.5).throughput_per_s == pytest.approx(10.0)
    assert core.agent_stats("a").throughput_per_s == pytest.approx(10.0)


def test_route_and_end_to_end_histograms_are_separate() -> None:
    core = PerformanceCore()
    core.record_route_latency(0.5)
    core.record_route_latency(1.5)
    core.record_end_to_end(100.0)
    assert core.route_latency.count == 2
    assert core.route_latency.max == 1.5
    assert core.end_to_end_latency.count == 1
    assert core.total_stats().count == 0


def test_forget_agent_keeps_totals() -> None:
    core = PerformanceCore()
    core.record_outcome("a", "code", True, 1.0, now=0.0)
    core.forget_agent("a")
    core.forget_agent("never-seen")
    assert core.agents() == ()
    assert core.agent_performance("a") == (1.0, 0.0, 0)
    assert core.total_stats().count == 1
    assert core.type_stats("code").count == 1


def test_summary_is_json_with_the_cli_names() -> None:
    core = PerformanceCore()
    core.record_outcome("b", "code", True, 10.0, now=0.0)
    core.record_outcome("a", "code", False, 20.0, now=1.0)
    core.record_route_latency(0.2)
    summary = core.summary(now=1.0)
    assert json.loads(json.dumps(summary)) == summary
    assert set(summary) == {"outcomes", "agents", "task_types", "route_assign_ms", "end_to_end_ms"}
    assert list(summary["agents"]) == ["a", "b"]
    assert summary["outcomes"]["count"] == 2
    assert summary["outcomes"]["success_rate"] == 0.5
    assert summary["outcomes"]["throughput_per_s"] == pytest.approx(1.0)
    assert summary["task_types"]["code"]["failures"] == 1
    assert summary["route_assign_ms"]["count"] == 1
    assert set(summary["route_assign_ms"]) >= {"p50", "p95", "p99"}
    assert summary["end_to_end_ms"]["p50"] is None
    assert summary["agents"]["a"] == core.agent_stats("a", now=1.0).to_dict()


@settings(max_examples=100, deadline=None)
@given(
    outcomes=st.lists(
        st.tuples(st.sampled_from("abc"), st.sampled_from(["x", "y"]), st.booleans(), latencies),
        min_size=1,
        max_size=60,
    )
)
def test_counts_and_rates_match_a_plain_model(
    outcomes: list[tuple[str, str, bool, float]],
) -> None:
    core = PerformanceCore()
    for now, (agent_id, task_type, success, latency) in enumerate(outcomes):
        core.record_outcome(agent_id, task_type, success, latency, now=float(now))
    for agent_id in "abc":
        mine = [o for o in outcomes if o[0] == agent_id]
        stats = core.agent_stats(agent_id)
        assert stats.count == len(mine)
        assert stats.successes == sum(1 for o in mine if o[2])
        if mine:
            assert stats.success_rate == stats.successes / stats.count
            assert within(stats.latency_p95_ms, exact_percentile([o[3] for o in mine], 95), 0.01)
            rate, p50, samples = core.agent_performance(agent_id)
            assert (rate, samples) == (stats.success_rate, stats.count)
            assert p50 == stats.latency_p50_ms
    assert sum(core.type_stats(t).count for t in "xy") == len(outcomes)
    total = core.total_stats()
    assert total.count == len(outcomes)
    if len(outcomes) > 1:  # one outcome per second, whatever the mix
        assert total.throughput_per_s == pytest.approx(1.0)


# -- boundaries and wiring found by mutation testing ------------------------------------------


def test_a_single_bucket_histogram_is_allowed() -> None:
    histogram = LatencyHistogram(max_buckets=1)
    for value in (1.0, 10.0, 100.0):
        histogram.record(value)
    assert histogram.bucket_count == 1
    assert (histogram.min, histogram.max, histogram.count) == (1.0, 100.0, 3)
    # everything was folded into the top bucket: the median reads as (about) the top value
    assert histogram.percentile(50) == pytest.approx(100.0, rel=0.01)


def test_the_zero_threshold_itself_is_not_zero() -> None:
    histogram = LatencyHistogram()
    histogram.record(ZERO_THRESHOLD_MS)
    histogram.record(ZERO_THRESHOLD_MS / 2)
    assert histogram.bucket_count == 1  # only the value below the threshold counts as 0


SPREAD = [1.1**k for k in range(100)]  # one value per bucket, 10% apart


def test_summary_reports_p50_p95_p99() -> None:
    histogram = LatencyHistogram()
    for value in SPREAD:
        histogram.record(value)
    summary = histogram.summary()
    for key, p in (("p50", 50), ("p95", 95), ("p99", 99)):
        assert within(summary[key], exact_percentile(SPREAD, p), 0.01), key
    core = PerformanceCore()
    for now, value in enumerate(SPREAD):
        core.record_outcome("a", "t", True, value, now=float(now))
    stats = core.agent_stats("a")
    assert within(stats.latency_p50_ms, exact_percentile(SPREAD, 50), 0.01)
    assert within(stats.latency_p95_ms, exact_percentile(SPREAD, 95), 0.01)
    assert within(stats.latency_p99_ms, exact_percentile(SPREAD, 99), 0.01)


def test_outcome_stats_dict_names_every_field() -> None:
    stats = OutcomeStats(7, 5, 2, 5 / 7, 1.5, 1.0, 2.0, 3.0, 4.5)
    assert stats.to_dict() == {
        "count": 7,
        "successes": 5,
        "failures": 2,
        "success_rate": 5 / 7,
        "latency_mean_ms": 1.5,
        "latency_p50_ms": 1.0,
        "latency_p95_ms": 2.0,
        "latency_p99_ms": 3.0,
        "throughput_per_s": 4.5,
    }


def test_max_buckets_reaches_every_histogram_of_the_core() -> None:
    assert PerformanceCore().route_latency.max_buckets == 2048
    core = PerformanceCore(max_buckets=1)
    assert core.route_latency.max_buckets == core.end_to_end_latency.max_buckets == 1
    for now, value in enumerate((1.0, 10.0, 100.0)):
        core.record_outcome("a", "t", True, value, now=float(now))
    # one bucket: per-agent, per-type and total medians all fold up to the top value
    for stats in (core.agent_stats("a"), core.type_stats("t"), core.total_stats()):
        assert stats.latency_p50_ms == pytest.approx(100.0, rel=0.01)


@pytest.mark.parametrize("bad", [math.inf, math.nan, -1e-12])
def test_a_non_finite_latency_records_nothing(bad: float) -> None:
    core = PerformanceCore()
    with pytest.raises(ValueError, match="latency"):
        core.record_outcome("a", "code", True, bad, now=0.0)
    assert core.agents() == ()
    assert core.type_stats("code").count == 0
    assert core.summary()["task_types"] == {}


def test_every_view_decays_its_throughput_with_now() -> None:
    core = PerformanceCore(ewma_alpha=1.0)
    for step in range(11):
        core.record_outcome("a", "code", True, 1.0, now=step * 0.1)  # 10/s until t=1.0
    assert core.total_stats().throughput_per_s == pytest.approx(10.0)
    assert core.total_stats(now=11.0).throughput_per_s == pytest.approx(0.1)
    assert core.type_stats("code", now=11.0).throughput_per_s == pytest.approx(0.1)
    summary = core.summary(now=11.0)
    for view in (
        summary["outcomes"],
        summary["agents"]["a"],
        summary["task_types"]["code"],
    ):
        assert view["throughput_per_s"] == pytest.approx(0.1)


def collapsed(max_buckets: int = 5) -> LatencyHistogram:
    histogram = LatencyHistogram(max_buckets=max_buckets)
    for k in range(30):
        histogram.record(1.1**k)
    assert histogram.bucket_count == max_buckets
    return histogram


def test_a_copy_keeps_the_bucket_bound() -> None:
    clone = collapsed().copy()
    assert clone.max_buckets == 5
    for k in range(30, 60):
        clone.record(1.1**k)
        assert clone.bucket_count <= 5


def test_merging_a_collapsed_histogram_into_a_roomier_one_keeps_its_floor() -> None:
    # The collapsed side counted its lowest values in its floor bucket, so in the merge,
    # values below that floor fold into it too (whichever side they come from, and later).
    roomy = LatencyHistogram(max_buckets=100)
    roomy.record(0.001)
    roomy.merge(collapsed())
    assert roomy.bucket_count == 5
    roomy.record(0.002)
    assert roomy.bucket_count == 5
    assert (roomy.count, roomy.min) == (32, 0.001)
    # and a collapsed histogram merged into an empty roomy one stays as it was
    empty = LatencyHistogram(max_buckets=100)
    empty.merge(collapsed())
    empty.record(0.5)
    assert empty.bucket_count == 5


def test_a_full_but_never_collapsed_histogram_keeps_every_bucket() -> None:
    full = LatencyHistogram(max_buckets=5)
    for k in range(5):
        full.record(1.1**k)
    assert full.bucket_count == 5
    roomy = LatencyHistogram(max_buckets=100)
    roomy.record(0.001)
    roomy.merge(full)  # nothing was folded, so nothing needs to fold now
    assert roomy.bucket_count == 6
    values = [0.001] + [1.1**k for k in range(5)]
    for p in (0, 20, 40, 60, 80, 100):
        assert within(roomy.percentile(p), exact_percentile(values, p), 0.01)
    # the same when it was filled exactly to the bound by a merge
    low, high = LatencyHistogram(max_buckets=5), LatencyHistogram(max_buckets=5)
    for k in range(3):
        low.record(1.1**k)
    for k in range(3, 5):
        high.record(1.1**k)
    low.merge(high)
    assert low.bucket_count == 5
    roomy = LatencyHistogram(max_buckets=100)
    roomy.record(0.001)
    roomy.merge(low)
    assert roomy.bucket_count == 6


def test_failures_are_counted_one_by_one() -> None:
    core = PerformanceCore()
    for now, success in enumerate((False, True, False, False)):
        core.record_outcome("a", "t", success, 1.0, now=float(now))
    for stats in (core.agent_stats("a"), core.type_stats("t"), core.total_stats()):
        assert (stats.count, stats.successes, stats.failures) == (4, 1, 3)
        assert stats.success_rate == 0.25


def _state(core: PerformanceCore, now: float) -> object:
    """Everything the core reports, and its histograms' insides (exact comparison)."""

    def insides(h: LatencyHistogram) -> tuple[object, ...]:
        return (h._count, h._sum, h._min, h._max, h._zero, h._floor, sorted(h._buckets.items()))

    series = [*core._agents.values(), *core._types.values(), core._total]
    return (
        core.summary(now),
        [insides(s.latency) for s in series],
        [(s.rate.last, s.rate.pending, s.rate.rate) for s in series],
        insides(core._end_to_end),
        insides(core._route),
    )


batch_latencies = st.one_of(
    st.floats(min_value=0.0, max_value=1e4, allow_nan=False),
    st.sampled_from([0.0, 1e-12, 0.005, 1.0, 1.0]),
)


@settings(max_examples=150, deadline=None)
@given(
    batches=st.lists(
        st.lists(
            st.tuples(
                st.sampled_from("ab"),
                st.sampled_from(["x", "y"]),
                st.booleans(),
                batch_latencies,
                st.one_of(st.none(), batch_latencies),
            ),
            max_size=30,
        ),
        max_size=6,
    ),
    buckets=st.sampled_from([2, 3, 2048]),
    times=st.lists(st.sampled_from([0.0, 0.5, 1.0]), min_size=6, max_size=6),
)
def test_a_batch_of_outcomes_records_what_one_call_each_records(
    batches: list[list[tuple[str, str, bool, float, float | None]]],
    buckets: int,
    times: list[float],
) -> None:
    """``record_outcomes`` (and ``record_route_latencies``) leave the core exactly as one
    ``record_outcome`` / ``record_end_to_end`` / ``record_route_latency`` call per value
    would: the same counts, sums, extremes, buckets (collapses too), rates."""
    one_by_one, batched = (PerformanceCore(max_buckets=buckets) for _ in range(2))
    now = 0.0
    for batch, step in zip(batches, times, strict=False):
        now += step  # several batches may come at one instant
        for agent_id, task_type, success, latency, end_to_end in batch:
            one_by_one.record_outcome(agent_id, task_type, success, latency, now)
            if end_to_end is not None:
                one_by_one.record_end_to_end(end_to_end)
        for _, _, _, latency, _ in batch:
            one_by_one.record_route_latency(latency)
        batched.record_outcomes(batch, now)
        batched.record_route_latencies([item[3] for item in batch])
        assert _state(batched, now + 1.0) == _state(one_by_one, now + 1.0)


def test_a_batch_with_a_bad_latency_records_nothing() -> None:
    core = PerformanceCore()
    with pytest.raises(ValueError, match="finite and >= 0"):
        core.record_outcomes([("a", "x", True, 1.0, None), ("a", "x", True, -1.0, None)], 0.0)
    with pytest.raises(ValueError, match="finite and >= 0"):
        core.record_outcomes([("a", "x", True, 1.0, math.inf)], 0.0)
    with pytest.raises(ValueError, match="finite and >= 0"):
        core.route_latency.record_many([1.0, math.nan])
    assert core.total_stats().count == 0 and core.route_latency.count == 0
