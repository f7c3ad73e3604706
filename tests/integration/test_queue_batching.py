"""The queue takes in every task and demand waiting in its mailbox before it dispatches:
one TasksReady for all of them, in priority order across the messages."""

from __future__ import annotations

import threading
from typing import Any

from actors.pipeline import Admission, EventHub, Peers, ResultWaiters, SystemClock, Wiring
from actors.queue import QueueActor, QueueState
from messages.pipeline import Demand, Enqueue, TasksReady
from supervisor import ActorSystem, ChildSpec
from tests.conftest import wait_for
from tests.integration.test_journal_contract import make_record
from tests.integration.test_supervision import _BLOCKERS, Block, recorder


def test_tasks_enqueued_together_leave_in_one_batch_by_priority(make_system: Any) -> None:
    system: ActorSystem = make_system()
    router_log: list[tuple[int, Any]] = []
    peers = Peers()
    peers.router = system.spawn(ChildSpec(name="router", factory=recorder(router_log)))
    wiring = Wiring(
        peers=peers,
        clock=SystemClock(),
        hub=EventHub(),
        timers=system.runtime.timers,
        waiters=ResultWaiters(),
        admission=Admission(100, None),
    )
    state = QueueState()
    # The queue shares a dispatcher with an actor that blocks it: its mail piles up.
    blocker = system.spawn(ChildSpec(name="blocker", factory=recorder([]), dispatcher="pipe"))
    queue = system.spawn(
        ChildSpec(name="queue", factory=lambda: QueueActor(state, wiring), dispatcher="pipe")
    )
    _BLOCKERS["queue-busy"] = threading.Event()
    blocker.tell(Block("queue-busy"))
    queue.tell(Demand(slots=((frozenset({"work"}), 3),), received=0))
    low, mid, high = (make_record(priority=p) for p in (1, 5, 9))
    for record in (low, mid, high):  # one message each, lowest priority first
        queue.tell(Enqueue(records=(record,), admitted=False))
    _BLOCKERS["queue-busy"].set()
    wait_for(lambda: state.dispatched == 3)
    batches = [m.records for _, m in router_log if isinstance(m, TasksReady)]
    # One by one it would have been [(low,), (mid,), (high,)]: low first.
    assert batches == [(high, mid, low)]
    assert len(state.core) == 0
