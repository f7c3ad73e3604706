"""Unit and property tests of the routing core (no threads, no clock; seeded randomness)."""

from __future__ import annotations

import math
import random
import uuid
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.core.router import (
    DEFAULT_WEIGHTS,
    STRATEGIES,
    PerformanceWeights,
    RouterCore,
    is_eligible,
    reward,
    routing_key,
)
from messages import AgentView, RoutingDecision, TaskRecord, TaskSpec

BASE = datetime(2025, 1, 1, tzinfo=UTC)


def task(type_: str = "code", *caps: str) -> TaskRecord:
    return TaskRecord(
        task_id=uuid.uuid4(),
        spec=TaskSpec(type=type_, required_capabilities=frozenset(caps)),
        created_at=BASE,
        updated_at=BASE,
    )


def agent(
    agent_id: str,
    *caps: str,
    max_concurrency: int = 4,
    load: int = 0,
    healthy: bool = True,
    success_rate: float = 1.0,
    latency_ms: float = 0.0,
    samples: int = 0,
) -> AgentView:
    return AgentView(
        agent_id=agent_id,
        capabilities=frozenset(caps or ("code",)),
        max_concurrency=max_concurrency,
        load=load,
        healthy=healthy,
        success_rate=success_rate,
        latency_ms=latency_ms,
        samples=samples,
    )


def route(router: RouterCore, record: TaskRecord, agents: Sequence[AgentView]) -> RoutingDecision:
    decision = router.route(record, agents)
    assert decision is not None
    return decision


# -- keys and eligibility --------------------------------------------------------------------


def test_routing_key_is_type_plus_required_capabilities() -> None:
    assert routing_key(task("code").spec) == frozenset({"code"})
    assert routing_key(task("code", "py", "gpu").spec) == frozenset({"code", "py", "gpu"})
    assert routing_key(task("code", "code").spec) == frozenset({"code"})


def test_eligibility_needs_capabilities_health_and_a_free_slot() -> None:
    key = frozenset({"code", "py"})
    assert is_eligible(agent("a", "code", "py", "gpu"), key)
    assert not is_eligible(agent("a", "code"), key)
    assert not is_eligible(agent("a", "code", "py", healthy=False), key)
    assert not is_eligible(agent("a", "code", "py", max_concurrency=2, load=2), key)
    assert is_eligible(agent("a", "code", "py", max_concurrency=2, load=1), key)
    # A buffer (the router's prefetch) is room too, up to slots + buffer.
    buffered = agent("a", "code", "py", max_concurrency=2, load=2).evolve(buffer=1)
    assert is_eligible(buffered, key)
    assert buffered.free_slots == 1 and buffered.capacity == 3
    assert not is_eligible(buffered.evolve(load=3), key)
    assert buffered.evolve(load=3).free_slots == 0


def test_eligible_lists_only_eligible_agents_sorted() -> None:
    router = RouterCore()
    agents = [agent("c"), agent("b", healthy=False), agent("a"), agent("d", "mail")]
    assert [a.agent_id for a in router.eligible(task(), agents)] == ["a", "c"]


# -- construction ----------------------------------------------------------------------------


def test_strategies_constant() -> None:
    assert STRATEGIES == ("round_robin", "least_loaded", "performance", "bandit")
    assert RouterCore().strategy == "least_loaded"
    for name in STRATEGIES:
        assert RouterCore(name).strategy == name


def test_unknown_strategy_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="fastest") as info:
        RouterCore("fastest")
    for name in STRATEGIES:
        assert name in str(info.value)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"epsilon": -0.1}, "epsilon"),
        ({"epsilon": 1.5}, "epsilon"),
        ({"epsilon": math.nan}, "epsilon"),
        ({"exploration": -1.0}, "exploration"),
        ({"exploration": math.inf}, "exploration"),
        ({"latency_scale_ms": 0.0}, "latency_scale_ms"),
        ({"latency_scale_ms": math.inf}, "latency_scale_ms"),
        ({"max_alternatives": -1}, "max_alternatives"),
    ],
)
def test_bad_options_are_refused(options: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        RouterCore("bandit", **options)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "weights",
    [(-0.1, 0.5, 0.5), (0.0, 0.0, 0.0), (math.inf, 0.0, 0.0), (math.nan, 1.0, 1.0)],
)
def test_bad_weights_are_refused(weights: tuple[float, float, float]) -> None:
    with pytest.raises(ValueError, match="weights"):
        PerformanceWeights(*weights)


