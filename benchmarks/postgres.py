"""Multi-runner PostgreSQL figures: drain throughput and submit-to-start latency of real
``arbiter worker`` processes sharing one store, beside PostgreSQL's own floors measured in
the same run.

Run: ``python -m benchmarks.postgres [--quick] [--tasks N] [--json]`` (see
benchmarks/README.md, "PostgreSQL, several workers"). Writes
``benchmarks/results/postgres.json``.

What it measures, each run in a fresh schema of its own (dropped at the end):

* **floors** (one connection of this process, no Arbiter): the round trip of ``SELECT 1``
  (p50/p95/p99; probed again during the latency run: ``floor-pg-select1-under-load``), one
  row ``INSERT`` + ``pg_notify`` per commit (a raw single submit), and ``INSERT`` one row +
  ``UPDATE`` it twice per task, in batches (one commit per statement): the cheapest store
  work a task could cost;
* **drain throughput**: N no-op tasks submitted first (``submit_many``, batches of 1,000,
  from a runner of this process that has no agents), then W ``arbiter worker --drain``
  subprocesses started; tasks/s over the *drain window* read from the records (first
  attempt start to last attempt end), and over the wall time from spawning the workers to
  the exit of the last one (process start-up and shutdown included). Every (workers,
  concurrency) setting runs ``--repeats`` times, interleaved; the median is reported;
* **submit-to-start latency**: 2 idle workers running, tasks submitted with one
  ``submit()`` each by a runner of this process, open loop at ``--rate`` tasks/s spread
  over ``--submit-threads`` threads (one thread cannot submit 500/s here while the
  workers share the 2 cores); latency is the record's attempt start minus its
  ``created_at`` (stamped by the submitter just before its insert), p50/p95/p99. Also
  reported: ``scheduled_to_start`` (from the open-loop due time: includes a submitter
  falling behind), the ``submit()`` call itself, and the achieved rate.

The no-op handler the workers load is :func:`noop` (``noop=benchmarks.postgres:noop``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.report import (
    RATIO_UNIT,
    Figure,
    _fmt_ms,
    _fmt_rate,
    _fmt_ratio,
    _render,
    machine_info,
    package_versions,
    ratio_metric,
    write_json,
)
from benchmarks.workloads import clock, open_loop, percentiles

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
DEFAULT_URL = os.environ.get("ARBITER_BENCH_POSTGRES_URL", "postgresql://127.0.0.1:5432/test")
HANDLER = "noop=benchmarks.postgres:noop"
TASK_TYPE = "noop"
SCHEMA_PREFIX = "arbiter_bench_"

# The targets (2 worker processes, no-op handlers).
TARGET_TASKS_PER_S = 3_000.0
TARGET_P95_MS = 20.0
TARGET_RATE_PER_S = 500.0

FLOOR_SELECT1 = "floor-pg-select1"
FLOOR_WRITES = "floor-pg-insert-2updates"
FLOOR_COMMIT = "floor-pg-insert-notify"
FLOOR_SELECT1_LOADED = "floor-pg-select1-under-load"  # probed during the latency run
ROUND_TRIP = "pg_round_trip"
DRAIN = "drain_throughput"
DRAIN_SWEEP = "drain_throughput_sweep"
SUBMIT = "bulk_submit"
TPS = "tasks_per_s"
TPS_WALL = "tasks_per_s_wall"
PCTS = ("p50", "p95", "p99")
PACKAGES = ("arbiter-taskrunner", "psycopg", "psycopg-binary", "psycopg-pool", "pykka", "pydantic")


def noop(task: Any) -> None:
    """The no-op handler the worker subprocesses run."""
    return None


# -- pure helpers (unit-tested) ---------------------------------------------------------
def system_name(workers: int, concurrency: int | None = None) -> str:
    """``arbiter-postgres-2w`` (the best setting), ``arbiter-postgres-2w-c16`` (one setting)."""
    base = f"arbiter-postgres-{workers}w"
    return base if concurrency is None else f"{base}-c{concurrency}"


def latency_workload(rate_per_s: float) -> str:
    return f"submit_to_start_{rate_per_s:g}"


def drain_window_s(starts: Sequence[float], ends: Sequence[float]) -> float:
    """Seconds from the first start to the last end (epoch seconds); raises if empty."""
    if not starts or not ends:
        raise ValueError("no started or finished task")
    window = max(ends) - min(starts)
    if not window > 0:
        raise ValueError(f"non-positive drain window {window!r}")
    return window


def ms_percentiles(values_ms: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99 by nearest rank (``benchmarks.workloads.percentiles``), rounded to us."""
    return {k: round(v, 3) for k, v in percentiles(list(values_ms)).items()}


