"""The performance core: latency percentiles, success rates and throughput.

A pure module (no threads, no clock, no I/O): times are monotonic floats passed in by
the caller. :class:`LatencyHistogram` is a streaming, bounded-memory percentile sketch;
:class:`PerformanceCore` keeps one per agent, per task type, overall, and for the
runtime's own routing+assignment and end-to-end latencies.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from messages.pipeline import OutcomeItem

__all__ = ["LatencyHistogram", "OutcomeStats", "PerformanceCore"]

ZERO_THRESHOLD_MS = 1e-9
"""Latencies below this count as exactly 0 (a femtosecond is noise, and it keeps the log
buckets away from subnormal floats, whose own relative precision is poor)."""


class LatencyHistogram:
    """A streaming latency histogram with log-spaced buckets (a DDSketch-style sketch).

    A value ``v > 0`` falls in bucket ``i = ceil(log(v) / log(gamma))`` with
    ``gamma = (1 + a) / (1 - a)``, ``a`` being ``relative_accuracy``; the bucket is
    reported as ``2 * gamma**i / (gamma + 1)``, which is within ``a * v`` of every value
    in it. So :meth:`percentile` is within relative error ``a`` (1% by default) of the
    exact nearest-rank percentile, except:

    * values below :data:`ZERO_THRESHOLD_MS` are counted as 0 (absolute error < 1e-9 ms);
    * memory is bounded to ``max_buckets`` buckets: when more are needed, the lowest
      buckets are merged into one, so only the *lowest* percentiles lose precision. With
      the defaults that needs values spread over a ratio above ``gamma**2048 ~ 6e17``
      (say 1 ns to 19 years), which latencies never are.

    ``min``, ``max``, ``mean`` and the 0th and 100th percentiles are exact.
    """

    __slots__ = (
        "_buckets",
        "_count",
        "_floor",
        "_gamma",
        "_log_gamma",
        "_max",
        "_max_buckets",
        "_min",
        "_relative_accuracy",
        "_sum",
        "_zero",
    )

    def __init__(self, relative_accuracy: float = 0.01, max_buckets: int = 2048) -> None:
        """Create an empty histogram; raises ``ValueError`` for options out of range."""
        if not 0.0 < relative_accuracy < 1.0:
            raise ValueError(f"relative_accuracy must be in (0, 1), got {relative_accuracy!r}")
        if max_buckets < 1:
            raise ValueError(f"max_buckets must be >= 1, got {max_buckets!r}")
        self._relative_accuracy = relative_accuracy
        self._max_buckets = max_buckets
        self._gamma = (1.0 + relative_accuracy) / (1.0 - relative_accuracy)
        self._log_gamma = math.log(self._gamma)
        self._buckets: dict[int, int] = {}
        # After a collapse, indices below this one are counted in it (see _collapse).
        self._floor: int | None = None
        self._zero = 0
        self._count = 0
        self._sum = 0.0
        self._min = math.inf
        self._max = -math.inf

    @property
    def relative_accuracy(self) -> float:
        """The relative error bound ``a`` of the percentiles."""
        return self._relative_accuracy

    @property
    def max_buckets(self) -> int:
        """The most buckets this histogram keeps."""
        return self._max_buckets

    @property
    def bucket_count(self) -> int:
        """Buckets in use now (excluding the zero bucket); never above ``max_buckets``."""
        return len(self._buckets)

    @property
    def count(self) -> int:
        """Number of values recorded."""
        return self._count

    @property
    def min(self) -> float | None:
        """The smallest value recorded (exact), or None when empty."""
        return self._min if self._count else None

    @property
    def max(self) -> float | None:
        """The largest value recorded (exact), or None when empty."""
        return self._max if self._count else None

    @property
    def mean(self) -> float | None:
        """The mean of the values recorded, or None when empty."""
        return self._sum / self._count if self._count else None

    def record(self, ms: float) -> None:
        """Add one latency in milliseconds; raises ``ValueError`` if negative or not finite."""
        if not 0.0 <= ms < math.inf:
            raise ValueError(f"latency must be finite and >= 0, got {ms!r}")
        self._add(ms, self.index_of(ms))

    def index_of(self, ms: float) -> int | None:
        """The bucket of a valid latency ``ms`` (None: the zero bucket). Histograms of the
        same relative accuracy agree, so one value recorded in several is indexed once."""
        if ms < ZERO_THRESHOLD_MS:
            return None
        return math.ceil(math.log(ms) / self._log_gamma)

    def indices_of(self, values: Sequence[float]) -> list[int | None]:
        """``[index_of(ms) for ms in values]``, in one call (no call per value)."""
        log, ceil, gamma, zero = math.log, math.ceil, self._log_gamma, ZERO_THRESHOLD_MS
        return [None if ms < zero else ceil(log(ms) / gamma) for ms in values]

    def _add(self, ms: float, index: int | None) -> None:
        """Record a valid ``ms`` whose bucket is ``index`` (from :meth:`index_of`)."""
        self._count += 1
        self._sum += ms
        if ms < self._min:
            self._min = ms
        if ms > self._max:
            self._max = ms
        if index is None:
            self._zero += 1
            return
        if self._floor is not None and index < self._floor:
            index = self._floor
        buckets = self._buckets
        buckets[index] = buckets.get(index, 0) + 1
        if len(buckets) > self._max_buckets:
            self._collapse()

    def record_many(self, values: Sequence[float]) -> None:
        """``record`` each of ``values`` in turn (the same state as one call each); raises
        ``ValueError`` for a negative or non-finite one before anything is recorded."""
        for ms in values:
            if not 0.0 <= ms < math.inf:
                raise ValueError(f"latency must be finite and >= 0, got {ms!r}")
        self._add_many(values, self.indices_of(values))

    def _add_many(self, values: Sequence[float], indices: Sequence[int | None]) -> None:
        """``_add`` each valid value with its index in turn, in one call: the same sum (added
        in the same order), extremes, buckets and collapses."""
        if not values:
            return
        self._count += len(values)
        total = self._sum
        for ms in values:
            total += ms
        self._sum = total
        low, high = min(values), max(values)
        if low < self._min:
            self._min = low
        if high > self._max:
            self._max = high
        buckets = self._buckets
        limit = self._max_buckets
        floor = self._floor
        zero = 0
        for index in indices:
            if index is None:
                zero += 1
                continue
            if floor is not None and index < floor:
                index = floor
            count = buckets.get(index)
            if count is not None:
                buckets[index] = count + 1
                continue
            buckets[index] = 1
            if len(buckets) > limit:
                self._collapse()
                floor = self._floor
        self._zero += zero

    def _collapse(self) -> None:
        # Merge the lowest buckets into the lowest one kept: low percentiles lose precision,
        # the high ones people watch (p95, p99) keep it.
        keys = sorted(self._buckets)
        excess = len(keys) - self._max_buckets
        floor = keys[excess]
        moved = sum(self._buckets.pop(key) for key in keys[:excess])
        self._buckets[floor] += moved
        self._floor = floor

    def percentile(self, p: float) -> float | None:
        """The nearest-rank ``p``-th percentile (``p`` in [0, 100]), or None when empty.

        Nearest rank: the value of rank ``ceil(p / 100 * count)`` (at least 1) in sorted
        order, computed in exact arithmetic on ``p`` so no float rounding shifts the rank.
        """
        if not 0.0 <= p <= 100.0:
            raise ValueError(f"percentile must be in [0, 100], got {p!r}")
        if not self._count:
            return None
        rank = max(1, math.ceil(Fraction(p) * self._count / 100))
        if rank == 1:
            return self._min
        if rank == self._count:
            return self._max
        seen = self._zero
        if seen >= rank:
            return self._min  # the rank falls among the zeros; min is one of them (exact)
        for index in sorted(self._buckets):
            seen += self._buckets[index]
            if seen >= rank:
                estimate = 2.0 * self._gamma**index / (self._gamma + 1.0)
                # Clamping to the exact range only ever moves the estimate closer.
                return min(max(estimate, self._min), self._max)
        raise AssertionError("bucket counts do not add up to the count")  # pragma: no cover

    def merge(self, other: LatencyHistogram) -> None:
        """Add every value of ``other`` into this histogram.

        Raises ``ValueError`` unless both have the same relative accuracy (their buckets
        would not line up). ``other`` is left unchanged.
        """
        if other._gamma != self._gamma:
            raise ValueError(
                "cannot merge histograms of different relative accuracy "
                f"({self._relative_accuracy} and {other._relative_accuracy})"
            )
        floors = [floor for floor in (self._floor, other._floor) if floor is not None]
        floor = max(floors) if floors else None
        merged = dict(self._buckets)
        for index, count in other._buckets.items():
            merged[index] = merged.get(index, 0) + count
        if floor is not None:
            # A collapsed side counted everything below its floor in the floor bucket, so
            # below the higher floor the merged buckets would mix exact and folded counts:
            # fold them too, keeping "indices below the floor live in it" true.
            below = [index for index in merged if index < floor]
            if below:
                merged[floor] = merged.get(floor, 0) + sum(merged.pop(i) for i in below)
        self._buckets = merged
        self._floor = floor
        self._zero += other._zero
        self._count += other._count
        self._sum += other._sum
        self._min = min(self._min, other._min)
        self._max = max(self._max, other._max)
        if len(self._buckets) > self._max_buckets:
            self._collapse()

    def copy(self) -> LatencyHistogram:
        """An independent copy."""
        clone = LatencyHistogram(self._relative_accuracy, self._max_buckets)
        clone.merge(self)
        return clone

    def summary(self) -> dict[str, float | int | None]:
        """count, min, max, mean, p50, p95, p99 (JSON-able; None when empty)."""
        return {
            "count": self._count,
            "min": self.min,
            "max": self.max,
            "mean": self.mean,
            "p50": self.percentile(50),
            "p95": self.percentile(95),
            "p99": self.percentile(99),
        }


class _Rate:
    """An EWMA of throughput (events per second) from event timestamps.

    Each time the clock has moved since the last sample, the events since then divided by
    the elapsed time is one sample of the rate; samples are smoothed with weight
    ``alpha``. Events at the same instant (a batch of outcomes) wait for the clock to
    move, so a batch never makes a division by zero or an infinite rate.
    """

    __slots__ = ("alpha", "last", "pending", "rate")

    def __init__(self, alpha: float) -> None:
        self.alpha = alpha
        self.last: float | None = None
        self.pending = 0
        self.rate: float | None = None

    def record(self, now: float) -> None:
        if self.last is None:
            self.last = now  # the first event starts the clock; rates need an interval
            return
        self.pending += 1
        elapsed = now - self.last
        if elapsed <= 0.0:
            return  # same instant (or a clock that stepped back): wait for time to move
        sample = self.pending / elapsed
        self.rate = (
            sample if self.rate is None else (self.alpha * sample + (1.0 - self.alpha) * self.rate)
        )
        self.pending = 0
        self.last = now

    def record_many(self, now: float, count: int) -> None:
        """``record(now)`` ``count`` times (events at one instant): one sample at most."""
        if count <= 0:
            return
        if self.last is None:
            self.last = now
            count -= 1
            if not count:
                return
        self.record(now)
        self.pending += count - 1  # the others come at the same instant: they wait

    def value(self, now: float | None) -> float | None:
        if self.rate is None or self.last is None:
            return None
        if now is not None and now > self.last:
            # Without `now` an agent that stopped would show its old rate forever; with it,
            # the rate is capped by what one more event right now would give.
            return min(self.rate, (self.pending + 1) / (now - self.last))
        return self.rate


@dataclass(frozen=True, slots=True)
class OutcomeStats:
    """Outcome statistics of one agent, one task type, or everything.

    Rates and latencies are None while there is nothing to compute them from.
    """

    count: int
    successes: int
    failures: int
    success_rate: float | None
    latency_mean_ms: float | None
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    latency_p99_ms: float | None
    throughput_per_s: float | None

    def to_dict(self) -> dict[str, float | int | None]:
        """The statistics as a JSON-able dict."""
        return {
            "count": self.count,
            "successes": self.successes,
            "failures": self.failures,
            "success_rate": self.success_rate,
            "latency_mean_ms": self.latency_mean_ms,
            "latency_p50_ms": self.latency_p50_ms,
            "latency_p95_ms": self.latency_p95_ms,
            "latency_p99_ms": self.latency_p99_ms,
            "throughput_per_s": self.throughput_per_s,
        }


class _Series:
    """Counters, latency histogram and throughput of one stream of outcomes."""

    __slots__ = ("failures", "latency", "rate", "successes")

    def __init__(self, alpha: float, relative_accuracy: float, max_buckets: int) -> None:
        self.successes = 0
        self.failures = 0
        self.latency = LatencyHistogram(relative_accuracy, max_buckets)
        self.rate = _Rate(alpha)

    def record(self, success: bool, latency_ms: float, now: float, index: int | None) -> None:
        """Record a valid latency whose histogram bucket is ``index``."""
        self.latency._add(latency_ms, index)
        if success:
            self.successes += 1
        else:
            self.failures += 1
        self.rate.record(now)

    def record_many(
        self, successes: int, latencies: Sequence[float], now: float, indices: Sequence[int | None]
    ) -> None:
        """``record`` of each latency in turn (``successes`` of them successes), at ``now``."""
        self.latency._add_many(latencies, indices)
        self.successes += successes
        self.failures += len(latencies) - successes
        self.rate.record_many(now, len(latencies))

    def stats(self, now: float | None) -> OutcomeStats:
        count = self.successes + self.failures
        return OutcomeStats(
            count=count,
            successes=self.successes,
            failures=self.failures,
            success_rate=self.successes / count if count else None,
            latency_mean_ms=self.latency.mean,
            latency_p50_ms=self.latency.percentile(50),
            latency_p95_ms=self.latency.percentile(95),
            latency_p99_ms=self.latency.percentile(99),
            throughput_per_s=self.rate.value(now),
        )


class PerformanceCore:
    """Per-agent, per-task-type and overall outcome statistics, plus runtime latencies.

    ``ewma_alpha`` is the weight of the newest throughput sample (0 < alpha <= 1; higher
    follows changes faster, lower is smoother). ``relative_accuracy`` and ``max_buckets``
    configure every :class:`LatencyHistogram`.
    """

    def __init__(
        self,
        ewma_alpha: float = 0.2,
        *,
        relative_accuracy: float = 0.01,
        max_buckets: int = 2048,
    ) -> None:
        """Start empty; raises ``ValueError`` for options out of range."""
        if not 0.0 < ewma_alpha <= 1.0:
            raise ValueError(f"ewma_alpha must be in (0, 1], got {ewma_alpha!r}")
        # Validate the histogram options now rather than at the first outcome.
        LatencyHistogram(relative_accuracy, max_buckets)
        self._alpha = ewma_alpha
        self._accuracy = relative_accuracy
        self._max_buckets = max_buckets
        self._agents: dict[str, _Series] = {}
        self._types: dict[str, _Series] = {}
        self._total = self._new_series()
        self._route = LatencyHistogram(relative_accuracy, max_buckets)
        self._end_to_end = LatencyHistogram(relative_accuracy, max_buckets)

    def _new_series(self) -> _Series:
        return _Series(self._alpha, self._accuracy, self._max_buckets)

    def record_outcome(
        self, agent_id: str, task_type: str, success: bool, latency_ms: float, now: float
    ) -> None:
        """Record one task outcome: ``latency_ms`` is its run time on the agent and ``now``
        the monotonic time (seconds) it ended. Raises ``ValueError`` for a bad latency,
        before anything is recorded.
        """
        if not 0.0 <= latency_ms < math.inf:
            raise ValueError(f"latency must be finite and >= 0, got {latency_ms!r}")
        agent = self._agents.get(agent_id)
        if agent is None:
            agent = self._agents[agent_id] = self._new_series()
        kind = self._types.get(task_type)
        if kind is None:
            kind = self._types[task_type] = self._new_series()
        index = self._total.latency.index_of(latency_ms)  # the same in every series
        agent.record(success, latency_ms, now, index)
        kind.record(success, latency_ms, now, index)
        self._total.record(success, latency_ms, now, index)

    def record_outcomes(self, items: Sequence[OutcomeItem], now: float) -> None:
        """Each ``(agent_id, task_type, success, latency_ms, end_to_end_ms)`` as
        :meth:`record_outcome` (and :meth:`record_end_to_end` of the ones with an
        end-to-end time) in turn would record it, all ending at ``now``, with a few calls
        per distinct agent and task type instead of several per outcome. Raises
        ``ValueError`` for a bad latency before anything is recorded."""
        for item in items:
            latency_ms = item[3]
            if not 0.0 <= latency_ms < math.inf:
                raise ValueError(f"latency must be finite and >= 0, got {latency_ms!r}")
            end_to_end_ms = item[4]
            if end_to_end_ms is not None and not 0.0 <= end_to_end_ms < math.inf:
                raise ValueError(f"latency must be finite and >= 0, got {end_to_end_ms!r}")
        if not items:
            return
        latencies = [item[3] for item in items]
        indices = self._total.latency.indices_of(latencies)  # the same in every series
        by_agent: dict[str, list[int]] = {}
        by_type: dict[str, list[int]] = {}
        for position, item in enumerate(items):  # (positions in order, per series)
            by_agent.setdefault(item[0], []).append(position)
            by_type.setdefault(item[1], []).append(position)
        for series_of, grouped in ((self._agents, by_agent), (self._types, by_type)):
            for name, positions in grouped.items():
                self._series(series_of, name).record_many(
                    sum([items[i][2] for i in positions]),  # (bools: the successes)
                    [latencies[i] for i in positions],
                    now,
                    [indices[i] for i in positions],
                )
        successes = sum([item[2] for item in items])
        self._total.record_many(successes, latencies, now, indices)
        ends = [item[4] for item in items if item[4] is not None]
        if ends:
            self._end_to_end.record_many(ends)

    def _series(self, series_of: dict[str, _Series], name: str) -> _Series:
        series = series_of.get(name)
        if series is None:
            series = series_of[name] = self._new_series()
        return series

    def record_route_latency(self, ms: float) -> None:
        """Record the time from a task being ready to its assignment to an agent."""
        self._route.record(ms)

    def record_route_latencies(self, values: Sequence[float]) -> None:
        """:meth:`record_route_latency` of each value in turn, in one call."""
        self._route.record_many(values)

    def record_end_to_end(self, ms: float) -> None:
        """Record the time from a task's submission to its final outcome."""
        self._end_to_end.record(ms)

    def agent_stats(self, agent_id: str, now: float | None = None) -> OutcomeStats:
        """Statistics of one agent (all zeros/None if it has no outcomes yet).

        Pass ``now`` to have the throughput decay while the agent reports nothing.
        """
        return self._agents.get(agent_id, self._new_series()).stats(now)

    def type_stats(self, task_type: str, now: float | None = None) -> OutcomeStats:
        """Statistics of one task type (all zeros/None if none was seen yet)."""
        return self._types.get(task_type, self._new_series()).stats(now)

    def total_stats(self, now: float | None = None) -> OutcomeStats:
        """Statistics over every outcome."""
        return self._total.stats(now)

    def agent_performance(self, agent_id: str) -> tuple[float, float, int]:
        """``(success_rate, p50 latency in ms, samples)`` for the router's agent views.

        An agent without outcomes gets ``(1.0, 0.0, 0)``, the defaults of
        :class:`~messages.AgentView`: the router treats zero samples as "unknown".
        """
        series = self._agents.get(agent_id)
        if series is None:
            return 1.0, 0.0, 0
        count = series.successes + series.failures
        p50 = series.latency.percentile(50)
        assert p50 is not None  # a series exists only once it has an outcome
        return series.successes / count, p50, count

    @property
    def route_latency(self) -> LatencyHistogram:
        """The routing+assignment latency histogram (read it, do not record into it)."""
        return self._route

    @property
    def end_to_end_latency(self) -> LatencyHistogram:
        """The end-to-end latency histogram (read it, do not record into it)."""
        return self._end_to_end

    def agents(self) -> tuple[str, ...]:
        """Ids of the agents with outcomes, sorted."""
        return tuple(sorted(self._agents))

    def forget_agent(self, agent_id: str) -> None:
        """Drop a deregistered agent's statistics (bounded memory); totals keep them."""
        self._agents.pop(agent_id, None)

    def summary(self, now: float | None = None) -> dict[str, Any]:
        """Everything, as a JSON-able dict (sorted keys, None where nothing is known)."""
        return {
            "outcomes": self._total.stats(now).to_dict(),
            "agents": {
                agent_id: self._agents[agent_id].stats(now).to_dict()
                for agent_id in sorted(self._agents)
            },
            "task_types": {
                task_type: self._types[task_type].stats(now).to_dict()
                for task_type in sorted(self._types)
            },
            "route_assign_ms": self._route.summary(),
            "end_to_end_ms": self._end_to_end.summary(),
        }
