"""Lifecycle events: stable names, each a structlog event and a message to subscribers."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Final

from pydantic import Field

from messages.base import FrozenDict, JsonValue, Message

__all__ = ["EVENT_NAMES", "LifecycleEvent"]

EVENT_NAMES: Final = frozenset(
    {
        "task.submitted",
        "task.queued",
        "task.routed",
        "task.started",
        "task.completed",
        "task.failed",
        "task.retry_scheduled",
        "task.dead_lettered",
        "task.cancelled",
        "task.timed_out",
        "queue.full",
        "agent.registered",
        "agent.deregistered",
        "health.changed",
        "runner.started",
        "runner.stopped",
        "supervisor.child_started",
        "supervisor.child_failed",
        "supervisor.child_restarted",
        "supervisor.child_stopped",
        "supervisor.escalated",
        "supervisor.dead_letter",
    }
)
"""Every event name Arbiter emits. They are part of the public API."""


class LifecycleEvent(Message):
    """One lifecycle event, as delivered to ``TaskRunner.subscribe`` callbacks."""

    name: str
    at: datetime
    task_id: uuid.UUID | None = None
    data: JsonValue = Field(default_factory=FrozenDict)