def median_by_setting(
    samples: Sequence[Mapping[str, Any]], metric: str
) -> dict[tuple[int, int], float]:
    """Median of ``metric`` per (workers, concurrency) over the repeats in ``samples``."""
    grouped: dict[tuple[int, int], list[float]] = {}
    for s in samples:
        if metric in s:
            grouped.setdefault((int(s["workers"]), int(s["concurrency"])), []).append(
                float(s[metric])
            )
    return {key: statistics.median(values) for key, values in grouped.items()}


def best_concurrency(medians: Mapping[tuple[int, int], float], workers: int) -> int | None:
    """The concurrency with the highest median for ``workers`` (ties: the lowest)."""
    found = [(value, -c) for (w, c), value in medians.items() if w == workers]
    return -max(found)[1] if found else None


def _figure(workload: str, system: str, metric: str, value: float, unit: str) -> Figure:
    return Figure(workload=workload, system=system, metric=metric, value=float(value), unit=unit)


def build_figures(
    floor: Mapping[str, float],
    drain_samples: Sequence[Mapping[str, Any]],
    latency: Mapping[str, float] | None,
    *,
    rate_per_s: float = TARGET_RATE_PER_S,
    submit_tasks_per_s: float | None = None,
) -> list[Figure]:
    """The figures of a run.

    ``floor``: ``select1_ms_p50/p95/p99``, ``select1_per_s`` and optionally ``writes_tasks_per_s``;
    ``drain_samples``: one dict per drain run (``workers``, ``concurrency``, ``tasks_per_s``,
    ``tasks_per_s_wall``); ``latency``: ``submit_to_start_ms_p50/p95/p99`` and extras of
    the latency run, or None. Ratios (unit ``x``): drain tasks/s to the write floor;
    submit-to-start percentiles to the same percentile of the ``SELECT 1`` round trip.
    """
    figures: list[Figure] = []
    for p in PCTS:
        key = f"select1_ms_{p}"
        if key in floor:
            figures.append(
                _figure(ROUND_TRIP, FLOOR_SELECT1, f"round_trip_ms_{p}", floor[key], "ms")
            )
    if "select1_per_s" in floor:
        figures.append(
            _figure(ROUND_TRIP, FLOOR_SELECT1, "queries_per_s", floor["select1_per_s"], "queries/s")
        )
    for p in PCTS:
        key = f"insert_notify_ms_{p}"
        if key in floor:
            figures.append(_figure(ROUND_TRIP, FLOOR_COMMIT, f"commit_ms_{p}", floor[key], "ms"))
    write_floor = floor.get("writes_tasks_per_s")
    if write_floor:
        figures.append(_figure(DRAIN, FLOOR_WRITES, TPS, write_floor, "tasks/s"))
    if submit_tasks_per_s:
        figures.append(_figure(SUBMIT, "arbiter-postgres", TPS, submit_tasks_per_s, "tasks/s"))

    store = median_by_setting(drain_samples, TPS)
    wall = median_by_setting(drain_samples, TPS_WALL)
    for (workers, concurrency), value in sorted(store.items()):
        name = system_name(workers, concurrency)
        figures.append(_figure(DRAIN_SWEEP, name, TPS, value, "tasks/s"))
        if (workers, concurrency) in wall:
            figures.append(
                _figure(DRAIN_SWEEP, name, TPS_WALL, wall[(workers, concurrency)], "tasks/s")
            )
    for workers in sorted({w for w, _ in store}):
        best = best_concurrency(store, workers)
        if best is None:
            continue
        name = system_name(workers)
        figures.append(_figure(DRAIN, name, TPS, store[(workers, best)], "tasks/s"))
        figures.append(_figure(DRAIN, name, "concurrency", best, "handler threads"))
        if (workers, best) in wall:
            figures.append(_figure(DRAIN, name, TPS_WALL, wall[(workers, best)], "tasks/s"))
        if write_floor:
            drained: tuple[tuple[str, float | None], ...] = (
                (TPS, store[(workers, best)]),
                (TPS_WALL, wall.get((workers, best))),
            )
            for metric, got in drained:
                if got is not None:
                    figures.append(
                        _figure(
                            DRAIN,
                            name,
                            ratio_metric(metric, FLOOR_WRITES),
                            got / write_floor,
                            RATIO_UNIT,
                        )
                    )

    if latency:
        workload = latency_workload(rate_per_s)
        name = system_name(int(latency.get("workers", 2)))
        for metric, value in latency.items():
            if metric == "workers" or metric.startswith("select1_under"):
                continue
            unit = "ms" if "_ms_" in metric else ("tasks/s" if metric.endswith("per_s") else "")
            figures.append(_figure(workload, name, metric, value, unit))
        figures.extend(
            _figure(workload, FLOOR_SELECT1_LOADED, f"round_trip_ms_{p}", latency[key], "ms")
            for p in PCTS
            if (key := f"select1_under_load_ms_{p}") in latency
        )
        floor = {**floor, **{k: v for k, v in latency.items() if k.startswith("select1_under")}}
        pairs = (("submit_to_start_ms", FLOOR_SELECT1, "select1_ms"),
                 ("submit_to_start_ms", FLOOR_SELECT1_LOADED, "select1_under_load_ms"),
                 ("submit_call_ms", FLOOR_COMMIT, "insert_notify_ms"))  # fmt: skip
        for p in PCTS:
            for metric, reference, floor_key in pairs:
                measured = latency.get(f"{metric}_{p}")
                ref = floor.get(f"{floor_key}_{p}")
                if measured is not None and ref and ref > 0 and math.isfinite(ref):
                    name_of = ratio_metric(f"{metric}_{p}", reference)
                    figures.append(_figure(workload, name, name_of, measured / ref, RATIO_UNIT))
    return figures


