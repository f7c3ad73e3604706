"""Mutation testing of the pure, thread-free cores with mutmut 3, scored per module.

Run: ``python -m benchmarks.mutation [--max-children N] [--incremental] [--min-score S]``
(or ``make mutation``). It runs ``mutmut run`` from the project root, configured by
``[tool.mutmut]`` in ``pyproject.toml``: the ``actors``, ``messages`` and ``supervisor``
packages are copied into ``./mutants``, only the files listed in ``only_mutate`` (the pure
cores) are mutated, and each mutant runs only those of the unit tests selected by
``pytest_add_cli_args_test_selection`` that reach the mutated function. Then it reads
mutmut's per-file results, prints a table and writes ``benchmarks/results/mutation.json``.

Score of a module: ``killed / total``, where ``total`` counts every mutant mutmut made of
it. Timeouts, mutants no test reaches ("no tests") and suspicious ones count as not
killed, so the score is a lower bound. The run exits 1 when a module scores below
``--min-score`` (default 0.6).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import time
import tomllib
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
MUTANTS = ROOT / "mutants"
DEFAULT_MAX_CHILDREN = 2
DEFAULT_MIN_SCORE = 0.6

# mutmut's status names (see mutmut.stats.status_by_exit_code) -> the counters reported.
COUNTED = ("killed", "survived", "timeout", "no tests", "suspicious")

# Started in a fresh interpreter that imports mutmut.__main__ as a module (mutmut warns when
# it is run as ``python -m mutmut``), so it works whether or not the venv's bin is on PATH.
_MUTMUT_CLI = "import sys; from mutmut.__main__ import cli; cli(sys.argv[1:], prog_name='mutmut')"


def mutmut_config(pyproject: Path = ROOT / "pyproject.toml") -> dict[str, Any]:
    """The ``[tool.mutmut]`` table of ``pyproject.toml``."""
    data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    config: dict[str, Any] = data["tool"]["mutmut"]
    return config


def run_mutmut(max_children: int, *, incremental: bool) -> int:
    """Run ``mutmut run`` in the project root; return its exit code."""
    if not incremental and MUTANTS.exists():
        shutil.rmtree(MUTANTS)
    command = [sys.executable, "-c", _MUTMUT_CLI, "run", "--max-children", str(max_children)]
    return subprocess.call(command, cwd=ROOT)


def statuses(exit_codes: Mapping[str, int | None]) -> dict[str, str]:
    """Mutant name -> mutmut's status name for each recorded exit code."""
    from mutmut.stats import status_by_exit_code

    return {name: status_by_exit_code[code] for name, code in exit_codes.items()}


def summarise(status_by_mutant: Mapping[str, str]) -> dict[str, Any]:
    """Counts, score and the surviving mutants of one module."""
    counts = Counter(status_by_mutant.values())
    total = len(status_by_mutant)
    killed = counts["killed"]
    summary: dict[str, Any] = {status.replace(" ", "_"): counts[status] for status in COUNTED}
    summary["other"] = total - sum(counts[status] for status in COUNTED)
    summary["total"] = total
    summary["score"] = round(killed / total, 4) if total else None
    summary["survivors"] = sorted(
        name for name, status in status_by_mutant.items() if status != "killed"
    )
    return summary


def module_results(modules: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Per-module summaries read from mutmut's ``mutants/<path>.meta`` files."""
    results: dict[str, dict[str, Any]] = {}
    for module in modules:
        meta = MUTANTS / f"{module}.meta"
        if not meta.exists():
            results[module] = {"error": f"no mutmut results at {meta.relative_to(ROOT)}"}
            continue
        exit_codes = json.loads(meta.read_text(encoding="utf-8"))["exit_code_by_key"]
        results[module] = summarise(statuses(exit_codes))
    return results


def overall(results: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The counts of all modules added up, with the overall score."""
    keys = [status.replace(" ", "_") for status in COUNTED] + ["other", "total"]
    ok = [summary for summary in results.values() if "error" not in summary]
    totals: dict[str, Any] = {key: sum(int(summary[key]) for summary in ok) for key in keys}
    totals["score"] = round(totals["killed"] / totals["total"], 4) if totals["total"] else None
    return totals


def format_table(results: Mapping[str, Mapping[str, Any]], totals: Mapping[str, Any]) -> str:
    header = ("module", "killed", "survived", "timeout", "no tests", "other", "total", "score")
    rows: list[Sequence[str]] = []
    for module, summary in [*results.items(), ("overall", totals)]:
        if "error" in summary:
            rows.append((module, summary["error"], "", "", "", "", "", ""))
            continue
        score = summary["score"]
        rows.append(
            (
                module,
                str(summary["killed"]),
                str(summary["survived"]),
                str(summary["timeout"]),
                str(summary["no_tests"]),
                str(summary["suspicious"] + summary["other"]),
                str(summary["total"]),
                "-" if score is None else f"{score:.1%}",
            )
        )
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = (cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True))
        return "  ".join([first, *rest])

    return "\n".join([line(header), line(["-" * width for width in widths]), *map(line, rows)])


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.mutation",
        description="Mutation-test the pure cores with mutmut and report the score per module.",
    )
    parser.add_argument(
        "--max-children",
        type=int,
        default=DEFAULT_MAX_CHILDREN,
        help=f"mutmut worker processes (default {DEFAULT_MAX_CHILDREN})",
    )
    parser.add_argument(
        "--incremental",
        action="store_true",
        help="keep ./mutants and mutmut's cached verdicts (default: start from a clean ./mutants)",
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="do not run mutmut; report the results already in ./mutants",
    )
    parser.add_argument(
        "--min-score",
        type=float,
        default=DEFAULT_MIN_SCORE,
        help=f"exit 1 if a module scores below this (default {DEFAULT_MIN_SCORE})",
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "mutation.json")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    config = mutmut_config()
    modules: list[str] = list(config["only_mutate"])

    started = datetime.now(UTC)
    t0 = time.monotonic()
    if not args.report_only:
        code = run_mutmut(args.max_children, incremental=args.incremental)
        if code != 0:
            print(f"mutmut run failed with exit code {code}", file=sys.stderr)
            return code
    duration_s = round(time.monotonic() - t0, 1)

    results = module_results(modules)
    totals = overall(results)
    document = {
        "tool": "mutmut",
        "mutmut_version": metadata.version("mutmut"),
        "python": platform.python_version(),
        "started_at": started.isoformat(timespec="seconds"),
        "duration_s": None if args.report_only else duration_s,
        "max_children": args.max_children,
        "score": "killed / total (timeouts, no-tests and suspicious mutants count as not killed)",
        "tests": list(config.get("pytest_add_cli_args_test_selection", [])),
        "modules": results,
        "overall": totals,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    tmp.replace(args.out)

    print()
    print(format_table(results, totals))
    print(f"\nwritten to {args.out}")

    failing = [
        module
        for module, summary in results.items()
        if "error" in summary or summary["score"] is None or summary["score"] < args.min_score
    ]
    if failing:
        print(
            f"below the minimum score {args.min_score:.0%}: {', '.join(failing)}", file=sys.stderr
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