def test_weights_normalise_to_one() -> None:
    assert DEFAULT_WEIGHTS.normalised() == pytest.approx((0.5, 0.3, 0.2))
    assert PerformanceWeights(2.0, 1.0, 1.0).normalised() == pytest.approx((0.5, 0.25, 0.25))


# -- common to every strategy ----------------------------------------------------------------


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_no_agents_or_none_eligible_gives_none(strategy: str) -> None:
    router = RouterCore(strategy, rng=random.Random(1))
    assert router.route(task(), []) is None
    agents = [
        agent("a", "mail"),
        agent("b", healthy=False),
        agent("c", max_concurrency=1, load=1),
        agent("d", "code"),
    ]
    assert router.route(task("code", "py"), agents) is None
    assert router.statistics()["unroutable"] == 2
    assert router.statistics()["decisions"] == 0


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_decision_carries_everything(strategy: str) -> None:
    router = RouterCore(strategy, rng=random.Random(1))
    record = task()
    agents = [agent("a", load=1), agent("b"), agent("c", load=2), agent("x", "mail")]
    decision = route(router, record, agents)
    assert decision.task_id == record.task_id
    assert decision.strategy == strategy
    assert decision.reason.startswith(strategy.replace("_", " "))
    chosen = {decision.agent_id}
    others = {alt.agent_id for alt in decision.alternatives}
    assert chosen | others == {"a", "b", "c"}
    assert not chosen & others
    scores = [alt.score for alt in decision.alternatives]
    assert scores == sorted(scores, reverse=True)
    assert all(decision.score >= alt.score for alt in decision.alternatives)
    assert router.statistics() == {
        "strategy": strategy,
        "decisions": 1,
        "unroutable": 0,
        "task_types_learnt": 0,
    }
    # a valid message: re-validating the constructed decision changes nothing
    assert RoutingDecision.model_validate(decision.model_dump()) == decision


def test_max_alternatives_caps_the_list_keeping_the_best() -> None:
    router = RouterCore("least_loaded", max_alternatives=2)
    agents = [agent("a", load=0), agent("b", load=3), agent("c", load=1), agent("d", load=2)]
    decision = route(router, task(), agents)
    assert decision.agent_id == "a"
    assert [alt.agent_id for alt in decision.alternatives] == ["c", "d"]
    assert route(RouterCore(max_alternatives=0), task(), agents).alternatives == ()


# -- least_loaded ----------------------------------------------------------------------------


def test_least_loaded_compares_load_relative_to_capacity() -> None:
    router = RouterCore("least_loaded")
    agents = [
        agent("a", max_concurrency=2, load=1),  # 50 %
        agent("b", max_concurrency=10, load=3),  # 30 %
        agent("c", max_concurrency=4, load=2),  # 50 %
    ]
    decision = route(router, task(), agents)
    assert decision.agent_id == "b"
    assert decision.score == pytest.approx(0.7)
    assert decision.reason == "least loaded: 3/10 slots in use"
    assert [(alt.agent_id, alt.score) for alt in decision.alternatives] == [("a", 0.5), ("c", 0.5)]


def test_least_loaded_breaks_ties_by_agent_id() -> None:
    router = RouterCore("least_loaded")
    agents = [agent("b", load=1), agent("a", load=1), agent("c", load=1)]
    for _ in range(3):  # no hidden cursor: the same views give the same answer
        assert route(router, task(), agents).agent_id == "a"


# -- round_robin -----------------------------------------------------------------------------


def test_round_robin_cycles_in_agent_id_order() -> None:
    router = RouterCore("round_robin")
    agents = [agent("c"), agent("a"), agent("b")]
    picks = [route(router, task(), agents).agent_id for _ in range(7)]
    assert picks == ["a", "b", "c", "a", "b", "c", "a"]


