"""The queue actor: pending tasks in priority/FIFO order, handed to the router on demand.

The router tells the queue how many free slots each kind of agent has (``Demand``); the
queue sends at most that many tasks (``TasksReady``), so it never floods a mailbox. Host
backpressure is the :class:`~actors.pipeline.Admission` semaphore: a fresh task holds a
credit from ``submit`` until it leaves the queue, and the queue gives it back.

The :class:`QueueState` box outlives a crashed incarnation, so a restart loses no task.
"""

from __future__ import annotations

import sys
import uuid
from dataclasses import dataclass, field
from typing import Any

from actors.base import Actor
from actors.core.queue import RoutingKey, TaskQueueCore, routing_key
from actors.pipeline import TickTimer, Wiring, take_in_mailbox
from messages.pipeline import (
    CancelTask,
    Demand,
    Enqueue,
    InjectCrash,
    Refill,
    TasksReady,
    Tick,
    Wake,
)
from messages.task import TaskRecord, TaskState

__all__ = ["QueueActor", "QueueState"]


@dataclass
class QueueState:
    """Survives restarts: the pending tasks, credits held and the router's last demand."""

    core: TaskQueueCore = field(default_factory=lambda: TaskQueueCore(sys.maxsize))
    # Ids (``task_id.int``: an int hashes in C, a UUID in Python) of queued tasks that
    # hold a credit of the runner's admission.
    credited: set[int] = field(default_factory=set)
    demand: list[list[Any]] = field(default_factory=list)  # [[capabilities, free], ...]
    known_capabilities: tuple[frozenset[str], ...] = ()
    timer: TickTimer = field(default_factory=TickTimer)
    expired: int = 0
    cancelled: int = 0
    dispatched: int = 0  # tasks sent to the router in all (the router counts receipts)
    refill_below: int | None = None  # shared mode: wake the claimer below this depth
    grant: int = 0  # the number of the Demand held (echoed in TasksReady with the credits)


