"""Many runners on one PostgreSQL store: claims, leases, rescue, fencing, wake-ups, runners
and leader leases on the store; then whole runners sharing one schema in one process.

Two store objects on one schema stand for two runner processes. Each test has a schema of
its own, dropped afterwards; they skip when PostgreSQL is unreachable and fail instead
when the environment variable ``CI`` is set (see ``test_journal_contract``).
"""

from __future__ import annotations

import collections
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from actors.journal import SCHEMA_VERSION, open_store
from messages import CronSpec, StoreUnavailable, TaskRecord, TaskState
from messages.task import TaskSpec
from supervisor import RunnerConfig, TaskContext, TaskRunner
from tests.conftest import WAIT_S, wait_for
from tests.integration.test_journal_contract import make_record, postgres_schema, run_sql

pytest.importorskip("psycopg")

from psycopg import sql

from actors.journal.postgres import MIGRATIONS, PostgresStore, channel_name

pytestmark = pytest.mark.postgres

LONG_LEASE = 60.0
SHORT_LEASE = 0.05


@pytest.fixture
def schema() -> Iterator[tuple[str, str]]:
    """A fresh schema on the test database, as (name, store URL); dropped afterwards."""
    with postgres_schema() as found:
        yield found


@pytest.fixture
def stores(schema: tuple[str, str]) -> Iterator[Callable[[], PostgresStore]]:
    """Open stores on the test schema (each one a runner process); closed afterwards."""
    opened: list[PostgresStore] = []

    def make() -> PostgresStore:
        store = open_store(schema[1])
        assert isinstance(store, PostgresStore)
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


def column(schema: str, task_id: uuid.UUID, name: str) -> Any:
    rows = run_sql(
        sql.SQL("SELECT {} FROM {} WHERE task_id = %s").format(
            sql.Identifier(name), sql.Identifier(schema, "tasks")
        ),
        (task_id,),
    )
    return rows[0][0]


def leases_expired(schema: str) -> bool:
    """No unfinished task holds a lease that is still running (database clock)."""
    rows = run_sql(
        sql.SQL(
            "SELECT count(*) FROM {} WHERE lease_expires_at >= now() "
            "AND state NOT IN ('COMPLETED', 'CANCELLED', 'DEAD_LETTERED')"
        ).format(sql.Identifier(schema, "tasks"))
    )
    return bool(rows[0][0] == 0)


def running(record: TaskRecord, attempt: int | None = None) -> TaskRecord:
    """A claimed record moved to RUNNING, as an agent makes it."""
    now = datetime.now(UTC)
    return record.moved(TaskState.ASSIGNED, at=now, agent_id="agent-1").moved(
        TaskState.RUNNING, at=now, attempt=record.attempt + 1 if attempt is None else attempt
    )


def completed(record: TaskRecord, result: Any = "done") -> TaskRecord:
    return record.moved(TaskState.COMPLETED, at=datetime.now(UTC), result=result)


# -- what is shared ------------------------------------------------------------------------


def test_only_postgres_is_shared(stores: Callable[[], PostgresStore], tmp_path: Any) -> None:
    assert stores().shared
    for url in ("memory://", f"sqlite:///{tmp_path / 'tasks.db'}"):
        with open_store(url) as store:
            assert not store.shared
            (record,) = store.insert([make_record()])
            assert store.apply_fenced([], [record]) == ([], frozenset())
            with pytest.raises(NotImplementedError):
                store.claim("a", 1, 1.0)


# -- claim ---------------------------------------------------------------------------------


def test_claim_takes_unowned_queued_tasks_by_priority_then_sequence(
    schema: tuple[str, str], stores: Callable[[], PostgresStore]
) -> None:
    name, _ = schema
    store = stores()
    queued = store.insert([make_record(priority=p) for p in (1, 5, 1, 9, 5)])
    store.insert(
        [
            make_record(state=TaskState.RUNNING),
            make_record(state=TaskState.COMPLETED),
            make_record(state=TaskState.QUEUED, owner="someone"),
            make_record(
                state=TaskState.RETRY_WAIT, next_attempt_at=datetime(2999, 1, 1, tzinfo=UTC)
            ),
        ]
    )
    before = datetime.now(UTC)
    claimed = store.claim("A", 4, 30.0)
    assert [r.spec.priority for r in claimed] == [9, 5, 5, 1]
    assert [r.task_id for r in claimed] == [
        queued[3].task_id,
        queued[1].task_id,
        queued[4].task_id,
        queued[0].task_id,
    ]
    for record in claimed:
        assert record.owner == "A"
        assert record.state is TaskState.QUEUED
        assert record.lease_expires_at is not None
        assert before < record.lease_expires_at < before + timedelta(seconds=40)
        assert store.get(record.task_id) == record  # JSON and columns agree
        assert column(name, record.task_id, "owner") == "A"
        assert column(name, record.task_id, "lease_expires_at") == record.lease_expires_at
    assert [r.task_id for r in store.claim("A", 10, 30.0)] == [queued[2].task_id]
    assert store.claim("A", 10, 30.0) == []
    assert store.claim("A", 0, 30.0) == []
    assert store.shared_statistics()["claimed"] == 5


