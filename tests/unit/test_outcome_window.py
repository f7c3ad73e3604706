"""OutcomeWindow: credits for attempts whose outcome the store has not committed yet."""

from __future__ import annotations

import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from actors.pipeline import OutcomeWindow

WAIT_S = 5.0


def test_the_limit_is_the_extra_plus_the_agents_slots() -> None:
    window = OutcomeWindow(3)
    assert window.limit == 3
    window.add_slots(4)
    window.add_slots(2)
    assert window.limit == 9
    window.add_slots(-4)
    assert window.limit == 5
    window.add_slots(-100)  # never below no slots
    assert window.limit == 3


def test_a_negative_extra_is_refused() -> None:
    with pytest.raises(ValueError, match="extra"):
        OutcomeWindow(-1)


def _entering(window: OutcomeWindow) -> tuple[threading.Thread, threading.Event]:
    """A thread that takes a credit (maybe waiting); the event is set once it has."""
    entered = threading.Event()

    def enter() -> None:
        window.enter()
        entered.set()

    thread = threading.Thread(target=enter, daemon=True)
    thread.start()
    return thread, entered


def test_enter_waits_while_the_window_is_full_and_a_release_lets_it_in() -> None:
    window = OutcomeWindow(1)
    window.add_slots(1)
    window.enter()
    window.enter()
    assert window.held == 2
    thread, entered = _entering(window)
    # It stays out while no credit comes back (a bounded look: it must not get in).
    assert not entered.wait(0.2)
    assert window.held == 2
    window.release(1)
    assert entered.wait(WAIT_S)
    thread.join(WAIT_S)
    assert window.held == 2
    assert window.waits == 1


def test_new_slots_let_a_waiting_attempt_in() -> None:
    window = OutcomeWindow(0)
    window.add_slots(1)
    window.enter()
    thread, entered = _entering(window)
    assert not entered.wait(0.2)
    window.add_slots(1)
    assert entered.wait(WAIT_S)
    thread.join(WAIT_S)


def test_close_lets_every_waiter_in_and_admits_everything_after() -> None:
    window = OutcomeWindow(0)
    waiters = [_entering(window) for _ in range(3)]
    assert not any(entered.wait(0.05) for _, entered in waiters)
    window.close()
    for thread, entered in waiters:
        assert entered.wait(WAIT_S)
        thread.join(WAIT_S)
    window.enter()  # no wait once closed
    assert window.try_enter(5, "key", lambda: None) == 5


def test_try_enter_takes_what_there_is_and_rings_each_key_once_when_credits_return() -> None:
    window = OutcomeWindow(3)
    rung: list[str] = []
    assert window.try_enter(2, "a", lambda: rung.append("a")) == 2
    assert window.try_enter(5, "a", lambda: rung.append("a")) == 1  # one left
    assert window.try_enter(1, "a", lambda: rung.append("a")) == 0
    assert window.try_enter(1, "b", lambda: rung.append("b")) == 0
    assert window.held == 3
    assert rung == []
    window.release(1)
    assert sorted(rung) == ["a", "b"]  # each key once, however often it asked
    window.release(1)
    assert sorted(rung) == ["a", "b"]  # a waker is called once, then forgotten
    assert window.waits == 3


def test_a_release_that_leaves_the_window_full_rings_nobody() -> None:
    window = OutcomeWindow(1)
    window.add_slots(1)
    rung: list[int] = []
    window.enter()
    window.enter()
    window.add_slots(-1)  # an agent went: two credits held, one allowed
    assert window.try_enter(1, "a", lambda: rung.append(1)) == 0
    window.release(1)  # held 1: still full
    assert rung == []
    window.release(1)
    assert rung == [1]


def test_releases_never_take_the_count_below_zero() -> None:
    window = OutcomeWindow(2)
    window.enter()
    window.release(5)
    window.release(0)
    window.release(-3)
    assert window.held == 0


@given(st.lists(st.tuples(st.booleans(), st.integers(min_value=1, max_value=4)), max_size=60))
def test_try_enter_never_hands_out_more_than_the_limit(ops: list[tuple[bool, int]]) -> None:
    window = OutcomeWindow(5)
    window.add_slots(3)
    model = 0
    for take, count in ops:
        if take:
            granted = window.try_enter(count, "k", lambda: None)
            assert granted == min(count, window.limit - model)
            model += granted
        else:
            window.release(count)
            model = max(0, model - count)
        assert window.held == model <= window.limit


def test_a_worker_gives_the_credit_back_when_the_attempt_was_given_up_meanwhile() -> None:
    """The worker takes the credit, then looks at the cancelled flag (set by the executor
    while the worker waited): it gives the credit back and skips the attempt."""
    import uuid

    from actors.agent import TaskContext, _Workers

    window = OutcomeWindow(2)
    live = TaskContext(uuid.uuid4(), "t", {}, 1, "a")
    assert _Workers._take_credit(window, live)
    assert window.held == 1 and live._held == [1]
    given_up = TaskContext(uuid.uuid4(), "t", {}, 1, "a")
    given_up._cancelled[0] = True
    assert not _Workers._take_credit(window, given_up)
    assert window.held == 1 and given_up._held == []
