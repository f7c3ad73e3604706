"""PostgreSQL faults: down at start, restarted mid-run, a stalled or slow network, a lock
held too long. Mostly without touching this machine's PostgreSQL: the runners connect
through a TCP proxy (``tests.faultproxy``) that the tests break and mend, so to the runner
the database goes away and comes back as in a restart (connections cut, then refused).
One test restarts the real server with ``pg_ctlcluster`` (where it can) and always starts
it again before it ends.

Each test has its own schema, dropped afterwards; they skip when PostgreSQL is
unreachable and fail instead when the environment variable ``CI`` is set.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from messages import AgentSpec, StoreUnavailable, TaskState
from messages.errors import StoreError
from supervisor import RunnerConfig, TaskContext, TaskRunner
from tests.conftest import WAIT_S, wait_for
from tests.faultproxy import FaultProxy, fault_proxy
from tests.integration.test_journal_contract import (
    POSTGRES_URL,
    make_record,
    postgres_schema,
    postgres_unreachable,
    run_sql,
)

pytest.importorskip("psycopg")

from psycopg import sql

from actors.journal import open_store

pytestmark = pytest.mark.postgres

SECRET = "s3cr3t-pw"  # trust auth ignores it; it must never be shown


@pytest.fixture
def schema() -> Iterator[str]:
    with postgres_schema() as (name, _):
        yield name


@pytest.fixture
def proxy() -> Iterator[FaultProxy]:
    with fault_proxy() as running:
        yield running


def proxied(proxy: FaultProxy, schema: str, **params: str) -> str:
    """The store URL of ``schema`` through the proxy, with a password to keep secret."""
    url = proxy.url(schema=schema, connect_timeout="1", **params)
    return url.replace("postgresql://", f"postgresql://root:{SECRET}@", 1)


def events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [entry for entry in logs if entry.get("event") == name]


def counts(schema: str) -> dict[str, int]:
    rows = run_sql(
        sql.SQL("SELECT state, count(*) FROM {} GROUP BY state").format(
            sql.Identifier(schema, "tasks")
        )
    )
    return {state: n for state, n in rows}


# -- down at start ----------------------------------------------------------------------------
def test_a_database_down_at_start_is_a_clear_error_at_once_by_default(
    proxy: FaultProxy, schema: str
) -> None:
    proxy.down()
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match=rf"127\.0\.0\.1:{proxy.port}") as caught:
        TaskRunner.start(RunnerConfig(store=proxied(proxy, schema)))
    assert time.monotonic() - started < WAIT_S
    assert SECRET not in str(caught.value)
    assert "tried" not in str(caught.value)  # store_wait_s=0: one attempt


def test_a_runner_waits_with_backoff_for_a_database_that_comes_up(
    proxy: FaultProxy, schema: str, logs: list[dict[str, Any]]
) -> None:
    proxy.down()
    started: list[TaskRunner] = []
    failed: list[BaseException] = []

    def start() -> None:
        try:
            started.append(
                TaskRunner.start(RunnerConfig(store=proxied(proxy, schema), store_wait_s=WAIT_S))
            )
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            failed.append(exc)

    thread = threading.Thread(target=start)
    thread.start()
    wait_for(lambda: len(events(logs, "store.unavailable")) >= 2)  # tried, waited, tried
    proxy.up()
    thread.join(WAIT_S)
    assert not failed and len(started) == 1
    runner = started[0]
    try:
        runner.register_agent(AgentSpec(agent_id="a", capabilities={"t"}), lambda t: "ok")
        assert runner.submit(type="t").result(WAIT_S) == "ok"
    finally:
        runner.stop(drain=False)
    tries = events(logs, "store.unavailable")
    assert [entry["attempt"] for entry in tries] == list(range(1, len(tries) + 1))
    delays = [entry["retry_in_s"] for entry in tries]
    assert delays[:2] == [0.1, 0.2]  # exponential backoff
    assert all(SECRET not in entry["error"] for entry in tries)
    (came,) = events(logs, "store.available")
    assert came["attempts"] == len(tries) + 1


def test_a_runner_gives_up_after_store_wait_s_saying_how_long_it_tried(
    proxy: FaultProxy, schema: str
) -> None:
    proxy.down()
    with pytest.raises(StoreUnavailable, match=r"tried [2-9]\d* times in") as caught:
        TaskRunner.start(RunnerConfig(store=proxied(proxy, schema), store_wait_s=0.4))
    assert SECRET not in str(caught.value)


# -- restarted mid-run ------------------------------------------------------------------------
def test_a_database_restart_mid_run_loses_no_task(
    proxy: FaultProxy, schema: str, logs: list[dict[str, Any]]
) -> None:
    """Tasks finish while the database is gone: their results wait in the journal, which
    retries until it is back; a submit meanwhile is refused at once; nothing is lost."""
    gate = threading.Event()
    running = threading.Semaphore(0)

    def handler(task: TaskContext) -> int:
        running.release()
        assert gate.wait(WAIT_S)
        return int(task.payload["n"])

    url = proxied(proxy, schema)
    runner = TaskRunner.start(RunnerConfig(store=url, claim_interval_s=0.05))
    try:
        runner.register_agent(
            AgentSpec(agent_id="a", capabilities={"t"}, max_concurrency=8), handler
        )
        handles = runner.submit_many({"type": "t", "payload": {"n": n}} for n in range(40))
        for _ in range(8):
            assert running.acquire(timeout=WAIT_S)  # 8 running, 32 queued in the store
        proxy.down()  # the database "restarts": every connection is cut
        with pytest.raises(StoreUnavailable) as refused:
            runner.submit(type="t", payload={"n": -1})
        assert SECRET not in str(refused.value)
        gate.set()  # the 8 finish while the database is down
        wait_for(lambda: bool(events(logs, "journal.store_unavailable")))
        proxy.up()
        wait_for(lambda: counts(schema).get("COMPLETED", 0) == 40, timeout=3 * WAIT_S)
        results = sorted(handle.result(WAIT_S) for handle in handles)
        assert runner.restarts() == 0  # the journal waited; it did not crash
    finally:
        gate.set()
        proxy.up()
        runner.stop(drain=False)
    assert results == list(range(40))
    assert counts(schema) == {"COMPLETED": 40}  # and the refused submit stored nothing
    (recovered,) = events(logs, "journal.store_recovered")
    assert recovered["attempts"] >= 2
    assert all(SECRET not in str(entry) for entry in logs)


def local_cluster() -> list[str] | None:
    """``pg_ctlcluster`` arguments of this machine's PostgreSQL cluster on port 5432, or
    None when the test cannot restart the server (no such tool, no such cluster, the
    test database elsewhere)."""
    if shutil.which("pg_ctlcluster") is None or shutil.which("pg_lsclusters") is None:
        return None
    if "127.0.0.1:5432" not in POSTGRES_URL and "localhost:5432" not in POSTGRES_URL:
        return None
    listed = subprocess.run(
        ["pg_lsclusters", "--no-header"], capture_output=True, text=True, check=False
    )
    for line in listed.stdout.splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[2] == "5432" and fields[3] == "online":
            return ["pg_ctlcluster", "--skip-systemctl-redirect", fields[0], fields[1]]
    return None


def test_a_real_postgresql_restart_mid_run_loses_no_task(
    schema: str, logs: list[dict[str, Any]]
) -> None:
    """The real thing, not the proxy: this machine's PostgreSQL is restarted (and always
    brought back) while 8 tasks run and 32 wait in the store. The runner reconnects and
    every task completes once."""
    cluster = local_cluster()
    if cluster is None:
        pytest.skip("cannot restart the local PostgreSQL here (pg_ctlcluster, port 5432)")
    gate = threading.Event()
    running = threading.Semaphore(0)

    def handler(task: TaskContext) -> int:
        running.release()
        assert gate.wait(WAIT_S * 3)
        return int(task.payload["n"])

    url = f"{POSTGRES_URL}?schema={schema}&connect_timeout=1"
    runner = TaskRunner.start(RunnerConfig(store=url, claim_interval_s=0.05))
    restarted: list[subprocess.CompletedProcess[str]] = []
    try:
        runner.register_agent(
            AgentSpec(agent_id="a", capabilities={"t"}, max_concurrency=8), handler
        )
        handles = runner.submit_many({"type": "t", "payload": {"n": n}} for n in range(40))
        for _ in range(8):
            assert running.acquire(timeout=WAIT_S)
        restart = threading.Thread(
            target=lambda: restarted.append(
                subprocess.run([*cluster, "restart"], capture_output=True, text=True, timeout=120)
            )
        )
        restart.start()
        gate.set()  # the 8 finish while the server goes down and comes back
        restart.join(150)
        assert restarted and restarted[0].returncode == 0, restarted
        wait_for(lambda: counts(schema).get("COMPLETED", 0) == 40, timeout=6 * WAIT_S)
        results = sorted(handle.result(WAIT_S) for handle in handles)
    finally:
        gate.set()
        runner.stop(drain=False)
        # Whatever happened above, leave the server running for the tests after this one.
        subprocess.run([*cluster, "start"], capture_output=True, timeout=120, check=False)
        wait_for(lambda: postgres_unreachable() is None, timeout=6 * WAIT_S)
    assert results == list(range(40))
    assert counts(schema) == {"COMPLETED": 40}
    assert events(logs, "store.listen_failed")  # the restart did reach the runner


def test_an_outage_longer_than_store_outage_s_reaches_the_supervisor(
    proxy: FaultProxy, schema: str, logs: list[dict[str, Any]]
) -> None:
    """Past store_outage_s the journal fails; its supervisor restarts it and the batch it
    gave up comes back as a dead letter that is delivered once more: written this time."""
    gate = threading.Event()

    def handler(task: TaskContext) -> str:
        assert gate.wait(WAIT_S)
        return "ok"

    config = RunnerConfig(store=proxied(proxy, schema), store_outage_s=1.0, max_restarts=100)
    runner = TaskRunner.start(config)
    try:
        runner.register_agent(AgentSpec(agent_id="a", capabilities={"t"}), handler)
        handle = runner.submit(type="t")
        wait_for(lambda: counts(schema).get("RUNNING", 0) == 1)
        proxy.down()
        gate.set()
        wait_for(lambda: bool(events(logs, "journal.store_gave_up")))
        proxy.up()
        wait_for(lambda: runner.restarts() >= 1)  # the journal failed; it was restarted
        assert handle.result(WAIT_S) == "ok"
    finally:
        gate.set()
        proxy.up()
        runner.stop(drain=False)
    assert counts(schema) == {"COMPLETED": 1}
    (failed,) = [e for e in events(logs, "supervisor.child_failed") if e["child"] == "journal"]
    assert failed["exception_type"] == "StoreUnavailable"


# -- slow, stalled, locked --------------------------------------------------------------------
def test_a_slow_network_is_slow_not_broken(proxy: FaultProxy, schema: str) -> None:
    proxy.latency_s = 0.002
    with TaskRunner.start(RunnerConfig(store=proxied(proxy, schema))) as runner:
        runner.register_agent(
            AgentSpec(agent_id="a", capabilities={"t"}, max_concurrency=4), lambda t: t.attempt
        )
        handles = runner.submit_many({"type": "t"} for _ in range(30))
        assert [handle.result(3 * WAIT_S) for handle in handles] == [1] * 30
        runner.stop(drain=False)


def test_a_stalled_network_times_out_instead_of_hanging(proxy: FaultProxy, schema: str) -> None:
    proxy.stall()  # accepted, never answered
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as caught:
        TaskRunner.start(RunnerConfig(store=proxied(proxy, schema)))
    assert time.monotonic() - started < WAIT_S  # connect_timeout=1 in the URL
    assert SECRET not in str(caught.value)


def test_a_lock_held_too_long_is_a_timeout_not_a_hang(schema: str) -> None:
    """statement_timeout bounds lock waits: another session holding the table is an error
    after that long, and the write is retried by the journal, not lost."""
    import psycopg

    from tests.integration.test_journal_contract import POSTGRES_URL

    url = f"{POSTGRES_URL}?schema={schema}&statement_timeout=0.3"
    with open_store(url) as store:
        assert sum(store.counts().values()) == 0  # schema created
        with psycopg.connect(POSTGRES_URL) as holder:
            holder.execute(
                sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(
                    sql.Identifier(schema, "tasks")
                )
            )
            started = time.monotonic()
            with pytest.raises(StoreError, match="statement timeout"):
                store.counts()
            assert time.monotonic() - started < WAIT_S


def test_a_session_ended_inside_a_write_is_a_lost_connection_and_written_again(
    schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A runner paused inside a write's transaction (SIGSTOP, a frozen VM) past the
    server's idle_in_transaction_session_timeout finds its session ended when it resumes:
    psycopg raises that as an InternalError (25P03) on a broken connection. It is a lost
    connection: the batch is written again on a fresh one, not refused (the journal used
    to crash and dead-letter it, losing a finished task's result)."""
    import actors.journal.postgres as postgres

    monkeypatch.setattr(postgres, "_IDLE_IN_TRANSACTION_MS", 200)
    url = f"{POSTGRES_URL}?schema={schema}"
    with open_store(url) as store:
        assert isinstance(store, postgres.PostgresStore)
        (record,) = store.apply([make_record()], [])
        original = store._update_all
        paused = threading.Event()

        def pause_once(*args: Any, **kwargs: Any) -> Any:
            if not paused.is_set():
                paused.set()
                # Inside the transaction, between statements: idle in transaction, five
                # times as long as the server allows (its timer, not ordering, is tested).
                threading.Event().wait(1.0)
            return original(*args, **kwargs)

        monkeypatch.setattr(store, "_update_all", pause_once)
        running = record.moved(TaskState.ASSIGNED, at=record.updated_at, agent_id="a")
        _, fenced = store.apply_fenced([], [running])
        assert paused.is_set() and not fenced
        got = store.get(record.task_id)
        assert got is not None and got.state is TaskState.ASSIGNED
        assert store.statistics()["rollbacks"] >= 1  # the ended session's attempt


