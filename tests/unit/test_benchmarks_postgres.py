"""The pure helpers of ``benchmarks/postgres.py`` on synthetic numbers (no database)."""

from __future__ import annotations

import pytest

from benchmarks import postgres as pg

FIGURE_KEYS = {"workload", "system", "metric", "value", "unit"}

FLOOR = {
    "select1_ms_p50": 0.1,
    "select1_ms_p95": 0.2,
    "select1_ms_p99": 0.4,
    "select1_per_s": 9000.0,
    "insert_notify_ms_p50": 0.5,
    "insert_notify_ms_p95": 1.0,
    "insert_notify_ms_p99": 2.0,
    "writes_tasks_per_s": 30_000.0,
}
SAMPLES = [
    {"workers": 2, "concurrency": 4, "tasks_per_s": 2000.0, "tasks_per_s_wall": 900.0},
    {"workers": 2, "concurrency": 4, "tasks_per_s": 2200.0, "tasks_per_s_wall": 1100.0},
    {"workers": 2, "concurrency": 16, "tasks_per_s": 3000.0, "tasks_per_s_wall": 1500.0},
    {"workers": 2, "concurrency": 16, "tasks_per_s": 3600.0, "tasks_per_s_wall": 1700.0},
    {"workers": 1, "concurrency": 16, "tasks_per_s": 1500.0, "tasks_per_s_wall": 800.0},
]
LATENCY = {
    "workers": 2,
    "submit_to_start_ms_p50": 5.0,
    "submit_to_start_ms_p95": 10.0,
    "submit_to_start_ms_p99": 20.0,
    "submit_call_ms_p50": 2.0,
    "submit_call_ms_p95": 4.0,
    "submit_call_ms_p99": 8.0,
    "select1_under_load_ms_p50": 0.5,
    "select1_under_load_ms_p95": 2.0,
    "select1_under_load_ms_p99": 4.0,
    "achieved_rate_per_s": 499.0,
}


def _values(figures: list[pg.Figure]) -> dict[tuple[str, str, str], float]:
    return {(f["workload"], f["system"], f["metric"]): f["value"] for f in figures}


def test_drain_window_is_first_start_to_last_end() -> None:
    assert pg.drain_window_s([10.0, 11.0, 10.5], [12.0, 11.5, 13.0]) == 3.0
    with pytest.raises(ValueError, match="no started"):
        pg.drain_window_s([], [1.0])
    with pytest.raises(ValueError, match="non-positive"):
        pg.drain_window_s([5.0], [5.0])


def test_percentiles_are_nearest_rank_in_ms() -> None:
    values = [float(v) for v in range(1, 101)]
    assert pg.ms_percentiles(values) == {"p50": 50.0, "p95": 95.0, "p99": 99.0}


def test_median_and_best_setting() -> None:
    medians = pg.median_by_setting(SAMPLES, "tasks_per_s")
    assert medians == {(2, 4): 2100.0, (2, 16): 3300.0, (1, 16): 1500.0}
    assert pg.best_concurrency(medians, 2) == 16
    assert pg.best_concurrency(medians, 3) is None
    assert pg.best_concurrency({(2, 4): 1.0, (2, 8): 1.0}, 2) == 4  # tie: the lowest


def test_figures_follow_the_schema_with_ratios_to_the_floors() -> None:
    figures = pg.build_figures(FLOOR, SAMPLES, LATENCY, submit_tasks_per_s=10_000.0)
    assert all(set(f) == FIGURE_KEYS for f in figures)
    values = _values(figures)
    best = ("drain_throughput", "arbiter-postgres-2w")
    assert values[(*best, "tasks_per_s")] == 3300.0
    assert values[(*best, "concurrency")] == 16
    assert values[(*best, "ratio_to_floor-pg-insert-2updates")] == pytest.approx(0.11)
    assert values[(*best, "tasks_per_s_wall_ratio_to_floor-pg-insert-2updates")] == pytest.approx(
        1600 / 30_000
    )
    assert values[("drain_throughput_sweep", "arbiter-postgres-2w-c4", "tasks_per_s")] == 2100.0
    assert values[("drain_throughput", "arbiter-postgres-1w", "tasks_per_s")] == 1500.0
    assert values[("drain_throughput", "floor-pg-insert-2updates", "tasks_per_s")] == 30_000.0
    assert values[("pg_round_trip", "floor-pg-select1", "round_trip_ms_p95")] == 0.2
    lat = ("submit_to_start_500", "arbiter-postgres-2w")
    assert values[(*lat, "submit_to_start_ms_p95")] == 10.0
    assert values[(*lat, "submit_to_start_ms_p95_ratio_to_floor-pg-select1")] == 50.0
    assert values[(*lat, "submit_call_ms_p99_ratio_to_floor-pg-insert-notify")] == 4.0
    loaded = "floor-pg-select1-under-load"
    assert values[("submit_to_start_500", loaded, "round_trip_ms_p95")] == 2.0
    assert values[(*lat, f"submit_to_start_ms_p95_ratio_to_{loaded}")] == 5.0
    assert not any(f["metric"].startswith("select1_under") for f in figures)
    units = {(f["system"], f["metric"]): f["unit"] for f in figures}
    assert units[("arbiter-postgres-2w", "submit_to_start_ms_p50")] == "ms"
    assert units[("arbiter-postgres-2w", "achieved_rate_per_s")] == "tasks/s"
    assert units[("arbiter-postgres-2w", "ratio_to_floor-pg-insert-2updates")] == "x"


def test_targets_and_table() -> None:
    figures = pg.build_figures(FLOOR, SAMPLES, LATENCY)
    goals = pg.targets(figures)
    assert goals["drain_tasks_per_s_2w"]["met"] is True
    assert goals["submit_to_start_ms_p95_2w_at_500"] == {
        "target": "<= 20",
        "value": 10.0,
        "met": True,
    }
    assert pg.targets([])["drain_tasks_per_s_2w"]["met"] is None
    table = pg.format_table({"figures": figures, "targets": goals, "config": {"rate_per_s": 500}})
    assert "arbiter-postgres-2w-c16" in table
    assert "5.00/10.00/20.00" in table
    assert "50.0x/50.0x/50.0x" in table  # submit-to-start / SELECT 1
    assert "0.50/2.00/4.00" in table  # SELECT 1 during the run
    assert "(met)" in table


def test_store_url_gets_the_schema() -> None:
    assert pg.with_schema("postgresql://h/db", "s1") == "postgresql://h/db?schema=s1"
    assert pg.with_schema("postgresql://h/db?sslmode=off", "s") == (
        "postgresql://h/db?sslmode=off&schema=s"
    )