def targets(figures: Sequence[Figure], rate_per_s: float = TARGET_RATE_PER_S) -> dict[str, Any]:
    """The issue's two targets, with the measured values (None when not measured)."""
    values = {(f["workload"], f["system"], f["metric"]): f["value"] for f in figures}
    tps = values.get((DRAIN, system_name(2), TPS))
    p95 = values.get((latency_workload(rate_per_s), system_name(2), "submit_to_start_ms_p95"))
    return {
        "drain_tasks_per_s_2w": {
            "target": f">= {TARGET_TASKS_PER_S:,.0f}",
            "value": tps,
            "met": None if tps is None else tps >= TARGET_TASKS_PER_S,
        },
        f"submit_to_start_ms_p95_2w_at_{rate_per_s:g}": {
            "target": f"<= {TARGET_P95_MS:g}",
            "value": p95,
            "met": None if p95 is None else p95 <= TARGET_P95_MS,
        },
    }


def format_table(document: Mapping[str, Any]) -> str:
    """Plain-text tables: drain throughput per setting, the latency run, the floors."""
    figures: list[Figure] = list(document.get("figures", []))
    values = {(f["workload"], f["system"], f["metric"]): f["value"] for f in figures}
    rate = float(document.get("config", {}).get("rate_per_s", TARGET_RATE_PER_S))
    lines: list[str] = []

    floor_rows = []
    rt = [values.get((ROUND_TRIP, FLOOR_SELECT1, f"round_trip_ms_{p}")) for p in PCTS]
    if any(v is not None for v in rt):
        floor_rows.append([FLOOR_SELECT1, "round trip ms p50/p95/p99", "/".join(map(_fmt_ms, rt))])
    commit = [values.get((ROUND_TRIP, FLOOR_COMMIT, f"commit_ms_{p}")) for p in PCTS]
    if any(v is not None for v in commit):
        floor_rows.append(
            [FLOOR_COMMIT, "1-row commit ms p50/p95/p99", "/".join(map(_fmt_ms, commit))]
        )
    wf = values.get((DRAIN, FLOOR_WRITES, TPS))
    if wf is not None:
        floor_rows.append([FLOOR_WRITES, "tasks/s (1 conn, batched)", _fmt_rate(wf)])
    sub = values.get((SUBMIT, "arbiter-postgres", TPS))
    if sub is not None:
        floor_rows.append(["arbiter-postgres", "submit_many tasks/s", _fmt_rate(sub)])
    if floor_rows:
        lines += [*_render(["reference", "what", "value"], floor_rows), ""]

    sweep = sorted(
        {(f["system"]) for f in figures if f["workload"] == DRAIN_SWEEP},
        key=lambda s: (s.split("-")[2], int(s.rsplit("-c", 1)[1])),
    )
    rows = []
    for system in sweep:
        tps = values.get((DRAIN_SWEEP, system, TPS))
        wall = values.get((DRAIN_SWEEP, system, TPS_WALL))
        ratio = tps / wf if tps is not None and wf else None
        rows.append([system, _fmt_rate(tps), _fmt_rate(wall), _fmt_ratio(ratio)])
    if rows:
        lines += [
            "drain throughput (median of repeats; store window = first start to last end)",
            *_render(["setting", "tasks/s (store)", "tasks/s (wall)", f"vs {FLOOR_WRITES}"], rows),
            "",
        ]

    workload = latency_workload(rate)

    def pcts(system: str, metric: str) -> str:
        return "/".join(_fmt_ms(values.get((workload, system, f"{metric}_{p}"))) for p in PCTS)

    def ratios(system: str, metric: str, floor: str) -> str:
        got = [values.get((workload, system, ratio_metric(f"{metric}_{p}", floor))) for p in PCTS]
        return "-" if all(r is None for r in got) else "/".join(_fmt_ratio(r) for r in got)

    lat_rows = []
    measured = sorted({f["system"] for f in figures if f["workload"] == workload})
    for system in (s for s in measured if not s.startswith("floor-")):
        for metric, label, floor in (
            ("submit_to_start_ms", "submit-to-start", FLOOR_SELECT1),
            ("submit_to_start_ms", "submit-to-start", FLOOR_SELECT1_LOADED),
            ("scheduled_to_start_ms", "scheduled-to-start (+ submitter lag)", None),
            ("submit_call_ms", "submit() call", FLOOR_COMMIT),
        ):
            shown = ratios(system, metric, floor) if floor else "-"
            lat_rows.append([system, label, pcts(system, metric), shown, floor or "-"])
        achieved = values.get((workload, system, "achieved_rate_per_s"))
        lat_rows.append([system, "achieved submit rate", f"{_fmt_rate(achieved)}/s", "-", "-"])
    if FLOOR_SELECT1_LOADED in measured:
        loaded = pcts(FLOOR_SELECT1_LOADED, "round_trip_ms")
        lat_rows.append([FLOOR_SELECT1_LOADED, "SELECT 1 during the run", loaded, "-", "-"])
    if lat_rows:
        lines += [
            f"submit-to-start latency at {rate:g} tasks/s offered (open loop, single submits)",
            *_render(
                ["system", "what", "ms p50/p95/p99", "vs floor p50/p95/p99", "floor"], lat_rows
            ),
            "",
        ]
    for name, goal in document.get("targets", {}).items():
        value = goal.get("value")
        shown = "-" if value is None else f"{value:,.2f}"
        verdict = {True: "met", False: "NOT met", None: "not measured"}[goal.get("met")]
        lines.append(f"target {name} {goal['target']}: {shown} ({verdict})")
    lines += [f"error: {e}" for e in document.get("errors", [])]
    return "\n".join(lines)


