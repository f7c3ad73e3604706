"""The routing core: which eligible agent gets a task, and why.

A pure class (no threads, no clock, no I/O); randomness comes from an injected
``random.Random``. The router decides on :class:`~messages.AgentView` snapshots, so it
never reads live registry state.

Eligibility is the same for every strategy: an agent may take a task iff it has every
capability in the task's routing key (the task type plus its required capabilities), is
healthy, and has a free slot. Among the eligible agents a strategy picks one:

``round_robin``
    Cycles over the eligible agents in agent-id order, with one cursor per routing key
    (so tasks of one kind are spread evenly even when other kinds interleave). The cursor
    remembers the last agent *id* chosen, not an index, so agents joining, leaving or
    filling up never make the cycle skip or repeat the others.
``least_loaded``
    Lowest ``load / capacity`` (slots plus buffer); ties go to the smallest agent id.
``performance``
    Highest weighted score of success rate, latency and load (see
    :class:`PerformanceWeights`); ties go to the smallest agent id.
``bandit``
    UCB1 over the agents per task type, on rewards fed back by :meth:`RouterCore.record_outcome`
    (see :func:`reward`). Agents never tried for the type go first; otherwise, with
    probability ``epsilon``, an eligible agent is picked uniformly at random (exploration
    that survives a changing agent set), else the highest UCB1 score wins.

Every decision names the chosen agent, the strategy, its score (higher is better), a short
human reason, and the other eligible agents with their scores.
"""

from __future__ import annotations

import math
import operator
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from actors.core.queue import key_of
from messages import AgentView, Alternative, RoutingDecision, TaskRecord, TaskSpec

__all__ = [
    "DEFAULT_WEIGHTS",
    "STRATEGIES",
    "PerformanceWeights",
    "RouterCore",
    "is_eligible",
    "reward",
    "routing_key",
]

STRATEGIES: Final = ("round_robin", "least_loaded", "performance", "bandit")
"""The valid strategy names, in the order they are documented."""

LATENCY_SMOOTHING_MS: Final = 1.0
"""Added to latencies before comparing them, so sub-millisecond noise (0.01 ms vs 0.02 ms,
or an agent reporting 0 ms) does not count as a 2x difference."""


def routing_key(spec: TaskSpec) -> frozenset[str]:
    """The capabilities an agent needs for the task: its type plus its required ones."""
    return key_of(spec.type, spec.required_capabilities)


_agent_id: Final = operator.attrgetter("agent_id")


def _load_share(agent: AgentView) -> float:
    return agent.load / (agent.max_concurrency + agent.buffer)  # capacity, inlined


def is_eligible(agent: AgentView, key: frozenset[str]) -> bool:
    """True iff ``agent`` has every capability in ``key``, is healthy and has room (a free
    slot, or room in its buffer)."""
    return agent.healthy and agent.load < agent.capacity and key <= agent.capabilities


def reward(success: bool, latency_ms: float, latency_scale_ms: float = 1000.0) -> float:
    """The bandit's reward for one outcome, in [0, 1].

    A failure earns 0. A success earns ``1 - 0.5 * latency / (latency + scale)``: 1.0 for
    an instant success, 0.75 at ``latency_scale_ms``, tending to 0.5 for very slow ones, so
    any success beats any failure, and among reliable agents the faster one wins.
    """
    if not success:
        return 0.0
    latency = max(0.0, latency_ms)
    return 1.0 - 0.5 * latency / (latency + latency_scale_ms)


