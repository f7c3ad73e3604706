"""The router takes in every freed slot and every ready task waiting in its mailbox
before it routes and asks the queue for more: one Demand for all of them."""

from __future__ import annotations

import threading
from typing import Any

from actors.core.router import RouterCore
from actors.pipeline import Admission, EventHub, Peers, ResultWaiters, SystemClock, Wiring
from actors.router import RouterActor, RouterState
from messages import new_task_id
from messages.pipeline import Demand, Released
from messages.routing import AgentView
from supervisor import ActorSystem, ChildSpec
from tests.conftest import wait_for
from tests.integration.test_supervision import _BLOCKERS, Block, recorder


def test_freed_slots_waiting_together_make_one_demand(make_system: Any) -> None:
    system: ActorSystem = make_system()
    queue_log: list[tuple[int, Any]] = []
    peers = Peers()
    peers.queue = system.spawn(ChildSpec(name="queue", factory=recorder(queue_log)))
    wiring = Wiring(
        peers=peers,
        clock=SystemClock(),
        hub=EventHub(),
        timers=system.runtime.timers,
        waiters=ResultWaiters(),
        admission=Admission(100, None),
    )
    running = [new_task_id() for _ in range(3)]
    state = RouterState(RouterCore("least_loaded"))
    state.views["a1"] = AgentView(
        agent_id="a1", capabilities=frozenset({"noop"}), max_concurrency=3, load=3
    )
    state.inflight["a1"] = set(running)
    # The router shares a dispatcher with an actor that blocks it: its mail piles up.
    blocker = system.spawn(ChildSpec(name="blocker", factory=recorder([]), dispatcher="pipeline"))
    router = system.spawn(
        ChildSpec(name="router", factory=lambda: RouterActor(state, wiring), dispatcher="pipeline")
    )

    def demands() -> list[int]:
        return [sum(free for _, free in m.slots) for _, m in queue_log if isinstance(m, Demand)]

    wait_for(lambda: demands() == [0])  # on_start: every slot is taken
    _BLOCKERS["router-busy"] = threading.Event()
    blocker.tell(Block("router-busy"))
    for task_id in running:
        router.tell(Released(agent_id="a1", outcomes=((task_id, "noop", True, 1.0),)))
    _BLOCKERS["router-busy"].set()
    wait_for(lambda: 3 in demands())
    # One by one it would have been [0, 1, 2, 3].
    assert demands()[:2] == [0, 3]
    assert state.inflight["a1"] == set() and state.views["a1"].load == 0
