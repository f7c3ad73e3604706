"""The supervisor actor: one loop that applies a strategy to its children's failures.

A supervisor is itself an actor (so supervisors nest): its children report failures to
it as ``ChildFailed`` messages, it plans restarts with :func:`plan_restart`, counts them
against its :class:`RestartIntensity` and, past it, stops its children and escalates by
failing itself, so its own supervisor decides. Its children survive its restarts: their
cells live in a :class:`SupervisorState` that every incarnation shares.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from actors.base import Actor
from actors.cell import ActorRef, Cell, CellState, Directive, Dispatcher, EscalationSignal
from actors.dead_letters import DeadLetterOffice
from actors.timers import TimerService
from messages.pipeline import ReportUnresponsive
from messages.supervision import ChildFailed, ChildRestarted, ChildStopped
from supervisor.strategy import (
    ChildSpec,
    Restart,
    RestartBackoff,
    RestartIntensity,
    Strategy,
    plan_restart,
)

__all__ = ["Runtime", "SpawnChild", "StopChild", "Supervisor", "SupervisorState"]

_log = structlog.get_logger("arbiter.supervisor")


@dataclass
class Runtime:
    """Services every supervisor in one system shares."""

    dead_letters: DeadLetterOffice
    timers: TimerService
    hang_timeout_s: float | None
    rand: Callable[[], float] = random.random
    cells: dict[str, Cell] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    dispatchers: dict[str, Dispatcher] = field(default_factory=dict)
    lend_threads: bool = True
    """Shared dispatchers accept caller-runs claims (:meth:`Dispatcher.claim`)."""

    def dispatcher(self, name: str) -> Dispatcher:
        """The shared dispatcher called ``name`` (made on first use)."""
        with self.lock:
            found = self.dispatchers.get(name)
            if found is None:
                found = self.dispatchers[name] = Dispatcher(name, lend_threads=self.lend_threads)
            return found

    def stop_dispatchers(self, timeout_s: float = 5.0) -> None:
        """Stop every dispatcher's thread (after their cells have stopped)."""
        with self.lock:
            found = list(self.dispatchers.values())
        for dispatcher in found:
            dispatcher.stop(timeout_s)

    def register(self, cell: Cell) -> None:
        """Add a cell to the system-wide name table; names are unique in a system."""
        with self.lock:
            if cell.name in self.cells:
                raise ValueError(f"an actor named {cell.name!r} already exists")
            self.cells[cell.name] = cell

    def unregister(self, name: str) -> None:
        """Forget a removed child's name."""
        with self.lock:
            self.cells.pop(name, None)

    def all_cells(self) -> list[Cell]:
        """Every registered cell (a copy, safe to iterate)."""
        with self.lock:
            return list(self.cells.values())


@dataclass(frozen=True, slots=True)
class SpawnChild:
    """Ask a supervisor to start a child; answered with its :class:`ActorRef`."""

    spec: ChildSpec


@dataclass(frozen=True, slots=True)
class StopChild:
    """Ask a supervisor to stop a child for good and forget it."""

    name: str
    reason: str = "stopped by request"


@dataclass(frozen=True, slots=True)
class _RestartNow:
    names: tuple[str, ...]
    reason: str


@dataclass
class SupervisorState:
    """What a supervisor keeps across its own restarts: its children and its policy."""

    name: str
    strategy: Strategy
    max_restarts: int
    within_s: float
    runtime: Runtime
    backoff: RestartBackoff | None = None
    children: dict[str, Cell] = field(default_factory=dict)
    specs: dict[str, ChildSpec] = field(default_factory=dict)
    intensity: RestartIntensity = field(init=False)

    def __post_init__(self) -> None:
        self.intensity = RestartIntensity(self.max_restarts, self.within_s)


