"""Admission credits: a batch is admitted whole or not at all, waits for room if told to."""

from __future__ import annotations

import threading

import pytest

from actors.pipeline import Admission
from messages import QueueFull
from tests.conftest import WAIT_S


def test_a_batch_takes_all_its_credits_or_none() -> None:
    admission = Admission(10, None)
    admission.acquire(7)
    with pytest.raises(QueueFull, match=r"queue is full \(10 tasks\); retry later$"):
        admission.acquire(4)  # only 3 left: nothing is taken
    assert admission.in_use == 7
    admission.acquire(3)
    assert admission.in_use == 10
    admission.release(5)
    admission.release(50)  # more than held: down to 0, never below
    assert admission.in_use == 0


def test_a_blocked_submitter_gets_in_when_room_is_given_back() -> None:
    admission = Admission(4, WAIT_S)
    admission.acquire(4)
    admitted = threading.Event()

    def submit() -> None:
        admission.acquire(3)
        admitted.set()

    thread = threading.Thread(target=submit)
    thread.start()
    admission.release(2)  # not enough room for 3 yet
    assert not admitted.wait(0.05)
    admission.release(1)
    assert admitted.wait(WAIT_S)
    thread.join(WAIT_S)
    assert admission.in_use == 4


def test_waiting_ends_in_queue_full_and_an_oversized_batch_fails_at_once() -> None:
    admission = Admission(2, 0.01)
    admission.acquire(2)
    with pytest.raises(QueueFull, match=r"waited 0\.01s"):
        admission.acquire(1)
    admission.release(2)
    with pytest.raises(QueueFull):
        admission.acquire(3)  # could never fit: no wait
    assert admission.in_use == 0


class _CountingCondition(threading.Condition):
    """A condition that counts its wake-up calls."""

    def __init__(self, lock: threading.Lock) -> None:
        super().__init__(lock)
        self.wakeups = 0

    def notify_all(self) -> None:
        self.wakeups += 1
        super().notify_all()


def _blocked(admission: Admission, count: int, admitted: threading.Event) -> threading.Thread:
    """A submitter of ``count`` that blocks for room; returned once it waits."""

    def submit() -> None:
        admission.acquire(count)
        admitted.set()

    thread = threading.Thread(target=submit)
    before = len(admission._waiting)
    thread.start()
    assert _until(lambda: len(admission._waiting) > before)
    return thread


def _until(condition: object, timeout: float = WAIT_S) -> bool:
    done = threading.Event()
    deadline = threading.Timer(timeout, done.set)
    deadline.start()
    try:
        while not done.is_set():
            if condition():  # type: ignore[operator]
                return True
            done.wait(0.001)
        return False
    finally:
        deadline.cancel()


def test_a_release_wakes_blocked_submitters_only_when_the_smallest_one_fits() -> None:
    admission = Admission(10, WAIT_S)
    counting = _CountingCondition(admission._lock)  # the lock the admission takes
    admission._cond = counting
    admission.acquire(10)
    big, small = threading.Event(), threading.Event()
    waiting_big = _blocked(admission, 5, big)
    for _ in range(3):
        admission.release(1)  # 3 free: the submitter of 5 is not woken for nothing
    assert counting.wakeups == 0 and not big.is_set()
    waiting_small = _blocked(admission, 4, small)
    admission.release(1)  # 4 free: the submitter of 4 fits (the one of 5 does not)
    assert counting.wakeups == 1
    assert small.wait(WAIT_S) and not big.is_set()
    admission.release(4)  # 4 free: still not enough for 5, nobody is woken
    assert counting.wakeups == 1 and not big.is_set()
    admission.release(1)  # 5 free: the submitter of 5 fits
    assert big.wait(WAIT_S)
    waiting_big.join(WAIT_S)
    waiting_small.join(WAIT_S)
    assert counting.wakeups == 2 and admission.in_use == 10 and admission._waiting == []
