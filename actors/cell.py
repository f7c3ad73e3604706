"""Actor cells: the stable home of an actor across its incarnations.

A :class:`Cell` owns an actor's mailbox, counters and current instance. Each incarnation
runs on a pykka ``ThreadingActor`` (the *shell*) that reads the cell's mailbox, so the
mailbox, and the :class:`ActorRef` senders hold, outlive any one incarnation (Akka's
semantics, not pykka's):

* a handler that raises (on ``tell`` or ``ask``) suspends the actor; the message becomes a
  dead letter (an asker also gets the exception) and the cell reports ``ChildFailed`` to
  its supervisor, then waits for the supervisor's directive on the same thread;
* on RESTART the old instance's ``pre_restart`` runs, a new instance is made by the
  factory, ``on_start`` runs, and the mailbox carries on where it stopped, in order;
* a hung actor (a message running past its hang timeout) is abandoned: a new shell
  thread takes over the same mailbox and the stuck thread is detached;
* nothing is dropped silently: whatever cannot be delivered is a dead letter.

pykka's own failure handling never sees an exception: pykka would stop the actor on a
failed ``tell`` (dropping its inbox), keep it on a failed ``ask``, and stop every actor in
the process on a ``BaseException``.
"""

from __future__ import annotations

import queue
import threading
import time
import traceback
from _thread import get_ident as _get_ident
from collections import deque
from collections.abc import Callable
from enum import StrEnum
from typing import Any, Final, NamedTuple

import pykka
import structlog

from actors.base import Actor, ActorContext
from actors.dead_letters import DeadLetterOffice
from actors.immutability import check_immutable, known_frozen, register_immutable
from messages.errors import ActorHung, ActorStopped
from messages.supervision import (
    ActorStatistics,
    ChildFailed,
    DeadLetter,
    GetStatistics,
)

__all__ = [
    "ActorRef",
    "Cell",
    "CellState",
    "Directive",
    "Dispatcher",
    "EscalationSignal",
    "Pending",
    "Pulse",
]

_log = structlog.get_logger("arbiter.supervisor")


class CellState(StrEnum):
    """Life stage of a cell."""

    NEW = "new"
    RUNNING = "running"
    SUSPENDED = "suspended"  # failed, waiting for its supervisor's directive
    STOPPED = "stopped"


class Directive(StrEnum):
    """What a supervisor tells a child cell to do."""

    RESTART = "restart"
    STOP = "stop"


class EscalationSignal(Exception):
    """Raised by a supervisor's handler to fail itself on purpose (escalation).

    The message being handled is not made a dead letter: it was handled, by escalating.
    """


class _Letter:
    """One mailbox entry. Duck-types pykka's envelope (``message``, ``reply_to``) so pykka's
    loop hands the letter itself to the shell, at the cost of one allocation per message."""

    __slots__ = ("body", "future")
    reply_to = None

    def __init__(self, body: Any, future: pykka.ThreadingFuture[Any] | None) -> None:
        self.body = body
        self.future = future

    @property
    def message(self) -> _Letter:
        return self

    def future_done(self) -> bool:
        # pykka futures have no public "done"; a reply set by take_pending's user is
        # recorded by Pending.reply, which clears the future.
        return self.future is None


class _Alarm(_Letter):
    """An actor's own alarm (a timer it armed, a ring from its worker threads): nobody
    sent it and nobody waits for it, so if the actor has stopped it rings for nobody
    instead of becoming a dead letter (which would log a warning at every shutdown)."""

    __slots__ = ()


class Pending:
    """A message taken from the mailbox by :meth:`ActorContext.take_pending` (batching)."""

    __slots__ = ("_letter",)

    def __init__(self, letter: _Letter) -> None:
        self._letter = letter

    @property
    def message(self) -> Any:
        """The message itself."""
        return self._letter.body

    @property
    def wants_reply(self) -> bool:
        """True if the sender asked (and waits for an answer)."""
        return self._letter.future is not None

    def reply(self, value: Any) -> None:
        """Answer an ask (no effect for a tell, or once answered)."""
        future, self._letter.future = self._letter.future, None
        if future is not None:
            future.set(value)

    def fail(self, exc: BaseException) -> None:
        """Answer an ask with an exception (no effect for a tell, or once answered)."""
        future, self._letter.future = self._letter.future, None
        if future is not None:
            future.set_exception(exc_info=(type(exc), exc, exc.__traceback__))


_new_letter = object.__new__

# Wakes an idle shell so it applies a pending directive.
_AnyShell = Any  # _Shell | _SharedShell (both have abandoned, detach, shared)
_WAKEUP: Final = _Letter(None, None)


