"""Several ``arbiter worker`` processes on one PostgreSQL store.

Three workers drain 10,000 tasks while one of them is SIGKILLed: with a short lease every
task ends COMPLETED, none is lost, and the only tasks executed twice are ones the killed
worker held (its leases expired and the others rescued them). An idle worker starts a task
submitted by another process at once (LISTEN/NOTIFY), although it polls only every 10 s.
``arbiter status`` lists the live runners, and never shows the store's password.

Each test has a schema of its own, dropped afterwards; they skip when PostgreSQL is
unreachable and fail instead when the environment variable ``CI`` is set.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from actors.journal.store import open_store
from messages.task import TaskState
from supervisor.runner import RunnerConfig, TaskRunner
from tests.integration.test_journal_contract import postgres_schema, run_sql

pytest.importorskip("psycopg")

import psycopg.errors
from psycopg import sql

pytestmark = pytest.mark.postgres

REPO = Path(__file__).resolve().parents[2]
RECORD = "work=tests.acceptance.shared_handlers:record"
STAMP = "stamp=tests.acceptance.shared_handlers:stamp"
TASKS = 10_000
CONCURRENCY = 8
LEASE_S = 2.0
WAKE_LIMIT_S = 0.2

_tick = threading.Event()  # never set: polls wait on it, no sleeping for ordering


@pytest.fixture
def schema() -> Iterator[tuple[str, str]]:
    """A fresh schema on the test database, as (name, store URL); dropped afterwards."""
    with postgres_schema() as found:
        yield found


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start ``arbiter worker`` processes (stderr: JSON logs in tmp_path); killed after."""
    started: list[tuple[subprocess.Popen[bytes], IO[bytes]]] = []

    def start(url: str, *args: str) -> subprocess.Popen[bytes]:
        err = (tmp_path / f"worker{len(started)}.err").open("wb")
        command = [sys.executable, "-m", "supervisor.cli", "--log-format", "json", "worker"]
        process = subprocess.Popen(
            [*command, "--store", url, *args],
            cwd=REPO, env=_env(tmp_path), stdout=subprocess.DEVNULL, stderr=err,
        )  # fmt: skip
        started.append((process, err))
        return process

    yield start
    for process, err in started:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)
        err.close()


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["ARBITER_TEST_LOG"] = str(tmp_path / "executed.log")
    return env


def _wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        _tick.wait(0.005)


def _lines(path: Path) -> list[str]:
    """The complete lines of ``path`` (a line cut by a kill has no newline: dropped)."""
    if not path.exists():
        return []
    text = path.read_text()
    return text.split("\n")[:-1] if text else []


def _runner_of(schema: str, pid: int) -> str | None:
    """The runner id of the worker process ``pid`` (None before it registered)."""
    try:
        rows = run_sql(
            sql.SQL("SELECT runner_id FROM {} WHERE pid = %s").format(
                sql.Identifier(schema, "runners")
            ),
            (pid,),
        )
    except psycopg.errors.UndefinedTable:  # no store in the schema yet
        return None
    return str(rows[0][0]) if rows else None


def _errors(tmp_path: Path) -> str:
    return "\n".join(p.read_text()[-2000:] for p in sorted(tmp_path.glob("worker*.err")))


def _submit(url: str, specs: list[dict[str, Any]]) -> list[str]:
    """Submit with a runner of this process that has no agents (it claims nothing)."""
    runner = TaskRunner.start(RunnerConfig(store=url, queue_capacity=len(specs) + 1))
    try:
        handles = []
        for start in range(0, len(specs), 1000):
            handles += runner.submit_many(specs[start : start + 1000])
    finally:
        runner.stop(drain=False)
    return [str(handle.task_id) for handle in handles]


