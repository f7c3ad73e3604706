"""Floors: the cheapest possible hand-offs, the ceiling any task runner here can reach.

* ``floor-queue``: a bare ``queue.SimpleQueue`` hand-off of no-op items from the producer
  (the calling thread) to one consumer thread; the consumer counts, an Event signals the end.
* ``floor-pykka-4hop``: a bare chain of 4 pykka ``ThreadingActor``s; the producer tells
  actor1 -> actor2 -> actor3 -> actor4, which counts and sets an Event at N. This is the
  cost of a pipeline of 4 actor hops per task with no batching at all, the floor Arbiter's
  own actor pipeline is compared with.

Scaling (``scaled_throughput``): ``floor-queue`` runs ``workers`` consumer threads on one
SimpleQueue, prefilled with ``depth`` items before they start, each item the task's payload
dict; ``floor-pykka-4hop`` scales only with the payload (the dict is told down the chain).
Restart latency (``restart_latency``): ``floor-pykka-4hop`` stops a bare pykka actor, starts
a fresh one and asks it once: the least a restart can cost on pykka.

With no consumer (``durable_submit``, ``memory_per_queued_task``): ``floor-queue`` puts the
items into a SimpleQueue nobody reads; ``floor-pykka-4hop`` tells them to the head actor of
the chain, which is held busy on its first message, so the rest wait in its inbox (one pykka
envelope each; the other hops are not involved). Neither is durable: they are the cost of
the bare hand-off, the ceiling for the submit path.
"""

from __future__ import annotations

import queue
import threading
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
    restart_metrics,
    submit_rate,
    throughput,
    traced_bytes_per_task,
)

_STOP = object()


class QueueFloor:
    """``floor-queue``: SimpleQueue from the producer thread to one consumer thread."""

    packages: tuple[str, ...] = ()

    def unavailable_reason(self) -> str | None:
        return None

    def _run(self, completion: Completion, produce: Any, timeout_s: float) -> None:
        q: queue.SimpleQueue[Any] = queue.SimpleQueue()

        def consume() -> None:
            get = q.get
            hit = completion.hit
            while True:
                item = get()
                if item is _STOP:
                    return
                hit(item)

        consumer = threading.Thread(target=consume, name="floor-queue-consumer", daemon=True)
        consumer.start()
        try:
            produce(q.put)
            completion.wait(timeout_s)
        finally:
            q.put(_STOP)
            consumer.join(5.0)

    def noop_throughput(self, n: int) -> float:
        completion = Completion(n)
        started: list[float] = []

        def produce(put: Any) -> None:
            started.append(clock())
            for _ in range(n):
                put(None)

        self._run(completion, produce, noop_timeout_s(n))
        return throughput(n, started[0], completion)

    def paced_latency(self, rate_per_s: float, n: int) -> dict[str, dict[str, float]]:
        completion = Completion(n, record_latency=True)
        self._run(
            completion,
            lambda put: open_loop(put, rate_per_s, n),
            paced_timeout_s(rate_per_s, n),
        )
        return latency_result(completion)

    def scaled_throughput(self, n: int, scale: Scale) -> float:
        """``workers`` consumers (default 1) on one SimpleQueue; see :class:`Scale`."""
        measured = scale.measured(n)
        completion = Completion(measured)
        blob = scale.blob()
        item = None if blob is None else {"blob": blob}
        q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        for _ in range(scale.depth):
            q.put(item)

        def consume() -> None:
            get = q.get
            hit = completion.hit
            while get() is not _STOP:
                hit(None)

        consumers = [
            threading.Thread(target=consume, name=f"floor-queue-consumer-{i}", daemon=True)
            for i in range(scale.workers or 1)
        ]
        started = clock()
        for consumer in consumers:
            consumer.start()
        try:
            for _ in range(0 if scale.depth else n):
                q.put(item)
            completion.wait(noop_timeout_s(measured))
        finally:
            for _ in consumers:
                q.put(_STOP)
        return throughput(measured, started, completion)

    def durable_submit(self, n: int) -> dict[str, float]:
        q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        put = q.put

        def submit_all() -> None:
            for _ in range(n):
                put(None)

        return {THROUGHPUT_METRIC: submit_rate(n, submit_all)}

    def memory_per_queued_task(self, n: int) -> dict[str, float]:
        q: queue.SimpleQueue[Any] = queue.SimpleQueue()

        def fill() -> None:
            put = q.put
            for _ in range(n):
                put(None)

        value = traced_bytes_per_task(n, fill)
        if q.qsize() != n:
            raise RuntimeError(f"{q.qsize()} items queued, expected {n}")
        return {BYTES_METRIC: value}


