"""Unit and property tests of the agent registry's pure core (no threads, no clock)."""

from __future__ import annotations

import json
import random
import uuid
from datetime import UTC, datetime

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    precondition,
    rule,
)

from actors.core.registry import SNAPSHOT_VERSION, RegistryCore
from actors.core.router import STRATEGIES, RouterCore, routing_key
from messages import AgentSpec, TaskRecord, TaskSpec, UnknownAgent

BASE = datetime(2025, 1, 1, tzinfo=UTC)


def spec(agent_id: str, *caps: str, max_concurrency: int = 2) -> AgentSpec:
    return AgentSpec(
        agent_id=agent_id,
        capabilities=frozenset(caps or ("code",)),
        max_concurrency=max_concurrency,
    )


def task(type_: str = "code", *caps: str) -> TaskRecord:
    return TaskRecord(
        task_id=uuid.uuid4(),
        spec=TaskSpec(type=type_, required_capabilities=frozenset(caps)),
        created_at=BASE,
        updated_at=BASE,
    )


# -- membership ------------------------------------------------------------------------------


def test_register_returns_a_fresh_view() -> None:
    registry = RegistryCore()
    view = registry.register(spec("a", "code", "py", max_concurrency=3))
    assert view.agent_id == "a"
    assert view.capabilities == frozenset({"code", "py"})
    assert (view.max_concurrency, view.load, view.healthy) == (3, 0, True)
    assert (view.success_rate, view.latency_ms, view.samples) == (1.0, 0.0, 0)
    assert "a" in registry
    assert "b" not in registry
    assert len(registry) == 1
    assert registry.spec("a") == spec("a", "code", "py", max_concurrency=3)


def test_register_twice_is_refused_and_keeps_the_first() -> None:
    registry = RegistryCore()
    registry.register(spec("a", max_concurrency=1))
    registry.assign("a", uuid.uuid4())
    with pytest.raises(ValueError, match="already registered"):
        registry.register(spec("a", max_concurrency=5))
    assert registry.view("a").max_concurrency == 1
    assert registry.view("a").load == 1


def test_iteration_and_views_are_sorted_by_id() -> None:
    registry = RegistryCore()
    for agent_id in ("c", "a", "b"):
        registry.register(spec(agent_id))
    assert list(registry) == ["a", "b", "c"]
    assert [view.agent_id for view in registry.views()] == ["a", "b", "c"]


def test_deregister_returns_unfinished_tasks_and_forgets_them() -> None:
    registry = RegistryCore()
    registry.register(spec("a", max_concurrency=3))
    registry.register(spec("b"))
    t1, t2, t3 = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    registry.assign("a", t1)
    registry.assign("a", t2)
    registry.assign("b", t3)
    registry.release("a", t1)
    assert registry.deregister("a") == frozenset({t2})
    assert "a" not in registry
    assert registry.agent_of(t2) is None
    assert registry.agent_of(t3) == "b"
    # the task can now go to another agent
    registry.assign("b", t2)
    assert registry.agent_of(t2) == "b"
    assert registry.deregister("b") == frozenset({t2, t3})
    assert registry.views() == ()


def test_deregister_of_an_idle_agent_returns_nothing() -> None:
    registry = RegistryCore()
    registry.register(spec("a"))
    assert registry.deregister("a") == frozenset()


@pytest.mark.parametrize(
    "call",
    [
        lambda r: r.deregister("ghost"),
        lambda r: r.assign("ghost", uuid.uuid4()),
        lambda r: r.release("ghost", uuid.uuid4()),
        lambda r: r.set_health("ghost", False),
        lambda r: r.update_performance("ghost", 1.0, 1.0, 1),
        lambda r: r.view("ghost"),
        lambda r: r.spec("ghost"),
        lambda r: r.tasks_of("ghost"),
    ],
)
def test_unknown_agent_is_refused(call: object) -> None:
    registry = RegistryCore()
    registry.register(spec("a"))
    with pytest.raises(UnknownAgent):
        call(registry)  # type: ignore[operator]
    # UnknownAgent is also a KeyError, for callers that only know dict semantics
    with pytest.raises(KeyError):
        call(registry)  # type: ignore[operator]


def test_unknown_agent_names_the_agent() -> None:
    registry = RegistryCore()
    with pytest.raises(UnknownAgent) as info:
        registry.view("ghost-7")
    assert info.value.args == ("ghost-7",)


# -- load ------------------------------------------------------------------------------------


