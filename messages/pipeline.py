"""The task pipeline's protocol: what queue, router, registry, agents, retry scheduler,
health monitor, performance tracker and journal tell each other.

Messages built inside the runtime carry data that was validated once at the boundary
(``TaskRunner.submit``), so actors build them with :meth:`messages.base.Message.fast`
(no second validation on every hop); they are frozen all the same.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import Field

from messages.base import Message
from messages.health import HealthStatus
from messages.routing import AgentView
from messages.task import AgentSpec, CronSpec, TaskRecord, TaskState

__all__ = [
    "AddCron",
    "AgentHealth",
    "AgentsSnapshot",
    "Append",
    "Assign",
    "CancelTask",
    "CarriesTasks",
    "Demand",
    "DeregisterAgent",
    "Enqueue",
    "GetHealth",
    "GetPerformance",
    "Hold",
    "InjectCrash",
    "ListCron",
    "OutcomeItem",
    "Outcomes",
    "PerfUpdate",
    "Persist",
    "Pickup",
    "Prune",
    "Refill",
    "RegisterAgent",
    "Released",
    "RemoveCron",
    "ReportUnresponsive",
    "RequeueDeadLetters",
    "RetryTask",
    "RouteLatencies",
    "Sync",
    "TasksReady",
    "Tick",
    "TimeoutCheck",
    "Unwatch",
    "Wake",
    "Watch",
    "WorkDone",
    "construct",
]


class CarriesTasks(Message):
    """A message that holds task records; if its handler crashes it is redelivered once."""

    redelivered: bool = False


class Append(CarriesTasks):
    """Host or scheduler -> journal: record new tasks (answered with the stored records,
    where a duplicate idempotency key gives the existing record). ``admitted``: the sender
    took an admission credit per task (the host's ``submit``); the scheduler's cron tasks
    take none."""

    records: tuple[TaskRecord, ...]
    admitted: bool = True


class Persist(CarriesTasks):
    """Any actor -> journal: record new versions of existing tasks. ``settles``: how many
    outcome-window credits the journal gives back once these are committed (an agent's
    ended attempts, see ``actors.pipeline.OutcomeWindow``)."""

    records: tuple[TaskRecord, ...]
    settles: int = Field(default=0, ge=0)


class Enqueue(CarriesTasks):
    """Journal / retry -> queue: tasks to queue (state QUEUED). ``admitted``: the tasks
    hold admission credits (fresh submits), given back when they leave the queue."""

    records: tuple[TaskRecord, ...]
    admitted: bool = False


class Demand(Message):
    """Router -> queue: the free slots right now, as (capabilities, free slots) pairs.

    Replaces the previous demand; the queue sends at most that many tasks it can serve.
    """

    slots: tuple[tuple[frozenset[str], int], ...]
    received: int = 0  # tasks the router has received from the queue in all, so far
    grant: int = 0  # the router's number of this demand (echoed back in TasksReady)


class TasksReady(CarriesTasks):
    """Queue -> router: tasks to route (already taken out of the queue)."""

    records: tuple[TaskRecord, ...]
    ready_at: float = 0.0  # monotonic time they left the queue (routing latency)
    # The queue's demand after this dispatch: the ``grant`` number of the Demand it holds
    # and the free slots left of each of its slots (in that Demand's order). The router
    # skips a Demand the queue does not need yet (see RouterActor._send_demand).
    grant: int = 0
    credits: tuple[int, ...] = ()


class Assign(CarriesTasks):
    """Router -> agent executor: run these tasks. The records are as the queue handed them
    (QUEUED): this message is what assigns them to the agent, which makes their next
    version (RUNNING, through ASSIGNED) itself. ASSIGNED records are taken too."""

    records: tuple[TaskRecord, ...]


OutcomeItem = tuple[str, str, bool, float, float | None]
"""One attempt's outcome for the performance tracker: ``(agent_id, task_type, success,
latency_ms, end_to_end_ms)``; ``end_to_end_ms`` (submit to completion) only on success.
A plain tuple: an agent reports one per task, so it is the cheapest immutable record."""


class WorkDone(Message):
    """An agent's handler threads -> its executor: attempts ended; their outcomes wait in
    the executor's own completion line. Rung once until the executor takes them, so many
    completions cost one message."""


class TimeoutCheck(Message):
    """Timer -> agent executor: the earliest deadline among its running attempts, ``due``
    (timer-service monotonic seconds), has come; time out what is past due."""

    due: float


class Released(Message):
    """Agent executor -> router: tasks that no longer hold a slot on an agent, with the
    outcome of each (task_id, task_type, success, latency_ms) for the router's learning."""

    agent_id: str
    outcomes: tuple[tuple[uuid.UUID, str, bool, float], ...]


