"""The health monitor actor: heartbeats of every watched actor, health checks, liveness
and readiness.

Every ``interval_s`` it reads each watched actor's counters (without a message, so a busy
actor is not delayed): an actor that processed something, or has nothing to do, has sent
a heartbeat. One whose mailbox waits while it makes no progress for ``heartbeat_timeout_s``
is UNHEALTHY and reported to its supervisor (``ReportUnresponsive``), which replaces it.
Registered checks (``TaskRunner.add_health_check``) run on a small pool with a timeout.
An agent's health goes to the registry, so the router stops choosing a sick agent.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

from actors.base import Actor
from actors.cell import ActorRef
from actors.core.health import HealthCore
from actors.pipeline import TickTimer, Wiring
from messages.health import HealthChanged, HealthStatus
from messages.pipeline import (
    AgentHealth,
    GetHealth,
    InjectCrash,
    ReportUnresponsive,
    Tick,
    Unwatch,
    Watch,
)

__all__ = ["HealthActor", "HealthCheck", "HealthState", "RegisterCheck"]

CheckFn = Callable[[], bool | HealthStatus | tuple[HealthStatus, str]]


@dataclass(frozen=True)
class HealthCheck:
    """A named check: returns True/False, a HealthStatus, or (status, reason)."""

    name: str
    fn: CheckFn
    timeout_s: float = 1.0
    critical: bool = False


@dataclass(frozen=True)
class RegisterCheck:
    """Host -> health monitor: run this check every interval."""

    check: HealthCheck


@dataclass
class _Watched:
    ref: ActorRef
    supervisor: ActorRef | None
    agent_id: str | None
    processed: int = -1  # processed + keepalives at the last tick


@dataclass
class HealthState:
    """Survives restarts: the health core, the watched actors and the checks."""

    core: HealthCore
    watched: dict[str, _Watched] = field(default_factory=dict)
    checks: dict[str, HealthCheck] = field(default_factory=dict)
    timer: TickTimer = field(default_factory=TickTimer)
    pool: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(2, thread_name_prefix="arbiter-health")
    )
    reported: int = 0


class HealthActor(Actor):
    """Watches actors and checks; answers ``GetHealth`` with the whole picture."""

    def __init__(self, state: HealthState, wiring: Wiring, interval_s: float) -> None:
        self.state = state
        self.wiring = wiring
        self.interval_s = interval_s

    def on_start(self) -> None:
        self._arm()

    def post_stop(self) -> None:
        self.state.pool.shutdown(wait=False, cancel_futures=True)

    def pre_restart(self, reason: BaseException | None) -> None:
        """Keep the check pool for the next incarnation."""

    def receive(self, message: Any) -> Any:
        state = self.state
        now = self.wiring.clock.monotonic()
        if isinstance(message, Watch):
            if message.name not in state.watched:
                state.core.register(message.name, message.critical, now=now)
            state.watched[message.name] = _Watched(
                message.ref, message.supervisor, message.agent_id
            )
            return True
        if isinstance(message, Unwatch):
            if state.watched.pop(message.name, None) is not None:
                self._changed(state.core.deregister(message.name))
            return True
        if isinstance(message, RegisterCheck):
            check = message.check
            if check.name in state.checks or check.name in state.watched:
                return ValueError(f"health component {check.name!r} already exists")
            state.core.register(check.name, check.critical, expects_heartbeat=False, now=now)
            state.checks[check.name] = check
            return True
        if isinstance(message, Tick):
            state.timer.fired()
            self._tick()
            self._arm()
            return None
        if isinstance(message, GetHealth):
            return state.core.snapshot()
        if isinstance(message, InjectCrash):
            raise RuntimeError(message.reason)
        raise TypeError(f"health got {type(message).__name__}")

    def statistics(self) -> dict[str, Any]:
        return {
            "watched": len(self.state.watched),
            "checks": len(self.state.checks),
            "overall": self.state.core.status().value,
            "reported_unresponsive": self.state.reported,
        }

    # ------------------------------------------------------------------
    def _tick(self) -> None:
        state = self.state
        clock = self.wiring.clock
        now = clock.monotonic()
        alive: list[str] = []
        for name, watched in state.watched.items():
            pulse = watched.ref.pulse()
            progressed = pulse.work != watched.processed
            watched.processed = pulse.work
            if pulse.state == "running" and (progressed or not pulse.has_mail):
                alive.append(name)
        changes = state.core.heartbeats(alive, now)
        changes += self._run_checks(now)
        tick_changes, unresponsive = state.core.tick(now)
        changes += tick_changes
        self._changed(changes)
        for name in unresponsive:
            watched_actor = state.watched.get(name)
            if watched_actor is None or watched_actor.supervisor is None:
                continue
            state.reported += 1
            silent_s = state.core.silent_for(name, now)
            self.context.log.warning("health.unresponsive", component=name, silent_s=silent_s)
            watched_actor.supervisor.tell(ReportUnresponsive.fast(child=name, busy_s=silent_s))

    def _run_checks(self, now: float) -> list[HealthChanged]:
        state = self.state
        if not state.checks:
            return []
        futures: list[tuple[HealthCheck, Future[Any]]] = [
            (check, state.pool.submit(check.fn)) for check in state.checks.values()
        ]
        changes: list[HealthChanged] = []
        for check, future in futures:
            try:
                outcome = future.result(timeout=check.timeout_s)
            except FutureTimeout:
                future.cancel()
                status, reason = HealthStatus.UNHEALTHY, f"timed out after {check.timeout_s}s"
            except Exception as exc:  # noqa: BLE001 - a failing check is a health verdict
                status, reason = HealthStatus.UNHEALTHY, f"raised {exc!r}"
            else:
                status, reason = _verdict(outcome)
            changes += state.core.report_check(check.name, status, reason, now)
        return changes

    def _changed(self, changes: list[HealthChanged]) -> None:
        state = self.state
        hub = self.wiring.hub
        for change in changes:
            self.context.log.info(
                "health.changed",
                component=change.component,
                previous=change.previous.value,
                current=change.current.value,
                reason=change.reason,
            )
            hub.publish(
                "health.changed",
                None,
                component=change.component,
                previous=change.previous.value,
                current=change.current.value,
                reason=change.reason,
            )
            watched = state.watched.get(change.component)
            if watched is not None and watched.agent_id is not None:
                self.wiring.peers.get("registry").tell(
                    AgentHealth.fast(agent_id=watched.agent_id, status=change.current)
                )

    def _arm(self) -> None:
        now = self.wiring.clock.monotonic()
        self.state.timer.arm(self.wiring.timers, self.context.self_ref, now + self.interval_s, now)


def _verdict(outcome: Any) -> tuple[HealthStatus, str]:
    if isinstance(outcome, HealthStatus):
        return outcome, ""
    if isinstance(outcome, tuple) and len(outcome) == 2 and isinstance(outcome[0], HealthStatus):
        return outcome[0], str(outcome[1])
    if outcome is True:
        return HealthStatus.HEALTHY, ""
    return HealthStatus.UNHEALTHY, f"check returned {outcome!r}"
