"""Workload building blocks shared by every system, and the runners that drive them.

* ``Completion``: the thread-safe counter + Event that every task body hits when it
  finishes; it records when the last task completed and, for paced runs, each task's
  end-to-end latency.
* ``open_loop``: submits on a fixed schedule regardless of completions (no coordinated
  omission); latency is measured from the *scheduled* submit time to completion.
* ``submit_rate`` / ``traced_bytes_per_task``: the measurements of ``durable_submit`` (tasks
  handed over per second with no consumer) and ``memory_per_queued_task`` (tracemalloc).
* ``run_noop_throughput`` / ``run_paced_latency`` / ``run_repeated`` / ``run_once``: call a
  system under a watchdog so that a hanging system becomes an error entry instead of
  hanging the whole run.
* ``run_paced_rounds``: the paced runs of every system in interleaved rounds (each round
  runs each system once, the order rotated), reduced to the median of each percentile:
  the machine's own stalls (a bare ``SimpleQueue`` hand-off sees 2-7 ms ones every second
  or so on the benchmark VM) then fall on every system alike instead of deciding a p99
  comparison by which system happened to run during them.
"""

from __future__ import annotations

import gc
import math
import statistics
import threading
import time
import tracemalloc
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from benchmarks.report import (
    NOOP_WORKLOAD,
    SCALING_KINDS,
    THROUGHPUT_METRIC,
    ErrorEntry,
    Measurement,
    paced_workload_name,
)

T = TypeVar("T")

clock = time.perf_counter
"""The one clock of the harness (monotonic, process-wide, so comparable across threads)."""


class Completion:
    """Counts finished tasks from any thread; sets ``done`` when ``target`` is reached."""

    def __init__(self, target: int, *, record_latency: bool = False) -> None:
        if target <= 0:
            raise ValueError("target must be positive")
        self.target = target
        self.count = 0
        self.done = threading.Event()
        self.finished_at = math.nan
        self._record = record_latency
        self.latencies_ms: list[float] = []
        self._lock = threading.Lock()

    def hit(self, scheduled_at: float | None = None) -> None:
        """Called inside the task body. ``scheduled_at`` is the ``clock()`` submit time."""
        now = clock()
        with self._lock:
            self.count += 1
            if self._record and scheduled_at is not None:
                self.latencies_ms.append((now - scheduled_at) * 1000.0)
            if self.count == self.target:
                self.finished_at = now
                self.done.set()

    def wait(self, timeout_s: float, what: str = "tasks") -> None:
        """Wait for the target; raise TimeoutError with progress if it is not reached."""
        if not self.done.wait(timeout_s):
            raise TimeoutError(
                f"only {self.count}/{self.target} {what} completed within {timeout_s:.0f}s"
            )


@dataclass(frozen=True)
class Scale:
    """One point of a scaling workload (``scaled_throughput``): no-op tasks as in
    ``noop_throughput`` with one dimension changed.

    * ``depth``: that many tasks are queued before any consumer starts (not timed); the
      figure is the rate of the first ``min(n, depth)`` completions after the consumers
      start (does taking from a deep queue cost more?). 0: the tasks are submitted while
      the consumers run, timed from the first submit, like ``noop_throughput``.
    * ``workers``: consumer threads (Arbiter: that many agents of one slot each, so the
      router chooses among ``workers`` agents; a peer: that many worker threads). None:
      the system's usual set-up.
    * ``payload_bytes``: each task carries a string of that many characters
      (``{"blob": "x" * payload_bytes}``), serialised the way the system serialises tasks.
    """

    depth: int = 0
    workers: int | None = None
    payload_bytes: int = 0

    @property
    def kind(self) -> str:
        """Which dimension this point varies (``SCALING_KINDS``)."""
        if self.depth:
            return "depth"
        if self.workers is not None:
            return "agents"
        return "payload"

    @property
    def value(self) -> int:
        if self.depth:
            return self.depth
        if self.workers is not None:
            return self.workers
        return self.payload_bytes

    @property
    def workload(self) -> str:
        """The figure's workload name, e.g. ``scaling_depth_1000000``."""
        assert self.kind in SCALING_KINDS
        return f"scaling_{self.kind}_{self.value}"

    def blob(self) -> str | None:
        """The payload string of each task, or None for no payload."""
        return "x" * self.payload_bytes if self.payload_bytes else None

    def measured(self, n: int) -> int:
        """How many completions the figure is taken over."""
        return min(n, self.depth) if self.depth else n


