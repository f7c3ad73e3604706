"""The claimer actor (shared mode): takes this runner's work from a store many runners share.

When several runner processes share one store (PostgreSQL), a submitted task belongs to
nobody until a runner *claims* it. The claimer keeps the local pipeline fed without
hoarding: it holds about ``prefetch`` x the local agents' total ``max_concurrency`` tasks
(queued here, on their way, or running) and claims the difference, in batches of at most
``claim_batch``, only tasks a local agent can run. It claims:

* on ``Wake(notify)``: the store's LISTEN callback rang (new or rescued tasks, at once);
* on ``Wake(refill)``: the local queue ran low, or the router asked it for more than it
  had (asked for with ``Refill``, once per claim decision, unless the last claim found
  the store empty);
* on its ``Tick`` every ``claim_interval_s``: the polling fallback if a notification is
  lost. Each poll first promotes the delayed tasks whose run time has come (PENDING ->
  QUEUED, ``TaskStore.promote_due``; any runner may, each task once), so a delayed task
  starts within about ``claim_interval_s`` of its run time.

On the same tick it renews this runner's leases (every ``lease_s / 3``, with the runner's
heartbeat) and rescues the expired leases of runners that died (every ``lease_s / 2``).
A store that fails (the database restarting) is logged and retried on the next tick: the
claimer never fails for it, so it never takes the runner down with a restart storm.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from actors.base import Actor
from actors.cell import ActorRef
from actors.journal.store import TaskStore
from actors.pipeline import TickTimer, Wiring
from messages.errors import ActorStopped, StoreError
from messages.pipeline import Enqueue, InjectCrash, Refill, Tick, Wake
from messages.supervision import ActorStatistics, GetStatistics
from messages.task import TaskRecord

__all__ = ["ClaimSettings", "ClaimerActor", "ClaimerState", "Doorbell", "LocalAgents"]

LocalAgents = Callable[[], tuple[tuple[frozenset[str], int], ...]]
"""What the runner's agents can take now: (capabilities, max_concurrency) per agent."""

_ASK_TIMEOUT_S = 2.0
_RESCUE_LIMIT = 1000  # tasks per rescue statement (repeated while full)
_PROMOTE_LIMIT = 1000  # delayed tasks per promotion (repeated while full)


@dataclass(frozen=True)
class ClaimSettings:
    """How a runner claims from a shared store (from RunnerConfig)."""

    runner_id: str
    lease_s: float = 30.0
    claim_interval_s: float = 0.5
    claim_batch: int = 256
    prefetch: float = 2.0  # tasks held locally, per slot of the local agents


