"""The router holds a Demand the queue does not need yet.

The queue echoes, in every TasksReady, the number of the Demand it holds and the free
slots it has left of it. A freed slot then needs no Demand while the queue still has at
least half of what is wanted (and not more): at a low load that spares the queue a turn
for most tasks. The Demand goes out as soon as a TasksReady shows the queue running low,
when what is wanted drops below what the queue has, or at the refresh tick.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, NamedTuple

import pytest
from hypothesis import given
from hypothesis import strategies as st

from actors.core.router import RouterCore
from actors.pipeline import (
    Admission,
    Clock,
    EventHub,
    Peers,
    ResultWaiters,
    SystemClock,
    Wiring,
)
from actors.queue import QueueActor, QueueState
from actors.router import DEMAND_REFRESH_S, RouterActor, RouterState, enough_left, run_out
from actors.timers import TimerService
from messages.pipeline import (
    Assign,
    Demand,
    Enqueue,
    Released,
    RouteLatencies,
    TasksReady,
    Tick,
)
from messages.routing import AgentView
from messages.supervision import GetStatistics
from messages.task import TaskRecord
from supervisor import ActorSystem, ChildSpec
from tests.conftest import wait_for
from tests.integration.test_journal_contract import make_record
from tests.integration.test_mailbox_batching import _wiring
from tests.integration.test_supervision import recorder

WORK = frozenset({"work"})


@pytest.fixture
def still_timers() -> TimerService:
    """A timer service whose time stands still: it takes timers and never runs them (its
    thread is stopped), so no refresh tick sends a Demand in the middle of a test."""
    timers = TimerService("still-timers")
    timers.stop()
    return timers


class StillClock:
    """Monotonic time the test sets (wall time is the system's)."""

    def __init__(self, at: float) -> None:
        self.at = at

    def monotonic(self) -> float:
        return self.at

    def now(self) -> datetime:
        return datetime.now(UTC)


def _router(
    system: ActorSystem,
    timers: TimerService,
    max_concurrency: int = 4,
    clock: Clock | None = None,
    performance_log: list[tuple[int, Any]] | None = None,
) -> tuple[Any, RouterState, list[tuple[int, Any]], list[tuple[int, Any]]]:
    """A router with one idle agent ``a1`` (no prefetch buffer); the queue, the agent and
    the performance tracker are recorders (the tracker's log goes to ``performance_log``
    if given). Returns the router, its state, the queue's log and the agent's log."""
    queue_log: list[tuple[int, Any]] = []
    agent_log: list[tuple[int, Any]] = []
    peers = Peers()
    peers.queue = system.spawn(ChildSpec(name="queue", factory=recorder(queue_log)))
    peers.performance = system.spawn(
        ChildSpec(
            name="performance", factory=recorder([] if performance_log is None else performance_log)
        )
    )
    wiring = Wiring(
        peers=peers,
        clock=clock or SystemClock(),
        hub=EventHub(),
        timers=timers,
        waiters=ResultWaiters(),
        admission=Admission(100, None),
    )
    state = RouterState(RouterCore("least_loaded"))
    state.views["a1"] = AgentView(
        agent_id="a1", capabilities=WORK, max_concurrency=max_concurrency, load=0
    )
    state.refs["a1"] = system.spawn(ChildSpec(name="a1", factory=recorder(agent_log)))
    router = system.spawn(ChildSpec(name="router", factory=lambda: RouterActor(state, wiring)))
    return router, state, queue_log, agent_log, peers.queue


IdleRouter = tuple[Any, RouterState, list[tuple[int, Any]], list[tuple[int, Any]], Any]


@pytest.fixture
def idle_router(make_system: Any, still_timers: TimerService) -> IdleRouter:
    """:func:`_router` with still timers, once its first Demand (grant 1: the agent's 4
    free slots, sent as it starts) has reached the queue."""
    router, state, queue_log, agent_log, queue = _router(make_system(), still_timers)
    wait_for(lambda: _demands(queue_log) == [(1, 4)])
    return router, state, queue_log, agent_log, queue


def _settle(router: Any, queue: Any) -> None:
    """Wait until the router has handled what it was sent, and the queue (a recorder)
    what the router sent it meanwhile (both answer statistics in mailbox order)."""
    router.ask(GetStatistics())
    queue.ask(GetStatistics())


def _demands(log: list[tuple[int, Any]]) -> list[tuple[int, int]]:
    """(grant, free slots in all) of each Demand the queue got, in order."""
    return [(m.grant, sum(free for _, free in m.slots)) for _, m in log if isinstance(m, Demand)]


def _assigned(log: list[tuple[int, Any]]) -> int:
    return sum(len(m.records) for _, m in log if isinstance(m, Assign))


def _run_one(
    router: Any, queue: Any, agent_log: list[tuple[int, Any]], grant: int, left: int
) -> None:
    """The queue sends one task (echoing ``grant`` with ``left`` free slots), the agent
    gets it and releases it."""
    record = make_record()
    before = _assigned(agent_log)
    router.tell(TasksReady(records=(record,), grant=grant, credits=(left,)))
    wait_for(lambda: _assigned(agent_log) == before + 1)
    router.tell(Released(agent_id="a1", outcomes=((record.task_id, "work", True, 1.0),)))
    _settle(router, queue)


def test_a_freed_slot_sends_no_demand_while_the_queue_has_half_left(
    idle_router: IdleRouter,
) -> None:
    router, state, queue_log, agent_log, queue = idle_router
    _run_one(router, queue, agent_log, grant=1, left=3)
    _run_one(router, queue, agent_log, grant=1, left=2)
    assert _demands(queue_log) == [(1, 4)]  # 3 and then 2 left of 4 wanted: held
    assert state.demand_held
    # 1 left while the task runs: still some, the Demand waits for the freed slot; then
    # 1 left of 4 wanted is under half: it goes.
    _run_one(router, queue, agent_log, grant=1, left=1)
    wait_for(lambda: _demands(queue_log) == [(1, 4), (2, 4)])
    assert state.grant == 2 and not state.demand_held and state.credits is None


def test_tasks_that_leave_the_queue_nothing_send_the_held_demand(idle_router: IdleRouter) -> None:
    router, state, queue_log, agent_log, queue = idle_router
    _run_one(router, queue, agent_log, grant=1, left=3)
    assert state.demand_held
    # A task that goes on running, 1 left: the queue can still send the next one at once.
    router.tell(TasksReady(records=(make_record(),), grant=1, credits=(1,)))
    wait_for(lambda: _assigned(agent_log) == 2)
    _settle(router, queue)
    assert _demands(queue_log) == [(1, 4)] and state.demand_held
    # One more, nothing left: the next task would wait in the queue. The Demand goes, of
    # the 2 free slots now.
    router.tell(TasksReady(records=(make_record(),), grant=1, credits=(0,)))
    wait_for(lambda: _demands(queue_log) == [(1, 4), (2, 2)])


def test_an_echo_of_an_older_demand_says_nothing_of_what_is_left(idle_router: IdleRouter) -> None:
    router, state, queue_log, agent_log, queue = idle_router
    # Sent by the queue before it had grant 1: its credits are not those of grant 1.
    _run_one(router, queue, agent_log, grant=0, left=3)
    wait_for(lambda: _demands(queue_log) == [(1, 4), (2, 4)])
    assert state.credits is None


def test_a_held_demand_goes_out_at_the_refresh_tick(make_system: Any) -> None:
    system: ActorSystem = make_system()
    router, state, queue_log, agent_log, queue = _router(system, system.runtime.timers)
    wait_for(lambda: _demands(queue_log)[:1] == [(1, 4)])
    grant = state.grant
    _run_one(router, queue, agent_log, grant=grant, left=3)
    # Held (or, on a slow machine, already refreshed by a tick): sent within a refresh.
    wait_for(lambda: _demands(queue_log)[-1][0] > grant, DEMAND_REFRESH_S + 5.0)
    assert _demands(queue_log)[-1][1] == 4


def test_a_tick_of_the_reports_is_not_a_demand_refresh(
    make_system: Any, still_timers: TimerService
) -> None:
    system: ActorSystem = make_system()
    clock = StillClock(100.0)
    router, state, queue_log, _, queue = _router(system, still_timers, clock=clock)
    wait_for(lambda: _demands(queue_log) == [(1, 4)])  # on_start, at 100.0
    clock.at = 100.0 + DEMAND_REFRESH_S / 2
    router.tell(Tick())  # (as the routing latencies' tick would come)
    _settle(router, queue)
    assert _demands(queue_log) == [(1, 4)]
    assert state.timer.due == 100.0 + DEMAND_REFRESH_S  # the refresh, armed for its time
    clock.at = 100.0 + DEMAND_REFRESH_S
    router.tell(Tick())
    wait_for(lambda: _demands(queue_log) == [(1, 4), (2, 4)])


def _latencies(log: list[tuple[int, Any]]) -> int:
    """Routing latencies the performance tracker got."""
    return sum(len(m.values) for _, m in log if isinstance(m, RouteLatencies))


class RoutedOne(NamedTuple):
    """A router (still timers, a clock the test sets) that routed one task to ``a1``."""

    router: Any
    state: RouterState
    queue_log: list[tuple[int, Any]]
    queue: Any
    clock: StillClock
    performance: list[tuple[int, Any]]
    record: TaskRecord
    demand_due: float | None  # when the Demand's refresh was armed for, before the task


def _routed_one(system: ActorSystem, timers: TimerService) -> RoutedOne:
    clock = StillClock(100.0)
    performance: list[tuple[int, Any]] = []
    router, state, queue_log, agent_log, queue = _router(
        system, timers, clock=clock, performance_log=performance
    )
    wait_for(lambda: _demands(queue_log) == [(1, 4)])
    demand_due = state.timer.due
    record = make_record()
    router.tell(TasksReady(records=(record,), grant=1, credits=(3,)))
    wait_for(lambda: _assigned(agent_log) == 1)
    _settle(router, queue)
    return RoutedOne(router, state, queue_log, queue, clock, performance, record, demand_due)


def test_routing_latencies_sent_from_a_turn_disarm_their_tick(
    make_system: Any, still_timers: TimerService
) -> None:
    one = _routed_one(make_system(), still_timers)
    state = one.state
    report_due = state.unreported.since + state.unreported.delay_s
    assert state.report_timer.due == report_due  # the fallback, for an idle router
    # The slot is freed over half the delay later: the latency goes from that turn, and the
    # tick armed for it is not wanted any more (nor is the Demand's refresh moved).
    one.clock.at += state.unreported.delay_s * 0.6
    one.router.tell(Released(agent_id="a1", outcomes=((one.record.task_id, "work", True, 1.0),)))
    wait_for(lambda: _latencies(one.performance) == 1)
    assert state.report_timer.due is None and not state.unreported.items
    assert state.timer.due == one.demand_due


def test_the_reports_own_tick_sends_them_and_leaves_the_refresh_alone(
    make_system: Any, still_timers: TimerService
) -> None:
    one = _routed_one(make_system(), still_timers)
    state = one.state
    due = state.report_timer.due
    assert due is not None and _latencies(one.performance) == 0
    one.clock.at = due
    one.router.tell(Tick(at=due))  # as the timer service would ring it
    wait_for(lambda: _latencies(one.performance) == 1)
    assert state.report_timer.due is None
    assert state.timer.due == one.demand_due and _demands(one.queue_log) == [(1, 4)]


def test_the_queue_echoes_its_demand_and_what_is_left(make_system: Any) -> None:
    system: ActorSystem = make_system()
    router_log: list[tuple[int, Any]] = []
    wiring = _wiring(system, "router", router_log)
    state = QueueState()
    queue = system.spawn(ChildSpec(name="queue", factory=lambda: QueueActor(state, wiring)))
    other = frozenset({"other"})
    queue.tell(Demand(slots=((WORK, 3), (other, 2)), received=0, grant=7))
    queue.tell(Enqueue(records=(make_record(),), admitted=False))
    wait_for(lambda: any(isinstance(m, TasksReady) for _, m in router_log))
    ready = next(m for _, m in router_log if isinstance(m, TasksReady))
    assert (ready.grant, ready.credits) == (7, (2, 2))


PAIRS = st.lists(st.tuples(st.integers(0, 20), st.integers(0, 20)), min_size=1, max_size=5)
"""(free slots the queue has left, free slots wanted) of each slot."""


def _credits_and_slots(
    pairs: list[tuple[int, int]],
) -> tuple[tuple[int, ...], tuple[tuple[frozenset[str], int], ...]]:
    credits = tuple(left for left, _ in pairs)
    slots = tuple((frozenset({f"c{i}"}), want) for i, (_, want) in enumerate(pairs))
    return credits, slots


@given(PAIRS)
def test_enough_left_holds_only_between_half_and_all_of_what_is_wanted(
    pairs: list[tuple[int, int]],
) -> None:
    credits, slots = _credits_and_slots(pairs)
    expected = all(want / 2 <= left <= want for left, want in pairs)
    assert enough_left(credits, slots) is expected
    assert enough_left(None, slots) is False  # nothing known of the queue
    assert enough_left((*credits, 0), slots) is False  # for other slots


@given(PAIRS)
def test_run_out_when_a_slot_that_wants_tasks_has_nothing_left(
    pairs: list[tuple[int, int]],
) -> None:
    credits, slots = _credits_and_slots(pairs)
    assert run_out(credits, slots) is any(left == 0 < want for left, want in pairs)
    assert run_out(None, slots) is True  # nothing known: ask
