"""Agent executors: one actor per registered agent, running its handler.

A sync handler runs on the agent's thread pool (``max_concurrency`` threads); an async
handler runs on the agent's own event loop thread. Either way the executor actor never
blocks: each ended attempt goes into the executor's completion line, rung with one
:class:`~messages.pipeline.WorkDone` however many end before the executor looks, and
the executor records the outcome, releases the slot at the router and hands failures to
the retry scheduler, all in batches.

With a prefetch, the tasks a sync agent holds beyond its free slots are handed to its
threads' job queue at once (``AgentState.handed``): a thread that ends an attempt takes
the next without waiting for the executor, and reports the start in a start line rung
like the completion line; the executor makes the task RUNNING when it takes the line.

Crash safety: the :class:`AgentState` box outlives a crashed incarnation. The new
incarnation sends every attempt that was running back to the queue with its attempt
counted (``requeue_now``); a late result of such an attempt is discarded as a zombie.
When the agent stops for good (deregistered), it does the same with what it still holds.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import queue
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from actors.base import Actor
from actors.cell import ActorRef
from actors.pipeline import HeldReports, OutcomeWindow, TickTimer, Wiring, ring
from messages.base import EMPTY_FROZEN_DICT, freeze_json, thaw_json
from messages.errors import PermanentError
from messages.pipeline import (
    Assign,
    CancelTask,
    Enqueue,
    InjectCrash,
    OutcomeItem,
    Outcomes,
    Released,
    RetryTask,
    Tick,
    TimeoutCheck,
    WorkDone,
)
from messages.task import AgentSpec, Attempt, TaskRecord, TaskState, attempt_entry

__all__ = ["AgentExecutor", "AgentState", "TaskContext"]

_ERROR_LIMIT = 2000


class TaskContext:
    """What a handler gets: ``def handler(task: TaskContext) -> result``.

    Read-only attributes: ``task_id``, ``type``, ``payload``, ``attempt``, ``agent_id``,
    ``idempotency_key``, ``deadline`` and ``trace_context``. ``payload`` is a plain
    (mutable, private) copy of the task's JSON payload, made when the handler first reads
    it (a handler that never looks at it costs no copy). A long handler should poll
    :meth:`is_cancelled` and return early when it is set (the task was cancelled or timed
    out; cancellation is cooperative for sync handlers).

    A slotted class rather than a frozen dataclass: one is made per attempt, and this
    costs a fifth as much.
    """

    __slots__ = (
        "_cancelled",
        "_early",
        "_frozen_payload",
        "_held",
        "_payload",
        "agent_id",
        "attempt",
        "deadline",
        "idempotency_key",
        "task_id",
        "trace_context",
        "type",
    )
    task_id: uuid.UUID
    type: str
    _frozen_payload: Any
    _payload: Any  # unset until the handler first reads ``payload``
    attempt: int
    agent_id: str
    idempotency_key: str | None
    deadline: datetime | None
    trace_context: dict[str, str]
    # A one-element list rather than an Event: set once by the executor, read by the
    # handler; a single reference store, so no lock is needed, and it is cheap to make.
    _cancelled: list[bool]
    # True when the executor handed the attempt to its workers ahead of a free slot (a
    # prefetched task): the worker that takes it reports when it starts.
    _early: bool
    # With an outcome window (a journal store): ``[1]`` while the attempt holds a window
    # credit, unset before. Given back by whoever pops it first (``list.pop`` is atomic):
    # the executor once the outcome is written or the attempt given up, or the worker
    # that finds the attempt cancelled after taking the credit.
    _held: list[int]

    def __init__(
        self,
        task_id: uuid.UUID,
        type: str,
        payload: Any,
        attempt: int,
        agent_id: str,
        idempotency_key: str | None = None,
        deadline: datetime | None = None,
        trace_context: dict[str, str] | None = None,
    ) -> None:
        # ``payload`` may be frozen JSON (the executor's) or a plain value (tests).
        _fill_context(
            self,
            task_id,
            type,
            payload,
            attempt,
            agent_id,
            idempotency_key,
            deadline,
            {} if trace_context is None else trace_context,
            False,
        )

    @property
    def payload(self) -> Any:
        """The task's JSON payload, as a plain (mutable) copy private to this attempt."""
        try:
            return self._payload
        except AttributeError:
            frozen = self._frozen_payload
            payload = {} if frozen is EMPTY_FROZEN_DICT else thaw_json(frozen)
            _SET_SLOT["_payload"](self, payload)
            return payload

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"TaskContext is read-only (cannot set {name!r})")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"TaskContext is read-only (cannot delete {name!r})")

    def __repr__(self) -> str:
        return (
            f"TaskContext(task_id={self.task_id!s}, type={self.type!r}, "
            f"attempt={self.attempt}, agent_id={self.agent_id!r})"
        )

    def is_cancelled(self) -> bool:
        """True once the attempt was cancelled or timed out."""
        return self._cancelled[0]


# Each slot's setter (the class's own ``__setattr__`` refuses every assignment).
_SET_SLOT: Final = {name: getattr(TaskContext, name).__set__ for name in TaskContext.__slots__}
_set_task_id = _SET_SLOT["task_id"]
_set_type = _SET_SLOT["type"]
_set_frozen_payload = _SET_SLOT["_frozen_payload"]
_set_attempt = _SET_SLOT["attempt"]
_set_agent_id = _SET_SLOT["agent_id"]
_set_idempotency_key = _SET_SLOT["idempotency_key"]
_set_deadline = _SET_SLOT["deadline"]
_set_trace_context = _SET_SLOT["trace_context"]
_set_cancelled = _SET_SLOT["_cancelled"]
_set_early = _SET_SLOT["_early"]
_set_held = _SET_SLOT["_held"]
_new_context = object.__new__


