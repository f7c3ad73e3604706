"""Supervision tree, actor system and host entry points of Arbiter.

Imports ``actors`` and ``messages``; nothing imports ``supervisor``.

Note: the PyPI distribution ``supervisor`` (supervisord) installs a package of the same
name; the two cannot share one environment.
"""

from actors.agent import TaskContext
from actors.base import Actor, ActorContext
from actors.cell import ActorRef
from supervisor.errors import (
    ActorHung,
    ActorStopped,
    ArbiterError,
    Escalated,
)
from supervisor.logging import configure_logging
from supervisor.runner import RunnerConfig, TaskHandle, TaskRunner, load_handler
from supervisor.strategy import (
    ChildSpec,
    Restart,
    RestartBackoff,
    RestartIntensity,
    RestartPlan,
    Strategy,
    plan_restart,
    should_restart,
)
from supervisor.system import ActorSystem

__all__ = [
    "Actor",
    "ActorContext",
    "ActorHung",
    "ActorRef",
    "ActorStopped",
    "ActorSystem",
    "ArbiterError",
    "ChildSpec",
    "Escalated",
    "Restart",
    "RestartBackoff",
    "RestartIntensity",
    "RestartPlan",
    "RunnerConfig",
    "Strategy",
    "TaskContext",
    "TaskHandle",
    "TaskRunner",
    "configure_logging",
    "load_handler",
    "plan_restart",
    "should_restart",
]