def test_the_session_timeout_error_means_unavailable_not_a_bad_write() -> None:
    import psycopg.errors

    from actors.journal.postgres import PostgresStore

    store = PostgresStore(f"{POSTGRES_URL}?schema=unused")  # not opened: only translates
    error = store._translate(psycopg.errors.IdleInTransactionSessionTimeout("ended"), "writing")
    assert isinstance(error, StoreUnavailable)


def test_statement_timeout_must_be_seconds() -> None:
    from actors.journal.postgres import PostgresStore

    with pytest.raises(ValueError, match="statement_timeout must be seconds"):
        PostgresStore("postgresql://h/db?statement_timeout=soon")
    with pytest.raises(ValueError, match="statement_timeout must be >= 0"):
        PostgresStore("postgresql://h/db?statement_timeout=-1")


def test_a_task_in_retry_wait_is_kept_through_an_outage(proxy: FaultProxy, schema: str) -> None:
    """Lifecycle writes of every kind (here FAILED -> RETRY_WAIT) survive an outage."""
    failures = threading.Event()

    def handler(task: TaskContext) -> str:
        if task.attempt == 1:
            failures.set()
            raise RuntimeError("first attempt fails")
        return "second"

    config = RunnerConfig(store=proxied(proxy, schema), backoff_base_s=0.2, backoff_cap_s=0.2)
    with TaskRunner.start(config) as runner:
        runner.register_agent(AgentSpec(agent_id="a", capabilities={"t"}), handler)
        proxy.down()
        proxy.up()  # a blip before the task: pooled connections are dead
        handle = runner.submit(type="t")
        assert failures.wait(WAIT_S)
        assert handle.result(2 * WAIT_S) == "second"
        assert runner.get(handle.task_id).state is TaskState.COMPLETED
        runner.stop(drain=False)