def scaling_timeout_s(n: int, scale: Scale) -> float:
    """Watchdog limit of one scaling run: filling the queue (>= 2,000 tasks/s), the
    measured tasks (>= 200 tasks/s, payloads of 100 KB are slow everywhere), set-up."""
    return 60.0 + scale.depth / 2000.0 + scale.measured(n) / 200.0


def noop_timeout_s(n: int) -> float:
    """Internal completion timeout for a no-op run of n tasks (generous: >= 1k tasks/s)."""
    return 30.0 + n / 1000.0


def paced_timeout_s(rate_per_s: float, n: int) -> float:
    """Internal completion timeout for a paced run: the schedule plus 30 s of slack."""
    return 30.0 + n / rate_per_s


def submit_timeout_s(n: int) -> float:
    """Internal timeout of a ``durable_submit`` run (generous: >= 500 submits/s)."""
    return 30.0 + n / 500.0


def memory_timeout_s(n: int) -> float:
    """Internal timeout of a ``memory_per_queued_task`` run (tracemalloc slows everything)."""
    return 60.0 + n / 250.0


def throughput(n: int, started_at: float, completion: Completion) -> float:
    """Tasks per second from the first enqueue to the last completion."""
    elapsed = completion.finished_at - started_at
    if not elapsed > 0:
        raise RuntimeError(f"non-positive elapsed time {elapsed!r}")
    return n / elapsed


def open_loop(submit: Callable[[float], Any], rate_per_s: float, n: int) -> None:
    """Submit n tasks at ``rate_per_s``, each given its scheduled time (``clock()`` units).

    Open loop: the schedule does not wait for completions. When the submitter falls behind
    (a slow ``submit``) it catches up without sleeping, and the lateness counts in the
    tasks' latency because latency is taken from the scheduled time.
    """
    if rate_per_s <= 0:
        raise ValueError("rate must be positive")
    interval = 1.0 / rate_per_s
    start = clock() + 0.005
    sleep = time.sleep
    for i in range(n):
        due = start + i * interval
        delay = due - clock()
        if delay > 0:
            sleep(delay)
        submit(due)


def submit_rate(n: int, submit_all: Callable[[], Any]) -> float:
    """Tasks per second handed over by ``submit_all()`` (which submits n tasks): from just
    before the first submit to the return of the last one. No consumer is running."""
    started = clock()
    submit_all()
    elapsed = clock() - started
    if not elapsed > 0:
        raise RuntimeError(f"non-positive elapsed time {elapsed!r}")
    return n / elapsed


def traced_bytes_per_task(
    n: int, fill: Callable[[], Any], settle: Callable[[], Any] | None = None
) -> float:
    """Bytes still allocated (tracemalloc) after ``fill()`` queued n tasks, per task.

    Tracing starts after the system is set up (its fixed cost is not counted) and stops
    before it is torn down; ``settle()`` waits until the tasks sit where they stay (e.g. in
    a queue actor) and garbage is collected before the reading. Only allocations through
    Python's allocators are seen: memory a C library mallocs itself (e.g. SQLite's page
    cache) is not.
    """
    if n <= 0:
        raise ValueError("n must be positive")
    if tracemalloc.is_tracing():
        raise RuntimeError("tracemalloc is already tracing")
    gc.collect()
    tracemalloc.start(1)
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        fill()
        if settle is not None:
            settle()
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    return (after - baseline) / n


