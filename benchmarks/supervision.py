"""Supervision overhead: supervised-actor throughput against bare pykka in the same run,
and restart latency (failure -> the new incarnation handling its next message).

Run: ``python -m benchmarks.supervision [--messages N] [--restarts R] [--repeats K]``.
Prints a JSON object and writes ``benchmarks/results/supervision.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import pykka

from supervisor import Actor, ActorSystem, ChildSpec, Restart, Strategy

RESULTS = Path(__file__).parent / "results"


class _BarePykka(pykka.ThreadingActor):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def on_receive(self, message: Any) -> Any:
        self.count += 1
        return self.count


class _Counter(Actor):
    def __init__(self) -> None:
        self.count = 0

    def receive(self, message: Any) -> Any:
        self.count += 1
        return self.count


def bare_pykka_rate(n: int) -> float:
    """Messages per second through one bare pykka actor (tell n, then ask once)."""
    ref = _BarePykka.start()
    try:
        started = time.perf_counter()
        for number in range(n):
            ref.tell(number)
        ref.ask("done", timeout=120)
        return n / (time.perf_counter() - started)
    finally:
        ref.stop()


def supervised_rate(n: int) -> float:
    """Messages per second through one supervised Arbiter actor, measured the same way."""
    system = ActorSystem.start(strategy=Strategy.ONE_FOR_ONE)
    try:
        ref = system.spawn(ChildSpec(name="counter", factory=_Counter))
        started = time.perf_counter()
        for number in range(n):
            ref.tell(number)
        ref.ask("done", timeout=120)
        return n / (time.perf_counter() - started)
    finally:
        system.stop()


class _Crashy(Actor):
    """Raises on "crash" (recording when), records when the next message arrives."""

    def __init__(self, marks: list[tuple[float, float]], lock: threading.Lock) -> None:
        self.marks = marks
        self.lock = lock

    def receive(self, message: Any) -> Any:
        now = time.perf_counter()
        if message == "crash":
            with self.lock:
                self.marks.append((now, 0.0))
            raise RuntimeError("benchmark crash")
        with self.lock:
            if self.marks and self.marks[-1][1] == 0.0:
                self.marks[-1] = (self.marks[-1][0], now)
        return None


def restart_latencies_ms(restarts: int) -> list[float]:
    """Failure -> next message handled by the new incarnation, in ms, per restart."""
    marks: list[tuple[float, float]] = []
    lock = threading.Lock()
    system = ActorSystem.start(
        strategy=Strategy.ONE_FOR_ONE, max_restarts=restarts + 10, within_s=3600.0
    )
    try:
        ref = system.spawn(
            ChildSpec(
                name="crashy", factory=lambda: _Crashy(marks, lock), restart=Restart.PERMANENT
            )
        )
        for _ in range(restarts):
            ref.tell("crash")
            ref.ask("next", timeout=10)
    finally:
        system.stop()
    return [(after - before) * 1000.0 for before, after in marks if after]


def _percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--restarts", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    bare, supervised = [], []
    for _ in range(args.repeats):  # interleaved, so drift hits both alike
        bare.append(bare_pykka_rate(args.messages))
        supervised.append(supervised_rate(args.messages))
    latencies = restart_latencies_ms(args.restarts)
    result = {
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
        "messages": args.messages,
        "floor_bare_pykka_msgs_per_s": round(statistics.median(bare)),
        "supervised_msgs_per_s": round(statistics.median(supervised)),
        "ratio_to_bare_pykka": round(statistics.median(supervised) / statistics.median(bare), 3),
        "restart_latency_ms": {
            "count": len(latencies),
            "p50": round(_percentile(latencies, 50), 3),
            "p95": round(_percentile(latencies, 95), 3),
            "p99": round(_percentile(latencies, 99), 3),
        },
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "supervision.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
