"""The router actor: assigns tasks from the queue to agents, and tells the queue how many
more it can take.

It keeps its own count of tasks in flight per agent (assigned and not yet released), so
routing never waits for the registry; the registry sends it the agents themselves
(``AgentsSnapshot``: capabilities, health, performance, executor refs). Tasks that arrive
while every capable agent is busy wait in a backlog, routed first as slots free up.
"""

from __future__ import annotations

import uuid
from collections import deque
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any

from actors.base import Actor
from actors.cell import ActorRef
from actors.core.prefetch import PrefetchPolicy, smoothed
from actors.core.router import RouterCore, is_eligible, routing_key
from actors.pipeline import HeldReports, TickTimer, Wiring, take_in_mailbox
from messages.pipeline import (
    AgentsSnapshot,
    Assign,
    CancelTask,
    Demand,
    Enqueue,
    InjectCrash,
    Released,
    RouteLatencies,
    TasksReady,
    Tick,
)
from messages.routing import AgentView
from messages.task import TaskRecord, TaskState

__all__ = ["RouterActor", "RouterState", "enough_left", "run_out"]

DEMAND_REFRESH_S = 1.0
"""The router repeats its demand this often while it has free slots (a lost Demand heals)."""


@dataclass
class RouterState:
    """Survives restarts: the policy core, the agents and what is in flight on each."""

    core: RouterCore
    views: dict[str, AgentView] = field(default_factory=dict)
    refs: dict[str, ActorRef] = field(default_factory=dict)
    # Per agent, the ids (``task_id.int``: an int hashes in C, a UUID in Python) of the
    # tasks assigned to it and not yet released.
    inflight: dict[str, set[int]] = field(default_factory=dict)
    latency_ms: dict[str, float] = field(default_factory=dict)
    """Per agent: the smoothed latency of its attempts (for an adaptive prefetch)."""
    backlog: deque[tuple[TaskRecord, float]] = field(default_factory=deque)
    timer: TickTimer = field(default_factory=TickTimer)
    """The Demand's refresh (see ``DEMAND_REFRESH_S``)."""
    unreported: HeldReports[float] = field(default_factory=HeldReports)  # routing ms, to send
    report_timer: TickTimer = field(default_factory=TickTimer)
    """The fallback tick of ``unreported`` (its own: disarmed when they go from a turn)."""
    routed: int = 0
    grant: int = 0
    """The number of the last Demand sent (the queue echoes it in TasksReady)."""
    credits: tuple[int, ...] | None = None
    """The queue's free slots left of that Demand, per slot, as its last TasksReady for it
    said; None until one says (then the router knows nothing of what is left)."""
    demand_held: bool = False
    """A Demand was skipped because the queue had enough left (see ``_send_demand``)."""
    held_slots: tuple[tuple[frozenset[str], int], ...] = ()
    """The slots of the Demand held (what was wanted when it was skipped)."""
    demand_sent_at: float = -DEMAND_REFRESH_S
    """Monotonic time the last Demand went (the refresh repeats it after DEMAND_REFRESH_S)."""
    received: int = 0
    returned: int = 0