# -- PostgreSQL -------------------------------------------------------------------------
def with_schema(url: str, schema: str) -> str:
    """``url`` with the store option ``schema=`` added."""
    return f"{url}{'&' if '?' in url else '?'}schema={schema}"


def _sql(url: str, statement: Any, params: Any = None) -> list[Any]:
    import psycopg

    with psycopg.connect(url, connect_timeout=5, autocommit=True) as conn:
        cursor = conn.execute(statement, params)
        return cursor.fetchall() if cursor.description else []


@contextlib.contextmanager
def fresh_schema(url: str) -> Iterator[tuple[str, str]]:
    """A new schema with a unique name, as (schema, store URL); dropped afterwards."""
    from psycopg import sql

    schema = f"{SCHEMA_PREFIX}{uuid.uuid4().hex[:12]}"
    _sql(url, sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    try:
        yield schema, with_schema(url, schema)
    finally:
        _sql(url, sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def select1_floor(url: str, n: int) -> dict[str, float]:
    """``SELECT 1`` round trips on one autocommit connection: p50/p95/p99 ms, queries/s."""
    import psycopg

    with psycopg.connect(url, connect_timeout=5, autocommit=True) as conn:
        for _ in range(50):  # warm-up: connection, statement cache
            conn.execute("SELECT 1").fetchone()
        samples: list[float] = []
        started = clock()
        for _ in range(n):
            t0 = clock()
            conn.execute("SELECT 1").fetchone()
            samples.append((clock() - t0) * 1000.0)
        elapsed = clock() - started
    pct = ms_percentiles(samples)
    return {**{f"select1_ms_{k}": v for k, v in pct.items()}, "select1_per_s": n / elapsed}


def writes_floor(url: str, schema: str, n: int, batch: int) -> float:
    """Tasks/s of the raw store work of a task: per batch, one INSERT of ``batch`` rows,
    then two UPDATEs of them (RUNNING, COMPLETED), each its own commit, one connection.

    The rows look like Arbiter's (a uuid key, a state, timestamps, a ~300-byte JSON record).
    """
    import psycopg
    from psycopg import sql

    table = sql.Identifier(schema, f"floor_{uuid.uuid4().hex[:8]}")
    record = json.dumps({"spec": {"type": TASK_TYPE, "payload": {}}, "pad": "x" * 256})
    with psycopg.connect(url, connect_timeout=5, autocommit=True) as conn:
        conn.execute(
            sql.SQL(
                "CREATE TABLE {} (id uuid PRIMARY KEY, state text NOT NULL, "
                "updated_at timestamptz NOT NULL, record json NOT NULL)"
            ).format(table)
        )
        try:
            insert = sql.SQL(
                "INSERT INTO {} SELECT id, 'QUEUED', now(), %s::json FROM unnest(%s::uuid[]) id"
            ).format(table)
            update = sql.SQL(
                "UPDATE {} SET state = %s, updated_at = now() WHERE id = ANY(%s::uuid[])"
            ).format(table)
            ids = [uuid.uuid4() for _ in range(n)]
            started = clock()
            for at in range(0, n, batch):
                chunk = ids[at : at + batch]
                conn.execute(insert, (record, chunk))
                conn.execute(update, ("RUNNING", chunk))
                conn.execute(update, ("COMPLETED", chunk))
            elapsed = clock() - started
        finally:
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(table))
    return n / elapsed


def insert_notify_floor(url: str, schema: str, n: int) -> dict[str, float]:
    """One row INSERTed and a ``pg_notify`` per transaction (commit), one connection: the
    raw cost of a single durable submit. p50/p95/p99 ms."""
    import psycopg
    from psycopg import sql

    table = sql.Identifier(schema, f"floor_{uuid.uuid4().hex[:8]}")
    record = json.dumps({"spec": {"type": TASK_TYPE, "payload": {}}, "pad": "x" * 256})
    with psycopg.connect(url, connect_timeout=5, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE TABLE {} (id uuid PRIMARY KEY, record json NOT NULL)").format(table)
        )
        try:
            insert = sql.SQL("INSERT INTO {} VALUES (%s, %s::json)").format(table)
            samples: list[float] = []
            for i in range(n + 50):
                t0 = clock()
                with conn.transaction():
                    conn.execute(insert, (uuid.uuid4(), record))
                    conn.execute("SELECT pg_notify('arbiter_bench_floor', '')")
                if i >= 50:  # the first 50: warm-up
                    samples.append((clock() - t0) * 1000.0)
        finally:
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(table))
    return {f"insert_notify_ms_{k}": v for k, v in ms_percentiles(samples).items()}


