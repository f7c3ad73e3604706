"""The journal actor: the one thread that writes the task store.

Every state change of every task goes through it as ``Append`` (new tasks, from
``submit``) or ``Persist`` (new versions, from the other actors). It takes whatever else
waits in its mailbox (up to ``batch_limit`` messages) and writes it all in ONE transaction
(group commit), so many submits share one fsync. Only after the commit does it answer the
submitters, hand new tasks to the queue and wake the waiters of finished tasks.

With a shared store (many runners on one PostgreSQL database) new tasks are not queued
here: they wait in the store for whichever runner claims them (the store notifies the
runners). An update the store fenced (this runner lost the task's lease) wakes nobody.

When the store is unavailable (a database restarting, a lost connection, a locked SQLite
file), the new tasks of the batch are refused at once (their submitters get the
``StoreUnavailable``: nothing was stored, nothing is lost) while the updates, which only
the pipeline holds, are retried with backoff for up to ``outage_s`` seconds
(``journal.store_unavailable`` ... ``journal.store_recovered``). Later messages wait in
the mailbox meanwhile, so the store still sees every task's changes in order. Past
``outage_s`` the journal fails like any actor and its supervisor takes over.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from actors.base import Actor
from actors.cell import Pending
from actors.journal.store import TaskStore
from actors.pipeline import Clock, EventHub, OutcomeWindow, Peers, ResultWaiters, last_of_each
from messages.errors import InvalidTransition, StoreUnavailable
from messages.pipeline import (
    Append,
    Enqueue,
    Hold,
    InjectCrash,
    Persist,
    Pickup,
    Prune,
    RequeueDeadLetters,
    Sync,
)
from messages.task import TaskRecord, TaskState

__all__ = [
    "JournalActor",
    "JournalState",
    "hand_over",
    "hand_to_queue",
    "new_records",
    "publish_submitted",
]

_RETRY_FIRST_S: Final = 0.05  # first wait before writing again to an unavailable store
_RETRY_CAP_S: Final = 2.0  # longest wait between two attempts
_KEEPALIVE_S: Final = 0.25  # how often a waiting journal tells the watchdog it is alive
_PICKUP_PAGE: Final = 1000  # task heads per read when looking for other processes' tasks
_PICKUP_PAGES: Final = 50  # pages of new heads per look at most (the next goes on from there)
_SWEEP_PAGES: Final = 4  # pages of the sweep through older QUEUED heads per look
_UNBOUNDED: Final = 1 << 62  # a full look sweeps every page
_PRUNE_BATCHES: Final = 100  # batches per prune at most (the next prune goes on)


@dataclass
class JournalState:
    """Survives restarts of the journal actor: the open store and counters."""

    store: TaskStore
    commits: int = 0
    records_written: int = 0
    fenced: int = 0
    outages: int = 0
    refused: int = 0
    local: set[uuid.UUID] | None = None
    """Pickup on: the unfinished tasks this runner has in its pipeline (anything else
    QUEUED in the store was put there by another process)."""
    watermark: int = 0  # pickup: the highest sequence looked at
    sweep: int = 0  # pickup: how far the sweep through older QUEUED tasks has come
    picked_up: int = 0
    pruned: int = 0
    batch_sizes: list[int] = field(default_factory=list)


class JournalActor(Actor):
    """Owns the store; group-commits batches of writes.

    With a store any thread may write (``memory://``, not shared, no pickup) the journal
    is off the hot path: submit inserts and the pipeline's updates are written by their
    makers (``TaskRunner._insert``, :meth:`~actors.pipeline.Wiring.persist`); the journal
    still requeues dead letters and syncs.
    """

    # Stopped last (it starts first), the journal writes what the pipeline sent it before
    # stopping: a stop without drain then loses no update already made (no task is run
    # again for an update that was on its way), and no dead letter is logged for it.
    handled_when_stopping = (Append, Persist)

    def __init__(
        self,
        state: JournalState,
        peers: Peers,
        waiters: ResultWaiters,
        hub: EventHub,
        clock: Clock,
        batch_limit: int = 512,
        on_terminal: Callable[[TaskRecord], None] | None = None,
        outage_s: float = 60.0,
        window: OutcomeWindow | None = None,
    ) -> None:
        self.state = state
        self.peers = peers
        self.waiters = waiters
        self.hub = hub
        self.clock = clock
        self.batch_limit = batch_limit
        self.on_terminal = on_terminal
        self.outage_s = outage_s
        self.window = window
        self._settles = 0  # window credits of the Persists taken in the write under way

    def receive(self, message: Any) -> Any:
        if isinstance(message, Append | Persist):
            return self._write(message)
        if isinstance(message, RequeueDeadLetters):
            return self._requeue_dead(message)
        if isinstance(message, Sync):
            return None
        if isinstance(message, Pickup):
            return self._pickup(message.full)
        if isinstance(message, Prune):
            return self._prune(message)
        if isinstance(message, InjectCrash):
            raise RuntimeError(message.reason)
        raise TypeError(f"journal got {type(message).__name__}")

    def statistics(self) -> dict[str, Any]:
        sizes = self.state.batch_sizes[-1000:]
        return {
            "commits": self.state.commits,
            "records_written": self.state.records_written,
            "mean_batch": round(sum(sizes) / len(sizes), 2) if sizes else 0.0,
            "fenced": self.state.fenced,
            "outages": self.state.outages,
            "picked_up": self.state.picked_up,
            "pruned": self.state.pruned,
            "refused": self.state.refused,
            "store": self.state.store.url,
        }

    # ------------------------------------------------------------------
    def _write(self, first: Append | Persist) -> Any:
        pending = self.context.take_pending(self.batch_limit)
        appends: list[tuple[Append, Pending | None]] = []
        persists: list[Persist] = []
        others: list[Pending] = []
        for item in [None, *pending]:
            message = first if item is None else item.message
            if isinstance(message, Append):
                appends.append((message, item))
            elif isinstance(message, Persist):
                persists.append(message)
            else:
                others.append(item)  # type: ignore[arg-type]
        inserts = [record for append, _ in appends for record in append.records]
        updates = [record for persist in persists for record in persist.records]
        self._settles = sum(persist.settles for persist in persists)
        if len(persists) > 1:
            updates = list(last_of_each(updates))
        store = self.state.store
        refused: StoreUnavailable | None = None
        try:
            stored, fenced = store.apply_fenced(inserts, updates)
        except StoreUnavailable as exc:
            # Refuse the new tasks (their submitters hear it now; nothing is stored) and
            # keep the updates, which nobody else holds, until the store is back.
            refused, inserts = exc, []
            self.state.refused += len(appends)
            stored, fenced = (
                self._through_outage(updates, others, exc) if updates else ([], frozenset())
            )
        self.state.fenced += len(fenced)
        self.state.commits += 1
        self.state.records_written += len(inserts) + len(updates)
        self.state.batch_sizes.append(1 + len(pending))
        del self.state.batch_sizes[:-1000]

        # Answer each submitter with its slice of the stored records; queue the new ones.
        fresh: list[TaskRecord] = []
        unadmitted: list[TaskRecord] = []  # new tasks that hold no admission credit (cron)
        offset = 0
        answer_first: Any = None
        for append, item in appends if refused is None else ():
            mine = stored[offset : offset + len(append.records)]
            offset += len(append.records)
            (fresh if append.admitted else unadmitted).extend(new_records(mine, append.records))
            if item is None:
                answer_first = tuple(mine)
            else:
                item.reply(tuple(mine))
        if refused is not None:  # the submitter raises it (see TaskRunner.submit_many)
            for _append, item in appends:
                if item is None:
                    answer_first = refused
                else:
                    item.reply(refused)
        for new, admitted in ((fresh, True), (unadmitted, False)):
            if not new:
                continue
            if self.state.local is not None:
                self.state.local.update(record.task_id for record in new)
            if store.shared:  # a claimer (maybe another runner's) takes them
                publish_submitted(new, self.hub)
            else:
                hand_to_queue(new, self.peers, self.hub, admitted=admitted)
        for record in updates:
            if record.state in (TaskState.COMPLETED, TaskState.CANCELLED, TaskState.DEAD_LETTERED):
                if fenced and record.task_id in fenced:
                    continue  # not stored: another runner owns the task now
                self.waiters.resolve(record)
                if self.state.local is not None:
                    self.state.local.discard(record.task_id)
                if self.on_terminal is not None:
                    self.on_terminal(record)
        self._settle()
        for item in others:
            if isinstance(item.message, InjectCrash):
                # Crash on its own turn, not in the middle of a batch already written.
                self.context.self_ref.tell(item.message)
                continue
            # Not a write (a query or control message that arrived in the batch): handle
            # it now, in order after the writes before it.
            try:
                item.reply(self.receive(item.message))
            except Exception as exc:
                item.fail(exc)
                raise
        return answer_first

    def _settle(self) -> None:
        """The outcomes of the write are committed: give their window credits back. (A
        write that fails gives none: its Persists are redelivered once, or orphaned, and
        the credits come back then; see ``TaskRunner._rescue``.)"""
        settles, self._settles = self._settles, 0
        if settles and self.window is not None:
            self.window.release(settles)

    def _through_outage(
        self, updates: list[TaskRecord], others: list[Pending], error: StoreUnavailable
    ) -> tuple[list[TaskRecord], frozenset[uuid.UUID]]:
        """Write ``updates`` once the store is back: retry with backoff (0.05 s doubling
        to 2 s) for up to ``outage_s``, then raise the last error (the supervisor's
        turn). Gives up at once when a stop is waiting.

        Meanwhile the mailbox is worked: new submits are refused at once, later updates
        join ``updates`` (in order, for the same transaction), anything else waits in
        ``others`` for the end of the outage."""
        log = self.context.log
        self.state.outages += 1
        started = time.monotonic()
        log.warning(
            "journal.store_unavailable",
            records=len(updates),
            retry_for_s=self.outage_s,
            error=str(error),
        )
        delay, attempts = _RETRY_FIRST_S, 1
        while True:
            left = started + self.outage_s - time.monotonic()
            if left <= 0 or not self._wait(min(delay, left), updates, others, error):
                log.error(
                    "journal.store_gave_up",
                    records=len(updates),
                    attempts=attempts,
                    outage_s=round(time.monotonic() - started, 3),
                    error=str(error),
                )
                raise error
            delay = min(delay * 2, _RETRY_CAP_S)
            attempts += 1
            try:
                written = self.state.store.apply_fenced((), updates)
            except StoreUnavailable as exc:
                error = exc
                continue
            log.info(
                "journal.store_recovered",
                records=len(updates),
                attempts=attempts,
                outage_s=round(time.monotonic() - started, 3),
            )
            return written

    def _wait(
        self,
        seconds: float,
        updates: list[TaskRecord],
        others: list[Pending],
        error: StoreUnavailable,
    ) -> bool:
        """Sleep ``seconds`` while working the mailbox (see ``_through_outage``) and
        telling the watchdog we are alive; False if a stop waits."""
        end = time.monotonic() + seconds
        while True:
            if not self.context.still_busy():
                return False
            for item in self.context.take_pending(self.batch_limit):
                message = item.message
                if isinstance(message, Append):
                    self.state.refused += 1
                    item.reply(error)
                elif isinstance(message, Persist):
                    updates.extend(message.records)
                    self._settles += message.settles
                else:
                    others.append(item)
            left = end - time.monotonic()
            if left <= 0:
                return True
            time.sleep(min(left, _KEEPALIVE_S))

    def _prune(self, message: Prune) -> int:
        """Delete finished tasks older than the message says, a batch at a time, saying
        "busy" between batches (a long prune is not a hang) and stopping early when the
        supervisor waits for the journal; the next prune goes on. Returns how many."""
        store = self.state.store
        deleted = 0
        for _ in range(_PRUNE_BATCHES):
            batch = store.prune(message.before, message.states, message.limit)
            deleted += batch
            if batch < message.limit or not self.context.still_busy():
                break
        self.state.pruned += deleted
        if deleted:
            self.context.log.info(
                "journal.pruned",
                tasks=deleted,
                states=[state.value for state in message.states],
                before=message.before.isoformat(),
            )
        return deleted

    def _pickup(self, full: bool) -> int:
        """Queue the QUEUED tasks of the store this runner does not have. Each look reads
        what was stored since the last one (by other processes: ``arbiter submit``) and a
        stretch of a sweep through the older QUEUED ones (a ``retry-dead`` re-queues old
        tasks, with their old sequence), so that a look costs a bounded time whatever the
        store holds; ``full`` sweeps all of them at once. Runs on the journal's thread,
        between writes, so a task of this runner cannot finish between the look and the
        check. Returns how many it queued."""
        state = self.state
        local = state.local
        if local is None:
            return 0
        store = state.store
        found: list[TaskRecord] = []
        # Scan light (sequence, id, state) heads, not records: most rows are this runner's
        # own (a bulk submit can add a million), and only the others are read in full.
        # Say "busy" between pages, so that a long look is never taken for a hang, and end
        # the look early when the supervisor waits for the journal (a stop): the next look
        # goes on from where this one stopped.
        after = state.watermark
        wanted = True
        for _ in range(_PICKUP_PAGES):
            heads = store.list_heads(_PICKUP_PAGE, after_sequence=after)
            if not heads:
                break
            after = heads[-1][0]
            found += self._foreign(heads, local)
            if not (wanted := self.context.still_busy()):
                break
        state.watermark = max(state.watermark, after)
        swept = 0 if full else state.sweep
        for _ in range(_UNBOUNDED if full else _SWEEP_PAGES) if wanted else ():
            heads = store.list_heads(_PICKUP_PAGE, after_sequence=swept, state=TaskState.QUEUED)
            if heads:
                swept = heads[-1][0]
                found += self._foreign(heads, local)
            if len(heads) < _PICKUP_PAGE or swept >= state.watermark:
                swept = 0  # the end: the next sweep starts again from the oldest
                break
            if not self.context.still_busy():
                break
        state.sweep = swept
        if found:  # _foreign has added them to ``local`` already
            state.picked_up += len(found)
            hand_over(found, self.peers, admitted=False)
            self.context.log.info("journal.picked_up", tasks=len(found), full=full)
        return len(found)

    def _foreign(
        self, heads: list[tuple[int, uuid.UUID, TaskState]], local: set[uuid.UUID]
    ) -> list[TaskRecord]:
        """The QUEUED records among ``heads`` that this runner does not hold, and the
        delayed (PENDING) ones, each id once: a task seen by the look and by the sweep is
        queued once."""
        found = []
        for _sequence, task_id, head_state in heads:
            if head_state in _PICKED and task_id not in local:
                record = self.state.store.get(task_id)
                if record is not None and record.state in _PICKED:
                    local.add(task_id)
                    found.append(record)
        return found

    def _requeue_dead(self, message: RequeueDeadLetters) -> tuple[TaskRecord, ...]:
        store = self.state.store
        if message.all:
            dead = store.dead_letters(limit=1_000_000)
        else:
            found = (store.get(task_id) for task_id in message.task_ids)
            dead = [r for r in found if r is not None and r.state is TaskState.DEAD_LETTERED]
        now = self.clock.now()
        requeued = []
        # Shared store: unowned, for any runner to claim (the store notifies them).
        unowned: dict[str, Any] = {"owner": None, "lease_expires_at": None} if store.shared else {}
        for record in dead:
            try:
                requeued.append(
                    record.moved(
                        TaskState.QUEUED,
                        at=now,
                        manual=True,
                        attempt=0,
                        next_attempt_at=None,
                        agent_id=None,
                        **unowned,
                    )
                )
            except InvalidTransition:
                continue
        if requeued:
            store.apply((), requeued)
            self.state.commits += 1
            if self.state.local is not None:
                self.state.local.update(record.task_id for record in requeued)
            if not store.shared:
                self.peers.get("queue").tell(
                    Enqueue.fast(records=tuple(requeued), admitted=False, redelivered=False)
                )
            for record in requeued:
                self.hub.publish("task.queued", record.task_id, reason="dead_letter_requeued")
        return tuple(requeued)


_PICKED: Final = frozenset({TaskState.QUEUED, TaskState.PENDING})
"""What a pickup takes from other processes: queued tasks and delayed ones."""


def new_records(stored: Sequence[TaskRecord], submitted: Sequence[TaskRecord]) -> list[TaskRecord]:
    """The records of ``stored`` (a store's answer to inserting ``submitted``) that are new
    tasks: a duplicate's place holds the existing task, with another id. (A store that
    keeps the records it is given answers with the same objects: ``is`` decides those
    without ``UUID.__eq__``, a Python call a task on the submit path.)"""
    return [
        s
        for s, r in zip(stored, submitted, strict=True)
        if s is r or s.task_id.int == r.task_id.int
    ]


def publish_submitted(fresh: Sequence[TaskRecord], hub: EventHub) -> None:
    """``task.submitted`` for each new task, if anyone listens (a delayed one with its
    ``run_at``)."""
    if hub.active:
        for record in fresh:
            run_at = record.next_attempt_at
            if run_at is None:
                hub.publish("task.submitted", record.task_id, type=record.spec.type)
            else:
                hub.publish(
                    "task.submitted",
                    record.task_id,
                    type=record.spec.type,
                    run_at=run_at.isoformat(),
                )


def hand_to_queue(
    fresh: Sequence[TaskRecord], peers: Peers, hub: EventHub, *, admitted: bool = True
) -> None:
    """New tasks, just stored, go to the queue (which gives their admission credits back
    when they leave it, if ``admitted``), delayed ones to the scheduler."""
    publish_submitted(fresh, hub)
    hand_over(fresh, peers, admitted=admitted)


def hand_over(records: Sequence[TaskRecord], peers: Peers, *, admitted: bool) -> None:
    """QUEUED tasks to the queue; delayed (PENDING) ones to the scheduler, which holds
    them until their run time (they never hold an admission credit)."""
    if all(record.state is TaskState.QUEUED for record in records):  # the common case
        peers.get("queue").tell(
            Enqueue.fast(records=tuple(records), admitted=admitted, redelivered=False)
        )
        return
    queued = tuple(record for record in records if record.state is TaskState.QUEUED)
    delayed = tuple(record for record in records if record.state is TaskState.PENDING)
    if queued:
        peers.get("queue").tell(Enqueue.fast(records=queued, admitted=admitted, redelivered=False))
    if delayed:
        peers.get("scheduler").tell(Hold.fast(records=delayed, redelivered=False))
