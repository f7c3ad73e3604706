"""Turn measurements into the report: the figures list, the JSON file, the table, the plot.

Everything here is pure (no threads, no peers) apart from the writers, so it is unit-tested
on synthetic numbers (``tests/unit/test_benchmarks_report.py``).

Figure schema (one object per number, in ``latest.json`` under ``figures``)::

    {"workload": "noop_throughput", "system": "huey", "metric": "tasks_per_s",
     "value": 41234.5, "unit": "tasks/s"}

Ratio figures (unit ``x``) are ``system value / reference value`` for the same workload
and metric:

* every non-floor system gets one against each floor in ``FLOORS``, for every metric
  both have;
* every Arbiter system (name starting with ``arbiter``) also gets one against each peer
  (every system that is neither a floor nor Arbiter).

The metric is ``ratio_to_<reference>`` for ``tasks_per_s`` (so 1.0 means "as fast as the
reference", higher is better) and ``<metric>_ratio_to_<reference>`` for the others, e.g.
``end_to_end_ms_p99_ratio_to_huey`` or ``bytes_per_task_ratio_to_floor-queue`` (lower is
better). ``tasks_per_s_single_submit`` (Arbiter only) is compared with the references'
``tasks_per_s`` when they have no single-submit figure of their own (their enqueue is one
call per task anyway).
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
SUBMIT_WORKLOAD = "durable_submit"
MEMORY_WORKLOAD = "memory_per_queued_task"
SCALING_WORKLOAD = "scaling"
RESTART_WORKLOAD = "restart_latency"
RESTART_ACTORS: tuple[str, ...] = (
    "journal",
    "queue",
    "router",
    "registry",
    "retry",
    "health",
    "performance",
    "agent",
)
"""Workloads ``restart_latency_<actor>``: an injected crash of that actor of a running
runner until its new incarnation answers the next message."""
SCALING_KINDS: tuple[str, ...] = ("depth", "agents", "payload")
"""Workloads ``scaling_<kind>_<value>``: no-op throughput against queue depth (tasks
queued before the consumers start), agents / worker threads, and payload bytes."""
THROUGHPUT_METRIC = "tasks_per_s"
SINGLE_SUBMIT_METRIC = "tasks_per_s_single_submit"
BYTES_METRIC = "bytes_per_task"
FLOOR_PREFIX = "floor-"
ARBITER_PREFIX = "arbiter"
# The floors every other system is compared with, in table order.
FLOORS: tuple[str, ...] = ("floor-pykka-4hop", "floor-queue")
LATENCY_PERCENTILES: tuple[str, ...] = ("p50", "p95", "p99")

UNITS: dict[str, str] = {
    THROUGHPUT_METRIC: "tasks/s",
    SINGLE_SUBMIT_METRIC: "tasks/s",
    BYTES_METRIC: "bytes",
    **{f"end_to_end_ms_{p}": "ms" for p in LATENCY_PERCENTILES},
    **{f"route_assign_ms_{p}": "ms" for p in LATENCY_PERCENTILES},
    **{f"restart_ms_{p}": "ms" for p in LATENCY_PERCENTILES},
}
RATIO_UNIT = "x"
RATIO_MARK = "ratio_to_"
# A metric only Arbiter reports, and the metric of the references it is compared with.
FALLBACK_REFERENCE_METRIC: dict[str, str] = {SINGLE_SUBMIT_METRIC: THROUGHPUT_METRIC}
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


def is_arbiter(system: str) -> bool:
    return system.startswith(ARBITER_PREFIX)


def is_peer(system: str) -> bool:
    return not is_floor(system) and not is_arbiter(system)


def is_ratio(metric: str) -> bool:
    return RATIO_MARK in metric


def ratio_metric(metric: str, reference: str) -> str:
    """The name of the ratio of ``metric`` to the ``reference`` system."""
    if metric == THROUGHPUT_METRIC:
        return f"{RATIO_MARK}{reference}"
    return f"{metric}_{RATIO_MARK}{reference}"


def paced_workload_name(rate_per_s: float) -> str:
    return f"{PACED_WORKLOAD}_{rate_per_s:g}"


def unit_for(metric: str) -> str:
    if is_ratio(metric):
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


def references_for(system: str, systems: Sequence[str]) -> list[str]:
    """The systems ``system`` is compared with: the floors, and for Arbiter the peers too."""
    if is_floor(system):
        return []
    refs = list(FLOORS)
    if is_arbiter(system):
        refs += [s for s in systems if is_peer(s)]
    return refs


def ratio_figures(figures: Sequence[Figure]) -> list[Figure]:
    """``system value / reference value`` for every (workload, metric) both have.

    See the module docstring for which references each system gets.
    """
    values: dict[tuple[str, str, str], float] = {}
    systems: list[str] = []
    for f in figures:
        if is_ratio(f["metric"]):
            continue
        values[(f["workload"], f["system"], f["metric"])] = f["value"]
        if f["system"] not in systems:
            systems.append(f["system"])
    ratios: list[Figure] = []
    for (workload, system, metric), value in values.items():
        for reference in references_for(system, systems):
            ref_value = values.get((workload, reference, metric))
            if ref_value is None and metric in FALLBACK_REFERENCE_METRIC:
                ref_value = values.get((workload, reference, FALLBACK_REFERENCE_METRIC[metric]))
            if ref_value is None or not ref_value > 0 or not math.isfinite(ref_value):
                continue
            ratios.append(
                Figure(
                    workload=workload,
                    system=system,
                    metric=ratio_metric(metric, reference),
                    value=value / ref_value,
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
    # Floors, then Arbiter, then the peers, each group in order of first appearance.
    return floors + [s for s in seen if is_arbiter(s)] + [s for s in seen if is_peer(s)]


def _fmt_rate(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}"


def _fmt_ratio(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 10:
        return f"{value:.1f}x"
    if value >= 0.01 or value <= 0 or not math.isfinite(value):
        return f"{value:.3f}x"
    # Two significant digits, never in exponent notation: 0.0042x, 0.000094x.
    return f"{value:.{1 - math.floor(math.log10(value))}f}x"


def _fmt_ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if value < 100 else f"{value:.0f}"


def _render(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Aligned plain-text lines: first column left-aligned, the others right-aligned."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    return [line(header), "  ".join("-" * w for w in widths), *(line(r) for r in rows)]


def _paced_workloads(figures: Sequence[Figure]) -> list[str]:
    return sorted(
        {
            f["workload"]
            for f in figures
            if f["workload"].startswith(PACED_WORKLOAD + "_") and f["unit"] == "ms"
        },
        key=lambda w: float(w.rsplit("_", 1)[1]),
    )


# Optional columns of the main table, shown when measured: (workload, metric, header).
_EXTRA_COLUMNS: tuple[tuple[str, str, str], ...] = (
    (SUBMIT_WORKLOAD, THROUGHPUT_METRIC, "submit tasks/s"),
    (SUBMIT_WORKLOAD, SINGLE_SUBMIT_METRIC, "1-by-1 submit/s"),
    (MEMORY_WORKLOAD, BYTES_METRIC, "bytes/queued task"),
)


def ratio_rows(figures: Sequence[Figure]) -> tuple[list[str], list[list[str]]]:
    """The Arbiter ratio table: (references, rows of [system, workload, metric, *ratios]).

    One row per raw (workload, metric) of each Arbiter system; one column per floor and
    per peer present in the figures.
    """
    values = _lookup(figures)
    order = _systems_in_order(figures, [])
    references = list(FLOORS) + [s for s in order if is_peer(s)]
    rows: list[list[str]] = []
    for system in (s for s in order if is_arbiter(s)):
        for f in figures:
            if f["system"] != system or is_ratio(f["metric"]):
                continue
            row = [system, f["workload"], f["metric"]]
            for reference in references:
                key = (f["workload"], system, ratio_metric(f["metric"], reference))
                row.append(_fmt_ratio(values.get(key)))
            rows.append(row)
    return references, rows


def format_table(document: Mapping[str, Any]) -> str:
    """Plain-text tables: per system the throughput, its ratio to both floors, the latency
    percentiles per rate and the submit and memory figures; then, for Arbiter, the ratio of
    every figure to each floor and each peer."""
    figures: list[Figure] = list(document.get("figures", []))
    errors: list[Mapping[str, str]] = list(document.get("errors", []))
    values = _lookup(figures)
    rates = _paced_workloads(figures)
    present = {(f["workload"], f["metric"]) for f in figures}
    failed_workloads = {e["workload"] for e in errors}
    extras = [c for c in _EXTRA_COLUMNS if (c[0], c[1]) in present or c[0] in failed_workloads]
    header = ["system", "noop tasks/s", *(f"vs {floor}" for floor in FLOORS)]
    header += [f"p50/p95/p99 ms @{w.rsplit('_', 1)[1]}/s" for w in rates]
    header += [title for _, _, title in extras]
    error_by: dict[str, list[str]] = {}
    for e in errors:
        error_by.setdefault(e["system"], []).append(e["workload"])

    rows: list[list[str]] = []
    for system in _systems_in_order(figures, errors):
        failed = error_by.get(system, [])
        tps = values.get((NOOP_WORKLOAD, system, THROUGHPUT_METRIC))
        row = [system]
        row.append("ERROR" if tps is None and NOOP_WORKLOAD in failed else _fmt_rate(tps))
        for floor in FLOORS:
            if system == floor:
                row.append("1x (floor)" if tps is not None else "-")
            else:
                row.append(_fmt_ratio(values.get((NOOP_WORKLOAD, system, f"ratio_to_{floor}"))))
        for w in rates:
            pcts = [values.get((w, system, f"end_to_end_ms_{p}")) for p in LATENCY_PERCENTILES]
            if all(v is None for v in pcts):
                row.append("ERROR" if w in failed else "-")
            else:
                row.append("/".join(_fmt_ms(v) for v in pcts))
        for workload, metric, _ in extras:
            value = values.get((workload, system, metric))
            if value is None:
                row.append("ERROR" if workload in failed else "-")
            else:
                row.append(_fmt_rate(value) if metric != BYTES_METRIC else f"{value:,.0f}")
        rows.append(row)

    lines = _render(header, rows)
    references, arbiter_rows = ratio_rows(figures)
    if arbiter_rows:
        lines += [
            "",
            "Arbiter / reference, same workload and metric "
            "(tasks/s: higher is better; ms and bytes: lower is better)",
            *_render(["arbiter", "workload", "metric", *references], arbiter_rows),
        ]
    lines += [f"error: {e['system']} / {e['workload']}: {e['error']}" for e in errors]
    lines += [f"skipped: {s['system']}: {s['reason']}" for s in document.get("skipped", [])]
    return "\n".join(lines)


def _color(system: str) -> str:
    if is_floor(system):
        return "#888888"
    if is_arbiter(system):
        return "#ff7f0e"
    return "#1f77b4"


def _bar_panel(
    ax: Any,
    values: Mapping[tuple[str, str, str], float],
    systems: Sequence[str],
    workload: str,
    metric: str,
    title: str,
    ylabel: str,
) -> None:
    data = [(s, values[(workload, s, metric)]) for s in systems if (workload, s, metric) in values]
    if data:
        names = [s for s, _ in data]
        bars = ax.bar(names, [v for _, v in data], color=[_color(s) for s in names])
        ax.set_yscale("log")
        floor_ref = values.get((workload, FLOORS[0], metric))
        for bar, (s, v) in zip(bars, data, strict=True):
            label = f"{v:,.0f}"
            if floor_ref and not is_floor(s):
                label += f"\n{_fmt_ratio(v / floor_ref)}"
            ax.annotate(
                label, (bar.get_x() + bar.get_width() / 2, v), ha="center", va="bottom", fontsize=8
            )
        ax.set_ylim(top=max(v for _, v in data) * 4)  # room for the labels (log scale)
    ax.set_title(title, fontsize=10)
    ax.set_ylabel(ylabel)
    ax.tick_params(axis="x", rotation=30)


def _scaling_panel(
    ax: Any,
    values: Mapping[tuple[str, str, str], float],
    systems: Sequence[str],
    present: set[str],
    kind: str,
) -> None:
    """tasks/s against the scaling points of one kind, a line per system (log-log)."""
    prefix = f"{SCALING_WORKLOAD}_{kind}_"
    points = sorted(int(w[len(prefix) :]) for w in present if w.startswith(prefix))
    for system in systems:
        xs = [p for p in points if (f"{prefix}{p}", system, THROUGHPUT_METRIC) in values]
        if xs:
            ys = [values[(f"{prefix}{p}", system, THROUGHPUT_METRIC)] for p in xs]
            color = f"C{systems.index(system) % 10}"  # the same colour in every panel
            ax.plot(xs, ys, marker="o", label=system, color=color)
    ax.set_xscale("log")
    ax.set_yscale("log")
    label = {"depth": "tasks queued first", "agents": "agents / worker threads"}
    ax.set_xlabel(label.get(kind, "payload bytes"))
    ax.set_ylabel("tasks/s (log scale)")
    ax.set_title(f"scaling with {kind}", fontsize=10)
    ax.legend(fontsize=7)


def _restart_panel(
    ax: Any,
    values: Mapping[tuple[str, str, str], float],
    systems: Sequence[str],
    present: set[str],
) -> None:
    """Restart latency p50 and p99 per actor, a pair of bars per system."""
    actors = [a for a in RESTART_ACTORS if f"{RESTART_WORKLOAD}_{a}" in present]
    measured = [
        s
        for s in systems
        if any((f"{RESTART_WORKLOAD}_{a}", s, "restart_ms_p50") in values for a in actors)
    ]
    width = 0.8 / max(1, 2 * len(measured))
    for si, system in enumerate(measured):
        for pi, pct in enumerate(("p50", "p99")):
            xs = [i + (2 * si + pi) * width - 0.4 + width / 2 for i in range(len(actors))]
            ys = [
                values.get((f"{RESTART_WORKLOAD}_{a}", system, f"restart_ms_{pct}"), math.nan)
                for a in actors
            ]
            ax.bar(xs, ys, width=width, label=f"{system} {pct}")
    ax.set_xticks(range(len(actors)))
    ax.set_xticklabels(actors, rotation=30)
    ax.set_ylabel("crash -> next message answered, ms")
    ax.set_title("restart latency per actor", fontsize=10)
    ax.legend(fontsize=7)


def write_plot(document: Mapping[str, Any], path: Path) -> Path | None:
    """Bar plots: throughput, latency, submit rate and memory (those measured); line plots
    of the scaling workloads; bars of restart latency per actor.

    Returns None without matplotlib. Floors are grey, Arbiter orange, peers blue; the
    ratio under a bar is to ``floor-pykka-4hop``.
    """
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures: list[Figure] = list(document.get("figures", []))
    values = _lookup(figures)
    systems = _systems_in_order(figures, [])
    paced = _paced_workloads(figures)
    present = {f["workload"] for f in figures}
    bar_panels = [
        (NOOP_WORKLOAD, THROUGHPUT_METRIC, "no-op throughput (median)", "tasks/s (log scale)"),
        (
            SUBMIT_WORKLOAD,
            THROUGHPUT_METRIC,
            "submit rate, no consumer (median)",
            "tasks/s (log scale)",
        ),
        (MEMORY_WORKLOAD, BYTES_METRIC, "memory per queued task (tracemalloc)", "bytes (log)"),
    ]
    panels: list[Any] = [bar_panels[0]]
    if paced:
        panels.append("paced")
    panels += [p for p in bar_panels[1:] if p[0] in present]
    panels += [
        ("scaling", kind)
        for kind in SCALING_KINDS
        if any(w.startswith(f"{SCALING_WORKLOAD}_{kind}_") for w in present)
    ]
    if any(w.startswith(f"{RESTART_WORKLOAD}_") for w in present):
        panels.append("restart")
    ncols = min(2, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(7 * ncols, 5 * nrows), squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax in flat[len(panels) :]:
        ax.set_visible(False)
    for ax, panel in zip(flat, panels, strict=False):
        if isinstance(panel, tuple) and panel[0] == "scaling":
            _scaling_panel(ax, values, systems, present, panel[1])
            continue
        if panel == "restart":
            _restart_panel(ax, values, systems, present)
            continue
        if panel != "paced":
            _bar_panel(ax, values, systems, *panel)
            continue
        lat_systems = [
            s for s in systems if any((w, s, "end_to_end_ms_p50") in values for w in paced)
        ]
        width = 0.8 / (2 * len(paced))
        for wi, w in enumerate(paced):
            rate = w.rsplit("_", 1)[1]
            for pi, pct in enumerate(("p50", "p99")):
                xs = [i + (2 * wi + pi) * width - 0.4 + width / 2 for i in range(len(lat_systems))]
                ys = [values.get((w, s, f"end_to_end_ms_{pct}"), math.nan) for s in lat_systems]
                ax.bar(xs, ys, width=width, label=f"{pct} @{rate}/s")
        ax.set_xticks(range(len(lat_systems)))
        ax.set_xticklabels(lat_systems, rotation=30)
        ax.set_yscale("log")
        ax.set_ylabel("end-to-end latency, ms (log scale)")
        ax.set_title("paced (open-loop) latency", fontsize=10)
        ax.legend(fontsize=8)

    machine = document.get("machine", {})
    fig.suptitle(
        f"Arbiter benchmarks {document.get('started_at', '')} - "
        f"{machine.get('cpu_count', '?')} cpus, python {machine.get('python', '?')} "
        "(grey: floors, orange: Arbiter, blue: peers; ratio to floor-pykka-4hop under bars)",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.98))  # room for the title
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