def server_version(url: str) -> str:
    return str(_sql(url, "SHOW server_version")[0][0])


def _quiet_logging() -> None:
    """structlog at WARNING on stderr: the runner of this process must not flood stdout."""
    import structlog

    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )


def submit_all(store_url: str, n: int, batch: int = 1000) -> float:
    """Submit n no-op tasks with ``submit_many`` from a runner without agents; tasks/s."""
    from supervisor.runner import RunnerConfig, TaskRunner

    runner = TaskRunner.start(RunnerConfig(store=store_url, recover=False, queue_capacity=n + 1))
    try:
        started = clock()
        for at in range(0, n, batch):
            runner.submit_many([{"type": TASK_TYPE, "payload": {}}] * min(batch, n - at))
        elapsed = clock() - started
    finally:
        runner.stop(drain=False)
    return n / elapsed


@dataclass
class Workers:
    """``arbiter worker`` subprocesses on one store; their stderr goes to files in ``logs``."""

    store_url: str
    logs: Path
    processes: list[subprocess.Popen[str]] = field(default_factory=list)

    def start(self, count: int, concurrency: int, claim_interval: float, *, drain: bool) -> None:
        arbiter = Path(sys.executable).with_name("arbiter")
        command = [str(arbiter)] if arbiter.exists() else [sys.executable, "-m", "supervisor.cli"]
        command += ["--log-level", "WARNING", "worker", "--store", self.store_url]
        command += ["--handler", HANDLER, "--concurrency", str(concurrency)]
        command += ["--claim-interval", str(claim_interval), "--json"]
        if drain:
            command.append("--drain")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        for _ in range(count):
            err = (self.logs / f"worker{len(self.processes)}.err").open("w")
            self.processes.append(
                subprocess.Popen(
                    command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=err, text=True
                )
            )
            err.close()

    def wait(self, timeout_s: float) -> list[dict[str, Any]]:
        """Wait for every worker to exit; their JSON summaries. Raises on failure."""
        deadline = time.monotonic() + timeout_s
        summaries = []
        for i, process in enumerate(self.processes):
            try:
                out, _ = process.communicate(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise TimeoutError(f"worker {i} still running after {timeout_s:.0f}s") from None
            if process.returncode != 0:
                raise RuntimeError(f"worker {i} exited {process.returncode}: {self.stderr(i)}")
            summaries.append(json.loads(out.strip().splitlines()[-1]))
        return summaries

    def terminate(self, timeout_s: float = 30.0) -> list[dict[str, Any]]:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        return self.wait(timeout_s)

    def kill(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            with contextlib.suppress(Exception):
                process.communicate(timeout=10)

    def stderr(self, i: int) -> str:
        text = (self.logs / f"worker{i}.err").read_text(errors="replace")
        return " | ".join(text.strip().splitlines()[-5:])


def _attempt_times(base_url: str, schema: str) -> list[tuple[float, float, float, str, str, float]]:
    """Per task: (created, first start, last end) in epoch seconds, state, owner, and the
    payload's ``due`` (scheduled submit time, epoch seconds; NaN when absent)."""
    from psycopg import sql

    rows = _sql(
        base_url,
        sql.SQL(
            "SELECT extract(epoch FROM created_at)::float8, "
            "extract(epoch FROM (record->'history'->0->>'started_at')::timestamptz)::float8, "
            "extract(epoch FROM (record->'history'->-1->>'ended_at')::timestamptz)::float8, "
            "state, coalesce(owner, ''), "
            "coalesce((record->'spec'->'payload'->>'due')::float8, 'NaN') FROM {}"
        ).format(sql.Identifier(schema, "tasks")),
    )
    return [(r[0], r[1], r[2], r[3], r[4], r[5]) for r in rows]


def _wait_runners(base_url: str, schema: str, count: int, timeout_s: float) -> None:
    from psycopg import errors, sql

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(errors.UndefinedTable):
            rows = _sql(
                base_url,
                sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, "runners")),
            )
            if rows[0][0] >= count:
                return
        time.sleep(0.05)
    raise TimeoutError(f"{count} workers did not register within {timeout_s:.0f}s")


