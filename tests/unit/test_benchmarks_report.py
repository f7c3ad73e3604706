"""Smoke tests of the benchmark report writer on synthetic numbers (no peers, fast)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from benchmarks import report, workloads
from benchmarks.report import ErrorEntry, Measurement, RunResult

FIGURE_KEYS = {"workload", "system", "metric", "value", "unit"}


def _synthetic() -> RunResult:
    return RunResult(
        started_at="2024-01-01T00:00:00+00:00",
        finished_at="2024-01-01T00:01:00+00:00",
        machine={"cpu_count": 2, "platform": "test", "python": "3.11.0"},
        versions={"pykka": "4.0.0"},
        measurements=[
            Measurement("noop_throughput", "floor-queue", {"tasks_per_s": 400_000.0}, (1.0, 2.0)),
            Measurement("noop_throughput", "floor-pykka-4hop", {"tasks_per_s": 80_000.0}),
            Measurement("noop_throughput", "huey", {"tasks_per_s": 40_000.0}),
            Measurement("noop_throughput", "celery", {"tasks_per_s": 4_000.0}),
            Measurement(
                "paced_latency_500",
                "huey",
                {"end_to_end_ms_p50": 0.5, "end_to_end_ms_p95": 1.0, "end_to_end_ms_p99": 2.0},
            ),
        ],
        errors=[ErrorEntry("noop_throughput", "dramatiq", "TimeoutError: stuck")],
        skipped={"arbiter-sqlite": "not there"},
    )


def test_figures_follow_the_schema() -> None:
    figures = report.build_figures(_synthetic().measurements)
    assert figures
    for f in figures:
        assert set(f) == FIGURE_KEYS
        assert isinstance(f["value"], float)
        assert f["unit"]
    units = {(f["metric"], f["unit"]) for f in figures}
    assert ("tasks_per_s", "tasks/s") in units
    assert ("end_to_end_ms_p99", "ms") in units


def test_ratios_to_both_floors_for_non_floor_systems_only() -> None:
    figures = report.build_figures(_synthetic().measurements)
    ratios = {(f["system"], f["metric"]): f["value"] for f in figures if f["unit"] == "x"}
    assert ratios == {
        ("huey", "ratio_to_floor-pykka-4hop"): pytest.approx(0.5),
        ("huey", "ratio_to_floor-queue"): pytest.approx(0.1),
        ("celery", "ratio_to_floor-pykka-4hop"): pytest.approx(0.05),
        ("celery", "ratio_to_floor-queue"): pytest.approx(0.01),
    }
    assert all(f["workload"] == "noop_throughput" for f in figures if f["unit"] == "x")


def test_no_ratio_against_a_missing_floor() -> None:
    figures = report.build_figures(
        [
            Measurement("noop_throughput", "floor-queue", {"tasks_per_s": 100.0}),
            Measurement("noop_throughput", "huey", {"tasks_per_s": 50.0}),
        ]
    )
    metrics = [f["metric"] for f in figures if f["system"] == "huey"]
    assert metrics == ["tasks_per_s", "ratio_to_floor-queue"]


def test_document_json_table_and_plot(tmp_path: Path) -> None:
    document = report.to_document(_synthetic())
    for key in ("machine", "versions", "started_at", "figures", "errors", "skipped"):
        assert key in document
    assert document["errors"] == [
        {"workload": "noop_throughput", "system": "dramatiq", "error": "TimeoutError: stuck"}
    ]
    assert document["samples"] == {"noop_throughput": {"floor-queue": [1.0, 2.0]}}

    path = report.write_json(document, tmp_path / "out" / "latest.json")
    assert json.loads(path.read_text()) == document

    table = report.format_table(document)
    lines = table.splitlines()
    assert lines[2].startswith("floor-pykka-4hop")  # floors first
    huey_row = next(line for line in lines if line.startswith("huey"))
    assert "0.500x" in huey_row
    assert "0.100x" in huey_row
    assert "0.50/1.00/2.00" in huey_row
    assert any(line.startswith("dramatiq") and "ERROR" in line for line in lines)
    assert "skipped: arbiter-sqlite: not there" in table

    pytest.importorskip("matplotlib")
    png = report.write_plot(document, tmp_path / "latest.png")
    assert png is not None
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_percentiles_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert workloads.percentiles(values) == {"p50": 50.0, "p95": 95.0, "p99": 99.0}
    assert workloads.percentiles([3.0]) == {"p50": 3.0, "p95": 3.0, "p99": 3.0}


def test_completion_counts_across_threads() -> None:
    completion = workloads.Completion(400, record_latency=True)
    start = workloads.clock()

    def worker() -> None:
        for _ in range(100):
            completion.hit(start)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    completion.wait(1.0)
    assert completion.count == 400
    assert len(completion.latencies_ms) == 400
    assert completion.finished_at >= start


def test_a_failing_or_hanging_system_becomes_an_error_entry() -> None:
    class Broken:
        def noop_throughput(self, n: int) -> float:
            raise RuntimeError("boom")

    class Hangs:
        def paced_latency(self, rate_per_s: float, n: int) -> dict[str, dict[str, float]]:
            threading.Event().wait(5.0)
            return {}

    broken = workloads.run_noop_throughput("broken", Broken(), 10, 3, log=lambda _: None)
    assert broken == ErrorEntry("noop_throughput", "broken", "RuntimeError: boom")
    hung = workloads.run_paced_latency("hangs", Hangs(), 500, 10, log=lambda _: None, timeout_s=0.2)
    assert isinstance(hung, ErrorEntry)
    assert hung.workload == "paced_latency_500"
    assert "WatchdogTimeout" in hung.error