def _fill_context(
    context: TaskContext,
    task_id: uuid.UUID,
    type: str,
    payload: Any,
    attempt: int,
    agent_id: str,
    idempotency_key: str | None,
    deadline: datetime | None,
    trace_context: dict[str, str],
    early: bool,
) -> None:
    """Set every slot of a new context but ``_payload`` (unset until first read)."""
    _set_task_id(context, task_id)
    _set_type(context, type)
    _set_frozen_payload(context, payload)
    _set_attempt(context, attempt)
    _set_agent_id(context, agent_id)
    _set_idempotency_key(context, idempotency_key)
    _set_deadline(context, deadline)
    _set_trace_context(context, trace_context)
    _set_cancelled(context, [False])
    _set_early(context, early)


_Done = tuple[TaskContext, bool, Any, str | None, str | None, bool, float]
"""An ended attempt in the completion line: ``(context, ok, result, error, error_type,
permanent, ended)``; ``result`` is frozen JSON, ``ended`` the monotonic end time."""

_WORK_DONE: Final = WorkDone.fast()
_TO_RUNNING: Final[dict[TaskState, tuple[TaskState, ...]]] = {
    TaskState.QUEUED: (TaskState.ASSIGNED, TaskState.RUNNING),
    TaskState.ASSIGNED: (TaskState.RUNNING,),
}
"""The moves that make a waiting task RUNNING: the router hands tasks over as the queue
gave them (QUEUED; the ``Assign`` itself assigns them), and the agent makes one version of
the move through ASSIGNED (which is never written: see the router)."""
_RUN: Final = (TaskState.RUNNING,)
_ENDED_WAITING: Final[dict[tuple[TaskState, bool], tuple[TaskState, ...]]] = {
    (state, ok): (*path, TaskState.COMPLETED if ok else TaskState.FAILED)
    for state, path in _TO_RUNNING.items()
    for ok in (True, False)
}
"""The moves of an attempt that started and ended before the agent made it RUNNING, from
its waiting record's state and whether it succeeded."""
_ENDED_RUNNING: Final = {True: (TaskState.COMPLETED,), False: (TaskState.FAILED,)}


class _Run:
    """One running attempt."""

    __slots__ = ("context", "deadline", "future", "record", "started")

    def __init__(self, record: TaskRecord, started: float, context: TaskContext) -> None:
        self.record = record  # RUNNING
        self.started = started  # monotonic
        self.context = context
        self.future: Future[Any] | None = None
        self.deadline: float | None = None  # timer-service monotonic time it times out at


@dataclass
class AgentState:
    """Survives restarts of the executor: the attempts running and the workers."""

    spec: AgentSpec
    handler: Callable[[TaskContext], Any]
    # The task-keyed maps below key by ``task_id.int``: an int hashes in C, a UUID in
    # Python (several lookups per task).
    running: dict[int, _Run] = field(default_factory=dict)
    waiting: OrderedDict[int, TaskRecord] = field(default_factory=OrderedDict)
    """ASSIGNED tasks held beyond max_concurrency (the router's prefetch), oldest first:
    each starts the moment a slot frees, without a round trip through router and queue.
    With a sync handler they are in the workers' job queue already (``handed``)."""
    handed: dict[int, TaskContext] = field(default_factory=dict)
    """Sync handlers: the contexts of waiting tasks put in the workers' job queue ahead of
    a free slot. A worker that finishes an attempt takes the next one at once (no
    executor turn and no thread wake-up between them) and reports its start in
    ``started``; the executor makes it RUNNING then. Cancelling or giving one back sets
    its cancelled flag, and a worker skips a flagged context."""
    started: deque[tuple[TaskContext, float]] = field(default_factory=deque)
    """Handed attempts a worker started (context, monotonic start), not yet taken by the
    executor; rung like ``done``."""
    unreleased: list[tuple[uuid.UUID, str, bool, float]] = field(default_factory=list)
    """Slots freed and not yet told to the router: while the waiting line holds more than
    was freed a refill is not urgent, so they go out together, in one message."""
    unreported: HeldReports[OutcomeItem] = field(default_factory=HeldReports)
    """Outcomes not yet sent to the performance tracker (in batches, within 0.1 s)."""
    report_timer: TickTimer = field(default_factory=TickTimer)
    given_back: dict[int, int] = field(default_factory=dict)
    """Attempts a crashed incarnation left running, given back by its successor (task id
    -> attempt): an Assign redelivered after the crash must not start them again."""
    done: deque[_Done] = field(default_factory=deque)
    """Attempts ended and not yet taken by the executor (appended by handler threads)."""
    rung: bool = False
    """True while a WorkDone is on its way: later completions need not ring again."""
    ref: ActorRef | None = None  # the executor's own reference (stable across restarts)
    monotonic: Callable[[], float] = time.monotonic
    pool: _Workers | None = None
    loop: asyncio.AbstractEventLoop | None = None
    loop_thread: threading.Thread | None = None
    completed: int = 0
    failed: int = 0
    timed_out: int = 0
    cancelled: int = 0
    zombies: int = 0
    requeued: int = 0
    # One timer per agent watches every attempt's timeout (not one per attempt): it is
    # armed for the earliest deadline and, when it fires, times out what is past due.
    timeout_timer: int | None = None
    timeout_due: float | None = None
    is_async: bool = field(init=False)
    """True for a coroutine-function handler (run on the agent's event loop)."""

    def __post_init__(self) -> None:
        self.is_async = inspect.iscoroutinefunction(self.handler)

    def report_done(self, done: _Done) -> None:
        """On a handler's thread: put an ended attempt in the completion line and ring the
        executor unless a ring is already on its way. The executor clears ``rung`` before
        it empties the line, so no completion is ever left without a ring.

        Caller-runs: if the dispatcher is idle, this thread runs the executor's turn (and
        the turns it causes) itself rather than waking the dispatcher's thread for them
        (see :meth:`~actors.cell.Dispatcher.claim`)."""
        self.done.append(done)
        if not self.rung:
            self.rung = True
            ref = self.ref
            assert ref is not None
            lent = ref.claim_dispatcher()
            try:
                ring(ref, _WORK_DONE)
            finally:
                if lent is not None:
                    lent.run()

    def report_start(self, context: TaskContext, started: float) -> None:
        """On a handler's thread: a handed attempt starts now (see ``handed``)."""
        self.started.append((context, started))
        if not self.rung:
            self.rung = True
            assert self.ref is not None
            ring(self.ref, _WORK_DONE)

    def start_workers(
        self,
        ref: ActorRef,
        monotonic: Callable[[], float],
        window: OutcomeWindow | None = None,
    ) -> None:
        """Create the pool or the loop thread (once; they outlive restarts). ``monotonic``
        is the runner clock's, which times the attempts; ``window``: the outcome window a
        worker takes a credit of before each attempt (None: no window)."""
        self.ref = ref
        self.monotonic = monotonic
        if self.is_async:
            if self.loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=loop.run_forever, name=f"agent-{self.spec.agent_id}-loop", daemon=True
                )
                thread.start()
                self.loop, self.loop_thread = loop, thread
        elif self.pool is None:
            self.pool = _Workers(
                self.handler,
                self.spec.max_concurrency,
                self.spec.agent_id,
                self.report_done,
                monotonic,
                self.report_start,
                window,
            )

    def stop_workers(self) -> None:
        """Stop the pool / loop without waiting for running handlers."""
        if self.pool is not None:
            self.pool.shutdown()
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.loop.stop)