@dataclass(frozen=True, slots=True)
class PerformanceWeights:
    """Weights of the ``performance`` strategy's score; normalised to sum to 1.

    Each term is in [0, 1] (higher is better), so the score is in [0, 1]:

    * ``success``: the agent's success rate;
    * ``latency``: ``(fastest + 1 ms) / (own + 1 ms)`` among the candidates that have
      samples: 1.0 for the fastest, 0.5 for one twice as slow. Agents without samples get
      the average of the others (neither rewarded nor punished for being unknown), or 1.0
      when no candidate has samples;
    * ``load``: the agent's free share, ``1 - load / capacity``.

    The defaults (0.5, 0.3, 0.2) put reliability first: an agent that fails half its tasks
    costs a retry per task, which no latency gain makes up for; load weighs least because
    eligibility already guarantees a free slot, it only spreads work among equals.
    """

    success: float = 0.5
    latency: float = 0.3
    load: float = 0.2

    def __post_init__(self) -> None:
        terms = (self.success, self.latency, self.load)
        if not all(0.0 <= term < math.inf for term in terms) or sum(terms) <= 0.0:
            raise ValueError("performance weights must be finite, >= 0, and not all 0")

    def normalised(self) -> tuple[float, float, float]:
        """The (success, latency, load) weights scaled to sum to 1."""
        total = self.success + self.latency + self.load
        return self.success / total, self.latency / total, self.load / total


DEFAULT_WEIGHTS: Final = PerformanceWeights()
"""The default weights of the ``performance`` strategy."""


@dataclass(slots=True)
class _Arm:
    """Bandit statistics of one (task type, agent) pair."""

    count: int = 0
    total: float = 0.0

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0


