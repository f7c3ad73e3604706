"""HeldReports: figures held for the performance tracker, sent by the batch or on a tick.

No threads: the timer service and the clock are stand-ins that record what is asked.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

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


class Clock:
    """A monotonic clock the test moves."""

    def __init__(self, now: float) -> None:
        self.now = now

    def monotonic(self) -> float:
        return self.now


def moving_wiring(clock: Clock) -> Any:
    return SimpleNamespace(clock=clock, timers=RecordingTimers())


def test_items_held_half_the_delay_are_due_at_the_next_add_of_items() -> None:
    # Sent from a turn that follows a task's end (the next add), not at a random moment.
    held: HeldReports[int] = HeldReports(batch=100, delay_s=0.1)
    clock = Clock(10.0)
    w, timer = moving_wiring(clock), TickTimer()
    assert held.add([1], w, "ref", timer) is False
    clock.now = 10.049
    assert held.add([2], w, "ref", timer) is False
    clock.now = 10.05
    assert held.add([], w, "ref", timer) is False  # no new items: never due
    assert held.add([3], w, "ref", timer) is True
    assert held.take() == (1, 2, 3)
    assert held.since is None
    # One fallback tick, armed with the first item, for a delay after it.
    assert w.timers.requests == [pytest.approx(0.1)]


def test_a_tick_sends_only_items_held_the_whole_delay() -> None:
    held: HeldReports[int] = HeldReports(batch=100, delay_s=0.1)
    clock = Clock(20.0)
    w, timer = moving_wiring(clock), TickTimer()
    held.add([1], w, "ref", timer)
    clock.now = 20.06
    assert held.add([2], w, "ref", timer) is True
    held.take()  # sent from that turn; the tick armed for item 1 still comes
    held.add([3], w, "ref", timer)  # held since 20.06
    clock.now = 20.1
    timer.fired()
    # Item 3 is 40 ms old: not now (a random moment) but at its own delay, or a turn.
    assert held.tick_due(w, "ref", timer) is False
    assert timer.due == pytest.approx(20.16)
    clock.now = 20.16
    timer.fired()
    assert held.tick_due(w, "ref", timer) is True
    assert held.take() == (3,)


def test_a_tick_with_nothing_held_sends_nothing() -> None:
    held: HeldReports[int] = HeldReports()
    w, timer = moving_wiring(Clock(1.0)), TickTimer()
    assert held.tick_due(w, "ref", timer) is False
    assert timer.due is None


def test_disarm_cancels_the_armed_tick_and_the_next_items_arm_a_new_one() -> None:
    held: HeldReports[int] = HeldReports(batch=100, delay_s=0.1)
    clock = Clock(30.0)
    w, timer = moving_wiring(clock), TickTimer()
    held.add([1], w, "ref", timer)
    assert (timer.handle, timer.due) == (1, pytest.approx(30.1))
    clock.now = 30.05
    assert held.add([2], w, "ref", timer) is True
    held.take()
    timer.disarm(w.timers)  # sent from a turn: the fallback tick is not wanted
    assert w.timers.cancelled == [1]
    assert (timer.handle, timer.due) == (None, None)
    held.add([3], w, "ref", timer)  # armed afresh, a delay after item 3
    assert w.timers.requests == [pytest.approx(0.1), pytest.approx(0.1)]
    assert timer.due == pytest.approx(30.15)


def test_disarm_with_nothing_armed_cancels_nothing() -> None:
    w, timer = wiring(), TickTimer()
    timer.disarm(w.timers)
    assert w.timers.cancelled == [] and timer.due is None


def test_a_timer_knows_its_own_tick_by_the_due_time() -> None:
    from messages.pipeline import Tick

    w, timer = wiring(now=5.0), TickTimer()
    assert not timer.is_for(Tick(at=5.5))  # nothing armed
    timer.arm(w.timers, "ref", 5.5, 5.0)
    assert timer.is_for(Tick(at=5.5))
    assert not timer.is_for(Tick(at=6.0)) and not timer.is_for(Tick())
