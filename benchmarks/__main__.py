"""``python -m benchmarks``: run floors, peers (and Arbiter, when registered) in one process.

Writes ``<out>/latest.json`` and ``<out>/latest.png`` and prints a table with the ratios
to both floors. See ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks import report, systems, workloads
from benchmarks.peers import PEER_THREADS
from benchmarks.report import NOOP_WORKLOAD, PACED_WORKLOAD, RunResult

WORKLOADS: tuple[str, ...] = (NOOP_WORKLOAD, PACED_WORKLOAD)
DEFAULT_OUT = Path(__file__).resolve().parent / "results"
DEFAULT_RATES: tuple[float, ...] = (500.0, 1000.0)

# (noop tasks, paced tasks per rate) per run size.
SIZES: dict[str, tuple[int, int]] = {
    "quick": (5_000, 1_000),
    "default": (20_000, 3_000),
    "full": (100_000, 10_000),
}


def _csv(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Benchmark Arbiter against floors and peer task queues (one process run).",
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="5k no-op tasks, 1k paced tasks")
    size.add_argument("--full", action="store_true", help="100k no-op tasks, 10k paced tasks")
    parser.add_argument("--systems", type=_csv, default=None, help="comma list (default: all)")
    parser.add_argument(
        "--workloads",
        type=_csv,
        default=list(WORKLOADS),
        help=f"comma list of {', '.join(WORKLOADS)} (default: all)",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    parser.add_argument("--n", type=int, default=None, help="override the no-op task count")
    parser.add_argument("--paced-n", type=int, default=None, help="override the paced task count")
    parser.add_argument("--repeats", type=int, default=3, help="no-op repeats (median taken)")
    parser.add_argument(
        "--rates",
        type=lambda v: [float(x) for x in _csv(v)],
        default=list(DEFAULT_RATES),
        help="offered rates for paced_latency, tasks/s (default: 500,1000)",
    )
    parser.add_argument(
        "--peer-threads",
        type=int,
        default=PEER_THREADS,
        help=f"worker threads of each peer (default {PEER_THREADS})",
    )
    parser.add_argument("--list", action="store_true", help="list the systems and exit")
    args = parser.parse_args(argv)
    args.size = "quick" if args.quick else "full" if args.full else "default"
    noop_n, paced_n = SIZES[args.size]
    args.n = args.n or noop_n
    args.paced_n = args.paced_n or paced_n
    unknown = [w for w in args.workloads if w not in WORKLOADS]
    if unknown:
        parser.error(f"unknown workload(s) {unknown}; choose from {list(WORKLOADS)}")
    if args.n <= 0 or args.paced_n <= 0 or args.repeats <= 0 or args.peer_threads <= 0:
        parser.error("--n, --paced-n, --repeats and --peer-threads must be positive")
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

    for name in systems.PEER_SYSTEMS:
        systems.SYSTEMS[name].threads = args.peer_threads

    result = RunResult(started_at=_now(), machine=report.machine_info())
    result.config = {
        "size": args.size,
        "noop_n": args.n,
        "noop_repeats": args.repeats,
        "paced_n": args.paced_n,
        "paced_rates_per_s": args.rates,
        "peer_threads": args.peer_threads,
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

    t0 = time.monotonic()
    if NOOP_WORKLOAD in args.workloads:
        print(f"== {NOOP_WORKLOAD}: {args.n:,} no-op tasks, median of {args.repeats}")
        for name, system in runnable:
            _record(result, workloads.run_noop_throughput(name, system, args.n, args.repeats))
    if PACED_WORKLOAD in args.workloads:
        for rate in args.rates:
            print(f"== {PACED_WORKLOAD}: {args.paced_n:,} tasks offered open-loop at {rate:g}/s")
            for name, system in runnable:
                if not systems.supports_paced(system):
                    print(f"  {name}: no paced_latency, not run")
                    continue
                _record(result, workloads.run_paced_latency(name, system, rate, args.paced_n))
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


def _record(result: RunResult, outcome: report.Measurement | report.ErrorEntry) -> None:
    if isinstance(outcome, report.ErrorEntry):
        result.errors.append(outcome)
    else:
        result.measurements.append(outcome)


if __name__ == "__main__":
    sys.exit(main())
