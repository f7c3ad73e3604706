"""What the pipeline actors share by construction: peer references, the clock, and the
three synchronisation objects at the host boundary.

Actors share no mutable state. The objects here are the exceptions the boundary needs,
each a synchronisation primitive rather than data an actor computes with:

* :class:`Admission` — queue capacity as credits (a semaphore): ``submit`` takes one per
  task (raising ``QueueFull`` or blocking, as configured) and the queue gives it back when
  the task leaves the queue. Backpressure without asking the queue actor on every submit.
* :class:`ResultWaiters` — futures that ``TaskHandle.result()`` waits on; the journal
  resolves them when it records a terminal state.
* :class:`EventHub` — lifecycle event subscribers; actors publish only when someone listens.
* :class:`OutcomeWindow` — attempts started and not yet settled in the store, as credits:
  a worker takes one before it runs a handler, the journal gives them back when it has
  committed the outcomes. Backpressure from the store's commits to the agents.
"""

from __future__ import annotations

import functools
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

import structlog

from actors.cell import ActorRef
from actors.timers import TimerService
from messages.base import FrozenDict
from messages.errors import QueueFull
from messages.events import LifecycleEvent
from messages.pipeline import Enqueue, InjectCrash, Persist, Tick
from messages.task import TERMINAL_STATES, TaskRecord, TaskState

if TYPE_CHECKING:
    from actors.base import Actor
    from actors.journal.store import TaskStore

__all__ = [
    "Admission",
    "Clock",
    "EventHub",
    "HeldReports",
    "OutcomeWindow",
    "Peers",
    "ResultWaiters",
    "SystemClock",
    "TickTimer",
    "Wiring",
    "last_of_each",
    "ring",
    "take_in_mailbox",
]

_log = structlog.get_logger("arbiter.events")
_T = TypeVar("_T")


class Clock(Protocol):
    """Time as the actors see it (injected, so tests can control it)."""

    def monotonic(self) -> float:
        """Seconds on a monotonic clock."""

    def now(self) -> datetime:
        """Wall-clock time, timezone-aware UTC."""


class SystemClock:
    """The real clock. Its methods are the C functions themselves (no Python frame per
    reading: the actors read the clock several times per task)."""

    monotonic = staticmethod(time.monotonic)
    now = staticmethod(functools.partial(datetime.now, UTC))


@dataclass
class Peers:
    """References of the pipeline actors, filled in once while the runner starts, before
    any task flows, and only read afterwards. Refs stay valid across restarts."""

    journal: ActorRef | None = None
    events: ActorRef | None = None
    registry: ActorRef | None = None
    performance: ActorRef | None = None
    health: ActorRef | None = None
    retry: ActorRef | None = None
    scheduler: ActorRef | None = None
    queue: ActorRef | None = None
    router: ActorRef | None = None
    agents: ActorRef | None = None  # the agents' supervisor
    claimer: ActorRef | None = None  # shared mode only (a store many runners share)

    def get(self, name: str) -> ActorRef:
        """The reference of a peer; raises if the runner is not wired yet."""
        ref = getattr(self, name)
        if ref is None:
            raise RuntimeError(f"peer {name!r} is not started")
        return ref  # type: ignore[no-any-return]


