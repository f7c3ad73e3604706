"""OpenTelemetry tracing through a real runner: producer and consumer spans, the trace
context carried in the task (across a restart too), errors, async handlers.

Each test has a tracer provider of its own with an in-memory exporter (no global state).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from messages import AgentSpec, TaskSpec, TaskState
from supervisor import RunnerConfig, TaskContext, TaskRunner
from tests.conftest import WAIT_S, wait_for

pytest.importorskip("opentelemetry.sdk")

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider
    provider.shutdown()


def spans(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [span for span in exporter.get_finished_spans() if span.name == name]


def start(provider: TracerProvider, **settings: Any) -> TaskRunner:
    return TaskRunner.start(RunnerConfig(tracing=True, **settings), tracer_provider=provider)


def test_a_task_s_attempt_is_a_consumer_span_under_the_submit_span_of_the_host_s_trace(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    seen: list[int] = []

    def handler(task: TaskContext) -> str:
        seen.append(trace.get_current_span().get_span_context().span_id)
        return "ok"

    with start(provider) as runner:
        runner.register_agent(AgentSpec(agent_id="a", capabilities={"t"}), handler)
        with provider.get_tracer("host").start_as_current_span("request") as request:
            handle = runner.submit(TaskSpec(type="t"))
        assert handle.result(WAIT_S) == "ok"
        record = handle.record()
    assert "traceparent" in record.spec.trace_context
    wait_for(lambda: len(spans(exporter, "arbiter.process t")) == 1)
    (submit,) = spans(exporter, "arbiter.submit t")
    (process,) = spans(exporter, "arbiter.process t")
    trace_id = request.get_span_context().trace_id
    assert submit.context.trace_id == process.context.trace_id == trace_id
    assert submit.parent is not None and submit.parent.span_id == request.get_span_context().span_id
    assert process.parent is not None and process.parent.span_id == submit.context.span_id
    assert (submit.kind, process.kind) == (SpanKind.PRODUCER, SpanKind.CONSUMER)
    assert seen == [process.context.span_id]  # current while the handler runs
    assert process.attributes is not None
    assert process.attributes["messaging.message.id"] == str(handle.task_id)
    assert process.attributes["arbiter.attempt"] == 1
    assert process.attributes["arbiter.agent_id"] == "a"
    assert submit.attributes is not None
    assert submit.attributes["messaging.batch.message_count"] == 1


def test_a_failed_attempt_is_an_error_span_and_its_retry_a_new_span_in_the_same_trace(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    def flaky(task: TaskContext) -> int:
        if task.attempt == 1:
            raise ValueError("first try fails")
        return task.attempt

    with start(provider, backoff_base_s=0.001) as runner:
        runner.register_agent(AgentSpec(agent_id="a", capabilities={"t"}), flaky)
        assert runner.submit(TaskSpec(type="t")).result(WAIT_S) == 2
    wait_for(lambda: len(spans(exporter, "arbiter.process t")) == 2)
    first, second = sorted(
        spans(exporter, "arbiter.process t"),
        key=lambda span: span.attributes["arbiter.attempt"] if span.attributes else 0,
    )
    (submit,) = spans(exporter, "arbiter.submit t")
    assert first.status.status_code is StatusCode.ERROR
    assert [event.name for event in first.events] == ["exception"]
    assert second.status.status_code is not StatusCode.ERROR
    for span in (first, second):
        assert span.parent is not None and span.parent.span_id == submit.context.span_id


def test_a_host_s_own_trace_context_is_kept(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    trace_id, span_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    parent = {"traceparent": f"00-{trace_id}-{span_id}-01"}
    with start(provider) as runner:
        runner.register_agent(AgentSpec(agent_id="a", capabilities={"t"}), lambda task: 1)
        handle = runner.submit(TaskSpec(type="t", trace_context=parent))
        handle.result(WAIT_S)
        assert dict(handle.record().spec.trace_context) == parent
    wait_for(lambda: len(spans(exporter, "arbiter.process t")) == 1)
    (process,) = spans(exporter, "arbiter.process t")
    assert process.parent is not None
    assert f"{process.parent.trace_id:032x}" == trace_id
    assert f"{process.parent.span_id:016x}" == span_id


def test_an_async_handler_runs_in_its_span(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    async def handler(task: TaskContext) -> int:
        await asyncio.sleep(0)
        return trace.get_current_span().get_span_context().span_id

    with start(provider) as runner:
        runner.register_agent(AgentSpec(agent_id="a", capabilities={"t"}), handler)
        span_id = runner.submit(TaskSpec(type="t")).result(WAIT_S)
    wait_for(lambda: len(spans(exporter, "arbiter.process t")) == 1)
    (process,) = spans(exporter, "arbiter.process t")
    assert span_id == process.context.span_id


def test_the_trace_continues_after_a_restart(
    provider: TracerProvider, exporter: InMemorySpanExporter, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'tasks.db'}"
    first = start(provider, store=url)
    submitted = first.submit_many([TaskSpec(type="t"), TaskSpec(type="u")])
    first.stop(drain=False)
    with start(provider, store=url) as second:
        second.register_agent(AgentSpec(agent_id="a", capabilities={"t", "u"}), lambda t: 0)
        for handle in submitted:
            assert second.wait(handle.task_id, WAIT_S).state is TaskState.COMPLETED
    wait_for(lambda: len(exporter.get_finished_spans()) == 3)
    (submit,) = spans(exporter, "arbiter.submit batch")
    processes = spans(exporter, "arbiter.process t") + spans(exporter, "arbiter.process u")
    assert len(processes) == 2
    for span in processes:
        assert span.parent is not None and span.parent.span_id == submit.context.span_id


def test_without_tracing_no_span_is_made_and_the_handler_is_called_as_it_is(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    with TaskRunner.start(RunnerConfig(), tracer_provider=provider) as runner:
        runner.register_agent(AgentSpec(agent_id="a", capabilities={"t"}), lambda t: 1)
        handle = runner.submit(TaskSpec(type="t"))
        assert handle.result(WAIT_S) == 1
        assert dict(handle.record().spec.trace_context) == {}
    assert exporter.get_finished_spans() == ()


def test_tracing_without_opentelemetry_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry", None)  # import fails
    with pytest.raises(RuntimeError, match=r"arbiter-taskrunner\[otel\]"):
        TaskRunner.start(RunnerConfig(tracing=True))
