"""``arbiter demo``: a self-contained workload through the whole pipeline.

Built-in agents run no-op handlers (failing at ``--fail-rate``); ``--crash`` makes each named
actor fail every ``--crash-interval`` seconds while the workload runs (they take turns,
spread evenly over the interval, so each is crashed within the first interval however
short the run). The summary
checks the promise: every submitted task ends COMPLETED or DEAD_LETTERED, none is lost.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import threading
import time
from typing import Any

import structlog

from actors.agent import TaskContext
from messages.errors import QueueFull
from messages.task import AgentSpec
from supervisor.runner import PIPELINE_ACTORS, RunnerConfig, TaskRunner

__all__ = ["CRASHABLE", "DemoAgents", "add_demo_parser", "run_demo"]

CRASHABLE = (
    "queue",
    "router",
    "registry",
    "retry",
    "scheduler",
    "health",
    "performance",
    "agent",
    "journal",
)
TASK_TYPES = ("summarise", "translate", "review")

_log = structlog.get_logger("arbiter.demo")


class DemoAgents:
    """The demo's handlers: count executions per task id (to find duplicates) and fail
    at the given rate."""

    def __init__(self, fail_rate: float, seed: int | None) -> None:
        self.fail_rate = fail_rate
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        # Successful executions by task id (``task_id.int``: an int hashes in C, a UUID in
        # Python; a plain dict: a Counter's missing key is a Python call too).
        self.executions: dict[int, int] = {}

    def handle(self, task: TaskContext) -> dict[str, Any]:
        """The no-op handler of every demo agent."""
        with self._lock:  # one acquisition: the draw and the count
            fail = self.fail_rate > 0.0 and self._rng.random() < self.fail_rate
            if not fail:
                executions = self.executions
                key = task.task_id.int
                executions[key] = executions.get(key, 0) + 1
        if fail:
            raise RuntimeError(f"demo failure of {task.type} (attempt {task.attempt})")
        return {"ok": True, "attempt": task.attempt}

    def duplicates(self) -> int:
        """Task ids whose handler succeeded more than once (at-least-once execution)."""
        with self._lock:
            return sum(1 for count in self.executions.values() if count > 1)


def add_demo_parser(sub: Any) -> None:
    """Add the ``demo`` sub-command."""
    demo = sub.add_parser("demo", help="run a demo workload through the whole pipeline")
    demo.add_argument("--tasks", type=int, default=5000, help="tasks to submit")
    demo.add_argument("--agents", type=int, default=4, help="agents to register")
    demo.add_argument("--concurrency", type=int, default=4, help="max_concurrency per agent")
    demo.add_argument("--fail-rate", type=float, default=0.0, help="handler failure rate 0..1")
    demo.add_argument(
        "--crash",
        action="append",
        default=[],
        choices=CRASHABLE,
        help="crash this actor now and then (repeatable)",
    )
    demo.add_argument(
        "--crash-interval",
        type=float,
        default=0.2,
        help="seconds between two crashes of each named actor (they take turns)",
    )
    demo.add_argument("--store", default="memory://", help="store URL (default memory://)")
    demo.add_argument("--strategy", default="least_loaded", help="routing strategy")
    demo.add_argument("--seed", type=int, default=None)
    demo.add_argument(
        "--prefetch",
        type=float,
        default=1.0,
        help="tasks each agent holds per slot, at least (see RunnerConfig.prefetch)",
    )
    demo.add_argument(
        "--prefetch-window-ms",
        type=float,
        default=2.0,
        help="adaptive prefetch: the work each agent may hold, in ms at its pace (0: none)",
    )
    demo.add_argument("--timeout", type=float, default=300.0, help="give up after this long")
    demo.add_argument("--json", action="store_true", help="print only the summary, as JSON")
    demo.set_defaults(run=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    """Run the workload and print the summary; exit 0 if no task was lost."""
    if not 0.0 <= args.fail_rate <= 1.0:
        raise SystemExit("--fail-rate must be between 0 and 1")
    agents = DemoAgents(args.fail_rate, args.seed)
    config = RunnerConfig(
        store=args.store,
        routing_strategy=args.strategy,
        submit_timeout_s=60.0,
        backoff_base_s=0.01,
        backoff_cap_s=0.2,
        max_restarts=1000,
        within_s=1.0,
        seed=args.seed,
        prefetch=args.prefetch,
        prefetch_window_ms=args.prefetch_window_ms,
    )
    started = time.perf_counter()
    submitted = 0
    with TaskRunner.start(config) as runner:
        for number in range(args.agents):
            runner.register_agent(
                AgentSpec(
                    agent_id=f"agent-{number}",
                    capabilities=frozenset(TASK_TYPES),
                    max_concurrency=args.concurrency,
                ),
                agents.handle,
            )
        stop_crashing = threading.Event()
        crasher = threading.Thread(
            target=_crash_loop,
            args=(runner, args.crash, args.crash_interval, stop_crashing, args.seed),
            name="demo-crasher",
            daemon=True,
        )
        if args.crash:
            crasher.start()
        progress = _Progress(args.tasks, enabled=sys.stderr.isatty() and not args.json)
        batch = 500
        try:
            while submitted < args.tasks:
                size = min(batch, args.tasks - submitted)
                specs = [
                    {"type": TASK_TYPES[(submitted + i) % len(TASK_TYPES)], "payload": {"n": i}}
                    for i in range(size)
                ]
                try:
                    runner.submit_many(specs)
                except QueueFull:
                    continue  # backpressure: the submit waited 60 s; try again
                submitted += size
                progress.show(runner, submitted)
            deadline = time.monotonic() + args.timeout
            while runner.unfinished() and time.monotonic() < deadline:
                progress.show(runner, submitted)
                runner.drain(0.2)
        finally:
            stop_crashing.set()
            if crasher.is_alive():
                crasher.join()
        progress.done()
        elapsed = time.perf_counter() - started
        status = runner.status()
        counts = status["counts"]
    performance = status["performance"]
    finished = counts["completed"] + counts["dead_lettered"] + counts["cancelled"]
    summary = {
        "submitted": submitted,
        "completed": counts["completed"],
        "failed": _failed_attempts(status),
        "dead_lettered": counts["dead_lettered"],
        "lost": submitted - finished,
        "duplicates": agents.duplicates(),
        "restarts": status["restarts"],
        "elapsed_s": round(elapsed, 3),
        "throughput_per_s": round(counts["completed"] / elapsed, 1) if elapsed else 0.0,
        "route_assign_ms": _percentiles(performance.get("route_assign_ms", {})),
        "end_to_end_ms": _percentiles(performance.get("end_to_end_ms", {})),
    }
    _log.info("demo.summary", **summary)
    print(json.dumps(summary) if args.json else _table(summary))
    return 0 if summary["lost"] == 0 else 1


def _failed_attempts(status: dict[str, Any]) -> int:
    return sum(agent.get("failed", 0) + agent.get("timed_out", 0) for agent in status["agents"])


def _percentiles(summary: dict[str, Any]) -> dict[str, float | None]:
    def rounded(value: Any) -> float | None:
        return None if value is None else round(float(value), 3)

    return {key: rounded(summary.get(key)) for key in ("p50", "p95", "p99")}


def _crash_loop(
    runner: TaskRunner,
    targets: list[str],
    interval_s: float,
    stop: threading.Event,
    seed: int | None,
) -> None:
    rng = random.Random(seed)
    turn = 0
    # Each target once per interval, in turn: the last of them within the first interval.
    step = interval_s / max(1, len(targets))
    while not stop.wait(step):
        target = targets[turn % len(targets)]
        turn += 1
        if target == "agent":
            agents = runner.agents()
            if not agents:
                continue
            target = f"agent:{rng.choice(agents)}"
        assert target.startswith("agent:") or target in PIPELINE_ACTORS
        runner.inject_crash(target, reason=f"demo crash #{turn} of {target}")


class _Progress:
    """A one-line progress bar on a terminal (stderr); nothing otherwise."""

    def __init__(self, total: int, *, enabled: bool) -> None:
        self.total = total
        self.enabled = enabled
        self._last = 0.0

    def show(self, runner: TaskRunner, submitted: int) -> None:
        now = time.monotonic()
        if not self.enabled or now - self._last < 0.1:
            return
        self._last = now
        done = self.total - runner.unfinished() - (self.total - submitted)
        width = 30
        filled = int(width * done / max(1, self.total))
        sys.stderr.write(
            f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{self.total} done, "
            f"{submitted} submitted"
        )
        sys.stderr.flush()

    def done(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")


def _table(summary: dict[str, Any]) -> str:
    width = max(len(key) for key in summary)
    return "\n".join(f"{key:<{width}}  {value}" for key, value in summary.items())
