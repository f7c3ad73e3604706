"""Arbiter's actors: the actor base class and runtime cells, and the task pipeline actors.

Imports ``messages`` only, never ``supervisor``.
"""

from actors.base import Actor, ActorContext
from actors.cell import ActorRef, Cell, CellState, Directive, EscalationSignal
from actors.dead_letters import DeadLetterOffice
from actors.immutability import check_immutable
from actors.timers import TimerService

__all__ = [
    "Actor",
    "ActorContext",
    "ActorRef",
    "Cell",
    "CellState",
    "DeadLetterOffice",
    "Directive",
    "EscalationSignal",
    "TimerService",
    "check_immutable",
]
