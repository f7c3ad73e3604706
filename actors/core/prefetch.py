"""How many tasks an agent may hold ahead of its free slots: the router's prefetch.

Without a prefetch a task leaves the queue only for an agent's free slot, so priorities are
strict, but every freed slot costs a round trip (agent -> router -> queue -> router ->
agent) before the next task starts. With one, the router also gives an agent up to
``buffer`` more tasks; they wait in the agent's own line and start the moment a slot frees.

:class:`PrefetchPolicy` decides the buffer of one agent, the larger of two parts:

* **fixed**: ``ceil(multiple x max_concurrency)`` tasks (``RunnerConfig.prefetch``, as
  Dramatiq and Celery prefetch a multiple of their worker threads);
* **adaptive**: as many tasks as the agent finishes in ``window_ms`` at its recent pace,
  ``floor(window_ms x max_concurrency / latency_ms)``, with ``latency_ms`` an exponentially
  weighted mean of its attempts' latencies (:func:`smoothed`); never more than
  ``ceil(max_multiple x max_concurrency)``, and none before the agent has finished an
  attempt.

The adaptive part bounds what a prefetch costs in *time* rather than in tasks: a task of
higher priority submitted after the buffered ones waits behind at most about ``window_ms``
of their work, and an agent whose attempts take longer than ``window_ms`` per slot buffers
nothing (strict priorities, and no tasks held up behind a slow agent while another is idle).
Short tasks, where a round trip per slot costs more than the task, get a deep buffer.

Pure functions of their arguments: no clock, no threads.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

__all__ = ["MIN_LATENCY_MS", "SMOOTHING", "PrefetchPolicy", "smoothed"]

SMOOTHING: Final = 0.1
"""Weight of each new latency in the agent's mean (about the last 10 attempts count)."""
MIN_LATENCY_MS: Final = 0.001
"""Latencies below this count as this (a no-op measures about 0.005 ms)."""


def smoothed(
    mean: float | None, latencies_ms: Iterable[float], alpha: float = SMOOTHING
) -> float | None:
    """``mean`` moved toward each latency in turn by ``alpha`` of the difference; the first
    latency is the mean when there is none yet (``None``)."""
    for latency in latencies_ms:
        mean = latency if mean is None else mean + alpha * (latency - mean)
    return mean


@dataclass(frozen=True, slots=True)
class PrefetchPolicy:
    """The buffer an agent gets: see the module docstring. All zero: no prefetch."""

    multiple: float = 0.0
    """Fixed part, a multiple of the agent's max_concurrency (rounded up)."""
    window_ms: float = 0.0
    """Adaptive part: the agent's work, in milliseconds at its recent pace, it may hold."""
    max_multiple: float = 32.0
    """Cap of the adaptive part, a multiple of max_concurrency (rounded up)."""

    def __post_init__(self) -> None:
        for name in ("multiple", "window_ms", "max_multiple"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ValueError(
                    f"PrefetchPolicy.{name} must be a finite number >= 0, not {value!r}"
                )

    @property
    def adaptive(self) -> bool:
        """True when the buffer depends on the agent's latency."""
        return self.window_ms > 0 and self.max_multiple > 0

    def buffer(self, max_concurrency: int, latency_ms: float | None) -> int:
        """Tasks an agent with ``max_concurrency`` slots and this smoothed attempt latency
        (None: none finished yet) may hold beyond its slots."""
        fixed = math.ceil(self.multiple * max_concurrency)
        if latency_ms is None or not self.adaptive:
            return fixed
        pace = self.window_ms * max_concurrency / max(latency_ms, MIN_LATENCY_MS)
        cap = math.ceil(self.max_multiple * max_concurrency)
        return max(fixed, min(cap, math.floor(pace)))
