"""Arbiter's exception tree, re-exported for hosts (defined in ``messages.errors``).

::

    ArbiterError
    ├── InvalidMessage (ValueError) ── PayloadTooLarge
    ├── InvalidTransition
    ├── QueueFull
    ├── UnknownAgent, UnknownTask (KeyError)
    ├── TaskFailedError ── TaskCancelledError
    ├── TaskTimeout (TimeoutError)
    ├── ActorStopped, ActorHung, Escalated
    ├── StoreError ── StoreUnavailable, StoreCorrupt, StoreVersionError
    └── PermanentError
"""

from messages.errors import (
    ActorHung,
    ActorStopped,
    ArbiterError,
    Escalated,
    InvalidMessage,
    InvalidTransition,
    PayloadTooLarge,
    PermanentError,
    QueueFull,
    StoreCorrupt,
    StoreError,
    StoreUnavailable,
    StoreVersionError,
    TaskCancelledError,
    TaskFailedError,
    TaskTimeout,
    UnknownAgent,
    UnknownTask,
)

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
