"""The events actor: calls lifecycle-event subscribers on its own thread, so a slow or
failing subscriber never blocks or breaks the actor that emitted the event."""

from __future__ import annotations

from typing import Any

import structlog

from actors.base import Actor
from actors.pipeline import EventHub
from messages.events import LifecycleEvent
from messages.pipeline import InjectCrash

__all__ = ["EventsActor"]

_log = structlog.get_logger("arbiter.events")


class EventsActor(Actor):
    """Delivers :class:`LifecycleEvent` messages to the hub's subscribers."""

    def __init__(self, hub: EventHub) -> None:
        self.hub = hub
        self.delivered = 0
        self.subscriber_errors = 0

    def receive(self, message: Any) -> Any:
        if isinstance(message, LifecycleEvent):
            _log.debug(message.name, task_id=str(message.task_id), **dict(message.data))
            for callback in self.hub.subscribers():
                try:
                    callback(message)
                except Exception as exc:  # noqa: BLE001 - a subscriber's bug is logged, not ours
                    self.subscriber_errors += 1
                    _log.error("events.subscriber_failed", event_name=message.name, error=repr(exc))
            self.delivered += 1
            return None
        if isinstance(message, InjectCrash):
            raise RuntimeError(message.reason)
        raise TypeError(f"events got {type(message).__name__}")

    def statistics(self) -> dict[str, Any]:
        return {"delivered": self.delivered, "subscriber_errors": self.subscriber_errors}
