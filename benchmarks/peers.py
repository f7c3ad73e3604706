"""Peers: established Python task queues, each run in-process, set up as its docs recommend.

Every peer runs a fresh broker/app/consumer per measurement (so runs do not leak into each
other), enqueues from the calling thread, and counts completions inside the task body with
the shared ``Completion`` counter. Throughput = N / (last completion - first enqueue).

* ``dramatiq``: ``StubBroker`` (the broker its testing docs use) with
  ``emit_after("process_boot")``, default middleware, an in-process ``dramatiq.Worker``
  (``worker_timeout=100`` as in the testing docs) with ``PEER_THREADS`` worker threads; the
  actor has ``max_retries=0``. Messages are JSON-encoded as in production.
* ``huey``: ``MemoryHuey(results=False)``, consumer created with the documented consumer
  options (``workers=PEER_THREADS``, ``worker_type="thread"``, ``periodic=False``) and
  started in-process with ``start()``; it does not install its SIGINT/SIGTERM handlers
  (those belong to the host: ``_set_signal_handlers`` is a no-op). The memory storage is
  non-blocking, so workers poll: the polling options are tightened from the CLI defaults
  (``initial_delay`` 0.1 s, ``max_delay`` 10 s) to 1 ms / 10 ms, otherwise latency is the
  polling interval and the first task can wait seconds.
* ``celery``: ``Celery(broker="memory://localhost/")``, result backend disabled
  (``task_ignore_result``), JSON serializer, a worker embedded with
  ``celery.contrib.testing.worker.start_worker`` (its documented in-process worker) with
  ``pool="threads"``, ``concurrency=PEER_THREADS``, no ping check (it needs a result
  backend). kombu's memory transport polls (``polling_interval`` 1 s by default); it is set
  to 10 ms through ``broker_transport_options``. A fresh queue name per run, because the
  memory transport's queues are process-global.

``scaled_throughput`` (the scaling workloads) uses the same set-up with ``workers`` worker
threads, the payload string as a second task argument (serialised by the peer as JSON, or
pickled by huey, as in production), and for ``depth`` the tasks enqueued before the
worker/consumer starts. Celery's depth runs stop at ``CeleryPeer.max_depth`` (its memory
transport takes ~3,500 enqueues/s here: a million would be five minutes of filling).

``durable_submit`` and ``memory_per_queued_task`` set the same broker/app up without the
worker/consumer and enqueue from the calling thread: the rate of the enqueue calls, and the
tracemalloc bytes the queued messages hold. None of these brokers is durable (they are
in-memory): the figures are the cost of each peer's submit path, the reference for
Arbiter's. The celery queue is deleted afterwards (its messages would otherwise stay in
the process-global memory transport).
"""

from __future__ import annotations

import importlib.util
import itertools
import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from benchmarks.report import BYTES_METRIC, THROUGHPUT_METRIC
from benchmarks.workloads import (
    Completion,
    Scale,
    clock,
    latency_result,
    noop_timeout_s,
    open_loop,
    paced_timeout_s,
    submit_rate,
    throughput,
    traced_bytes_per_task,
)

PEER_THREADS = 4
"""Worker threads per peer (the same for all, so the comparison is like for like)."""

_run_ids = itertools.count(1)


def _missing(module: str) -> str | None:
    if importlib.util.find_spec(module) is None:
        return f"package {module!r} is not installed (pip install -e '.[bench]')"
    return None


# An enqueue function takes the task's scheduled time (or None for no-op throughput) and,
# optionally, a payload string.
Enqueue = Callable[..., Any]
BeforeStart = Callable[[Enqueue], None]


class _Peer:
    """Shared driver: ``_session(completion)`` yields an enqueue function."""

    module = ""
    packages: tuple[str, ...] = ()

    def __init__(self, threads: int = PEER_THREADS) -> None:
        self.threads = threads

    def unavailable_reason(self) -> str | None:
        return _missing(self.module)

    max_depth: int | None = None
    """The deepest queue a ``depth`` scaling run fills (None: any)."""

    def _session(
        self, completion: Completion, consume: bool = True, before_start: BeforeStart | None = None
    ) -> AbstractContextManager[Enqueue]:
        """Set the peer up (with its worker unless ``consume`` is False), yield its enqueue
        function, tear it down. ``before_start(enqueue)`` runs just before the worker
        starts (to fill the queue first)."""
        raise NotImplementedError

    def scaled_throughput(self, n: int, scale: Scale) -> float:
        """See :class:`~benchmarks.workloads.Scale`."""
        if self.max_depth is not None and scale.depth > self.max_depth:
            raise ValueError(
                f"not run: depth {scale.depth:,} is over this peer's max_depth "
                f"{self.max_depth:,} (filling it would take minutes)"
            )
        peer = self if scale.workers is None else type(self)(threads=scale.workers)
        measured = scale.measured(n)
        completion = Completion(measured)
        blob = scale.blob()
        started: list[float] = []

        def fill(enqueue: Enqueue) -> None:
            for _ in range(scale.depth):
                enqueue(None, blob)
            started.append(clock())

        with peer._session(completion, before_start=fill) as enqueue:
            for _ in range(0 if scale.depth else n):
                enqueue(None, blob)
            completion.wait(noop_timeout_s(measured))
        return throughput(measured, started[0], completion)

    def noop_throughput(self, n: int) -> float:
        completion = Completion(n)
        with self._session(completion) as enqueue:
            started = clock()
            for _ in range(n):
                enqueue(None)
            completion.wait(noop_timeout_s(n))
        return throughput(n, started, completion)

    def paced_latency(self, rate_per_s: float, n: int) -> dict[str, dict[str, float]]:
        completion = Completion(n, record_latency=True)
        with self._session(completion) as enqueue:
            open_loop(enqueue, rate_per_s, n)
            completion.wait(paced_timeout_s(rate_per_s, n))
        return latency_result(completion)

    def durable_submit(self, n: int) -> dict[str, float]:
        with self._session(Completion(n), consume=False) as enqueue:

            def submit_all() -> None:
                for _ in range(n):
                    enqueue(None)

            return {THROUGHPUT_METRIC: submit_rate(n, submit_all)}

    def memory_per_queued_task(self, n: int) -> dict[str, float]:
        with self._session(Completion(n), consume=False) as enqueue:

            def fill() -> None:
                for _ in range(n):
                    enqueue(None)

            return {BYTES_METRIC: traced_bytes_per_task(n, fill)}