class _Shell(pykka.ThreadingActor):
    """The pykka actor running one incarnation of a cell on a thread of its own."""

    use_daemon_thread = True
    shared = False

    def __init__(self, cell: Cell, restart_reason: BaseException | None) -> None:
        super().__init__()
        # Share the cell's mailbox: it outlives this incarnation.
        self.actor_inbox = cell.mailbox
        self.actor_ref.actor_inbox = cell.mailbox
        self.cell = cell
        cell.shell = self
        self.abandoned = False
        self.thread: threading.Thread | None = None
        self._restart_reason = restart_reason

    def on_start(self) -> None:
        self.thread = threading.current_thread()
        self.cell._start_incarnation(self, self._restart_reason)

    def on_receive(self, letter: _Letter) -> None:
        self.cell._deliver(self, letter)

    def detach(self) -> None:
        """End this shell's pykka loop without it touching the shared mailbox again."""
        # pykka reads ``self.actor_inbox`` on every turn and drains it on teardown; an
        # empty private queue keeps it away from the mailbox the next shell uses.
        self.actor_inbox = queue.SimpleQueue()
        self.actor_stopped.set()
        pykka.ActorRegistry.unregister(self.actor_ref)


class _Ready:
    """A cell's entry in its dispatcher's run queue (duck-types a pykka envelope, like
    :class:`_Letter`); one per cell, made once."""

    __slots__ = ("message",)
    reply_to = None

    def __init__(self, cell: Cell) -> None:
        self.message = cell


class _SharedShell:
    """One incarnation of a cell run by a :class:`Dispatcher` (no thread of its own)."""

    __slots__ = ("abandoned", "cell", "dispatcher", "pending_start", "restart_reason")
    shared = True

    def __init__(
        self, cell: Cell, dispatcher: Dispatcher, restart_reason: BaseException | None
    ) -> None:
        self.cell = cell
        self.dispatcher = dispatcher
        self.abandoned = False
        self.pending_start = True  # the dispatcher runs on_start at the cell's first turn
        self.restart_reason = restart_reason
        cell.shell = self

    @property
    def thread(self) -> threading.Thread | None:
        """The dispatcher's thread, which runs this incarnation's messages."""
        return self.dispatcher.thread

    def is_abandoned(self) -> bool:
        """True once the watchdog or a stop timeout gave this incarnation up."""
        return self.abandoned

    def detach(self) -> None:
        """Nothing to end: the dispatcher just stops giving this incarnation turns."""


class _DispatcherShell(pykka.ThreadingActor):
    """The pykka actor that is a dispatcher's thread: its inbox is the run queue of
    ready cells, and each message is one cell's turn."""

    use_daemon_thread = True

    def __init__(self, dispatcher: Dispatcher) -> None:
        super().__init__()
        self.actor_inbox = dispatcher.runq
        self.actor_ref.actor_inbox = dispatcher.runq
        self.dispatcher = dispatcher
        self.detached = False
        dispatcher._shell = self

    def on_start(self) -> None:
        self.dispatcher.thread = threading.current_thread()

    def on_receive(self, cell: Cell) -> None:
        dispatcher = self.dispatcher
        lock = dispatcher.take_run_lock()
        try:
            self._run_turns(cell)
        finally:
            if dispatcher.running is threading.current_thread():
                dispatcher.running = None
            lock.release()

    def _run_turns(self, cell: Cell) -> None:
        dispatcher = self.dispatcher
        runq = dispatcher.runq
        turn = dispatcher.turn
        while True:
            if self.detached:
                runq.put(cell._ready)  # a replaced thread raced for it
                return
            turn(cell)
            # The next ready cell's turn follows at once, not through pykka's loop, whose
            # checks cost a few Python calls a turn (several turns a task at a low load).
            # Anything else (pykka's stop) goes back, behind the turns still waiting.
            if runq.empty():
                return
            try:
                item = runq.get_nowait()
            except queue.Empty:
                return
            if type(item) is not _Ready:
                runq.put(item)
                return
            cell = item.message

    def detach(self) -> None:
        """End this thread's loop without it taking from the run queue again."""
        self.detached = True
        self.actor_inbox = queue.SimpleQueue()
        self.actor_stopped.set()
        pykka.ActorRegistry.unregister(self.actor_ref)


class LentThread:
    """A claim on an idle dispatcher by the thread that made it (see
    :meth:`Dispatcher.claim`): the turns it schedules wait in ``line`` until :meth:`run`."""

    __slots__ = ("dispatcher", "line", "lock", "thread")

    def __init__(self, dispatcher: Dispatcher, lock: threading.Lock) -> None:
        self.dispatcher = dispatcher
        self.lock = lock
        self.line: deque[_Ready] = deque()
        self.thread = threading.current_thread()

    def run(self) -> None:
        """Run the turns waiting in the line, and those they cause, on this thread (at
        most the dispatcher's ``throughput``; the rest go to its thread); then give the
        dispatcher back. Call once, on the thread that claimed it, holding no lock a turn
        might want."""
        dispatcher = self.dispatcher
        line = self.line
        lock = self.lock
        turn = dispatcher.turn
        left = dispatcher.throughput
        try:
            while line and left > 0 and lock is dispatcher.run_lock:
                try:
                    ready = line.popleft()
                except IndexError:  # the watchdog moved it (this thread was left behind)
                    break
                dispatcher.lent_turns += 1
                turn(ready.message)
                left -= 1
        finally:
            dispatcher._end_lending(self)


