"""Turn measurements into the report: the figures list, the JSON file, the table, the plot.

Everything here is pure (no threads, no peers) apart from the writers, so it is unit-tested
on synthetic numbers (``tests/unit/test_benchmarks_report.py``).

Figure schema (one object per number, in ``latest.json`` under ``figures``)::

    {"workload": "noop_throughput", "system": "huey", "metric": "tasks_per_s",
     "value": 41234.5, "unit": "tasks/s"}

Ratio figures (for every non-floor system with a throughput figure, and every floor that
has one) use metric ``ratio_to_<floor>`` and unit ``x``: system throughput / floor
throughput, so 1.0 means "as fast as the floor".
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, TypedDict

NOOP_WORKLOAD = "noop_throughput"
PACED_WORKLOAD = "paced_latency"
THROUGHPUT_METRIC = "tasks_per_s"
FLOOR_PREFIX = "floor-"
# The floors every other system is compared with, in table order.
FLOORS: tuple[str, ...] = ("floor-pykka-4hop", "floor-queue")
LATENCY_PERCENTILES: tuple[str, ...] = ("p50", "p95", "p99")

UNITS: dict[str, str] = {
    THROUGHPUT_METRIC: "tasks/s",
    **{f"end_to_end_ms_{p}": "ms" for p in LATENCY_PERCENTILES},
}
RATIO_UNIT = "x"
SCHEMA_VERSION = 1


class Figure(TypedDict):
    """One number of the report."""

    workload: str
    system: str
    metric: str
    value: float
    unit: str


@dataclass(frozen=True)
class Measurement:
    """The outcome of one workload on one system (already reduced, e.g. a median)."""

    workload: str
    system: str
    metrics: Mapping[str, float]
    samples: Sequence[float] = ()
    """Raw per-repeat values (throughput repeats), kept in the JSON to judge the noise."""


@dataclass(frozen=True)
class ErrorEntry:
    """A workload that failed on a system (exception or timeout): reported, never fatal."""

    workload: str
    system: str
    error: str


@dataclass
class RunResult:
    """Everything one harness run produced."""

    started_at: str
    finished_at: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    measurements: list[Measurement] = field(default_factory=list)
    errors: list[ErrorEntry] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    machine: dict[str, Any] = field(default_factory=dict)


def is_floor(system: str) -> bool:
    return system.startswith(FLOOR_PREFIX)


def paced_workload_name(rate_per_s: float) -> str:
    return f"{PACED_WORKLOAD}_{rate_per_s:g}"


def unit_for(metric: str) -> str:
    if metric.startswith("ratio_to_"):
        return RATIO_UNIT
    return UNITS.get(metric, "")


def build_figures(measurements: Iterable[Measurement]) -> list[Figure]:
    """Flatten measurements into figures and append the ratio-to-floor figures."""
    figures: list[Figure] = []
    for m in measurements:
        for metric, value in m.metrics.items():
            figures.append(
                Figure(
                    workload=m.workload,
                    system=m.system,
                    metric=metric,
                    value=float(value),
                    unit=unit_for(metric),
                )
            )
    figures.extend(ratio_figures(figures))
    return figures


def ratio_figures(figures: Sequence[Figure]) -> list[Figure]:
    """``ratio_to_<floor>`` = throughput / floor throughput for each non-floor system."""
    throughput = {
        f["system"]: f["value"]
        for f in figures
        if f["workload"] == NOOP_WORKLOAD and f["metric"] == THROUGHPUT_METRIC
    }
    ratios: list[Figure] = []
    for system, value in throughput.items():
        if is_floor(system):
            continue
        for floor in FLOORS:
            floor_value = throughput.get(floor)
            if floor_value is None or floor_value <= 0 or not math.isfinite(floor_value):
                continue
            metric = f"ratio_to_{floor}"
            ratios.append(
                Figure(
                    workload=NOOP_WORKLOAD,
                    system=system,
                    metric=metric,
                    value=value / floor_value,
                    unit=RATIO_UNIT,
                )
            )
    return ratios


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "gil_enabled": bool(getattr(sys, "_is_gil_enabled", lambda: True)()),
    }
    if hasattr(os, "getloadavg"):
        info["loadavg_at_start"] = [round(x, 2) for x in os.getloadavg()]
    return info


def package_versions(distributions: Iterable[str]) -> dict[str, str]:
    """Installed versions of the given distributions (missing ones are left out)."""
    versions: dict[str, str] = {}
    for dist in sorted(set(distributions)):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return versions


def to_document(result: RunResult) -> dict[str, Any]:
    """The JSON document written to ``latest.json``."""
    samples: dict[str, dict[str, list[float]]] = {}
    for m in result.measurements:
        if m.samples:
            samples.setdefault(m.workload, {})[m.system] = [float(s) for s in m.samples]
    return {
        "schema_version": SCHEMA_VERSION,
        "started_at": result.started_at,
        "finished_at": result.finished_at,
        "machine": result.machine,
        "versions": result.versions,
        "config": result.config,
        "figures": build_figures(result.measurements),
        "samples": samples,
        "errors": [
            {"workload": e.workload, "system": e.system, "error": e.error} for e in result.errors
        ],
        "skipped": [{"system": s, "reason": r} for s, r in sorted(result.skipped.items())],
    }


def write_json(document: Mapping[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(document, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def _lookup(figures: Sequence[Figure]) -> dict[tuple[str, str, str], float]:
    return {(f["workload"], f["system"], f["metric"]): f["value"] for f in figures}


def _systems_in_order(figures: Sequence[Figure], errors: Sequence[Mapping[str, str]]) -> list[str]:
    seen: list[str] = []
    for name in [f["system"] for f in figures] + [e["system"] for e in errors]:
        if name not in seen:
            seen.append(name)
    floors = [f for f in FLOORS if f in seen] + [s for s in seen if is_floor(s) and s not in FLOORS]
    return floors + [s for s in seen if not is_floor(s)]


def _fmt_rate(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}"


def _fmt_ratio(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}x" if value < 10 else f"{value:.1f}x"


def _fmt_ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if value < 100 else f"{value:.0f}"


def format_table(document: Mapping[str, Any]) -> str:
    """A plain-text table: throughput, ratios to both floors, latency percentiles per rate."""
    figures: list[Figure] = list(document.get("figures", []))
    errors: list[Mapping[str, str]] = list(document.get("errors", []))
    values = _lookup(figures)
    rates = sorted(
        {
            f["workload"]
            for f in figures
            if f["workload"].startswith(PACED_WORKLOAD + "_") and f["unit"] == "ms"
        },
        key=lambda w: float(w.rsplit("_", 1)[1]),
    )
    header = ["system", "noop tasks/s", *(f"vs {floor}" for floor in FLOORS)]
    header += [f"p50/p95/p99 ms @{w.rsplit('_', 1)[1]}/s" for w in rates]
    error_by: dict[str, list[str]] = {}
    for e in errors:
        error_by.setdefault(e["system"], []).append(e["workload"])

    rows: list[list[str]] = []
    for system in _systems_in_order(figures, errors):
        tps = values.get((NOOP_WORKLOAD, system, THROUGHPUT_METRIC))
        row = [system]
        row.append(
            "ERROR" if tps is None and NOOP_WORKLOAD in error_by.get(system, []) else _fmt_rate(tps)
        )
        for floor in FLOORS:
            if system == floor:
                row.append("1x (floor)" if tps is not None else "-")
            else:
                row.append(_fmt_ratio(values.get((NOOP_WORKLOAD, system, f"ratio_to_{floor}"))))
        for w in rates:
            pcts = [values.get((w, system, f"end_to_end_ms_{p}")) for p in LATENCY_PERCENTILES]
            if all(v is None for v in pcts):
                row.append("ERROR" if w in error_by.get(system, []) else "-")
            else:
                row.append("/".join(_fmt_ms(v) for v in pcts))
        rows.append(row)

    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    lines = [line(header), "  ".join("-" * w for w in widths)]
    lines += [line(r) for r in rows]
    lines += [f"error: {e['system']} / {e['workload']}: {e['error']}" for e in errors]
    lines += [f"skipped: {s['system']}: {s['reason']}" for s in document.get("skipped", [])]
    return "\n".join(lines)


def write_plot(document: Mapping[str, Any], path: Path) -> Path | None:
    """Bar plot of throughput (and latency, when measured). Returns None without matplotlib."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures: list[Figure] = list(document.get("figures", []))
    values = _lookup(figures)
    systems = _systems_in_order(figures, [])
    tput = [
        (s, values[(NOOP_WORKLOAD, s, THROUGHPUT_METRIC)])
        for s in systems
        if (NOOP_WORKLOAD, s, THROUGHPUT_METRIC) in values
    ]
    paced = sorted(
        {f["workload"] for f in figures if f["workload"].startswith(PACED_WORKLOAD + "_")},
        key=lambda w: float(w.rsplit("_", 1)[1]),
    )
    panels = 1 + (1 if paced else 0)
    fig, axes = plt.subplots(1, panels, figsize=(7 * panels, 5), squeeze=False)
    ax = axes[0][0]
    if tput:
        names = [s for s, _ in tput]
        heights = [v for _, v in tput]
        colors = ["#888888" if is_floor(s) else "#1f77b4" for s in names]
        bars = ax.bar(names, heights, color=colors)
        ax.set_yscale("log")
        floor_ref = values.get((NOOP_WORKLOAD, FLOORS[0], THROUGHPUT_METRIC))
        for bar, (s, v) in zip(bars, tput, strict=True):
            label = f"{v:,.0f}"
            if floor_ref and not is_floor(s):
                label += f"\n{v / floor_ref:.2f}x"
            ax.annotate(
                label, (bar.get_x() + bar.get_width() / 2, v), ha="center", va="bottom", fontsize=8
            )
    ax.set_title("no-op throughput (median; grey = floors)")
    ax.set_ylabel("tasks/s (log scale)")
    ax.tick_params(axis="x", rotation=30)

    if paced:
        ax2 = axes[0][1]
        lat_systems = [
            s for s in systems if any((w, s, "end_to_end_ms_p50") in values for w in paced)
        ]
        width = 0.8 / (2 * len(paced))
        for wi, w in enumerate(paced):
            rate = w.rsplit("_", 1)[1]
            for pi, pct in enumerate(("p50", "p99")):
                xs = [i + (2 * wi + pi) * width - 0.4 + width / 2 for i in range(len(lat_systems))]
                ys = [values.get((w, s, f"end_to_end_ms_{pct}"), math.nan) for s in lat_systems]
                ax2.bar(xs, ys, width=width, label=f"{pct} @{rate}/s")
        ax2.set_xticks(range(len(lat_systems)))
        ax2.set_xticklabels(lat_systems, rotation=30)
        ax2.set_yscale("log")
        ax2.set_ylabel("end-to-end latency, ms (log scale)")
        ax2.set_title("paced (open-loop) latency")
        ax2.legend(fontsize=8)

    machine = document.get("machine", {})
    fig.suptitle(
        f"Arbiter benchmarks {document.get('started_at', '')} - "
        f"{machine.get('cpu_count', '?')} cpus, python {machine.get('python', '?')}",
        fontsize=10,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
