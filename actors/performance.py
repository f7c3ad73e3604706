"""The performance tracker actor: outcomes and latencies per agent and per task type.

Agents report outcomes in batches; the router reports routing+assignment latencies. Every
``interval_s`` the tracker sends each agent's recent success rate and latency to the
registry, which passes them on to the router (the ``performance`` and ``bandit``
strategies use them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from actors.base import Actor
from actors.core.performance import PerformanceCore
from actors.pipeline import TickTimer, Wiring
from messages.pipeline import (
    GetPerformance,
    InjectCrash,
    Outcomes,
    PerfUpdate,
    RouteLatencies,
    Tick,
)

__all__ = ["PerformanceActor", "PerformanceState"]


@dataclass
class PerformanceState:
    """Survives restarts: the statistics and what was last sent to the registry."""

    core: PerformanceCore = field(default_factory=PerformanceCore)
    timer: TickTimer = field(default_factory=TickTimer)
    sent: dict[str, tuple[float, float, int]] = field(default_factory=dict)


class PerformanceActor(Actor):
    """Records outcomes; publishes per-agent performance to the registry periodically."""

    def __init__(self, state: PerformanceState, wiring: Wiring, interval_s: float) -> None:
        self.state = state
        self.wiring = wiring
        self.interval_s = interval_s

    def on_start(self) -> None:
        self._arm()

    def receive(self, message: Any) -> Any:
        core = self.state.core
        if isinstance(message, Outcomes):
            core.record_outcomes(message.items, self.wiring.clock.monotonic())
        elif isinstance(message, RouteLatencies):
            core.record_route_latencies(message.values)
        elif isinstance(message, Tick):
            self.state.timer.fired()
            self._publish()
            self._arm()
        elif isinstance(message, GetPerformance):
            return core.summary(self.wiring.clock.monotonic())
        elif isinstance(message, InjectCrash):
            raise RuntimeError(message.reason)
        else:
            raise TypeError(f"performance got {type(message).__name__}")
        return None

    def statistics(self) -> dict[str, Any]:
        core = self.state.core
        return {"agents": len(core.agents()), "route_samples": core.route_latency.count}

    def _publish(self) -> None:
        state = self.state
        changed = []
        for agent_id in state.core.agents():
            figures = state.core.agent_performance(agent_id)
            if state.sent.get(agent_id) != figures:
                state.sent[agent_id] = figures
                changed.append((agent_id, *figures))
        if changed:
            self.wiring.peers.get("registry").tell(PerfUpdate.fast(agents=tuple(changed)))

    def _arm(self) -> None:
        now = self.wiring.clock.monotonic()
        self.state.timer.arm(self.wiring.timers, self.context.self_ref, now + self.interval_s, now)
