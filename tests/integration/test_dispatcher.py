"""A shared dispatcher: many actors on one thread, each with its own mailbox and order,
turns that keep one busy actor from starving the others, and a stuck thread replaced.
(Supervision on a dispatcher is covered by test_supervision.py, which runs twice.)"""

from __future__ import annotations

import threading
from typing import Any

import pytest

from actors.base import Actor
from actors.cell import Dispatcher
from supervisor import ActorSystem, ChildSpec
from tests.conftest import WAIT_S, wait_for
from tests.integration.test_supervision import _BLOCKERS, Block, recorder


class Where(Actor):
    """Answers the name of the thread it runs on."""

    def receive(self, message: Any) -> Any:
        return threading.current_thread().name


def test_actors_on_one_dispatcher_share_its_thread_and_keep_their_own_order(
    make_system: Any,
) -> None:
    system: ActorSystem = make_system()
    journal: list[tuple[int, Any]] = []
    refs = {
        name: system.spawn(ChildSpec(name=name, factory=recorder(journal), dispatcher="d"))
        for name in "abc"
    }
    own = system.spawn(ChildSpec(name="own", factory=Where))
    shared = system.spawn(ChildSpec(name="shared", factory=Where, dispatcher="d"))
    for i in range(300):  # interleaved senders' messages
        for name, ref in refs.items():
            ref.tell((name, i))
    wait_for(lambda: len(journal) == 900)
    for name in "abc":
        assert [i for _, (who, i) in journal if who == name] == list(range(300))
    assert shared.ask("where") != own.ask("where")
    assert shared.ask("where").startswith("_DispatcherShell")
    dispatcher = system.runtime.dispatchers["d"]
    assert dispatcher.turns >= 3 and dispatcher.replacements == 0


def test_a_busy_actor_gets_turns_and_does_not_starve_the_others(make_system: Any) -> None:
    system: ActorSystem = make_system()
    journal: list[tuple[int, Any]] = []
    busy = system.spawn(ChildSpec(name="busy", factory=recorder(journal), dispatcher="d"))
    other = system.spawn(ChildSpec(name="other", factory=recorder(journal), dispatcher="d"))
    throughput = system.runtime.dispatchers["d"].throughput
    other.ask("started?")  # both have had their first turn
    _BLOCKERS["turn"] = threading.Event()
    busy.tell(Block("turn"))  # holds the dispatcher inside busy's turn...
    busy_cell = system.runtime.cells["busy"]
    wait_for(lambda: busy_cell.current is not None)  # ...from now on
    for i in range(1000):
        busy.tell(("busy", i))
    other.tell(("other", 0))
    _BLOCKERS["turn"].set()
    wait_for(lambda: len(journal) == 1002)
    order = [who for _, (who, _) in journal[1:]]  # after the "started?" ask
    # busy's turn ends after `throughput` messages (the Block was one) and it queues
    # again behind other, which was waiting.
    assert order.index("other") == throughput - 1


def test_a_dispatcher_stuck_in_one_actor_gets_a_new_thread_for_the_others(
    make_system: Any, logs: list[Any]
) -> None:
    system: ActorSystem = make_system(max_restarts=5, watchdog_interval_s=0.01)
    journal: list[tuple[int, Any]] = []
    stuck = system.spawn(
        ChildSpec(name="stuck", factory=recorder(journal), hang_timeout_s=0.1, dispatcher="d")
    )
    other = system.spawn(ChildSpec(name="other", factory=Where, dispatcher="d"))
    first_thread = other.ask("where")
    _BLOCKERS["stuck"] = threading.Event()
    try:
        stuck.tell(Block("stuck"))
        stuck.tell("queued behind the block")
        # The other actor answers again once the watchdog has replaced the thread.
        assert other.ask("where", timeout=WAIT_S) != first_thread
        wait_for(lambda: [m for _, m in journal] == ["queued behind the block"])
        assert journal[0][0] == 2  # the stuck actor's next incarnation handled it
    finally:
        _BLOCKERS["stuck"].set()
    events = [entry["event"] for entry in logs]
    assert "supervisor.dispatcher_replaced" in events
    assert "supervisor.child_hung" in events
    assert system.runtime.dispatchers["d"].replacements == 1


def test_the_system_stops_its_dispatcher_threads(make_system: Any) -> None:
    system: ActorSystem = make_system()
    ref = system.spawn(ChildSpec(name="a", factory=Where, dispatcher="d"))
    ref.ask("where")
    thread = system.runtime.dispatchers["d"].thread
    assert thread is not None and thread.is_alive()
    system.stop()
    thread.join(WAIT_S)
    assert not thread.is_alive()


def test_dispatcher_options_are_checked() -> None:
    with pytest.raises(ValueError, match="throughput"):
        Dispatcher("d", throughput=0)
    with pytest.raises(ValueError, match="dispatcher name"):
        ChildSpec(name="a", factory=Where, dispatcher="")


def test_a_stop_met_among_ready_turns_ends_the_thread_after_them(make_system: Any) -> None:
    # A dispatcher runs the next ready cell's turn at once, without going back to pykka's
    # loop; pykka's stop, met that way, must go back to it (and still end the thread).
    system: ActorSystem = make_system()
    journal: list[tuple[int, Any]] = []
    refs = [
        system.spawn(ChildSpec(name=name, factory=recorder(journal), dispatcher="d"))
        for name in "ab"
    ]
    blocker = system.spawn(ChildSpec(name="blocker", factory=recorder([]), dispatcher="d"))
    for ref in refs:
        ref.ask("started?")
    _BLOCKERS["drain"] = release = threading.Event()
    blocker.tell(Block("drain"))
    wait_for(lambda: system.runtime.cells["blocker"].current is not None)
    for i in range(10):
        for ref in refs:
            ref.tell(i)
    dispatcher = system.runtime.dispatchers["d"]
    thread = dispatcher.thread
    assert thread is not None
    stopper = threading.Thread(target=dispatcher.stop, args=(WAIT_S,))
    stopper.start()
    wait_for(lambda: dispatcher.runq.qsize() == 3)  # a's turn, b's turn, then the stop
    release.set()
    thread.join(WAIT_S)
    stopper.join(WAIT_S)
    assert not thread.is_alive()
    assert len(journal) == 2 + 20  # the asks, then every message: their turns came first
    dispatcher.start()  # a new thread, for the system to stop its actors
