"""The dead-letter office: every message that could not be delivered ends up here."""

from __future__ import annotations

import threading
from collections import Counter, deque
from collections.abc import Callable

import structlog

from messages.supervision import DeadLetter

__all__ = ["DeadLetterOffice"]

_log = structlog.get_logger("arbiter.supervisor")


class DeadLetterOffice:
    """Keeps the most recent dead letters, counts all of them and logs each one.

    Thread-safe: any actor's thread, the watchdog or a host thread may publish.
    """

    def __init__(self, capacity: int = 10_000) -> None:
        self._lock = threading.Lock()
        self._recent: deque[DeadLetter] = deque(maxlen=capacity)
        self._by_reason: Counter[str] = Counter()
        self._total = 0
        self._listeners: list[Callable[[DeadLetter], None]] = []

    def publish(self, letter: DeadLetter) -> None:
        """Record, count and log one dead letter, then tell the listeners."""
        with self._lock:
            self._recent.append(letter)
            self._total += 1
            self._by_reason[letter.reason.split(":", 1)[0]] += 1
            listeners = tuple(self._listeners)
        _log.warning(
            "supervisor.dead_letter",
            recipient=letter.recipient,
            reason=letter.reason,
            message_type=type(letter.message).__name__,
            exception_type=letter.exception_type,
        )
        for listener in listeners:
            listener(letter)

    def subscribe(self, listener: Callable[[DeadLetter], None]) -> None:
        """Call ``listener`` with every dead letter published from now on."""
        with self._lock:
            self._listeners.append(listener)

    def recent(self) -> tuple[DeadLetter, ...]:
        """The most recent dead letters, oldest first (bounded by the capacity)."""
        with self._lock:
            return tuple(self._recent)

    @property
    def total(self) -> int:
        """How many dead letters were published in all."""
        return self._total

    def counts_by_reason(self) -> dict[str, int]:
        """Dead letters counted by the first word of their reason."""
        with self._lock:
            return dict(self._by_reason)