def percentiles(values: list[float]) -> dict[str, float]:
    """p50/p95/p99 (nearest rank) of a non-empty list."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    out: dict[str, float] = {}
    for name, p in (("p50", 50), ("p95", 95), ("p99", 99)):
        rank = max(1, math.ceil(p / 100 * len(ordered)))
        out[name] = ordered[rank - 1]
    return out


def latency_result(completion: Completion) -> dict[str, dict[str, float]]:
    """The ``paced_latency`` return value: ``{"end_to_end_ms": {p50, p95, p99}}``."""
    return {"end_to_end_ms": percentiles(completion.latencies_ms)}


class WatchdogTimeout(TimeoutError):
    """The system did not return (setup, run or teardown) within the watchdog limit."""


def call_with_timeout(fn: Callable[[], T], timeout_s: float) -> T:
    """Run fn in a daemon thread; raise WatchdogTimeout if it has not returned in time.

    A hung system leaves its daemon thread behind (nothing can kill a Python thread), but
    the run goes on and reports the error.
    """
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # carried to the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name="bench-watchdog-call", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise WatchdogTimeout(f"no result within {timeout_s:.0f}s (watchdog)")
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _settle() -> None:
    """Between runs: collect garbage and let leftover threads of the last run wind down."""
    gc.collect()
    time.sleep(0.2)


def run_noop_throughput(
    name: str,
    system: Any,
    n: int,
    repeats: int,
    log: Callable[[str], None] = print,
    timeout_s: float | None = None,
) -> Measurement | ErrorEntry:
    """Median of ``repeats`` runs of ``system.noop_throughput(n)``.

    ``timeout_s`` is the watchdog limit of one run (default: the internal completion
    timeout plus 30 s for setup and teardown).
    """
    limit = noop_timeout_s(n) + 30.0 if timeout_s is None else timeout_s
    samples: list[float] = []
    for i in range(repeats):
        _settle()
        try:
            value = call_with_timeout(lambda: float(system.noop_throughput(n)), limit)
        except Exception as exc:
            log(f"  {name}: noop_throughput run {i + 1}/{repeats} failed: {_describe(exc)}")
            return ErrorEntry(NOOP_WORKLOAD, name, _describe(exc))
        if not (value > 0 and math.isfinite(value)):
            return ErrorEntry(NOOP_WORKLOAD, name, f"invalid throughput {value!r}")
        samples.append(value)
        log(f"  {name}: noop_throughput run {i + 1}/{repeats}: {value:,.0f} tasks/s")
    return Measurement(
        workload=NOOP_WORKLOAD,
        system=name,
        metrics={THROUGHPUT_METRIC: statistics.median(samples)},
        samples=tuple(samples),
    )


def run_paced_latency(
    name: str,
    system: Any,
    rate_per_s: float,
    n: int,
    log: Callable[[str], None] = print,
    timeout_s: float | None = None,
) -> Measurement | ErrorEntry:
    """One open-loop run of ``system.paced_latency(rate_per_s, n)`` under a watchdog."""
    workload = paced_workload_name(rate_per_s)
    limit = paced_timeout_s(rate_per_s, n) + 30.0 if timeout_s is None else timeout_s
    _settle()
    try:
        result = call_with_timeout(lambda: system.paced_latency(rate_per_s, n), limit)
        e2e = result["end_to_end_ms"]
        metrics = {f"end_to_end_ms_{p}": float(e2e[p]) for p in ("p50", "p95", "p99")}
        route = result.get("route_assign_ms")  # Arbiter only: ready in queue -> assigned
        if route is not None:
            metrics.update({f"route_assign_ms_{p}": float(route[p]) for p in ("p50", "p95", "p99")})
    except Exception as exc:
        log(f"  {name}: {workload} failed: {_describe(exc)}")
        return ErrorEntry(workload, name, _describe(exc))
    routing = (
        f"; routing+assignment p50 {metrics['route_assign_ms_p50']:.3f}, "
        f"p95 {metrics['route_assign_ms_p95']:.3f}, p99 {metrics['route_assign_ms_p99']:.3f} ms"
        if "route_assign_ms_p50" in metrics
        else ""
    )
    log(
        f"  {name}: {workload}: p50 {metrics['end_to_end_ms_p50']:.2f} ms, "
        f"p95 {metrics['end_to_end_ms_p95']:.2f} ms, p99 {metrics['end_to_end_ms_p99']:.2f} ms"
        + routing
    )
    return Measurement(workload=workload, system=name, metrics=metrics)


def run_paced_rounds(
    systems: Sequence[tuple[str, Any]],
    rate_per_s: float,
    n: int,
    rounds: int,
    log: Callable[[str], None] = print,
    timeout_s: float | None = None,
) -> list[Measurement | ErrorEntry]:
    """``rounds`` interleaved rounds of :func:`run_paced_latency` over ``systems`` (round
    ``r`` starts at the ``r``-th system, so no system always runs first or last); per
    system the median of each metric, with each round's end-to-end p99 as the samples.
    A system that fails a round is reported by its error and not run again."""
    if rounds < 1:
        raise ValueError("rounds must be >= 1")
    runs: dict[str, list[dict[str, float]]] = {name: [] for name, _ in systems}
    failed: dict[str, ErrorEntry] = {}
    count = len(systems)
    for round_index in range(rounds):
        if rounds > 1:
            log(f"  round {round_index + 1}/{rounds}")
        for offset in range(count):
            name, system = systems[(round_index + offset) % count]
            if name in failed:
                continue
            outcome = run_paced_latency(name, system, rate_per_s, n, log, timeout_s)
            if isinstance(outcome, ErrorEntry):
                failed[name] = outcome
            else:
                runs[name].append(dict(outcome.metrics))
    results: list[Measurement | ErrorEntry] = []
    workload = paced_workload_name(rate_per_s)
    for name, _ in systems:
        if name in failed:
            results.append(failed[name])
            continue
        done = runs[name]
        results.append(
            Measurement(
                workload=workload,
                system=name,
                metrics=_medians(done),
                samples=tuple(r["end_to_end_ms_p99"] for r in done) if rounds > 1 else (),
            )
        )
    return results


def _checked_metrics(value: Any) -> dict[str, float]:
    if not isinstance(value, Mapping) or not value:
        raise TypeError(f"expected a non-empty mapping of metrics, got {value!r}")
    metrics = {str(k): float(v) for k, v in value.items()}
    bad = {k: v for k, v in metrics.items() if not (v >= 0 and math.isfinite(v))}
    if bad:
        raise ValueError(f"invalid metric values {bad!r}")
    return metrics


def run_repeated(
    workload: str,
    name: str,
    call: Callable[[], Mapping[str, float]],
    repeats: int,
    timeout_s: float,
    primary: str,
    log: Callable[[str], None] = print,
) -> Measurement | ErrorEntry:
    """Median (per metric) of ``repeats`` calls returning ``{metric: value}``; the raw
    values of the ``primary`` metric are kept as the samples."""
    runs: list[dict[str, float]] = []
    for i in range(repeats):
        _settle()
        try:
            metrics = _checked_metrics(call_with_timeout(call, timeout_s))
        except Exception as exc:
            log(f"  {name}: {workload} run {i + 1}/{repeats} failed: {_describe(exc)}")
            return ErrorEntry(workload, name, _describe(exc))
        runs.append(metrics)
        shown = ", ".join(f"{k} {v:,.0f}" for k, v in metrics.items())
        log(f"  {name}: {workload} run {i + 1}/{repeats}: {shown}")
    return Measurement(
        workload=workload,
        system=name,
        metrics=_medians(runs),
        samples=tuple(r[primary] for r in runs if primary in r),
    )


def _medians(runs: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """The median of each metric that every run reported."""
    keys = [k for k in runs[0] if all(k in r for r in runs)]
    return {k: statistics.median(r[k] for r in runs) for k in keys}


def run_scaling(
    name: str,
    system: Any,
    n: int,
    scale: Scale,
    log: Callable[[str], None] = print,
) -> Measurement | ErrorEntry:
    """One run of ``system.scaled_throughput(n, scale)`` under a watchdog."""
    return run_once(
        scale.workload,
        name,
        lambda: {THROUGHPUT_METRIC: float(system.scaled_throughput(n, scale))},
        scaling_timeout_s(n, scale),
        log,
    )


def restart_metrics(latencies_ms: list[float]) -> dict[str, float]:
    """``restart_ms_p50`` / ``_p95`` / ``_p99`` of the measured restarts."""
    return {f"restart_ms_{p}": v for p, v in percentiles(latencies_ms).items()}


def run_once(
    workload: str,
    name: str,
    call: Callable[[], Mapping[str, float]],
    timeout_s: float,
    log: Callable[[str], None] = print,
) -> Measurement | ErrorEntry:
    """One call returning ``{metric: value}`` under a watchdog."""
    _settle()
    try:
        metrics = _checked_metrics(call_with_timeout(call, timeout_s))
    except Exception as exc:
        log(f"  {name}: {workload} failed: {_describe(exc)}")
        return ErrorEntry(workload, name, _describe(exc))
    shown = ", ".join(f"{k} {v:,.1f}" for k, v in metrics.items())
    log(f"  {name}: {workload}: {shown}")
    return Measurement(workload=workload, system=name, metrics=metrics)