class Admission:
    """Credits for queue capacity: one per task between submit and leaving the queue.

    A counter under a condition, so a batch takes or gives back all its credits in one
    step (a semaphore would cost one call per task on the submit path and in the queue).
    A batch is admitted whole or not at all.
    """

    def __init__(self, capacity: int, block_timeout_s: float | None) -> None:
        self.capacity = capacity
        self.block_timeout_s = block_timeout_s
        # Taken directly (``with self._lock``): a Condition's own ``with`` is two Python
        # calls on the submit path and the queue's; waiting and notifying use ``_cond``.
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._held = 0
        # What each submitter blocked for room waits for: a release wakes them only when
        # the smallest of these fits (a drained batch at a time frees a few credits; a
        # submitter of 500 woken for each would go back to sleep, at a thread switch each).
        self._waiting: list[int] = []

    def acquire(self, count: int) -> None:
        """Take ``count`` credits or raise QueueFull (after blocking, if configured)."""
        with self._lock:
            if self.capacity - self._held >= count:
                self._held += count
                return
            timeout = self.block_timeout_s
            if timeout is not None and count <= self.capacity:
                self._waiting.append(count)
                try:
                    room = self._cond.wait_for(
                        lambda: self.capacity - self._held >= count, timeout=timeout
                    )
                finally:
                    self._waiting.remove(count)
                if room:
                    self._held += count
                    return
        raise QueueFull(
            f"queue is full ({self.capacity} tasks); retry later"
            + (f" (waited {self.block_timeout_s}s)" if self.block_timeout_s is not None else "")
        )

    def release(self, count: int) -> None:
        """Give back ``count`` credits (tasks left the queue, or were duplicates)."""
        if count <= 0:
            return
        with self._lock:
            self._held -= min(count, self._held)
            if self._waiting and self.capacity - self._held >= min(self._waiting):
                self._cond.notify_all()

    @property
    def in_use(self) -> int:
        """Credits currently held (tasks admitted and not yet out of the queue)."""
        return self._held


class OutcomeWindow:
    """Credits for attempts whose outcome the store has not committed yet (a store written
    by the journal's thread: SQLite, PostgreSQL).

    A worker takes a credit before it runs a handler (:meth:`enter`, blocking while none
    is left); an async agent takes them before it starts attempts (:meth:`try_enter`,
    never blocking: it is rung when credits come back). The credit comes back
    (:meth:`release`) when the journal has committed the agent's write of the outcome,
    when the attempt is given up (timed out, cancelled, abandoned), or when that write is
    orphaned. So at any moment at most ``limit`` attempts have run, or run now, without
    their outcome in the store: after a ``kill -9`` at most that many tasks run again.
    ``limit`` is ``extra`` plus the agents' slots (the sum of their max_concurrency):
    running attempts alone never fill it, and ``extra`` is how far the handlers may get
    ahead of the commits. Without it, a slow or failing store (a commit that takes 15 ms,
    an outage the journal rides out) let the agents go on running tasks whose outcomes
    only pile up in the journal's mailbox.
    """

    def __init__(self, extra: int) -> None:
        if extra < 0:
            raise ValueError("extra must be >= 0")
        self.extra = extra
        self.slots = 0
        self.held = 0
        self.waits = 0
        """How many times an attempt waited for a credit (statistics)."""
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)
        self._sleepers = 0
        self._wakers: dict[int, Callable[[], None]] = {}
        self._closed = False

    @property
    def limit(self) -> int:
        """Credits in all: ``extra`` plus the agents' slots."""
        return self.extra + self.slots

    def add_slots(self, count: int) -> None:
        """An agent with ``count`` slots came (a negative count: went)."""
        with self._lock:
            self.slots = max(0, self.slots + count)
        self._wake()

    def enter(self) -> None:
        """Take a credit, waiting while none is left (a worker, before running a
        handler). Returns at once once the window is closed (the runner stops)."""
        with self._lock:
            if self._full():
                self.waits += 1
                self._sleepers += 1
                try:
                    while self._full():
                        self._room.wait()
                finally:
                    self._sleepers -= 1
            self.held += 1

    def try_enter(self, count: int, key: object, waker: Callable[[], None]) -> int:
        """Take up to ``count`` credits without waiting; how many were taken. If fewer,
        ``waker()`` is called (once per ``key``, from the releasing thread) when credits
        come back."""
        with self._lock:
            room = count if self._closed else max(0, self.extra + self.slots - self.held)
            taken = min(count, room)
            self.held += taken
            if taken < count:
                self.waits += 1
                self._wakers[id(key)] = waker
        return taken

    def release(self, count: int) -> None:
        """Give ``count`` credits back (their outcomes are committed, or given up)."""
        if count <= 0:
            return
        with self._lock:
            self.held = max(0, self.held - count)
        self._wake()

    def close(self) -> None:
        """No more waiting (the runner stops): wake everyone, admit everything."""
        with self._lock:
            self._closed = True
        self._wake()

    def _full(self) -> bool:
        """No credit left (under the lock); never once closed."""
        return self.held >= self.extra + self.slots and not self._closed

    def _wake(self) -> None:
        with self._lock:
            if self._full():
                return
            if self._sleepers:
                self._room.notify_all()
            wakers, self._wakers = list(self._wakers.values()), {}
        for waker in wakers:
            waker()


