"""The actor system: a root supervisor, a watchdog for hung actors, dead letters."""

from __future__ import annotations

import threading
import time
from types import TracebackType
from typing import Self

import structlog

from actors.cell import ActorRef, Cell
from actors.dead_letters import DeadLetterOffice
from actors.timers import TimerService
from messages.errors import Escalated
from messages.supervision import ActorStatistics, ChildFailed, DeadLetter
from supervisor.strategy import ChildSpec, Restart, RestartBackoff, Strategy
from supervisor.supervisor import (
    Runtime,
    SpawnChild,
    StopChild,
    Supervisor,
    SupervisorState,
    supervisor_spec,
)

__all__ = ["ActorSystem"]

_log = structlog.get_logger("arbiter.supervisor")

ROOT = "root"


class ActorSystem:
    """A tree of supervised actors inside the host process.

    Example::

        system = ActorSystem.start(strategy=Strategy.ONE_FOR_ONE, max_restarts=3, within_s=5.0)
        ref = system.spawn(ChildSpec(name="counter", factory=Counter))
        ref.tell(message); ref.ask(message, timeout=1.0)
        system.dead_letters()
        system.stop()

    The root supervisor applies ``strategy`` within ``max_restarts`` in ``within_s``
    seconds; when it exceeds that, it stops every actor, the system stops, the event
    ``supervisor.escalated`` is logged and :meth:`raise_if_escalated` / :meth:`wait`
    raise :class:`~messages.errors.Escalated`.
    """

    def __init__(
        self,
        *,
        strategy: Strategy,
        max_restarts: int,
        within_s: float,
        backoff: RestartBackoff | None,
        hang_timeout_s: float | None,
        watchdog_interval_s: float,
        dead_letter_capacity: int,
        lend_threads: bool = True,
    ) -> None:
        self.runtime = Runtime(
            dead_letters=DeadLetterOffice(dead_letter_capacity),
            timers=TimerService(),
            hang_timeout_s=hang_timeout_s,
            lend_threads=lend_threads,
        )
        self._state = SupervisorState(ROOT, strategy, max_restarts, within_s, self.runtime, backoff)
        self._root = Cell(
            ROOT,
            lambda: Supervisor(self._state),
            parent=None,
            dead_letters=self.runtime.dead_letters,
            on_root_failure=self._on_root_failure,
        )
        self.runtime.register(self._root)
        self._escalation: Escalated | None = None
        self._stopped = threading.Event()
        self._stop_lock = threading.Lock()
        self._watchdog_interval_s = watchdog_interval_s
        self._watchdog = threading.Thread(target=self._watch, name="arbiter-watchdog", daemon=True)

    @classmethod
    def start(
        cls,
        *,
        strategy: Strategy = Strategy.ONE_FOR_ONE,
        max_restarts: int = 1,
        within_s: float = 5.0,
        backoff: RestartBackoff | None = None,
        hang_timeout_s: float | None = None,
        watchdog_interval_s: float = 0.05,
        dead_letter_capacity: int = 10_000,
        lend_threads: bool = True,
    ) -> ActorSystem:
        """Start a system; OTP's default intensity is 1 restart in 5 seconds.

        ``hang_timeout_s`` (default off) is how long one message may run before the
        actor counts as hung and is replaced; ChildSpec may set its own.
        ``lend_threads``: shared dispatchers accept caller-runs claims
        (:meth:`~actors.cell.Dispatcher.claim`).
        """
        system = cls(
            strategy=strategy,
            max_restarts=max_restarts,
            within_s=within_s,
            backoff=backoff,
            hang_timeout_s=hang_timeout_s,
            watchdog_interval_s=watchdog_interval_s,
            dead_letter_capacity=dead_letter_capacity,
            lend_threads=lend_threads,
        )
        system._root.start()
        system._watchdog.start()
        return system

    # ------------------------------------------------------------------ host API
    @property
    def root(self) -> ActorRef:
        """The root supervisor's reference."""
        return self._root.ref

    def spawn(
        self, spec: ChildSpec, *, parent: ActorRef | None = None, timeout: float = 10.0
    ) -> ActorRef:
        """Start a child under ``parent`` (default: the root supervisor); returns its ref."""
        self.raise_if_escalated()
        target = parent if parent is not None else self._root.ref
        answer = target.ask(SpawnChild(spec), timeout=timeout)
        if isinstance(answer, Exception):
            raise answer
        ref: ActorRef = answer
        return ref

    def spawn_supervisor(
        self,
        name: str,
        *,
        strategy: Strategy = Strategy.ONE_FOR_ONE,
        max_restarts: int = 1,
        within_s: float = 5.0,
        backoff: RestartBackoff | None = None,
        restart: Restart = Restart.PERMANENT,
        parent: ActorRef | None = None,
    ) -> ActorRef:
        """Start a nested supervisor; spawn children under it with ``parent=ref``."""
        spec = supervisor_spec(
            name,
            self.runtime,
            strategy=strategy,
            max_restarts=max_restarts,
            within_s=within_s,
            backoff=backoff,
            restart=restart,
        )
        return self.spawn(spec, parent=parent)

    def stop_child(
        self, name: str, *, parent: ActorRef | None = None, timeout: float = 10.0
    ) -> None:
        """Stop a child for good and forget its name."""
        target = parent if parent is not None else self._root.ref
        target.ask(StopChild(name), timeout=timeout)

    def ref(self, name: str) -> ActorRef:
        """The reference of a running actor by name (KeyError if none)."""
        with self.runtime.lock:
            return self.runtime.cells[name].ref

    def dead_letters(self) -> tuple[DeadLetter, ...]:
        """Recent undelivered messages with their reasons (oldest first)."""
        return self.runtime.dead_letters.recent()

    @property
    def dead_letter_office(self) -> DeadLetterOffice:
        """The dead-letter office (totals, counts by reason, subscriptions)."""
        return self.runtime.dead_letters

    def statistics(self) -> dict[str, ActorStatistics]:
        """Counters of every actor, read without waiting on their threads."""
        return {cell.name: cell.statistics() for cell in self.runtime.all_cells()}

    @property
    def escalation(self) -> Escalated | None:
        """The root escalation, if the system stopped because of one."""
        return self._escalation

    def raise_if_escalated(self) -> None:
        """Raise :class:`Escalated` if the root supervisor gave up."""
        if self._escalation is not None:
            raise self._escalation

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the system stops; raise Escalated if it stopped by escalation."""
        stopped = self._stopped.wait(timeout)
        self.raise_if_escalated()
        return stopped

    @property
    def running(self) -> bool:
        """True until the system has stopped."""
        return not self._stopped.is_set()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop every actor, children before parents in reverse start order."""
        with self._stop_lock:
            if self._stopped.is_set():
                return
            self._root.stop(timeout_s, "system stop")
            # Whatever reached a mailbox after its actor stopped is a dead letter too.
            for cell in self.runtime.all_cells():
                cell._drain_to_dead_letters()
            self.runtime.timers.stop()
            self.runtime.stop_dispatchers()
            self._stopped.set()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------ internals
    def _on_root_failure(self, cell: Cell, report: ChildFailed) -> None:
        self._escalation = Escalated(
            f"root supervisor gave up: {report.reason} ({report.exception_type})"
        )
        _log.critical(
            "supervisor.escalated",
            supervisor=ROOT,
            root=True,
            reason=report.reason,
            exception_type=report.exception_type,
        )
        threading.Thread(target=self.stop, name="arbiter-escalation-stop", daemon=True).start()

    def _watch(self) -> None:
        while not self._stopped.wait(self._watchdog_interval_s):
            now = time.monotonic()
            for cell in self.runtime.all_cells():
                hung = cell.hung_for(now)
                if hung is not None:
                    _log.warning("supervisor.child_hung", child=cell.name, busy_s=round(hung[0], 3))
                    cell.report_hung(*hung)
                elif cell.thread_died():
                    cell.report_died()
