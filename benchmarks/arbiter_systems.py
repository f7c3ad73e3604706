"""Arbiter in the harness, set up through its public host API as a user would for throughput.

Systems (``SYSTEMS``, registered by ``benchmarks.systems.register_arbiter``):

* ``arbiter-memory``: ``TaskRunner`` with ``store="memory://"``;
* ``arbiter-sqlite``: ``store="sqlite:///<fresh temp dir>/bench.db"`` (default durability:
  WAL, ``synchronous=NORMAL``);
* ``arbiter-sqlite-fsync``: the same with ``?durability=fsync`` (``synchronous=FULL``); it
  only runs ``durable_submit``, the workload where durability is the cost being measured;
* ``arbiter-memory-strict``: ``store="memory://"`` with ``prefetch=0`` and
  ``prefetch_window_ms=0``: no task leaves the queue before an agent has a free slot for
  it (strict priorities whatever the tasks take), to show what that costs;
  ``noop_throughput`` and ``paced_latency`` only.

Set-up, per measurement (a fresh runner and a fresh store each time, like the peers):

* **one agent** (capability ``noop``) with ``max_concurrency = threads`` (``--peer-threads``,
  4 by default): the same number of handler threads as each peer's worker threads, and the
  same shape (one worker with K threads; dramatiq's ``Worker``, huey's consumer and celery's
  worker are one consumer with K threads each). Measured alternatives on this machine:
  4 agents x 1 was about half as fast, 4 agents x 4 (16 handler threads) about the same as
  1 x 4;
* ``queue_capacity = max(n, 10_000)`` so that the producer is never held up by admission
  (the peers' in-memory brokers are unbounded) and ``submit_timeout_s=60``;
* every other setting is ``RunnerConfig``'s default: ``routing_strategy="least_loaded"``,
  ``prefetch=0`` and ``prefetch_window_ms=2`` (an agent may hold what it finishes in 2 ms
  at its recent pace, at most 32 tasks per slot: a deep buffer for no-op tasks, none for
  tasks slower than 2 ms), ``gc_young_threshold=50_000``, ``journal_batch=512``,
  ``max_attempts=3``;
* the handler is a plain ``def handler(task)`` that hits the shared ``Completion`` counter;
* structlog is set to WARNING on stderr (the harness is the host; INFO lines would mix with
  the output).

Workloads:

* ``noop_throughput``: N ``{"type": "noop"}`` tasks submitted with ``submit_many`` in
  batches of ``SUBMIT_BATCH`` (the host API for bulk work), from the calling thread; time
  from the first submit to the last handler completion.
* ``paced_latency``: ``open_loop`` calls ``submit({"type": "noop", "payload": {"t": due}})``
  once per task at its scheduled time (no batching: a batch would add its own wait); the
  handler hits ``Completion`` with ``payload["t"]``, so latency is handler completion minus
  scheduled submit time, exactly as for the floors and peers.
* ``durable_submit``: no agents; ``tasks_per_s`` is N tasks through ``submit_many`` batches
  of ``SUBMIT_BATCH``, ``tasks_per_s_single_submit`` is ``min(N, SINGLE_SUBMIT_MAX)`` tasks
  through one ``submit()`` each (a fresh runner each). Each call returns once the tasks are
  in the store.
* ``scaled_throughput`` (``scaling_*``): as ``noop_throughput``, with ``workers`` agents of
  one slot each (agents scaling: the router picks among that many), with the payload
  ``{"blob": "x" * bytes}``, or with ``depth`` tasks submitted before the agents register
  (timed from the registration to the ``min(n, depth)``-th completion; the rest are not
  drained).
* ``restart_latency`` (``restart_latency_<actor>``): an idle runner with one agent; the
  actor is crashed with ``inject_crash`` R times, each timed from the injection to the
  answer of a ``GetStatistics`` ask sent right behind it (only the restarted incarnation
  answers it); ``RunnerConfig(max_restarts=R + 10, within_s=1)`` so that the restart
  intensity does not stop the runner.
* ``memory_per_queued_task``: no agents; N tasks submitted in batches, then wait until the
  queue actor holds all N (``status()["queue"]["depth"]``); tracemalloc bytes per task
  (store + queue + everything else the runner keeps for a queued task). For
  ``arbiter-sqlite`` SQLite's own page cache is not seen by tracemalloc.
"""

from __future__ import annotations