class Supervisor(Actor):
    """Supervises child actors with one strategy and one restart intensity."""

    def __init__(self, state: SupervisorState) -> None:
        self.state = state

    def on_start(self) -> None:
        # A new incarnation after an escalation finds its children stopped: start them
        # again (OTP restarts a supervisor together with its children), with a fresh
        # intensity window.
        self.state.intensity = RestartIntensity(self.state.max_restarts, self.state.within_s)
        for cell in self.state.children.values():
            if cell.state is CellState.STOPPED:
                cell.send_directive(Directive.RESTART, f"{self.state.name} restarted")

    def post_stop(self) -> None:
        self._stop_children("shutdown")

    def pre_restart(self, reason: BaseException | None) -> None:
        # Children are already stopped when the restart follows an escalation; when the
        # supervisor itself crashed, they keep running under the new incarnation.
        return None

    def receive(self, message: Any) -> Any:
        if isinstance(message, ChildFailed):
            self._child_failed(message)
        elif isinstance(message, ChildRestarted | ChildStopped):
            pass  # the child logged it; nothing to decide
        elif isinstance(message, SpawnChild):
            return self._spawn(message.spec)
        elif isinstance(message, _RestartNow):
            self._restart_now(message.names, message.reason)
        elif isinstance(message, StopChild):
            self._remove(message.name, message.reason)
        elif isinstance(message, ReportUnresponsive):
            self._unresponsive(message)
        else:
            raise TypeError(f"supervisor {self.state.name} got {type(message).__name__}")
        return None

    def statistics(self) -> dict[str, Any]:
        return {
            "children": list(self.state.children),
            "strategy": self.state.strategy.value,
            "recent_restarts": self.state.intensity.recent(),
        }

    # ------------------------------------------------------------------
    def _spawn(self, spec: ChildSpec) -> ActorRef | ValueError:
        # A bad request is the caller's error, not this supervisor's failure: it is
        # answered, not raised.
        state = self.state
        if spec.name in state.runtime.cells:
            return ValueError(f"an actor named {spec.name!r} already exists")
        hang = (
            spec.hang_timeout_s if spec.hang_timeout_s is not None else state.runtime.hang_timeout_s
        )
        cell = Cell(
            spec.name,
            spec.factory,
            parent=self.context.self_ref,
            dead_letters=state.runtime.dead_letters,
            hang_timeout_s=hang,
            dispatcher=(
                state.runtime.dispatcher(spec.dispatcher) if spec.dispatcher is not None else None
            ),
        )
        state.runtime.register(cell)
        state.children[spec.name] = cell
        state.specs[spec.name] = spec
        cell.start()
        return cell.ref

    def _child_failed(self, report: ChildFailed) -> None:
        state = self.state
        cell = state.children.get(report.child)
        if (
            cell is None
            or cell.incarnation != report.incarnation
            or cell.state is not CellState.SUSPENDED
        ):
            return  # stale: already restarted (one_for_all) or removed
        if not report.normal:
            _log.error(
                "supervisor.child_failed",
                supervisor=state.name,
                child=report.child,
                reason=report.reason,
                exception_type=report.exception_type,
                kind=report.kind,
                traceback=report.traceback,
            )
        plan = plan_restart(
            state.strategy,
            [(name, state.specs[name].restart) for name in state.children],
            report.child,
            normal=report.normal,
        )
        for name in plan.remove:
            self._remove(name, "temporary child exited" if name != report.child else report.reason)
        if not plan.restart:
            return
        now = time.monotonic()
        if not state.intensity.record(now):
            _log.error(
                "supervisor.escalated",
                supervisor=state.name,
                child=report.child,
                reason=report.reason,
                max_restarts=state.max_restarts,
                within_s=state.within_s,
            )
            self._stop_children("escalated")
            raise EscalationSignal(
                f"supervisor {state.name}: more than {state.max_restarts} restarts in "
                f"{state.within_s}s; last failure of {report.child}: {report.reason}"
            )
        delay = state.backoff.delay(report.child, now, state.runtime.rand) if state.backoff else 0.0
        if delay > 0:
            me = self.context.self_ref
            message = _RestartNow(plan.restart, report.reason)
            state.runtime.timers.call_later(delay, lambda: me.tell(message))
        else:
            self._restart_now(plan.restart, report.reason)

    def _restart_now(self, names: tuple[str, ...], reason: str) -> None:
        for name in names:
            cell = self.state.children.get(name)
            if cell is not None:
                cell.send_directive(Directive.RESTART, reason)

    def _remove(self, name: str, reason: str) -> None:
        state = self.state
        cell = state.children.pop(name, None)
        spec = state.specs.pop(name, None)
        if cell is None or spec is None:
            return
        cell.stop(spec.shutdown_timeout_s, reason)
        state.runtime.unregister(name)

    def _unresponsive(self, report: ReportUnresponsive) -> None:
        """The health monitor saw a child make no progress: replace it as a hung child."""
        cell = self.state.children.get(report.child)
        since = cell.busy_since if cell is not None else None
        if cell is None or since is None:
            return  # gone, or it went idle meanwhile: nothing hangs any more
        _log.warning("supervisor.child_unresponsive", child=report.child, busy_s=report.busy_s)
        cell.report_hung(report.busy_s, since)

    def _stop_children(self, reason: str) -> None:
        state = self.state
        for name in reversed(list(state.children)):
            state.children[name].stop(state.specs[name].shutdown_timeout_s, reason)


def supervisor_spec(
    name: str,
    runtime: Runtime,
    *,
    strategy: Strategy = Strategy.ONE_FOR_ONE,
    max_restarts: int = 1,
    within_s: float = 5.0,
    backoff: RestartBackoff | None = None,
    restart: Restart = Restart.PERMANENT,
    shutdown_timeout_s: float = 30.0,
) -> ChildSpec:
    """A ChildSpec for a nested supervisor whose children outlive its restarts."""
    state = SupervisorState(name, strategy, max_restarts, within_s, runtime, backoff)
    return ChildSpec(
        name=name,
        factory=lambda: Supervisor(state),
        restart=restart,
        shutdown_timeout_s=shutdown_timeout_s,
    )
