"""Queue and router take in every message of their hot path waiting in the mailbox before
they act: the queue dispatches once for all its Enqueue and Demand messages, the router
routes and sends one Demand for all its TasksReady and Released messages."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from actors.base import Actor
from actors.cell import ActorRef
from actors.core.router import RouterCore
from actors.pipeline import Admission, EventHub, Peers, ResultWaiters, SystemClock, Wiring
from actors.queue import QueueActor, QueueState
from actors.router import RouterActor, RouterState
from messages import new_task_id
from messages.pipeline import Demand, Enqueue, Released, TasksReady
from messages.routing import AgentView
from supervisor import ActorSystem, ChildSpec
from tests.conftest import wait_for
from tests.integration.test_journal_contract import make_record
from tests.integration.test_supervision import _BLOCKERS, Block, recorder


def _wiring(system: ActorSystem, peer: str, log: list[tuple[int, Any]]) -> Wiring:
    """Wiring whose one peer ``peer`` is a recorder logging what it is sent."""
    peers = Peers()
    setattr(peers, peer, system.spawn(ChildSpec(name=peer, factory=recorder(log))))
    return Wiring(
        peers=peers,
        clock=SystemClock(),
        hub=EventHub(),
        timers=system.runtime.timers,
        waiters=ResultWaiters(),
        admission=Admission(100, None),
    )


def _held_up(
    system: ActorSystem, name: str, factory: Callable[[], Actor], key: str
) -> tuple[ActorRef, threading.Event]:
    """``factory``'s actor on a dispatcher shared with a blocker, which blocks it at once:
    its mail piles up until the returned event is set."""
    blocker = system.spawn(ChildSpec(name="blocker", factory=recorder([]), dispatcher="pipe"))
    ref = system.spawn(ChildSpec(name=name, factory=factory, dispatcher="pipe"))
    _BLOCKERS[key] = release = threading.Event()
    blocker.tell(Block(key))
    return ref, release


def test_tasks_enqueued_together_leave_in_one_batch_by_priority(make_system: Any) -> None:
    system: ActorSystem = make_system()
    router_log: list[tuple[int, Any]] = []
    wiring = _wiring(system, "router", router_log)
    state = QueueState()
    queue, release = _held_up(system, "queue", lambda: QueueActor(state, wiring), "queue-busy")
    queue.tell(Demand(slots=((frozenset({"work"}), 3),), received=0))
    low, mid, high = (make_record(priority=p) for p in (1, 5, 9))
    for record in (low, mid, high):  # one message each, lowest priority first
        queue.tell(Enqueue(records=(record,), admitted=False))
    release.set()
    wait_for(lambda: state.dispatched == 3)
    batches = [m.records for _, m in router_log if isinstance(m, TasksReady)]
    # One by one it would have been [(low,), (mid,), (high,)]: low first.
    assert batches == [(high, mid, low)]
    assert len(state.core) == 0


def test_freed_slots_waiting_together_make_one_demand(make_system: Any) -> None:
    system: ActorSystem = make_system()
    queue_log: list[tuple[int, Any]] = []
    wiring = _wiring(system, "queue", queue_log)
    running = [new_task_id() for _ in range(3)]
    state = RouterState(RouterCore("least_loaded"))
    state.views["a1"] = AgentView(
        agent_id="a1", capabilities=frozenset({"noop"}), max_concurrency=3, load=3
    )
    state.inflight["a1"] = {task_id.int for task_id in running}

    def demands() -> list[int]:
        return [sum(free for _, free in m.slots) for _, m in queue_log if isinstance(m, Demand)]

    router, release = _held_up(system, "router", lambda: RouterActor(state, wiring), "router-busy")
    for task_id in running:
        router.tell(Released(agent_id="a1", outcomes=((task_id, "noop", True, 1.0),)))
    release.set()
    wait_for(lambda: 3 in demands())
    # on_start: every slot taken (0); then one Demand for all three, not [1, 2, 3].
    assert demands()[:2] == [0, 3]
    assert state.inflight["a1"] == set() and state.views["a1"].load == 0