@dataclass
class _Out:
    """What one batch produces, sent at its end (one message per peer)."""

    persist: list[TaskRecord] = field(default_factory=list)
    retry: list[tuple[TaskRecord, bool, str]] = field(default_factory=list)
    requeue: list[tuple[TaskRecord, str]] = field(default_factory=list)
    unstarted: list[TaskRecord] = field(default_factory=list)  # back to the queue, QUEUED
    released: list[tuple[uuid.UUID, str, bool, float]] = field(default_factory=list)
    outcomes: list[OutcomeItem] = field(default_factory=list)
    jobs: list[TaskContext] = field(default_factory=list)  # for the workers, put last
    settles: int = 0  # outcome-window credits the write of ``persist`` gives back


class AgentExecutor(Actor):
    """Runs assigned tasks on its agent's handler."""

    def __init__(self, state: AgentState, wiring: Wiring, batch_limit: int = 256) -> None:
        self.state = state
        self.wiring = wiring
        self.batch_limit = batch_limit

    # -- lifecycle ------------------------------------------------------------------------
    def on_start(self) -> None:
        self.state.start_workers(
            self.context.self_ref, self.wiring.clock.monotonic, self.wiring.window
        )
        state = self.state
        state.given_back.clear()
        # Attempts that ended before the crash are recorded first (their ring may have
        # been lost with the failed incarnation's batch).
        state.rung = False
        if state.done or state.started:
            out = _Out()
            self._take_done(out)
            self._flush(out)
        if state.running:
            # The previous incarnation crashed with attempts in flight: give them back
            # (attempt counted). Tasks in the waiting line never started: they stay, and
            # start as slots free up.
            state.given_back.update((key, run.record.attempt) for key, run in state.running.items())
            out = _Out()
            try:
                self._abandon_all("agent crashed", "AgentCrashed", out, waiting=False)
                self._start_waiting(out)
                self._flush(out)
            finally:
                self._put_jobs(out.jobs)
        # Tasks a failed batch took into the line but did not hand yet go to the workers.
        self._hand_waiting()

    def pre_restart(self, reason: BaseException | None) -> None:
        """Keep workers and running attempts for the next incarnation (see on_start)."""

    def post_stop(self) -> None:
        out = _Out()
        self._abandon_all("agent stopped", "AgentStopped", out, waiting=True)
        self._flush(out)
        self._report()
        self.state.stop_workers()

    def statistics(self) -> dict[str, Any]:
        state = self.state
        return {
            "running": len(state.running),
            "waiting": len(state.waiting),
            "completed": state.completed,
            "failed": state.failed,
            "timed_out": state.timed_out,
            "cancelled": state.cancelled,
            "zombie_results": state.zombies,
            "requeued": state.requeued,
        }

    # -- messages -------------------------------------------------------------------------
    def receive(self, message: Any) -> Any:
        if isinstance(message, InjectCrash):
            raise RuntimeError(message.reason)
        out = _Out()
        try:
            answer = self._handle(message, out)
            for item in self.context.take_pending(self.batch_limit):
                if isinstance(item.message, InjectCrash):
                    # Crash on its own turn, not in the middle of a batch already taken.
                    self.context.self_ref.tell(item.message)
                    continue
                item.reply(self._handle(item.message, out))
            if self.state.waiting:  # (most turns after tasks' ends have none: no calls)
                self._start_waiting(out)
                self._hand_waiting(out.jobs)
            self._flush(out)
        finally:
            self._put_jobs(out.jobs)  # (a failure still gives what it started to workers)
        return answer

    def _put_jobs(self, jobs: list[TaskContext]) -> None:
        """Give the turn's jobs to the workers, in order. They go last: a worker woken by
        its job runs only once this thread lets go of the interpreter, so what the turn
        did after the put was time the worker spent awake and waiting (a second
        wake-up, about 15 µs of a task's latency at low load)."""
        if jobs:
            assert self.state.pool is not None
            self.state.pool.submit_all(jobs)

    def _handle(self, message: Any, out: _Out) -> Any:
        if message is _WORK_DONE or isinstance(message, WorkDone):
            self._take_done(out)
        elif isinstance(message, Assign):
            self._assign(message, out)
        elif isinstance(message, TimeoutCheck):
            self._timed_out(message, out)
        elif isinstance(message, Tick):
            state = self.state
            state.report_timer.fired()
            if state.unreported.tick_due(self.wiring, self.context.self_ref, state.report_timer):
                self._report()
        elif isinstance(message, CancelTask):
            return self._cancel(message.task_id, out)
        else:
            raise TypeError(f"agent got {type(message).__name__}")
        return None

    def _assign(self, message: Assign, out: _Out) -> None:
        """Take the tasks into the waiting line; :meth:`_start_waiting` starts as many as
        there are free slots at the end of the batch."""
        state = self.state
        waiting = state.waiting
        running = state.running
        given_back = state.given_back
        for record in message.records:
            key = record.task_id.int
            if key in waiting:
                continue  # a redelivered Assign
            if given_back and record.attempt < given_back.get(key, 0):
                continue  # redelivered after a crash: that attempt was given back already
            old = running.get(key) if running else None
            if old is not None:
                if record.attempt < old.record.attempt:
                    continue  # a redelivered Assign (of the attempt that runs now)
                # Shared store: this runner lost the lease while the attempt ran (it was
                # paused), the task was rescued and claimed again, here. The old attempt
                # is a zombie now (its writes are fenced); run the new one.
                del running[key]
                self._stop_attempt(old)
                state.zombies += 1
            waiting[key] = record

    def _hand_waiting(self, jobs: list[TaskContext] | None = None) -> None:
        """Sync handlers: put the waiting tasks not handed yet in the workers' job queue
        (they are the newest, at the end of the line), oldest first, each flagged for its
        worker to report its start; into ``jobs`` instead if it is given (the turn's jobs,
        put at its end in their order: after the attempts it started)."""
        state = self.state
        waiting = state.waiting
        if state.is_async or len(waiting) == len(state.handed):
            return
        handed = state.handed
        fresh: list[tuple[int, TaskRecord]] = []
        for item in reversed(waiting.items()):
            if item[0] in handed:
                break
            fresh.append(item)
        agent_id = state.spec.agent_id
        assert state.pool is not None
        submit = state.pool.submit if jobs is None else jobs.append
        for key, record in reversed(fresh):
            context = _context_of(record, record.attempt + 1, agent_id, early=True)
            handed[key] = context
            submit(context)

    def _take_started(
        self, out: _Out, ending: set[int] | None = None
    ) -> dict[int, tuple[TaskRecord, float]]:
        """Make RUNNING the handed attempts that workers reported started. An attempt whose
        context is in ``ending`` (the ids of contexts whose end the caller holds) ended
        already: it is not made RUNNING but returned, ``id(context) -> (ASSIGNED record,
        monotonic start)``, for the caller to record its outcome in one version."""
        state = self.state
        line = state.started
        ended: dict[int, tuple[TaskRecord, float]] = {}
        if not line:
            return ended
        now = self.wiring.clock.now()
        hub = self.wiring.hub
        publish = hub.active
        agent_id = state.spec.agent_id
        waiting = state.waiting
        handed = state.handed
        running_now = state.running
        persist = out.persist
        while line:
            context, started = line.popleft()
            task_id = context.task_id
            key = task_id.int
            current = handed.pop(key, None)
            if current is not context:
                if current is not None:
                    handed[key] = current  # (a later hand-over of the task: kept)
                continue  # cancelled or given back before (or as) a worker took it
            if publish:
                hub.publish("task.started", task_id, agent_id=agent_id, attempt=context.attempt)
            if ending is not None and id(context) in ending:
                ended[id(context)] = (waiting.pop(key), started)
                continue
            record = waiting.pop(key)
            running = record.moved_via(
                *_TO_RUNNING.get(record.state, _RUN),
                at=now,
                attempt=context.attempt,
                agent_id=agent_id,
            )
            run = _Run(running, started, context)
            running_now[key] = run
            persist.append(running)
            self._watch_timeout(run)
        return ended

    def _watch_timeout(self, run: _Run) -> None:
        """Give a started attempt its deadline (if its task has a timeout)."""
        timeout_s = run.record.spec.timeout_s
        if timeout_s is not None:
            state = self.state
            # Timer-service time (the clock may be a test's: latencies use it).
            run.deadline = deadline = time.monotonic() + timeout_s
            if state.timeout_due is None or deadline < state.timeout_due:
                self._arm_timeout(deadline)

    def _start_waiting(self, out: _Out) -> None:
        """Start waiting tasks, oldest first, while the agent has free slots (with a sync
        handler, only while none is handed: a handed one runs first, as its worker takes
        it, and a slot that frees is its)."""
        state = self.state
        waiting = state.waiting
        free = state.spec.max_concurrency - len(state.running)
        if not waiting or free <= 0 or state.handed:
            return
        window = self.wiring.window if state.is_async else None  # (sync: the workers take)
        if window is not None:
            free = window.try_enter(min(free, len(waiting)), state, self._rung_for_credits)
            if not free:
                return
        clock = self.wiring.clock
        now = clock.now()
        mono = clock.monotonic()
        hub = self.wiring.hub
        publish = hub.active
        agent_id = state.spec.agent_id
        running_now = state.running
        persist = out.persist
        launch = self._launch
        is_async = state.is_async
        jobs = out.jobs
        while waiting and free > 0:
            # An OrderedDict: its first key costs O(1) however many were taken before (a
            # dict's first key is found by scanning past the slots of removed ones).
            key = next(iter(waiting))
            record = waiting[key]  # off the line only once it runs (crash safety)
            free -= 1
            running = record.moved_via(
                *_TO_RUNNING.get(record.state, _RUN),
                at=now,
                attempt=record.attempt + 1,
                agent_id=agent_id,
            )
            context = _context_of(running, running.attempt, agent_id)
            run = _Run(running, mono, context)
            running_now[key] = run
            del waiting[key]
            persist.append(running)
            if publish:
                hub.publish(
                    "task.started", record.task_id, agent_id=agent_id, attempt=running.attempt
                )
            if is_async:
                if window is not None:
                    _set_held(context, [1])
                run.future = launch(context)
            else:
                jobs.append(context)
            self._watch_timeout(run)

    def _rung_for_credits(self) -> None:
        """Window credits came back (on the releasing thread): a turn to start attempts."""
        ref = self.state.ref
        if ref is not None:
            ring(ref, _WORK_DONE)

    def _launch(self, context: TaskContext) -> Future[Any]:
        """Start an attempt on the async handler's event loop (a sync handler's attempts
        are jobs, put at the end of the turn: :meth:`_put_jobs`)."""
        state = self.state
        assert state.loop is not None
        future: Future[Any] = asyncio.run_coroutine_threadsafe(state.handler(context), state.loop)
        report = state.report_done
        monotonic = state.monotonic

        def done(fut: Future[Any]) -> None:
            report(_async_outcome(context, fut, monotonic()))

        future.add_done_callback(done)
        return future

    def _take_done(self, out: _Out) -> None:
        """Record the handed attempts started and every attempt ended (both lines are rung
        by a WorkDone)."""
        state = self.state
        state.rung = False  # before taking: what is appended after this rings again
        line = state.done
        # The ended attempts so far, then the starts: a worker reports a handed attempt's
        # start before its end, so each of these has its start recorded by the time it is
        # read. One that started and ended meanwhile goes from ASSIGNED to its outcome in
        # one version (its RUNNING one would be replaced in the same write anyway).
        ended = [line.popleft() for _ in range(len(line))]
        early = self._take_started(out, {id(done[0]) for done in ended} if ended else None)
        if not ended:
            return
        if self.wiring.window is not None:
            out.settles += _settled(ended)
        running = state.running
        now = self.wiring.clock.now()
        hub = self.wiring.hub
        publish = hub.active
        agent_id = state.spec.agent_id
        persist = out.persist
        released = out.released
        outcomes = out.outcomes
        for context, ok, result, error, error_type, permanent, end in ended:
            task_id = context.task_id
            attempt = context.attempt
            if early and (assigned := early.pop(id(context), None)) is not None:
                record, started = assigned  # waiting: RUNNING and the outcome in one step
                started_at = now
                path = _ENDED_WAITING[record.state, ok]
            else:
                key = task_id.int
                run = running.get(key)
                if run is None or run.record.attempt != attempt:
                    state.zombies += 1  # timed out, cancelled or requeued while it ran
                    continue
                del running[key]
                record, started = run.record, run.started
                started_at = record.updated_at
                path = _ENDED_RUNNING[ok]
            task_type = record.spec.type
            latency_ms = max(0.0, (end - started) * 1000.0)
            outcome = record.moved_through(
                path,
                now,
                {
                    "attempt": attempt,
                    "agent_id": agent_id,
                    "history": (
                        *record.history,
                        _attempt(attempt, started_at, agent_id, now, ok, error),
                    ),
                    "result": result,  # None when it failed
                    "last_error": error,  # None when it completed
                },
            )
            if ok:
                persist.append(outcome)
                state.completed += 1
                end_to_end: float | None = (now - record.created_at).total_seconds() * 1000.0
                if publish:
                    hub.publish("task.completed", task_id, agent_id=agent_id, latency_ms=latency_ms)
            else:
                out.retry.append((outcome, permanent, error_type or "Exception"))
                state.failed += 1
                end_to_end = None
                if publish:
                    hub.publish(
                        "task.failed", task_id, agent_id=agent_id, attempt=attempt, error=error
                    )
            released.append((task_id, task_type, ok, latency_ms))
            outcomes.append((agent_id, task_type, ok, latency_ms, end_to_end))

    def _arm_timeout(self, due: float) -> None:
        """Arm the agent's timeout timer for ``due`` (replacing a later one)."""
        state = self.state
        timers = self.wiring.timers
        if state.timeout_timer is not None:
            timers.cancel(state.timeout_timer)
        state.timeout_due = due
        check = TimeoutCheck.fast(due=due)
        state.timeout_timer = timers.call_later(
            due - time.monotonic(), functools.partial(ring, self.context.self_ref, check)
        )

    def _timed_out(self, message: TimeoutCheck, out: _Out) -> None:
        """The timeout timer fired: time out every attempt past its deadline, re-arm for
        the earliest of the others."""
        state = self.state
        if message.due != state.timeout_due:
            return  # replaced by a timer for an earlier deadline (or already swept)
        state.timeout_timer = state.timeout_due = None
        now = time.monotonic()
        next_due: float | None = None
        for run in list(state.running.values()):
            deadline = run.deadline
            if deadline is None:
                continue
            if deadline <= now:
                self._time_out(run, out)
            elif next_due is None or deadline < next_due:
                next_due = deadline
        if next_due is not None:
            self._arm_timeout(next_due)

    def _time_out(self, run: _Run, out: _Out) -> None:
        state = self.state
        del state.running[run.record.task_id.int]
        self._stop_attempt(run)
        now = self.wiring.clock.now()
        record = run.record
        timeout_s = record.spec.timeout_s
        error = f"TaskTimeout: attempt {record.attempt} ran longer than {timeout_s}s"
        attempt = _attempt(
            record.attempt, record.updated_at, state.spec.agent_id, now, "timed_out", error
        )
        timed_out = record.moved(
            TaskState.TIMED_OUT, at=now, last_error=error, history=(*record.history, attempt)
        )
        state.timed_out += 1
        out.retry.append((timed_out, False, "TaskTimeout"))
        latency_ms = (timeout_s or 0.0) * 1000.0
        out.released.append((record.task_id, record.spec.type, False, latency_ms))
        if self.wiring.hub.active:
            self.wiring.hub.publish("task.timed_out", record.task_id, timeout_s=timeout_s)

    def _cancel(self, task_id: uuid.UUID, out: _Out) -> bool:
        state = self.state
        self._take_started(out)  # a handed task a worker took is running, not waiting
        key = task_id.int
        run = state.running.pop(key, None)
        if run is not None:
            self._stop_attempt(run)
            record = run.record
        elif key in state.waiting:
            record = state.waiting.pop(key)  # ASSIGNED, never started
            self._unhand(key)
        else:
            return False
        cancelled = record.moved(TaskState.CANCELLED, at=self.wiring.clock.now())
        out.persist.append(cancelled)
        out.released.append((task_id, record.spec.type, False, 0.0))
        state.cancelled += 1
        if self.wiring.hub.active:
            self.wiring.hub.publish("task.cancelled", task_id, where="agent")
        return True

    def _unhand(self, key: int) -> None:
        """A handed task (``task_id.int``) leaves the agent unstarted: its worker is to
        skip it."""
        context = self.state.handed.pop(key, None)
        if context is not None:
            context._cancelled[0] = True
            self._give_up_credit(context)

    def _give_up_credit(self, context: TaskContext) -> None:
        """An attempt is given up (after its cancelled flag was set): its window credit, if
        it holds one, goes back now. Its thread may still run it; a late outcome of it is
        a zombie's and gives back nothing."""
        window = self.wiring.window
        if window is None:
            return
        held = getattr(context, "_held", None)
        if held:
            _give_back(held, window)  # (unless its worker did meanwhile: it saw the flag)

    def _stop_attempt(self, run: _Run) -> None:
        run.context._cancelled[0] = True
        self._give_up_credit(run.context)
        if self.state.pool is not None:
            self.state.pool.replace_stuck()
        if run.future is not None:
            run.future.cancel()  # stops an async handler; a sync one sees is_cancelled()

    def _abandon_all(self, why: str, error_type: str, out: _Out, *, waiting: bool) -> None:
        """Give every running attempt back (attempt counted), e.g. after a crash, and with
        ``waiting`` the tasks of the waiting line too (never started: no attempt counted)."""
        state = self.state
        now = self.wiring.clock.now()
        self._take_started(out)
        if waiting:
            # Flag the handed ones first: a replacement thread started for an abandoned
            # attempt below must not take one of them.
            for key in list(state.handed):
                self._unhand(key)
        for key, run in list(state.running.items()):
            del state.running[key]
            self._stop_attempt(run)
            record = run.record
            error = f"{error_type}: {why} during attempt {record.attempt}"
            attempt = _attempt(
                record.attempt, record.updated_at, state.spec.agent_id, now, "abandoned", error
            )
            failed = record.moved(
                TaskState.FAILED, at=now, last_error=error, history=(*record.history, attempt)
            )
            out.requeue.append((failed, error_type))
            out.released.append((record.task_id, record.spec.type, False, 0.0))
            state.requeued += 1
        for key, record in list(state.waiting.items()) if waiting else ():
            # Never started: back to the queue as they were, no attempt counted.
            del state.waiting[key]
            out.unstarted.append(record.handed_back(at=now))
            out.released.append((record.task_id, record.spec.type, False, 0.0))
            state.requeued += 1
        if out.requeue or out.unstarted:
            self.context.log.warning(
                "agent.attempts_requeued",
                agent_id=state.spec.agent_id,
                reason=why,
                tasks=len(out.requeue),
                unstarted=len(out.unstarted),
            )

    def _flush(self, out: _Out) -> None:
        peers = self.wiring.peers
        agent_id = self.state.spec.agent_id
        if out.persist or out.settles:
            self.wiring.persist(tuple(out.persist), out.settles)
        if out.retry:
            peers.get("retry").tell(
                RetryTask.fast(
                    records=tuple(r for r, _, _ in out.retry),
                    permanent=tuple(p for _, p, _ in out.retry),
                    error_types=tuple(e for _, _, e in out.retry),
                    requeue_now=False,
                    redelivered=False,
                )
            )
        if out.requeue:
            peers.get("retry").tell(
                RetryTask.fast(
                    records=tuple(r for r, _ in out.requeue),
                    permanent=tuple(False for _ in out.requeue),
                    error_types=tuple(e for _, e in out.requeue),
                    requeue_now=True,
                    redelivered=False,
                )
            )
        if out.unstarted:
            peers.get("queue").tell(
                Enqueue.fast(records=tuple(out.unstarted), admitted=False, redelivered=False)
            )
        state = self.state
        state.unreleased.extend(out.released)
        if state.unreleased and len(state.unreleased) >= len(state.waiting):
            # Without a prefetch nothing waits here: every freed slot is told at once.
            released, state.unreleased = tuple(state.unreleased), []
            peers.get("router").tell(Released.fast(agent_id=agent_id, outcomes=released))
        if state.unreported.add(
            out.outcomes, self.wiring, self.context.self_ref, state.report_timer
        ):
            self._report()

    def _report(self) -> None:
        """Send the outcomes not yet reported to the performance tracker."""
        state = self.state
        if state.unreported.items:
            outcomes = state.unreported.take()
            state.report_timer.disarm(self.wiring.timers)
            self.wiring.peers.get("performance").tell(Outcomes.fast(items=outcomes))