import logging
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from benchmarks.peers import PEER_THREADS
from benchmarks.report import BYTES_METRIC, SINGLE_SUBMIT_METRIC, THROUGHPUT_METRIC
from benchmarks.systems import ARBITER_PACKAGES
from benchmarks.workloads import (
    Completion,
    Scale,
    clock,
    latency_result,
    noop_timeout_s,
    open_loop,
    paced_timeout_s,
    restart_metrics,
    submit_rate,
    throughput,
    traced_bytes_per_task,
)

SUBMIT_BATCH = 1000
"""Tasks per ``submit_many`` call in the bulk workloads."""
SINGLE_SUBMIT_MAX = 5000
"""At most this many one-by-one ``submit()`` calls per ``durable_submit`` run."""
MIN_QUEUE_CAPACITY = 10_000
"""``RunnerConfig``'s default capacity; raised to N for larger runs."""
DRAIN_TIMEOUT_S = 30.0
"""After the last handler completion, how long the runner may take to record every task
as finished (outside the timed window). Longer is reported as an error."""
TASK_TYPE = "noop"
STRICT: dict[str, float] = {"prefetch": 0.0, "prefetch_window_ms": 0.0}
"""``arbiter-memory-strict``: no prefetch at all (a task leaves the queue only for a free
slot)."""

STORES: dict[str, str] = {
    "memory": "memory://",
    "sqlite": "sqlite:///{tmp}/bench.db",
    "sqlite-fsync": "sqlite:///{tmp}/bench.db?durability=fsync",
}

_logging_configured = threading.Lock()
_quiet = False


def _quiet_logging() -> None:
    """WARNING and above on stderr, once (as a host that wants a clean stdout would)."""
    global _quiet
    with _logging_configured:
        if _quiet:
            return
        from supervisor import configure_logging

        configure_logging(fmt="console", level=logging.WARNING, stream=sys.stderr)
        _quiet = True


@contextmanager
def _silenced() -> Iterator[None]:
    """Only CRITICAL log lines meanwhile (the injected crashes of ``restart_latency`` log
    an error with a traceback each), then WARNING again."""
    from supervisor import configure_logging

    _quiet_logging()
    configure_logging(fmt="console", level=logging.CRITICAL, stream=sys.stderr)
    try:
        yield
    finally:
        configure_logging(fmt="console", level=logging.WARNING, stream=sys.stderr)


def _submit_in_batches(submit_many: Callable[[list[dict[str, Any]]], Any], n: int) -> None:
    _submit_specs(submit_many, {"type": TASK_TYPE}, n)


def _submit_specs(
    submit_many: Callable[[list[dict[str, Any]]], Any], spec: dict[str, Any], n: int
) -> None:
    """``n`` copies of ``spec`` through ``submit_many`` in batches of ``SUBMIT_BATCH``."""
    batch = [spec] * SUBMIT_BATCH
    left = n
    while left > 0:
        k = min(SUBMIT_BATCH, left)
        submit_many(batch if k == SUBMIT_BATCH else batch[:k])
        left -= k


