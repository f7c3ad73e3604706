"""Supervision as data, and the pure decisions a supervisor makes.

Learned from Erlang/OTP's ``supervisor`` and Akka's ``SupervisorStrategy``: a child is
described by a :class:`ChildSpec`; a supervisor applies a :class:`Strategy` within a
restart intensity (:class:`RestartIntensity`), optionally spacing restarts out with a
:class:`RestartBackoff`. Nothing here has threads or a clock: time is passed in.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from actors.base import Actor

__all__ = [
    "ChildSpec",
    "Restart",
    "RestartBackoff",
    "RestartIntensity",
    "RestartPlan",
    "Strategy",
    "plan_restart",
    "should_restart",
]


class Strategy(StrEnum):
    """Which children restart when one fails."""

    ONE_FOR_ONE = "one_for_one"  # only the failed child
    ONE_FOR_ALL = "one_for_all"  # every child
    REST_FOR_ONE = "rest_for_one"  # the failed child and those started after it


class Restart(StrEnum):
    """When a child is restarted (OTP's restart types)."""

    PERMANENT = "permanent"  # always, even after a normal exit
    TRANSIENT = "transient"  # only after a failure
    TEMPORARY = "temporary"  # never


@dataclass(frozen=True, slots=True)
class ChildSpec:
    """How to make and supervise one child actor."""

    name: str
    factory: Callable[[], Actor]
    restart: Restart = Restart.PERMANENT
    shutdown_timeout_s: float = 5.0
    hang_timeout_s: float | None = None
    """Seconds one message may run before the actor counts as hung (None: the system's)."""
    dispatcher: str | None = None
    """None: the actor gets a thread of its own. A name: it shares that dispatcher's one
    thread with the other actors named to it (made on first use; see
    :class:`~actors.cell.Dispatcher`). Only for actors whose handlers never block."""

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name:
            raise ValueError(f"child name must be non-empty and without '/': {self.name!r}")
        if self.shutdown_timeout_s < 0:
            raise ValueError("shutdown_timeout_s must be >= 0")
        if self.hang_timeout_s is not None and self.hang_timeout_s <= 0:
            raise ValueError("hang_timeout_s must be > 0")
        if self.dispatcher is not None and not self.dispatcher:
            raise ValueError("a dispatcher name must be non-empty")


def should_restart(restart: Restart, *, normal: bool) -> bool:
    """Whether a child of this restart type is restarted after an exit."""
    if restart is Restart.PERMANENT:
        return True
    if restart is Restart.TRANSIENT:
        return not normal
    return False


@dataclass(frozen=True, slots=True)
class RestartPlan:
    """What a supervisor does about one failure: restart some children, remove some."""

    restart: tuple[str, ...] = ()
    remove: tuple[str, ...] = ()


def plan_restart(
    strategy: Strategy,
    children: Sequence[tuple[str, Restart]],
    failed: str,
    *,
    normal: bool = False,
) -> RestartPlan:
    """Decide which children to restart and which to remove after ``failed`` exited.

    ``children`` are (name, restart type) in start order. Siblings restarted with the
    failed child that are TEMPORARY are removed instead, as in OTP.
    """
    names = [name for name, _ in children]
    if failed not in names:
        raise ValueError(f"{failed!r} is not a child")
    restart_of = dict(children)
    if not should_restart(restart_of[failed], normal=normal):
        return RestartPlan(remove=(failed,))
    if strategy is Strategy.ONE_FOR_ONE:
        return RestartPlan(restart=(failed,))
    affected = names if strategy is Strategy.ONE_FOR_ALL else names[names.index(failed) :]
    restart = tuple(n for n in affected if n == failed or restart_of[n] is not Restart.TEMPORARY)
    remove = tuple(n for n in affected if n not in restart)
    return RestartPlan(restart=restart, remove=remove)


@dataclass(slots=True)
class RestartIntensity:
    """At most ``max_restarts`` restarts within any ``within_s`` seconds (OTP intensity).

    ``record(now)`` counts one restart and says whether it is allowed; when it is not,
    the supervisor gives up and escalates.
    """

    max_restarts: int = 1
    within_s: float = 5.0
    _times: deque[float] = field(default_factory=deque)

    def __post_init__(self) -> None:
        if self.max_restarts < 0 or self.within_s <= 0:
            raise ValueError("max_restarts must be >= 0 and within_s > 0")

    def record(self, now: float) -> bool:
        """Count a restart at ``now``; False when that exceeds the intensity."""
        self._times.append(now)
        horizon = now - self.within_s
        while self._times and self._times[0] <= horizon:
            self._times.popleft()
        return len(self._times) <= self.max_restarts

    def recent(self) -> int:
        """Restarts counted in the current window."""
        return len(self._times)


@dataclass(slots=True)
class RestartBackoff:
    """Exponential delay between consecutive restarts of one child (Akka's BackoffSupervisor).

    The n-th consecutive restart waits ``min(max_s, min_s * 2**n) * (1 + random_factor * r)``
    with r in [0, 1). A child that ran for ``reset_after_s`` since its last restart starts
    over at ``min_s``.
    """

    min_s: float = 0.01
    max_s: float = 5.0
    random_factor: float = 0.2
    reset_after_s: float = 10.0
    _streak: dict[str, int] = field(default_factory=dict)
    _last: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not (0 <= self.min_s <= self.max_s) or self.random_factor < 0:
            raise ValueError("need 0 <= min_s <= max_s and random_factor >= 0")

    def delay(self, child: str, now: float, rand: Callable[[], float]) -> float:
        """Seconds to wait before restarting ``child`` now; counts the restart."""
        last = self._last.get(child)
        if last is None or now - last >= self.reset_after_s:
            self._streak[child] = 0
        streak = self._streak.get(child, 0)
        self._streak[child] = streak + 1
        self._last[child] = now
        base = self.min_s * math.pow(2.0, min(streak, 60))
        return min(self.max_s, base) * (1.0 + self.random_factor * rand())
