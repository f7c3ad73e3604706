"""Floors: the cheapest possible hand-offs, the ceiling any task runner here can reach.

* ``floor-queue``: a bare ``queue.SimpleQueue`` hand-off of no-op items from the producer
  (the calling thread) to one consumer thread; the consumer counts, an Event signals the end.
* ``floor-pykka-4hop``: a bare chain of 4 pykka ``ThreadingActor``s; the producer tells
  actor1 -> actor2 -> actor3 -> actor4, which counts and sets an Event at N. This is the
  cost of a pipeline of 4 actor hops per task with no batching at all, the floor Arbiter's
  own actor pipeline is compared with.
"""

from __future__ import annotations

import queue
import threading
from typing import Any

from benchmarks.workloads import (
    Completion,
    clock,
    latency_result,
    noop_timeout_s,
    open_loop,
    paced_timeout_s,
    throughput,
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


class PykkaFloor:
    """``floor-pykka-4hop``: producer -> actor1 -> actor2 -> actor3 -> actor4 (counts)."""

    packages: tuple[str, ...] = ("pykka",)
    hops = 4

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
        completion = Completion(n)
        started: list[float] = []

        def produce(tell: Any) -> None:
            started.append(clock())
            for _ in range(n):
                tell(None)

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
