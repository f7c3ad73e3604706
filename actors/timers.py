"""One timer thread for delayed actions (restart backoff, retry due times, ticks)."""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable

import structlog

__all__ = ["TimerService"]

_log = structlog.get_logger("arbiter.timers")


class TimerService:
    """Runs callbacks at monotonic due times on a single daemon thread.

    Callbacks must be quick (typically a ``tell``); one that raises is logged with the
    stable event name ``timers.callback_failed`` and the service goes on.
    """

    def __init__(self, name: str = "arbiter-timers") -> None:
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._cancelled: set[int] = set()
        self._counter = itertools.count()
        self._cond = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> int:
        """Run ``callback`` after ``delay_s`` seconds; returns a handle for :meth:`cancel`."""
        handle = next(self._counter)
        entry = (time.monotonic() + max(0.0, delay_s), handle, callback)
        with self._cond:
            heapq.heappush(self._heap, entry)
            if self._heap[0] is entry:  # due before everything else: the thread must know
                self._cond.notify()
        return handle

    def cancel(self, handle: int) -> None:
        """Do not run the callback of ``handle`` (no effect if it already ran)."""
        with self._cond:
            self._cancelled.add(handle)

    def pending(self) -> int:
        """Callbacks waiting to run."""
        with self._cond:
            return len(self._heap)

    def stop(self) -> None:
        """Stop the thread; callbacks not yet due are dropped (the owner stops first)."""
        with self._cond:
            self._stopped = True
            self._cond.notify()
        self._thread.join(timeout=5.0)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopped:
                    if self._heap:
                        wait = self._heap[0][0] - time.monotonic()
                        if wait <= 0:
                            break
                        self._cond.wait(wait)
                    else:
                        self._cond.wait()
                if self._stopped:
                    return
                _, handle, callback = heapq.heappop(self._heap)
                if handle in self._cancelled:
                    self._cancelled.discard(handle)
                    continue
            try:
                callback()
            except Exception as exc:  # noqa: BLE001 - a bad callback must not kill the timer thread
                _log.error("timers.callback_failed", error=repr(exc), exc_info=exc)
