"""HeldReports: figures held for the performance tracker, sent by the batch or on a tick.

No threads: the timer service and the clock are stand-ins that record what is asked.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from actors.pipeline import HeldReports, TickTimer


class RecordingTimers:
    """Records call_later requests instead of running them."""

    def __init__(self) -> None:
        self.requests: list[float] = []
        self.cancelled: list[int] = []

    def call_later(self, delay_s: float, callback: Any) -> int:
        self.requests.append(delay_s)
        return len(self.requests)

    def cancel(self, handle: int) -> None:
        self.cancelled.append(handle)


def wiring(now: float = 100.0) -> Any:
    return SimpleNamespace(clock=SimpleNamespace(monotonic=lambda: now), timers=RecordingTimers())


def test_a_full_batch_is_due_at_once_and_take_empties_it() -> None:
    held: HeldReports[int] = HeldReports(batch=3, delay_s=0.1)
    w, timer = wiring(), TickTimer()
    assert held.add([1, 2], w, "ref", timer) is False
    assert held.add([3], w, "ref", timer) is True
    assert held.take() == (1, 2, 3)
    assert held.items == []
    assert held.take() == ()


def test_a_partial_batch_arms_one_tick_within_the_delay() -> None:
    held: HeldReports[str] = HeldReports(batch=10, delay_s=0.25)
    w, timer = wiring(now=50.0), TickTimer()
    assert held.add(["a"], w, "ref", timer) is False
    assert w.timers.requests == [0.25]
    assert timer.due == 50.25
    held.add(["b"], w, "ref", timer)  # the tick already armed covers it: no second timer
    assert w.timers.requests == [0.25]
    assert held.take() == ("a", "b")


def test_nothing_held_arms_nothing() -> None:
    held: HeldReports[int] = HeldReports()
    w, timer = wiring(), TickTimer()
    assert held.add([], w, "ref", timer) is False
    assert w.timers.requests == []
    assert timer.due is None