class Dispatcher:
    """Runs the mailboxes of many cells on one thread (Akka's dispatcher).

    A message to an actor on a dispatcher costs no thread wake-up while the dispatcher is
    busy: the cell is put in the run queue (once, however many messages wait) and gets a
    *turn* of up to ``throughput`` messages, in order, then goes to the back of the queue
    if more wait. Under the GIL one thread runs Python as fast as several, and the
    hand-offs between actors on it (queue, router, agents, ...) are a queue put, not a
    context switch.

    Only actors that never block belong on a shared dispatcher: a handler that waits (on
    I/O, on a lock, on another actor of the same dispatcher) holds every other actor up.
    The watchdog treats a dispatcher stuck in one message like a hung actor: the stuck
    thread is left behind and a new one takes the run queue over.

    Supervision is the same as on a thread of one's own: a failed actor is suspended (it
    gets no turn) until its supervisor's directive arrives; a restart reuses the mailbox.

    Caller-runs (``lend_threads``): a thread about to send an idle dispatcher work may run
    the turns it causes itself (:meth:`claim`); whoever runs turns holds ``run_lock``, so
    they still run one at a time.
    """

    def __init__(self, name: str, throughput: int = 64, *, lend_threads: bool = True) -> None:
        if throughput < 1:
            raise ValueError("throughput must be >= 1")
        self.name = name
        self.throughput = throughput
        self.lend_threads = lend_threads
        self.runq: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.thread: threading.Thread | None = None
        self.turns = 0
        self.lent_turns = 0
        """Turns run on a thread lent by a caller (see :meth:`claim`), for statistics."""
        self.replacements = 0
        self.run_lock = threading.Lock()
        """Held by whichever thread runs turns: the dispatcher's own or a lent one. A new
        lock replaces it when the thread holding it is left behind as hung."""
        self.running: threading.Thread | None = None
        """The thread holding ``run_lock`` now (the watchdog's suspect when a turn hangs)."""
        self._lender: tuple[int, deque[_Ready]] | None = None
        self._closed = False
        self._shell: _DispatcherShell | None = None
        self._lock = threading.Lock()
        self.log = _log.bind(dispatcher=name)

    def ready(self, item: _Ready) -> None:
        """Put a cell's entry in the run queue, or, on a thread that has claimed this
        idle dispatcher (:meth:`claim`), in that claim's own line: the dispatcher's thread
        is not woken for a turn the lent thread runs."""
        lender = self._lender
        if lender is not None and lender[0] == _get_ident():
            lender[1].append(item)
        else:
            self.runq.put(item)

    def claim(self) -> LentThread | None:
        """Caller-runs: the calling thread takes this dispatcher over if it is idle.

        At a low load the dispatcher's thread sleeps between tasks, and waking it is a
        context switch and a hand-over of the interpreter lock, which on a busy host is
        where latency goes. A thread that is about to send the pipeline work (a submit, a
        handler that just ended) can instead run the turns that work causes itself: while
        it holds the claim, the cells it schedules wait in the claim's line, and
        :meth:`LentThread.run` runs them (at most ``throughput`` turns, the rest go to the
        dispatcher's thread) and gives the dispatcher back. The turns are the same turns,
        one at a time under ``run_lock``, in the same order; only the thread differs.

        None, and nothing changes, when the dispatcher is busy (its thread holds the lock or
        has turns waiting), stopped, or not lending threads: the caller then sends as usual.
        """
        if not self.lend_threads or self._closed or not self.runq.empty():
            return None
        lock = self.run_lock
        if not lock.acquire(blocking=False):
            return None
        if lock is not self.run_lock or self._closed:  # replaced or stopped meanwhile
            lock.release()
            return None
        lent = LentThread(self, lock)
        self.running = lent.thread
        self._lender = (_get_ident(), lent.line)
        return lent

    def take_run_lock(self) -> threading.Lock:
        """On the dispatcher's thread: wait for ``run_lock`` (a lent thread may hold it);
        the lock taken, which the caller releases. A lent thread left behind as hung
        never releases its lock: the replacement lock is taken instead."""
        while True:
            lock = self.run_lock
            if lock.acquire(timeout=0.05):
                if lock is self.run_lock:
                    self.running = threading.current_thread()
                    return lock
                lock.release()  # replaced while we waited: take the new one

    def _end_lending(self, lent: LentThread) -> None:
        """A claim ends: leftover turns go to the dispatcher's thread, the lock is given
        back (unless the claim was replaced as hung: its lock is nobody's now)."""
        if self._lender is not None and self._lender[1] is lent.line:
            self._lender = None
        if self.running is lent.thread and lent.lock is self.run_lock:
            self.running = None
        self._requeue(lent.line)
        lent.lock.release()

    def _requeue(self, line: deque[_Ready]) -> None:
        """Move a claim's waiting turns to the run queue (the claiming thread and the
        watchdog may both do it: each entry goes to exactly one of them)."""
        while line:
            try:
                item = line.popleft()
            except IndexError:  # the other one took it meanwhile
                break
            self.runq.put(item)

    def start(self) -> None:
        """Start the thread (once; later calls do nothing)."""
        with self._lock:
            if self._shell is None:
                _DispatcherShell.start(self)  # sets self._shell in its __init__

    def replace_thread(self, stuck: threading.Thread) -> bool:
        """Leave ``stuck`` (the thread running turns now, hung in a message) behind: the
        run lock it holds is replaced, and if it is the dispatcher's own thread a new
        thread takes the run queue over. A lent thread (see :meth:`claim`) is just left:
        the turns waiting in its claim go to the run queue, and the dispatcher's thread
        takes the new lock. False if ``stuck`` is not running turns here any more
        (someone replaced it already)."""
        with self._lock:
            shell = self._shell
            if shell is None:
                return False
            if self.running is stuck and self.thread is not stuck:
                lender, self._lender = self._lender, None
                self.run_lock = threading.Lock()
                self.running = None
                self.replacements += 1
                if lender is not None:
                    self._requeue(lender[1])
                self.log.warning(
                    "supervisor.dispatcher_replaced",
                    replacements=self.replacements,
                    lent_thread=stuck.name,
                )
                return True
            if self.thread is not stuck:
                return False
            self.run_lock = threading.Lock()
            shell.detach()
            self.replacements += 1
            self.thread = None
            _DispatcherShell.start(self)  # sets self._shell in its __init__
        self.log.warning("supervisor.dispatcher_replaced", replacements=self.replacements)
        return True

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the thread once its cells are stopped (what is still queued is dropped:
        a stopped cell has dead-lettered its mailbox already)."""
        with self._lock:
            shell, self._shell = self._shell, None
            self._closed = True
        if shell is not None:
            shell.actor_ref.stop(block=False)
            thread = self.thread
            if thread is not None and thread is not threading.current_thread():
                thread.join(timeout_s)

    def turn(self, cell: Cell) -> None:
        """On the dispatcher's thread: run up to ``throughput`` of ``cell``'s messages."""
        shell = cell.shell
        if not isinstance(shell, _SharedShell) or shell.is_abandoned():
            cell.scheduled = False
            return  # stopped (a stopped cell dead-letters what it is sent) or replaced
        self.turns += 1
        if shell.pending_start:
            shell.pending_start = False
            cell._start_incarnation(shell, shell.restart_reason)
        mailbox = cell.mailbox
        get = mailbox.get_nowait
        empty = mailbox.empty
        left = self.throughput
        while left > 0:
            if shell.abandoned:  # (read fresh: the watchdog's thread sets it)
                return  # the watchdog gave up on this thread in a message: it is not ours
            if cell.control_pending:
                cell._apply_directives(shell)
                continue
            if cell.state is not CellState.RUNNING:
                break  # suspended, waiting for a directive (it reschedules the cell)
            # Looked at first: an empty mailbox ends every turn, and raising queue.Empty
            # costs more than the look (Empty still ends it if a detached thread raced).
            if empty():
                break
            try:
                letter = get()
            except queue.Empty:
                break
            cell._deliver(shell, letter)
            left -= 1
        cell.scheduled = False
        # A message posted after the loop looked saw ``scheduled`` True and did not
        # schedule the cell: look again now that it is False.
        if cell.control_pending or (
            cell.state is CellState.RUNNING and cell.shell is shell and not cell.mailbox.empty()
        ):
            cell.schedule()


class Cell:
    """The stable part of an actor: name, mailbox, counters, supervisor link."""

    def __init__(
        self,
        name: str,
        factory: Callable[[], Actor],
        *,
        parent: ActorRef | None,
        dead_letters: DeadLetterOffice,
        on_root_failure: Callable[[Cell, ChildFailed], None] | None = None,
        hang_timeout_s: float | None = None,
        dispatcher: Dispatcher | None = None,
    ) -> None:
        self.name = name
        self.dispatcher = dispatcher
        """None: the cell runs on a thread of its own; else on this shared dispatcher."""
        self.scheduled = False  # in the dispatcher's run queue, or having its turn
        self.in_hand: _Letter | None = None  # taken from the mailbox when a directive came
        self.stopping = False  # handling its last messages (handled_when_stopping)
        self._ready = _Ready(self)
        self.factory = factory
        self.parent = parent
        self.dead_letters = dead_letters
        self.on_root_failure = on_root_failure
        self.hang_timeout_s = hang_timeout_s
        self.mailbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.ref = ActorRef(self)
        self.state = CellState.NEW
        self.instance: Actor | None = None
        self.shell: _Shell | _SharedShell | None = None
        self.incarnation = 0
        self.processed = 0
        self.keepalives = 0  # still_busy() calls: progress inside one long message
        self.failures = 0
        self.restarts = 0
        self.busy_since: float | None = None
        self.current: _Letter | None = None
        self.batch: list[_Letter] = []  # letters taken by take_pending during `current`
        self.failed_at = 0.0
        self.control_pending = False
        self._directives: queue.SimpleQueue[tuple[Directive, str]] = queue.SimpleQueue()
        self._lock = threading.Lock()  # guards shell replacement, not message delivery
        self.started = threading.Event()
        self.stopped = threading.Event()
        self.log = _log.bind(child=name)

    # ---------------------------------------------------------------- life cycle
    def start(self, restart_reason: BaseException | None = None) -> None:
        """Start a new shell thread on this cell's mailbox (first start or after a stop)."""
        with self._lock:
            self.stopped.clear()
            self.started.clear()
            self.state = CellState.RUNNING
            dispatcher = self.dispatcher
            if dispatcher is None:
                _Shell.start(self, restart_reason)  # sets self.shell in its __init__
                return
            _SharedShell(self, dispatcher, restart_reason)  # sets self.shell
            dispatcher.start()
            # Queued even if a turn of an earlier incarnation is still ending (a second
            # turn only finds nothing to do).
            self.scheduled = True
            dispatcher.ready(self._ready)

    def schedule(self) -> None:
        """Give a dispatcher's cell a turn (no effect if it has one coming)."""
        if not self.scheduled:
            self.scheduled = True
            assert self.dispatcher is not None
            self.dispatcher.ready(self._ready)

    def _start_incarnation(self, shell: _AnyShell, reason: BaseException | None) -> None:
        """On the shell's thread: make the instance and run ``on_start``."""
        if reason is not None:
            self.failed_at = self.failed_at or time.monotonic()
        if not self._make_instance(shell, restarting=reason is not None):
            self._await_directive(shell)
        self.started.set()

    def _make_instance(self, shell: _AnyShell, *, restarting: bool) -> bool:
        self.incarnation += 1
        try:
            instance = self.factory()
            instance.context = ActorContext(self.ref, self.name, self.incarnation, self.log, self)
            instance.on_start()
        except BaseException as exc:  # noqa: BLE001 - a failing on_start is a failure too
            self.instance = None
            self._suspend(exc, kind="on_start")
            return False
        self.instance = instance
        self.state = CellState.RUNNING
        if restarting:
            self.restarts += 1
            downtime_ms = (time.monotonic() - self.failed_at) * 1000.0
            self.failed_at = 0.0
            self.log.info(
                "supervisor.child_restarted",
                restart_count=self.restarts,
                downtime_ms=round(downtime_ms, 3),
                incarnation=self.incarnation,
            )
        else:
            self.log.debug("supervisor.child_started", incarnation=self.incarnation)
        return True

    # ---------------------------------------------------------------- delivery
    def post(self, letter: _Letter) -> None:
        """Put a letter in the mailbox, or dead-letter it if the actor is stopped."""
        if self.state is CellState.STOPPED:
            self._dead_letter(letter, "actor_stopped")
            return
        self.mailbox.put(letter)
        if self.dispatcher is not None and not self.scheduled:
            self.scheduled = True
            self.dispatcher.ready(self._ready)

    def _deliver(self, shell: _AnyShell, letter: _Letter) -> None:
        """On the shell's thread: handle one letter."""
        if shell.abandoned:
            # Only reachable if a detached shell raced for the mailbox; give it back.
            self.mailbox.put(letter)
            return
        if self.control_pending:
            # A stop handles what the actor asks for (handled_when_stopping) from here,
            # this letter first: the order of the mailbox is kept.
            self.in_hand = letter
            self._apply_directives(shell)
            in_hand, self.in_hand = self.in_hand, None
            if self.state is CellState.STOPPED:
                if in_hand is not None and in_hand is not _WAKEUP:
                    self._dead_letter(in_hand, "actor_stopped")
                return
        if letter is _WAKEUP:
            return
        body = letter.body
        if type(body) is GetStatistics:
            if letter.future is not None:
                letter.future.set(self.statistics(include_extra=True))
            return
        instance = self.instance
        assert instance is not None
        self.current = letter
        self.busy_since = time.monotonic() if self.hang_timeout_s is not None else 0.0
        try:
            result = instance.receive(body)
        except BaseException as exc:  # noqa: BLE001 - every failure goes to the supervisor
            self.busy_since = None
            self.current = None
            batch, self.batch = self.batch, []
            if shell.abandoned:
                return  # replaced while hung; the new incarnation owns the cell now
            self._fail_letters((letter, *batch), exc, dead=not isinstance(exc, EscalationSignal))
            self._suspend(exc, kind="exception")
            self._await_directive(shell)
            return
        self.busy_since = None
        self.current = None
        if self.batch:
            self.processed += len(self.batch)
            self.batch = []
        if shell.abandoned:  # (read fresh: the watchdog's thread sets it)
            return
        self.processed += 1
        if letter.future is not None:
            letter.future.set(result)
        if self.state is CellState.SUSPENDED:  # the actor asked to stop itself
            self._await_directive(shell)

    def _fail_letters(
        self, letters: tuple[_Letter, ...], exc: BaseException, *, dead: bool
    ) -> None:
        """A handler raised ``exc`` on these letters (the current one and its batch): each
        asker gets the exception; with ``dead`` each letter is also a dead letter."""
        for failed in letters:
            if failed.future is not None and not failed.future_done():
                failed.future.set_exception(exc_info=(type(exc), exc, exc.__traceback__))
            if dead:
                self._dead_letter(failed, f"handler_failed: {exc!r}", exc)

    def _dead_letter(self, letter: _Letter, reason: str, exc: BaseException | None = None) -> None:
        if letter is _WAKEUP or (type(letter) is _Alarm and exc is None):
            return  # an alarm of a stopped actor rings for nobody
        if letter.future is not None and exc is None:
            letter.future.set_exception(
                exc_info=(ActorStopped, ActorStopped(f"{self.name}: {reason}"), None)
            )
        self.dead_letters.publish(
            DeadLetter.fast(
                recipient=self.name,
                message=letter.body,
                reason=reason,
                exception_type=type(exc).__name__ if exc is not None else None,
                sender_waiting=letter.future is not None,
            )
        )

    # ---------------------------------------------------------------- failure
    def _suspend(self, exc: BaseException, *, kind: str, normal: bool = False) -> None:
        """Mark the cell failed and tell the supervisor (or the root handler)."""
        self.state = CellState.SUSPENDED
        self.failures += 0 if normal else 1
        self.failed_at = time.monotonic()
        report = ChildFailed(
            child=self.name,
            incarnation=self.incarnation,
            reason=repr(exc) if not normal else "normal",
            exception_type=type(exc).__name__,
            traceback="".join(traceback.format_exception(exc))[-4000:] if not normal else "",
            kind=kind,
            normal=normal,
        )
        if self.parent is not None:
            self.parent.tell(report)
        elif self.on_root_failure is not None:
            self.on_root_failure(self, report)

    def _await_directive(self, shell: _AnyShell) -> None:
        """Block this shell's thread until the supervisor says restart or stop. On a
        dispatcher, return at once: a suspended cell gets no turn, and the directive
        gives it one."""
        if shell.shared:
            return
        while self.state is CellState.SUSPENDED and not shell.abandoned:
            directive, reason = self._directives.get()
            self.control_pending = False
            self._apply(shell, directive, reason)

    def _apply_directives(self, shell: _AnyShell) -> None:
        self.control_pending = False
        while True:
            try:
                directive, reason = self._directives.get_nowait()
            except queue.Empty:
                return
            self._apply(shell, directive, reason)
            if self.state is CellState.STOPPED:
                return

    def _apply(self, shell: _AnyShell, directive: Directive, reason: str) -> None:
        if directive is Directive.STOP:
            self._finish(shell, reason)
            return
        if self.state is CellState.STOPPED:
            return
        old = self.instance
        exc = RuntimeError(reason)
        if old is not None:
            if not self.failed_at:
                self.failed_at = time.monotonic()
            self._run_hook(old.pre_restart, exc, "pre_restart")
        self.instance = None
        self._make_instance(shell, restarting=True)

    def _run_hook(self, hook: Callable[..., None], *args: Any) -> None:
        name = args[-1]
        try:
            hook(*args[:-1])
        except BaseException as exc:
            self.log.error("supervisor.hook_failed", hook=name, error=repr(exc), exc_info=exc)

    def _finish(self, shell: _AnyShell, reason: str) -> None:
        """Stop for good on the shell's thread: handle what the actor asks to handle when
        stopping, post_stop, dead-letter the rest, detach."""
        if self.instance is not None and self.instance.handled_when_stopping:
            self._handle_when_stopping(self.instance)
        if self.instance is not None:
            self._run_hook(self.instance.post_stop, "post_stop")
        self.instance = None
        with self._lock:
            self.state = CellState.STOPPED
            if self.shell is shell:
                self.shell = None
        shell.detach()
        self._drain_to_dead_letters()
        self.log.info("supervisor.child_stopped", reason=reason)
        self.stopped.set()

    def _handle_when_stopping(self, instance: Actor) -> None:
        """Stopping for good: the mailbox's messages of the types in the actor's
        ``handled_when_stopping`` are handled, in order (an asker gets its answer); every
        other message is a dead letter as usual. A failure is logged and its messages
        (with those the handler took in its batch) are dead letters; the rest is then left
        to the dead-letter drain."""
        kinds = instance.handled_when_stopping
        self.stopping = True  # still_busy() is False: a slow message gives up at once
        first, self.in_hand = self.in_hand, None  # taken from the mailbox as the stop came
        while True:
            if first is not None:
                letter, first = first, None
            else:
                try:
                    letter = self.mailbox.get_nowait()
                except queue.Empty:
                    return
            if letter is _WAKEUP:
                continue
            if not isinstance(letter.body, kinds):
                self._dead_letter(letter, "actor_stopped")
                continue
            self.current = letter
            try:
                result = instance.receive(letter.body)
            except BaseException as exc:  # logged; its messages become dead letters
                batch, self.batch = self.batch, []
                self.log.error("supervisor.stop_handling_failed", error=repr(exc), exc_info=exc)
                self._fail_letters((letter, *batch), exc, dead=True)
                return
            finally:
                self.current = None
            self.processed += 1 + len(self.batch)
            self.batch = []
            if letter.future is not None:
                letter.future.set(result)

    def _drain_to_dead_letters(self) -> None:
        while True:
            try:
                letter = self.mailbox.get_nowait()
            except queue.Empty:
                return
            self._dead_letter(letter, "actor_stopped")

    def _request_self_stop(self) -> None:
        """Called by the actor itself: report a normal exit after the current message."""
        self._suspend(RuntimeError("normal exit"), kind="stopped", normal=True)

    def still_busy(self) -> bool:
        """On the actor's thread, inside ``receive``: the current message is slow on
        purpose (e.g. waiting for a store to come back). Counts as progress, so neither
        the hang watchdog nor the health monitor replaces the actor. Returns False when a
        supervisor directive (a stop) waits, or the actor is handling its last messages
        while it stops: the actor should give up the message."""
        self.keepalives += 1
        if self.busy_since:
            self.busy_since = time.monotonic()
        return not (self.control_pending or self.stopping)

    def take_pending(self, limit: int) -> list[Pending]:
        """On the actor's thread, inside ``receive``: take up to ``limit`` more messages
        from the mailbox to handle as one batch (e.g. one transaction for many writes).

        Stops early before a supervisor directive. If the handler then fails, every taken
        message is a dead letter like the current one.
        """
        taken: list[Pending] = []
        mailbox = self.mailbox
        while len(taken) < limit and not self.control_pending:
            if mailbox.empty():  # (the common end of a batch: cheaper than queue.Empty)
                break
            try:
                letter = mailbox.get_nowait()
            except queue.Empty:
                break
            if letter is _WAKEUP:
                self.mailbox.put(_WAKEUP)  # keep the wake-up for the directive behind it
                break
            if type(letter.body) is GetStatistics:
                if letter.future is not None:
                    letter.future.set(self.statistics(include_extra=True))
                continue
            self.batch.append(letter)
            taken.append(Pending(letter))
        return taken

    # ---------------------------------------------------------------- control from outside
    def send_directive(self, directive: Directive, reason: str) -> None:
        """Ask the cell to restart or stop (applied before its next message).

        A cell with no live thread (stopped, or its hung thread abandoned) is restarted
        on a new shell thread, or marked stopped, right here.
        """
        with self._lock:
            has_thread = self.shell is not None
            if not has_thread and directive is Directive.STOP:
                self.state = CellState.STOPPED
        if has_thread:
            self._directives.put((directive, reason))
            self.control_pending = True
            self.mailbox.put(_WAKEUP)
            if self.dispatcher is not None:
                self.schedule()
        elif directive is Directive.RESTART:
            self.failed_at = self.failed_at or time.monotonic()
            self.start(RuntimeError(reason))
        else:
            self._drain_to_dead_letters()
            if not self.stopped.is_set():
                self.log.info("supervisor.child_stopped", reason=reason)
            self.stopped.set()

    def stop(self, timeout_s: float, reason: str = "shutdown") -> bool:
        """Stop the cell and wait up to ``timeout_s``; a cell that does not stop in time
        is abandoned (its thread detached, its mailbox dead-lettered). True if it stopped
        cleanly."""
        if self.state is CellState.STOPPED and self.stopped.is_set():
            return True
        if self.state is CellState.NEW:
            self.state = CellState.STOPPED
            self.stopped.set()
            return True
        self.send_directive(Directive.STOP, reason)
        if self.stopped.wait(timeout_s):
            return True
        self.abandon(f"{reason}: shutdown timeout")
        with self._lock:
            self.state = CellState.STOPPED
        self._drain_to_dead_letters()
        self.log.warning("supervisor.child_stopped", reason=f"{reason} (shutdown timeout)")
        self.stopped.set()
        return False

    def abandon(self, reason: str, busy_since: float | None = None) -> bool:
        """Detach the current shell (hung, or too slow to stop); its thread is left behind.

        With ``busy_since``, do nothing (and return False) if the actor has moved on from
        the message the watchdog saw as hung.
        """
        with self._lock:
            shell = self.shell
            if shell is None or shell.abandoned:
                return False
            if busy_since is not None and self.busy_since != busy_since:
                return False
            shell.abandoned = True
            self.shell = None
            shell.detach()
            letter = self.current
            self.current = None
            self.busy_since = None
            if isinstance(shell, _SharedShell):
                # The dispatcher's thread is stuck in this cell's message (or too slow
                # to stop it): the other cells go on on a new thread; this one starts
                # afresh when its supervisor restarts it.
                stuck = shell.dispatcher.running or shell.dispatcher.thread
                if stuck is not None:
                    shell.dispatcher.replace_thread(stuck)
                self.scheduled = False
        if letter is not None:
            if letter.future is not None:
                exc = ActorHung(f"{self.name}: {reason}")
                letter.future.set_exception(exc_info=(ActorHung, exc, None))
            self._dead_letter(letter, f"hung: {reason}", ActorHung(reason))
        return True

    def report_hung(self, busy_s: float, busy_since: float) -> None:
        """Called by the watchdog: replace a hung incarnation and tell the supervisor."""
        if self.abandon(f"no progress for {busy_s:.3f}s", busy_since):
            self._suspend(ActorHung(f"hung for {busy_s:.3f}s"), kind="hung")

    def report_died(self) -> None:
        """Called by the watchdog: the shell's thread is gone without a stop."""
        self.abandon("thread died")
        self._suspend(RuntimeError("actor thread died"), kind="died")

    def hung_for(self, now: float) -> tuple[float, float] | None:
        """``(seconds busy, busy_since)`` if the current message has run past the hang
        timeout, else None."""
        since = self.busy_since
        if self.hang_timeout_s is None or not since:
            return None
        busy = now - since
        return (busy, since) if busy > self.hang_timeout_s else None

    def thread_died(self) -> bool:
        """True when the running shell's thread ended without the cell stopping."""
        shell = self.shell
        if shell is None or self.state is not CellState.RUNNING or shell.thread is None:
            return False
        return not shell.thread.is_alive()

    def statistics(self, *, include_extra: bool = False) -> ActorStatistics:
        """A snapshot of this cell's counters. ``include_extra`` (the actor's own
        ``statistics()``) only on the actor's own thread, which owns that state."""
        extra: Any = {}
        instance = self.instance
        if include_extra and instance is not None:
            try:
                extra = dict(instance.statistics())
            except Exception as exc:  # noqa: BLE001 - statistics must never break status
                extra = {"statistics_error": repr(exc)}
        return ActorStatistics(
            name=self.name,
            state=self.state.value,
            processed=self.processed,
            keepalives=self.keepalives,
            failures=self.failures,
            restarts=self.restarts,
            mailbox_depth=self.mailbox.qsize(),
            incarnation=self.incarnation,
            extra=extra,
        )


