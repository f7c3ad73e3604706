"""Agent health feeds the router: the registry's verdicts reach the router's views, an
unhealthy agent gets no new task, and tasks that no healthy agent can take wait in the
queue (or go back to it from the router's backlog) until one can. Nothing is lost."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from actors.core.health import HealthCore
from actors.health import HealthActor, HealthState
from actors.pipeline import Admission, EventHub, Peers, ResultWaiters, Wiring
from messages import AgentSpec, TaskState
from messages.health import HealthStatus
from messages.pipeline import AgentHealth, AgentsSnapshot, Enqueue, TasksReady, Tick, Watch
from messages.supervision import GetStatistics
from supervisor import ActorSystem, ChildSpec, RunnerConfig, TaskContext, TaskRunner
from tests.conftest import WAIT_S, wait_for
from tests.integration.test_journal_contract import make_record
from tests.integration.test_lazy_demand import (
    StillClock,
    _assigned,
    _demands,
    _router,
    still_timers,
)
from tests.integration.test_supervision import _BLOCKERS, Block, recorder

__all__ = ["still_timers"]  # (a fixture the router tests below use)


@pytest.fixture
def runner() -> Iterator[TaskRunner]:
    runner = TaskRunner.start(RunnerConfig())
    yield runner
    runner.stop(drain=False)


def _register(runner: TaskRunner, ran: dict[str, list[int]]) -> None:
    """Agents ``a`` and ``b`` of capability ``work``; each records the tasks it runs."""
    for agent_id in ("a", "b"):
        log = ran.setdefault(agent_id, [])

        def handler(task: TaskContext, log: list[int] = log) -> int:
            log.append(task.payload["n"])
            return int(task.payload["n"])

        runner.register_agent(
            AgentSpec(agent_id=agent_id, capabilities={"work"}, max_concurrency=2), handler
        )


def _report(runner: TaskRunner, agent_id: str, status: HealthStatus) -> None:
    """Report an agent's health to the registry as the health monitor does, and wait until
    the router has the registry's new snapshot and the queue the Demand that follows it
    (each answers in its mailbox order)."""
    peers = runner._peers
    peers.get("registry").ask(AgentHealth(agent_id=agent_id, status=status))
    peers.get("router").ask(GetStatistics())
    peers.get("queue").ask(GetStatistics())


def test_an_unhealthy_agent_gets_no_task_and_a_lone_one_makes_tasks_wait(
    runner: TaskRunner,
) -> None:
    ran: dict[str, list[int]] = {}
    _register(runner, ran)
    _report(runner, "a", HealthStatus.UNHEALTHY)
    handles = [runner.submit({"type": "work", "payload": {"n": n}}) for n in range(20)]
    assert [handle.result(WAIT_S) for handle in handles] == list(range(20))
    assert ran["a"] == [] and sorted(ran["b"]) == list(range(20))

    # No healthy agent left: a new task waits in the queue, assigned to nobody.
    _report(runner, "b", HealthStatus.UNHEALTHY)
    waiting = runner.submit({"type": "work", "payload": {"n": 99}})
    runner._peers.get("queue").ask(GetStatistics())
    runner._peers.get("router").ask(GetStatistics())
    assert waiting.state() is TaskState.QUEUED
    assert runner.status()["queue"]["depth"] == 1

    # Degraded is still healthy enough to route to: the task runs on the agent back first.
    _report(runner, "a", HealthStatus.DEGRADED)
    assert waiting.result(WAIT_S) == 99
    assert ran["a"] == [99] and 99 not in ran["b"]
    assert runner.drain(WAIT_S)
    assert runner.status()["counts"]["completed"] == 21


def test_the_router_gives_back_its_backlog_when_no_healthy_agent_can_take_it(
    make_system: Any, still_timers: Any
) -> None:
    router, state, queue_log, agent_log, queue = _router(
        make_system(), still_timers, max_concurrency=2
    )
    wait_for(lambda: _demands(queue_log) == [(1, 2)])
    records = [make_record() for _ in range(5)]
    router.tell(TasksReady(records=tuple(records), grant=1, credits=(0,)))
    wait_for(lambda: _assigned(agent_log) == 2)  # the agent's two slots; three wait
    router.ask(GetStatistics())
    assert [record.task_id for record, _ in state.backlog] == [r.task_id for r in records[2:]]

    view = state.views["a1"]
    router.tell(
        AgentsSnapshot(agents=(view.evolve(healthy=False),), refs=tuple(state.refs.items()))
    )
    router.ask(GetStatistics())
    queue.ask(GetStatistics())
    (back,) = [message for _, message in queue_log if isinstance(message, Enqueue)]
    assert [record.task_id for record in back.records] == [r.task_id for r in records[2:]]
    assert back.admitted is False  # they hold their admission credits already
    assert not state.backlog and state.returned == 3
    # The Demand that follows wants nothing: the unhealthy agent's slots are not free.
    assert _demands(queue_log)[-1] == (2, 0)
    assert _assigned(agent_log) == 2


def _health_of(log: list[tuple[int, Any]]) -> list[tuple[str, HealthStatus]]:
    return [(m.agent_id, m.status) for _, m in log if isinstance(m, AgentHealth)]


def test_an_agent_executor_that_stops_making_progress_is_reported_to_the_registry(
    make_system: Any, still_timers: Any
) -> None:
    """The health monitor's own verdict (no heartbeat: mail waits, nothing is processed)
    reaches the registry for the executor's agent, and so does the recovery."""
    system: ActorSystem = make_system()
    registry: list[tuple[int, Any]] = []
    peers = Peers()
    peers.registry = system.spawn(ChildSpec(name="registry", factory=recorder(registry)))
    clock = StillClock(100.0)
    wiring = Wiring(
        peers=peers,
        clock=clock,
        hub=EventHub(),
        timers=still_timers,
        waiters=ResultWaiters(),
        admission=Admission(100, None),
    )
    state = HealthState(HealthCore(1.0))
    health = system.spawn(
        ChildSpec(name="health", factory=lambda: HealthActor(state, wiring, 0.25))
    )
    executor = system.spawn(ChildSpec(name="agent:a", factory=recorder([])))
    watch = Watch(name="agent:a", ref=executor, supervisor=None, critical=False, agent_id="a")
    assert health.ask(watch) is True
    health.ask(Tick())  # a heartbeat: the executor has nothing to do
    _BLOCKERS["executor"] = threading.Event()
    executor.tell(Block("executor"))
    executor.tell("waiting behind it")
    wait_for(lambda: executor.statistics().mailbox_depth == 1)  # stuck in Block
    clock.at = 101.5  # silent past the 1 s timeout
    health.ask(Tick())
    wait_for(lambda: ("a", HealthStatus.UNHEALTHY) in _health_of(registry))
    _BLOCKERS["executor"].set()
    wait_for(lambda: executor.statistics().mailbox_depth == 0)
    clock.at = 102.0
    health.ask(Tick())  # progress again: a heartbeat
    wait_for(lambda: _health_of(registry)[-1] == ("a", HealthStatus.HEALTHY))
    assert all(agent_id == "a" for agent_id, _ in _health_of(registry))
