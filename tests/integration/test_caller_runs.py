"""Caller-runs: a thread that claims an idle dispatcher runs the turns its tells cause.

The claim must change which thread runs a turn and nothing else: the same turns, one at
a time, in the same order, failures to the supervisor, a hung turn replaced by the
watchdog, a busy dispatcher never waited for.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import pytest

from actors.base import Actor
from actors.cell import ActorRef, LentThread
from messages import GetStatistics
from supervisor import ActorSystem, ChildSpec, RunnerConfig, TaskRunner
from tests.conftest import WAIT_S, wait_for
from tests.integration.test_supervision import _BLOCKERS, Block, Crash

Seen = list[tuple[str, str, Any]]
"""(actor, thread name, message), in the order the turns ran."""


@dataclass(frozen=True)
class Ball:
    """A ping-pong ball: ``hits`` left to play."""

    hits: int


class Hop(Actor):
    """Records each message with its thread, then passes it on to ``next`` (if any);
    passes a Ball back and forth with ``next`` until it has no hits left."""

    def __init__(self, seen: Seen, name: str, refs: dict[str, ActorRef], next: str | None):
        self.seen = seen
        self.name = name
        self.refs = refs
        self.next = next

    def receive(self, message: Any) -> Any:
        if isinstance(message, Crash):
            raise RuntimeError(message.what)
        if isinstance(message, Block):
            _BLOCKERS[message.key].wait(WAIT_S)
            return None
        self.seen.append((self.name, threading.current_thread().name, message))
        if self.next is not None:
            if isinstance(message, Ball):
                if message.hits > 1:
                    self.refs[self.next].tell(Ball(message.hits - 1))
            else:
                self.refs[self.next].tell(message)
        return self.context.incarnation


def _spawn_hops(
    system: ActorSystem, seen: Seen, links: dict[str, str | None], **spec: Any
) -> dict[str, ActorRef]:
    """Actors named as ``links``' keys, each passing on to its value, on dispatcher "d";
    returned once each has had its first turn."""
    refs: dict[str, ActorRef] = {}
    for name, following in links.items():

        def factory(name: str = name, following: str | None = following) -> Actor:
            return Hop(seen, name, refs, following)

        refs[name] = system.spawn(ChildSpec(name=name, factory=factory, dispatcher="d", **spec))
    for ref in refs.values():
        ref.ask(GetStatistics())  # (answered by the cell: no message reaches the actor)
    return refs


def _claim(ref: ActorRef) -> LentThread:
    """Claim ``ref``'s dispatcher as soon as its thread has gone idle."""
    claimed: list[LentThread] = []

    def idle() -> bool:
        lent = ref.claim_dispatcher()
        if lent is not None:
            claimed.append(lent)
        return bool(claimed)

    wait_for(idle)
    return claimed[0]


def test_a_claimed_idle_dispatcher_runs_the_turns_on_the_claiming_thread(
    make_system: Any,
) -> None:
    system: ActorSystem = make_system()
    seen: Seen = []
    refs = _spawn_hops(system, seen, {"a": "b", "b": None})
    dispatcher = system.runtime.dispatchers["d"]
    lent = _claim(refs["a"])
    refs["a"].tell("one")
    assert seen == []  # the turn waits in the claim: the dispatcher's thread was not woken
    lent.run()
    here = threading.current_thread().name
    assert seen == [("a", here, "one"), ("b", here, "one")]  # b's turn too, caused by a's
    assert dispatcher.lent_turns == 2
    assert dispatcher.running is None
    # Given back: the dispatcher's own thread runs the next tell.
    refs["a"].tell("two")
    wait_for(lambda: len(seen) == 4)
    assert {thread for _, thread, _ in seen[2:]} == {dispatcher.thread.name}  # type: ignore[union-attr]


def test_a_busy_dispatcher_is_not_claimed_and_its_thread_runs_the_turns(
    make_system: Any,
) -> None:
    system: ActorSystem = make_system()
    seen: Seen = []
    refs = _spawn_hops(system, seen, {"a": None, "busy": None})
    dispatcher = system.runtime.dispatchers["d"]
    _BLOCKERS["busy"] = threading.Event()
    try:
        refs["busy"].tell(Block("busy"))
        wait_for(lambda: system.runtime.cells["busy"].current is not None)
        assert refs["a"].claim_dispatcher() is None  # never waited for
        refs["a"].tell("queued")
    finally:
        _BLOCKERS["busy"].set()
    wait_for(lambda: len(seen) == 1)
    assert seen[0][1] == dispatcher.thread.name  # type: ignore[union-attr]
    assert dispatcher.lent_turns == 0


def test_no_claims_without_lent_threads(make_system: Any) -> None:
    system: ActorSystem = make_system(lend_threads=False)
    seen: Seen = []
    refs = _spawn_hops(system, seen, {"a": None})
    assert system.runtime.dispatchers["d"].lend_threads is False
    wait_for(lambda: system.runtime.dispatchers["d"].running is None)
    assert refs["a"].claim_dispatcher() is None