class _Arbiter:
    """Shared set-up: a fresh runner (and store) per measurement."""

    packages: tuple[str, ...] = ARBITER_PACKAGES
    agents = 1

    def __init__(
        self, store: str, threads: int = PEER_THREADS, prefetch: dict[str, float] | None = None
    ) -> None:
        if store not in STORES:
            raise ValueError(f"unknown store {store!r}; choose from {list(STORES)}")
        self.store = store
        self.threads = threads
        self.prefetch = dict(prefetch or {})  # RunnerConfig's prefetch settings, if not defaults

    def unavailable_reason(self) -> str | None:
        try:
            from messages import AgentSpec  # noqa: F401
            from supervisor import RunnerConfig, TaskRunner  # noqa: F401
        except Exception as exc:
            return f"Arbiter cannot be imported ({exc!r})"
        return None

    def settings(self) -> dict[str, Any]:
        """How this system is set up (goes into the report's config)."""
        return {
            "store": STORES[self.store],
            "tmp": tempfile.gettempdir(),
            "agents": self.agents,
            "max_concurrency_per_agent": self._concurrency(),
            "queue_capacity": f"max(n, {MIN_QUEUE_CAPACITY})",
            "submit_timeout_s": 60,
            "submit_batch": SUBMIT_BATCH,
            "single_submit_max": SINGLE_SUBMIT_MAX,
            "prefetch": self.prefetch or "RunnerConfig defaults",
            "other_settings": "RunnerConfig defaults",
        }

    def _concurrency(self) -> int:
        return max(1, self.threads // self.agents)

    @contextmanager
    def _runner(
        self,
        n: int,
        handler: Callable[[Any], Any] | None = None,
        *,
        agents: tuple[int, int] | None = None,
        drain: bool = True,
    ) -> Iterator[Any]:
        """A started runner (with the agents when ``handler`` is given: ``agents`` is
        (count, max_concurrency), else the system's own set-up); stopped after, drained
        first unless ``drain`` is False."""
        from supervisor import RunnerConfig, TaskRunner

        _quiet_logging()
        with tempfile.TemporaryDirectory(prefix="arbiter-bench-") as tmp:
            config = RunnerConfig(
                store=STORES[self.store].format(tmp=tmp),
                queue_capacity=max(n, MIN_QUEUE_CAPACITY),
                submit_timeout_s=60,
                **self.prefetch,
            )
            runner = TaskRunner.start(config)
            try:
                if handler is not None:
                    self._register(runner, handler, agents)
                yield runner
                if handler is not None and drain and not runner.drain(DRAIN_TIMEOUT_S):
                    raise RuntimeError(
                        f"{runner.unfinished()} tasks not recorded as finished "
                        f"{DRAIN_TIMEOUT_S:.0f}s after the last handler completed"
                    )
            finally:
                runner.stop(drain=False)

    def _register(
        self, runner: Any, handler: Callable[[Any], Any], agents: tuple[int, int] | None
    ) -> None:
        """The agents ``bench-0``, ... : ``agents`` is (count, max_concurrency), None for
        the system's own set-up."""
        from messages import AgentSpec

        count, concurrency = agents or (self.agents, self._concurrency())
        for i in range(count):
            runner.register_agent(
                AgentSpec(
                    agent_id=f"bench-{i}", capabilities={TASK_TYPE}, max_concurrency=concurrency
                ),
                handler,
            )

    def durable_submit(self, n: int) -> dict[str, float]:
        with self._runner(n) as runner:
            bulk = submit_rate(n, lambda: _submit_in_batches(runner.submit_many, n))
        single_n = min(n, SINGLE_SUBMIT_MAX)
        with self._runner(single_n) as runner:
            submit = runner.submit
            spec = {"type": TASK_TYPE}

            def one_by_one() -> None:
                for _ in range(single_n):
                    submit(spec)

            single = submit_rate(single_n, one_by_one)
        return {THROUGHPUT_METRIC: bulk, SINGLE_SUBMIT_METRIC: single}


class ArbiterSystem(_Arbiter):
    """``arbiter-memory`` / ``arbiter-sqlite``: every workload."""

    def noop_throughput(self, n: int) -> float:
        completion = Completion(n)
        hit = completion.hit

        def handler(task: Any) -> None:
            hit(None)

        with self._runner(n, handler) as runner:
            started = clock()
            _submit_in_batches(runner.submit_many, n)
            completion.wait(noop_timeout_s(n))
        return throughput(n, started, completion)

    def scaled_throughput(self, n: int, scale: Scale) -> float:
        """See :class:`~benchmarks.workloads.Scale`: ``workers`` agents of one slot each;
        ``depth`` tasks submitted before any agent registers (the clock starts as the
        agents register)."""
        measured = scale.measured(n)
        completion = Completion(measured)
        hit = completion.hit
        blob = scale.blob()
        spec: dict[str, Any] = {"type": TASK_TYPE}
        if blob is not None:
            spec["payload"] = {"blob": blob}
        agents = None if scale.workers is None else (scale.workers, 1)
        total = scale.depth or n

        def handler(task: Any) -> None:
            hit(None)

        # With a depth, nothing runs before the agents register: they come after the fill.
        with self._runner(
            total, None if scale.depth else handler, agents=agents, drain=not scale.depth
        ) as runner:
            if scale.depth:
                _submit_specs(runner.submit_many, spec, scale.depth)
                started = clock()
                self._register(runner, handler, agents)
            else:
                started = clock()
                _submit_specs(runner.submit_many, spec, n)
            completion.wait(noop_timeout_s(measured))
            if scale.depth:
                # The rest of the queue is not drained: the agents leave first (giving
                # back what they hold), so that nothing is still running at the stop.
                for agent_id in runner.agents():
                    runner.deregister_agent(agent_id)
        return throughput(measured, started, completion)

    def restart_latency(self, actor: str, repeats: int) -> dict[str, float]:
        """A running runner (one agent, idle) whose ``actor`` is crashed ``repeats`` times
        (``inject_crash``: it fails on its next message); each time from the injection to
        the answer of the ask sent right behind it, which only the restarted incarnation
        handles (failure, supervisor's decision, new instance, ``on_start``, message)."""
        from messages.supervision import GetStatistics
        from supervisor import RunnerConfig, TaskRunner

        name = "agent:bench-0" if actor == "agent" else actor
        latencies: list[float] = []
        with _silenced(), tempfile.TemporaryDirectory(prefix="arbiter-bench-") as tmp:
            config = RunnerConfig(
                store=STORES[self.store].format(tmp=tmp),
                max_restarts=repeats + 10,  # the restart intensity must not stop the test
                within_s=1.0,
            )
            with TaskRunner.start(config) as runner:
                runner.register_agent(
                    {"agent_id": "bench-0", "capabilities": [TASK_TYPE], "max_concurrency": 1},
                    lambda task: None,
                )
                ref = runner.system.ref(name)
                before = ref.ask(GetStatistics(), timeout=10.0).restarts
                for _ in range(repeats):
                    started = clock()
                    runner.inject_crash(actor if actor != "agent" else name)
                    ref.ask(GetStatistics(), timeout=10.0)
                    latencies.append((clock() - started) * 1000.0)
                restarts = ref.ask(GetStatistics(), timeout=10.0).restarts - before
                if restarts != repeats:
                    raise RuntimeError(f"{name}: {restarts} restarts for {repeats} crashes")
        return restart_metrics(latencies)

    def paced_latency(self, rate_per_s: float, n: int) -> dict[str, dict[str, float]]:
        completion = Completion(n, record_latency=True)
        hit = completion.hit

        def handler(task: Any) -> None:
            hit(task.payload["t"])

        with self._runner(n, handler) as runner:
            submit = runner.submit

            def enqueue(due: float) -> None:
                submit({"type": TASK_TYPE, "payload": {"t": due}})

            open_loop(enqueue, rate_per_s, n)
            completion.wait(paced_timeout_s(rate_per_s, n))
            result: dict[str, dict[str, float]] = latency_result(completion)
            # The runner's own figure: a task ready in the queue until it is assigned to
            # an agent (the original system's P95 target was 250 ms). Reported in batches.
            route = _route_assign_ms(runner, n)
            if route is not None:
                result["route_assign_ms"] = route
        return result

    def memory_per_queued_task(self, n: int) -> dict[str, float]:
        with self._runner(n) as runner:

            def settle() -> None:
                deadline = clock() + 60.0
                while (depth := runner.status()["queue"]["depth"]) < n:
                    if clock() > deadline:
                        raise TimeoutError(f"only {depth}/{n} tasks reached the queue in 60s")
                    threading.Event().wait(0.05)

            value = traced_bytes_per_task(
                n, lambda: _submit_in_batches(runner.submit_many, n), settle
            )
        return {BYTES_METRIC: value}


def _route_assign_ms(runner: Any, n: int) -> dict[str, float] | None:
    """p50/p95/p99 of routing+assignment from ``status()["performance"]``, once all ``n``
    are in (the router reports them within 0.1 s); None if they never all arrive."""
    deadline = clock() + 5.0
    while True:
        figures = runner.status()["performance"].get("route_assign_ms", {})
        if figures.get("count", 0) >= n or clock() > deadline:
            break
        threading.Event().wait(0.02)
    if figures.get("count", 0) < n:
        return None
    return {p: float(figures[p]) for p in ("p50", "p95", "p99")}


class ArbiterSubmitOnly(_Arbiter):
    """``arbiter-sqlite-fsync``: ``durable_submit`` only."""


class ArbiterStrict(ArbiterSystem):
    """``arbiter-memory-strict``: the memory store with no prefetch (``STRICT``): every
    freed slot costs a round trip through router and queue; throughput and latency only
    (submit and memory do not depend on it)."""

    durable_submit = None  # type: ignore[assignment]
    memory_per_queued_task = None  # type: ignore[assignment]
    scaled_throughput = None  # type: ignore[assignment]
    restart_latency = None  # type: ignore[assignment]


SYSTEMS: dict[str, Any] = {
    "arbiter-memory": ArbiterSystem("memory"),
    "arbiter-sqlite": ArbiterSystem("sqlite"),
    "arbiter-sqlite-fsync": ArbiterSubmitOnly("sqlite-fsync"),
    "arbiter-memory-strict": ArbiterStrict("memory", prefetch=STRICT),
}