def test_round_robin_scores_rank_agents_by_turn() -> None:
    router = RouterCore("round_robin")
    agents = [agent("a"), agent("b"), agent("c"), agent("d")]
    route(router, task(), agents)  # a
    decision = route(router, task(), agents)  # b
    assert decision.agent_id == "b"
    assert decision.score == 1.0
    assert decision.reason == "round robin: after 'a', 4 eligible"
    assert [(alt.agent_id, alt.score) for alt in decision.alternatives] == [
        ("c", 0.75),
        ("d", 0.5),
        ("a", 0.25),
    ]


def test_round_robin_keeps_one_cursor_per_routing_key() -> None:
    router = RouterCore("round_robin")
    agents = [agent("a", "code", "py"), agent("b", "code", "py"), agent("c", "code", "py")]
    assert route(router, task("code"), agents).agent_id == "a"
    assert route(router, task("code"), agents).agent_id == "b"
    # another key starts its own cycle, and does not disturb the first
    assert route(router, task("code", "py"), agents).agent_id == "a"
    assert route(router, task("code"), agents).agent_id == "c"
    assert route(router, task("code", "py"), agents).agent_id == "b"


def test_round_robin_survives_agents_joining_leaving_and_filling() -> None:
    router = RouterCore("round_robin")
    assert route(router, task(), [agent("a"), agent("c")]).agent_id == "a"
    # b joins: its turn is after a
    assert route(router, task(), [agent("a"), agent("b"), agent("c")]).agent_id == "b"
    # c is full: skip it and wrap around to a
    full_c = agent("c", max_concurrency=1, load=1)
    assert route(router, task(), [agent("a"), agent("b"), full_c]).agent_id == "a"
    # a leaves (the last chosen): the cycle carries on from where it was
    assert route(router, task(), [agent("b"), agent("c")]).agent_id == "b"
    assert route(router, task(), [agent("b"), agent("c")]).agent_id == "c"


# -- performance -----------------------------------------------------------------------------


def test_performance_prefers_reliability_then_speed() -> None:
    router = RouterCore("performance")
    agents = [
        agent("flaky-fast", success_rate=0.5, latency_ms=10.0, samples=50),
        agent("solid-slow", success_rate=1.0, latency_ms=40.0, samples=50),
    ]
    decision = route(router, task(), agents)
    # flaky-fast: 0.5*0.5 + 0.3*1.0 + 0.2*1 = 0.75; solid-slow: 0.5 + 0.3*11/41 + 0.2 = 0.78
    assert decision.agent_id == "solid-slow"
    assert decision.score == pytest.approx(0.5 + 0.3 * 11 / 41 + 0.2)
    assert decision.alternatives[0].score == pytest.approx(0.75)
    assert "success 1.00" in decision.reason
    assert "40.0 ms" in decision.reason
    fast_enough = [agents[0], agent("solid-slow", latency_ms=12.0, samples=50)]
    assert route(router, task(), fast_enough).agent_id == "solid-slow"
    equal_success = [
        agent("slow", success_rate=0.9, latency_ms=100.0, samples=5),
        agent("fast", success_rate=0.9, latency_ms=50.0, samples=5),
    ]
    assert route(router, task(), equal_success).agent_id == "fast"


def test_performance_counts_load_and_breaks_ties_by_id() -> None:
    router = RouterCore("performance")
    agents = [agent("b", load=0), agent("a", load=2), agent("c", load=0)]
    decision = route(router, task(), agents)
    assert decision.agent_id == "b"  # less loaded than a, and b < c
    assert decision.score == pytest.approx(1.0)
    assert "unknown latency" in decision.reason


def test_performance_treats_unknown_latency_as_average() -> None:
    router = RouterCore("performance", weights=PerformanceWeights(success=0, latency=1, load=0))
    agents = [
        agent("fast", latency_ms=9.0, samples=3),  # (9+1)/(9+1) = 1.0
        agent("new"),  # unknown: average of 1.0 and 0.5 = 0.75
        agent("slow", latency_ms=19.0, samples=3),  # (9+1)/(19+1) = 0.5
    ]
    decision = route(router, task(), agents)
    assert decision.agent_id == "fast"
    assert [alt.agent_id for alt in decision.alternatives] == ["new", "slow"]
    assert [alt.score for alt in decision.alternatives] == pytest.approx([0.75, 0.5])


