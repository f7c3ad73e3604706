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


def test_paced_rounds_interleave_the_systems_and_take_medians() -> None:
    calls: list[str] = []

    class Paced:
        def __init__(self, name: str, p99s: list[float]) -> None:
            self.name, self.p99s = name, p99s

        def paced_latency(self, rate_per_s: float, n: int) -> dict[str, dict[str, float]]:
            calls.append(self.name)
            p99 = self.p99s[len([c for c in calls if c == self.name]) - 1]
            return {"end_to_end_ms": {"p50": 1.0, "p95": 2.0, "p99": p99}}

    class FailsSecond(Paced):
        def paced_latency(self, rate_per_s: float, n: int) -> dict[str, dict[str, float]]:
            if self.name in calls:
                raise RuntimeError("second round")
            return super().paced_latency(rate_per_s, n)

    systems = [
        ("a", Paced("a", [9.0, 1.0, 2.0])),
        ("b", Paced("b", [3.0, 30.0, 4.0])),
        ("c", FailsSecond("c", [5.0])),
    ]
    results = workloads.run_paced_rounds(systems, 1000, 10, 3, log=lambda _: None)
    # Round r starts at system r; c failed its second run and was not run again.
    assert calls == ["a", "b", "c", "b", "a", "a", "b"]  # (a failed call is not logged)
    a, b, c = results
    assert isinstance(a, Measurement) and isinstance(b, Measurement)
    assert a.workload == "paced_latency_1000" and a.system == "a"
    assert a.metrics["end_to_end_ms_p99"] == 2.0 and a.samples == (9.0, 1.0, 2.0)
    assert b.metrics["end_to_end_ms_p99"] == 4.0 and b.metrics["end_to_end_ms_p50"] == 1.0
    assert isinstance(c, ErrorEntry) and c.error == "RuntimeError: second round"
    with pytest.raises(ValueError, match="rounds"):
        workloads.run_paced_rounds(systems, 1000, 10, 0)
    one = workloads.run_paced_rounds([("d", Paced("d", [7.0]))], 500, 10, 1, log=lambda _: None)
    assert isinstance(one[0], Measurement) and one[0].samples == ()


def _with_arbiter() -> list[Measurement]:
    lat = {"end_to_end_ms_p50": 1.0, "end_to_end_ms_p95": 2.0, "end_to_end_ms_p99": 4.0}
    return [
        Measurement("noop_throughput", "floor-pykka-4hop", {"tasks_per_s": 80_000.0}),
        Measurement("noop_throughput", "floor-queue", {"tasks_per_s": 400_000.0}),
        Measurement("noop_throughput", "arbiter-memory", {"tasks_per_s": 4_000.0}),
        Measurement("noop_throughput", "huey", {"tasks_per_s": 40_000.0}),
        Measurement("noop_throughput", "celery", {"tasks_per_s": 2_000.0}),
        Measurement("paced_latency_500", "floor-queue", {k: v / 10 for k, v in lat.items()}),
        Measurement("paced_latency_500", "arbiter-memory", lat),
        Measurement("paced_latency_500", "huey", {k: v * 2 for k, v in lat.items()}),
        Measurement("durable_submit", "floor-queue", {"tasks_per_s": 1_000_000.0}),
        Measurement(
            "durable_submit",
            "arbiter-sqlite-fsync",
            {"tasks_per_s": 10_000.0, "tasks_per_s_single_submit": 2_000.0},
        ),
        Measurement("durable_submit", "huey", {"tasks_per_s": 50_000.0}),
        Measurement("memory_per_queued_task", "floor-queue", {"bytes_per_task": 8.0}),
        Measurement("memory_per_queued_task", "arbiter-memory", {"bytes_per_task": 2_000.0}),
        Measurement("memory_per_queued_task", "huey", {"bytes_per_task": 250.0}),
    ]


