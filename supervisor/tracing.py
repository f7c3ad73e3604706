"""OpenTelemetry tracing of tasks (optional: ``pip install 'arbiter-taskrunner[otel]'``).

With ``RunnerConfig(tracing=True)``, following OpenTelemetry's messaging conventions:

* ``submit`` / ``submit_many`` run in a PRODUCER span ``arbiter.submit <type>`` (one per
  call, however many tasks), a child of whatever span the host has current, and each
  task's ``trace_context`` gets that span's W3C ``traceparent`` (and ``tracestate``,
  baggage), unless the host set a ``trace_context`` itself: then the host's is kept.
* every attempt runs in a CONSUMER span ``arbiter.process <type>``, a child of the
  context in the task's ``trace_context``, current while the handler runs (so spans the
  handler makes, and context it propagates onwards, belong to the task's trace). An
  exception is recorded on it with an ERROR status, and raised on to the agent as before.

The trace context travels in the task's record, so it survives a restart and crosses to
another process on a shared store. Spans are made with the host's tracer provider (the
global one, or ``TaskRunner.start(..., tracer_provider=...)``); exporting them is the
host's business (the OpenTelemetry SDK, ``opentelemetry-instrument``). Without tracing,
nothing here runs: handlers are called as they were registered.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from messages.base import FrozenDict
from messages.task import TaskSpec

__all__ = ["TRACER_NAME", "Tracing"]

TRACER_NAME = "arbiter"
_SYSTEM = "arbiter"


class Tracing:
    """Spans for submits and attempts, with one tracer (see the module's docstring)."""

    def __init__(self, tracer_provider: Any = None) -> None:
        """Raises RuntimeError if ``opentelemetry-api`` is not installed."""
        try:
            from opentelemetry import propagate, trace
        except ImportError as exc:
            raise RuntimeError(
                "tracing needs opentelemetry-api: pip install 'arbiter-taskrunner[otel]'"
            ) from exc
        self._trace = trace
        self._propagate = propagate
        self._tracer = trace.get_tracer(TRACER_NAME, tracer_provider=tracer_provider)

    @contextmanager
    def submitting(self, specs: Sequence[TaskSpec]) -> Iterator[list[TaskSpec]]:
        """A PRODUCER span around a submit of ``specs``; yields the specs, each carrying
        the span's context in its ``trace_context`` (a host's own is kept)."""
        kind = self._trace.SpanKind.PRODUCER
        types = sorted({spec.type for spec in specs})
        name = f"arbiter.submit {types[0] if len(types) == 1 else 'batch'}"
        attributes: dict[str, Any] = {
            "messaging.system": _SYSTEM,
            "messaging.operation.type": "send",
            "messaging.destination.name": ",".join(types),
            "messaging.batch.message_count": len(specs),
        }
        with self._tracer.start_as_current_span(name, kind=kind, attributes=attributes):
            carrier: dict[str, str] = {}
            self._propagate.inject(carrier)
            context = FrozenDict(carrier)
            yield [
                spec if spec.trace_context else spec.evolve(trace_context=context) for spec in specs
            ]

    def wrap(self, handler: Callable[..., Any], agent_id: str) -> Callable[..., Any]:
        """``handler`` run inside a CONSUMER span per attempt (async stays async)."""
        tracer = self._tracer
        extract = self._propagate.extract
        kind = self._trace.SpanKind.CONSUMER

        def span(task: Any) -> Any:
            return tracer.start_as_current_span(
                f"arbiter.process {task.type}",
                context=extract(task.trace_context),
                kind=kind,
                attributes={
                    "messaging.system": _SYSTEM,
                    "messaging.operation.type": "process",
                    "messaging.destination.name": task.type,
                    "messaging.message.id": str(task.task_id),
                    "arbiter.attempt": task.attempt,
                    "arbiter.agent_id": agent_id,
                },
            )

        if inspect.iscoroutinefunction(handler):

            @functools.wraps(handler)
            async def traced_async(task: Any) -> Any:
                with span(task):
                    return await handler(task)

            return traced_async

        @functools.wraps(handler)
        def traced(task: Any) -> Any:
            with span(task):
                return handler(task)

        return traced