class RetryTask(CarriesTasks):
    """Agent executor -> retry scheduler: an attempt failed or timed out."""

    records: tuple[TaskRecord, ...]
    permanent: tuple[bool, ...]
    error_types: tuple[str, ...]
    requeue_now: bool = False  # the agent crashed or left: no backoff, attempt counted


class CancelTask(Message):
    """Host -> queue / retry / scheduler / agent: cancel a task wherever it is."""

    task_id: uuid.UUID


class RegisterAgent(Message):
    """Host -> registry: a new agent (its executor is already running as ``ref``)."""

    spec: AgentSpec
    ref: Any


class DeregisterAgent(Message):
    """Host -> registry: remove an agent."""

    agent_id: str


class AgentsSnapshot(Message):
    """Registry -> router: the agents as they are now, with their executors' refs."""

    agents: tuple[AgentView, ...]
    refs: tuple[tuple[str, Any], ...]


class RouteLatencies(Message):
    """Router -> performance tracker: routing+assignment latencies (ms) of a batch."""

    values: tuple[float, ...]


class Outcomes(Message):
    """Agent executor -> performance tracker: a batch of attempt outcomes."""

    items: tuple[OutcomeItem, ...]


class GetPerformance(Message):
    """Ask the performance tracker for its summary."""


class GetHealth(Message):
    """Ask the health monitor for its snapshot."""


class Watch(Message):
    """Host -> health monitor: watch an actor (``critical``: its failure makes the runner
    UNHEALTHY); ``agent_id`` links an agent executor to its agent."""

    name: str
    ref: Any
    supervisor: Any
    critical: bool = True
    agent_id: str | None = None


class Unwatch(Message):
    """Host -> health monitor: stop watching an actor."""

    name: str


class PerfUpdate(Message):
    """Performance tracker -> registry: recent performance per agent
    (agent_id, success_rate, latency_ms, samples)."""

    agents: tuple[tuple[str, float, float, int], ...]


class AgentHealth(Message):
    """Health monitor -> registry: an agent's health changed."""

    agent_id: str
    status: HealthStatus


class ReportUnresponsive(Message):
    """Health monitor -> supervisor: this actor stopped making progress."""

    child: str
    busy_s: float


class Tick(Message):
    """A timer went off (sent by an actor to itself through the timer service)."""

    at: float = 0.0


class Sync(Message):
    """Host -> journal: answered once every write sent to the journal before it is stored
    (a barrier: mailboxes are FIFO)."""


class Pickup(Message):
    """Host timer -> journal (a file store one runner executes, e.g. SQLite): look for
    tasks other processes stored (``arbiter submit``, ``retry-dead``) and queue them: those
    stored since the last look, and a stretch of a sweep through the older QUEUED ones.
    ``full``: sweep every QUEUED task now."""

    full: bool = False


class Prune(Message):
    """Host timer -> journal: delete finished tasks in ``states`` last updated before
    ``before`` (``RunnerConfig.keep_finished_s``), in batches of ``limit``."""

    before: datetime
    states: tuple[TaskState, ...]
    limit: int = Field(default=1000, ge=1)


class InjectCrash(Message):
    """Fault injection (``arbiter demo --crash``): the receiving actor raises."""

    reason: str = "injected crash"


class Wake(Message):
    """Store listener / queue -> claimer (shared mode): claimable work may be waiting in
    the store (``notify``), or the local queue ran low (``refill``)."""

    reason: str = "notify"


class Refill(Message):
    """Claimer -> queue (shared mode): tell the claimer ``Wake(reason="refill")`` once, as
    soon as fewer than ``below`` tasks are queued here or a new ``Demand`` from the router
    asks for more than the queue holds."""

    below: int


class Hold(CarriesTasks):
    """Journal or host -> scheduler: delayed tasks (PENDING, ``next_attempt_at`` their run
    time), to be queued when that time comes. Host -> retry scheduler (recovery): tasks
    left waiting for a retry (RETRY_WAIT), to be queued when their backoff is over."""

    records: tuple[TaskRecord, ...]


class AddCron(Message):
    """Host -> scheduler: add (or replace, by name) a cron entry; answered with its next
    fire time."""

    spec: CronSpec


class RemoveCron(Message):
    """Host -> scheduler: remove a cron entry; answered True if there was one."""

    name: str


class ListCron(Message):
    """Host -> scheduler: answered with the cron entries and their next fire times."""


class RequeueDeadLetters(Message):
    """Host -> journal: move dead-lettered tasks back to the queue (operator action)."""

    task_ids: tuple[uuid.UUID, ...] = ()
    all: bool = False


def construct(cls: type[Message], **fields: Any) -> Any:
    """Build a message from already-validated data without validating it again."""
    return cls.fast(**fields)