class Pulse(NamedTuple):
    """An actor's liveness at a glance (see :meth:`ActorRef.pulse`)."""

    state: str
    work: int
    """Messages processed plus keepalives: it changes while the actor makes progress."""
    has_mail: bool


class ActorRef:
    """A reference to an actor that stays valid across its restarts.

    ``tell`` and ``ask`` accept only immutable messages (see ``check_immutable``).
    """

    __slots__ = ("_cell",)

    def __init__(self, cell: Cell) -> None:
        self._cell = cell

    @property
    def name(self) -> str:
        """The actor's name (unique within its system)."""
        return self._cell.name

    def claim_dispatcher(self) -> LentThread | None:
        """Caller-runs: claim this actor's dispatcher for the calling thread if it is idle
        (see :meth:`Dispatcher.claim`); None if the actor has a thread of its own or its
        dispatcher is busy. Tell it, then call the claim's ``run()``: the turns the tell
        causes run on this thread instead of waking the dispatcher's."""
        dispatcher = self._cell.dispatcher
        return None if dispatcher is None else dispatcher.claim()

    def tell(self, message: Any) -> None:
        """Send ``message`` without waiting; it is delivered in order, or dead-lettered."""
        if known_frozen(type(message)) is not True:
            check_immutable(message)
        letter = _new_letter(_Letter)  # (no __init__ call: one Python call less per tell)
        letter.body = message
        letter.future = None
        self._cell.post(letter)

    def alarm(self, message: Any) -> None:
        """Deliver the actor's own alarm (a timer it armed): like :meth:`tell`, except
        that an actor stopped before handling it drops it quietly (not a dead letter)."""
        if known_frozen(type(message)) is not True:
            check_immutable(message)
        self._cell.post(_Alarm(message, None))

    def ask_future(self, message: Any) -> pykka.ThreadingFuture[Any]:
        """Send ``message`` and return a future of the actor's answer."""
        if known_frozen(type(message)) is not True:
            check_immutable(message)
        future: pykka.ThreadingFuture[Any] = pykka.ThreadingFuture()
        self._cell.post(_Letter(message, future))
        return future

    def ask(self, message: Any, timeout: float | None = 5.0) -> Any:
        """Send ``message`` and wait for the answer.

        Raises the handler's exception if it failed (the actor is then restarted or
        stopped by its supervisor), ``ActorStopped`` if the actor is stopped, and
        ``TimeoutError`` after ``timeout`` seconds.
        """
        future = self.ask_future(message)
        try:
            return future.get(timeout=timeout)
        except pykka.Timeout as exc:
            raise TimeoutError(f"no answer from {self.name} within {timeout}s") from exc

    def is_alive(self) -> bool:
        """True while the actor accepts messages (running, or failed awaiting a restart)."""
        return self._cell.state is not CellState.STOPPED

    def statistics(self) -> ActorStatistics:
        """The actor's counters, read without waiting for its thread."""
        return self._cell.statistics()

    def pulse(self) -> Pulse:
        """What a health monitor reads of the actor at every tick, without waiting for its
        thread: its state, the work it has done (messages processed plus keepalives) and
        whether mail waits. A plain tuple: :meth:`statistics` builds a validated message,
        several times the cost, for every watched actor, twice a second."""
        cell = self._cell
        return Pulse(cell.state.value, cell.processed + cell.keepalives, not cell.mailbox.empty())

    def __repr__(self) -> str:
        return f"ActorRef({self._cell.name!r}, state={self._cell.state.value})"


# A reference is a handle to a cell, not shared data: actors may pass refs to each other.
register_immutable(ActorRef)