class QueueActor(Actor):
    """Holds queued tasks; dispatches them to the router as agents have free slots."""

    def __init__(self, state: QueueState, wiring: Wiring, batch_limit: int = 256) -> None:
        self.state = state
        self.wiring = wiring
        self.batch_limit = batch_limit

    def on_start(self) -> None:
        # A restarted queue may have tasks and demand waiting: carry on dispatching.
        self._dispatch()
        self._arm_deadline()

    def receive(self, message: Any) -> Any:
        if isinstance(message, (Enqueue, Demand)):
            # The hot path: take in every task and every demand waiting in the mailbox,
            # then dispatch once (one TasksReady for all, in priority order across them).
            demanded = take_in_mailbox(
                self, message, (Enqueue, Demand), self._take_in, self._dispatch, self.batch_limit
            )
            self._dispatch()
            self._check_refill(on_demand=demanded)
            self._arm_deadline()
        elif isinstance(message, Tick):
            self.state.timer.fired()
            self._expire()
        elif isinstance(message, CancelTask):
            return self._cancel(message.task_id)
        elif isinstance(message, Refill):
            self.state.refill_below = message.below
            self._check_refill(on_demand=False)
        elif isinstance(message, InjectCrash):
            raise RuntimeError(message.reason)
        else:
            raise TypeError(f"queue got {type(message).__name__}")
        return None

    def statistics(self) -> dict[str, Any]:
        state = self.state
        return {
            "depth": len(state.core),
            "credited": len(state.credited),
            "dispatched": state.dispatched,
            "expired": state.expired,
            "cancelled": state.cancelled,
        }

    # ------------------------------------------------------------------
    def _take_in(self, message: Enqueue | Demand) -> bool:
        """Queue the tasks of an ``Enqueue``, or take the free slots of a ``Demand``
        (True); dispatching waits for the end of the batch."""
        state = self.state
        if isinstance(message, Demand):
            # Tasks sent that the router had not received when it computed this demand
            # would be counted twice: take them off the free slots first.
            in_transit = max(0, state.dispatched - message.received)
            demand = []
            for caps, free in message.slots:
                used = min(free, in_transit)
                in_transit -= used
                demand.append([caps, free - used])
            state.demand = demand
            state.grant = message.grant
            state.known_capabilities = tuple(caps for caps, _ in message.slots)
            return True
        core = state.core
        hub = self.wiring.hub
        listening = hub.active
        credited = state.credited if message.admitted else None
        push = core.push
        for record in message.records:
            task_id = record.task_id
            if task_id in core:
                continue  # a redelivered message: this task is queued already
            push(record)
            if credited is not None:
                credited.add(task_id.int)
            if listening:
                hub.publish("task.queued", task_id, priority=record.spec.priority)
        return False

    def _dispatch(self) -> None:
        state = self.state
        core = state.core
        if not len(core) or not state.demand:
            return
        ready: list[TaskRecord] = []
        for slot in state.demand:
            capabilities, free = slot
            if free <= 0:
                continue
            taken = core.take(free, capabilities.issuperset)
            slot[1] = free - len(taken)
            ready.extend(taken)
            if not len(core):
                break
        if not ready:
            return
        state.dispatched += len(ready)
        self._release_credits(ready)
        self.wiring.peers.get("router").tell(
            TasksReady.fast(
                records=tuple(ready),
                ready_at=self.wiring.clock.monotonic(),
                redelivered=False,
                grant=state.grant,
                credits=tuple([slot[1] for slot in state.demand]),
            )
        )

    def _check_refill(self, *, on_demand: bool) -> None:
        """Shared mode: the claimer asked to hear when this queue runs low (``Refill``):
        fewer than ``below`` tasks left, or (``on_demand``: a new Demand was just served)
        the router wants more than the queue had. Once per Refill."""
        state = self.state
        below = state.refill_below
        if below is None:
            return
        unmet = on_demand and any(free > 0 for _, free in state.demand)
        if len(state.core) < below or unmet:
            state.refill_below = None
            claimer = self.wiring.peers.claimer
            if claimer is not None:
                claimer.tell(Wake.fast(reason="refill"))

    def _release_credits(self, records: list[TaskRecord]) -> None:
        credited = self.state.credited
        released = 0
        for record in records:
            key = record.task_id.int
            if key in credited:
                credited.discard(key)
                released += 1
        self.wiring.admission.release(released)

    def _can_be_served(self, key: RoutingKey) -> bool:
        return any(key <= caps for caps in self.state.known_capabilities)

    def _expire(self) -> None:
        state = self.state
        clock = self.wiring.clock
        now = clock.now()
        expired = state.core.expire(now)
        if expired:
            dead = []
            for record in expired:
                reason = (
                    "deadline_expired"
                    if self._can_be_served(routing_key(record))
                    else "no_capable_agent"
                )
                dead.append(record.moved(TaskState.DEAD_LETTERED, at=now, last_error=reason))
                if self.wiring.hub.active:
                    self.wiring.hub.publish("task.dead_lettered", record.task_id, reason=reason)
            state.expired += len(dead)
            self._release_credits(expired)
            self.wiring.persist(tuple(dead))
        self._arm_deadline()

    def _arm_deadline(self) -> None:
        deadline = self.state.core.next_deadline()
        if deadline is None:
            return
        clock = self.wiring.clock
        now = clock.monotonic()
        due = now + max(0.0, (deadline - clock.now()).total_seconds())
        self.state.timer.arm(self.wiring.timers, self.context.self_ref, due, now)

    def _cancel(self, task_id: uuid.UUID) -> bool:
        record = self.state.core.cancel(task_id)
        if record is None:
            return False
        self.state.cancelled += 1
        self._release_credits([record])
        cancelled = record.moved(TaskState.CANCELLED, at=self.wiring.clock.now())
        self.wiring.persist((cancelled,))
        if self.wiring.hub.active:
            self.wiring.hub.publish("task.cancelled", task_id, where="queue")
        return True