class PykkaFloor:
    """``floor-pykka-4hop``: producer -> actor1 -> actor2 -> actor3 -> actor4 (counts)."""

    packages: tuple[str, ...] = ("pykka",)
    hops = 4
    scaling_kinds: tuple[str, ...] = ("payload",)

    def unavailable_reason(self) -> str | None:
        try:
            import pykka  # noqa: F401
        except ImportError as exc:
            return f"pykka is not installed ({exc})"
        return None

    def _run(self, completion: Completion, produce: Any, timeout_s: float) -> None:
        import pykka

        class Forward(pykka.ThreadingActor):
            def __init__(self, target: Any) -> None:
                super().__init__()
                self._tell = target.tell

            def on_receive(self, message: Any) -> None:
                self._tell(message)

        class Count(pykka.ThreadingActor):
            def __init__(self) -> None:
                super().__init__()
                self._hit = completion.hit

            def on_receive(self, message: Any) -> None:
                self._hit(message)

        refs: list[Any] = [Count.start()]
        try:
            for _ in range(self.hops - 1):
                refs.append(Forward.start(refs[-1]))
            first = refs[-1]
            produce(first.tell)
            completion.wait(timeout_s)
        finally:
            # Stop from the head of the chain so nothing is told to a stopped actor.
            for ref in reversed(refs):
                ref.stop(block=True, timeout=5.0)

    def noop_throughput(self, n: int) -> float:
        return self._throughput(n, None)

    def _throughput(self, n: int, item: Any) -> float:
        """Tasks/s of ``n`` copies of ``item`` told down the chain."""
        completion = Completion(n)
        started: list[float] = []

        def produce(tell: Any) -> None:
            started.append(clock())
            for _ in range(n):
                tell(item)

        self._run(completion, produce, noop_timeout_s(n))
        return throughput(n, started[0], completion)

    def paced_latency(self, rate_per_s: float, n: int) -> dict[str, dict[str, float]]:
        completion = Completion(n, record_latency=True)
        self._run(
            completion,
            lambda tell: open_loop(tell, rate_per_s, n),
            paced_timeout_s(rate_per_s, n),
        )
        return latency_result(completion)

    def scaled_throughput(self, n: int, scale: Scale) -> float:
        """Payload scaling only: each message is the task's payload dict."""
        if scale.kind != "payload":
            raise ValueError(f"floor-pykka-4hop does not scale with {scale.kind}")
        blob = scale.blob()
        return self._throughput(n, None if blob is None else {"blob": blob})

    def restart_latency(self, actor: str, repeats: int) -> dict[str, float]:
        """The floor of a restart: a bare pykka actor is stopped, a fresh one started, and
        the time runs until the fresh one answers an ask (``actor`` names the Arbiter
        actor this is the floor for: the floor is the same for all)."""
        import pykka

        class Echo(pykka.ThreadingActor):
            def on_receive(self, message: Any) -> Any:
                return message

        latencies: list[float] = []
        ref = Echo.start()
        try:
            for _ in range(repeats):
                started = clock()
                ref.stop(block=True, timeout=5.0)
                ref = Echo.start()
                ref.ask(None, timeout=5.0)
                latencies.append((clock() - started) * 1000.0)
        finally:
            ref.stop(block=True, timeout=5.0)
        return restart_metrics(latencies)

    def _held(self, measure: Any) -> Any:
        """Run ``measure(tell)`` against a head actor held busy: what is told stays queued."""
        import pykka

        release = threading.Event()

        class Held(pykka.ThreadingActor):
            def on_receive(self, message: Any) -> None:
                release.wait(60.0)

        ref = Held.start()
        try:
            return measure(ref.tell)
        finally:
            release.set()
            ref.stop(block=True, timeout=60.0)

    def durable_submit(self, n: int) -> dict[str, float]:
        def measure(tell: Any) -> float:
            def submit_all() -> None:
                for _ in range(n):
                    tell(None)

            return submit_rate(n, submit_all)

        return {THROUGHPUT_METRIC: self._held(measure)}

    def memory_per_queued_task(self, n: int) -> dict[str, float]:
        def measure(tell: Any) -> float:
            def fill() -> None:
                for _ in range(n):
                    tell(None)

            return traced_bytes_per_task(n, fill)

        return {BYTES_METRIC: self._held(measure)}