def _context_of(
    record: TaskRecord, attempt: int, agent_id: str, *, early: bool = False
) -> TaskContext:
    """The handler's view of attempt ``attempt`` of ``record``'s task (``early``: handed to
    the workers ahead of a free slot, see ``AgentState.handed``)."""
    spec = record.spec
    trace = spec.trace_context
    context: TaskContext = _new_context(TaskContext)
    _fill_context(
        context,
        record.task_id,
        spec.type,
        spec.payload,  # thawed when the handler reads it
        attempt,
        agent_id,
        spec.idempotency_key,
        spec.deadline,
        {} if trace is EMPTY_FROZEN_DICT else dict(trace),
        early,
    )
    return context


def _attempt(
    number: int,
    started_at: datetime,
    agent_id: str,
    now: datetime,
    outcome: str | bool,
    error: str | None,
) -> Attempt:
    """The history entry of attempt ``number`` (started at ``started_at``, ended ``now``);
    ``outcome`` True / False stands for "completed" / "failed"."""
    if outcome is True:
        outcome = "completed"
    elif outcome is False:
        outcome = "failed"
    return attempt_entry(number, agent_id, started_at, now, outcome, error)


def _give_back(held: list[int], window: OutcomeWindow) -> None:
    """Return an attempt's window credit if this thread is the first to pop its token
    (worker and executor may race for it; ``list.pop`` lets exactly one of them win)."""
    try:
        held.pop()
    except IndexError:
        return
    window.release(1)