def _ratios(figures: list[report.Figure]) -> dict[tuple[str, str, str], float]:
    return {
        (f["workload"], f["system"], f["metric"]): f["value"] for f in figures if f["unit"] == "x"
    }


def test_ratio_metric_names_and_units() -> None:
    assert report.ratio_metric("tasks_per_s", "huey") == "ratio_to_huey"
    assert report.ratio_metric("end_to_end_ms_p99", "huey") == "end_to_end_ms_p99_ratio_to_huey"
    assert report.unit_for("bytes_per_task_ratio_to_floor-queue") == "x"
    assert report.unit_for("bytes_per_task") == "bytes"
    assert report.unit_for("tasks_per_s_single_submit") == "tasks/s"
    assert report.is_ratio("ratio_to_celery")
    assert not report.is_ratio("tasks_per_s")


def test_references_arbiter_gets_floors_and_peers_peers_get_floors() -> None:
    order = ["floor-queue", "arbiter-memory", "arbiter-sqlite", "dramatiq", "huey"]
    floors = ["floor-pykka-4hop", "floor-queue"]
    assert report.references_for("arbiter-sqlite", order) == [*floors, "dramatiq", "huey"]
    assert report.references_for("huey", order) == floors
    assert report.references_for("floor-queue", order) == []


def test_every_arbiter_figure_gets_a_ratio_to_floors_and_peers() -> None:
    ratios = _ratios(report.build_figures(_with_arbiter()))
    noop = "noop_throughput"
    assert ratios[(noop, "arbiter-memory", "ratio_to_floor-pykka-4hop")] == pytest.approx(0.05)
    assert ratios[(noop, "arbiter-memory", "ratio_to_floor-queue")] == pytest.approx(0.01)
    assert ratios[(noop, "arbiter-memory", "ratio_to_huey")] == pytest.approx(0.1)
    assert ratios[(noop, "arbiter-memory", "ratio_to_celery")] == pytest.approx(2.0)
    paced = "paced_latency_500"
    for pct in ("p50", "p95", "p99"):
        metric = f"end_to_end_ms_{pct}"
        assert ratios[(paced, "arbiter-memory", f"{metric}_ratio_to_floor-queue")] == pytest.approx(
            10.0
        )
        assert ratios[(paced, "arbiter-memory", f"{metric}_ratio_to_huey")] == pytest.approx(0.5)
    mem = "memory_per_queued_task"
    assert ratios[(mem, "arbiter-memory", "bytes_per_task_ratio_to_floor-queue")] == 250.0
    assert ratios[(mem, "arbiter-memory", "bytes_per_task_ratio_to_huey")] == 8.0
    # No ratio to a reference without that figure (celery has no latency), nor between
    # Arbiter systems.
    assert (paced, "arbiter-memory", "end_to_end_ms_p50_ratio_to_celery") not in ratios
    assert not any("ratio_to_arbiter" in metric for _, _, metric in ratios)


def test_peers_get_ratios_to_floors_only_on_every_shared_metric() -> None:
    ratios = _ratios(report.build_figures(_with_arbiter()))
    huey = {(w, m): v for (w, s, m), v in ratios.items() if s == "huey"}
    assert huey == {
        ("noop_throughput", "ratio_to_floor-pykka-4hop"): pytest.approx(0.5),
        ("noop_throughput", "ratio_to_floor-queue"): pytest.approx(0.1),
        ("paced_latency_500", "end_to_end_ms_p50_ratio_to_floor-queue"): pytest.approx(20.0),
        ("paced_latency_500", "end_to_end_ms_p95_ratio_to_floor-queue"): pytest.approx(20.0),
        ("paced_latency_500", "end_to_end_ms_p99_ratio_to_floor-queue"): pytest.approx(20.0),
        ("durable_submit", "ratio_to_floor-queue"): pytest.approx(0.05),
        ("memory_per_queued_task", "bytes_per_task_ratio_to_floor-queue"): pytest.approx(31.25),
    }