def drain_run(
    base_url: str, n: int, workers: int, concurrency: int, claim_interval: float
) -> dict[str, Any]:
    """One drain measurement in a fresh schema (see the module docstring)."""
    with fresh_schema(base_url) as (schema, url), tempfile.TemporaryDirectory() as logs:
        submit_per_s = submit_all(url, n)
        pool = Workers(url, Path(logs))
        try:
            started = time.time()
            pool.start(workers, concurrency, claim_interval, drain=True)
            summaries = pool.wait(timeout_s=120.0 + n / 200.0)
            wall = time.time() - started
        finally:
            pool.kill()
        times = _attempt_times(base_url, schema)
    completed = [t for t in times if t[3] == "COMPLETED"]
    if len(completed) != n:
        raise RuntimeError(f"{len(completed)}/{n} tasks completed")
    first_start = min(t[1] for t in completed)
    window = drain_window_s([t[1] for t in completed], [t[2] for t in completed])
    return {
        "workers": workers,
        "concurrency": concurrency,
        "claim_interval_s": claim_interval,
        "tasks": n,
        TPS: n / window,
        TPS_WALL: n / wall,
        "drain_window_s": round(window, 3),
        "wall_s": round(wall, 3),
        "first_start_after_spawn_s": round(first_start - started, 3),
        "completed_per_worker": [int(s.get("completed", 0)) for s in summaries],
        "submit_many_per_s": submit_per_s,
    }


@contextlib.contextmanager
def select1_probe(url: str, interval_s: float = 0.005) -> Iterator[list[float]]:
    """``SELECT 1`` round trips (ms) every ``interval_s`` on a connection of its own, in a
    thread, while the block runs: the floor under the load of the measurement itself."""
    import threading

    import psycopg

    samples: list[float] = []
    stop = threading.Event()
    conn = psycopg.connect(url, connect_timeout=5, autocommit=True)

    def run() -> None:
        while not stop.wait(interval_s):
            t0 = clock()
            conn.execute("SELECT 1").fetchone()
            samples.append((clock() - t0) * 1000.0)

    thread = threading.Thread(target=run, name="select1-probe", daemon=True)
    thread.start()
    try:
        yield samples
    finally:
        stop.set()
        thread.join()
        conn.close()


