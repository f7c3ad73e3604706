"""The host API: :class:`TaskRunner`, :class:`RunnerConfig` and :class:`TaskHandle`.

Example::

    from supervisor import TaskRunner, RunnerConfig
    from messages import TaskSpec, AgentSpec

    with TaskRunner.start(RunnerConfig()) as runner:
        runner.register_agent(AgentSpec(agent_id="coder-1", capabilities={"code"}), handler)
        handle = runner.submit(TaskSpec(type="code", payload={"file": "a.py"}, priority=5))
        print(handle.result(timeout=10))

``TaskRunner.start`` builds the supervision tree (journal, events, performance, health,
registry, retry, queue, router and the agents' supervisor, in that order, under a
ONE_FOR_ONE root) and recovers unfinished tasks from the store.

Shared mode: on a store that several runners share (``store.shared``: PostgreSQL), tasks
belong to no runner when submitted. A ``claimer`` actor (after ``queue``) claims what the
local agents can run, renews the leases, heartbeats the runner and rescues the tasks of
runners that died; the store's notifications wake it at once. Startup recovery is skipped
(other runners own those tasks, or their leases will expire), and ``result()`` also polls
the store (another runner may finish the task). See docs/deployment.md.
"""

from __future__ import annotations

import gc
import importlib
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, Final, Literal, Self, TypeVar

import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from actors.agent import AgentExecutor, AgentState, TaskContext
from actors.cell import ActorRef, LentThread
from actors.claimer import ClaimerActor, ClaimerState, ClaimSettings
from actors.core.health import HealthCore
from actors.core.prefetch import PrefetchPolicy
from actors.core.retry import RetryPolicy
from actors.core.router import RouterCore
from actors.events import EventsActor
from actors.health import HealthActor, HealthCheck, HealthState, RegisterCheck
from actors.journal.actor import JournalActor, JournalState, hand_to_queue, new_records
from actors.journal.store import PRUNED_BY_DEFAULT, TaskStore, open_store
from actors.performance import PerformanceActor, PerformanceState
from actors.pipeline import (
    Admission,
    EventHub,
    OutcomeWindow,
    Peers,
    ResultWaiters,
    SystemClock,
    Wiring,
    ring,
)
from actors.pipeline import Clock as Clock
from actors.queue import QueueActor, QueueState
from actors.registry import RegistryActor, RegistryState
from actors.retry import RetryActor, RetryState
from actors.router import RouterActor, RouterState
from actors.scheduler import CronSettings, SchedulerActor, SchedulerState
from messages.base import json_size, thaw_json
from messages.errors import (
    ActorStopped,
    InvalidMessage,
    PayloadTooLarge,
    QueueFull,
    StoreError,
    StoreUnavailable,
    TaskCancelledError,
    TaskFailedError,
    TaskTimeout,
    UnknownAgent,
    UnknownTask,
)
from messages.events import LifecycleEvent
from messages.health import HealthStatus
from messages.pipeline import (
    AddCron,
    Append,
    Assign,
    CancelTask,
    CarriesTasks,
    DeregisterAgent,
    Enqueue,
    GetHealth,
    GetPerformance,
    Hold,
    InjectCrash,
    ListCron,
    Persist,
    Pickup,
    Prune,
    RegisterAgent,
    RemoveCron,
    RequeueDeadLetters,
    RetryTask,
    Sync,
    Unwatch,
    Watch,
)
from messages.supervision import ActorStatistics, DeadLetter, GetStatistics
from messages.task import (
    TERMINAL_STATES,
    AgentSpec,
    CronSpec,
    TaskRecord,
    TaskSpec,
    TaskState,
    queued_records,
    simple_spec,
)
from supervisor.strategy import ChildSpec, Restart, Strategy
from supervisor.system import ActorSystem
from supervisor.tracing import Tracing

__all__ = ["PIPELINE_ACTORS", "RunnerConfig", "TaskHandle", "TaskRunner"]

_log = structlog.get_logger("arbiter.runner")

PIPELINE_DISPATCHER = "pipeline"
"""The name of the dispatcher the non-blocking pipeline actors share (see
``RunnerConfig.shared_dispatcher``)."""

PIPELINE_ACTORS = (
    "journal",
    "events",
    "performance",
    "health",
    "registry",
    "retry",
    "scheduler",
    "queue",
    "router",
)
"""The pipeline actors, in start order (the agents' supervisor starts after them). In shared
mode the ``claimer`` starts too, right after ``queue``."""


CRON_LEADER = "cron"
"""The leader lease a runner on a shared store holds to fire the cron entries."""

_WAIT_POLL_S = (0.01, 0.2)
"""Shared mode: ``wait`` polls the store from every 10 ms, slowing down to every 200 ms."""

Handler = Callable[[TaskContext], Any]


