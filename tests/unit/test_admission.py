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