def test_a_due_retry_is_claimed_as_queued(stores: Callable[[], PostgresStore]) -> None:
    store = stores()
    past = datetime.now(UTC) - timedelta(seconds=1)
    (due,) = store.insert([make_record(state=TaskState.RETRY_WAIT, next_attempt_at=past)])
    (claimed,) = store.claim("A", 5, 30.0)
    assert claimed.task_id == due.task_id
    assert claimed.state is TaskState.QUEUED
    assert claimed.next_attempt_at is None
    assert store.get(due.task_id) == claimed


def test_claim_takes_only_tasks_the_agents_can_run(stores: Callable[[], PostgresStore]) -> None:
    store = stores()
    plain_x = make_record(type="x")
    gpu_x = TaskRecord(
        task_id=uuid.uuid4(),
        spec=TaskSpec(type="x", required_capabilities=frozenset({"gpu"})),
        state=TaskState.QUEUED,
        created_at=plain_x.created_at,
        updated_at=plain_x.created_at,
    )
    y = make_record(type="y")
    store.insert([plain_x, gpu_x, y])
    assert {r.task_id for r in store.claim("A", 10, 30.0, [frozenset({"x"})])} == {plain_x.task_id}
    assert store.claim("A", 10, 30.0, []) == []
    assert {r.task_id for r in store.claim("A", 10, 30.0, [frozenset({"x", "gpu"})])} == {
        gpu_x.task_id
    }
    assert {r.task_id for r in store.claim("B", 10, 30.0)} == {y.task_id}


