"""The health core: heartbeats, check results, component and overall status.

A pure class (no threads, no clock, no I/O): every call that depends on time takes
``now``, a monotonic float in seconds. The health monitor actor shell calls
:meth:`HealthCore.tick` on a timer, forwards heartbeats and check results, and sends
the :class:`~messages.HealthChanged` messages and unresponsive names it gets back.

A component's status is the worse of two inputs:

* its heartbeat, if it is expected to send them: HEALTHY while heartbeats are on time,
  DEGRADED once none came for ``degraded_after_s`` (if set), UNHEALTHY -- *unresponsive*
  -- once none came for ``heartbeat_timeout_s``. The clock of a component that has not
  sent a heartbeat yet starts at the first call that evaluates it (registration, a tick);
* the last result of its registered check (HEALTHY until one is reported).

The overall status is UNHEALTHY if any critical component is UNHEALTHY, DEGRADED if any
component is not HEALTHY, else HEALTHY. Its changes are reported too, under the reserved
component name :data:`OVERALL`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

from messages import HealthChanged, HealthStatus

__all__ = ["OVERALL", "HealthCore"]

OVERALL: Final = "overall"
"""Component name of the overall status in :class:`~messages.HealthChanged` messages;
reserved, so no component may register under it."""

_RANK: Final = {HealthStatus.HEALTHY: 0, HealthStatus.DEGRADED: 1, HealthStatus.UNHEALTHY: 2}


def _worse(a: HealthStatus, b: HealthStatus) -> HealthStatus:
    return a if _RANK[a] >= _RANK[b] else b


@dataclass(slots=True)
class _Component:
    critical: bool
    expects_heartbeat: bool
    last_heartbeat: float | None = None
    clock_start: float | None = None  # the deadline's origin until the first heartbeat
    check: HealthStatus = HealthStatus.HEALTHY
    check_reason: str = ""
    status: HealthStatus = HealthStatus.HEALTHY
    reason: str = ""
    unresponsive: bool = False  # reported unresponsive, until the next heartbeat


class HealthCore:
    """Health of registered components and of the whole runner.

    ``heartbeat_timeout_s`` (> 0): silence after which a component is unresponsive.
    ``degraded_after_s`` (optional, 0 < it < the timeout): silence after which it is
    DEGRADED, an early warning before it is declared unresponsive.
    Unknown component names raise ``KeyError``.
    """

    def __init__(self, heartbeat_timeout_s: float, degraded_after_s: float | None = None) -> None:
        """Validate the timeouts; raises ``ValueError`` if they are out of range."""
        if not heartbeat_timeout_s > 0.0:
            raise ValueError(f"heartbeat_timeout_s must be > 0, got {heartbeat_timeout_s!r}")
        if degraded_after_s is not None and not 0.0 < degraded_after_s < heartbeat_timeout_s:
            raise ValueError(
                f"degraded_after_s must be in (0, {heartbeat_timeout_s}), got {degraded_after_s!r}"
            )
        self._timeout = heartbeat_timeout_s
        self._degraded_after = degraded_after_s
        self._components: dict[str, _Component] = {}
        self._overall = HealthStatus.HEALTHY

    # -- membership ---------------------------------------------------------------------

    def register(
        self,
        name: str,
        critical: bool = False,
        *,
        expects_heartbeat: bool = True,
        now: float | None = None,
    ) -> None:
        """Start watching a component, HEALTHY at first.

        ``critical``: its being UNHEALTHY makes the runner UNHEALTHY (not ready), and its
        being unresponsive makes the runner not live. ``expects_heartbeat=False`` is for
        components known only by checks (a store, say), which must never time out.
        ``now`` starts its heartbeat clock; if omitted, the next :meth:`tick` does.
        Raises ``ValueError`` if the name is taken or is :data:`OVERALL`.
        """
        if name == OVERALL:
            raise ValueError(f"{OVERALL!r} is reserved for the overall status")
        if name in self._components:
            raise ValueError(f"component {name!r} is already registered")
        self._components[name] = _Component(
            critical=critical, expects_heartbeat=expects_heartbeat, clock_start=now
        )

    def deregister(self, name: str) -> list[HealthChanged]:
        """Stop watching a component; returns the overall change this causes, if any."""
        self._get(name)
        del self._components[name]
        return self._update_overall()

    def components(self) -> tuple[str, ...]:
        """Registered component names, sorted."""
        return tuple(sorted(self._components))

    # -- inputs -------------------------------------------------------------------------

    def heartbeat(self, name: str, now: float) -> list[HealthChanged]:
        """Record a heartbeat; returns the status changes it causes (a recovery, say).

        A heartbeat also clears the component's unresponsive mark, so a later silence is
        reported again.
        """
        return self.heartbeats((name,), now)

    def heartbeats(self, names: Iterable[str], now: float) -> list[HealthChanged]:
        """:meth:`heartbeat` of each of ``names``, in that order, with the overall status
        evaluated once at the end (a monitor's tick beats for every actor that made
        progress; the overall status is a look at every component, once is enough, and
        the components' changes come without overall ones in between)."""
        changes: list[HealthChanged] = []
        for name in names:
            component = self._get(name)
            if component.last_heartbeat is None or now > component.last_heartbeat:
                component.last_heartbeat = now  # never move it back on a reordered message
            component.unresponsive = False
            changes += self._evaluate(name, component, now)
        return changes + self._update_overall()

    def report_check(
        self, name: str, status: HealthStatus, reason: str, now: float
    ) -> list[HealthChanged]:
        """Record the result of the component's check; returns the changes it causes."""
        component = self._get(name)
        component.check = status
        component.check_reason = reason
        return self._evaluate(name, component, now) + self._update_overall()

    def tick(self, now: float) -> tuple[list[HealthChanged], list[str]]:
        """Re-evaluate every component at ``now``.

        Returns the status changes (components in name order, then the overall one) and
        the names of components that became unresponsive since the last report: each is
        reported once, until it sends a heartbeat again.
        """
        changes: list[HealthChanged] = []
        unresponsive: list[str] = []
        for name in sorted(self._components):
            component = self._components[name]
            changes += self._evaluate(name, component, now)
            if self._silent_for(component, now) >= self._timeout and not component.unresponsive:
                component.unresponsive = True
                unresponsive.append(name)
        return changes + self._update_overall(), unresponsive

    # -- outputs ------------------------------------------------------------------------

    def status(self, name: str | None = None) -> HealthStatus:
        """A component's status as last evaluated, or the overall status if ``name`` is None."""
        if name is None:
            return self._overall
        return self._get(name).status

    def liveness(self) -> bool:
        """True unless a critical component has been reported unresponsive (by a tick)."""
        return not any(c.critical and c.unresponsive for c in self._components.values())

    def readiness(self) -> bool:
        """True unless the overall status is UNHEALTHY (the runner should take no work)."""
        return self._overall is not HealthStatus.UNHEALTHY

    def snapshot(self) -> dict[str, Any]:
        """The whole health picture as a JSON-able dict, for ``runner.status()``."""
        return {
            "status": self._overall.value,
            "liveness": self.liveness(),
            "readiness": self.readiness(),
            "components": {
                name: {
                    "status": component.status.value,
                    "reason": component.reason,
                    "critical": component.critical,
                    "unresponsive": component.unresponsive,
                    "last_heartbeat": component.last_heartbeat,
                    "check": component.check.value,
                }
                for name, component in sorted(self._components.items())
            },
        }

    # -- internals ----------------------------------------------------------------------

    def _get(self, name: str) -> _Component:
        try:
            return self._components[name]
        except KeyError:
            raise KeyError(f"no health component named {name!r}") from None

    def silent_for(self, name: str, now: float) -> float:
        """Seconds without a heartbeat from ``name`` at ``now`` (0 if it sends none)."""
        return self._silent_for(self._get(name), now)

    def _silent_for(self, component: _Component, now: float) -> float:
        """Seconds without a heartbeat (0 for components that send none)."""
        if not component.expects_heartbeat:
            return 0.0
        if component.last_heartbeat is not None:
            origin = component.last_heartbeat
        else:
            if component.clock_start is None:
                component.clock_start = now
            origin = component.clock_start
        return max(0.0, now - origin)

    def _evaluate(self, name: str, component: _Component, now: float) -> list[HealthChanged]:
        silent = self._silent_for(component, now)
        if silent >= self._timeout:
            beat, beat_reason = (
                HealthStatus.UNHEALTHY,
                f"no heartbeat for {silent:.3g} s (timeout {self._timeout:g} s)",
            )
        elif self._degraded_after is not None and silent >= self._degraded_after:
            beat, beat_reason = HealthStatus.DEGRADED, f"heartbeat late by {silent:.3g} s"
        else:
            beat, beat_reason = HealthStatus.HEALTHY, ""
        status = _worse(beat, component.check)
        if status is HealthStatus.HEALTHY:
            reason = ""
        elif _RANK[beat] >= _RANK[component.check]:
            reason = beat_reason
        else:
            reason = f"check: {component.check_reason}" if component.check_reason else "check"
        previous = component.status
        component.status, component.reason = status, reason
        if status is previous:
            return []
        return [
            HealthChanged(
                component=name,
                previous=previous,
                current=status,
                reason=reason or "recovered",  # only HEALTHY has an empty reason
            )
        ]

    def _update_overall(self) -> list[HealthChanged]:
        overall, reason = HealthStatus.HEALTHY, ""
        for name in sorted(self._components):
            component = self._components[name]
            if component.status is HealthStatus.HEALTHY:
                continue
            if component.critical and component.status is HealthStatus.UNHEALTHY:
                overall, reason = HealthStatus.UNHEALTHY, f"critical component {name!r} unhealthy"
                break
            if overall is HealthStatus.HEALTHY:
                overall, reason = HealthStatus.DEGRADED, f"component {name!r} {component.status}"
        previous = self._overall
        self._overall = overall
        if overall is previous:
            return []
        return [
            HealthChanged(
                component=OVERALL, previous=previous, current=overall, reason=reason or "recovered"
            )
        ]
