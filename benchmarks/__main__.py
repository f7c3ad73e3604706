"""``python -m benchmarks``: run floors, peers (and Arbiter, when registered) in one process.

Writes ``<out>/latest.json`` and ``<out>/latest.png`` and prints a table with the ratios
to both floors (and, for Arbiter, to each peer). See ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import functools
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks import report, systems, workloads
from benchmarks.peers import PEER_THREADS
from benchmarks.report import (
    MEMORY_WORKLOAD,
    NOOP_WORKLOAD,
    PACED_WORKLOAD,
    RESTART_ACTORS,
    RESTART_WORKLOAD,
    SCALING_WORKLOAD,
    SUBMIT_WORKLOAD,
    THROUGHPUT_METRIC,
    RunResult,
)
from benchmarks.workloads import Scale

WORKLOADS: tuple[str, ...] = (
    NOOP_WORKLOAD,
    PACED_WORKLOAD,
    SUBMIT_WORKLOAD,
    MEMORY_WORKLOAD,
    SCALING_WORKLOAD,
    RESTART_WORKLOAD,
)
DEFAULT_OUT = Path(__file__).resolve().parent / "results"
DEFAULT_RATES: tuple[float, ...] = (500.0, 1000.0, 2000.0)

# (noop and submit tasks, paced tasks per rate, queued tasks for memory) per run size.
SIZES: dict[str, tuple[int, int, int]] = {
    "quick": (5_000, 1_000, 5_000),
    "default": (20_000, 3_000, 100_000),
    "full": (100_000, 10_000, 1_000_000),
}


# Scaling points per run size: queue depths, agents (worker threads), payload bytes, and
# the completions each point is measured over.
SCALING: dict[str, dict[str, tuple[int, ...]]] = {
    "quick": {"depth": (10_000,), "agents": (16,), "payload": (10_000,), "n": (1_000,)},
    "default": {
        "depth": (1_000, 10_000, 100_000),
        "agents": (1, 4, 16, 64),
        "payload": (100, 1_000, 10_000, 100_000),
        "n": (5_000,),
    },
    "full": {
        "depth": (1_000, 10_000, 100_000, 1_000_000),
        "agents": (1, 4, 16, 64),
        "payload": (100, 1_000, 10_000, 100_000),
        "n": (10_000,),
    },
}


RESTART_REPEATS: dict[str, int] = {"quick": 10, "default": 50, "full": 200}
"""Crashes per actor in ``restart_latency``."""


def scaling_points(size: str) -> list[Scale]:
    """The scaling workloads of a run size, in the order they run."""
    plan = SCALING[size]
    return [
        *(Scale(depth=d) for d in plan["depth"]),
        *(Scale(workers=w) for w in plan["agents"]),
        *(Scale(payload_bytes=b) for b in plan["payload"]),
    ]


def _csv(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Benchmark Arbiter against floors and peer task queues (one process run).",
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument(
        "--quick",
        action="store_true",
        help="about a minute: 5k no-op tasks once, 1k paced tasks at 1000/s, 5k queued",
    )
    size.add_argument(
        "--full", action="store_true", help="100k no-op tasks, 10k paced tasks, 1M queued"
    )
    parser.add_argument("--systems", type=_csv, default=None, help="comma list (default: all)")
    parser.add_argument(
        "--workloads",
        type=_csv,
        default=list(WORKLOADS),
        help=f"comma list of {', '.join(WORKLOADS)} (default: all)",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    parser.add_argument(
        "--n", type=int, default=None, help="override the no-op (and submit) task count"
    )
    parser.add_argument("--paced-n", type=int, default=None, help="override the paced task count")
    parser.add_argument(
        "--memory-n", type=int, default=None, help="override the queued task count (memory)"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="no-op and submit repeats, median taken (default 3; --quick: 1)",
    )
    parser.add_argument(
        "--paced-repeats",
        type=int,
        default=None,
        help="paced_latency rounds, systems interleaved, median taken (default 3; --quick: 1)",
    )
    parser.add_argument(
        "--rates",
        type=lambda v: [float(x) for x in _csv(v)],
        default=None,
        help="offered rates for paced_latency, tasks/s (default: 500,1000,2000; --quick: 1000)",
    )
    parser.add_argument(
        "--peer-threads",
        type=int,
        default=PEER_THREADS,
        help=f"worker threads of each peer (default {PEER_THREADS})",
    )
    parser.add_argument(
        "--scaling-n",
        type=int,
        default=None,
        help="override the completions each scaling point is measured over",
    )
    parser.add_argument("--list", action="store_true", help="list the systems and exit")
    args = parser.parse_args(argv)
    args.size = "quick" if args.quick else "full" if args.full else "default"
    noop_n, paced_n, memory_n = SIZES[args.size]
    args.n = args.n or noop_n
    args.paced_n = args.paced_n or paced_n
    args.memory_n = args.memory_n or memory_n
    args.scaling_n = args.scaling_n or SCALING[args.size]["n"][0]
    if args.rates is None:
        args.rates = [1000.0] if args.size == "quick" else list(DEFAULT_RATES)
    if args.repeats is None:
        args.repeats = 1 if args.size == "quick" else 3
    if args.paced_repeats is None:
        args.paced_repeats = 1 if args.size == "quick" else 3
    unknown = [w for w in args.workloads if w not in WORKLOADS]
    if unknown:
        parser.error(f"unknown workload(s) {unknown}; choose from {list(WORKLOADS)}")
    sizes = (
        args.n,
        args.paced_n,
        args.memory_n,
        args.repeats,
        args.paced_repeats,
        args.peer_threads,
        args.scaling_n,
    )
    if any(v <= 0 for v in sizes):
        parser.error(
            "--n, --paced-n, --memory-n, --repeats, --paced-repeats, --peer-threads and "
            "--scaling-n must be positive"
        )
    if any(r <= 0 for r in args.rates):
        parser.error("--rates must be positive")
    return args


def _source_revision() -> str | None:
    try:
        root = Path(__file__).resolve().parent.parent
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return sha + ("-dirty" if dirty else "")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    _, arbiter_message = systems.register_arbiter()
    print(arbiter_message)

    selected = args.systems or list(systems.SYSTEMS)
    unknown = [s for s in selected if s not in systems.SYSTEMS]
    if unknown:
        print(
            f"unknown system(s) {unknown}; known: {', '.join(systems.SYSTEMS)}",
            file=sys.stderr,
        )
        return 2
    if args.list:
        for name in systems.SYSTEMS:
            print(name)
        return 0

    # Peers and Arbiter run with the same number of worker/handler threads.
    for name, system in systems.SYSTEMS.items():
        if not report.is_floor(name) and hasattr(system, "threads"):
            system.threads = args.peer_threads

    result = RunResult(started_at=_now(), machine=report.machine_info())
    result.config = {
        "size": args.size,
        "noop_n": args.n,
        "noop_repeats": args.repeats,
        "paced_n": args.paced_n,
        "paced_repeats": args.paced_repeats,
        "paced_rates_per_s": args.rates,
        "submit_n": args.n,
        "memory_n": args.memory_n,
        "peer_threads": args.peer_threads,
        "scaling_n": args.scaling_n,
        "restart_repeats": RESTART_REPEATS[args.size],
        "scaling": {k: v for k, v in SCALING[args.size].items() if k != "n"},
        "workloads": args.workloads,
        "systems": selected,
        "source_revision": _source_revision(),
        "argv": list(sys.argv[1:] if argv is None else argv),
    }

    runnable: list[tuple[str, Any]] = []
    for name in selected:
        system = systems.SYSTEMS[name]
        reason = systems.unavailable_reason(system)
        if reason:
            print(f"skip {name}: {reason}")
            result.skipped[name] = reason
        else:
            runnable.append((name, system))
            described = systems.settings_of(system)
            if described is not None:
                result.config.setdefault("system_settings", {})[name] = described

    t0 = time.monotonic()
    if NOOP_WORKLOAD in args.workloads:
        section = time.monotonic()
        print(f"== {NOOP_WORKLOAD}: {args.n:,} no-op tasks, median of {args.repeats}")
        for name, system in runnable:
            if not systems.supports(system, NOOP_WORKLOAD):
                print(f"  {name}: no {NOOP_WORKLOAD}, not run")
                continue
            _record(result, workloads.run_noop_throughput(name, system, args.n, args.repeats))
        _section_done(section, NOOP_WORKLOAD)
    if PACED_WORKLOAD in args.workloads:
        section = time.monotonic()
        for rate in args.rates:
            print(f"== {PACED_WORKLOAD}: {args.paced_n:,} tasks offered open-loop at {rate:g}/s")
            if args.paced_repeats > 1:
                print(f"   {args.paced_repeats} interleaved rounds, median of each percentile")
            paced = workloads.run_paced_rounds(
                _supporting(runnable, PACED_WORKLOAD), rate, args.paced_n, args.paced_repeats
            )
            for outcome in paced:
                _record(result, outcome)
        _section_done(section, PACED_WORKLOAD)
    if SUBMIT_WORKLOAD in args.workloads:
        section = time.monotonic()
        print(f"== {SUBMIT_WORKLOAD}: {args.n:,} tasks, no consumer, median of {args.repeats}")
        for name, system in _supporting(runnable, SUBMIT_WORKLOAD):
            outcome = workloads.run_repeated(
                SUBMIT_WORKLOAD,
                name,
                functools.partial(system.durable_submit, args.n),
                args.repeats,
                workloads.submit_timeout_s(args.n) + 30.0,
                primary=THROUGHPUT_METRIC,
            )
            _record(result, outcome)
        _section_done(section, SUBMIT_WORKLOAD)
    if MEMORY_WORKLOAD in args.workloads:
        section = time.monotonic()
        print(f"== {MEMORY_WORKLOAD}: {args.memory_n:,} tasks queued, no consumer (tracemalloc)")
        for name, system in _supporting(runnable, MEMORY_WORKLOAD):
            outcome = workloads.run_once(
                MEMORY_WORKLOAD,
                name,
                functools.partial(system.memory_per_queued_task, args.memory_n),
                workloads.memory_timeout_s(args.memory_n) + 30.0,
            )
            _record(result, outcome)
        _section_done(section, MEMORY_WORKLOAD)
    if SCALING_WORKLOAD in args.workloads:
        section = time.monotonic()
        for scale in scaling_points(args.size):
            print(
                f"== {scale.workload}: no-op tasks, rate of {scale.measured(args.scaling_n):,} "
                "completions"
            )
            for name, system in _supporting(runnable, "scaled_throughput"):
                kinds = getattr(system, "scaling_kinds", None)
                if kinds is not None and scale.kind not in kinds:
                    print(f"  {name}: does not scale with {scale.kind}, not run")
                    continue
                _record(result, workloads.run_scaling(name, system, args.scaling_n, scale))
        _section_done(section, SCALING_WORKLOAD)
    if RESTART_WORKLOAD in args.workloads:
        section = time.monotonic()
        repeats = RESTART_REPEATS[args.size]
        for actor in RESTART_ACTORS:
            workload = f"{RESTART_WORKLOAD}_{actor}"
            print(f"== {workload}: {repeats} injected crashes, crash -> next message handled")
            for name, system in _supporting(runnable, RESTART_WORKLOAD):
                outcome = workloads.run_once(
                    workload,
                    name,
                    functools.partial(system.restart_latency, actor, repeats),
                    60.0 + repeats,
                )
                _record(result, outcome)
        _section_done(section, RESTART_WORKLOAD)
    result.finished_at = _now()
    result.config["elapsed_s"] = round(time.monotonic() - t0, 1)

    packages = {"matplotlib"}
    for name, system in runnable:
        packages.update(systems.packages_of(name, system))
    result.versions = {"python": result.machine["python"], **report.package_versions(packages)}

    document = report.to_document(result)
    json_path = report.write_json(document, args.out / "latest.json")
    png_path = report.write_plot(document, args.out / "latest.png")
    print()
    print(report.format_table(document))
    print()
    print(f"wrote {json_path}")
    print(f"wrote {png_path}" if png_path else "no plot: matplotlib is not installed")
    return 0


def _section_done(started: float, what: str) -> None:
    print(f"   ({what}: {time.monotonic() - started:.0f}s)")


def _supporting(runnable: list[tuple[str, Any]], workload: str) -> list[tuple[str, Any]]:
    selected = []
    for name, system in runnable:
        if systems.supports(system, workload):
            selected.append((name, system))
        else:
            print(f"  {name}: no {workload}, not run")
    return selected


def _record(result: RunResult, outcome: report.Measurement | report.ErrorEntry) -> None:
    if isinstance(outcome, report.ErrorEntry):
        result.errors.append(outcome)
    else:
        result.measurements.append(outcome)


if __name__ == "__main__":
    sys.exit(main())
