"""Routing protocol: decisions the router makes and the agent view it decides on."""

from __future__ import annotations

import uuid

from pydantic import Field

from messages.base import Message

__all__ = ["AgentView", "Alternative", "RoutingDecision"]


class AgentView(Message):
    """What the router knows of one agent when it decides (a snapshot, not live state)."""

    agent_id: str
    capabilities: frozenset[str]
    max_concurrency: int = Field(ge=1)
    load: int = Field(ge=0)
    """Tasks the agent holds: running, or waiting in its buffer for a slot."""
    buffer: int = Field(default=0, ge=0)
    """Tasks the agent may hold beyond max_concurrency, waiting in its own buffer to start
    the moment a slot frees (the router's ``prefetch``); 0 keeps priorities strict."""
    healthy: bool = True
    success_rate: float = Field(default=1.0, ge=0.0, le=1.0)
    latency_ms: float = Field(default=0.0, ge=0.0)
    samples: int = Field(default=0, ge=0)

    @property
    def capacity(self) -> int:
        """How many tasks the agent may hold: its slots plus its buffer."""
        return self.max_concurrency + self.buffer

    @property
    def free_slots(self) -> int:
        """How many more tasks the agent can take now (into a slot or its buffer)."""
        return max(0, self.capacity - self.load)


class Alternative(Message):
    """An agent the router considered but did not choose, with its score."""

    agent_id: str
    score: float


class RoutingDecision(Message):
    """Why a task went to an agent (emitted as the ``task.routed`` event)."""

    task_id: uuid.UUID
    agent_id: str
    strategy: str
    score: float
    reason: str
    alternatives: tuple[Alternative, ...] = ()