class RunnerConfig(BaseModel):
    """Settings of a :class:`TaskRunner` (all optional)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    store: str = "memory://"
    runner_id: str = Field(default_factory=lambda: f"runner-{uuid.uuid4().hex[:8]}")
    queue_capacity: int = Field(default=10_000, ge=1)
    submit_timeout_s: float | None = Field(default=None, ge=0)
    """When the queue is full, ``submit`` waits this long for room, then raises QueueFull
    (None: raise at once)."""
    max_payload_bytes: int = Field(default=1_048_576, ge=1)
    routing_strategy: Literal["round_robin", "least_loaded", "performance", "bandit"] = (
        "least_loaded"
    )
    max_attempts: int = Field(default=3, ge=1)
    backoff_base_s: float = Field(default=1.0, ge=0)
    backoff_factor: float = Field(default=2.0, ge=1)
    backoff_cap_s: float = Field(default=30.0, ge=0)
    non_retryable: frozenset[str] = frozenset()
    max_restarts: int = Field(default=10, ge=0)
    within_s: float = Field(default=5.0, gt=0)
    health_interval_s: float = Field(default=0.5, gt=0)
    heartbeat_timeout_s: float = Field(default=5.0, gt=0)
    performance_interval_s: float = Field(default=1.0, gt=0)
    drain_timeout_s: float = Field(default=30.0, ge=0)
    journal_batch: int = Field(default=512, ge=1)
    store_wait_s: float = Field(default=0.0, ge=0)
    """At start, keep trying a store that is unavailable (a database still starting) this
    long, with backoff (``store.unavailable`` logged each time). 0: fail at once."""
    store_outage_s: float = Field(default=60.0, ge=0)
    """While running, how long the journal keeps retrying the pipeline's writes to a store
    that became unavailable (a database restart) before it fails. Submits during an outage
    are refused at once with ``StoreUnavailable``."""
    recover: bool = True
    """On start, put the store's unfinished tasks back in the pipeline. False for a
    short-lived runner that only submits (``arbiter submit``) to a store a worker uses."""
    prefetch: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    """Tasks each agent holds ahead of its free slots, at least, as a multiple of its
    max_concurrency (rounded up): they wait in the agent's own buffer and start the moment
    a slot frees, without a round trip through router and queue. 2.0 is what Dramatiq
    prefetches. The buffer is the larger of this and the adaptive one
    (``prefetch_window_ms``). A task taken early runs before a higher-priority one
    submitted after it, and a buffered task waits for its agent even if another is idle
    (Celery's prefetch trade-off). Buffered tasks are ASSIGNED, not RUNNING, and count no
    attempt: an agent crash keeps them in its line, a deregistration gives them back to
    the queue. A sync agent's buffer is its threads' job queue: a thread that ends an
    attempt starts the next buffered one at once (RUNNING from then, timed out from then)."""
    prefetch_window_ms: float = Field(default=2.0, ge=0, allow_inf_nan=False)
    """Adaptive prefetch: each agent may also hold as many tasks as it finishes in this
    many milliseconds at its recent pace (a smoothed mean of its attempts' latencies), at
    most ``prefetch_max`` x max_concurrency. A higher-priority task waits behind at most
    about this much buffered work; an agent whose attempts take longer than this buffers
    none, so slow tasks keep strict priorities and are never held up behind a busy agent.
    Short tasks get a deep buffer (no round trip per freed slot). ``prefetch=0`` and
    ``prefetch_window_ms=0``: a task leaves the queue only for a free slot (strict
    priorities whatever the tasks take)."""
    prefetch_max: float = Field(default=32.0, ge=0, allow_inf_nan=False)
    """Cap of the adaptive prefetch, as a multiple of each agent's max_concurrency."""
    seed: int | None = None
    lease_s: float = Field(default=30.0, gt=0, le=86_400)
    """Shared store: how long a claimed task stays this runner's without a renewal
    (renewed every lease_s / 3). A runner killed or paused this long loses its tasks to
    the others (rescued every lease_s / 2 by any runner)."""
    claim_interval_s: float = Field(default=0.5, gt=0)
    """Shared store: how often the claimer looks for work without being notified (the
    fallback of LISTEN/NOTIFY)."""
    claim_batch: int = Field(default=256, ge=1)
    """Shared store: at most this many tasks per claim (one transaction)."""
    shared_dispatcher: bool = True
    """Run the pipeline actors that never block (queue, router, registry, retry scheduler,
    performance tracker, the agent executors, and the journal of a ``memory://`` store) on
    one shared dispatcher thread, as Akka runs actors on a dispatcher: a message between
    them is a queue put, not a thread wake-up, which on this runtime (one GIL) is most of
    what a hand-off costs. False gives each actor a thread of its own. Either way each
    actor has its own mailbox, state and supervision; handlers always run on the agents'
    own threads. The journal of a durable store, the health monitor (it runs checks with
    timeouts), the events actor (it calls subscribers) and the claimer (it queries
    PostgreSQL) always have their own threads: they may block."""
    commit_window: int = Field(default=256, ge=0)
    """With a store the journal's thread commits (SQLite, PostgreSQL): how many attempts
    beyond the agents' slots may have run without their outcome committed yet. A worker
    waits before it starts an attempt while the store is that far behind (a slow commit,
    an outage the journal rides out): backpressure from the store to the handlers rather
    than outcomes piling up in memory. It bounds what runs again after a ``kill -9``: at
    most ``commit_window`` + the sum of the agents' max_concurrency tasks (the attempts
    whose handler ran, or runs, and whose outcome the store has not committed). Not used
    with ``memory://`` (the pipeline writes each outcome before it goes on)."""
    lend_threads: bool = True
    """Caller-runs on the shared dispatcher: while it is idle (a low load), a ``submit``
    runs the queue's, router's and agent's turns for its tasks on the submitting thread,
    and a handler's thread that just ended an attempt (an async agent's event loop thread)
    runs the agent's turn that records it, instead of waking the dispatcher's thread for
    them (a context switch and a hand-over of the interpreter lock each, most of a task's
    latency on a busy host). The turns are the same, one at a time, in the same order; a
    busy dispatcher is never waited for (its thread runs them as before). The cost:
    ``submit`` returns after those turns (tens to a few hundred microseconds) when the
    pipeline was idle. Only with a store the pipeline writes itself (``memory://``): with a
    journal thread committing its writes, lent threads let the pipeline run ahead of the
    commits (more finished attempts re-run after a crash). False: every turn on the
    dispatcher's thread."""
    gc_freeze: bool = True
    """At start, collect garbage once, then move every object alive (modules, classes, the
    host's start-up state, the actors) out of the cyclic garbage collector's sight
    (``gc.freeze()``), so its full collections scan only what was made since. On the
    benchmark VM this took the p99 latency at 1,000 tasks/s from 6-45 ms to about 2 ms.
    Cycles among the frozen objects are never collected: turn it off if the host makes
    much cyclic garbage before starting the runner and relies on the collector for it."""
    gc_young_threshold: int | None = Field(default=50_000, ge=1)
    """While the runner runs, the cyclic garbage collector's young-generation threshold is
    at least this many allocations (``gc.set_threshold``; the older generations' are left
    as they are), restored when the last runner of the process that raised it stops. A
    task allocates a few dozen objects on its way and none of them is cyclic garbage
    (reference counting frees them), so at the default threshold, 700, the collector ran
    about a thousand times a second under load for nothing: on the benchmark VM this
    default took no-op throughput up about 8%. Cyclic garbage of the host's waits longer
    for a collection (at most this many allocations). None: the host's thresholds."""
    pickup_interval_s: float = Field(default=0.25, gt=0)
    """A SQLite file (a store other processes write to, one runner executes): how often
    this runner looks for tasks they stored (``arbiter submit`` beside ``arbiter worker``).
    Each look also sweeps a stretch of the older QUEUED tasks, which finds old tasks they
    re-queued (``retry-dead``) within a few looks (4,000 queued tasks per look). Only when
    ``recover`` is on: a runner that only submits picks up nothing."""
    cron: tuple[CronSpec, ...] = ()
    """Cron entries added when the runner starts (see :meth:`TaskRunner.add_cron`)."""
    keep_finished_s: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    """Delete COMPLETED and CANCELLED tasks from the store this long after they finished
    (every ``prune_interval_s``; a store shared by runners is pruned by each). None: keep
    them for ever. A pruned task's ``result()`` is gone and its idempotency key is free
    again, so keep them longer than a host may submit the same key twice."""
    keep_dead_letters_s: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    """The same for DEAD_LETTERED tasks (None: kept until re-queued or pruned by hand)."""
    prune_interval_s: float = Field(default=60.0, gt=0, allow_inf_nan=False)
    """How often the journal deletes what ``keep_finished_s`` and ``keep_dead_letters_s``
    let go (in batches of 1,000, between its writes)."""
    tracing: bool = False
    """OpenTelemetry spans for submits and attempts, the trace context carried in each task
    (needs ``opentelemetry-api``: the ``otel`` extra; see :mod:`supervisor.tracing`)."""

    @field_validator("cron")
    @classmethod
    def _distinct_cron_names(cls, value: tuple[CronSpec, ...]) -> tuple[CronSpec, ...]:
        names = [spec.name for spec in value]
        if len(set(names)) != len(names):
            raise ValueError(f"cron entries need distinct names, got {names}")
        return value


def open_store_waiting(url: str, wait_s: float) -> TaskStore:
    """Open the store at ``url``; while it is unavailable, try again with backoff (0.1 s
    doubling to 5 s) for up to ``wait_s`` seconds. Other errors (a bad URL, a corrupt
    store, a newer schema) are raised at once; so is the last StoreUnavailable, saying how
    long it was tried."""
    started = time.monotonic()
    delay, attempts = 0.1, 1
    while True:
        try:
            store = open_store(url)
        except StoreUnavailable as exc:
            left = started + wait_s - time.monotonic()
            if left <= 0:
                if attempts == 1:
                    raise
                raise StoreUnavailable(
                    f"{exc} (tried {attempts} times in {time.monotonic() - started:.1f}s)"
                ) from exc
            pause = min(delay, left)
            _log.warning(
                "store.unavailable", attempt=attempts, retry_in_s=round(pause, 3), error=str(exc)
            )
            time.sleep(pause)
            delay, attempts = min(delay * 2, 5.0), attempts + 1
            continue
        if attempts > 1:
            _log.info(
                "store.available",
                attempts=attempts,
                waited_s=round(time.monotonic() - started, 3),
                store=store.url,
            )
        return store


class TaskHandle:
    """A submitted task: its id, its state, its result; cancellable."""

    __slots__ = ("_runner", "task_id")

    def __init__(self, runner: TaskRunner, task_id: uuid.UUID) -> None:
        self._runner = runner
        self.task_id = task_id

    def record(self) -> TaskRecord:
        """The task as stored now (state, attempts, history, result...)."""
        return self._runner.get(self.task_id)

    def state(self) -> TaskState:
        """The task's current state."""
        return self.record().state

    def result(self, timeout: float | None = None) -> Any:
        """Wait for the task to finish and return its result.

        Raises :class:`TaskTimeout` if it does not finish in ``timeout`` seconds,
        :class:`TaskCancelledError` if it was cancelled and :class:`TaskFailedError`
        (with the last error) if it was dead-lettered.
        """
        record = self._runner.wait(self.task_id, timeout)
        if record.state is TaskState.COMPLETED:
            return thaw_json(record.result)
        if record.state is TaskState.CANCELLED:
            raise TaskCancelledError(f"task {self.task_id} was cancelled")
        raise TaskFailedError(f"task {self.task_id} was dead-lettered: {record.last_error}")

    def cancel(self) -> bool:
        """Cancel the task if it has not finished; True if this call cancelled it."""
        return self._runner.cancel(self.task_id)

    def __repr__(self) -> str:
        return f"TaskHandle({self.task_id})"


class _GcTuning:
    """The process-wide raise of the collector's young-generation threshold, held by the
    runners that asked for it (``RunnerConfig.gc_young_threshold``): the host's threshold
    comes back when the last of them stops, unless the host changed it meanwhile."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._holders = 0
        self._saved: tuple[int, int, int] | None = None  # the host's, while raised
        self._set = 0  # the threshold this raised it to

    def raise_young(self, threshold: int) -> bool:
        """Make the young threshold at least ``threshold``; True if the caller now holds
        the raise (and must :meth:`release` it)."""
        with self._lock:
            young, middle, old = gc.get_threshold()
            if self._holders == 0:
                if young >= threshold:
                    return False  # the host's is high enough already: nothing to undo
                self._saved = (young, middle, old)
            if young < threshold:
                gc.set_threshold(threshold, middle, old)
                self._set = threshold
            self._holders += 1
            return True

    def release(self) -> None:
        """One holder less; the last one puts the host's threshold back if it is still the
        one set here."""
        with self._lock:
            self._holders -= 1
            if self._holders or self._saved is None:
                return
            saved, self._saved = self._saved, None
            young, middle, old = gc.get_threshold()
            if young == self._set:
                gc.set_threshold(saved[0], middle, old)


_GC_TUNING = _GcTuning()


class TaskRunner:
    """An actor-model task runner inside the host process. Use :meth:`start`."""

    def __init__(
        self, config: RunnerConfig, clock: Clock | None = None, tracer_provider: Any = None
    ) -> None:
        self.config = config
        self.clock: Clock = clock if clock is not None else SystemClock()
        self._tracing = Tracing(tracer_provider) if config.tracing else None
        self._lock = threading.Lock()
        self._accepting = False
        self._stopped = False
        self._agents: dict[str, ActorRef] = {}
        self._system: ActorSystem | None = None
        self._store: TaskStore | None = None
        self._peers = Peers()
        self._hub = EventHub(clock=self.clock)
        self._waiters = ResultWaiters()
        self._admission = Admission(config.queue_capacity, config.submit_timeout_s)
        self._orphaned = 0
        self._dispatcher = PIPELINE_DISPATCHER if config.shared_dispatcher else None
        self._redelivered = 0
        self._recovered = 0
        self._shared = False
        self._direct_inserts = False  # submit stores new tasks itself (see _insert)
        self._gc_tuned = False  # this runner holds a raise of the GC threshold
        self._wiring: Wiring | None = None
        self._insert_lock = threading.Lock()
        self._claimer_state = ClaimerState()
        self._agent_slots: dict[str, tuple[frozenset[str], int]] = {}
        self._window: OutcomeWindow | None = None  # see RunnerConfig.commit_window
        self._concurrency: dict[str, int] = {}  # agent id -> max_concurrency
        self._stop_listening: Callable[[], None] | None = None

    # -- lifecycle --------------------------------------------------------------------------
    @classmethod
    def start(
        cls,
        config: RunnerConfig | None = None,
        *,
        clock: Clock | None = None,
        tracer_provider: Any = None,
    ) -> Self:
        """Start a runner: open the store, start the actors, recover unfinished tasks.

        ``tracer_provider``: the OpenTelemetry tracer provider of ``RunnerConfig.tracing``
        (default: the global one)."""
        runner = cls(config if config is not None else RunnerConfig(), clock, tracer_provider)
        runner._start()
        return runner

    def _start(self) -> None:
        config = self.config
        store = self._store = open_store_waiting(config.store, config.store_wait_s)
        system = ActorSystem.start(
            strategy=Strategy.ONE_FOR_ONE,
            max_restarts=config.max_restarts,
            within_s=config.within_s,
        )
        self._system = system
        self._shared = store.shared
        try:
            if self._shared:  # before the claimer's first heartbeat
                store.register_runner(config.runner_id, socket.gethostname(), os.getpid())
            self._spawn_pipeline(system, store)
            if self._shared:
                self._stop_listening = store.listen(self._claimer_state.doorbell.ring)
        except BaseException:
            system.stop()
            if self._shared:
                self._leave_shared(store)
            store.close()
            raise
        system.dead_letter_office.subscribe(self._rescue)
        self._direct_inserts = self._require_wiring().direct_store is not None
        self._accepting = True
        if config.recover and not self._shared:
            self._recover()
        if self._journal_state.local is not None:
            self._arm_pickup()
        if config.keep_finished_s is not None or config.keep_dead_letters_s is not None:
            self._arm_prune()
        for cron in config.cron:
            self.add_cron(cron)
        if config.gc_freeze:
            gc.collect()
            gc.freeze()
        if config.gc_young_threshold is not None:
            self._gc_tuned = _GC_TUNING.raise_young(config.gc_young_threshold)
        self._hub.publish("runner.started", None, runner_id=config.runner_id, store=store.url)
        _log.info(
            "runner.started", runner_id=config.runner_id, store=store.url, shared=self._shared
        )

    def _leave_shared(self, store: TaskStore) -> None:
        """Shared mode, at stop (the actors are stopped): give the unfinished tasks this
        runner still owns back to the others, and leave the runners table."""
        if self._stop_listening is not None:
            self._stop_listening()
            self._stop_listening = None
        try:
            store.resign(CRON_LEADER, self.config.runner_id)  # another runner fires at once
            released = store.release(self.config.runner_id)
            store.deregister_runner(self.config.runner_id)
        except StoreError as exc:  # the leases will expire and be rescued instead
            _log.warning("runner.release_failed", runner_id=self.config.runner_id, error=str(exc))
            return
        if released:
            _log.info("runner.released", runner_id=self.config.runner_id, tasks=len(released))

    def _spawn_pipeline(self, system: ActorSystem, store: TaskStore) -> None:
        config = self.config
        peers = self._peers
        journal = self._journal_state = JournalState(store)
        if config.recover and store.external_writers and not store.shared:
            journal.local = set()  # (before the recovery, which fills it)
            journal.watermark = store.last_sequence()
        # A store any thread may write (memory://), not shared and without pickup: submit
        # inserts new tasks itself, and the pipeline writes its updates itself (see
        # Wiring.persist); the journal's thread is not on the way of either.
        direct = store.concurrent_inserts and not self._shared and journal.local is None
        # Caller-runs only there (set before the pipeline's dispatcher is made). With a
        # journal thread committing the pipeline's writes, lent threads let the pipeline run
        # ahead of its group commits: more finished attempts wait uncommitted, and re-run
        # after a crash (48 in tests/acceptance/test_crash_recovery, where 19 had been seen).
        system.runtime.lend_threads = config.lend_threads and direct
        window = self._window = None if direct else OutcomeWindow(config.commit_window)
        wiring = Wiring(
            peers=peers,
            clock=self.clock,
            hub=self._hub,
            timers=system.runtime.timers,
            waiters=self._waiters,
            admission=self._admission,
            direct_store=store if direct else None,
            window=window,
        )
        self._wiring = wiring
        rng = random.Random(config.seed)
        events_hub = self._hub
        performance = PerformanceState()
        health = HealthState(HealthCore(config.heartbeat_timeout_s))
        registry = RegistryState()
        retry = RetryState(
            RetryPolicy(
                base_s=config.backoff_base_s,
                factor=config.backoff_factor,
                cap_s=config.backoff_cap_s,
                max_attempts=config.max_attempts,
                non_retryable=config.non_retryable,
            ),
            rng=random.Random(rng.random()),
        )
        scheduler = SchedulerState()
        cron = CronSettings(
            owner=None if self._shared else config.runner_id,
            max_attempts=config.max_attempts,
            lead=self._lead_cron if self._shared else None,
        )
        queue = QueueState()
        router = RouterState(RouterCore(config.routing_strategy, rng=random.Random(rng.random())))
        prefetch = PrefetchPolicy(config.prefetch, config.prefetch_window_ms, config.prefetch_max)
        factories: dict[str, Callable[[], Any]] = {
            "journal": lambda: JournalActor(
                journal,
                peers,
                self._waiters,
                self._hub,
                self.clock,
                batch_limit=config.journal_batch,
                outage_s=config.store_outage_s,
                window=window,
            ),
            "events": lambda: EventsActor(events_hub),
            "performance": lambda: PerformanceActor(
                performance, wiring, config.performance_interval_s
            ),
            "health": lambda: HealthActor(health, wiring, config.health_interval_s),
            "registry": lambda: RegistryActor(registry, wiring),
            "retry": lambda: RetryActor(retry, wiring),
            "scheduler": lambda: SchedulerActor(scheduler, wiring, cron),
            "queue": lambda: QueueActor(queue, wiring),
            "router": lambda: RouterActor(router, wiring, prefetch),
        }
        names = list(PIPELINE_ACTORS)
        if self._shared:
            claimer = self._claimer_state
            settings = ClaimSettings(
                runner_id=config.runner_id,
                lease_s=config.lease_s,
                claim_interval_s=config.claim_interval_s,
                claim_batch=config.claim_batch,
            )
            factories["claimer"] = lambda: ClaimerActor(
                claimer, wiring, store, settings, self._local_agents
            )
            names.insert(names.index("queue") + 1, "claimer")
        if self._shared:
            # Shared PostgreSQL mode keeps a thread per actor for now: a worker resumed
            # after a pause past its lease sometimes did not log its late result as fenced
            # within 60 s (test_multi_runner under CPU load): 1 of 2 runs on the
            # dispatcher, about 1 of 20 with a thread each. Cause not found yet.
            self._dispatcher = None
        shared = {"performance", "registry", "retry", "queue", "router"}
        if store.url.startswith("memory:"):
            shared.add("journal")  # a memory store never waits
        # Refs are known before any actor runs: a ChildSpec's name is its address.
        for name in names:
            ref = system.spawn(
                ChildSpec(
                    name=name,
                    factory=factories[name],
                    restart=Restart.PERMANENT,
                    dispatcher=self._dispatcher if name in shared else None,
                )
            )
            setattr(peers, name, ref)
            if name == "events":
                self._hub.sink = ref
            elif name == "claimer":
                self._claimer_state.doorbell.target = ref
        peers.agents = system.spawn_supervisor(
            "agents", max_restarts=config.max_restarts, within_s=config.within_s
        )
        health_ref = peers.get("health")
        for name in names:
            if name != "health":
                health_ref.ask(
                    Watch.fast(
                        name=name,
                        ref=peers.get(name),
                        supervisor=system.root,
                        critical=True,
                        agent_id=None,
                    )
                )

    def _local_agents(self) -> tuple[tuple[frozenset[str], int], ...]:
        """For the claimer (on its thread): (capabilities, max_concurrency) per agent."""
        with self._lock:
            return tuple(self._agent_slots.values())

    def _arm_pickup(self) -> None:
        """Tell the journal to look for other processes' tasks in pickup_interval_s, and
        again after that, until the runner stops."""
        self._require_system().runtime.timers.call_later(
            self.config.pickup_interval_s, self._pickup_tick
        )

    def _arm_prune(self) -> None:
        self._require_system().runtime.timers.call_later(
            self.config.prune_interval_s, self._prune_tick
        )

    def _prune_tick(self) -> None:
        """On the timer thread: ask the journal to delete what the retention settings let
        go, then arm the next time (a prune missed at a stop is the next start's)."""
        if self._stopped:
            return
        config = self.config
        now = self.clock.now()
        journal = self._peers.get("journal")
        for keep, states in (
            (config.keep_finished_s, PRUNED_BY_DEFAULT),
            (config.keep_dead_letters_s, (TaskState.DEAD_LETTERED,)),
        ):
            if keep is not None:
                before = now - timedelta(seconds=keep)
                ring(journal, Prune.fast(before=before, states=tuple(states), limit=1000))
        self._arm_prune()

    def _pickup_tick(self) -> None:
        """On the timer thread: one look for other processes' tasks, then the next one
        armed. It rings as the journal's alarm: a runner that stops between the check
        and the ring (the journal stopped first) drops it quietly, not as a dead letter;
        a missed look loses nothing (the next start picks up what the store holds)."""
        if self._stopped:
            return
        ring(self._peers.get("journal"), Pickup.fast(full=False))
        self._arm_pickup()

    def _recover(self) -> None:
        """Put the store's unfinished tasks back in the pipeline (after a restart)."""
        store = self._require_store()
        records = store.recoverable()
        if not records:
            return
        local = self._journal_state.local
        if local is not None:  # pickup: these are this runner's now
            local.update(record.task_id for record in records)
        now = self.clock.now()
        queued = [r for r in records if r.state is TaskState.QUEUED]
        waiting = [r for r in records if r.state is TaskState.RETRY_WAIT]
        # Delayed: back to the scheduler, which queues them at their run time (now if due).
        delayed = [
            r for r in records if r.state is TaskState.PENDING and r.next_attempt_at is not None
        ]
        # Never started: back to the queue as they are (no attempt was made).
        pending = [
            r.moved(TaskState.QUEUED, at=now, agent_id=None)
            for r in records
            if r.state is TaskState.ASSIGNED
            or (r.state is TaskState.PENDING and r.next_attempt_at is None)
        ]
        # Started under a runner that died: the attempt counts (dead letter if exhausted).
        interrupted = [
            _interrupted(r, now)
            for r in records
            if r.state in (TaskState.RUNNING, TaskState.SUSPENDED)
        ]
        failed = [r for r in records if r.state in (TaskState.FAILED, TaskState.TIMED_OUT)]
        peers = self._peers
        if pending:
            wiring = self._require_wiring()
            if wiring.direct_store is not None:
                wiring.persist(tuple(pending))  # written before it returns
            else:  # through the journal, waiting for the commit
                peers.get("journal").ask(Persist.fast(records=tuple(pending), redelivered=False))
        to_queue = [*queued, *pending]
        if to_queue:
            peers.get("queue").tell(
                Enqueue.fast(records=tuple(to_queue), admitted=False, redelivered=False)
            )
        for records_batch, requeue_now in ((interrupted, True), (failed, False)):
            if records_batch:
                peers.get("retry").tell(
                    RetryTask.fast(
                        records=tuple(records_batch),
                        permanent=tuple(False for _ in records_batch),
                        error_types=tuple("RunnerDied" for _ in records_batch),
                        requeue_now=requeue_now,
                        redelivered=False,
                    )
                )
        if waiting:  # the rest of their backoff in the retry scheduler (cancellable there)
            peers.get("retry").tell(Hold.fast(records=tuple(waiting), redelivered=False))
        if delayed:
            peers.get("scheduler").tell(Hold.fast(records=tuple(delayed), redelivered=False))
        self._recovered = len(records)
        _log.info(
            "runner.recovered",
            queued=len(to_queue),
            delayed=len(delayed),
            retry_wait=len(waiting),
            interrupted=len(interrupted),
        )

    def stop(self, *, drain: bool = True, timeout: float | None = None) -> bool:
        """Stop accepting tasks; with ``drain``, wait up to ``timeout`` seconds (default
        ``drain_timeout_s``) for every task to finish; then stop the actors and close the
        store. Unfinished tasks stay in the store for the next start. Returns True if
        everything finished."""
        with self._lock:
            if self._stopped:
                return True
            self._accepting = False
        drained = self.drain(timeout) if drain else self._unfinished_due() == 0
        with self._lock:
            self._stopped = True
        self._hub.publish("runner.stopped", None, runner_id=self.config.runner_id, drained=drained)
        _log.info("runner.stopped", runner_id=self.config.runner_id, drained=drained)
        system = self._require_system()
        store = self._require_store()
        if self._stop_listening is not None:
            self._stop_listening()
            self._stop_listening = None
        if self._window is not None:
            self._window.close()  # no worker waits for a commit that may not come now
        system.stop()
        if self._shared:
            self._leave_shared(store)
        store.close()
        if self._gc_tuned:
            self._gc_tuned = False
            _GC_TUNING.release()
        return drained

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop(drain=exc is None)

    # -- agents -------------------------------------------------------------------------------
    def register_agent(self, spec: AgentSpec | Mapping[str, Any], handler: Handler | str) -> None:
        """Register an agent with its handler (a callable, or ``"module:function"``).

        A sync handler runs on ``max_concurrency`` threads; an ``async def`` handler runs on
        the agent's own event loop. Raises ValueError if the agent id is taken.
        """
        spec = _validate(AgentSpec, spec)
        function = load_handler(handler) if isinstance(handler, str) else handler
        if not callable(function):
            raise InvalidMessage(f"handler for {spec.agent_id!r} is not callable")
        if self._tracing is not None:
            function = self._tracing.wrap(function, spec.agent_id)
        system = self._require_system()
        with self._lock:
            if spec.agent_id in self._agents:
                raise ValueError(f"agent {spec.agent_id!r} is already registered")
            name = f"agent:{spec.agent_id}"
            state = AgentState(spec, function)
            wiring = self._require_wiring()
            ref = system.spawn(
                ChildSpec(
                    name=name,
                    factory=lambda: AgentExecutor(state, wiring),
                    restart=Restart.PERMANENT,
                    dispatcher=self._dispatcher,
                ),
                parent=self._peers.agents,
            )
            self._agents[spec.agent_id] = ref
            self._concurrency[spec.agent_id] = spec.max_concurrency
        if self._window is not None:
            self._window.add_slots(spec.max_concurrency)
        answer = self._peers.get("registry").ask(RegisterAgent.fast(spec=spec, ref=ref))
        if isinstance(answer, Exception):
            raise answer
        self._peers.get("health").ask(
            Watch.fast(
                name=name,
                ref=ref,
                supervisor=self._peers.agents,
                critical=False,
                agent_id=spec.agent_id,
            )
        )
        if self._shared:  # new slots: claim for them now rather than at the next poll
            with self._lock:
                self._agent_slots[spec.agent_id] = (spec.capabilities, spec.max_concurrency)
            self._claimer_state.doorbell.ring()

    def deregister_agent(self, agent_id: str) -> None:
        """Remove an agent; its unfinished tasks go back to the queue."""
        with self._lock:
            ref = self._agents.pop(agent_id, None)
            self._agent_slots.pop(agent_id, None)
            slots = self._concurrency.pop(agent_id, 0)
        if ref is None:
            raise UnknownAgent(f"no agent {agent_id!r} is registered")
        if self._window is not None:
            self._window.add_slots(-slots)
        self._peers.get("registry").ask(DeregisterAgent.fast(agent_id=agent_id))
        self._peers.get("health").ask(Unwatch.fast(name=ref.name))
        self._require_system().stop_child(ref.name, parent=self._peers.agents)

    def agents(self) -> tuple[str, ...]:
        """Ids of the registered agents."""
        return tuple(sorted(self._agents))

    def add_health_check(
        self,
        name: str,
        check: Callable[[], Any],
        *,
        timeout_s: float = 1.0,
        critical: bool = False,
    ) -> None:
        """Run ``check()`` every health interval; it returns True/False, a HealthStatus or
        (HealthStatus, reason). A check that raises or times out counts as UNHEALTHY."""
        answer = self._peers.get("health").ask(
            RegisterCheck(HealthCheck(name, check, timeout_s, critical))
        )
        if isinstance(answer, Exception):
            raise answer

    # -- tasks --------------------------------------------------------------------------------
    def submit(
        self,
        spec: TaskSpec | Mapping[str, Any] | None = None,
        /,
        *,
        delay_s: float | None = None,
        run_at: datetime | None = None,
        **fields: Any,
    ) -> TaskHandle:
        """Submit one task; returns once it is recorded in the store.

        ``spec`` is a TaskSpec, a mapping of its fields, or the fields as keywords.
        ``delay_s`` (seconds from now) or ``run_at`` (an aware datetime) delay the task:
        it waits PENDING until then, holds no queue capacity meanwhile, and can be
        cancelled; a time already past runs it at once.
        Raises :class:`InvalidMessage` (also a ValueError) for bad input,
        :class:`PayloadTooLarge` and :class:`QueueFull` (after ``submit_timeout_s``).
        With an ``idempotency_key`` already used, returns the existing task's handle.
        """
        if spec is None:
            spec = fields
        elif fields:
            raise InvalidMessage("pass a TaskSpec or keyword fields, not both")
        return self.submit_many((spec,), delay_s=delay_s, run_at=run_at)[0]

    def submit_many(
        self,
        specs: Iterable[TaskSpec | Mapping[str, Any]],
        *,
        delay_s: float | None = None,
        run_at: datetime | None = None,
    ) -> list[TaskHandle]:
        """Submit several tasks in one store transaction (all validated first); with
        ``delay_s`` or ``run_at``, every one of them is delayed (see :meth:`submit`)."""
        validated = [self._check_spec(spec) for spec in specs]
        if self._tracing is not None and validated:
            with self._tracing.submitting(validated) as traced:
                return self._submit_validated(traced, delay_s, run_at)
        return self._submit_validated(validated, delay_s, run_at)

    def _submit_validated(
        self, validated: list[TaskSpec], delay_s: float | None, run_at: datetime | None
    ) -> list[TaskHandle]:
        now = self.clock.now()
        when = None if delay_s is None and run_at is None else _run_time(now, delay_s, run_at)
        if when is not None:
            for spec in validated:
                if spec.deadline is not None and spec.deadline <= when:
                    raise InvalidMessage(
                        f"the task's deadline {spec.deadline.isoformat()} is not after its "
                        f"run time {when.isoformat()}"
                    )
        if not validated:
            return []
        if not self._accepting:
            raise RuntimeError("the runner is not accepting tasks (stopped or stopping)")
        # A delayed task takes no queue capacity while it waits (as a retried task).
        credits = len(validated) if when is None else 0
        try:
            self._admission.acquire(credits)
        except QueueFull:
            self._hub.publish("queue.full", None, capacity=self.config.queue_capacity)
            raise
        config = self.config
        records = queued_records(
            validated,
            now=now,
            owner=None if self._shared else config.runner_id,  # shared: the claimer's lease
            max_attempts=config.max_attempts,
            first_sequence=self._require_store().sequence_hint() if self._direct_inserts else 0,
            run_at=when,
        )
        try:
            stored: Sequence[TaskRecord] | StoreError
            fresh: int | None = None  # how many are new tasks (not duplicates), if known
            if self._direct_inserts:
                stored, fresh = self._insert(records)
            else:
                stored = self._peers.get("journal").ask(
                    Append.fast(records=records, redelivered=False), timeout=60.0
                )
        except BaseException:
            self._admission.release(credits)
            raise
        if isinstance(stored, StoreError):  # the journal refused them: nothing stored
            self._admission.release(credits)
            raise stored
        if self._shared:
            # Stored in the shared queue (the database): not in this runner's queue.
            self._admission.release(credits)
        elif credits:  # duplicates (of stored tasks) take no place in the queue
            if fresh is None:
                fresh = len(new_records(stored, records))
            self._admission.release(credits - fresh)
        return [TaskHandle(self, record.task_id) for record in stored]

    def _insert(self, records: tuple[TaskRecord, ...]) -> tuple[list[TaskRecord], int]:
        """Store new tasks from the calling thread and hand them to the queue (a store with
        ``concurrent_inserts``: no round trip through the journal's thread); return the
        records as stored and how many of them are new tasks (not duplicates)."""
        store = self._require_store()
        # One submitter at a time from the insert to the tell: the queue then gets tasks
        # in the order of their store sequences (FIFO among equal priorities, the order a
        # recovery rebuilds), as when the journal's one thread did both.
        # Caller-runs: an idle dispatcher is claimed (never waited for) before the tell, and
        # the turns it causes run here once the lock is free (see RunnerConfig.lend_threads).
        lent: LentThread | None = None
        try:
            with self._insert_lock:
                stored = store.insert(records)
                fresh = new_records(stored, records)
                if fresh:
                    queue = self._peers.get("queue")
                    lent = queue.claim_dispatcher()
                    hand_to_queue(fresh, self._peers, self._hub)
        finally:
            if lent is not None:
                lent.run()
        return stored, len(fresh)

    def _check_spec(self, spec: TaskSpec | Mapping[str, Any]) -> TaskSpec:
        validated = simple_spec(spec)  # {"type", "payload", "priority"}, cheaply; else None
        if validated is None:
            validated = _validate(TaskSpec, spec)
        size = json_size(validated.payload)
        if size > self.config.max_payload_bytes:
            raise PayloadTooLarge(
                f"payload is {size} bytes of JSON; the limit is {self.config.max_payload_bytes}"
            )
        return validated

    # -- cron ---------------------------------------------------------------------------------
    def add_cron(self, spec: CronSpec | Mapping[str, Any]) -> datetime:
        """Submit ``spec.task`` at every fire time of ``spec.cron`` (replacing an entry of
        the same name); returns the first fire time (UTC).

        Each fire submits one task with the idempotency key ``cron:<name>:<fire time>``,
        so a fire time makes at most one task, across restarts and runners. With a shared
        store only the runner holding the ``cron`` leader lease fires. A late tick fires
        once for the latest fire time it passed; fire times missed while no runner ran
        are skipped. Entries live as long as the runner (add them at each start, or list
        them in ``RunnerConfig.cron``)."""
        validated = _validate(CronSpec, spec)
        fire: datetime = self._peers.get("scheduler").ask(AddCron(spec=validated))
        return fire

    def remove_cron(self, name: str) -> bool:
        """Stop the cron entry ``name``; True if there was one."""
        removed: bool = self._peers.get("scheduler").ask(RemoveCron(name=name))
        return removed

    def cron_entries(self) -> list[dict[str, Any]]:
        """The cron entries: name, cron, timezone, task type and next fire time (ISO)."""
        return list(self._peers.get("scheduler").ask(ListCron()))

    def _lead_cron(self) -> bool:
        """Shared store, on the scheduler's thread: take or renew the cron leader lease."""
        try:
            return self._require_store().try_lead(
                CRON_LEADER, self.config.runner_id, self.config.lease_s
            )
        except StoreError as exc:  # no lease, no fire: the next fire time tries again
            _log.warning("scheduler.lead_failed", runner_id=self.config.runner_id, error=str(exc))
            return False

    def get(self, task_id: uuid.UUID | str) -> TaskRecord:
        """The stored record of a task; raises UnknownTask."""
        record = self._require_store().get(task_id)
        if record is None:
            raise UnknownTask(f"no task {task_id}")
        return record

    def handle(self, task_id: uuid.UUID | str) -> TaskHandle:
        """A handle for a task submitted earlier (e.g. before a restart)."""
        record = self.get(task_id)
        return TaskHandle(self, record.task_id)

    def wait(self, task_id: uuid.UUID, timeout: float | None = None) -> TaskRecord:
        """Wait until the task reaches a terminal state; returns its record.

        Shared mode: another runner may finish the task, so the store is polled too
        (every 10 ms at first, slowing down to every 200 ms); a poll that finds the store
        unavailable (a database restart) is tried again until the timeout."""
        done = threading.Event()
        box: list[TaskRecord] = []

        def resolved(record: TaskRecord) -> None:
            box.append(record)
            done.set()

        self._waiters.add(task_id, resolved)
        try:
            try:
                record: TaskRecord | None = self.get(task_id)
            except StoreUnavailable:
                if not self._shared:
                    raise
                record = None  # polled again below
            if record is not None and record.state in TERMINAL_STATES:
                return record
            if not self._shared:
                if not done.wait(timeout):
                    raise TaskTimeout(f"task {task_id} did not finish within {timeout}s")
                return box[0]
            deadline = None if timeout is None else self.clock.monotonic() + timeout
            pause, most = _WAIT_POLL_S
            while True:
                left = None if deadline is None else deadline - self.clock.monotonic()
                if left is not None and left <= 0:
                    raise TaskTimeout(f"task {task_id} did not finish within {timeout}s")
                if done.wait(pause if left is None else min(pause, left)):
                    return box[0]
                pause = min(pause * 2, most)
                try:
                    record = self.get(task_id)
                except StoreUnavailable as exc:
                    _log.info("runner.wait_store_unavailable", task_id=str(task_id), error=str(exc))
                    continue
                if record.state in TERMINAL_STATES:
                    return record
        finally:
            self._waiters.discard(task_id, resolved)

    def cancel(self, task_id: uuid.UUID | str) -> bool:
        """Cancel a task wherever it is (delayed, queue, router, agent, retry wait); True
        if this call cancelled it, False if it had already finished."""
        record = self.get(task_id)
        if self._shared and record.owner is None and record.state not in TERMINAL_STATES:
            # Not claimed: no runner holds it; the store cancels it under a row lock.
            cancelled = self._require_store().cancel_unowned(record.task_id)
            if cancelled is not None:
                self._waiters.resolve(cancelled)
                self._hub.publish("task.cancelled", cancelled.task_id, where="store")
                return True
            record = self.get(task_id)
        message = CancelTask.fast(task_id=record.task_id)
        for _ in range(3):  # the task may move between actors while we look
            if record.state in TERMINAL_STATES:
                return False
            holders = [self._peers.get(name) for name in ("scheduler", "queue", "router", "retry")]
            if record.agent_id is not None and record.agent_id in self._agents:
                holders.append(self._agents[record.agent_id])
            else:  # assigned but not started yet: the store does not know the agent
                holders.extend(self._agents[agent_id] for agent_id in sorted(self._agents))
            for ref in holders:
                if ref.ask(message):
                    # The holder sent the CANCELLED record to the journal before answering;
                    # wait until it is stored, so state() says CANCELLED from now on.
                    self._peers.get("journal").ask(Sync())
                    return True
            record = self.get(task_id)
        return False

    def requeue_dead_letters(self, task_ids: Iterable[uuid.UUID] | None = None) -> int:
        """Put dead-lettered tasks (all, or these) back in the queue with fresh attempts."""
        ids = tuple(task_ids) if task_ids is not None else ()
        requeued = self._peers.get("journal").ask(
            RequeueDeadLetters.fast(task_ids=ids, all=task_ids is None), timeout=60.0
        )
        return len(requeued)

    def dead_letters(self, limit: int = 1000) -> list[TaskRecord]:
        """Dead-lettered tasks with their last error and attempt history."""
        return self._require_store().dead_letters(limit)

    # -- observing ----------------------------------------------------------------------------
    def subscribe(self, callback: Callable[[LifecycleEvent], None]) -> Callable[[], None]:
        """Call ``callback(event)`` for every lifecycle event (on the events actor's
        thread); returns a function that unsubscribes."""
        return self._hub.subscribe(callback)

    def unfinished(self) -> int:
        """How many tasks are not in a terminal state."""
        counts = self._require_store().counts()
        return sum(n for state, n in counts.items() if state not in TERMINAL_STATES)

    def idle(self, horizon_s: float = 0.0) -> bool:
        """True when no task is unfinished, except delayed tasks due more than
        ``horizon_s`` seconds from now (PENDING in the store until then)."""
        if self._unfinished_due():
            return False
        return not self._delayed_before(self.clock.now() + timedelta(seconds=horizon_s))

    def _delayed_before(self, horizon: datetime) -> bool:
        """True if this runner's scheduler holds a delayed task due by ``horizon``."""
        due = self._actor_statistics(self._peers.get("scheduler")).get("next_delayed")
        return due is not None and datetime.fromisoformat(due) <= horizon

    def _unfinished_due(self) -> int:
        counts = self._require_store().counts()
        return sum(
            n
            for state, n in counts.items()
            if state not in TERMINAL_STATES and state is not TaskState.PENDING
        )

    def unfinished_records(self) -> list[TaskRecord]:
        """Every task of the store not in a terminal state, by (priority desc, sequence
        asc), read through the runner's own store connection (a shared store holds other
        runners' tasks too)."""
        return self._require_store().recoverable()

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until no task is unfinished, except delayed tasks whose run time comes
        after ``timeout`` (they stay PENDING in the store); True if that happened within
        ``timeout``."""
        limit = self.config.drain_timeout_s if timeout is None else timeout
        deadline = self.clock.monotonic() + limit
        pause = threading.Event()
        while not self.idle(limit):
            left = deadline - self.clock.monotonic()
            if left <= 0:
                return False
            pause.wait(min(0.02, left))
        return True

    def status(self) -> dict[str, Any]:
        """Health, queue depth, agents, restarts and statistics, as a JSON-able dict."""
        system = self._require_system()
        store = self._require_store()
        stats = system.statistics()
        peers = self._peers
        router_stats = self._actor_statistics(peers.get("router"))
        loads = router_stats.get("load", {})
        buffers = router_stats.get("buffer", {})
        agents = []
        for agent_id in sorted(self._agents):
            executor = self._actor_statistics(self._agents[agent_id])
            agents.append(
                {
                    "agent_id": agent_id,
                    "load": loads.get(agent_id, 0),
                    "buffer": buffers.get(agent_id, 0),
                    **executor,
                }
            )
        health = peers.get("health").ask(GetHealth())
        counts = store.counts()
        return {
            "runner_id": self.config.runner_id,
            "store": store.url,
            "accepting": self._accepting,
            "health": health,
            "queue": {
                "depth": self._actor_statistics(peers.get("queue")).get("depth", 0),
                "capacity": self.config.queue_capacity,
                "admitted": self._admission.in_use,
            },
            "counts": {state.value.lower(): counts.get(state, 0) for state in TaskState},
            "agents": agents,
            "restarts": sum(s.restarts for s in stats.values()),
            "actors": {
                name: {"state": s.state, "restarts": s.restarts, "mailbox": s.mailbox_depth}
                for name, s in sorted(stats.items())
            },
            "dead_letters": {
                "messages": system.dead_letter_office.total,
                "redelivered": self._redelivered,
                "orphaned": self._orphaned,
            },
            "performance": peers.get("performance").ask(GetPerformance()),
            "scheduler": self._actor_statistics(peers.get("scheduler")),
            "recovered": self._recovered,
            **({"commit_window": self._window_status()} if self._window is not None else {}),
            **({"shared": self._shared_status(store)} if self._shared else {}),
        }

    def _shared_status(self, store: TaskStore) -> dict[str, Any]:
        """Shared mode: the claimer's counters and the runners alive on the store."""
        config = self.config
        try:
            runners: Any = store.live_runners(max_age_s=config.lease_s)
        except StoreError as exc:
            runners = {"error": str(exc)}
        return {
            "lease_s": config.lease_s,
            "claim_interval_s": config.claim_interval_s,
            "claimer": self._actor_statistics(self._peers.get("claimer")),
            "runners": runners,
        }

    @staticmethod
    def _actor_statistics(ref: ActorRef) -> dict[str, Any]:
        """An actor's own counters (asked through its mailbox, so they are consistent)."""
        try:
            stats: ActorStatistics = ref.ask(GetStatistics(), timeout=5.0)
        except (TimeoutError, ActorStopped):
            return {}
        return thaw_json(stats.extra)  # type: ignore[no-any-return]

    def restarts(self) -> int:
        """Actor restarts so far, over the whole tree."""
        return sum(s.restarts for s in self._require_system().statistics().values())

    def health(self) -> HealthStatus:
        """The overall health."""
        snapshot = self._peers.get("health").ask(GetHealth())
        return HealthStatus(snapshot["status"])

    @property
    def system(self) -> ActorSystem:
        """The actor system underneath (for observing supervision)."""
        return self._require_system()

    def inject_crash(self, actor: str, reason: str = "injected crash") -> None:
        """Fault injection: make ``actor`` (a pipeline actor name, or ``agent:<id>``) fail
        on its next message. Used by ``arbiter demo --crash`` and the crash tests."""
        if actor.startswith("agent:"):
            ref = self._agents.get(actor.removeprefix("agent:"))
            if ref is None:
                raise UnknownAgent(f"no agent {actor!r}")
        else:
            ref = self._peers.get(actor)
        ref.tell(InjectCrash.fast(reason=reason))

    # -- internals ----------------------------------------------------------------------------
    def _window_status(self) -> dict[str, int]:
        window = self._window
        assert window is not None
        return {"limit": window.limit, "unsettled": window.held, "waits": window.waits}

    def _rescue(self, letter: DeadLetter) -> None:
        """Dead-letter listener: a message carrying tasks must not be lost with a crash.

        It is delivered once more to the restarted actor; an assignment to an agent that
        is gone puts its tasks back in the queue; anything else is logged as orphaned
        (the tasks stay in the store and come back on the next start).
        """
        message = letter.message
        if not isinstance(message, CarriesTasks) or letter.sender_waiting:
            return  # nothing to rescue, or the asker got the error and decides
        if self._stopped:
            return
        system = self._require_system()
        try:
            ref: ActorRef | None = system.ref(letter.recipient)
        except KeyError:
            ref = None
        if ref is not None and ref.is_alive() and not message.redelivered:
            self._redelivered += 1
            ref.tell(message.model_copy(update={"redelivered": True}))
            return
        if isinstance(message, Assign):
            now = self.clock.now()
            queued = tuple(r.handed_back(at=now) for r in message.records)
            self._require_wiring().persist(queued)
            self._peers.get("queue").tell(
                Enqueue.fast(records=queued, admitted=False, redelivered=False)
            )
            return
        self._orphaned += len(getattr(message, "records", ()))
        if isinstance(message, Persist) and self._window is not None:
            self._window.release(message.settles)  # never to be committed now
        _log.error(
            "task.orphaned",
            recipient=letter.recipient,
            message_type=type(message).__name__,
            reason=letter.reason,
            task_ids=[str(r.task_id) for r in getattr(message, "records", ())][:20],
        )

    def _require_system(self) -> ActorSystem:
        if self._system is None:
            raise RuntimeError("the runner is not started")
        return self._system

    def _require_wiring(self) -> Wiring:
        if self._wiring is None:
            raise RuntimeError("the runner is not started")
        return self._wiring

    def _require_store(self) -> TaskStore:
        if self._store is None:
            raise RuntimeError("the runner is not started")
        return self._store


_MAX_DELAY_S: Final = 10 * 366 * 86_400.0
"""The longest ``delay_s`` accepted (about ten years)."""


def _run_time(now: datetime, delay_s: float | None, run_at: datetime | None) -> datetime | None:
    """When a delayed task runs, from ``submit``'s ``delay_s`` or ``run_at`` (one of them);
    None if that is not after ``now`` (the task is queued at once)."""
    if delay_s is not None and run_at is not None:
        raise InvalidMessage("pass delay_s or run_at, not both")
    if run_at is None:
        if isinstance(delay_s, bool) or not isinstance(delay_s, int | float):
            raise InvalidMessage(f"delay_s must be a number of seconds, got {delay_s!r}")
        if not 0 <= delay_s <= _MAX_DELAY_S:  # also refuses NaN
            raise InvalidMessage(f"delay_s must be between 0 and {_MAX_DELAY_S:.0f}, got {delay_s}")
        run_at = now + timedelta(seconds=delay_s)
    elif not isinstance(run_at, datetime) or run_at.tzinfo is None:
        raise InvalidMessage(f"run_at must be a timezone-aware datetime, got {run_at!r}")
    return run_at.astimezone(UTC) if run_at > now else None


def _interrupted(record: TaskRecord, now: datetime) -> TaskRecord:
    if record.state is TaskState.SUSPENDED:
        record = record.moved(TaskState.RUNNING, at=now)
    return record.moved(
        TaskState.FAILED,
        at=now,
        last_error=f"RunnerDied: attempt {record.attempt} was interrupted by a runner stop",
    )


def load_handler(path: str) -> Handler:
    """Import ``"package.module:function"`` and return the function."""
    module_name, sep, attribute = path.partition(":")
    if not sep or not module_name or not attribute:
        raise InvalidMessage(f"handler {path!r} must look like 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise InvalidMessage(f"cannot import handler module {module_name!r}: {exc}") from exc
    target: Any = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError as exc:
            raise InvalidMessage(f"module {module_name!r} has no {attribute!r}") from exc
    if not callable(target):
        raise InvalidMessage(f"handler {path!r} is not callable")
    return target  # type: ignore[no-any-return]


_M = TypeVar("_M", bound=BaseModel)


def _validate(model: type[_M], value: _M | Mapping[str, Any]) -> _M:
    """Validate at the boundary; every problem becomes one clear InvalidMessage."""
    if type(value) is not dict:  # a dict (the commonest) is validated as it is
        if isinstance(value, model):
            return value
        if isinstance(value, BaseModel):
            value = value.model_dump()
        if not isinstance(value, Mapping):
            raise InvalidMessage(
                f"expected a {model.__name__} or a mapping of its fields, "
                f"got {type(value).__name__}"
            )
        value = dict(value)
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}"
            for err in exc.errors()
        )
        raise InvalidMessage(f"invalid {model.__name__}: {problems}") from exc
