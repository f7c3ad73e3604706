"""Supervision with real actors on real threads: restarts, strategies, escalation, hangs."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from messages import ActorHung, ActorStopped, Escalated, GetStatistics
from supervisor import (
    Actor,
    ActorSystem,
    ChildSpec,
    Restart,
    RestartBackoff,
    Strategy,
)
from tests.conftest import WAIT_S, wait_for


@dataclass(frozen=True)
class Crash:
    """Makes the receiving actor raise."""

    what: str = "boom"


@dataclass(frozen=True)
class Block:
    """Makes the receiving actor block until the event is set (the event is shared on
    purpose: it is the test's remote control, not actor state)."""

    key: str


_BLOCKERS: dict[str, threading.Event] = {}


class Recorder(Actor):
    """Appends every message to a shared journal (one per test) and answers its count."""

    def __init__(self, journal: list[tuple[int, Any]], name: str = "rec") -> None:
        self.journal = journal
        self.name = name
        self.count = 0

    def receive(self, message: Any) -> Any:
        if isinstance(message, Crash):
            raise RuntimeError(message.what)
        if isinstance(message, Block):
            _BLOCKERS[message.key].wait(WAIT_S)
            return "unblocked"
        self.count += 1
        self.journal.append((self.context.incarnation, message))
        return self.count


_DISPATCHER: list[str | None] = [None]


@pytest.fixture(autouse=True, params=[None, "shared"], ids=["own-thread", "dispatcher"])
def dispatcher(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """Every test here runs twice: actors on threads of their own, and actors sharing one
    dispatcher thread (supervision must not tell the difference)."""
    _DISPATCHER[0] = request.param
    yield request.param
    _DISPATCHER[0] = None


def child(**fields: Any) -> ChildSpec:
    """A ChildSpec on this run's dispatcher (None: a thread of its own)."""
    return ChildSpec(dispatcher=_DISPATCHER[0], **fields)


def recorder(journal: list[tuple[int, Any]]) -> Callable[[], Actor]:
    return lambda: Recorder(journal)


def test_ten_thousand_messages_with_a_crash_every_hundredth(make_system: Any) -> None:
    system: ActorSystem = make_system(max_restarts=1000, within_s=60.0)
    journal: list[tuple[int, Any]] = []
    ref = system.spawn(child(name="rec", factory=recorder(journal)))
    expected = []
    for i in range(10_000):
        if i % 100 == 99:
            ref.tell(Crash())
        else:
            ref.tell(i)
            expected.append(i)
    ref.ask("sync", timeout=WAIT_S)
    received = [m for _, m in journal if m != "sync"]
    assert received == expected  # exactly once and in order
    stats = ref.statistics()
    assert stats.restarts == 100
    assert stats.failures == 100
    assert [d.message for d in system.dead_letters()] == [Crash()] * 100
    assert journal[-1][0] == 101  # the last message ran on the 101st incarnation


def test_messages_sent_while_restarting_reach_the_new_incarnation(make_system: Any) -> None:
    system: ActorSystem = make_system(max_restarts=5)
    journal: list[tuple[int, Any]] = []
    gate = threading.Event()
    entered = threading.Event()

    class SlowStarter(Recorder):
        def on_start(self) -> None:
            if self.context.incarnation == 2:
                entered.set()
                gate.wait(WAIT_S)

    ref = system.spawn(child(name="slow", factory=lambda: SlowStarter(journal)))
    ref.tell(Crash())
    assert entered.wait(WAIT_S)  # the restart is in progress, on_start is blocked
    for i in range(50):
        ref.tell(i)
    future = ref.ask_future("during-restart")
    gate.set()
    assert future.get(timeout=WAIT_S) == 51
    assert journal == [(2, i) for i in range(50)] + [(2, "during-restart")]


def test_asker_gets_the_exception_and_the_actor_is_restarted(make_system: Any) -> None:
    system: ActorSystem = make_system(max_restarts=5)
    journal: list[tuple[int, Any]] = []
    ref = system.spawn(child(name="rec", factory=recorder(journal)))
    with pytest.raises(RuntimeError, match="kaboom"):
        ref.ask(Crash("kaboom"), timeout=WAIT_S)
    assert ref.ask("after", timeout=WAIT_S) == 1  # fresh state: a new instance
    letter = system.dead_letters()[-1]
    assert letter.recipient == "rec"
    assert letter.exception_type == "RuntimeError"
    assert letter.sender_waiting is True


@pytest.mark.parametrize(
    ("strategy", "fail", "restarted"),
    [
        (Strategy.ONE_FOR_ONE, "b", {"b"}),
        (Strategy.ONE_FOR_ALL, "b", {"a", "b", "c"}),
        (Strategy.REST_FOR_ONE, "b", {"b", "c"}),
        (Strategy.REST_FOR_ONE, "a", {"a", "b", "c"}),
        (Strategy.REST_FOR_ONE, "c", {"c"}),
    ],
)
def test_strategies_restart_the_right_siblings(
    make_system: Any, strategy: Strategy, fail: str, restarted: set[str]
) -> None:
    system: ActorSystem = make_system(strategy=strategy, max_restarts=5)
    journal: list[tuple[int, Any]] = []
    refs = {n: system.spawn(child(name=n, factory=recorder(journal))) for n in "abc"}
    refs[fail].tell(Crash())
    for name in restarted:
        wait_for(lambda name=name: refs[name].statistics().incarnation == 2)
    # every child answers; the ones not in the plan were never restarted
    for name, ref in refs.items():
        ref.ask("ping", timeout=WAIT_S)
        assert ref.statistics().incarnation == (2 if name in restarted else 1), name


def test_intensity_exceeded_at_the_root_stops_the_system(make_system: Any, logs: list[Any]) -> None:
    system: ActorSystem = make_system(max_restarts=2, within_s=60.0)
    stopped: list[str] = []

    class Tracked(Recorder):
        def pre_restart(self, reason: BaseException | None) -> None:
            stopped.append("restart")

        def post_stop(self) -> None:
            stopped.append("stop")

    ref = system.spawn(child(name="rec", factory=lambda: Tracked([], "rec")))
    for _ in range(3):
        ref.tell(Crash())
    with pytest.raises(Escalated, match="root supervisor gave up"):
        system.wait(timeout=WAIT_S)
    assert not system.running
    assert stopped == ["restart", "restart", "stop"]  # the child stopped with the system
    events = [e["event"] for e in logs]
    assert events.count("supervisor.child_restarted") == 2
    assert "supervisor.escalated" in events
    with pytest.raises(Escalated):
        system.spawn(child(name="late", factory=recorder([])))


def test_nested_supervisor_escalates_to_its_parent_which_restarts_it(make_system: Any) -> None:
    system: ActorSystem = make_system(max_restarts=5, within_s=60.0)
    journal: list[tuple[int, Any]] = []
    sub = system.spawn_supervisor("sub", max_restarts=1, within_s=60.0)
    worker = system.spawn(child(name="worker", factory=recorder(journal)), parent=sub)
    sibling = system.spawn(child(name="sibling", factory=recorder(journal)))
    worker.tell(Crash())  # restart 1: allowed
    wait_for(lambda: worker.statistics().incarnation == 2)
    worker.tell(Crash())  # restart 2: over intensity -> sub escalates to root
    wait_for(lambda: sub.statistics().restarts == 1)
    # root restarted the nested supervisor, which started its child again, same ref
    assert worker.ask("alive", timeout=WAIT_S) == 1
    assert worker.statistics().incarnation == 3
    assert sibling.statistics().incarnation == 1  # one_for_one at the root
    assert system.running


def test_base_exception_in_a_handler_does_not_stop_unrelated_actors(make_system: Any) -> None:
    system: ActorSystem = make_system(max_restarts=5)

    class Exiter(Actor):
        def receive(self, message: Any) -> Any:
            if message == "exit":
                raise SystemExit(3)
            if message == "interrupt":
                raise KeyboardInterrupt
            return "ok"

    exiter = system.spawn(child(name="exiter", factory=Exiter))
    other = system.spawn(child(name="other", factory=recorder([])))
    exiter.tell("exit")
    with pytest.raises(KeyboardInterrupt):
        exiter.ask("interrupt", timeout=WAIT_S)
    assert other.ask("still here", timeout=WAIT_S) == 1
    assert exiter.ask("fine", timeout=WAIT_S) == "ok"
    assert exiter.statistics().restarts == 2


def test_hung_actor_is_replaced_with_its_mailbox(make_system: Any, logs: list[Any]) -> None:
    system: ActorSystem = make_system(max_restarts=5, watchdog_interval_s=0.01)
    journal: list[tuple[int, Any]] = []
    _BLOCKERS["hang"] = threading.Event()
    spec = child(name="hangs", factory=recorder(journal), hang_timeout_s=0.1)
    ref = system.spawn(spec)
    stuck = ref.ask_future(Block("hang"))
    for i in range(20):
        ref.tell(i)
    with pytest.raises(ActorHung):
        stuck.get(timeout=WAIT_S)
    assert ref.ask("after", timeout=WAIT_S) == 21
    assert journal == [(2, i) for i in range(20)] + [(2, "after")]
    _BLOCKERS["hang"].set()  # the old thread wakes up; its late result is discarded
    assert ref.ask("again", timeout=WAIT_S) == 22
    events = [e["event"] for e in logs]
    assert "supervisor.child_hung" in events
    assert any(e["event"] == "supervisor.child_failed" and e["kind"] == "hung" for e in logs)
    assert any(d.reason.startswith("hung") for d in system.dead_letters())


def test_failing_on_start_is_a_failure_and_hooks_run(make_system: Any) -> None:
    system: ActorSystem = make_system(max_restarts=5)
    calls: list[str] = []
    attempts = {"n": 0}

    class Fragile(Actor):
        def on_start(self) -> None:
            attempts["n"] += 1
            calls.append(f"on_start{self.context.incarnation}")
            if attempts["n"] == 1:
                raise OSError("cannot open")

        def pre_restart(self, reason: BaseException | None) -> None:
            calls.append("pre_restart")

        def post_stop(self) -> None:
            calls.append("post_stop")

        def receive(self, message: Any) -> Any:
            if message == "crash":
                raise ValueError(message)
            return message

    ref = system.spawn(child(name="fragile", factory=Fragile))
    assert ref.ask("hello", timeout=WAIT_S) == "hello"
    with pytest.raises(ValueError, match="crash"):
        ref.ask("crash", timeout=WAIT_S)
    assert ref.ask("again", timeout=WAIT_S) == "again"
    system.stop_child("fragile")
    assert calls == ["on_start1", "on_start2", "pre_restart", "on_start3", "post_stop"]
    with pytest.raises(ActorStopped):
        ref.ask("gone", timeout=WAIT_S)


def test_restart_types_and_normal_exit(make_system: Any) -> None:
    system: ActorSystem = make_system(max_restarts=10)

    class Quitter(Actor):
        def receive(self, message: Any) -> Any:
            if message == "quit":
                self.context.stop_self()
                return "bye"
            if message == "crash":
                raise RuntimeError("crash")
            return self.context.incarnation

    perm = system.spawn(child(name="perm", factory=Quitter, restart=Restart.PERMANENT))
    trans = system.spawn(child(name="trans", factory=Quitter, restart=Restart.TRANSIENT))
    temp = system.spawn(child(name="temp", factory=Quitter, restart=Restart.TEMPORARY))
    trans2 = system.spawn(child(name="trans2", factory=Quitter, restart=Restart.TRANSIENT))
    for ref in (perm, trans):
        assert ref.ask("quit", timeout=WAIT_S) == "bye"
    temp.tell("crash")
    trans2.tell("crash")
    assert perm.ask("who", timeout=WAIT_S) == 2  # permanent: restarted after a normal exit
    assert trans2.ask("who", timeout=WAIT_S) == 2  # transient: restarted after a crash
    wait_for(lambda: not trans.is_alive() and not temp.is_alive())
    with pytest.raises(ActorStopped):
        temp.ask("who", timeout=WAIT_S)
    # The supervisor forgets a temporary child just after its cell stops.
    wait_for(lambda: "temp" not in system.statistics())


def test_backoff_delays_the_restart(make_system: Any, logs: list[Any]) -> None:
    backoff = RestartBackoff(min_s=0.05, max_s=1.0, random_factor=0.0, reset_after_s=60.0)
    system: ActorSystem = make_system(max_restarts=10, backoff=backoff)
    journal: list[tuple[int, Any]] = []
    ref = system.spawn(child(name="rec", factory=recorder(journal)))
    ref.tell(Crash())
    assert ref.ask("one", timeout=WAIT_S) == 1
    ref.tell(Crash())
    assert ref.ask("two", timeout=WAIT_S) == 1
    downtimes = [e["downtime_ms"] for e in logs if e["event"] == "supervisor.child_restarted"]
    assert len(downtimes) == 2
    assert downtimes[0] >= 50.0
    assert downtimes[1] >= 100.0  # doubled for the second consecutive restart


def test_statistics_answered_by_every_actor(make_system: Any) -> None:
    system: ActorSystem = make_system()

    class WithExtra(Recorder):
        def statistics(self) -> dict[str, Any]:
            return {"count": self.count}

    ref = system.spawn(child(name="x", factory=lambda: WithExtra([])))
    for i in range(5):
        ref.tell(i)
    stats = ref.ask(GetStatistics(), timeout=WAIT_S)
    assert stats.processed == 5
    assert stats.extra["count"] == 5
    assert stats.mailbox_depth == 0
    gathered = system.statistics()
    assert set(gathered) == {"root", "x"}
    assert gathered["x"].processed == 5


def test_a_pulse_tells_progress_and_waiting_mail_without_asking_the_actor(
    make_system: Any,
) -> None:
    system: ActorSystem = make_system()
    ref = system.spawn(child(name="x", factory=recorder([])))
    ref.ask("hello", timeout=WAIT_S)
    idle = ref.pulse()
    assert idle == ("running", 1, False)
    _BLOCKERS["pulse"] = threading.Event()
    ref.tell(Block("pulse"))
    ref.tell("behind it")
    wait_for(lambda: ref.statistics().mailbox_depth == 1)  # inside Block
    stuck = ref.pulse()
    assert stuck.state == "running" and stuck.has_mail and stuck.work == idle.work
    _BLOCKERS["pulse"].set()
    wait_for(lambda: not ref.pulse().has_mail)
    assert ref.ask("sync", timeout=WAIT_S) == 3  # hello, behind it, sync: Block is not counted
    assert ref.pulse().work == 4  # every message processed, Block included


def test_mutable_messages_are_refused(make_system: Any) -> None:
    system: ActorSystem = make_system()
    ref = system.spawn(child(name="x", factory=recorder([])))
    for bad in ([1], {"a": 1}, {1, 2}, (1, [2]), bytearray(b"x")):
        with pytest.raises(TypeError, match="mutable"):
            ref.tell(bad)
        with pytest.raises(TypeError, match="mutable"):
            ref.ask(bad)
    assert ref.ask((1, "a", None, frozenset({2}), b"x"), timeout=WAIT_S) == 1


def test_stop_is_in_reverse_start_order_and_later_sends_are_dead_letters(
    make_system: Any,
) -> None:
    system: ActorSystem = make_system()
    order: list[str] = []

    class Named(Actor):
        def __init__(self, name: str) -> None:
            self.name = name

        def receive(self, message: Any) -> Any:
            return message

        def post_stop(self) -> None:
            order.append(self.name)

    refs = [system.spawn(child(name=n, factory=lambda n=n: Named(n))) for n in "abc"]
    system.stop()
    assert order == ["c", "b", "a"]
    before = system.dead_letter_office.total
    refs[0].tell("late")
    with pytest.raises(ActorStopped):
        refs[1].ask("late", timeout=WAIT_S)
    assert system.dead_letter_office.total == before + 2
    assert system.dead_letter_office.counts_by_reason()["actor_stopped"] >= 2


def test_an_alarm_of_a_stopped_actor_rings_for_nobody(make_system: Any) -> None:
    # An actor's own timer (a Tick it armed) is not a message anyone sent: after the
    # actor stopped for good it is dropped quietly, not logged as a dead letter at every
    # shutdown. While the actor runs it is delivered like any message.
    from actors.pipeline import ring
    from messages.pipeline import Tick

    system = make_system()
    got: list[Any] = []

    class Alarmed(Actor):
        def receive(self, message: Any) -> Any:
            got.append(message)
            return len(got)

    ref = system.spawn(child(name="alarmed", factory=Alarmed))
    ring(ref, Tick(at=1.0))
    assert ref.ask("sync", timeout=WAIT_S) == 2
    assert got[0] == Tick(at=1.0)
    system.stop()
    before = system.dead_letter_office.total
    ring(ref, Tick(at=2.0))
    assert system.dead_letter_office.total == before
    ref.tell("late")  # a message somebody sent still becomes a dead letter
    assert system.dead_letter_office.total == before + 1


def test_an_alarm_waiting_in_the_mailbox_of_an_actor_that_stops_rings_for_nobody(
    make_system: Any,
) -> None:
    from actors.pipeline import ring
    from messages.pipeline import Tick

    system = make_system()
    journal: list[tuple[int, Any]] = []
    ref = system.spawn(child(name="busy", factory=recorder(journal)))
    _BLOCKERS["alarm"] = threading.Event()
    cell = system.runtime.cells["busy"]
    ref.tell(Block("alarm"))
    wait_for(lambda: cell.current is not None)  # the actor is held in the block
    ring(ref, Tick(at=3.0))  # both wait behind the block...
    ref.tell("sent")
    before = system.dead_letter_office.total
    stopping = threading.Thread(target=system.stop_child, args=("busy",))
    stopping.start()
    wait_for(lambda: cell.control_pending)  # ...when the stop arrives
    _BLOCKERS["alarm"].set()
    stopping.join(WAIT_S)
    assert journal == []  # neither was handled
    assert [letter.message for letter in system.dead_letters()[-1:]] == ["sent"]
    assert system.dead_letter_office.total == before + 1  # the alarm was not counted


class Finisher(Recorder):
    """A recorder that still handles its ints (not other messages) when it stops."""

    handled_when_stopping = (int,)

    def receive(self, message: Any) -> Any:
        if message == -1:
            raise RuntimeError("cannot finish this one")
        return super().receive(message)


def test_messages_of_the_types_an_actor_asks_for_are_handled_when_it_stops(
    make_system: Any,
) -> None:
    system = make_system()
    journal: list[tuple[int, Any]] = []
    ref = system.spawn(child(name="finisher", factory=lambda: Finisher(journal)))
    _BLOCKERS["finish"] = threading.Event()
    cell = system.runtime.cells["finisher"]
    ref.tell(Block("finish"))
    wait_for(lambda: cell.current is not None)  # held in the block, with a mailbox behind
    ref.tell(1)
    ref.tell("not asked for")
    answer = ref.ask_future(2)
    ref.tell(-1)  # fails while stopping: a dead letter, and the rest too
    ref.tell(3)
    before = system.dead_letter_office.total
    stopping = threading.Thread(target=system.stop_child, args=("finisher",))
    stopping.start()
    wait_for(lambda: cell.control_pending)
    _BLOCKERS["finish"].set()
    stopping.join(WAIT_S)
    assert [message for _, message in journal] == [1, 2]  # in order, after the stop
    assert answer.get(timeout=WAIT_S) == 2  # the asker got its answer
    dead = [letter.message for letter in system.dead_letters()[-3:]]
    assert dead == ["not asked for", -1, 3]
    assert system.dead_letter_office.total == before + 3


def test_slow_shutdown_is_abandoned_after_its_timeout(make_system: Any) -> None:
    system: ActorSystem = make_system()
    _BLOCKERS["slow-stop"] = threading.Event()
    spec = child(name="slow", factory=recorder([]), shutdown_timeout_s=0.05)
    ref = system.spawn(spec)
    ref.tell(Block("slow-stop"))
    ref.tell("queued")
    wait_for(lambda: ref.statistics().mailbox_depth == 1)
    system.stop()
    _BLOCKERS["slow-stop"].set()
    assert not ref.is_alive()
    assert any(d.message == "queued" for d in system.dead_letters())


def test_duplicate_names_are_refused(make_system: Any) -> None:
    system: ActorSystem = make_system()
    system.spawn(child(name="x", factory=recorder([])))
    with pytest.raises(ValueError, match="already exists"):
        system.spawn(child(name="x", factory=recorder([])))


def test_restart_is_visible_in_the_log(make_system: Any, logs: list[Any]) -> None:
    system: ActorSystem = make_system(max_restarts=3)
    ref = system.spawn(child(name="rec", factory=recorder([])))
    ref.tell(Crash("visible"))
    ref.ask("sync", timeout=WAIT_S)
    failed = next(e for e in logs if e["event"] == "supervisor.child_failed")
    assert failed["child"] == "rec"
    assert failed["exception_type"] == "RuntimeError"
    assert "visible" in failed["reason"]
    restarted = next(e for e in logs if e["event"] == "supervisor.child_restarted")
    assert restarted["child"] == "rec"
    assert restarted["restart_count"] == 1
    assert restarted["downtime_ms"] >= 0