def _settled(ended: list[_Done]) -> int:
    """Take the window credits of ended attempts (each a context's ``_held``); how many.
    An attempt given up before it ended gave its credit back then."""
    count = 0
    for done in ended:
        held = getattr(done[0], "_held", None)
        if held:
            held.pop()  # (no other thread pops it now: its worker popped before it ran)
            count += 1
    return count


class _Workers:
    """``size`` threads running a sync handler on jobs, each waking only for a job.

    Lighter than a ThreadPoolExecutor on the hot path (no Future per task): a job is a
    hand-off, and each outcome goes to the executor's completion line (``report``).

    Jobs wait in one shared line (FIFO), which any awake worker takes from. An idle
    worker parks on a bell of its own; a submit rings as many parked workers as it adds
    jobs, the last parked first (its cache is the warmest), and no more. A rung worker
    may find its job taken by a busier one and parks again. Several threads blocked in
    one ``queue.SimpleQueue.get`` (the pool's first design) wake each other for nothing:
    each put woke one, whose release of the queue's lock woke the next, which found
    nothing and slept again; measured on the benchmark VM at 1,000 tasks/s, four workers
    blocked about 4 times a task (1 is the least: the park after the job), and every
    wake-up is a thread asking the dispatcher for the interpreter.

    Invariant (under ``_mutex``): a worker parks only when the line is empty, and every
    job added while workers are parked rings one of them, so no job waits while a worker
    sleeps.
    """

    def __init__(
        self,
        handler: Callable[[TaskContext], Any],
        size: int,
        name: str,
        report: Callable[[_Done], None],
        monotonic: Callable[[], float],
        report_start: Callable[[TaskContext, float], None],
        window: OutcomeWindow | None = None,
    ) -> None:
        self._report_start = report_start
        self._window = window
        self._handler = handler
        self._report = report
        self._monotonic = monotonic
        self._line: deque[TaskContext | None] = deque()
        self._parked: list[queue.SimpleQueue[bool]] = []  # idle workers' bells, LIFO
        self._mutex = threading.Lock()  # the line and the parked workers, together
        self.parks = 0
        """How many times a worker parked (for tests and statistics: at low load, one a
        job; a submit that woke more workers than it had jobs would show here)."""
        self._name = name
        self._size = size
        self._lock = threading.Lock()
        self._excess = 0  # threads to retire: replacements were started for stuck ones
        self._started = 0
        for _ in range(size):
            self._start_thread()

    def _start_thread(self) -> None:
        self._started += 1
        threading.Thread(
            target=self._run, name=f"agent-{self._name}-{self._started}", daemon=True
        ).start()

    def replace_stuck(self) -> None:
        """An attempt was given up (timed out, cancelled, abandoned) while its thread may
        still run it: start a replacement so the agent keeps its concurrency. The thread
        of the given-up attempt retires when its handler returns (it sees the attempt's
        cancelled flag), so the count comes back to ``size``; while the handler hangs, the
        replacement keeps the agent's concurrency for as long as it takes."""
        with self._lock:
            self._excess += 1
            self._start_thread()

    def submit(self, context: TaskContext | None) -> None:
        """Run the handler on ``context`` and report the outcome (None: a thread ends)."""
        with self._mutex:
            self._line.append(context)
            if not self._parked:
                return
            bell = self._parked.pop()
        bell.put(True)

    def submit_all(self, contexts: list[TaskContext]) -> None:
        """:meth:`submit` each of ``contexts``, in order, taking the mutex once."""
        parked = self._parked
        with self._mutex:
            self._line.extend(contexts)
            woken = [parked.pop() for _ in range(min(len(contexts), len(parked)))]
        for bell in woken:
            bell.put(True)

    def shutdown(self) -> None:
        """Let every thread end after its current job (not waiting for them)."""
        with self._lock:
            for _ in range(self._size + self._excess):
                self.submit(None)

    @property
    def parked(self) -> int:
        """Workers idle now, waiting for a job."""
        return len(self._parked)

    def _next(self, bell: queue.SimpleQueue[bool]) -> TaskContext | None:
        """The next job from the line; parked on ``bell`` while the line is empty."""
        line = self._line
        while True:
            if line:
                try:
                    return line.popleft()
                except IndexError:
                    continue  # another worker took the last one meanwhile
            with self._mutex:
                if line:
                    continue
                self._parked.append(bell)
                self.parks += 1
            bell.get()  # rung by a submit (the job may be taken by a busier worker first)

    @staticmethod
    def _take_credit(window: OutcomeWindow, context: TaskContext) -> bool:
        """Take a window credit for ``context`` (waiting while the store's commits are
        behind); False if the attempt was given up meanwhile (the credit went back)."""
        window.enter()
        held = [1]
        _set_held(context, held)  # before the look at the flag (see TaskContext._held)
        if not context._cancelled[0]:
            return True
        _give_back(held, window)  # (unless the executor did: it set the flag, saw the credit)
        return False

    def _run(self) -> None:
        handler = self._handler
        report = self._report
        monotonic = self._monotonic
        report_start = self._report_start
        window = self._window
        bell: queue.SimpleQueue[bool] = queue.SimpleQueue()
        take = self._next
        while True:
            context = take(bell)
            if context is None:
                return
            if context._cancelled[0]:
                continue  # cancelled, timed out or given back before it started
            if window is not None and not self._take_credit(window, context):
                continue  # given up while it waited for the credit
            if context._early:
                report_start(context, monotonic())
            try:
                value = handler(context)
            except BaseException as exc:  # noqa: BLE001 - the failure is reported, not lost
                report(_failure(context, exc, monotonic()))
            else:
                report(_success(context, value, monotonic()))
            if self._excess and context.is_cancelled():
                # This attempt was given up while it ran (timed out, cancelled, abandoned),
                # and a replacement took this thread's place: this thread is the surplus.
                # (Not any thread that happens to finish first: a replacement retiring
                # while the given-up handler still hangs left the agent a thread short,
                # with nobody to run its next jobs.)
                with self._lock:
                    if self._excess:
                        self._excess -= 1
                        return


def _async_outcome(context: TaskContext, future: Future[Any], ended: float) -> _Done:
    """On the loop's thread: an async attempt's future as an ended attempt."""
    if future.cancelled():
        return (
            context,
            False,
            None,
            "CancelledError: attempt cancelled",
            "CancelledError",
            False,
            ended,
        )
    exc = future.exception()
    if exc is not None:
        return _failure(context, exc, ended)
    return _success(context, future.result(), ended)


def _success(context: TaskContext, value: Any, ended: float) -> _Done:
    """An attempt that returned ``value`` (refused if it is not JSON)."""
    try:
        result = freeze_json(value)
    except ValueError as bad:
        return _failure(context, InvalidResult(f"handler result is not JSON: {bad}"), ended)
    return (context, True, result, None, None, False, ended)


def _failure(context: TaskContext, exc: BaseException, ended: float) -> _Done:
    """An attempt that raised ``exc``."""
    return (
        context,
        False,
        None,
        f"{type(exc).__name__}: {exc}"[:_ERROR_LIMIT],
        type(exc).__name__,
        isinstance(exc, PermanentError),
        ended,
    )


class InvalidResult(PermanentError):
    """A handler returned something that is not JSON (retrying would not help)."""
