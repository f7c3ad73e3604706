"""The demo-against-the-floor benchmark's rounds and summary (pure parts)."""

from __future__ import annotations

from typing import Any

import pytest

from benchmarks.demo import TARGET_RATIO, measure_rounds, summarise


def _summary(rate: float, lost: int = 0, duplicates: int = 0) -> dict[str, Any]:
    ms = {"p50": 1.0, "p95": 2.0, "p99": 3.0}
    return {
        "throughput_per_s": rate,
        "lost": lost,
        "duplicates": duplicates,
        "route_assign_ms": ms,
        "end_to_end_ms": ms,
    }


def test_each_round_runs_the_floor_then_the_demo_and_keeps_its_own_ratio() -> None:
    calls: list[str] = []
    floors = iter([100.0, 80.0, 50.0])
    demos = iter([_summary(40.0), _summary(48.0, duplicates=1), _summary(30.0)])

    def floor() -> float:
        calls.append("floor")
        return next(floors)

    def demo() -> dict[str, Any]:
        calls.append("demo")
        return next(demos)

    rounds = measure_rounds(3, floor, demo)
    assert calls == ["floor", "demo"] * 3
    assert [r["ratio"] for r in rounds] == [0.4, 0.6, 0.6]
    assert [r["round"] for r in rounds] == [1, 2, 3]
    summary = summarise(rounds)
    assert summary["ratio_median"] == 0.6  # the median of the ratios, not of the rates
    assert (summary["ratio_min"], summary["ratio_max"]) == (0.4, 0.6)
    assert summary["floor_tasks_per_s"] == 80 and summary["demo_tasks_per_s"] == 40
    assert summary["duplicates"] == 1 and summary["lost"] == 0
    assert summary["target"] == {"ratio_at_least": TARGET_RATIO, "met": True}


def test_the_target_is_judged_on_the_median_and_lost_tasks_are_summed() -> None:
    rounds = measure_rounds(
        2, iter([100.0, 100.0]).__next__, iter([_summary(49.0, lost=2), _summary(50.0)]).__next__
    )
    summary = summarise(rounds)
    assert summary["ratio_median"] == 0.495
    assert summary["target"]["met"] is False
    assert summary["lost"] == 2


def test_no_rounds_is_refused() -> None:
    with pytest.raises(ValueError, match="rounds"):
        measure_rounds(0, lambda: 1.0, lambda: _summary(1.0))