def test_performance_latency_term_tolerates_zero_latency() -> None:
    router = RouterCore("performance", weights=PerformanceWeights(success=0, latency=1, load=0))
    agents = [agent("zero", latency_ms=0.0, samples=1), agent("one", latency_ms=1.0, samples=1)]
    decision = route(router, task(), agents)
    assert decision.agent_id == "zero"
    assert decision.alternatives[0].score == pytest.approx(0.5)


# -- bandit ----------------------------------------------------------------------------------


def test_reward_shape() -> None:
    assert reward(False, 0.0) == 0.0
    assert reward(False, 5000.0) == 0.0
    assert reward(True, 0.0) == 1.0
    assert reward(True, 1000.0) == pytest.approx(0.75)
    assert reward(True, 100.0, latency_scale_ms=100.0) == pytest.approx(0.75)
    assert 0.5 < reward(True, 1e12) < 0.51
    assert reward(True, -3.0) == 1.0  # clock noise never earns more than an instant success
    assert reward(True, 10.0) > reward(True, 20.0)


def test_bandit_tries_untried_agents_first_in_id_order() -> None:
    router = RouterCore("bandit", rng=random.Random(0), epsilon=1.0)
    agents = [agent("b", "t"), agent("a", "t"), agent("c", "t")]
    picks = []
    for _ in range(3):
        decision = route(router, task("t"), agents)
        assert decision.reason == "bandit: untried for type 't'"
        picks.append(decision.agent_id)
        router.record_outcome("t", decision.agent_id, True, 1.0)
    assert picks == ["a", "b", "c"]
    # another task type has its own statistics: everyone is untried again
    assert route(router, task("u", "t"), [agent("a", "t", "u")]).reason.endswith("type 'u'")


def test_bandit_exploits_the_best_ucb_with_no_epsilon() -> None:
    router = RouterCore("bandit", rng=random.Random(0), epsilon=0.0)
    for _ in range(50):
        router.record_outcome("code", "good", True, 10.0)
        router.record_outcome("code", "bad", False, 10.0)
    decision = route(router, task(), [agent("bad"), agent("good")])
    assert decision.agent_id == "good"
    mean = reward(True, 10.0)
    bonus = math.sqrt(2) * math.sqrt(math.log(100) / 50)
    assert decision.score == pytest.approx(mean + bonus)
    assert decision.alternatives[0].score == pytest.approx(bonus)
    assert decision.reason.startswith("bandit: best UCB1 (mean reward 0.995 over 50")
    stats = router.bandit_stats("code")
    assert list(stats) == ["bad", "good"]
    assert stats["bad"] == (50, 0.0)
    assert stats["good"][0] == 50
    assert stats["good"][1] == pytest.approx(mean)
    assert router.bandit_stats("other") == {}


def test_bandit_ucb_explores_a_rarely_tried_agent() -> None:
    router = RouterCore("bandit", rng=random.Random(0), epsilon=0.0)
    for _ in range(1000):
        router.record_outcome("code", "known", True, 0.0)
    router.record_outcome("code", "rare", False, 0.0)
    # one failure is weak evidence: the exploration bonus sqrt(2 ln 1001) > 1 wins
    assert route(router, task(), [agent("known"), agent("rare")]).agent_id == "rare"


def test_bandit_epsilon_explores_uniformly() -> None:
    router = RouterCore("bandit", rng=random.Random(42), epsilon=1.0)
    names = ["a", "b", "c", "d"]
    for name in names:
        router.record_outcome("code", name, name == "a", 1.0)
    picks: Counter[str] = Counter()
    for _ in range(400):
        decision = route(router, task(), [agent(name) for name in names])
        assert decision.reason == "bandit: exploring (epsilon 1)"
        picks[decision.agent_id] += 1
    assert set(picks) == set(names)
    assert all(60 <= count <= 140 for count in picks.values()), picks


