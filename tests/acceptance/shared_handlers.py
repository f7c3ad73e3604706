"""Handlers the multi-runner tests load into ``arbiter worker`` subprocesses."""

from __future__ import annotations

import os
import threading
import time

from actors.agent import TaskContext

_pause = threading.Event()  # never set: a sleep that is not a time.sleep


def _append(line: str) -> None:
    """One unbuffered ``write`` of one whole line in append mode to $ARBITER_TEST_LOG: it
    survives a SIGKILL of the worker once written, and lines of concurrent attempts (of
    several processes) never interleave."""
    fd = os.open(os.environ["ARBITER_TEST_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def record(task: TaskContext) -> None:
    """Take ~2 ms, then log ``<pid> <task_id> <start_ns> <end_ns>``: which process executed
    which task, and when (CLOCK_MONOTONIC: one clock for every process of the machine)."""
    start = time.monotonic_ns()
    _pause.wait(0.002)
    _append(f"{os.getpid()} {task.task_id} {start} {time.monotonic_ns()}\n")


def stamp(task: TaskContext) -> None:
    """Log ``<payload n> <wall-clock time>`` as soon as the task starts."""
    _append(f"{task.payload['n']} {time.time():.6f}\n")


def slow_pid(task: TaskContext) -> int:
    """Log ``start <pid> <task_id>``, take 1.5 s, log ``end <pid> <task_id>``; return the pid."""
    _append(f"start {os.getpid()} {task.task_id}\n")
    _pause.wait(1.5)
    _append(f"end {os.getpid()} {task.task_id}\n")
    return os.getpid()