def test_concurrent_claimers_never_get_the_same_task(
    stores: Callable[[], PostgresStore],
) -> None:
    a, b = stores(), stores()
    ids = {r.task_id for r in a.insert([make_record(priority=i % 10) for i in range(600)])}
    got: dict[str, list[uuid.UUID]] = collections.defaultdict(list)
    errors: list[BaseException] = []
    together = threading.Barrier(6)
    first_round = threading.Barrier(6)

    def claimer(store: PostgresStore, owner: str, batch: int) -> None:
        try:
            together.wait(WAIT_S)  # all claim at once...
            got[owner].extend(r.task_id for r in store.claim(owner, batch, LONG_LEASE))
            # ...and none drains the table before each has had its first batch (a thread
            # the scheduler left behind on a busy machine would find it empty).
            first_round.wait(WAIT_S)
            while claimed := store.claim(owner, batch, LONG_LEASE):
                got[owner].extend(r.task_id for r in claimed)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [
        threading.Thread(target=claimer, args=(store, f"{name}{i}", 3 + 4 * i))
        for name, store in (("A", a), ("B", b))
        for i in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    every = [task_id for claimed in got.values() for task_id in claimed]
    assert len(every) == len(set(every)) == 600
    assert set(every) == ids
    assert len(got) == 6  # everybody got some
    for owner, claimed in got.items():
        assert {a.get(task_id).owner for task_id in claimed} == {owner}  # type: ignore[union-attr]


def test_a_claim_skips_rows_another_transaction_holds_instead_of_waiting(
    stores: Callable[[], PostgresStore], schema: tuple[str, str]
) -> None:
    import psycopg

    from tests.integration.test_journal_contract import POSTGRES_URL

    store = stores()
    records = store.insert([make_record(priority=9 - i) for i in range(4)])
    held = {records[0].task_id, records[1].task_id}  # the two a claim would take first
    with psycopg.connect(POSTGRES_URL, connect_timeout=3) as other:
        other.execute(  # an open transaction holding the two rows' locks
            sql.SQL("SELECT 1 FROM {} WHERE task_id = ANY(%s) FOR UPDATE").format(
                sql.Identifier(schema[0], "tasks")
            ),
            (list(held),),
        )
        claimed = store.claim("runner-a", 4, LONG_LEASE)  # would block without SKIP LOCKED
        assert {r.task_id for r in claimed} == {records[2].task_id, records[3].task_id}
        other.rollback()
    assert {r.task_id for r in store.claim("runner-b", 4, LONG_LEASE)} == held


# -- renew ---------------------------------------------------------------------------------


def test_renew_extends_only_the_unfinished_tasks_of_the_owner(
    schema: tuple[str, str], stores: Callable[[], PostgresStore]
) -> None:
    name, _ = schema
    store = stores()
    store.insert([make_record() for _ in range(5)])
    mine = store.claim("A", 3, 5.0)
    (theirs,) = store.claim("B", 1, 5.0)
    store.update([completed(running(mine[0]))])
    assert store.renew("A", 600.0) == 2
    for record in mine[1:]:
        lease = column(name, record.task_id, "lease_expires_at")
        assert lease > datetime.now(UTC) + timedelta(seconds=500)
        got = store.get(record.task_id)
        assert got is not None
        assert got.lease_expires_at == lease  # reads take the lease from its column
    assert column(name, theirs.task_id, "lease_expires_at") == theirs.lease_expires_at
    assert store.renew("nobody", 10.0) == 0
    with pytest.raises(ValueError, match="lease_s"):
        store.renew("A", 0)


def test_an_applied_update_keeps_the_stored_lease(
    schema: tuple[str, str], stores: Callable[[], PostgresStore]
) -> None:
    name, _ = schema
    store = stores()
    store.insert([make_record()])
    (claimed,) = store.claim("A", 1, 5.0)
    store.renew("A", 600.0)
    renewed = column(name, claimed.task_id, "lease_expires_at")
    assert renewed > claimed.lease_expires_at  # type: ignore[operator]
    started = running(claimed)  # still carries the lease of the claim
    assert store.apply_fenced([], [started]) == ([], frozenset())
    assert column(name, claimed.task_id, "lease_expires_at") == renewed
    got = store.get(claimed.task_id)
    assert got is not None
    assert got.state is TaskState.RUNNING
    assert got.lease_expires_at == renewed


# -- rescue --------------------------------------------------------------------------------


def test_expired_leases_are_rescued_by_state(
    schema: tuple[str, str],
    stores: Callable[[], PostgresStore],
    logs: list[dict[str, Any]],
) -> None:
    name, _ = schema
    store, other = stores(), stores()
    store.insert([make_record(payload={"i": i}) for i in range(4)])
    store.insert([make_record(payload={"i": 9}, max_attempts=1)])
    claimed = sorted(store.claim("A", 10, SHORT_LEASE), key=lambda r: r.spec.payload["i"])
    queued, assigned, retry_later, second_try, last_try = claimed
    waiting = running(retry_later).moved(TaskState.FAILED, at=datetime.now(UTC))
    waiting = waiting.moved(
        TaskState.RETRY_WAIT, at=datetime.now(UTC), next_attempt_at=datetime(2999, 1, 1, tzinfo=UTC)
    )
    store.update(
        [
            assigned.moved(TaskState.ASSIGNED, at=datetime.now(UTC), agent_id="agent-1"),
            waiting,
            running(second_try),
            running(last_try),
        ]
    )
    (kept,) = store.insert([make_record()])
    wait_for(lambda: leases_expired(name))
    store.claim("B", 1, LONG_LEASE)

    rescued = {r.task_id: r for r in other.rescue_expired(100)}
    assert set(rescued) == {r.task_id for r in claimed}
    assert other.rescue_expired(100) == []  # once only
    for task_id, record in rescued.items():
        assert record.owner is None
        assert record.lease_expires_at is None
        assert store.get(task_id) == record
        assert column(name, task_id, "owner") is None
    assert rescued[queued.task_id].state is TaskState.QUEUED
    assert rescued[assigned.task_id].state is TaskState.QUEUED
    assert rescued[assigned.task_id].agent_id is None
    assert rescued[retry_later.task_id].state is TaskState.RETRY_WAIT
    second = rescued[second_try.task_id]
    assert second.state is TaskState.QUEUED
    assert second.attempt == 1  # the interrupted attempt counts
    assert second.history[-1].outcome == "lease_expired"
    assert second.last_error == "lease_expired: runner A stopped heartbeating"
    dead = rescued[last_try.task_id]
    assert dead.state is TaskState.DEAD_LETTERED
    assert dead.last_error == "lease_expired: runner A stopped heartbeating"
    kept_now = store.get(kept.task_id)
    assert kept_now is not None
    assert kept_now.owner == "B"  # an unexpired lease is left alone
    (event,) = [e for e in logs if e["event"] == "store.lease_rescued"]
    assert event["tasks"] == 5
    assert event["queued"] == 3
    assert event["retry_wait"] == 1
    assert event["dead_lettered"] == 1
    assert event["owners"] == {"A": 5}
    # rescued tasks are claimable again; the dead one and the waiting one are not (yet)
    assert {r.task_id for r in other.claim("C", 10, LONG_LEASE)} == {
        queued.task_id,
        assigned.task_id,
        second_try.task_id,
    }


def test_racing_rescuers_rescue_each_expired_task_exactly_once(
    schema: tuple[str, str], stores: Callable[[], PostgresStore]
) -> None:
    name, _ = schema
    a, b = stores(), stores()
    a.insert([make_record() for _ in range(400)])
    claimed = a.claim("dead-runner", 400, SHORT_LEASE)
    assert len(claimed) == 400
    wait_for(lambda: leases_expired(name))
    rescued: list[uuid.UUID] = []
    lock = threading.Lock()
    start = threading.Barrier(6)

    def rescuer(store: PostgresStore) -> None:
        start.wait()
        while freed := store.rescue_expired(7):
            with lock:
                rescued.extend(r.task_id for r in freed)

    threads = [threading.Thread(target=rescuer, args=(s,)) for s in (a, b) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(rescued) == len(set(rescued)) == 400
    assert set(rescued) == {r.task_id for r in claimed}
    assert a.counts()[TaskState.QUEUED] == 400
    assert a.shared_statistics()["rescued"] + b.shared_statistics()["rescued"] == 400


def test_release_frees_every_unfinished_task_of_a_runner_at_once(
    stores: Callable[[], PostgresStore],
) -> None:
    store = stores()
    store.insert([make_record() for _ in range(3)])
    first, second, third = store.claim("A", 3, LONG_LEASE)
    store.update([running(second), completed(running(third))])
    released = {r.task_id: r for r in store.release("A")}
    assert set(released) == {first.task_id, second.task_id}
    assert released[first.task_id].state is TaskState.QUEUED
    assert released[second.task_id].state is TaskState.QUEUED
    assert released[second.task_id].last_error == "released: runner A stopped"
    assert all(r.owner is None for r in released.values())
    assert store.release("A") == []


# -- fencing -------------------------------------------------------------------------------


def test_a_stale_owners_updates_are_refused_and_the_rest_of_the_batch_applied(
    schema: tuple[str, str],
    stores: Callable[[], PostgresStore],
    logs: list[dict[str, Any]],
) -> None:
    name, _ = schema
    a, b = stores(), stores()
    a.insert([make_record(), make_record()])
    (lost,) = a.claim("A", 1, SHORT_LEASE)
    (kept,) = a.claim("A", 1, LONG_LEASE)
    lost_running = running(lost)
    a.update([lost_running, running(kept)])
    wait_for(lambda: column(name, lost.task_id, "lease_expires_at") < datetime.now(UTC))
    b.rescue_expired(10)
    (again,) = b.claim("B", 10, LONG_LEASE)
    assert again.task_id == lost.task_id

    kept_done = completed(running(kept))
    stored, fenced = a.apply_fenced([], [completed(lost_running, "from A"), kept_done])
    assert stored == []
    assert fenced == frozenset({lost.task_id})
    now_lost = a.get(lost.task_id)
    assert now_lost is not None
    assert (now_lost.state, now_lost.owner) == (TaskState.QUEUED, "B")
    assert a.get(kept.task_id) == kept_done.evolve(
        lease_expires_at=column(name, kept.task_id, "lease_expires_at")
    )
    fenced_logs = [e for e in logs if e["event"] == "store.update_fenced"]
    assert fenced_logs == [
        {
            "event": "store.update_fenced",
            "log_level": "warning",
            "task_id": str(lost.task_id),
            "state": "COMPLETED",
            "attempt": 1,
            "stale_owner": "A",
            "current_owner": "B",
        }
    ]
    assert a.shared_statistics()["fenced"] == 1
    # the new owner's writes go through
    b_done = completed(running(again), "from B")
    assert b.apply_fenced([], [running(again), b_done]) == ([], frozenset())
    final = b.get(lost.task_id)
    assert final is not None
    assert (final.state, final.result, final.attempt) == (TaskState.COMPLETED, "from B", 2)


def test_an_older_attempt_of_the_same_owner_is_refused(
    schema: tuple[str, str], stores: Callable[[], PostgresStore]
) -> None:
    name, _ = schema
    store = stores()
    store.insert([make_record()])
    (claimed,) = store.claim("A", 1, SHORT_LEASE)
    first = running(claimed)
    store.update([first])
    wait_for(lambda: leases_expired(name))
    store.rescue_expired(10)
    (again,) = store.claim("A", 1, LONG_LEASE)  # the same runner claims it again
    second = running(again)
    assert second.attempt == 2
    assert store.apply_fenced([], [second]) == ([], frozenset())
    assert store.apply_fenced([], [completed(first)]) == ([], frozenset({claimed.task_id}))
    assert store.apply_fenced([], [completed(second)]) == ([], frozenset())
    final = store.get(claimed.task_id)
    assert final is not None
    assert (final.state, final.attempt) == (TaskState.COMPLETED, 2)


def test_updates_of_records_without_a_lease_are_not_fenced(
    stores: Callable[[], PostgresStore],
) -> None:
    """An operator's write (re-queue of a dead letter: no owner, no lease) or a record that
    never was claimed is applied as it is."""
    store = stores()
    store.insert([make_record()])
    (claimed,) = store.claim("A", 1, LONG_LEASE)
    dead = completed(running(claimed)).evolve(state=TaskState.DEAD_LETTERED)
    store.update([dead])
    requeued = dead.moved(
        TaskState.QUEUED, at=datetime.now(UTC), manual=True, attempt=0, owner=None,
        lease_expires_at=None,
    )  # fmt: skip
    assert store.apply_fenced([], [requeued]) == ([], frozenset())
    assert store.get(claimed.task_id) == requeued


def test_tasks_with_nul_characters_in_json_can_be_claimed_renewed_and_rescued(
    schema: tuple[str, str], stores: Callable[[], PostgresStore]
) -> None:
    name, _ = schema
    store = stores()
    (record,) = store.insert([make_record(payload={"a\x00": "b\x00"})])
    (claimed,) = store.claim("A", 1, SHORT_LEASE)
    store.update([running(claimed)])
    assert store.renew("A", SHORT_LEASE) == 1
    wait_for(lambda: leases_expired(name))
    (rescued,) = store.rescue_expired(10)
    assert rescued.spec.payload == record.spec.payload
    assert store.get(record.task_id) == rescued


# -- wake-ups ------------------------------------------------------------------------------


def test_listeners_are_woken_by_claimable_work_and_stop(
    stores: Callable[[], PostgresStore], schema: tuple[str, str]
) -> None:
    name, _ = schema
    a, b = stores(), stores()
    rang = threading.Event()
    stop = b.listen(rang.set)
    try:
        wait_for(lambda: _listening(b.channel))
        assert b.channel == channel_name(name)
        a.insert([make_record()])  # new work
        assert rang.wait(5)
        rang.clear()
        (claimed,) = a.claim("A", 1, SHORT_LEASE)  # a claim makes nothing claimable
        a.update([running(claimed)])
        assert not rang.wait(0.3)
        wait_for(lambda: leases_expired(name))
        a.rescue_expired(10)  # rescued work
        assert rang.wait(5)
    finally:
        stop()
    wait_for(lambda: not _listening(b.channel))
    rang.clear()
    a.insert([make_record()])
    assert not rang.wait(0.3)


def test_a_listener_reconnects_after_losing_its_connection(
    stores: Callable[[], PostgresStore], logs: list[dict[str, Any]]
) -> None:
    a, b = stores(), stores()
    rang = threading.Event()
    stop = b.listen(rang.set)
    try:
        wait_for(lambda: _listening(b.channel))
        run_sql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query = %s",
            (f'LISTEN "{b.channel}"',),
        )
        assert rang.wait(10)  # called once after the reconnection
        assert any(e["event"] == "store.listen_failed" for e in logs)
        rang.clear()
        wait_for(lambda: _listening(b.channel))
        a.insert([make_record()])
        assert rang.wait(5)
    finally:
        stop()


def _listening(channel: str) -> bool:
    return bool(
        run_sql(
            "SELECT 1 FROM pg_stat_activity WHERE query = %s AND state = 'idle'",
            (f'LISTEN "{channel}"',),
        )
    )


# -- runners and leaders -------------------------------------------------------------------


def test_runners_register_heartbeat_and_leave(
    schema: tuple[str, str], stores: Callable[[], PostgresStore]
) -> None:
    name, _ = schema
    a, b = stores(), stores()
    a.register_runner("A", "host-a", 101)
    b.register_runner("B", "host-b", 202)
    a.insert([make_record(), make_record()])
    a.claim("A", 2, LONG_LEASE)
    live = a.live_runners(30.0)
    assert [(r["runner_id"], r["host"], r["pid"], r["tasks"]) for r in live] == [
        ("A", "host-a", 101, 2),
        ("B", "host-b", 202, 0),
    ]
    assert all(r["heartbeat_age_s"] < 30 for r in live)
    run_sql(
        sql.SQL(
            "UPDATE {} SET heartbeat_at = now() - interval '1 hour' WHERE runner_id = 'B'"
        ).format(sql.Identifier(name, "runners"))
    )
    assert [r["runner_id"] for r in a.live_runners(30.0)] == ["A"]
    b.heartbeat_runner("B")
    assert [r["runner_id"] for r in a.live_runners(30.0)] == ["A", "B"]
    b.deregister_runner("B")
    assert [r["runner_id"] for r in a.live_runners(30.0)] == ["A"]
    b.heartbeat_runner("B")  # a heartbeat after a removal registers again
    assert [r["runner_id"] for r in a.live_runners(30.0)] == ["A", "B"]


def test_one_leader_at_a_time_and_a_new_one_after_expiry(
    schema: tuple[str, str], stores: Callable[[], PostgresStore]
) -> None:
    name, _ = schema
    a, b = stores(), stores()
    assert a.leader("cron") is None
    assert a.try_lead("cron", "A", LONG_LEASE)
    assert not b.try_lead("cron", "B", 30.0)
    assert b.leader("cron") == "A"
    run_sql(  # A stops renewing: its lease runs out
        sql.SQL("UPDATE {} SET lease_expires_at = now() - interval '1 second'").format(
            sql.Identifier(name, "leaders")
        )
    )
    assert b.leader("cron") is None
    assert b.try_lead("cron", "B", 30.0)
    assert not a.try_lead("cron", "A", 30.0)
    assert b.try_lead("cron", "B", 30.0)  # renewal
    assert a.leader("cron") == "B"
    assert a.try_lead("other", "A", 30.0)  # names are independent
    assert not a.resign("cron", "A")
    assert b.resign("cron", "B")
    assert a.try_lead("cron", "A", 30.0)


def test_racing_leaders_elect_exactly_one(stores: Callable[[], PostgresStore]) -> None:
    contenders = [stores() for _ in range(4)]
    start = threading.Barrier(len(contenders))
    won: list[str] = []

    def contend(store: PostgresStore, owner: str) -> None:
        start.wait()
        if store.try_lead("cron", owner, 30.0):
            won.append(owner)

    threads = [
        threading.Thread(target=contend, args=(store, f"R{i}"))
        for i, store in enumerate(contenders)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(won) == 1
    assert contenders[0].leader("cron") == won[0]


# -- migration -----------------------------------------------------------------------------


def test_a_version_1_store_is_migrated_and_its_orphans_rescued(
    schema: tuple[str, str],
) -> None:
    """A store a version 1 runner left (owner set, no lease, a RUNNING task) migrates to
    version 2: the attempt column is filled, and its unfinished tasks are rescuable."""
    name, url = schema
    ident = sql.Identifier(name)
    run_sql(sql.SQL("CREATE TABLE {}.schema_version (version integer NOT NULL)").format(ident))
    run_sql(sql.SQL("INSERT INTO {}.schema_version VALUES (1)").format(ident))
    for statement in MIGRATIONS[0]:
        run_sql(sql.SQL(statement.strip()).format(schema=ident))
    old = make_record(state=TaskState.RUNNING, attempt=1, owner="runner-v1", payload={"x\x00": 1})
    done = make_record(state=TaskState.COMPLETED, attempt=1, owner="runner-v1")
    for number, record in enumerate((old, done), start=1):
        run_sql(
            sql.SQL(
                "INSERT INTO {}.tasks (task_id, sequence, state, priority, type, owner, "
                "created_at, updated_at, record) VALUES (%s, %s, %s, 0, 'work', %s, %s, %s, %s)"
            ).format(ident),
            (
                record.task_id,
                number,
                record.state.value,
                record.owner,
                record.created_at,
                record.updated_at,
                record.model_dump_json(),
            ),
        )
    with open_store(url) as store:
        assert store.schema_version == SCHEMA_VERSION
        assert column(name, done.task_id, "attempt") == 1
        assert column(name, done.task_id, "lease_expires_at") is None
        (rescued,) = store.rescue_expired(10)
        assert rescued.task_id == old.task_id
        assert (rescued.state, rescued.owner) == (TaskState.QUEUED, None)


# -- runners sharing one schema ------------------------------------------------------------


class Executions:
    """What handlers ran, from any thread: (task_id, runner) per execution."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.runs: list[tuple[uuid.UUID, str]] = []

    def handler(self, runner: str) -> Callable[[TaskContext], str]:
        def run(task: TaskContext) -> str:
            with self.lock:
                self.runs.append((task.task_id, runner))
            return runner

        return run

    def per_task(self) -> collections.Counter[uuid.UUID]:
        with self.lock:
            return collections.Counter(task_id for task_id, _ in self.runs)

    def per_runner(self) -> collections.Counter[str]:
        with self.lock:
            return collections.Counter(runner for _, runner in self.runs)


@pytest.fixture
def runners(schema: tuple[str, str]) -> Iterator[Callable[..., TaskRunner]]:
    """Start runners on the test schema; stopped (without draining) afterwards."""
    started: list[TaskRunner] = []

    def start(runner_id: str, **settings: Any) -> TaskRunner:
        runner = TaskRunner.start(RunnerConfig(store=schema[1], runner_id=runner_id, **settings))
        started.append(runner)
        return runner

    yield start
    for runner in started:
        runner.stop(drain=False)


def test_two_runners_drain_2000_tasks_each_completed_exactly_once(
    runners: Callable[..., TaskRunner],
) -> None:
    executions = Executions()
    a, b = runners("A"), runners("B")
    for name, runner in (("A", a), ("B", b)):
        runner.register_agent(
            {"agent_id": f"{name}-agent", "capabilities": {"work"}, "max_concurrency": 4},
            executions.handler(name),
        )
    handles = a.submit_many({"type": "work", "payload": {"n": n}} for n in range(1000))
    handles += b.submit_many({"type": "work", "payload": {"n": n}} for n in range(1000, 2000))
    assert a.drain(120)
    counts = a.status()["counts"]
    assert counts["completed"] == 2000
    assert sum(counts.values()) == 2000
    per_task = executions.per_task()
    assert set(per_task) == {h.task_id for h in handles}
    assert set(per_task.values()) == {1}  # exactly once
    per_runner = executions.per_runner()
    assert per_runner["A"] > 0
    assert per_runner["B"] > 0
    # a result is readable from either runner, whichever ran the task
    for handle in handles[::100]:
        ran = handle.result(timeout=10)
        assert ran in ("A", "B")
        assert b.handle(handle.task_id).result(timeout=10) == ran
    for runner in (a, b):
        status = runner.status()
        assert status["shared"]["claimer"]["claimed"] == per_runner[runner.config.runner_id]
        assert {r["runner_id"] for r in status["shared"]["runners"]} == {"A", "B"}
        assert status["actors"]["claimer"]["restarts"] == 0


def test_a_runner_without_agents_gets_results_other_runners_make(
    runners: Callable[..., TaskRunner],
) -> None:
    submitter = runners("submitter")
    worker = runners("worker")
    worker.register_agent(
        {"agent_id": "w", "capabilities": {"double"}, "max_concurrency": 2},
        lambda task: task.payload["n"] * 2,
    )
    handles = submitter.submit_many({"type": "double", "payload": {"n": n}} for n in range(20))
    assert [h.result(timeout=30) for h in handles] == [n * 2 for n in range(20)]
    assert submitter.status()["shared"]["claimer"]["claimed"] == 0


def test_stopping_a_runner_gives_its_claimed_tasks_back(
    runners: Callable[..., TaskRunner], schema: tuple[str, str]
) -> None:
    release = threading.Event()
    first = runners("first")
    first.register_agent(
        {"agent_id": "slow", "capabilities": {"work"}, "max_concurrency": 2},
        lambda task: release.wait(30),
    )
    handles = first.submit_many({"type": "work"} for _ in range(10))
    store = first._require_store()
    wait_for(lambda: store.counts()[TaskState.RUNNING] == 2)
    owned = [r for r in store.recoverable() if r.owner == "first"]
    assert len(owned) == 4  # prefetch: twice the agent's slots
    first.stop(drain=False)
    release.set()
    with open_store(schema[1]) as reader:
        assert all(r.owner is None for r in reader.recoverable())
        assert reader.counts()[TaskState.QUEUED] == 10
    executions = Executions()
    second = runners("second")
    second.register_agent(
        {"agent_id": "fast", "capabilities": {"work"}, "max_concurrency": 4},
        executions.handler("second"),
    )
    assert [second.handle(h.task_id).result(timeout=30) for h in handles] == ["second"] * 10


def test_a_runner_that_stops_renewing_loses_its_task_and_its_late_result_is_fenced(
    runners: Callable[..., TaskRunner],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A runner paused past its lease (here: its renewals stopped reaching the store):
    another runner rescues the task and runs it; the first one's late COMPLETED is
    refused, and the result stays the second runner's."""
    release = threading.Event()
    paused = runners("paused", lease_s=1.0)
    paused.register_agent(
        {"agent_id": "p", "capabilities": {"work"}, "max_concurrency": 1},
        lambda task: release.wait(30) and "paused",
    )
    handle = paused.submit({"type": "work"})
    wait_for(lambda: handle.state() is TaskState.RUNNING)
    # Frozen from now on, as far as the store can tell: no renewal, no claim, no rescue.
    paused_store = paused._require_store()
    monkeypatch.setattr(paused_store, "renew", lambda owner, lease_s: 0)
    monkeypatch.setattr(paused_store, "claim", lambda *args, **kwargs: [])
    monkeypatch.setattr(paused_store, "rescue_expired", lambda limit: [])
    healthy = runners("healthy", lease_s=1.0)
    healthy.register_agent(
        {"agent_id": "h", "capabilities": {"work"}, "max_concurrency": 1},
        lambda task: "healthy",
    )
    assert healthy.handle(handle.task_id).result(timeout=30) == "healthy"
    release.set()
    journal = paused.status()["actors"]["journal"]
    assert journal["state"] == "running"
    wait_for(lambda: paused._actor_statistics(paused._peers.get("journal"))["fenced"] == 1)
    record = handle.record()
    assert (record.state, record.result, record.attempt) == (TaskState.COMPLETED, "healthy", 2)
    assert [a.outcome for a in record.history] == ["lease_expired", "completed"]
    assert handle.result(timeout=5) == "healthy"


def test_a_shared_store_runner_does_not_recover_other_runners_tasks(
    runners: Callable[..., TaskRunner], schema: tuple[str, str]
) -> None:
    with open_store(schema[1]) as store:
        store.insert([make_record(type="work")])
        (claimed,) = store.claim("someone-else", 1, LONG_LEASE)
        store.update([running(claimed)])
    runner = runners("late")
    assert runner.status()["recovered"] == 0
    record = runner.get(claimed.task_id)
    assert (record.state, record.owner) == (TaskState.RUNNING, "someone-else")


def test_a_crashing_claimer_is_restarted_and_loses_no_task(
    runners: Callable[..., TaskRunner],
) -> None:
    executions = Executions()
    runner = runners("crashy", claim_interval_s=0.05)
    runner.register_agent(
        {"agent_id": "a", "capabilities": {"work"}, "max_concurrency": 4},
        executions.handler("crashy"),
    )
    handles = []
    for round_ in range(5):
        handles += runner.submit_many({"type": "work", "payload": {"n": n}} for n in range(100))
        runner.inject_crash("claimer", f"crash {round_}")
    assert runner.drain(60)
    assert set(executions.per_task()) == {h.task_id for h in handles}
    assert set(executions.per_task().values()) == {1}
    status = runner.status()
    assert status["actors"]["claimer"]["restarts"] == 5
    assert status["counts"]["completed"] == 500


def test_a_failing_store_never_crashes_the_claimer(
    runners: Callable[..., TaskRunner],
    monkeypatch: pytest.MonkeyPatch,
    logs: list[dict[str, Any]],
) -> None:
    """The database unreachable for a while (here: every claimer call raises): the claimer
    logs, says when its leases are at risk, keeps its place in the tree, and carries on
    when the store is back."""
    runner = runners("flaky", lease_s=0.3, claim_interval_s=0.05)
    store = runner._require_store()
    down = threading.Event()
    down.set()
    for name in ("renew", "claim", "rescue_expired", "heartbeat_runner"):
        real = getattr(store, name)

        def failing(*args: Any, __real: Any = real, **kwargs: Any) -> Any:
            if down.is_set():
                raise StoreUnavailable("postgres store postgresql://db failed: down [08006]")
            return __real(*args, **kwargs)

        monkeypatch.setattr(store, name, failing)
    runner.register_agent(
        {"agent_id": "a", "capabilities": {"work"}, "max_concurrency": 2}, lambda task: "ok"
    )
    wait_for(lambda: any(e["event"] == "claimer.leases_lost" for e in logs))
    failed = [e for e in logs if e["event"] == "claimer.store_failed"]
    assert failed
    assert len(failed) < 10  # one line per distinct failure, not one per tick
    down.clear()
    handle = runner.submit({"type": "work"})
    assert handle.result(timeout=10) == "ok"
    wait_for(lambda: any(e["event"] == "claimer.leases_renewed" for e in logs))
    status = runner.status()
    assert status["actors"]["claimer"]["restarts"] == 0
    assert status["shared"]["claimer"]["store_errors"] >= len(failed)
    assert status["shared"]["claimer"]["leases_at_risk"] is False


# -- delayed tasks and cron on a shared store ------------------------------------------------


def test_due_delayed_tasks_are_promoted_once_and_later_ones_left_alone(
    schema: tuple[str, str], stores: Callable[[], PostgresStore]
) -> None:
    name, _ = schema
    a, b = stores(), stores()
    past = datetime.now(UTC) - timedelta(seconds=1)
    future = datetime(2999, 1, 1, tzinfo=UTC)
    due = a.insert([make_record(state=TaskState.PENDING, next_attempt_at=past) for _ in range(5)])
    (later,) = a.insert([make_record(state=TaskState.PENDING, next_attempt_at=future)])
    assert a.claim("A", 10, 30.0) == []  # a delayed task is never claimed as it is
    promoted: list[TaskRecord] = []
    barrier = threading.Barrier(2)

    def promote(store: PostgresStore) -> None:
        barrier.wait(WAIT_S)
        promoted.extend(store.promote_due(3))
        promoted.extend(store.promote_due(3))

    threads = [threading.Thread(target=promote, args=(s,)) for s in (a, b)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT_S)
    assert sorted(r.task_id for r in promoted) == sorted(r.task_id for r in due)  # each once
    for record in promoted:
        assert record.state is TaskState.QUEUED
        assert record.next_attempt_at is None and record.owner is None
        assert a.get(record.task_id) == record
        assert column(name, record.task_id, "state") == "QUEUED"
    assert a.get(later.task_id) == later
    assert len(a.claim("A", 10, 30.0)) == 5
    assert a.promote_due(0) == []


def test_a_rescue_leaves_a_delayed_task_waiting(stores: Callable[[], PostgresStore]) -> None:
    store = stores()
    future = datetime(2999, 1, 1, tzinfo=UTC)
    expired = datetime.now(UTC) - timedelta(seconds=1)
    (delayed,) = store.insert(
        [
            make_record(
                state=TaskState.PENDING,
                next_attempt_at=future,
                owner="gone",
                lease_expires_at=expired,
            )
        ]
    )
    (rescued,) = store.rescue_expired(10)
    assert rescued.task_id == delayed.task_id
    assert rescued.state is TaskState.PENDING and rescued.next_attempt_at == future
    assert rescued.owner is None
    assert store.promote_due(10) == []


def test_a_delayed_task_in_a_shared_store_runs_on_any_runner_after_its_time(
    runners: Callable[..., TaskRunner],
) -> None:
    executions = Executions()
    submitter = runners("submitter")
    worker = runners("worker", claim_interval_s=0.05)
    worker.register_agent(
        {"agent_id": "w", "capabilities": {"later"}, "max_concurrency": 2},
        executions.handler("worker"),
    )
    handle = submitter.submit({"type": "later"}, delay_s=0.3)
    waiting = handle.record()
    assert waiting.state is TaskState.PENDING and waiting.owner is None
    assert handle.result(timeout=WAIT_S) == "worker"
    started = handle.record().history[0].started_at
    assert waiting.next_attempt_at is not None and started is not None
    assert started >= waiting.next_attempt_at
    assert worker.status()["shared"]["claimer"]["promoted"] == 1
    cancelled = submitter.submit({"type": "later"}, delay_s=3600)
    assert cancelled.cancel()  # no runner holds it: the store cancels it
    assert cancelled.state() is TaskState.CANCELLED
    assert not cancelled.cancel()


def test_an_unclaimed_task_in_a_shared_store_can_be_cancelled(
    stores: Callable[[], PostgresStore], runners: Callable[..., TaskRunner]
) -> None:
    submitter = runners("submitter")  # no agents: it claims nothing
    queued = submitter.submit({"type": "nobody-runs-this"})
    assert queued.cancel()
    assert queued.state() is TaskState.CANCELLED
    store = stores()
    (claimed,) = store.insert([make_record()])
    store.claim("A", 1, 30.0)
    assert store.cancel_unowned(claimed.task_id) is None  # a runner holds it
    assert store.get(claimed.task_id).state is TaskState.QUEUED


def test_only_the_cron_leader_fires_and_another_takes_over_when_it_stops(
    runners: Callable[..., TaskRunner],
) -> None:
    entry = CronSpec(name="beat", cron="* * * * * *", task=TaskSpec(type="tick"))
    a = runners("A", cron=(entry,))
    b = runners("B", cron=(entry,))

    def stats(runner: TaskRunner) -> dict[str, Any]:
        found: dict[str, Any] = runner.status()["scheduler"]
        return found

    wait_for(lambda: stats(a)["cron_fired"] + stats(b)["cron_fired"] >= 3)
    fired = {"A": stats(a)["cron_fired"], "B": stats(b)["cron_fired"]}
    leader, other = (a, b) if fired["A"] >= fired["B"] else (b, a)
    assert min(fired.values()) <= 1  # one runner fires (the lease may change hands once)
    wait_for(lambda: stats(other)["cron_skipped"] >= 1)
    leader.stop(drain=False)  # resigns the lease: the other fires from its next tick
    before = stats(other)["cron_fired"]
    wait_for(lambda: stats(other)["cron_fired"] >= before + 2)
    keys = [
        r.spec.idempotency_key
        for r in other._require_store().list_tasks(limit=10_000)
        if r.spec.type == "tick"
    ]
    assert len(keys) == len(set(keys))  # one task per fire time