def test_single_submit_is_compared_with_the_references_tasks_per_s() -> None:
    ratios = _ratios(report.build_figures(_with_arbiter()))
    key = ("durable_submit", "arbiter-sqlite-fsync", "tasks_per_s_single_submit_ratio_to_huey")
    assert ratios[key] == pytest.approx(2_000 / 50_000)
    # A reference with its own single-submit figure is compared with that one.
    figures = report.build_figures(
        [
            Measurement("durable_submit", "arbiter-x", {"tasks_per_s_single_submit": 10.0}),
            Measurement(
                "durable_submit",
                "huey",
                {"tasks_per_s": 1000.0, "tasks_per_s_single_submit": 100.0},
            ),
        ]
    )
    assert _ratios(figures) == {
        ("durable_submit", "arbiter-x", "tasks_per_s_single_submit_ratio_to_huey"): 0.1
    }


def test_no_ratio_against_a_zero_or_missing_reference() -> None:
    figures = report.build_figures(
        [
            Measurement("memory_per_queued_task", "floor-queue", {"bytes_per_task": 0.0}),
            Measurement("memory_per_queued_task", "arbiter-memory", {"bytes_per_task": 10.0}),
        ]
    )
    assert _ratios(figures) == {}


def test_table_shows_new_columns_and_the_arbiter_ratio_table(tmp_path: Path) -> None:
    result = RunResult(
        started_at="2024-01-01T00:00:00+00:00",
        measurements=_with_arbiter(),
        errors=[ErrorEntry("durable_submit", "celery", "TimeoutError: stuck")],
    )
    document = report.to_document(result)
    table = report.format_table(document)
    lines = table.splitlines()
    assert "submit tasks/s" in lines[0]
    assert "1-by-1 submit/s" in lines[0]
    assert "bytes/queued task" in lines[0]
    celery_row = next(line for line in lines if line.startswith("celery"))
    assert "ERROR" in celery_row
    arbiter_row = next(line for line in lines if line.startswith("arbiter-memory"))
    assert "2,000" in arbiter_row  # bytes per task

    references, rows = report.ratio_rows(document["figures"])
    assert references == ["floor-pykka-4hop", "floor-queue", "huey", "celery"]
    by_metric = {(r[0], r[1], r[2]): r[3:] for r in rows}
    assert by_metric[("arbiter-memory", "noop_throughput", "tasks_per_s")] == [
        "0.050x",
        "0.010x",
        "0.100x",
        "2.000x",
    ]
    assert by_metric[("arbiter-memory", "memory_per_queued_task", "bytes_per_task")] == [
        "-",
        "250.0x",
        "8.000x",
        "-",
    ]
    assert ("arbiter-sqlite-fsync", "durable_submit", "tasks_per_s_single_submit") in by_metric
    assert all(r[0].startswith("arbiter") for r in rows)
    assert "Arbiter / reference" in table

    pytest.importorskip("matplotlib")
    png = report.write_plot(document, tmp_path / "latest.png")
    assert png is not None
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_ratio_format_keeps_small_ratios_readable() -> None:
    assert report._fmt_ratio(0.5) == "0.500x"
    assert report._fmt_ratio(0.0042) == "0.0042x"
    assert report._fmt_ratio(9.4e-05) == "0.000094x"
    assert report._fmt_ratio(0.0) == "0.000x"
    assert report._fmt_ratio(250.0) == "250.0x"


def test_submit_rate_and_traced_bytes_per_task() -> None:
    assert workloads.submit_rate(100, lambda: sum(range(1000))) > 0
    kept: list[bytes] = []

    def fill() -> None:
        kept.extend(bytes(1000) for _ in range(200))

    per_task = workloads.traced_bytes_per_task(200, fill)
    assert 1000 <= per_task < 2000
    assert len(kept) == 200
    with pytest.raises(ValueError, match="positive"):
        workloads.traced_bytes_per_task(0, fill)