class Doorbell:
    """Coalesces wake-ups of the claimer: ``ring()`` (any thread, e.g. the store's
    listener) tells it ``Wake`` unless one is already on its way; the claimer calls
    ``answered()`` when it takes the Wake. A burst of notifications costs one claim."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending = False
        self.target: ActorRef | None = None
        self.rung = 0

    def ring(self) -> None:
        """Wake the claimer (no-op while a Wake waits in its mailbox)."""
        with self._lock:
            if self._pending or self.target is None:
                return
            self._pending = True
            self.rung += 1
        self.target.tell(Wake.fast(reason="notify"))

    def answered(self) -> None:
        """The claimer took the Wake: the next ring sends another."""
        with self._lock:
            self._pending = False


@dataclass
class ClaimerState:
    """Survives restarts: timers, due times and counters."""

    doorbell: Doorbell = field(default_factory=Doorbell)
    timer: TickTimer = field(default_factory=TickTimer)
    next_poll: float = 0.0  # monotonic due times
    next_renew: float = 0.0
    next_rescue: float = 0.0
    last_renewed: float | None = None
    leases_at_risk: bool = False
    claims: int = 0
    claimed: int = 0
    wakes: int = 0
    refills: int = 0
    renewed: int = 0
    rescued: int = 0
    promoted: int = 0
    store_errors: int = 0
    last_error: str | None = None


class ClaimerActor(Actor):
    """Claims tasks for the local agents; renews leases; rescues expired ones."""

    def __init__(
        self,
        state: ClaimerState,
        wiring: Wiring,
        store: TaskStore,
        settings: ClaimSettings,
        agents: LocalAgents,
    ) -> None:
        self.state = state
        self.wiring = wiring
        self.store = store
        self.settings = settings
        self.agents = agents

    def on_start(self) -> None:
        # A Wake lost with a crashed incarnation must not mute the doorbell for good.
        self.state.doorbell.answered()
        now = self.wiring.clock.monotonic()
        self._periodic(now)
        self._arm(now)

    def receive(self, message: Any) -> Any:
        state = self.state
        clock = self.wiring.clock
        if isinstance(message, Wake):
            if message.reason == "refill":
                state.refills += 1
            else:
                state.doorbell.answered()
                state.wakes += 1
            self._claim()
            state.next_poll = clock.monotonic() + self.settings.claim_interval_s
        elif isinstance(message, Tick):
            state.timer.fired()
            now = clock.monotonic()
            self._periodic(now)
            self._arm(now)
        elif isinstance(message, InjectCrash):
            raise RuntimeError(message.reason)
        else:
            raise TypeError(f"claimer got {type(message).__name__}")
        return None

    def statistics(self) -> dict[str, Any]:
        state = self.state
        return {
            "claims": state.claims,
            "claimed": state.claimed,
            "wakes": state.wakes,
            "refills": state.refills,
            "renewed": state.renewed,
            "rescued": state.rescued,
            "promoted": state.promoted,
            "store_errors": state.store_errors,
            "last_error": state.last_error,
            "leases_at_risk": state.leases_at_risk,
        }

    # ------------------------------------------------------------------
    def _periodic(self, now: float) -> None:
        """What is due: renew first (a late renewal loses tasks), then rescue, then poll."""
        state = self.state
        lease_s = self.settings.lease_s
        if now >= state.next_renew:
            state.next_renew = now + lease_s / 3
            self._renew(now)
        if now >= state.next_rescue:
            state.next_rescue = now + lease_s / 2
            self._rescue()
        if now >= state.next_poll:
            state.next_poll = now + self.settings.claim_interval_s
            self._promote()
            self._claim()

    def _arm(self, now: float) -> None:
        state = self.state
        due = min(state.next_poll, state.next_renew, state.next_rescue)
        state.timer.arm(self.wiring.timers, self.context.self_ref, due, now)

    def _renew(self, now: float) -> None:
        state = self.state
        runner_id = self.settings.runner_id
        try:
            state.renewed += self.store.renew(runner_id, self.settings.lease_s)
        except StoreError as exc:
            self._store_failed("renew", exc)
            last = state.last_renewed
            if last is not None and now - last > self.settings.lease_s and not state.leases_at_risk:
                state.leases_at_risk = True
                self.context.log.error(
                    "claimer.leases_lost",
                    runner_id=runner_id,
                    since_renewed_s=round(now - last, 3),
                    lease_s=self.settings.lease_s,
                    hint="other runners may rescue this runner's tasks; its writes are fenced",
                )
            return
        state.last_renewed = now
        if state.leases_at_risk:
            state.leases_at_risk = False
            self.context.log.info("claimer.leases_renewed", runner_id=runner_id)
        try:
            self.store.heartbeat_runner(runner_id)
        except StoreError as exc:
            self._store_failed("heartbeat", exc)

    def _rescue(self) -> None:
        self.state.rescued += self._in_batches("rescue", self.store.rescue_expired, _RESCUE_LIMIT)

    def _promote(self) -> None:
        self.state.promoted += self._in_batches("promote", self.store.promote_due, _PROMOTE_LIMIT)

    def _in_batches(self, action: str, step: Callable[[int], list[TaskRecord]], limit: int) -> int:
        """``step(limit)`` again while it does a full batch; how many tasks it moved. A
        store error ends it (logged; the next tick tries again)."""
        moved = 0
        try:
            while True:
                done = len(step(limit))
                moved += done
                if done < limit:
                    return moved
        except StoreError as exc:
            self._store_failed(action, exc)
            return moved

    def _claim(self) -> None:
        """Claim what the local agents lack. After a full claim (the store may hold more)
        ask the queue for a ``Refill`` wake-up, so a busy runner never waits for the poll."""
        agents = self.agents()
        capacity = sum(slots for _, slots in agents)
        if capacity <= 0:
            return
        settings = self.settings
        target = max(1, math.ceil(settings.prefetch * capacity))
        low = max(1, math.ceil(capacity / 2))  # the smallest claim worth a transaction
        held = self._held()
        if held is None:
            return
        depth, holding = held
        want = target - holding
        if want < low:
            # Wake up when the queue has given the router enough for a claim of ``low``,
            # or the router asks the queue for more than it has (its backlog drained).
            below = max(0, depth - (low - want) + 1)
            self.wiring.peers.get("queue").tell(Refill.fast(below=below))
            return
        capabilities = tuple({caps for caps, _ in agents})
        queue = self.wiring.peers.get("queue")
        state = self.state
        while want > 0:
            batch = min(want, settings.claim_batch)
            try:
                records = self.store.claim(
                    settings.runner_id, batch, settings.lease_s, capabilities
                )
            except StoreError as exc:
                self._store_failed("claim", exc)
                return
            state.claims += 1
            if records:
                state.claimed += len(records)
                queue.tell(Enqueue.fast(records=tuple(records), admitted=False, redelivered=False))
            if len(records) < batch:
                return  # the store has no more for us now: NOTIFY or the poll will tell
            want -= len(records)
        # Full: the store may hold more. With the agents busy, the queue holds
        # target - capacity; wake up once it has room for a claim of ``low``.
        below = max(1, target - capacity - low + 1)
        queue.tell(Refill.fast(below=below))

    def _held(self) -> tuple[int, int] | None:
        """(queued here, held in all): tasks this runner holds and has not finished,
        queued here, on their way to an agent or running. Asked in order (queue, then
        router), so a task moving between them is counted once. None if an actor did not
        answer (no claim this time)."""
        peers = self.wiring.peers
        try:
            queue: ActorStatistics = peers.get("queue").ask(GetStatistics(), _ASK_TIMEOUT_S)
            router: ActorStatistics = peers.get("router").ask(GetStatistics(), _ASK_TIMEOUT_S)
        except (TimeoutError, ActorStopped, RuntimeError):  # RuntimeError: not started yet
            return None
        depth = int(queue.extra.get("depth", 0))
        backlog = int(router.extra.get("backlog", 0))
        load = router.extra.get("load", {})
        return depth, depth + backlog + sum(int(n) for n in load.values())

    def _store_failed(self, action: str, exc: StoreError) -> None:
        state = self.state
        state.store_errors += 1
        message = " ".join(str(exc).split())
        if message != state.last_error:  # one line per distinct failure, not per tick
            self.context.log.warning("claimer.store_failed", action=action, error=message)
        state.last_error = message