class RouterCore:
    """Chooses an agent for each task with one of :data:`STRATEGIES`.

    ``rng`` drives the bandit's exploration (a fresh ``random.Random()`` when omitted;
    pass a seeded one for reproducible runs). ``epsilon`` is the bandit's exploration
    probability, ``exploration`` the UCB1 constant ``c`` in
    ``mean + c * sqrt(ln(total) / count)`` (``sqrt(2)``, the textbook value, by default),
    ``latency_scale_ms`` the latency at which a success's reward drops to 0.75.
    ``max_alternatives`` caps the alternatives listed per decision (None: all of them).
    """

    def __init__(
        self,
        strategy: str = "least_loaded",
        rng: random.Random | None = None,
        epsilon: float = 0.1,
        weights: PerformanceWeights = DEFAULT_WEIGHTS,
        *,
        exploration: float = math.sqrt(2.0),
        latency_scale_ms: float = 1000.0,
        max_alternatives: int | None = None,
    ) -> None:
        """Validate the options; raises ``ValueError`` for an unknown strategy or bad value."""
        if strategy not in STRATEGIES:
            raise ValueError(
                f"unknown routing strategy {strategy!r}; valid: {', '.join(STRATEGIES)}"
            )
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError(f"epsilon must be in [0, 1], got {epsilon!r}")
        if not 0.0 <= exploration < math.inf:
            raise ValueError(f"exploration must be finite and >= 0, got {exploration!r}")
        if not 0.0 < latency_scale_ms < math.inf:
            raise ValueError(f"latency_scale_ms must be finite and > 0, got {latency_scale_ms!r}")
        if max_alternatives is not None and max_alternatives < 0:
            raise ValueError(f"max_alternatives must be >= 0, got {max_alternatives!r}")
        self._strategy = strategy
        self._rng = rng if rng is not None else random.Random()
        self._epsilon = epsilon
        self._weights = weights
        self._exploration = exploration
        self._latency_scale_ms = latency_scale_ms
        self._max_alternatives = max_alternatives
        # round_robin: routing key -> id of the agent chosen last for that key.
        self._cursors: dict[frozenset[str], str] = {}
        # bandit: task type -> agent id -> statistics.
        self._arms: dict[str, dict[str, _Arm]] = {}
        self._decisions = 0
        self._unroutable = 0

    @property
    def strategy(self) -> str:
        """The strategy this router uses."""
        return self._strategy

    # -- routing ------------------------------------------------------------------------

    def eligible(self, task: TaskRecord, agents: Sequence[AgentView]) -> list[AgentView]:
        """The agents that may take ``task``, sorted by agent id."""
        key = routing_key(task.spec)
        found = [
            agent
            for agent in agents
            # (is_eligible, inlined: this runs per task and per agent)
            if agent.healthy
            and agent.load < agent.max_concurrency + agent.buffer
            and key <= agent.capabilities
        ]
        if len(found) > 1:
            found.sort(key=_agent_id)
        return found

    def route(self, task: TaskRecord, agents: Sequence[AgentView]) -> RoutingDecision | None:
        """Choose an agent for ``task`` among ``agents``; None if no agent is eligible.

        The router does not change the views: a caller routing several tasks in a batch
        passes views updated with the loads it has just assigned.
        """
        picked = self._pick(task, agents)
        if picked is None:
            return None
        candidates, scores, chosen, reason = picked
        return self._decision(task, candidates, scores, chosen, reason)

    def choose(self, task: TaskRecord, agents: Sequence[AgentView]) -> str | None:
        """The id of the agent :meth:`route` would choose, with the same effect on this
        router's state (round-robin cursors, bandit draws, counters), but without building
        the decision: for a caller that does not report it (nobody listens to events)."""
        if self._strategy == "least_loaded":
            # The same pick as _least_loaded without its scores and reason: the lowest
            # load / capacity (min keeps the first of equals: the smallest agent id).
            candidates = self.eligible(task, agents)
            if not candidates:
                self._unroutable += 1
                return None
            self._decisions += 1
            if len(candidates) == 1:
                return candidates[0].agent_id
            return min(candidates, key=_load_share).agent_id
        picked = self._pick(task, agents)
        return None if picked is None else picked[0][picked[2]].agent_id

    def choose_batch(
        self, tasks: Sequence[TaskRecord], agents: Sequence[AgentView]
    ) -> tuple[list[str | None], dict[str, int]]:
        """:meth:`choose` for each of ``tasks`` in turn, each seeing the loads the ones
        before it added; stops once no agent has room left.

        Returns the choices (one per task considered, None where no agent was eligible;
        the tasks after the last choice were not considered) and the agents' loads after
        them. The same choices and the same effect on this router's state as calling
        :meth:`choose` task by task with views updated after each assignment, at a
        fraction of the cost for ``least_loaded``: eligibility is worked out once per
        routing key, and loads are counted, not copied into new views.
        """
        loads = {agent.agent_id: agent.load for agent in agents}
        room = sum(
            max(0, agent.max_concurrency + agent.buffer - agent.load)
            for agent in agents
            if agent.healthy
        )
        choices: list[str | None] = []
        if self._strategy != "least_loaded":
            views = list(agents)
            position = {agent.agent_id: index for index, agent in enumerate(views)}
            for task in tasks:
                if room <= 0:
                    break
                agent_id = self.choose(task, views)
                choices.append(agent_id)
                if agent_id is not None:
                    loads[agent_id] += 1
                    index = position[agent_id]
                    views[index] = views[index].evolve(load=loads[agent_id])
                    room -= 1
            return choices, loads
        # least_loaded: per routing key, the capable healthy agents (by id) and their
        # capacities; an agent is eligible while its load is below its capacity.
        by_key: dict[frozenset[str], list[tuple[str, int]]] = {}
        for task in tasks:
            if room <= 0:
                break
            key = routing_key(task.spec)
            capable = by_key.get(key)
            if capable is None:
                capable = by_key[key] = sorted(
                    (agent.agent_id, agent.max_concurrency + agent.buffer)
                    for agent in agents
                    if agent.healthy and key <= agent.capabilities
                )
            best: str | None = None
            best_share = 2.0  # above any load share of an agent with room (< 1)
            for agent_id, capacity in capable:
                load = loads[agent_id]
                # The lowest load / capacity; the first of equals (smallest id) wins.
                if load < capacity and load / capacity < best_share:
                    best, best_share = agent_id, load / capacity
            if best is None:
                self._unroutable += 1
            else:
                self._decisions += 1
                loads[best] += 1
                room -= 1
            choices.append(best)
        return choices, loads

    def _pick(
        self, task: TaskRecord, agents: Sequence[AgentView]
    ) -> tuple[list[AgentView], list[float], int, str] | None:
        candidates = self.eligible(task, agents)
        if not candidates:
            self._unroutable += 1
            return None
        if self._strategy == "round_robin":
            scores, chosen, reason = self._round_robin(task, candidates)
        elif self._strategy == "least_loaded":
            scores, chosen, reason = self._least_loaded(candidates)
        elif self._strategy == "performance":
            scores, chosen, reason = self._performance(candidates)
        else:
            scores, chosen, reason = self._bandit(task, candidates)
        self._decisions += 1
        return candidates, scores, chosen, reason

    def _decision(
        self,
        task: TaskRecord,
        candidates: list[AgentView],
        scores: list[float],
        chosen: int,
        reason: str,
    ) -> RoutingDecision:
        others = sorted(
            (
                (scores[index], agent.agent_id)
                for index, agent in enumerate(candidates)
                if index != chosen
            ),
            key=lambda pair: (-pair[0], pair[1]),
        )
        if self._max_alternatives is not None:
            others = others[: self._max_alternatives]
        # model_construct: every value was computed here from validated views and records,
        # so re-validating on the hot path would only cost time (see DESIGN.md).
        return RoutingDecision.fast(
            task_id=task.task_id,
            agent_id=candidates[chosen].agent_id,
            strategy=self._strategy,
            score=scores[chosen],
            reason=reason,
            alternatives=tuple(
                Alternative.fast(agent_id=agent_id, score=score) for score, agent_id in others
            ),
        )

    def _round_robin(
        self, task: TaskRecord, candidates: list[AgentView]
    ) -> tuple[list[float], int, str]:
        key = routing_key(task.spec)
        last = self._cursors.get(key)
        # The next agent is the first whose id sorts after the last one chosen, wrapping
        # around; candidates are sorted by id.
        chosen = 0
        if last is not None:
            chosen = next(
                (index for index, agent in enumerate(candidates) if agent.agent_id > last), 0
            )
        self._cursors[key] = candidates[chosen].agent_id
        count = len(candidates)
        # Score = how soon the agent's turn comes: 1.0 now, then down in steps of 1/count.
        scores = [1.0 - ((index - chosen) % count) / count for index in range(count)]
        after = f"after {last!r}" if last is not None else "first turn"
        reason = f"round robin: {after}, {count} eligible"
        return scores, chosen, reason

    def _least_loaded(self, candidates: list[AgentView]) -> tuple[list[float], int, str]:
        # Float division orders load/max exactly here: both are ints <= 10_000, and two
        # distinct such fractions differ by far more than a float's rounding error.
        scores = [1.0 - agent.load / agent.capacity for agent in candidates]
        # max() keeps the first of equal scores, i.e. the smallest agent id.
        chosen = max(range(len(candidates)), key=scores.__getitem__)
        agent = candidates[chosen]
        reason = f"least loaded: {agent.load}/{agent.capacity} slots in use"
        return scores, chosen, reason

    def _performance(self, candidates: list[AgentView]) -> tuple[list[float], int, str]:
        w_success, w_latency, w_load = self._weights.normalised()
        sampled = [agent.latency_ms for agent in candidates if agent.samples > 0]
        latency_terms: list[float | None] = [None] * len(candidates)
        if sampled:
            fastest = min(sampled) + LATENCY_SMOOTHING_MS
            for index, agent in enumerate(candidates):
                if agent.samples > 0:
                    latency_terms[index] = fastest / (agent.latency_ms + LATENCY_SMOOTHING_MS)
            known = [term for term in latency_terms if term is not None]
            neutral = sum(known) / len(known)
        else:
            neutral = 1.0
        scores = []
        for agent, latency_term in zip(candidates, latency_terms, strict=True):
            scores.append(
                w_success * agent.success_rate
                + w_latency * (neutral if latency_term is None else latency_term)
                + w_load * (1.0 - agent.load / agent.capacity)
            )
        chosen = max(range(len(candidates)), key=scores.__getitem__)
        agent = candidates[chosen]
        latency = f"{agent.latency_ms:.1f} ms" if agent.samples else "unknown latency"
        reason = (
            f"performance: score {scores[chosen]:.3f} (success {agent.success_rate:.2f}, "
            f"{latency}, load {agent.load}/{agent.capacity})"
        )
        return scores, chosen, reason

    def _bandit(
        self, task: TaskRecord, candidates: list[AgentView]
    ) -> tuple[list[float], int, str]:
        arms = self._arms.get(task.spec.type, {})
        stats = [arms.get(agent.agent_id, _Arm()) for agent in candidates]
        total = sum(arm.count for arm in stats)
        log_total = math.log(max(total, 1))
        # An untried agent is scored as if it had one perfect sample: an optimistic upper
        # bound, reported for information (untried agents are chosen first regardless).
        untried_score = 1.0 + self._exploration * math.sqrt(log_total)
        scores = [
            arm.mean + self._exploration * math.sqrt(log_total / arm.count)
            if arm.count
            else untried_score
            for arm in stats
        ]
        untried = [index for index, arm in enumerate(stats) if arm.count == 0]
        if untried:
            chosen = untried[0]
            reason = f"bandit: untried for type {task.spec.type!r}"
        elif self._epsilon > 0.0 and self._rng.random() < self._epsilon:
            chosen = self._rng.randrange(len(candidates))
            reason = f"bandit: exploring (epsilon {self._epsilon:g})"
        else:
            chosen = max(range(len(candidates)), key=scores.__getitem__)
            arm = stats[chosen]
            reason = f"bandit: best UCB1 (mean reward {arm.mean:.3f} over {arm.count})"
        return scores, chosen, reason

    # -- feedback and bookkeeping -------------------------------------------------------

    def record_outcome(
        self, task_type: str, agent_id: str, success: bool, latency_ms: float
    ) -> None:
        """Feed one task outcome to the bandit statistics of (task type, agent).

        Kept for every strategy (cheap), so switching to ``bandit`` starts informed.
        """
        arm = self._arms.setdefault(task_type, {}).setdefault(agent_id, _Arm())
        arm.count += 1
        arm.total += reward(success, latency_ms, self._latency_scale_ms)

    def record_outcomes(
        self, agent_id: str, outcomes: Sequence[tuple[object, str, bool, float]]
    ) -> None:
        """:meth:`record_outcome` of each ``(task_id, task_type, success, latency_ms)`` of
        one agent in turn (a ``Released``'s outcomes), with the same sums, in one call."""
        arms = self._arms
        scale = self._latency_scale_ms
        arm: _Arm | None = None
        arm_type: str | None = None
        for _, task_type, success, latency_ms in outcomes:
            if task_type != arm_type or arm is None:
                arm = arms.setdefault(task_type, {}).setdefault(agent_id, _Arm())
                arm_type = task_type
            arm.count += 1
            arm.total += reward(success, latency_ms, scale)

    def forget_agent(self, agent_id: str) -> None:
        """Drop what the router learnt about a deregistered agent (bounded memory)."""
        for arms in self._arms.values():
            arms.pop(agent_id, None)

    def bandit_stats(self, task_type: str) -> dict[str, tuple[int, float]]:
        """Per agent: (outcomes recorded, mean reward) for ``task_type``."""
        return {
            agent_id: (arm.count, arm.mean)
            for agent_id, arm in sorted(self._arms.get(task_type, {}).items())
        }

    def statistics(self) -> dict[str, int | str]:
        """Counters for the router actor's statistics (JSON-able)."""
        return {
            "strategy": self._strategy,
            "decisions": self._decisions,
            "unroutable": self._unroutable,
            "task_types_learnt": len(self._arms),
        }