def test_run_repeated_takes_the_median_per_metric_and_keeps_samples() -> None:
    values = iter([{"tasks_per_s": 3.0, "x": 1.0}, {"tasks_per_s": 1.0, "x": 5.0}] * 2)
    outcome = workloads.run_repeated(
        "durable_submit", "s", lambda: next(values), 3, 5.0, "tasks_per_s", log=lambda _: None
    )
    assert isinstance(outcome, Measurement)
    assert outcome.metrics == {"tasks_per_s": 3.0, "x": 1.0}
    assert outcome.samples == (3.0, 1.0, 3.0)


def test_run_once_turns_bad_values_and_failures_into_errors() -> None:
    ok = workloads.run_once("m", "s", lambda: {"bytes_per_task": 8.0}, 5.0, log=lambda _: None)
    assert ok == Measurement("m", "s", {"bytes_per_task": 8.0})
    bad = workloads.run_once("m", "s", lambda: {"bytes_per_task": -1.0}, 5.0, log=lambda _: None)
    assert isinstance(bad, ErrorEntry)
    assert "invalid metric values" in bad.error

    def boom() -> dict[str, float]:
        raise RuntimeError("boom")

    assert workloads.run_once("m", "s", boom, 5.0, log=lambda _: None) == ErrorEntry(
        "m", "s", "RuntimeError: boom"
    )


def test_cli_sizes_and_workload_support() -> None:
    from benchmarks import __main__ as cli
    from benchmarks import systems

    quick = cli.parse_args(["--quick"])
    assert (quick.n, quick.paced_n, quick.memory_n) == (5_000, 1_000, 5_000)
    assert quick.rates == [1000.0] and cli.parse_args([]).rates == [500.0, 1000.0, 2000.0]
    assert quick.paced_repeats == 1 and cli.parse_args([]).paced_repeats == 3
    with pytest.raises(SystemExit):
        cli.parse_args(["--paced-repeats", "0"])
    full = cli.parse_args(["--full", "--memory-n", "7"])
    assert (full.n, full.memory_n) == (100_000, 7)
    assert cli.parse_args([]).memory_n == 100_000
    assert set(cli.WORKLOADS) >= {"durable_submit", "memory_per_queued_task"}

    class OnlySubmit:
        def durable_submit(self, n: int) -> dict[str, float]:
            return {"tasks_per_s": float(n)}

        def settings(self) -> dict[str, int]:
            return {"agents": 1}

    assert systems.supports(OnlySubmit(), "durable_submit")
    assert not systems.supports(OnlySubmit(), "noop_throughput")
    assert systems.settings_of(OnlySubmit()) == {"agents": 1}
    assert systems.settings_of(object()) is None


def test_scaling_points_name_their_workloads_and_cover_each_size() -> None:
    from benchmarks import __main__ as cli
    from benchmarks.workloads import Scale

    assert Scale(depth=1_000_000).workload == "scaling_depth_1000000"
    assert Scale(workers=16).workload == "scaling_agents_16"
    assert Scale(payload_bytes=100).workload == "scaling_payload_100"
    assert Scale(depth=1_000).measured(5_000) == 1_000  # no more than is queued
    assert Scale(depth=100_000).measured(5_000) == 5_000
    assert Scale(workers=4).measured(5_000) == 5_000
    assert Scale().blob() is None and Scale(payload_bytes=3).blob() == "xxx"
    full = {p.workload for p in cli.scaling_points("full")}
    assert {"scaling_depth_1000", "scaling_depth_1000000", "scaling_agents_1"} <= full
    assert {"scaling_agents_64", "scaling_payload_100", "scaling_payload_100000"} <= full
    assert all(p.depth <= 10_000 for p in cli.scaling_points("quick"))
    assert cli.parse_args(["--quick"]).scaling_n == 1_000
    assert cli.parse_args(["--quick"]).repeats == 1 and cli.parse_args([]).repeats == 3
    assert cli.parse_args(["--scaling-n", "9"]).scaling_n == 9
    assert "scaling" in cli.WORKLOADS and 2000.0 in cli.DEFAULT_RATES


