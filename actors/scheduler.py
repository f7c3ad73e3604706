"""The scheduler actor: delayed tasks and cron entries.

* A delayed task (``TaskRunner.submit(..., delay_s=...)`` or ``run_at=...``) is stored
  PENDING with its run time in ``next_attempt_at``; the journal (or ``submit`` itself)
  sends it here in a :class:`~messages.pipeline.Hold`. At its run time it becomes QUEUED,
  is written, and goes to the queue (without an admission credit, as a retried task).
  ``CancelTask`` cancels it while it waits.
* A cron entry (:class:`~messages.task.CronSpec`) submits its task at each fire time, with
  the idempotency key ``cron:<name>:<fire time>``, through the journal: one task per fire
  time however many runners fire it. With a shared store only the holder of the ``cron``
  leader lease fires (the others skip, counted); the key is the safety net for a lease
  that changes hands at a fire time.

The waiting tasks and the cron table live in a state box that survives restarts. The
actor has a thread of its own: a cron fire waits for the journal's answer and, shared,
for the leader lease in the database.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from actors.base import Actor
from actors.core.scheduler import CronTable, DelayedTasks, cron_key
from actors.journal.actor import new_records
from actors.pipeline import TickTimer, Wiring
from messages.errors import StoreError
from messages.pipeline import (
    AddCron,
    Append,
    CancelTask,
    Hold,
    InjectCrash,
    ListCron,
    RemoveCron,
    Tick,
)
from messages.task import TaskRecord, queued_records

__all__ = ["CronSettings", "SchedulerActor", "SchedulerState"]

_APPEND_TIMEOUT_S = 10.0
"""How long a cron fire waits for the journal to store its task (well within the
watchdog's hang timeout)."""


@dataclass
class SchedulerState:
    """Survives restarts: the delayed tasks, the cron table and the counters."""

    delayed: DelayedTasks = field(default_factory=DelayedTasks)
    cron: CronTable = field(default_factory=CronTable)
    timer: TickTimer = field(default_factory=TickTimer)
    released: int = 0  # delayed tasks queued at their run time
    fired: int = 0  # cron tasks submitted (new ones)
    duplicates: int = 0  # cron fires whose task existed already (another runner's)
    skipped: int = 0  # cron fires skipped: another runner leads
    failed: int = 0  # cron fires the store refused


@dataclass(frozen=True)
class CronSettings:
    """How cron tasks are made: their owner (None with a shared store: a claimer takes
    them), the runner's default ``max_attempts``, and ``lead``: with a shared store, a
    function that takes or renews the ``cron`` leader lease (True while this runner
    leads); None when the store is this runner's alone."""

    owner: str | None
    max_attempts: int
    lead: Callable[[], bool] | None = None


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat()


class SchedulerActor(Actor):
    """Queues delayed tasks at their run time and submits cron tasks at their fire times."""

    def __init__(self, state: SchedulerState, wiring: Wiring, settings: CronSettings) -> None:
        self.state = state
        self.wiring = wiring
        self.settings = settings

    def on_start(self) -> None:
        self._arm()

    def receive(self, message: Any) -> Any:
        if isinstance(message, Hold):
            self._hold(message.records)
        elif isinstance(message, Tick):
            if self.state.timer.is_for(message):  # else a tick replaced by an earlier one
                self.state.timer.fired()
            now = self.wiring.clock.now()
            self._release(now)
            self._fire(now)
            self._arm()
        elif isinstance(message, CancelTask):
            return self._cancel(message.task_id)
        elif isinstance(message, AddCron):
            fire = self.state.cron.add(message.spec, self.wiring.clock.now())
            self.context.log.info(
                "scheduler.cron_added", name=message.spec.name, next_fire=fire.isoformat()
            )
            self._arm()
            return fire
        elif isinstance(message, RemoveCron):
            removed = self.state.cron.remove(message.name)
            if removed:
                self.context.log.info("scheduler.cron_removed", name=message.name)
            return removed
        elif isinstance(message, ListCron):
            return tuple(
                {
                    "name": entry.spec.name,
                    "cron": entry.spec.cron,
                    "timezone": entry.spec.timezone,
                    "type": entry.spec.task.type,
                    "next_fire": entry.next_fire.isoformat(),
                }
                for entry in self.state.cron.entries()
            )
        elif isinstance(message, InjectCrash):
            raise RuntimeError(message.reason)
        else:
            raise TypeError(f"scheduler got {type(message).__name__}")
        return None

    def statistics(self) -> dict[str, Any]:
        state = self.state
        due = state.delayed.next_due()
        return {
            "delayed": len(state.delayed),
            "next_delayed": None if due is None else _iso(due),
            "released": state.released,
            "cron_entries": len(state.cron),
            "cron_fired": state.fired,
            "cron_duplicates": state.duplicates,
            "cron_skipped": state.skipped,
            "cron_failed": state.failed,
        }

    # ------------------------------------------------------------------
    def _hold(self, records: tuple[TaskRecord, ...]) -> None:
        delayed = self.state.delayed
        now = self.wiring.clock.now()
        for record in records:
            if record.task_id in delayed:
                continue  # a redelivered message: already waiting
            run_at = record.next_attempt_at
            due = now if run_at is None else run_at
            delayed.schedule(record, due.timestamp())
        self._release(now)  # those already due (a late start, a recovery) go now
        self._arm()

    def _release(self, now: datetime) -> None:
        due = self.state.delayed.pop_due(now.timestamp())
        self.state.released += self.wiring.requeue_waiting(due, now)

    def _fire(self, now: datetime) -> None:
        state = self.state
        due = state.cron.pop_due(now)
        if not due:
            return
        log = self.context.log
        lead = self.settings.lead
        if lead is not None and not lead():
            state.skipped += len(due)
            log.debug("scheduler.cron_skipped", names=[spec.name for spec, _ in due])
            return
        specs = [spec.task.evolve(idempotency_key=cron_key(spec.name, fire)) for spec, fire in due]
        records = queued_records(
            specs, now=now, owner=self.settings.owner, max_attempts=self.settings.max_attempts
        )
        try:
            answer = self.wiring.peers.get("journal").ask(
                Append.fast(records=records, redelivered=False, admitted=False),
                timeout=_APPEND_TIMEOUT_S,
            )
        except TimeoutError as exc:  # the journal may still store them (once: the key)
            answer = StoreError(f"no answer from the journal: {exc}")
        if isinstance(answer, StoreError):  # nothing stored; the next fire time tries again
            state.failed += len(due)
            log.warning(
                "scheduler.cron_failed", names=[spec.name for spec, _ in due], error=str(answer)
            )
            return
        fresh = {record.task_id.int for record in new_records(answer, records)}
        for (spec, fire), record in zip(due, answer, strict=True):
            duplicate = record.task_id.int not in fresh
            if duplicate:
                state.duplicates += 1
            else:
                state.fired += 1
            log.info(
                "scheduler.cron_fired",
                name=spec.name,
                fire=fire.isoformat(),
                task_id=str(record.task_id),
                duplicate=duplicate,
            )

    def _arm(self) -> None:
        state = self.state
        delayed = state.delayed.next_due()
        cron = state.cron.next_due()
        candidates = [
            due for due in (delayed, None if cron is None else cron.timestamp()) if due is not None
        ]
        if not candidates:
            return
        clock = self.wiring.clock
        mono = clock.monotonic()
        # Wall-clock due time -> the timer service's monotonic one (a wall clock that moves
        # meanwhile only makes a tick early or late; an early tick finds nothing and re-arms).
        wait = max(0.0, min(candidates) - clock.now().timestamp())
        state.timer.arm(self.wiring.timers, self.context.self_ref, mono + wait, mono)

    def _cancel(self, task_id: uuid.UUID) -> bool:
        return self.wiring.cancel_waiting(self.state.delayed.cancel(task_id), "scheduler")