def test_bandit_is_reproducible_with_a_seed() -> None:
    def run(seed: int) -> list[str]:
        router = RouterCore("bandit", rng=random.Random(seed), epsilon=0.5)
        outcomes = random.Random(seed)
        picks = []
        for _ in range(60):
            decision = route(router, task(), [agent("a"), agent("b"), agent("c")])
            picks.append(decision.agent_id)
            router.record_outcome("code", decision.agent_id, outcomes.random() < 0.5, 5.0)
        return picks

    assert run(3) == run(3)
    assert run(3) != run(4)


def test_forget_agent_drops_its_statistics() -> None:
    router = RouterCore("bandit", rng=random.Random(0), epsilon=0.0)
    router.record_outcome("code", "a", True, 1.0)
    router.record_outcome("mail", "a", True, 1.0)
    router.record_outcome("code", "b", True, 1.0)
    router.forget_agent("a")
    router.forget_agent("never-seen")
    assert router.bandit_stats("code") == {"b": (1, reward(True, 1.0))}
    assert router.bandit_stats("mail") == {}
    # a re-registered agent of the same id starts untried again
    assert route(router, task(), [agent("a"), agent("b")]).agent_id == "a"
    assert router.statistics()["task_types_learnt"] == 2


@pytest.mark.parametrize("seed", range(5))
def test_bandit_eventually_prefers_the_better_agent(seed: int) -> None:
    world = random.Random(1000 + seed)
    truth = {"a-flaky": 0.4, "b-good": 0.9, "c-slow": 0.9}
    latency = {"a-flaky": 10.0, "b-good": 10.0, "c-slow": 3000.0}
    router = RouterCore("bandit", rng=random.Random(seed), epsilon=0.05)
    agents = [agent(name) for name in truth]
    picks = []
    for _ in range(800):
        decision = route(router, task(), agents)
        picks.append(decision.agent_id)
        success = world.random() < truth[decision.agent_id]
        router.record_outcome("code", decision.agent_id, success, latency[decision.agent_id])
    late = Counter(picks[-300:])
    assert late.most_common(1)[0][0] == "b-good"
    assert late["b-good"] >= 0.8 * 300, late


# -- properties ------------------------------------------------------------------------------

CAPS = ("a", "b", "c", "d")


@st.composite
def agent_sets(draw: st.DrawFn) -> list[AgentView]:
    count = draw(st.integers(0, 8))
    views = []
    for index in range(count):
        max_concurrency = draw(st.integers(1, 4))
        buffer = draw(st.integers(0, 3))
        samples = draw(st.integers(0, 20))
        views.append(
            AgentView(
                agent_id=f"agent-{draw(st.integers(0, 99)):02d}-{index}",
                capabilities=draw(st.frozensets(st.sampled_from(CAPS), min_size=1)),
                max_concurrency=max_concurrency,
                load=draw(st.integers(0, max_concurrency + buffer)),
                buffer=buffer,
                healthy=draw(st.booleans()),
                success_rate=draw(st.floats(0.0, 1.0)),
                latency_ms=draw(st.floats(0.0, 1e5)) if samples else 0.0,
                samples=samples,
            )
        )
    return draw(st.permutations(views))


tasks = st.builds(
    lambda type_, caps: task(type_, *caps),
    st.sampled_from(CAPS),
    st.frozensets(st.sampled_from(CAPS), max_size=2),
)


@settings(max_examples=200, deadline=None)
@given(
    agents=agent_sets(),
    record=tasks,
    strategy=st.sampled_from(STRATEGIES),
    seed=st.integers(0, 2**32 - 1),
    warmup=st.lists(st.tuples(st.booleans(), st.floats(0.0, 1e4)), max_size=20),
)
def test_routing_never_picks_an_ineligible_agent(
    agents: list[AgentView],
    record: TaskRecord,
    strategy: str,
    seed: int,
    warmup: list[tuple[bool, float]],
) -> None:
    router = RouterCore(strategy, rng=random.Random(seed), epsilon=0.3)
    key = routing_key(record.spec)
    for index, (success, latency) in enumerate(warmup):  # some history for the bandit
        if agents:
            router.record_outcome(
                record.spec.type, agents[index % len(agents)].agent_id, success, latency
            )
    eligible = {
        a.agent_id
        for a in agents
        if key <= a.capabilities and a.healthy and a.load < a.max_concurrency + a.buffer
    }
    for _ in range(3):  # repeated, so round robin and bandit state moves on
        decision = router.route(record, agents)
        assert (decision is None) == (not eligible)
        if decision is None:
            continue
        assert decision.agent_id in eligible
        chosen = next(a for a in agents if a.agent_id == decision.agent_id)
        assert key <= chosen.capabilities
        assert chosen.healthy
        assert chosen.free_slots > 0
        alternatives = [alt.agent_id for alt in decision.alternatives]
        assert sorted(alternatives) == sorted(eligible - {decision.agent_id})
        assert all(math.isfinite(alt.score) for alt in decision.alternatives)
        assert math.isfinite(decision.score)