@pytest.mark.parametrize(
    "scale",
    [
        pytest.param({"depth": 300}, id="depth"),
        pytest.param({"workers": 3}, id="agents"),
        pytest.param({"payload_bytes": 2_000}, id="payload"),
    ],
)
def test_floor_and_arbiter_run_each_kind_of_scaling_point(scale: dict[str, int]) -> None:
    from benchmarks.arbiter_systems import ArbiterSystem
    from benchmarks.floors import PykkaFloor, QueueFloor
    from benchmarks.workloads import Scale

    point = Scale(**scale)
    for system in (QueueFloor(), ArbiterSystem("memory")):
        result = workloads.run_scaling("x", system, 200, point, log=lambda _: None)
        assert isinstance(result, Measurement), result
        assert result.workload == point.workload and result.metrics["tasks_per_s"] > 0
    pykka = workloads.run_scaling("floor-pykka-4hop", PykkaFloor(), 200, point, log=print)
    if point.kind == "payload":
        assert isinstance(pykka, Measurement)
    else:  # the chain has no queue to fill first and no worker count
        assert isinstance(pykka, ErrorEntry) and "does not scale" in pykka.error


def test_peers_run_a_scaling_point_with_a_deep_queue() -> None:
    pytest.importorskip("dramatiq", reason="the bench extra is not installed")
    from benchmarks.peers import CeleryPeer, DramatiqPeer
    from benchmarks.workloads import Scale

    result = workloads.run_scaling(
        "dramatiq", DramatiqPeer(), 100, Scale(depth=200), log=lambda _: None
    )
    assert isinstance(result, Measurement) and result.metrics["tasks_per_s"] > 0
    too_deep = workloads.run_scaling(
        "celery", CeleryPeer(), 100, Scale(depth=1_000_000), log=lambda _: None
    )
    assert isinstance(too_deep, ErrorEntry) and "max_depth" in too_deep.error


@pytest.mark.parametrize("actor", ["queue", "journal", "agent"])
def test_restart_latency_is_measured_per_actor_on_a_running_runner(actor: str) -> None:
    from benchmarks.arbiter_systems import ArbiterSystem
    from benchmarks.floors import PykkaFloor

    arbiter = ArbiterSystem("memory").restart_latency(actor, 3)
    floor = PykkaFloor().restart_latency(actor, 3)
    for metrics in (arbiter, floor):
        assert set(metrics) == {"restart_ms_p50", "restart_ms_p95", "restart_ms_p99"}
        assert 0 < metrics["restart_ms_p50"] <= metrics["restart_ms_p99"]
    assert report.unit_for("restart_ms_p99") == "ms"


def test_the_plot_has_scaling_and_restart_panels_when_measured(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    result = _synthetic()
    for system, rate in (("arbiter-memory", 5_000.0), ("huey", 20_000.0)):
        for depth in (1_000, 1_000_000):
            result.measurements.append(
                Measurement(f"scaling_depth_{depth}", system, {"tasks_per_s": rate})
            )
    restart = {"restart_ms_p50": 0.5, "restart_ms_p95": 0.9, "restart_ms_p99": 1.2}
    for actor in ("queue", "agent"):
        result.measurements.append(
            Measurement(f"restart_latency_{actor}", "arbiter-memory", restart)
        )
    document = report.to_document(result)
    assert any(f["metric"] == "restart_ms_p99" and f["unit"] == "ms" for f in document["figures"])
    plain = report.write_plot(report.to_document(_synthetic()), tmp_path / "plain.png")
    more = report.write_plot(document, tmp_path / "more.png")
    assert plain is not None and more is not None
    from matplotlib import image

    # Two more panels (scaling with depth, restarts): one more row of the 2-column grid.
    assert image.imread(str(more)).shape[0] > image.imread(str(plain)).shape[0]