def test_assign_and_release_track_load_as_a_set() -> None:
    registry = RegistryCore()
    registry.register(spec("a", max_concurrency=2))
    t1, t2 = uuid.uuid4(), uuid.uuid4()
    registry.assign("a", t1)
    registry.assign("a", t1)  # redelivered: no double count
    assert registry.view("a").load == 1
    registry.assign("a", t2)
    assert registry.view("a").load == 2
    assert registry.tasks_of("a") == frozenset({t1, t2})
    assert registry.release("a", t1) is True
    assert registry.release("a", t1) is False  # idempotent
    assert registry.release("a", uuid.uuid4()) is False  # never assigned
    assert registry.view("a").load == 1
    assert registry.agent_of(t1) is None
    assert registry.agent_of(t2) == "a"


def test_assign_to_a_full_agent_is_refused() -> None:
    registry = RegistryCore()
    registry.register(spec("a", max_concurrency=1))
    t1, t2 = uuid.uuid4(), uuid.uuid4()
    registry.assign("a", t1)
    with pytest.raises(ValueError, match="full"):
        registry.assign("a", t2)
    registry.assign("a", t1)  # re-assigning a held task is still fine when full
    assert registry.tasks_of("a") == frozenset({t1})


def test_a_task_runs_on_one_agent_at_a_time() -> None:
    registry = RegistryCore()
    registry.register(spec("a"))
    registry.register(spec("b"))
    t1 = uuid.uuid4()
    registry.assign("a", t1)
    with pytest.raises(ValueError, match="already assigned to agent 'a'"):
        registry.assign("b", t1)
    assert registry.release("b", t1) is False  # b never held it; a still does
    assert registry.agent_of(t1) == "a"


def test_unhealthy_agent_may_still_be_assigned_but_offers_no_slots() -> None:
    registry = RegistryCore()
    registry.register(spec("a", max_concurrency=3))
    assert registry.set_health("a", False) is True
    assert registry.set_health("a", False) is False
    assert registry.view("a").healthy is False
    registry.assign("a", uuid.uuid4())  # health is a routing concern
    assert registry.view("a").load == 1
    assert registry.total_free_slots() == 0
    assert not registry.can_serve(frozenset({"code"}))
    assert registry.set_health("a", True) is True
    assert registry.total_free_slots() == 2


# -- capacity queries ------------------------------------------------------------------------


def test_can_serve_needs_capability_health_and_a_free_slot() -> None:
    registry = RegistryCore()
    assert not registry.can_serve(frozenset({"code"}))
    registry.register(spec("a", "code", "py", max_concurrency=1))
    assert registry.can_serve(frozenset({"code"}))
    assert registry.can_serve(frozenset({"code", "py"}))
    assert not registry.can_serve(frozenset({"code", "gpu"}))
    registry.assign("a", uuid.uuid4())
    assert not registry.can_serve(frozenset({"code"}))
    registry.register(spec("b", "code", "gpu", max_concurrency=1))
    assert registry.can_serve(frozenset({"code"}))
    assert registry.can_serve(frozenset({"code", "gpu"}))
    registry.set_health("b", False)
    assert not registry.can_serve(frozenset({"code"}))


def test_free_slot_counts() -> None:
    registry = RegistryCore()
    registry.register(spec("a", "code", "py", max_concurrency=3))
    registry.register(spec("b", "code", max_concurrency=2))
    registry.register(spec("c", "mail", max_concurrency=5))
    registry.assign("a", uuid.uuid4())
    assert registry.total_free_slots() == 2 + 2 + 5
    assert registry.free_slots_for(frozenset({"code"})) == 4
    assert registry.free_slots_for(frozenset({"code", "py"})) == 2
    assert registry.free_slots_for(frozenset({"gpu"})) == 0
    registry.set_health("c", False)
    assert registry.total_free_slots() == 4


# -- performance -----------------------------------------------------------------------------


def test_update_performance_shows_in_views() -> None:
    registry = RegistryCore()
    registry.register(spec("a"))
    registry.update_performance("a", 0.75, 12.5, 40)
    view = registry.view("a")
    assert (view.success_rate, view.latency_ms, view.samples) == (0.75, 12.5, 40)


@pytest.mark.parametrize(
    ("success_rate", "latency_ms", "samples", "match"),
    [
        (1.5, 1.0, 1, "success_rate"),
        (-0.1, 1.0, 1, "success_rate"),
        (float("nan"), 1.0, 1, "success_rate"),
        (0.5, -1.0, 1, "latency_ms"),
        (0.5, float("inf"), 1, "latency_ms"),
        (0.5, float("nan"), 1, "latency_ms"),
        (0.5, 1.0, -1, "samples"),
    ],
)
def test_bad_performance_figures_are_refused(
    success_rate: float, latency_ms: float, samples: int, match: str
) -> None:
    registry = RegistryCore()
    registry.register(spec("a"))
    with pytest.raises(ValueError, match=match):
        registry.update_performance("a", success_rate, latency_ms, samples)
    view = registry.view("a")
    assert (view.success_rate, view.latency_ms, view.samples) == (1.0, 0.0, 0)