class DramatiqPeer(_Peer):
    module = "dramatiq"
    packages = ("dramatiq",)

    @contextmanager
    def _session(
        self, completion: Completion, consume: bool = True, before_start: BeforeStart | None = None
    ) -> Iterator[Enqueue]:
        import dramatiq
        from dramatiq.brokers.stub import StubBroker

        run = next(_run_ids)
        broker = StubBroker()
        broker.emit_after("process_boot")
        dramatiq.set_broker(broker)
        hit = completion.hit

        def bench_noop(scheduled_at: float | None, blob: str | None = None) -> None:
            hit(scheduled_at)

        actor = dramatiq.actor(
            broker=broker,
            actor_name=f"bench_noop_{run}",
            queue_name=f"bench_{run}",
            max_retries=0,
        )(bench_noop)
        worker = dramatiq.Worker(broker, worker_timeout=100, worker_threads=self.threads)
        if before_start is not None:
            before_start(actor.send)
        if consume:
            worker.start()
        try:
            yield actor.send
        finally:
            if consume:
                worker.stop(timeout=5000)
            broker.close()


class HueyPeer(_Peer):
    module = "huey"
    packages = ("huey",)
    initial_delay_s = 0.001
    max_delay_s = 0.01

    @contextmanager
    def _session(
        self, completion: Completion, consume: bool = True, before_start: BeforeStart | None = None
    ) -> Iterator[Enqueue]:
        from huey import MemoryHuey  # type: ignore[import-untyped]
        from huey.consumer import Consumer  # type: ignore[import-untyped]

        class EmbeddedConsumer(Consumer):  # type: ignore[misc]
            """The stock consumer, minus the process-wide signal handlers."""

            def _set_signal_handlers(self) -> None:
                return None

        run = next(_run_ids)
        huey = MemoryHuey(f"bench-{run}", results=False)
        hit = completion.hit

        @huey.task(name=f"bench_noop_{run}")  # type: ignore[untyped-decorator]
        def bench_noop(scheduled_at: float | None, blob: str | None = None) -> None:
            hit(scheduled_at)

        consumer = EmbeddedConsumer(
            huey,
            workers=self.threads,
            worker_type="thread",
            periodic=False,
            initial_delay=self.initial_delay_s,
            backoff=1.15,
            max_delay=self.max_delay_s,
            check_worker_health=False,
            shutdown_timeout=5.0,
        )
        if before_start is not None:
            before_start(bench_noop)
        if not consume:
            yield bench_noop
            return
        consumer.start()
        try:
            yield bench_noop
        finally:
            consumer.stop(graceful=True)


class CeleryPeer(_Peer):
    module = "celery"
    packages = ("celery", "kombu")
    polling_interval_s = 0.001

    max_depth = 100_000

    @contextmanager
    def _session(
        self, completion: Completion, consume: bool = True, before_start: BeforeStart | None = None
    ) -> Iterator[Enqueue]:
        from celery import Celery  # type: ignore[import-untyped]
        from celery.contrib.testing.worker import start_worker  # type: ignore[import-untyped]

        run = next(_run_ids)
        app = Celery(
            f"bench-{run}", broker="memory://localhost/", backend=None, set_as_current=False
        )
        app.conf.update(
            task_ignore_result=True,
            task_serializer="json",
            accept_content=["json"],
            task_default_queue=f"bench-{run}",
            broker_transport_options={"polling_interval": self.polling_interval_s},
            worker_hijack_root_logger=False,
            broker_connection_retry_on_startup=False,
        )
        hit = completion.hit

        @app.task(name=f"bench.noop_{run}", ignore_result=True, shared=False)  # type: ignore[untyped-decorator]
        def bench_noop(scheduled_at: float | None, blob: str | None = None) -> None:
            hit(scheduled_at)

        # Keep celery's worker logging from drowning the harness output.
        logging.getLogger("celery").setLevel(logging.WARNING)
        worker: Any = None
        try:
            if before_start is not None:
                before_start(bench_noop.delay)
            if not consume:
                yield bench_noop.delay
                return
            with start_worker(
                app,
                pool="threads",
                concurrency=self.threads,
                perform_ping_check=False,
                loglevel="WARNING",
                shutdown_timeout=10.0,
            ) as worker:
                yield bench_noop.delay
        finally:
            # The embedded worker's teardown leaves the thread pool's executor running
            # (idle threads piling up run after run): stop it.
            pool = getattr(worker, "pool", None)
            if pool is not None:
                pool.stop()
            if not consume or before_start is not None:
                # Unconsumed messages would stay in the process-global memory transport.
                with app.connection_for_write() as connection:
                    connection.default_channel.queue_delete(f"bench-{run}")
            app.close()
