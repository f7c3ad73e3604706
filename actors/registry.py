"""The registry actor: the agents, their capabilities, health and performance.

Every change is announced to the router as an :class:`~messages.pipeline.AgentsSnapshot`
(agents are few; a whole snapshot is simpler and safer than deltas). A restarted registry
re-announces the agents it keeps in its state box.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from actors.base import Actor
from actors.cell import ActorRef
from actors.core.registry import RegistryCore
from actors.pipeline import Wiring
from messages.errors import UnknownAgent
from messages.health import HealthStatus
from messages.pipeline import (
    AgentHealth,
    AgentsSnapshot,
    DeregisterAgent,
    InjectCrash,
    PerfUpdate,
    RegisterAgent,
)
from messages.routing import AgentView

__all__ = ["RegistryActor", "RegistryState"]


@dataclass
class RegistryState:
    """Survives restarts: the agents and their executors' refs."""

    core: RegistryCore = field(default_factory=RegistryCore)
    refs: dict[str, ActorRef] = field(default_factory=dict)
    snapshots: int = 0


class RegistryActor(Actor):
    """Keeps the agents; answers RegisterAgent / DeregisterAgent with the agent's view."""

    def __init__(self, state: RegistryState, wiring: Wiring) -> None:
        self.state = state
        self.wiring = wiring

    def on_start(self) -> None:
        if self.state.refs:
            self._announce()

    def receive(self, message: Any) -> Any:
        state = self.state
        hub = self.wiring.hub
        if isinstance(message, RegisterAgent):
            spec = message.spec
            if spec.agent_id in state.core:
                return ValueError(f"agent {spec.agent_id!r} is already registered")
            view = state.core.register(spec)
            state.refs[spec.agent_id] = message.ref
            self._announce()
            hub.publish(
                "agent.registered",
                None,
                agent_id=spec.agent_id,
                capabilities=tuple(sorted(spec.capabilities)),
                max_concurrency=spec.max_concurrency,
            )
            return view
        if isinstance(message, DeregisterAgent):
            if message.agent_id not in state.core:
                return UnknownAgent(f"no agent {message.agent_id!r} is registered")
            state.core.deregister(message.agent_id)
            state.refs.pop(message.agent_id, None)
            self._announce()
            hub.publish("agent.deregistered", None, agent_id=message.agent_id)
            return True
        if isinstance(message, AgentHealth):
            if message.agent_id in state.core and state.core.set_health(
                message.agent_id, message.status is not HealthStatus.UNHEALTHY
            ):
                self._announce()
            return None
        if isinstance(message, PerfUpdate):
            changed = False
            for agent_id, success_rate, latency_ms, samples in message.agents:
                if agent_id in state.core:
                    state.core.update_performance(agent_id, success_rate, latency_ms, samples)
                    changed = True
            if changed:
                self._announce()
            return None
        if isinstance(message, InjectCrash):
            raise RuntimeError(message.reason)
        raise TypeError(f"registry got {type(message).__name__}")

    def statistics(self) -> dict[str, Any]:
        return {**self.state.core.statistics(), "snapshots": self.state.snapshots}

    def views(self) -> tuple[AgentView, ...]:
        """The agents as the router will see them."""
        return self.state.core.views()

    def _announce(self) -> None:
        state = self.state
        state.snapshots += 1
        self.wiring.peers.get("router").tell(
            AgentsSnapshot.fast(agents=state.core.views(), refs=tuple(sorted(state.refs.items())))
        )