# -- snapshot and statistics -----------------------------------------------------------------


def populated() -> RegistryCore:
    registry = RegistryCore()
    registry.register(spec("b", "code", "py", max_concurrency=3))
    registry.register(spec("a", "mail", max_concurrency=1))
    registry.assign("b", uuid.UUID(int=2))
    registry.assign("b", uuid.UUID(int=1))
    registry.set_health("a", False)
    registry.update_performance("b", 0.5, 20.0, 8)
    return registry


def test_snapshot_is_json_and_sorted() -> None:
    snapshot = populated().snapshot()
    assert json.loads(json.dumps(snapshot)) == snapshot
    assert snapshot["version"] == SNAPSHOT_VERSION
    assert [agent["agent_id"] for agent in snapshot["agents"]] == ["a", "b"]
    b = snapshot["agents"][1]
    assert b == {
        "agent_id": "b",
        "capabilities": ["code", "py"],
        "max_concurrency": 3,
        "healthy": True,
        "tasks": [str(uuid.UUID(int=1)), str(uuid.UUID(int=2))],
        "success_rate": 0.5,
        "latency_ms": 20.0,
        "samples": 8,
    }


def test_rebuild_from_snapshot_restores_the_state() -> None:
    original = populated()
    rebuilt = RegistryCore.from_snapshot(json.loads(json.dumps(original.snapshot())))
    assert rebuilt.views() == original.views()
    assert rebuilt.snapshot() == original.snapshot()
    assert rebuilt.agent_of(uuid.UUID(int=1)) == "b"
    assert rebuilt.deregister("b") == frozenset({uuid.UUID(int=1), uuid.UUID(int=2)})
    stats = RegistryCore.from_snapshot(original.snapshot()).statistics()
    assert stats["registered_total"] == stats["assigned_total"] == 0
    assert stats["load"] == 2


def test_rebuild_refuses_a_bad_snapshot() -> None:
    good = populated().snapshot()
    with pytest.raises(ValueError, match="version"):
        RegistryCore.from_snapshot({**good, "version": 99})
    with pytest.raises(ValueError, match="version"):
        RegistryCore.from_snapshot({"agents": []})
    over_capacity = json.loads(json.dumps(good))
    over_capacity["agents"][0]["tasks"] = [str(uuid.uuid4()), str(uuid.uuid4())]
    with pytest.raises(ValueError, match="full"):
        RegistryCore.from_snapshot(over_capacity)
    shared_task = json.loads(json.dumps(good))
    shared_task["agents"][0]["tasks"] = [good["agents"][1]["tasks"][0]]
    with pytest.raises(ValueError, match="already assigned"):
        RegistryCore.from_snapshot(shared_task)
    bad_rate = json.loads(json.dumps(good))
    bad_rate["agents"][0]["success_rate"] = 2.0
    with pytest.raises(ValueError, match="success_rate"):
        RegistryCore.from_snapshot(bad_rate)
    no_caps = json.loads(json.dumps(good))
    no_caps["agents"][0]["capabilities"] = []
    with pytest.raises(ValueError, match="capability"):
        RegistryCore.from_snapshot(no_caps)


def test_statistics_count_lifetime_events() -> None:
    registry = RegistryCore()
    assert registry.statistics() == {
        "agents": 0,
        "healthy_agents": 0,
        "capacity": 0,
        "load": 0,
        "free_slots": 0,
        "registered_total": 0,
        "deregistered_total": 0,
        "assigned_total": 0,
        "released_total": 0,
    }
    registry.register(spec("a", max_concurrency=2))
    registry.register(spec("b", max_concurrency=3))
    registry.register(spec("c", max_concurrency=1))
    t1, t2 = uuid.uuid4(), uuid.uuid4()
    registry.assign("a", t1)
    registry.assign("a", t1)
    registry.assign("b", t2)
    registry.release("a", t1)
    registry.release("a", t1)
    registry.set_health("b", False)
    registry.deregister("c")
    assert registry.statistics() == {
        "agents": 2,
        "healthy_agents": 1,
        "capacity": 5,
        "load": 1,
        "free_slots": 2,
        "registered_total": 3,
        "deregistered_total": 1,
        "assigned_total": 2,
        "released_total": 1,
    }