def test_choose_names_the_agent_route_would_and_none_without_one() -> None:
    agents = [agent("a", load=2), agent("b", load=0), agent("c", load=1)]
    assert RouterCore("least_loaded").choose(task(), agents) == "b"
    decision = RouterCore("least_loaded").route(task(), agents)
    assert decision is not None and decision.agent_id == "b"
    router = RouterCore("round_robin")
    assert [router.choose(task(), agents) for _ in range(4)] == ["a", "b", "c", "a"]
    assert router.choose(task("mail"), agents) is None
    assert router.statistics()["decisions"] == 4
    assert router.statistics()["unroutable"] == 1


@settings(max_examples=150, deadline=None)
@given(
    agents=agent_sets(),
    records=st.lists(tasks, min_size=1, max_size=12),
    strategy=st.sampled_from(STRATEGIES),
    seed=st.integers(0, 2**32 - 1),
    outcomes=st.lists(st.tuples(st.booleans(), st.floats(0.0, 1e4)), max_size=12),
)
def test_choose_picks_what_route_picks_with_the_same_effect(
    agents: list[AgentView],
    records: list[TaskRecord],
    strategy: str,
    seed: int,
    outcomes: list[tuple[bool, float]],
) -> None:
    """Twin routers, one asked with route() and one with choose(), stay in step: same
    picks, same counters, same round-robin cursors and bandit draws, whatever the mix."""
    explaining = RouterCore(strategy, rng=random.Random(seed), epsilon=0.3)
    quiet = RouterCore(strategy, rng=random.Random(seed), epsilon=0.3)
    for index, record in enumerate(records):
        decision = explaining.route(record, agents)
        assert quiet.choose(record, agents) == (decision.agent_id if decision else None)
        if decision is not None and index < len(outcomes):  # feed the bandit alike
            success, latency = outcomes[index]
            for router in (explaining, quiet):
                router.record_outcome(record.spec.type, decision.agent_id, success, latency)
    assert quiet.statistics() == explaining.statistics()


@settings(max_examples=200, deadline=None)
@given(
    agents=agent_sets(),
    records=st.lists(tasks, max_size=40),
    strategy=st.sampled_from(STRATEGIES),
    seed=st.integers(0, 2**32 - 1),
)
def test_choose_batch_is_choose_task_by_task_with_loads_updated(
    agents: list[AgentView], records: list[TaskRecord], strategy: str, seed: int
) -> None:
    """A batch decision is exactly the sequence of single ones, each seeing the loads the
    ones before it added, stopping once no healthy agent has room; same router state."""
    batch = RouterCore(strategy, rng=random.Random(seed), epsilon=0.3)
    single = RouterCore(strategy, rng=random.Random(seed), epsilon=0.3)
    choices, loads = batch.choose_batch(records, agents)
    views = list(agents)
    expected: list[str | None] = []
    for record in records:
        if not any(view.healthy and view.free_slots for view in views):
            break
        agent_id = single.choose(record, views)
        expected.append(agent_id)
        views = [
            view.evolve(load=view.load + 1) if view.agent_id == agent_id else view for view in views
        ]
    assert choices == expected
    assert loads == {view.agent_id: view.load for view in views}
    assert batch.statistics() == single.statistics()
    if len(choices) < len(records):  # it stopped early: every healthy agent is full
        assert all(not view.healthy or view.free_slots == 0 for view in views)


