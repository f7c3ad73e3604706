"""The actor base class hosts and the runtime subclass.

An :class:`Actor` is plain code: ``receive`` handles one message at a time on the
actor's own thread, so the actor's attributes need no locks. The runtime (``actors.cell``)
runs it on a pykka thread, supervises it and replaces the instance on restart.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import structlog

    from actors.cell import ActorRef, Cell, Pending

__all__ = ["Actor", "ActorContext"]


class ActorContext:
    """What an actor knows of its place in the system; set before ``on_start``."""

    __slots__ = ("_cell", "incarnation", "log", "name", "self_ref", "take_pending")

    def __init__(
        self,
        self_ref: ActorRef,
        name: str,
        incarnation: int,
        log: structlog.typing.FilteringBoundLogger,
        cell: Cell,
    ) -> None:
        self.self_ref = self_ref
        self.name = name
        self.incarnation = incarnation
        self.log = log
        self._cell = cell
        self.take_pending: Callable[[int], list[Pending]] = cell.take_pending
        """Take up to ``limit`` more messages from this actor's mailbox, to handle them
        together with the current one (group commit). Answer asks with ``reply``. (The
        cell's own method, bound once: batching actors call it every turn.)"""

    def stop_self(self) -> None:
        """Stop this actor normally after the current message (a normal exit).

        A PERMANENT child is restarted even after a normal exit; TRANSIENT and
        TEMPORARY children stay stopped.
        """
        self._cell._request_self_stop()

    def still_busy(self) -> bool:
        """Say, inside a long ``receive``, that this actor is working, not hung: the hang
        watchdog and the health monitor leave it alone. Call it at least every few
        seconds. Returns False when the supervisor wants the actor (a stop is waiting):
        give up the message then."""
        return self._cell.still_busy()


class Actor:
    """Base class of every actor: subclass it and implement :meth:`receive`.

    Example::

        class Counter(Actor):
            def __init__(self) -> None:
                self.count = 0

            def receive(self, message: object) -> int:
                self.count += 1
                return self.count      # the answer to an ``ask``

    An exception raised by ``receive`` (or ``on_start``) is a failure of the actor: the
    message becomes a dead letter, an asker gets the exception, and the supervisor decides
    whether to restart the actor (a fresh instance from its factory, same reference,
    same mailbox).
    """

    context: ActorContext

    handled_when_stopping: ClassVar[tuple[type, ...]] = ()
    """Message types still handled when the actor stops for good: what waits in its
    mailbox of these types goes to :meth:`receive`, in order, before :meth:`post_stop`
    (Akka's messages ahead of a PoisonPill), instead of becoming dead letters. For an
    actor whose pending messages are cheap to finish and costly to lose (the journal's
    writes)."""

    def receive(self, message: Any) -> Any:
        """Handle one message; the return value answers an ``ask``."""
        raise NotImplementedError(f"{type(self).__name__} must implement receive()")

    def on_start(self) -> None:
        """Run on the actor's thread before its first message (also after a restart)."""

    def pre_restart(self, reason: BaseException | None) -> None:
        """Run on the old instance before it is replaced; defaults to :meth:`post_stop`."""
        self.post_stop()

    def post_stop(self) -> None:
        """Run on the actor's thread when it stops for good."""

    def statistics(self) -> Mapping[str, Any]:
        """Extra JSON-able counters of this actor, added to its ActorStatistics."""
        return {}