def test_lifetime_counters_keep_counting() -> None:
    registry = RegistryCore()
    for name in "abc":
        registry.register(spec(name, max_concurrency=3))
    tasks = [uuid.uuid4() for _ in range(3)]
    for task_id in tasks:
        registry.assign("a", task_id)
    for task_id in tasks:
        assert registry.release("a", task_id)
    registry.deregister("b")
    registry.deregister("c")
    stats = registry.statistics()
    assert stats["assigned_total"] == stats["released_total"] == 3
    assert stats["deregistered_total"] == 2


@pytest.mark.parametrize("success_rate", [0.0, 1.0])
def test_performance_bounds_are_inclusive(success_rate: float) -> None:
    registry = RegistryCore()
    registry.register(spec("a"))
    registry.update_performance("a", success_rate, 0.0, 0)
    view = registry.view("a")
    assert (view.success_rate, view.latency_ms, view.samples) == (success_rate, 0.0, 0)


# -- property: routing through the registry never overloads an agent -------------------------

CAPS = ("code", "py", "gpu", "mail")


class RegistryMachine(RuleBasedStateMachine):
    """Drive the registry only the way the runtime does: route on fresh views, then assign.

    Invariants: no agent's load ever exceeds its max_concurrency (and assign never has to
    refuse), the registry agrees with a plain model, and a snapshot round-trips.
    """

    assigned = Bundle("assigned")

    def __init__(self) -> None:
        super().__init__()
        self.registry = RegistryCore()
        self.model: dict[str, set[uuid.UUID]] = {}
        self.capacity: dict[str, int] = {}
        self.requeued: list[uuid.UUID] = []
        self.routers = {name: RouterCore(name, rng=random.Random(7)) for name in STRATEGIES}
        self.counter = 0

    @rule(
        caps=st.frozensets(st.sampled_from(CAPS), min_size=1),
        max_concurrency=st.integers(1, 3),
    )
    def register(self, caps: frozenset[str], max_concurrency: int) -> None:
        self.counter += 1
        agent_id = f"agent-{self.counter}"
        self.registry.register(
            AgentSpec(agent_id=agent_id, capabilities=caps, max_concurrency=max_concurrency)
        )
        self.model[agent_id] = set()
        self.capacity[agent_id] = max_concurrency

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data())
    def deregister(self, data: st.DataObject) -> None:
        agent_id = data.draw(st.sampled_from(sorted(self.model)))
        returned = self.registry.deregister(agent_id)
        assert returned == frozenset(self.model.pop(agent_id))
        self.requeued.extend(returned)

    @rule(
        target=assigned,
        type_=st.sampled_from(CAPS),
        required=st.frozensets(st.sampled_from(CAPS), max_size=1),
        strategy=st.sampled_from(STRATEGIES),
    )
    def route_and_assign(
        self, type_: str, required: frozenset[str], strategy: str
    ) -> tuple[str, uuid.UUID] | None:
        record = task(type_, *required)
        decision = self.routers[strategy].route(record, self.registry.views())
        # route() returns None exactly when the registry says nobody can serve the key
        assert (decision is None) == (not self.registry.can_serve(routing_key(record.spec)))
        if decision is None:
            return None
        self.registry.assign(decision.agent_id, record.task_id)  # must never raise
        self.model[decision.agent_id].add(record.task_id)
        self.routers[strategy].record_outcome(type_, decision.agent_id, True, 1.0)
        return decision.agent_id, record.task_id

    @rule(item=consumes(assigned))
    def release(self, item: tuple[str, uuid.UUID] | None) -> None:
        if item is None:
            return
        agent_id, task_id = item
        released = self.registry.release(agent_id, task_id) if agent_id in self.model else False
        assert released == (task_id in self.model.get(agent_id, set()))
        self.model.get(agent_id, set()).discard(task_id)

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data(), healthy=st.booleans())
    def set_health(self, data: st.DataObject, healthy: bool) -> None:
        self.registry.set_health(data.draw(st.sampled_from(sorted(self.model))), healthy)

    @invariant()
    def load_within_capacity_and_matches_model(self) -> None:
        for view in self.registry.views():
            assert view.load <= view.max_concurrency
            assert self.registry.tasks_of(view.agent_id) == frozenset(self.model[view.agent_id])
        assert sorted(self.registry) == sorted(self.model)
        stats = self.registry.statistics()
        assert stats["load"] == sum(len(tasks) for tasks in self.model.values())

    @invariant()
    def snapshot_round_trips(self) -> None:
        snapshot = self.registry.snapshot()
        assert RegistryCore.from_snapshot(snapshot).snapshot() == snapshot


TestRegistryMachine = RegistryMachine.TestCase
TestRegistryMachine.settings = settings(max_examples=100, stateful_step_count=30, deadline=None)