class RouterActor(Actor):
    """Routes ready tasks to agents in batches; one ``Assign`` per agent per batch."""

    def __init__(
        self,
        state: RouterState,
        wiring: Wiring,
        prefetch: PrefetchPolicy | None = None,
        batch_limit: int = 256,
    ) -> None:
        self.state = state
        self.wiring = wiring
        self.prefetch = PrefetchPolicy() if prefetch is None else prefetch
        self.batch_limit = batch_limit

    def on_start(self) -> None:
        self._route_backlog()
        self._send_demand()

    def receive(self, message: Any) -> Any:
        if isinstance(message, (TasksReady, Released)):
            # The hot path: take in every task and every freed slot waiting in the mailbox,
            # then route and ask for more once (one Demand, one Assign per agent, for all).
            freed = take_in_mailbox(
                self,
                message,
                (TasksReady, Released),
                self._take_in,
                self._route_backlog,
                self.batch_limit,
            )
            self._route_backlog()
            state = self.state
            if freed:
                self._send_demand(lazy=True)
                # Routing latencies go from a turn that follows tasks' ends, not from the
                # routing turn: the tracker's turn would come next, in the tasks' path.
                if state.unreported.due(self.wiring.clock.monotonic()):
                    self._report()
            elif state.demand_held and run_out(state.credits, state.held_slots):
                # New tasks alone change nothing the queue does not know, unless a Demand
                # is held and they used up what the queue had left for a slot. (Only then:
                # the queue's turn would come next, in these tasks' path; while the queue
                # has some left, the Demand goes from the next turn of freed slots.)
                self._send_demand()
        elif isinstance(message, AgentsSnapshot):
            self._snapshot(message)
        elif isinstance(message, Tick):
            state = self.state
            if state.report_timer.is_for(message):
                state.report_timer.fired()
                if state.unreported.tick_due(
                    self.wiring, self.context.self_ref, state.report_timer
                ):
                    self._report()
                return None
            state.timer.fired()
            now = self.wiring.clock.monotonic()
            if now - state.demand_sent_at >= DEMAND_REFRESH_S * 0.999:
                self._send_demand()  # the refresh (a held Demand goes with it)
            elif state.demand_held or state.backlog or state.views:
                # The tick of an earlier Demand: the refresh is due a second after the
                # last one. (A report tick cancelled too late also lands here: at most
                # one extra tick.)
                due = state.demand_sent_at + DEMAND_REFRESH_S
                state.timer.arm(self.wiring.timers, self.context.self_ref, due, now)
        elif isinstance(message, CancelTask):
            return self._cancel(message.task_id)
        elif isinstance(message, InjectCrash):
            raise RuntimeError(message.reason)
        else:
            raise TypeError(f"router got {type(message).__name__}")
        return None

    def statistics(self) -> dict[str, Any]:
        state = self.state
        return {
            **state.core.statistics(),
            "backlog": len(state.backlog),
            "routed": state.routed,
            "returned_to_queue": state.returned,
            "load": {agent_id: len(tasks) for agent_id, tasks in sorted(state.inflight.items())},
            "buffer": {agent_id: view.buffer for agent_id, view in sorted(state.views.items())},
            "latency_ms": dict(sorted(state.latency_ms.items())),
        }

    # ------------------------------------------------------------------
    def _take_in(self, message: TasksReady | Released) -> bool:
        """Add the tasks of a ``TasksReady`` to the backlog, or free the slots of a
        ``Released`` (True); routing waits for the end of the batch."""
        state = self.state
        if isinstance(message, TasksReady):
            state.received += len(message.records)
            if message.grant == state.grant:  # (else sent before the queue had the last)
                state.credits = message.credits
            state.backlog.extend(zip(message.records, repeat(message.ready_at)))
            return False
        agent_id = message.agent_id
        tasks = state.inflight.get(agent_id)
        if tasks is not None:
            discard = tasks.discard
            for outcome in message.outcomes:
                discard(outcome[0].int)
        state.core.record_outcomes(agent_id, message.outcomes)
        view = state.views.get(agent_id)
        if view is not None and tasks is not None:
            if self.prefetch.adaptive:
                # Attempts that ran (a cancelled or given-back one reports 0 ms, unfailed).
                mean = smoothed(
                    state.latency_ms.get(agent_id),
                    [ms for _, _, ok, ms in message.outcomes if ok or ms > 0.0],
                )
                if mean is not None:
                    state.latency_ms[agent_id] = mean
                buffer = self.prefetch.buffer(view.max_concurrency, mean)
                state.views[agent_id] = view.evolve(load=len(tasks), buffer=buffer)
            else:
                state.views[agent_id] = view.evolve(load=len(tasks))
        return True

    def _snapshot(self, message: AgentsSnapshot) -> None:
        state = self.state
        new_ids = {view.agent_id for view in message.agents}
        for gone in set(state.views) - new_ids:
            # The agent's executor requeues what it held when it stops.
            state.inflight.pop(gone, None)
            state.latency_ms.pop(gone, None)
            state.core.forget_agent(gone)
        state.refs = dict(message.refs)
        state.views = {
            view.agent_id: view.evolve(
                load=len(state.inflight.setdefault(view.agent_id, set())),
                buffer=self.prefetch.buffer(
                    view.max_concurrency, state.latency_ms.get(view.agent_id)
                ),
            )
            for view in message.agents
        }
        self._route_backlog()
        self._return_unservable()
        self._send_demand()

    def _route_backlog(self) -> None:
        state = self.state
        if not state.backlog or not state.views:
            return
        if self.wiring.hub.active:
            assigned, latencies = self._route_reporting()
        else:
            assigned, latencies = self._route_quietly()
        if assigned:
            # The records go as the queue gave them (QUEUED): the Assign is what assigns
            # them, and the agent makes its RUNNING version straight from them. ASSIGNED
            # is never written to the store: recovery would treat an assigned task that
            # never started exactly like a queued one, so the write (or even the copy)
            # would buy nothing.
            routed = 0
            for agent_id, batch in assigned.items():
                routed += len(batch)
                state.refs[agent_id].tell(Assign.fast(records=tuple(batch), redelivered=False))
            state.routed += routed
            done = self.wiring.clock.monotonic()
            # Held; sent from a turn of freed slots (see receive) or at the tick.
            state.unreported.add(
                [(done - ready_at) * 1000.0 for ready_at in latencies],
                self.wiring,
                self.context.self_ref,
                state.report_timer,
            )

    def _route_quietly(self) -> tuple[dict[str, list[TaskRecord]], list[float]]:
        """Route the backlog in one batch decision (nobody listens for the decisions)."""
        state = self.state
        backlog = state.backlog
        choices, _ = state.core.choose_batch(
            [record for record, _ in backlog], list(state.views.values())
        )
        inflight = state.inflight
        assigned: dict[str, list[TaskRecord]] = {}
        latencies: list[float] = []
        waiting: deque[tuple[TaskRecord, float]] = deque()
        for agent_id in choices:
            record, ready_at = backlog.popleft()
            if agent_id is None:
                waiting.append((record, ready_at))
                continue
            inflight.setdefault(agent_id, set()).add(record.task_id.int)
            assigned.setdefault(agent_id, []).append(record)
            latencies.append(ready_at)
        waiting.extend(backlog)
        state.backlog = waiting
        views = state.views
        for agent_id in assigned:
            views[agent_id] = views[agent_id].evolve(load=len(inflight[agent_id]))
        return assigned, latencies

    def _route_reporting(self) -> tuple[dict[str, list[TaskRecord]], list[float]]:
        """Route the backlog task by task, publishing each decision (``task.routed``)."""
        state = self.state
        hub = self.wiring.hub
        core = state.core
        views = state.views
        view_list = list(views.values())
        position = {view.agent_id: index for index, view in enumerate(view_list)}
        inflight = state.inflight
        assigned: dict[str, list[TaskRecord]] = {}
        latencies: list[float] = []
        waiting: deque[tuple[TaskRecord, float]] = deque()
        free = sum(
            max(0, view.max_concurrency + view.buffer - view.load)  # free_slots, inlined
            for view in view_list
            if view.healthy
        )
        backlog = state.backlog
        while backlog and free > 0:
            record, ready_at = backlog.popleft()
            decision = core.route(record, view_list)
            if decision is None:
                waiting.append((record, ready_at))
                continue
            agent_id = decision.agent_id
            tasks = inflight.setdefault(agent_id, set())
            tasks.add(record.task_id.int)
            updated = views[agent_id].evolve(load=len(tasks))
            views[agent_id] = updated
            view_list[position[agent_id]] = updated
            assigned.setdefault(agent_id, []).append(record)
            hub.publish(
                "task.routed",
                record.task_id,
                agent_id=agent_id,
                strategy=decision.strategy,
                score=decision.score,
                reason=decision.reason,
                alternatives=tuple(
                    {"agent_id": alt.agent_id, "score": alt.score} for alt in decision.alternatives
                ),
            )
            latencies.append(ready_at)
            free -= 1
        waiting.extend(backlog)
        state.backlog = waiting
        return assigned, latencies

    def _report(self) -> None:
        """Send the routing latencies not yet reported to the performance tracker."""
        state = self.state
        if state.unreported.items:
            values = state.unreported.take()
            state.report_timer.disarm(self.wiring.timers)
            self.wiring.peers.get("performance").tell(RouteLatencies.fast(values=values))

    def _return_unservable(self) -> None:
        """Give back to the queue the waiting tasks that no healthy agent could ever take
        (the agent left, or fell ill): there they wait for one, or for their deadline."""
        state = self.state
        if not state.backlog:
            return
        views = [view.evolve(load=0) for view in state.views.values()]
        keep: deque[tuple[TaskRecord, float]] = deque()
        back: list[TaskRecord] = []
        for record, ready_at in state.backlog:
            key = routing_key(record.spec)
            if any(is_eligible(view, key) for view in views):
                keep.append((record, ready_at))
            else:
                back.append(record)
        if back:
            state.backlog = keep
            state.returned += len(back)
            self.wiring.peers.get("queue").tell(
                Enqueue.fast(records=tuple(back), admitted=False, redelivered=False)
            )

    def _send_demand(self, *, lazy: bool = False) -> None:
        """Tell the queue how many tasks the agents can take now. ``lazy``: not if the
        queue has enough left of the last Demand (see :func:`enough_left`); the Demand is
        then held, and sent when a TasksReady shows the queue has nothing left for a slot
        that wants tasks (:func:`run_out`), when a later freed slot finds it under half,
        or at the refresh tick. At a low load this spares the queue a turn for most
        tasks: each completion frees a slot, but the queue still has the credit to send
        the next task the moment it comes."""
        state = self.state
        # Ask for what the agents have room for: their free slots plus, with a prefetch,
        # their buffers (tasks an agent holds to start the moment a slot frees, without a
        # round trip through router and queue); the backlog counts against it.
        waiting = len(state.backlog)
        wanted = []
        for view in state.views.values():
            if not view.healthy:
                wanted.append((view.capabilities, 0))
                continue
            want = max(0, view.max_concurrency + view.buffer - view.load)  # free_slots
            used = min(want, waiting)
            waiting -= used
            wanted.append((view.capabilities, want - used))
        slots = tuple(wanted)
        now = self.wiring.clock.monotonic()
        if lazy and enough_left(state.credits, slots):
            state.demand_held = True
            state.held_slots = slots
            state.timer.arm(self.wiring.timers, self.context.self_ref, now + DEMAND_REFRESH_S, now)
            return
        state.grant += 1
        state.credits = None
        state.demand_held = False
        state.demand_sent_at = now
        self.wiring.peers.get("queue").tell(
            Demand.fast(slots=slots, received=state.received, grant=state.grant)
        )
        if any(free for _, free in slots) or state.backlog:
            state.timer.arm(self.wiring.timers, self.context.self_ref, now + DEMAND_REFRESH_S, now)

    def _cancel(self, task_id: uuid.UUID) -> bool:
        state = self.state
        for index, (record, _) in enumerate(state.backlog):
            if record.task_id == task_id:
                del state.backlog[index]
                cancelled = record.moved(TaskState.CANCELLED, at=self.wiring.clock.now())
                self.wiring.persist((cancelled,))
                if self.wiring.hub.active:
                    self.wiring.hub.publish("task.cancelled", task_id, where="router")
                return True
        return False


def enough_left(
    credits: tuple[int, ...] | None, slots: tuple[tuple[frozenset[str], int], ...]
) -> bool:
    """True when a Demand of ``slots`` need not be sent yet: the queue's ``credits`` left
    of the last one (known, for the same slots) are, for each slot, at most what is
    wanted now (never more: a slot wanted down, e.g. of an agent gone unhealthy, must
    reach the queue at once) and at least half of it (so a burst of new tasks goes out
    at once, half a demand at least, before the queue runs low and the Demand is sent).
    """
    if credits is None or len(credits) != len(slots):
        return False
    for left, (_, want) in zip(credits, slots, strict=True):
        if left > want or 2 * left < want:
            return False
    return True


def run_out(credits: tuple[int, ...] | None, slots: tuple[tuple[frozenset[str], int], ...]) -> bool:
    """True when the queue has nothing left (``credits``, unknown: None) for a slot of
    ``slots`` that wants tasks: it would hold back a task the agents could take."""
    if credits is None or len(credits) != len(slots):
        return True
    return any(left <= 0 < want for left, (_, want) in zip(credits, slots, strict=True))
