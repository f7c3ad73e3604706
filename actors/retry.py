"""The retry scheduler actor: failed attempts wait here for their next try.

For each failed or timed-out attempt it asks :func:`actors.core.retry.decide` whether to
retry (after exponential backoff with full jitter) or dead-letter, records the decision
through the journal, and at the due time hands the task back to the queue.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from actors.base import Actor
from actors.core.retry import RetryPolicy, RetrySchedulerCore, decide
from actors.pipeline import TickTimer, Wiring
from messages.pipeline import CancelTask, Enqueue, Hold, InjectCrash, RetryTask, Tick
from messages.task import TaskRecord, TaskState

__all__ = ["RetryActor", "RetryState"]


@dataclass
class RetryState:
    """Survives restarts: the waiting tasks, the policy and the jitter source."""

    policy: RetryPolicy
    rng: random.Random = field(default_factory=random.Random)
    core: RetrySchedulerCore = field(default_factory=RetrySchedulerCore)
    timer: TickTimer = field(default_factory=TickTimer)
    retried: int = 0
    dead_lettered: int = 0


class RetryActor(Actor):
    """Decides retry or dead letter; requeues tasks when their backoff is over."""

    def __init__(self, state: RetryState, wiring: Wiring) -> None:
        self.state = state
        self.wiring = wiring

    def on_start(self) -> None:
        self._arm()

    def receive(self, message: Any) -> Any:
        if isinstance(message, RetryTask):
            self._failed(message)
        elif isinstance(message, Hold):
            self._resume(message.records)
        elif isinstance(message, Tick):
            self.state.timer.fired()
            self._due()
        elif isinstance(message, CancelTask):
            return self._cancel(message.task_id)
        elif isinstance(message, InjectCrash):
            raise RuntimeError(message.reason)
        else:
            raise TypeError(f"retry got {type(message).__name__}")
        return None

    def statistics(self) -> dict[str, Any]:
        state = self.state
        return {
            "waiting": len(state.core),
            "retried": state.retried,
            "dead_lettered": state.dead_lettered,
        }

    # ------------------------------------------------------------------
    def _failed(self, message: RetryTask) -> None:
        state = self.state
        clock = self.wiring.clock
        hub = self.wiring.hub
        now = clock.now()
        mono = clock.monotonic()
        persist: list[TaskRecord] = []
        requeue: list[TaskRecord] = []
        for record, permanent, error_type in zip(
            message.records, message.permanent, message.error_types, strict=True
        ):
            if record.task_id in state.core:
                continue  # a redelivered message: already scheduled
            policy = state.policy.for_task(record.spec)
            decision = decide(
                policy,
                max(1, record.attempt),
                error_type,
                permanent,
                now,
                record.spec.deadline,
                state.rng.random,
            )
            if not decision.retry:
                dead = record.moved(
                    TaskState.DEAD_LETTERED,
                    at=now,
                    last_error=f"{decision.reason}: {record.last_error}",
                    agent_id=None,
                )
                persist.append(dead)
                state.dead_lettered += 1
                if hub.active:
                    hub.publish(
                        "task.dead_lettered",
                        record.task_id,
                        reason=decision.reason,
                        attempts=record.attempt,
                        error=record.last_error,
                    )
            elif message.requeue_now:
                queued = record.moved(TaskState.QUEUED, at=now, agent_id=None, next_attempt_at=None)
                persist.append(queued)
                requeue.append(queued)
                state.retried += 1
            else:
                waiting = record.moved(
                    TaskState.RETRY_WAIT,
                    at=now,
                    agent_id=None,
                    next_attempt_at=now + timedelta(seconds=decision.delay_s),
                )
                state.core.schedule(waiting, mono + decision.delay_s)
                persist.append(waiting)
                state.retried += 1
                if hub.active:
                    hub.publish(
                        "task.retry_scheduled",
                        record.task_id,
                        attempt=record.attempt,
                        delay_s=round(decision.delay_s, 6),
                        error=record.last_error,
                    )
        self._send(persist, requeue)
        self._arm()

    def _resume(self, records: tuple[TaskRecord, ...]) -> None:
        """RETRY_WAIT tasks a runner before this one left in the store: each waits for
        what is left of its backoff (none, if its time has passed)."""
        clock = self.wiring.clock
        now = clock.now()
        mono = clock.monotonic()
        core = self.state.core
        for record in records:
            if record.task_id in core:
                continue  # a redelivered message: already waiting
            due = record.next_attempt_at
            left = 0.0 if due is None else max(0.0, (due - now).total_seconds())
            core.schedule(record, mono + left)
        self._due()

    def _due(self) -> None:
        clock = self.wiring.clock
        due = self.state.core.pop_due(clock.monotonic())
        if due:
            self.wiring.requeue_waiting(due, clock.now())
        self._arm()

    def _send(self, persist: list[TaskRecord], requeue: list[TaskRecord]) -> None:
        peers = self.wiring.peers
        if persist:
            self.wiring.persist(tuple(persist))
        if requeue:
            peers.get("queue").tell(
                Enqueue.fast(records=tuple(requeue), admitted=False, redelivered=False)
            )

    def _arm(self) -> None:
        due = self.state.core.next_due()
        if due is not None:
            now = self.wiring.clock.monotonic()
            self.state.timer.arm(self.wiring.timers, self.context.self_ref, due, now)

    def _cancel(self, task_id: uuid.UUID) -> bool:
        return self.wiring.cancel_waiting(self.state.core.cancel(task_id), "retry")
