"""Handlers the crash tests load into ``arbiter worker`` subprocesses (``module:function``)."""

from __future__ import annotations

import os
import threading

from actors.agent import TaskContext

_pause = threading.Event()  # never set: a sleep that is not a time.sleep


def append_id(task: TaskContext) -> None:
    """Take ~5 ms, then append ``task_id`` and a newline to the file $ARBITER_TEST_LOG.

    One unbuffered ``write`` of one whole line in append mode: once it returns, the line is
    in the kernel and survives a SIGKILL of the worker (no fsync needed: the crash tests
    kill processes, not the machine), and concurrent attempts never interleave.
    """
    _pause.wait(0.005)
    fd = os.open(os.environ["ARBITER_TEST_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{task.task_id}\n".encode())
    finally:
        os.close(fd)


def fail_always(task: TaskContext) -> None:
    """Fail every attempt (for dead-letter tests)."""
    raise RuntimeError(f"{task.type} always fails")
