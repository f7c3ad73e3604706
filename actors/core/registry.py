"""The agent registry core: who the agents are, what they run now, how healthy they are.

A pure class (no threads, no clock, no I/O): the registry actor shell owns one instance
and turns its answers into messages. It keeps, per agent:

* the :class:`~messages.AgentSpec` it registered with (capabilities, max_concurrency);
* its current load, as the *set* of task ids assigned to it (a set, not a counter, so a
  duplicated assign or release message cannot skew the load, and a deregistered agent
  hands back exactly the tasks the caller must requeue);
* whether it is healthy;
* its performance as fed by the performance tracker (success rate, latency, samples).

The router decides on :class:`~messages.AgentView` snapshots built from this state.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from messages import AgentSpec, AgentView, UnknownAgent

__all__ = ["SNAPSHOT_VERSION", "RegistryCore"]

SNAPSHOT_VERSION: Final = 1
"""Version of the dict layout written by :meth:`RegistryCore.snapshot`."""


@dataclass(slots=True)
class _Agent:
    """Mutable per-agent state; never leaves the core (views are built from it)."""

    spec: AgentSpec
    tasks: set[uuid.UUID] = field(default_factory=set)
    healthy: bool = True
    success_rate: float = 1.0
    latency_ms: float = 0.0
    samples: int = 0

    def free_slots(self) -> int:
        return max(0, self.spec.max_concurrency - len(self.tasks))

    def view(self) -> AgentView:
        # model_construct: every field comes from an already-validated AgentSpec or was
        # range-checked on the way in, so the hot path skips re-validation (see DESIGN.md).
        return AgentView.fast(
            agent_id=self.spec.agent_id,
            capabilities=self.spec.capabilities,
            max_concurrency=self.spec.max_concurrency,
            load=len(self.tasks),
            healthy=self.healthy,
            success_rate=self.success_rate,
            latency_ms=self.latency_ms,
            samples=self.samples,
        )


class RegistryCore:
    """Registered agents, their load, health and performance; the registry actor's state.

    Every method that names an agent raises :class:`~messages.UnknownAgent` when no agent
    is registered under that id.
    """

    def __init__(self) -> None:
        """Start with no agents."""
        self._agents: dict[str, _Agent] = {}
        # task id -> agent id: a task runs on one agent at a time, and this index makes
        # that check (and :meth:`agent_of`) O(1).
        self._owner: dict[uuid.UUID, str] = {}
        self._registered_total = 0
        self._deregistered_total = 0
        self._assigned_total = 0
        self._released_total = 0

    # -- membership ---------------------------------------------------------------------

    def register(self, spec: AgentSpec) -> AgentView:
        """Add an agent (healthy, no load, no performance samples) and return its view.

        Raises ``ValueError`` if an agent with that id is already registered: silently
        replacing it would orphan the tasks it is running.
        """
        if spec.agent_id in self._agents:
            raise ValueError(f"agent {spec.agent_id!r} is already registered")
        agent = _Agent(spec)
        self._agents[spec.agent_id] = agent
        self._registered_total += 1
        return agent.view()

    def deregister(self, agent_id: str) -> frozenset[uuid.UUID]:
        """Remove an agent; return the ids of the tasks it had not finished.

        The caller requeues those tasks: the registry forgets them along with the agent.
        """
        agent = self._get(agent_id)
        del self._agents[agent_id]
        for task_id in agent.tasks:
            del self._owner[task_id]
        self._deregistered_total += 1
        return frozenset(agent.tasks)

    def __contains__(self, agent_id: object) -> bool:
        """True when an agent is registered under ``agent_id``."""
        return agent_id in self._agents

    def __len__(self) -> int:
        """Number of registered agents."""
        return len(self._agents)

    def __iter__(self) -> Iterator[str]:
        """Registered agent ids, sorted (a stable order for callers and tests)."""
        return iter(sorted(self._agents))

    def spec(self, agent_id: str) -> AgentSpec:
        """The spec the agent registered with."""
        return self._get(agent_id).spec

    # -- load ---------------------------------------------------------------------------

    def assign(self, agent_id: str, task_id: uuid.UUID) -> None:
        """Record that ``task_id`` now runs on ``agent_id``.

        Idempotent for the same (agent, task) pair, so a redelivered message is harmless.
        Raises ``ValueError`` if the task is assigned to another agent (a task runs on one
        agent at a time: release it first) or if the agent has no free slot (the caller
        should have checked with :meth:`can_serve` or routed on fresh views; refusing
        here keeps ``load <= max_concurrency`` an invariant rather than a hope).
        Health is not checked: it is a routing concern, and a task already handed to an
        agent that just turned unhealthy is still running there.
        """
        agent = self._get(agent_id)
        owner = self._owner.get(task_id)
        if owner == agent_id:
            return
        if owner is not None:
            raise ValueError(f"task {task_id} is already assigned to agent {owner!r}")
        if agent.free_slots() == 0:
            raise ValueError(
                f"agent {agent_id!r} is full ({agent.spec.max_concurrency} tasks running)"
            )
        agent.tasks.add(task_id)
        self._owner[task_id] = agent_id
        self._assigned_total += 1

    def release(self, agent_id: str, task_id: uuid.UUID) -> bool:
        """Record that ``task_id`` no longer runs on ``agent_id``; True if it did.

        Idempotent: releasing a task the agent does not hold (already released, or never
        assigned) changes nothing and returns False, because outcome messages may be
        delivered more than once (at-least-once).
        """
        agent = self._get(agent_id)
        if task_id not in agent.tasks:
            return False
        agent.tasks.remove(task_id)
        del self._owner[task_id]
        self._released_total += 1
        return True

    def tasks_of(self, agent_id: str) -> frozenset[uuid.UUID]:
        """Ids of the tasks currently assigned to the agent."""
        return frozenset(self._get(agent_id).tasks)

    def agent_of(self, task_id: uuid.UUID) -> str | None:
        """The agent the task is assigned to, or None if it is assigned to none."""
        return self._owner.get(task_id)

    # -- health and performance ---------------------------------------------------------

    def set_health(self, agent_id: str, healthy: bool) -> bool:
        """Mark the agent healthy or not; return True if that changed anything."""
        agent = self._get(agent_id)
        changed = agent.healthy != healthy
        agent.healthy = healthy
        return changed

    def update_performance(
        self, agent_id: str, success_rate: float, latency_ms: float, samples: int
    ) -> None:
        """Replace the agent's performance figures (as computed by the performance core).

        Raises ``ValueError`` for figures an :class:`~messages.AgentView` would refuse
        (success rate outside [0, 1], negative latency or samples, NaN), so a bad update
        fails here, at its source, not later when a view is built.
        """
        agent = self._get(agent_id)
        # `not (a <= x <= b)` is also True for NaN, which plain `x < a` checks let through.
        if not 0.0 <= success_rate <= 1.0:
            raise ValueError(f"success_rate must be in [0, 1], got {success_rate!r}")
        if not 0.0 <= latency_ms < float("inf"):
            raise ValueError(f"latency_ms must be finite and >= 0, got {latency_ms!r}")
        if samples < 0:
            raise ValueError(f"samples must be >= 0, got {samples!r}")
        agent.success_rate = float(success_rate)
        agent.latency_ms = float(latency_ms)
        agent.samples = int(samples)

    # -- views and capacity -------------------------------------------------------------

    def view(self, agent_id: str) -> AgentView:
        """A snapshot of one agent, as the router sees it."""
        return self._get(agent_id).view()

    def views(self) -> tuple[AgentView, ...]:
        """Snapshots of every agent, sorted by agent id."""
        return tuple(self._agents[agent_id].view() for agent_id in sorted(self._agents))

    def can_serve(self, key: frozenset[str]) -> bool:
        """True if some healthy agent with a free slot has every capability in ``key``.

        ``key`` is a routing key (see ``actors.core.router.routing_key``): the task type
        plus its required capabilities.
        """
        return any(
            agent.healthy and agent.free_slots() > 0 and key <= agent.spec.capabilities
            for agent in self._agents.values()
        )

    def free_slots_for(self, key: frozenset[str]) -> int:
        """Free slots over the healthy agents that have every capability in ``key``.

        How many tasks with that routing key could be assigned right now: the router asks
        the queue for that many (work moves in batches).
        """
        return sum(
            agent.free_slots()
            for agent in self._agents.values()
            if agent.healthy and key <= agent.spec.capabilities
        )

    def total_free_slots(self) -> int:
        """Free slots over all healthy agents (unhealthy agents take no new work)."""
        return sum(agent.free_slots() for agent in self._agents.values() if agent.healthy)

    # -- restarts and statistics --------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The whole state as a JSON-able dict; :meth:`from_snapshot` rebuilds it.

        Lists are sorted so equal states give equal snapshots. Lifetime counters are not
        included: they describe one incarnation of the actor, not the agents.
        """
        return {
            "version": SNAPSHOT_VERSION,
            "agents": [
                {
                    "agent_id": agent.spec.agent_id,
                    "capabilities": sorted(agent.spec.capabilities),
                    "max_concurrency": agent.spec.max_concurrency,
                    "healthy": agent.healthy,
                    "tasks": sorted(str(task_id) for task_id in agent.tasks),
                    "success_rate": agent.success_rate,
                    "latency_ms": agent.latency_ms,
                    "samples": agent.samples,
                }
                for agent in (self._agents[agent_id] for agent_id in sorted(self._agents))
            ],
        }

    @classmethod
    def from_snapshot(cls, data: Mapping[str, Any]) -> RegistryCore:
        """Rebuild a registry from :meth:`snapshot` output (after an actor restart).

        Everything is validated again (agent specs, performance figures, capacity, one
        agent per task), because a snapshot may come from a store; a bad one raises
        ``ValueError`` instead of producing a registry that breaks its invariants.
        """
        version = data.get("version")
        if version != SNAPSHOT_VERSION:
            raise ValueError(f"unsupported registry snapshot version {version!r}")
        core = cls()
        for entry in data["agents"]:
            spec = AgentSpec(
                agent_id=entry["agent_id"],
                capabilities=frozenset(entry["capabilities"]),
                max_concurrency=entry["max_concurrency"],
            )
            core.register(spec)
            core.set_health(spec.agent_id, bool(entry["healthy"]))
            core.update_performance(
                spec.agent_id, entry["success_rate"], entry["latency_ms"], entry["samples"]
            )
            for task_id in entry["tasks"]:
                core.assign(spec.agent_id, uuid.UUID(task_id))
        # A rebuild is not new traffic: start this incarnation's counters at zero.
        core._registered_total = core._assigned_total = 0
        return core

    def statistics(self) -> dict[str, int]:
        """Counters for ``runner.status()`` and the actor's statistics (JSON-able)."""
        agents = self._agents.values()
        return {
            "agents": len(self._agents),
            "healthy_agents": sum(1 for agent in agents if agent.healthy),
            "capacity": sum(agent.spec.max_concurrency for agent in agents),
            "load": len(self._owner),
            "free_slots": self.total_free_slots(),
            "registered_total": self._registered_total,
            "deregistered_total": self._deregistered_total,
            "assigned_total": self._assigned_total,
            "released_total": self._released_total,
        }

    # -- internals ----------------------------------------------------------------------

    def _get(self, agent_id: str) -> _Agent:
        try:
            return self._agents[agent_id]
        except KeyError:
            raise UnknownAgent(agent_id) from None
