"""The exception tree of Arbiter.

Every error Arbiter raises on purpose derives from :class:`ArbiterError`::

    ArbiterError
    ├── InvalidMessage          (also a ValueError) bad input refused at a boundary
    │   └── PayloadTooLarge
    ├── InvalidTransition       a task state change the state machine forbids
    ├── QueueFull               backpressure: the queue is at capacity
    ├── UnknownAgent            no agent registered under that id
    ├── UnknownTask             no task with that id
    ├── TaskFailedError         a task ended without a result (handle.result())
    │   └── TaskCancelledError
    ├── TaskTimeout             waiting for a task's result timed out
    ├── ActorStopped            a message went to an actor that is stopped
    ├── ActorHung               an actor did not answer its heartbeat in time
    ├── Escalated               the root supervisor gave up: the system stopped
    ├── StoreError              the journal store failed
    │   ├── StoreUnavailable
    │   ├── StoreCorrupt
    │   └── StoreVersionError
    └── PermanentError          raised by a handler: do not retry this task

They live in ``messages`` because every package may raise them; ``supervisor.errors``
re-exports the whole tree for hosts.
"""

from __future__ import annotations

__all__ = [
    "ActorHung",
    "ActorStopped",
    "ArbiterError",
    "Escalated",
    "InvalidMessage",
    "InvalidTransition",
    "PayloadTooLarge",
    "PermanentError",
    "QueueFull",
    "StoreCorrupt",
    "StoreError",
    "StoreUnavailable",
    "StoreVersionError",
    "TaskCancelledError",
    "TaskFailedError",
    "TaskTimeout",
    "UnknownAgent",
    "UnknownTask",
]


class ArbiterError(Exception):
    """Root of every error Arbiter raises on purpose."""


class InvalidMessage(ArbiterError, ValueError):
    """A message or task spec was refused at the boundary; nothing reached an actor."""


class PayloadTooLarge(InvalidMessage):
    """A payload's JSON encoding is larger than the configured limit."""


class InvalidTransition(ArbiterError):
    """A task state change that the state machine forbids."""

    def __init__(self, source: object, target: object, task_id: object = None) -> None:
        self.source = source
        self.target = target
        self.task_id = task_id
        where = f" (task {task_id})" if task_id is not None else ""
        super().__init__(f"invalid task transition {source} -> {target}{where}")


class QueueFull(ArbiterError):
    """The queue is at capacity; the caller should back off and try again."""


class UnknownAgent(ArbiterError, KeyError):
    """No agent is registered under that id."""


class UnknownTask(ArbiterError, KeyError):
    """No task with that id is known."""


class TaskFailedError(ArbiterError):
    """The task ended without a result (dead-lettered); carries the last error."""


class TaskCancelledError(TaskFailedError):
    """The task was cancelled before it completed."""


class TaskTimeout(ArbiterError, TimeoutError):
    """Waiting for a task's result took longer than the caller allowed."""


class ActorStopped(ArbiterError):
    """The message was sent to an actor that is stopped; it became a dead letter."""


class ActorHung(ArbiterError):
    """The actor did not finish a message within its hang timeout and was replaced."""


class Escalated(ArbiterError):
    """The root supervisor exceeded its restart intensity; the actor system stopped."""


class StoreError(ArbiterError):
    """The journal store failed."""


class StoreUnavailable(StoreError):
    """The store cannot be reached or opened (locked, read-only, disk full, down)."""


class StoreCorrupt(StoreError):
    """The store's file is not a valid database of this kind."""


class StoreVersionError(StoreError):
    """The store's schema is from a newer version of Arbiter."""


class PermanentError(ArbiterError):
    """Raise from a handler to dead-letter the task at once, without retries."""