def paced_submits(submit: Callable[[float], Any], rate_per_s: float, n: int, threads: int) -> float:
    """Open loop over ``threads`` submitting threads: task *i* is due at ``t0 + i/rate`` and
    submitted by thread ``i % threads`` (``benchmarks.workloads.open_loop`` in each), given
    its due time (``clock()`` units). Returns the achieved rate, tasks/s."""
    import threading

    interval = 1.0 / rate_per_s
    t0 = clock() + 0.05
    failures: list[BaseException] = []

    def run(k: int) -> None:
        count = len(range(k, n, threads))
        delay = t0 + k * interval - clock()
        if delay > 0:
            time.sleep(delay)
        try:  # thread k's own schedule: every ``threads``-th slot of the common one
            open_loop(submit, rate_per_s / threads, count)
        except BaseException as exc:
            failures.append(exc)

    pool = [threading.Thread(target=run, args=(k,), daemon=True) for k in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    if failures:
        raise failures[0]
    return n / (clock() - t0)


def latency_run(
    base_url: str,
    rate_per_s: float,
    seconds: float,
    workers: int,
    concurrency: int,
    submit_threads: int,
) -> dict[str, float]:
    """Submit-to-start latency with ``workers`` idle workers, single submits, open loop."""
    from supervisor.runner import RunnerConfig, TaskRunner

    n = max(1, round(rate_per_s * seconds))
    with fresh_schema(base_url) as (schema, url), tempfile.TemporaryDirectory() as logs:
        pool = Workers(url, Path(logs))
        runner = None
        try:
            runner = TaskRunner.start(
                RunnerConfig(store=url, recover=False, queue_capacity=n + 1)
            )  # creates the store's tables before the workers open it
            pool.start(workers, concurrency, 0.5, drain=False)
            _wait_runners(base_url, schema, workers + 1, timeout_s=60.0)
            time.sleep(1.0)  # let the workers settle (first claims, LISTEN)
            calls: list[float] = []
            submit = runner.submit
            wall_minus_clock = time.time() - clock()

            def one(due: float) -> None:
                t0 = clock()
                submit({"type": TASK_TYPE, "payload": {"due": due + wall_minus_clock}})
                calls.append((clock() - t0) * 1000.0)  # list.append: thread-safe

            with select1_probe(base_url) as probe:
                achieved = paced_submits(one, rate_per_s, n, submit_threads)
            deadline = time.monotonic() + 60.0
            while runner.unfinished():
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{runner.unfinished()} tasks unfinished after 60s")
                time.sleep(0.05)
            pool.terminate()
        finally:
            if runner is not None:
                runner.stop(drain=False)
            pool.kill()
        times = _attempt_times(base_url, schema)
    if len(times) != n or any(not math.isfinite(t[1]) for t in times):
        raise RuntimeError(f"{len(times)}/{n} tasks with a start time")
    latencies = [(t[1] - t[0]) * 1000.0 for t in times]
    lateness = [(t[1] - t[5]) * 1000.0 for t in times]
    result: dict[str, float] = {"workers": workers, "concurrency": concurrency, "tasks": n}
    result.update({f"submit_to_start_ms_{k}": v for k, v in ms_percentiles(latencies).items()})
    result.update({f"scheduled_to_start_ms_{k}": v for k, v in ms_percentiles(lateness).items()})
    result.update({f"submit_call_ms_{k}": v for k, v in ms_percentiles(calls).items()})
    if probe:
        result.update({f"select1_under_load_ms_{k}": v for k, v in ms_percentiles(probe).items()})
    result["achieved_rate_per_s"] = achieved
    result["submit_threads"] = submit_threads
    return result


# -- main -------------------------------------------------------------------------------
def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _median_latency(runs: Sequence[Mapping[str, float]]) -> dict[str, float]:
    keys = [k for k in runs[0] if all(k in r for r in runs)]
    return {k: statistics.median(float(r[k]) for r in runs) for k in keys}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.postgres", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="3,000 tasks, 5 s of latency")
    parser.add_argument("--tasks", type=int, default=None, help="tasks per drain run")
    parser.add_argument("--json", action="store_true", help="print the document as JSON")
    parser.add_argument("--url", default=DEFAULT_URL, help="PostgreSQL URL (a schema is added)")
    parser.add_argument("--workers", default="1,2", help="worker process counts to run")
    parser.add_argument("--concurrency", default="4,16,32,64", help="--concurrency values to try")
    parser.add_argument("--claim-interval", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=2, help="runs per setting (median)")
    parser.add_argument("--rate", type=float, default=TARGET_RATE_PER_S)
    parser.add_argument("--latency-s", type=float, default=None, help="seconds of paced submits")
    parser.add_argument(
        "--latency-concurrency", type=int, default=None, help="default: the best of the sweep"
    )
    parser.add_argument(
        "--submit-threads", type=int, default=8, help="threads sharing the paced submits"
    )
    parser.add_argument("--select1", type=int, default=2000, help="SELECT 1 round trips")
    parser.add_argument("--floor-batch", type=int, default=100, help="rows per floor statement")
    parser.add_argument("--skip-drain", action="store_true")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS / "postgres.json")
    args = parser.parse_args(argv)
    n = args.tasks or (3_000 if args.quick else 10_000)
    latency_s = args.latency_s or (5.0 if args.quick else 20.0)
    log: Callable[[str], None] = (
        (lambda s: print(s, file=sys.stderr, flush=True)) if args.json else print
    )
    _quiet_logging()

    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    machine = machine_info()
    errors: list[str] = []
    floor = select1_floor(args.url, args.select1)
    log(f"floor SELECT 1: {floor}")
    with fresh_schema(args.url) as (schema, _):
        floor.update(insert_notify_floor(args.url, schema, min(args.select1, 1000)))
        commit_ms = "/".join(str(floor[f"insert_notify_ms_{p}"]) for p in PCTS)
        log(f"floor INSERT + NOTIFY commit ms p50/p95/p99: {commit_ms}")
        floor["writes_tasks_per_s"] = writes_floor(
            args.url, schema, max(n, 5_000), args.floor_batch
        )
    log(f"floor INSERT + 2 UPDATE: {floor['writes_tasks_per_s']:,.0f} tasks/s")

    samples: list[dict[str, Any]] = []
    if not args.skip_drain:
        for repeat in range(args.repeats):  # interleaved, so drift hits every setting alike
            for workers in _ints(args.workers):
                for concurrency in _ints(args.concurrency):
                    try:
                        run = drain_run(args.url, n, workers, concurrency, args.claim_interval)
                    except Exception as exc:
                        errors.append(f"drain {workers}w c{concurrency}: {exc!r}")
                        log(f"  drain {workers}w c{concurrency}: FAILED {exc!r}")
                        continue
                    run["repeat"] = repeat
                    samples.append(run)
                    log(
                        f"  drain {workers}w c{concurrency} #{repeat + 1}: "
                        f"{run[TPS]:,.0f} tasks/s (store), {run[TPS_WALL]:,.0f} (wall), "
                        f"per worker {run['completed_per_worker']}"
                    )
    medians = median_by_setting(samples, TPS)

    latency: dict[str, float] | None = None
    latency_runs: list[dict[str, float]] = []
    if not args.skip_latency:
        concurrency = args.latency_concurrency or best_concurrency(medians, 2) or 16
        for repeat in range(args.repeats):
            try:
                run_l = latency_run(
                    args.url, args.rate, latency_s, 2, concurrency, args.submit_threads
                )
            except Exception as exc:
                errors.append(f"latency: {exc!r}")
                log(f"  latency #{repeat + 1}: FAILED {exc!r}")
                continue
            latency_runs.append(run_l)
            log(
                f"  latency 2w c{concurrency} #{repeat + 1}: submit-to-start "
                + "/".join(f"{run_l[f'submit_to_start_ms_{p}']:.2f}" for p in PCTS)
                + f" ms, achieved {run_l['achieved_rate_per_s']:.0f}/s"
            )
        if latency_runs:
            latency = _median_latency(latency_runs)

    submit_rates = [s["submit_many_per_s"] for s in samples]
    figures = build_figures(
        floor,
        samples,
        latency,
        rate_per_s=args.rate,
        submit_tasks_per_s=statistics.median(submit_rates) if submit_rates else None,
    )
    document: dict[str, Any] = {
        "schema_version": 1,
        "started_at": started_at,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine,
        "versions": {**package_versions(PACKAGES), "postgresql": server_version(args.url)},
        "config": {
            "tasks": n,
            "repeats": args.repeats,
            "workers": _ints(args.workers),
            "concurrency": _ints(args.concurrency),
            "claim_interval_s": args.claim_interval,
            "rate_per_s": args.rate,
            "latency_s": latency_s,
            "submit_threads": args.submit_threads,
            "select1_queries": args.select1,
            "floor_batch": args.floor_batch,
            "handler": HANDLER,
            "worker_command": "arbiter --log-level WARNING worker --store URL --handler "
            f"{HANDLER} --concurrency C --claim-interval S --json [--drain]",
        },
        "figures": figures,
        "targets": targets(figures, args.rate),
        "samples": {"drain": samples, "latency": latency_runs},
        "errors": errors,
    }
    write_json(document, args.out)
    if args.json:
        print(json.dumps(document, indent=2))
    else:
        print(format_table(document))
        print(f"\nwritten: {args.out}")
    return document


if __name__ == "__main__":
    main()