def test_choose_batch_breaks_ties_by_id_and_compares_load_shares() -> None:
    equal = [agent("a"), agent("b")]
    choices, loads = RouterCore("least_loaded").choose_batch([task(), task(), task()], equal)
    assert choices == ["a", "b", "a"]  # ties go to the smallest id, then the share decides
    assert loads == {"a": 2, "b": 1}
    uneven = [agent("a", load=1), agent("b", load=2), agent("c", max_concurrency=8, load=3)]
    choices, _ = RouterCore("least_loaded").choose_batch([task()], uneven)
    assert choices == ["a"]  # 1/4 beats 2/4 and 3/8


def test_choose_batch_spreads_by_load_share_and_leaves_the_rest() -> None:
    agents = [agent("a", max_concurrency=2), agent("b", max_concurrency=1, load=1)]
    records = [task() for _ in range(4)]
    choices, loads = RouterCore("least_loaded").choose_batch(records, agents)
    assert choices == ["a", "a"]  # b is full; a takes two, then nobody has room
    assert loads == {"a": 2, "b": 1}
    mixed = [agent("a", "code"), agent("m", "mail")]
    choices, _ = RouterCore("least_loaded").choose_batch([task("mail"), task("x")], mixed)
    assert choices == ["m", None]


@settings(max_examples=150, deadline=None)
@given(agents=agent_sets(), record=tasks)
def test_least_loaded_picks_a_minimum(agents: list[AgentView], record: TaskRecord) -> None:
    decision = RouterCore("least_loaded").route(record, agents)
    eligible = [a for a in agents if is_eligible(a, routing_key(record.spec))]
    if decision is None:
        assert not eligible
        return
    lowest = min(a.load / a.capacity for a in eligible)
    chosen = next(a for a in eligible if a.agent_id == decision.agent_id)
    assert chosen.load / chosen.capacity == lowest
    # and among the minima, the smallest id
    assert chosen.agent_id == min(a.agent_id for a in eligible if a.load / a.capacity == lowest)


@settings(max_examples=150, deadline=None)
@given(agents=agent_sets(), record=tasks)
def test_performance_picks_the_best_score(agents: list[AgentView], record: TaskRecord) -> None:
    decision = RouterCore("performance").route(record, agents)
    if decision is None:
        return
    assert all(decision.score >= alt.score for alt in decision.alternatives)
    assert all(0.0 <= alt.score <= 1.0 + 1e-9 for alt in decision.alternatives)
    assert 0.0 <= decision.score <= 1.0 + 1e-9


@settings(max_examples=150, deadline=None)
@given(
    names=st.sets(st.text("abcdefgh", min_size=1, max_size=4), min_size=1, max_size=6),
    rounds=st.integers(1, 5),
    offset=st.integers(0, 10),
    noise=st.lists(st.sampled_from(CAPS), max_size=10),
)
def test_round_robin_is_fair(names: set[str], rounds: int, offset: int, noise: list[str]) -> None:
    """Over k full cycles every eligible agent is picked exactly k times, each cycle being
    a permutation, whatever happened before and whatever other keys interleave."""
    router = RouterCore("round_robin")
    agents = [agent(name, "code", *CAPS) for name in sorted(names)]
    for _ in range(offset):  # start the cycle anywhere
        route(router, task(), agents)
    picks = []
    for index in range(rounds * len(agents)):
        if index < len(noise):  # routing other keys must not move this key's cursor
            route(router, task(noise[index]), agents)
        picks.append(route(router, task(), agents).agent_id)
    assert Counter(picks) == {name: rounds for name in names}
    for start in range(0, len(picks), len(agents)):
        assert sorted(picks[start : start + len(agents)]) == sorted(names)


# -- boundaries and wiring found by mutation testing ------------------------------------------


def test_option_boundaries_are_accepted() -> None:
    for exploration in (0.0, 0.5):
        RouterCore("bandit", exploration=exploration)
    RouterCore("bandit", latency_scale_ms=0.5)
    with pytest.raises(ValueError) as info:
        RouterCore("fastest")
    assert str(info.value) == (
        "unknown routing strategy 'fastest'; valid: round_robin, least_loaded, performance, bandit"
    )
    with pytest.raises(ValueError) as info:
        PerformanceWeights(0.0, 0.0, 0.0)
    assert str(info.value) == "performance weights must be finite, >= 0, and not all 0"


