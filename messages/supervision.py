"""The supervision protocol: what actors and supervisors tell each other."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from messages.base import FrozenDict, JsonValue, Message

__all__ = [
    "ActorStatistics",
    "ChildFailed",
    "ChildRestarted",
    "ChildStopped",
    "DeadLetter",
    "GetStatistics",
]


class ChildFailed(Message):
    """An actor failed: a handler raised, ``on_start`` raised, it hung, or its thread died.

    Sent by the failing actor's cell to its supervisor, which decides what happens next.
    """

    child: str
    incarnation: int
    reason: str
    exception_type: str
    traceback: str = ""
    kind: str = "exception"  # exception | on_start | hung | died | stopped
    normal: bool = False  # a normal exit (the actor stopped itself), not a crash


class ChildRestarted(Message):
    """An actor's new incarnation is running (sent to its supervisor)."""

    child: str
    restart_count: int
    downtime_ms: float


class ChildStopped(Message):
    """An actor stopped for good."""

    child: str
    reason: str


class DeadLetter(Message):
    """A message that could not be delivered or whose handling failed."""

    recipient: str
    message: Any
    reason: str
    exception_type: str | None = None
    sender_waiting: bool = False


class GetStatistics(Message):
    """Ask an actor for its :class:`ActorStatistics`; answered by the runtime itself."""


class ActorStatistics(Message):
    """Counters of one actor, answered to :class:`GetStatistics`."""

    name: str
    state: str
    processed: int = Field(ge=0)
    keepalives: int = Field(default=0, ge=0)
    """Times the actor said, inside one long message, that it is working (``still_busy``)."""
    failures: int = Field(ge=0)
    restarts: int = Field(ge=0)
    mailbox_depth: int = Field(ge=0)
    incarnation: int = Field(ge=0)
    extra: JsonValue = Field(default_factory=FrozenDict)