def test_three_workers_drain_10000_tasks_and_a_sigkilled_one_loses_none(
    schema: tuple[str, str], workers: Callable[..., subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    name, url = schema
    log = tmp_path / "executed.log"
    submitted = set(_submit(url, [{"type": "work", "payload": {"n": n}} for n in range(TASKS)]))
    assert len(submitted) == TASKS
    args = (
        "--handler", RECORD, "--concurrency", str(CONCURRENCY), "--lease", str(LEASE_S), "--drain",
    )  # fmt: skip
    victim, *survivors = [workers(url, *args) for _ in range(3)]
    kill_at = random.Random(7).randint(2000, 5000)

    def victim_is_busy() -> bool:
        if victim.poll() is not None:
            return True  # it died on its own: the assertion below says so
        lines = _lines(log)
        return len(lines) >= kill_at and any(line.startswith(f"{victim.pid} ") for line in lines)

    _wait_until(victim_is_busy, 120, f"{kill_at} executions, some by the victim")
    victim_runner = _runner_of(name, victim.pid)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    # What the victim held at its death (its leases run for up to LEASE_S more).
    held = {
        str(task_id)
        for (task_id,) in run_sql(
            sql.SQL(
                "SELECT task_id FROM {} WHERE owner = %s "
                "AND state NOT IN ('COMPLETED', 'CANCELLED', 'DEAD_LETTERED')"
            ).format(sql.Identifier(name, "tasks")),
            (victim_runner,),
        )
    }
    assert victim.returncode == -signal.SIGKILL, _errors(tmp_path)
    assert victim_runner is not None
    assert len(_lines(log)) < TASKS, "the victim was killed after the run: kill earlier"

    for worker in survivors:  # --drain: each exits once no task is unfinished
        assert worker.wait(timeout=180) == 0, _errors(tmp_path)

    with open_store(url) as store:
        records = store.list_tasks(limit=TASKS + 1)
        runners = store.live_runners(3600)
    assert {str(r.task_id) for r in records} == submitted  # nothing lost, nothing foreign
    assert Counter(r.state for r in records) == {TaskState.COMPLETED: TASKS}
    executions = Counter(line.split()[1] for line in _lines(log))
    assert set(executions) == submitted
    duplicates = {task_id for task_id, n in executions.items() if n > 1}
    assert duplicates <= held  # re-run only what the killed worker held
    by_victim = {line.split()[1] for line in _lines(log) if line.startswith(f"{victim.pid} ")}
    assert duplicates <= by_victim  # ... and had started
    assert max(executions.values()) <= 2
    # Never at the same time: the two executions of a task ran on two processes, the
    # second one after the first had ended (the victim's, cut short by the kill, are not
    # in the log; those it finished are).
    spans: dict[str, list[tuple[int, int, str]]] = {}
    for line in _lines(log):
        pid, task_id, start, end = line.split()
        spans.setdefault(task_id, []).append((int(start), int(end), pid))
    for task_id in duplicates:
        (_, first_end, first_pid), (second_start, _, second_pid) = sorted(spans[task_id])
        assert first_pid == str(victim.pid) != second_pid
        assert first_end <= second_start, f"task {task_id} ran twice at once"
    # Tasks whose RUNNING was committed before the kill were rescued with the attempt
    # counted. (One whose handler ran before its RUNNING was committed came back as never
    # started: the store could not know; it is among the duplicates all the same.)
    rescued = {
        str(r.task_id) for r in records if any(a.outcome == "lease_expired" for a in r.history)
    }
    assert rescued <= held
    # The survivors left the runners table when they stopped; the victim's row stays.
    assert [r["runner_id"] for r in runners] == [victim_runner]


def test_an_idle_worker_starts_a_new_task_at_once_thanks_to_notify(
    schema: tuple[str, str], workers: Callable[..., subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    name, url = schema
    log = tmp_path / "executed.log"
    launched = time.monotonic()
    worker = workers(
        url, "--handler", STAMP, "--concurrency", "2", "--claim-interval", "10", "--lease", "30"
    )
    err = tmp_path / "worker0.err"
    _wait_until(
        lambda: worker.poll() is not None or "worker.started" in err.read_text(),
        60,
        "the worker to start",
    )
    assert worker.poll() is None, _errors(tmp_path)
    assert _runner_of(name, worker.pid) is not None
    submitter = TaskRunner.start(RunnerConfig(store=url))
    latencies = []
    try:
        for n in range(3):
            submitted_at = time.time()
            submitter.submit({"type": "stamp", "payload": {"n": n}})
            _wait_until(lambda n=n: len(_lines(log)) > n, 30, f"task {n} to start")
            mark, started_at = _lines(log)[n].split()
            assert int(mark) == n
            latencies.append(float(started_at) - submitted_at)
    finally:
        submitter.stop(drain=False)
    # Polling (every 10 s from the worker's start) cannot have found these tasks.
    assert time.monotonic() - launched < 10.0, "too slow a machine to tell NOTIFY from polling"
    assert max(latencies) < WAKE_LIMIT_S, latencies


def test_status_lists_live_runners_and_hides_the_password(
    schema: tuple[str, str], workers: Callable[..., subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    name, url = schema
    secret_url = f"{url}&password=hunter2"  # trust auth: the password is never asked for
    worker = workers(secret_url, "--handler", STAMP, "--concurrency", "3")
    _wait_until(
        lambda: worker.poll() is not None or _runner_of(name, worker.pid) is not None,
        60,
        "the worker to register",
    )
    assert worker.poll() is None, _errors(tmp_path)

    def status(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "supervisor.cli", "status", "--store", secret_url, *extra],
            cwd=REPO, env=_env(tmp_path), capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    shown = status("--json")
    assert shown.returncode == 0, shown.stderr
    summary = json.loads(shown.stdout)
    (runner,) = summary["runners"]
    assert runner["pid"] == worker.pid
    assert runner["runner_id"] == _runner_of(name, worker.pid)
    assert runner["tasks"] == 0
    assert "hunter2" not in shown.stdout + shown.stderr
    assert "***" in summary["store"]
    table = status()
    assert table.returncode == 0, table.stderr
    assert f":{worker.pid}" in table.stdout
    assert "hunter2" not in table.stdout + table.stderr

    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=60) == 0, _errors(tmp_path)
    assert "hunter2" not in _errors(tmp_path)
    assert json.loads(status("--json").stdout)["runners"] == []


def test_a_worker_paused_past_its_lease_has_its_late_result_refused_and_logged(
    schema: tuple[str, str], workers: Callable[..., subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    """SIGSTOP a worker in the middle of a task, past its lease: another worker rescues
    the task and completes it. Resumed (SIGCONT), the paused worker finishes its attempt,
    and its COMPLETED write is fenced: refused, logged, and the other's result stays."""
    name, url = schema
    (task_id,) = _submit(url, [{"type": "slow"}])
    log = tmp_path / "executed.log"
    args = ["--handler", "slow=tests.acceptance.shared_handlers:slow_pid", "--lease", "1"]
    paused = workers(url, *args, "--concurrency", "1")
    _wait_until(lambda: f"start {paused.pid} {task_id}" in _lines(log), 60, "the first start")
    paused.send_signal(signal.SIGSTOP)
    try:
        rescuer = workers(url, *args, "--concurrency", "1")
        with open_store(url) as store:

            def completed() -> bool:
                record = store.get(task_id)
                return record is not None and record.state is TaskState.COMPLETED

            _wait_until(completed, 60, "the rescuer to complete the task")
            done = store.get(task_id)
        assert done is not None
        assert done.result == rescuer.pid
        # 2 if the paused worker's RUNNING was committed before the pause, else 1
        assert done.attempt in (1, 2)
    finally:
        paused.send_signal(signal.SIGCONT)
    _wait_until(lambda: f"end {paused.pid} {task_id}" in _lines(log), 60, "the late end")
    stderr = tmp_path / "worker0.err"

    def fenced() -> list[dict[str, Any]]:
        """The paused worker's refused COMPLETED writes of the task (its RUNNING write
        may be refused too, when it was not committed before the pause)."""
        events = [json.loads(line) for line in _lines(stderr) if line.startswith("{")]
        return [
            e
            for e in events
            if e.get("event") == "store.update_fenced"
            and e["task_id"] == task_id
            and e["state"] == "COMPLETED"
        ]

    _wait_until(lambda: bool(fenced()), 60, "the paused worker to log its refused result")
    (refused,) = fenced()
    assert refused["attempt"] == 1
    assert refused["current_owner"] != refused["stale_owner"]
    for process in (paused, rescuer):
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, _errors(tmp_path)
    with open_store(url) as store:
        final = store.get(task_id)
    assert final is not None and final.result == rescuer.pid  # unchanged by the late write
    assert name