class ResultWaiters:
    """Futures for ``TaskHandle.result()``, resolved by the journal on terminal states."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: dict[uuid.UUID, list[Callable[[TaskRecord], None]]] = {}

    def add(self, task_id: uuid.UUID, callback: Callable[[TaskRecord], None]) -> None:
        """Call ``callback(record)`` when ``task_id`` reaches a terminal state."""
        with self._lock:
            self._waiting.setdefault(task_id, []).append(callback)

    def discard(self, task_id: uuid.UUID, callback: Callable[[TaskRecord], None]) -> None:
        """Stop waiting (the waiter gave up)."""
        with self._lock:
            callbacks = self._waiting.get(task_id)
            if callbacks and callback in callbacks:
                callbacks.remove(callback)
                if not callbacks:
                    del self._waiting[task_id]

    def resolve(self, record: TaskRecord) -> None:
        """Wake whoever waits for this (terminal) record."""
        if not self._waiting:  # unlocked fast path: nobody waits at all
            return
        with self._lock:
            callbacks = self._waiting.pop(record.task_id, None)
        for callback in callbacks or ():
            callback(record)


@dataclass
class EventHub:
    """Lifecycle event subscribers. ``publish`` is cheap when nobody subscribed."""

    clock: Clock = field(default_factory=SystemClock)
    _subscribers: list[Callable[[LifecycleEvent], None]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    sink: ActorRef | None = None  # the events actor, which calls subscribers on its thread

    active: bool = field(default=False, init=False)
    """True when at least one subscriber listens (a plain attribute, set with the list:
    every actor reads it several times per task)."""

    def subscribe(self, callback: Callable[[LifecycleEvent], None]) -> Callable[[], None]:
        """Add a subscriber; returns a function that removes it."""
        with self._lock:
            self._subscribers = [*self._subscribers, callback]
            self.active = True

        def unsubscribe() -> None:
            with self._lock:
                self._subscribers = [s for s in self._subscribers if s is not callback]
                self.active = bool(self._subscribers)

        return unsubscribe

    def subscribers(self) -> list[Callable[[LifecycleEvent], None]]:
        """The current subscribers (a snapshot)."""
        return self._subscribers

    def publish(self, name: str, task_id: uuid.UUID | None = None, **data: Any) -> None:
        """Emit one lifecycle event (to the events actor) if anyone listens."""
        if not self._subscribers or self.sink is None:
            return
        event = LifecycleEvent.fast(
            name=name, at=self.clock.now(), task_id=task_id, data=FrozenDict(data)
        )
        self.sink.tell(event)


@dataclass
class Wiring:
    """Everything a pipeline actor is built with, besides its own state box."""

    peers: Peers
    clock: Clock
    hub: EventHub
    timers: TimerService
    waiters: ResultWaiters
    admission: Admission
    direct_store: TaskStore | None = None
    """Set when the pipeline writes its updates into the store itself (a store with
    ``concurrent_inserts``, ``memory://``, not shared, no pickup): see :meth:`persist`."""
    window: OutcomeWindow | None = None
    """With a journal thread committing the writes: the attempts not yet settled in the
    store (``RunnerConfig.commit_window``). None with a ``direct_store`` (every write is
    in the store before its writer goes on)."""

    def persist(self, records: tuple[TaskRecord, ...], settles: int = 0) -> None:
        """Write new versions of tasks to the store, in the order they were made.

        Through the journal (one group commit for what its mailbox holds), or, with a
        ``direct_store``, at once from the calling actor's thread: that store holds its
        lock for each batch, and every update of the pipeline is written this way before
        its writer sends the message that leads to the task's next version, so versions
        reach the store in the order they were made, as through the journal's one
        mailbox. Whoever waits for a task that reached a terminal state is woken.
        A store error propagates to the calling actor, whose supervisor handles it.
        ``settles``: the window credits of the attempts whose outcomes these are (the
        journal gives them back once it has committed them).
        """
        store = self.direct_store
        if store is None:
            self.peers.get("journal").tell(
                Persist.fast(records=records, redelivered=False, settles=settles)
            )
            return
        # An agent's batch often holds a task's RUNNING and its COMPLETED: the store holds
        # the same after writing only the last (its batch is all or nothing).
        written = last_of_each(records) if len(records) > 1 else records
        store.apply((), written)
        resolve = self.waiters.resolve
        for record in written:
            if record.state in TERMINAL_STATES:
                resolve(record)

    def requeue_waiting(self, due: Sequence[TaskRecord], now: datetime) -> int:
        """Tasks whose wait is over (a retry's backoff, a delayed task's run time): QUEUED,
        written, and to the queue without an admission credit; returns how many."""
        if not due:
            return 0
        queued = tuple(
            record.moved(TaskState.QUEUED, at=now, next_attempt_at=None) for record in due
        )
        self.persist(queued)
        self.peers.get("queue").tell(
            Enqueue.fast(records=queued, admitted=False, redelivered=False)
        )
        return len(queued)

    def cancel_waiting(self, record: TaskRecord | None, where: str) -> bool:
        """A waiting task just taken out of its timer heap (None: it was not there):
        CANCELLED, written, ``task.cancelled`` published; True if there was one."""
        if record is None:
            return False
        self.persist((record.moved(TaskState.CANCELLED, at=self.clock.now()),))
        if self.hub.active:
            self.hub.publish("task.cancelled", record.task_id, where=where)
        return True


def last_of_each(updates: Sequence[TaskRecord]) -> Sequence[TaskRecord]:
    """The last update of each task: what a store holds after applying them all (a later
    one replaces an earlier one), with each task written once. A batch taken under load
    often holds a task's RUNNING and its COMPLETED. Order between different tasks does
    not matter here: the pipeline's updates never change a spec (so never an idempotency
    key, the one thing two tasks' updates could contend for)."""
    last = {record.task_id.int: record for record in updates}
    return updates if len(last) == len(updates) else tuple(last.values())


def take_in_mailbox(
    actor: Actor,
    first: Any,
    kinds: tuple[type, ...],
    take_in: Callable[[Any], bool],
    before_other: Callable[[], None],
    limit: int,
) -> bool:
    """Take in ``first`` and up to ``limit`` more messages of ``kinds`` waiting in the
    actor's mailbox with ``take_in`` (which returns a flag; the result is True if any call
    did), so that the caller acts once for all of them afterwards.

    Any other message is handled in its place in the mailbox order, by the actor's own
    ``receive`` (its asker answered), after ``before_other()`` acts on what came before
    it. An ``InjectCrash`` is sent again, to fail on its own turn rather than in the middle
    of a batch already taken (a failure dead-letters every message taken with it).
    """
    flag = take_in(first)
    context = actor.context
    for item in context.take_pending(limit):
        body = item.message
        if isinstance(body, kinds):
            flag = take_in(body) or flag
        elif isinstance(body, InjectCrash):
            context.self_ref.tell(body)
        else:
            before_other()
            item.reply(actor.receive(body))
    return flag


def ring(ref: ActorRef, alarm: Any) -> None:
    """Deliver an actor's own alarm (a timer it armed), unless the actor has stopped for
    good: then the alarm rings for nobody. Nobody sent it, nobody waits for it, so it is
    not a dead letter (which would log a warning at every shutdown)."""
    ref.alarm(alarm)


class HeldReports(Generic[_T]):
    """Figures for a peer that need not arrive at once (outcomes and routing latencies for
    the performance tracker): held until ``batch`` of them are in, or at most ``delay_s``
    after the first, then sent in one message, so the tracker's mailbox sees one message
    per batch instead of one per batch of tasks.

    When they go matters as much as how many: the tracker's turn to record a batch cannot
    be interrupted, and a task whose next hop (or whose handler's thread) waits for the
    interpreter meanwhile waits for all of it. Sent on a timer tick, that turn comes at a
    random moment, often in the middle of a task's path (at 1,000 tasks/s, the slowest 1%
    of tasks were mostly those). So the holder sends them from a turn of its own that
    follows a task's end (:meth:`add` answers True once they are half ``delay_s`` old),
    when the next task is least likely to be on its way; the tick at ``delay_s`` is only
    the fallback of an idle holder, so the holder's owner disarms it when it sends from a
    turn (:meth:`TickTimer.disarm`): under a steady load that tick would otherwise come
    every half ``delay_s``, find nothing due, and wake the dispatcher's thread for it."""

    def __init__(self, batch: int = 256, delay_s: float = 0.1) -> None:
        self.batch = batch
        self.delay_s = delay_s
        self.items: list[_T] = []
        self.since: float | None = None  # monotonic time the oldest item held came

    def add(self, items: Sequence[_T], wiring: Wiring, ref: ActorRef, timer: TickTimer) -> bool:
        """Hold ``items`` (call it from a turn that follows a task's end, see above). True
        when what is held is due (send it now: :meth:`take`): a full batch, or held for
        half ``delay_s`` (given new items: adding none never makes them due); otherwise
        ``timer`` is armed to tick ``ref`` within ``delay_s`` (send on the tick)."""
        if not items:
            return False
        self.items.extend(items)
        now = wiring.clock.monotonic()
        if self.since is None:
            self.since = now
            timer.arm(wiring.timers, ref, now + self.delay_s, now)
        return self.due(now)

    def tick_due(self, wiring: Wiring, ref: ActorRef, timer: TickTimer) -> bool:
        """On the holder's tick (after ``timer.fired()``): True when what is held is
        ``delay_s`` old (send it now). Items held since a later time (the ones the tick
        was armed for went from a turn already) wait for a turn, or for a tick armed
        again for them: sent now, they would be sent at a random moment again."""
        since = self.since
        if since is None:
            return False
        now = wiring.clock.monotonic()
        if now - since >= self.delay_s * 0.999:  # (a timer may fire a hair early)
            return True
        timer.arm(wiring.timers, ref, since + self.delay_s, now)
        return False

    def due(self, now: float) -> bool:
        """True when what is held should be sent: a full batch, or held half ``delay_s``."""
        since = self.since
        return since is not None and (
            len(self.items) >= self.batch or now - since >= self.delay_s / 2
        )

    def take(self) -> tuple[_T, ...]:
        """Everything held, oldest first; nothing is held afterwards."""
        items, self.items = tuple(self.items), []
        self.since = None
        return items


class TickTimer:
    """At most one pending timer per actor: ``arm(due)`` asks the timer service to tell
    the actor a :class:`~messages.pipeline.Tick` at monotonic time ``due``, unless a tick
    is already armed for that time or earlier. Lives in the actor's state box, so a
    restarted incarnation does not arm a second timer for the same due time."""

    def __init__(self) -> None:
        self.due: float | None = None
        self.handle: int | None = None

    def arm(self, timers: TimerService, ref: ActorRef, due: float, now: float) -> None:
        """Make sure ``ref`` gets a Tick no later than ``due``."""
        if self.due is not None and self.due <= due:
            return
        if self.handle is not None:
            timers.cancel(self.handle)
        self.due = due
        tick = Tick.fast(at=due)
        self.handle = timers.call_later(max(0.0, due - now), lambda: ring(ref, tick))

    def fired(self) -> None:
        """The armed tick arrived (call first thing on Tick)."""
        self.due = None
        self.handle = None

    def is_for(self, tick: Tick) -> bool:
        """True if ``tick`` is the one armed now (for an actor with more than one timer:
        each tick carries the due time it was armed for)."""
        return self.due is not None and tick.at == self.due

    def disarm(self, timers: TimerService) -> None:
        """No tick is wanted any more: cancel the armed one (if it already went, its Tick
        still arrives, and the actor finds nothing to do)."""
        if self.handle is not None:
            timers.cancel(self.handle)
        self.due = None
        self.handle = None
