"""Health protocol: statuses of components and changes of them."""

from __future__ import annotations

from enum import StrEnum

from messages.base import Message

__all__ = ["HealthChanged", "HealthStatus"]


class HealthStatus(StrEnum):
    """Health of one component or of the whole runner (ordered best to worst)."""

    HEALTHY = "HEALTHY"
    DEGRADED = "DEGRADED"
    UNHEALTHY = "UNHEALTHY"


class HealthChanged(Message):
    """A component's health moved from one status to another (``health.changed``)."""

    component: str
    previous: HealthStatus
    current: HealthStatus
    reason: str = ""