def test_bandit_explores_with_its_own_generator_when_none_is_given() -> None:
    router = RouterCore("bandit", epsilon=1.0)
    for name in "ab":
        router.record_outcome("code", name, True, 1.0)
    decision = route(router, task(), [agent("a"), agent("b")])
    assert decision.reason == "bandit: exploring (epsilon 1)"
    assert decision.agent_id in {"a", "b"}


def test_bandit_scores_an_untried_agent_as_one_perfect_sample() -> None:
    router = RouterCore("bandit", rng=random.Random(0), epsilon=0.0)
    # nothing tried yet: ln(1) = 0, so the optimistic score is exactly 1
    first = route(router, task(), [agent("a"), agent("b")])
    assert (first.agent_id, first.score) == ("a", 1.0)
    assert [alt.score for alt in first.alternatives] == [1.0]
    for _ in range(2):
        router.record_outcome("code", "a", True, 0.0)
    # after 2 outcomes: 1 + c * sqrt(ln 2 / 1), the UCB1 score of one perfect sample
    second = route(router, task(), [agent("a"), agent("b")])
    assert second.agent_id == "b"
    assert second.score == pytest.approx(1.0 + math.sqrt(2.0) * math.sqrt(math.log(2)))
    assert second.alternatives[0].score == pytest.approx(1.0 + math.sqrt(2.0 * math.log(2) / 2))


class _Fixed(random.Random):
    """A generator whose random() always returns the same value."""

    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


def test_bandit_explores_with_probability_exactly_epsilon() -> None:
    # random() is uniform on [0, 1): exploring iff it is below epsilon has probability epsilon
    for draw, exploring in ((0.2499, True), (0.25, False)):
        router = RouterCore("bandit", rng=_Fixed(draw), epsilon=0.25)
        for name in "ab":
            router.record_outcome("code", name, name == "a", 1.0)
        decision = route(router, task(), [agent("a"), agent("b")])
        assert decision.reason.startswith("bandit: exploring") is exploring


def test_bandit_rewards_use_the_configured_latency_scale() -> None:
    router = RouterCore("bandit", latency_scale_ms=100.0)
    router.record_outcome("code", "a", True, 100.0)
    assert router.bandit_stats("code") == {"a": (1, 0.75)}


def test_reasons_say_first_turn_and_unknown_latency() -> None:
    router = RouterCore("round_robin")
    agents = [agent("a"), agent("b")]
    assert route(router, task(), agents).reason == "round robin: first turn, 2 eligible"
    assert route(router, task(), agents).reason == "round robin: after 'a', 2 eligible"
    decision = route(RouterCore("performance"), task(), [agent("a", load=1)])
    assert decision.reason == ("performance: score 0.950 (success 1.00, unknown latency, load 1/4)")


def test_decisions_are_counted() -> None:
    router = RouterCore()
    for _ in range(3):
        route(router, task(), [agent("a")])
    assert router.route(task(), []) is None
    assert router.statistics()["decisions"] == 3
    assert router.statistics()["unroutable"] == 1


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["x", "y"]),
            st.booleans(),
            st.floats(min_value=-1.0, max_value=1e6, allow_nan=False),
        ),
        max_size=40,
    )
)
def test_a_released_batch_of_outcomes_feeds_the_bandit_as_one_call_each(
    outcomes: list[tuple[str, bool, float]],
) -> None:
    one_by_one, batched = RouterCore("bandit"), RouterCore("bandit")
    for task_type, success, latency in outcomes:
        one_by_one.record_outcome(task_type, "a1", success, latency)
    batched.record_outcomes("a1", [(None, t, ok, ms) for t, ok, ms in outcomes])
    for task_type in ("x", "y"):
        assert batched.bandit_stats(task_type) == one_by_one.bandit_stats(task_type)
    assert batched.statistics() == one_by_one.statistics()