def test_a_lent_thread_runs_at_most_throughput_turns_then_the_dispatcher_takes_over(
    make_system: Any,
) -> None:
    system: ActorSystem = make_system()
    seen: Seen = []
    refs = _spawn_hops(system, seen, {"ping": "pong", "pong": "ping"})
    dispatcher = system.runtime.dispatchers["d"]
    lent = _claim(refs["ping"])
    refs["ping"].tell(Ball(200))  # 200 turns, one message each
    lent.run()
    wait_for(lambda: len(seen) == 200)
    here = threading.current_thread().name
    assert [thread for _, thread, _ in seen[: dispatcher.throughput]] == [here] * 64
    assert {thread for _, thread, _ in seen[64:]} == {dispatcher.thread.name}  # type: ignore[union-attr]
    assert [ball.hits for _, _, ball in seen] == list(range(200, 0, -1))  # in order
    assert [name for name, _, _ in seen[:4]] == ["ping", "pong", "ping", "pong"]


def test_a_failure_in_a_lent_turn_goes_to_the_supervisor_not_the_caller(
    make_system: Any,
) -> None:
    system: ActorSystem = make_system(max_restarts=5)
    seen: Seen = []
    refs = _spawn_hops(system, seen, {"a": None})
    lent = _claim(refs["a"])
    refs["a"].tell(Crash("in a lent turn"))
    refs["a"].tell("after")
    lent.run()  # raises nothing: the failure is the supervisor's
    assert refs["a"].ask("asked", timeout=WAIT_S) == 2  # a second incarnation
    assert [message for _, _, message in seen] == ["after", "asked"]  # nothing lost
    assert system.runtime.cells["a"].restarts == 1


def test_a_turn_hung_on_a_lent_thread_is_left_behind_and_the_dispatcher_goes_on(
    make_system: Any, logs: list[Any]
) -> None:
    system: ActorSystem = make_system(max_restarts=5, watchdog_interval_s=0.01)
    seen: Seen = []
    refs = _spawn_hops(system, seen, {"stuck": None, "other": None}, hang_timeout_s=0.1)
    dispatcher = system.runtime.dispatchers["d"]
    _BLOCKERS["lent"] = threading.Event()
    lender_done = threading.Event()

    def lender() -> None:
        lent = _claim(refs["stuck"])
        refs["stuck"].tell(Block("lent"))
        refs["stuck"].tell("queued behind the block")
        refs["other"].tell("waiting in the claim")
        lent.run()  # hangs in stuck's turn until the test lets it go
        lender_done.set()

    thread = threading.Thread(target=lender, name="lender")
    thread.start()
    try:
        # other's turn was waiting in the hung claim: the watchdog hands it to the
        # dispatcher's thread, which took the new run lock.
        wait_for(lambda: ("other", dispatcher.thread.name, "waiting in the claim") in seen)  # type: ignore[union-attr]
        # The stuck actor's next incarnation handles what was queued behind the block.
        wait_for(lambda: ("stuck", dispatcher.thread.name, "queued behind the block") in seen)  # type: ignore[union-attr]
        assert refs["other"].ask("still there?", timeout=WAIT_S) == 1
        assert not lender_done.is_set()  # the lent thread is still stuck
    finally:
        _BLOCKERS["lent"].set()
    assert lender_done.wait(WAIT_S)
    thread.join(WAIT_S)
    replaced = [entry for entry in logs if entry["event"] == "supervisor.dispatcher_replaced"]
    assert [entry.get("lent_thread") for entry in replaced] == ["lender"]
    assert "supervisor.child_hung" in [entry["event"] for entry in logs]
    assert dispatcher.replacements == 1
    # The late lender gave its old lock back without running anything more; the
    # dispatcher still runs and can be claimed again.
    assert refs["other"].ask("after", timeout=WAIT_S) == 1
    _claim(refs["other"]).run()


def test_a_runner_on_a_journaled_store_does_not_lend_threads(tmp_path: Any) -> None:
    # Its journal commits the pipeline's writes on a thread of its own: lent threads would
    # let the pipeline run ahead of those commits (more attempts re-run after a crash).
    config = RunnerConfig(store=f"sqlite:///{tmp_path / 'tasks.db'}")
    with TaskRunner.start(config) as runner:
        runner.register_agent(
            {"agent_id": "a", "capabilities": ["t"], "max_concurrency": 1}, lambda task: None
        )
        handle = runner.submit({"type": "t"})
        assert handle.result(timeout=WAIT_S) is None
        dispatchers = list(runner.system.runtime.dispatchers.values())
        assert dispatchers and all(d.lend_threads is False for d in dispatchers)
        assert all(d.lent_turns == 0 for d in dispatchers)


@pytest.mark.parametrize("lend", [True, False], ids=["lent", "not-lent"])
def test_an_idle_runner_runs_a_submits_turns_on_the_submitting_thread(lend: bool) -> None:
    ran_on: list[str] = []
    with TaskRunner.start(RunnerConfig(lend_threads=lend)) as runner:
        runner.register_agent(
            {"agent_id": "a", "capabilities": ["t"], "max_concurrency": 1},
            lambda task: ran_on.append(threading.current_thread().name),
        )
        dispatcher = next(iter(runner.system.runtime.dispatchers.values()))
        lent_submits = 0
        for n in range(20):
            wait_for(lambda: dispatcher.running is None and dispatcher.runq.empty())
            before = dispatcher.lent_turns
            handle = runner.submit({"type": "t", "payload": {"n": n}})
            taken = dispatcher.lent_turns - before
            # the queue's, the router's and the agent's turns at least (a timer's turn
            # can take the idle dispatcher first now and then: that submit is not lent)
            lent_submits += taken >= 3
            assert handle.result(timeout=WAIT_S) is None
        assert len(ran_on) == 20 and all(name.startswith("agent-a") for name in ran_on)
    if lend:
        assert lent_submits >= 15
    else:
        assert lent_submits == 0 and dispatcher.lent_turns == 0
