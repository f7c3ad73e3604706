"""``arbiter submit | worker | status | tasks | retry-dead`` on a SQLite store.

Most tests run the command as a user does (a subprocess); the in-process ones at the end
call ``supervisor.cli.main`` so that coverage sees the code.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from actors.journal.store import open_store
from messages.task import TaskState
from supervisor.cli import main

REPO = Path(__file__).resolve().parents[2]
APPEND = "tests.acceptance.crash_handlers:append_id"
FAIL = "tests.acceptance.crash_handlers:fail_always"

_tick = threading.Event()  # never set: polls wait on it, no sleeping for ordering


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["ARBITER_TEST_LOG"] = str(tmp_path / "executed.log")
    return env


def run_cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 120.0
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "supervisor.cli", "--log-format", "json", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _wait_until(condition: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        _tick.wait(0.005)


def _events(stderr: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


def _states(url: str) -> dict[str, TaskState]:
    with open_store(url) as store:
        return {str(r.task_id): r.state for r in store.list_tasks(limit=100_000)}


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _assert_one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, proc.stderr
    for needle in needles:
        assert needle in errors[0]


# -- subprocess: the commands as a user runs them -------------------------------------------
def test_submit_status_tasks_use_arbiter_db_in_the_working_directory(tmp_path: Path) -> None:
    first = run_cli("submit", "--type", "work", "--payload", '{"file": "a.py"}',
                    "--priority", "7", cwd=tmp_path)  # fmt: skip
    assert first.returncode == 0, first.stderr
    task_id = first.stdout.strip()
    uuid.UUID(task_id)
    assert (tmp_path / "arbiter.db").exists()

    status = run_cli("status", "--json", cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    summary = json.loads(status.stdout)
    assert summary["counts"]["queued"] == 1
    assert set(summary["counts"]) == {state.value.lower() for state in TaskState}
    assert summary["unfinished"] == 1

    tasks = run_cli("tasks", "--json", cwd=tmp_path)
    assert tasks.returncode == 0, tasks.stderr
    (record,) = json.loads(tasks.stdout)
    assert record["task_id"] == task_id
    assert record["state"] == "QUEUED"
    assert record["spec"]["payload"] == {"file": "a.py"}
    assert record["spec"]["priority"] == 7

    table = run_cli("tasks", "--state", "QUEUED", cwd=tmp_path)
    assert table.returncode == 0
    assert task_id in table.stdout
    assert "queued" in table.stdout
    assert run_cli("tasks", "--state", "completed", cwd=tmp_path).stdout == ""


def test_submit_with_a_used_idempotency_key_prints_the_existing_id(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 't.db'}"
    ids = [
        run_cli("submit", "--store", url, "--type", "work", "--idempotency-key", "order-42",
                cwd=tmp_path).stdout.strip()
        for _ in range(2)
    ]  # fmt: skip
    assert ids[0] == ids[1]
    assert list(_states(url)) == [ids[0]]
    again = run_cli("submit", "--store", url, "--type", "work", "--idempotency-key",
                    "order-42", "--json", cwd=tmp_path)  # fmt: skip
    assert json.loads(again.stdout) == {"task_id": ids[0], "state": "queued"}


def test_submit_needs_json_and_a_valid_task(tmp_path: Path) -> None:
    bad_json = run_cli("submit", "--type", "work", "--payload", "{not json", cwd=tmp_path)
    _assert_one_line_error(bad_json, "--payload is not valid JSON")
    bad_priority = run_cli("submit", "--type", "work", "--priority", "42", cwd=tmp_path)
    _assert_one_line_error(bad_priority, "invalid task", "priority")
    assert not (tmp_path / "arbiter.db").exists()  # refused before the store was touched


def test_submitted_tasks_stay_queued_until_a_worker_drains_them(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 't.db'}"
    env = _env(tmp_path)
    ids = {
        run_cli("submit", "--store", url, "--type", "work", "--payload", str(n),
                cwd=tmp_path).stdout.strip()
        for n in range(5)
    }  # fmt: skip
    assert _states(url) == dict.fromkeys(ids, TaskState.QUEUED)

    worker = run_cli("worker", "--store", url, "--handler", f"work={APPEND}",
                     "--concurrency", "2", "--drain", "--json", cwd=REPO, env=env)  # fmt: skip
    assert worker.returncode == 0, worker.stderr
    summary = json.loads(worker.stdout)
    assert summary["reason"] == "drained"
    assert summary["completed"] == 5
    assert summary["drained"] is True
    assert summary["unfinished"] == 0
    names = [e["event"] for e in _events(worker.stderr)]
    assert names.index("worker.started") < names.index("worker.stopped")
    started = next(e for e in _events(worker.stderr) if e["event"] == "worker.started")
    assert started["types"] == ["work"]
    assert started["concurrency"] == 2
    assert _states(url) == dict.fromkeys(ids, TaskState.COMPLETED)
    assert sorted((tmp_path / "executed.log").read_text().split()) == sorted(ids)


@contextmanager
def _running_worker(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[str], Path]]:
    """An `arbiter worker` of `work` tasks on a fresh SQLite file, started (it logged
    ``worker.started``) and running until a signal: ``(url, process, stderr path)``.
    JSON logs go to the stderr file, the summary (``--json``) to its stdout. Killed at
    the end if still running."""
    url = f"sqlite:///{tmp_path / 't.db'}"
    err_path = tmp_path / "worker.err"
    with err_path.open("w") as err:
        worker = subprocess.Popen(
            [sys.executable, "-m", "supervisor.cli", "--log-format", "json", "worker",
             "--store", url, "--handler", f"work={APPEND}", "--json"],
            cwd=REPO, env=_env(tmp_path), stdout=subprocess.PIPE, stderr=err, text=True,
        )  # fmt: skip
        try:
            _wait_until(lambda: "worker.started" in err_path.read_text())
            yield url, worker, err_path
        finally:
            worker.kill()


def test_a_running_worker_runs_what_is_submitted_meanwhile(tmp_path: Path) -> None:
    """`arbiter submit` beside a running `arbiter worker` on one SQLite file: the worker
    picks the new tasks up."""
    with _running_worker(tmp_path) as (url, worker, err_path):
        ids = {
            run_cli("submit", "--store", url, "--type", "work", "--payload", str(n),
                    cwd=tmp_path).stdout.strip()
            for n in range(3)
        }  # fmt: skip
        _wait_until(lambda: _states(url) == dict.fromkeys(ids, TaskState.COMPLETED))
        worker.send_signal(signal.SIGTERM)
        out, _ = worker.communicate(timeout=60)
    assert worker.returncode == 0, err_path.read_text()
    assert json.loads(out)["completed"] == 3
    assert sorted((tmp_path / "executed.log").read_text().split()) == sorted(ids)
    picked = [e for e in _events(err_path.read_text()) if e["event"] == "journal.picked_up"]
    assert sum(e["tasks"] for e in picked) == 3


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_worker_stops_gracefully_on_a_signal(tmp_path: Path, sig: signal.Signals) -> None:
    with _running_worker(tmp_path) as (_, worker, err_path):
        worker.send_signal(sig)
        out, _ = worker.communicate(timeout=60)
    assert worker.returncode == 0, err_path.read_text()
    assert json.loads(out)["reason"] == "signal"
    events = _events(err_path.read_text())
    assert any(e["event"] == "worker.signal" and e["signal"] == sig.name for e in events)
    assert any(e["event"] == "worker.stopped" for e in events)


def test_a_second_signal_stops_the_drain_at_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 't.db'}"
    for n in range(20):
        run_cli("submit", "--store", url, "--type", "work", "--payload", str(n), cwd=tmp_path)
    # A task no handler of this worker takes: the drain after SIGTERM waits for it.
    run_cli("submit", "--store", url, "--type", "elsewhere", cwd=tmp_path)
    err_path = tmp_path / "worker.err"
    log = tmp_path / "executed.log"
    with err_path.open("w") as err:
        worker = subprocess.Popen(
            [sys.executable, "-m", "supervisor.cli", "--log-format", "json", "worker",
             "--store", url, "--handler", f"work={APPEND}", "--drain-timeout", "300", "--json"],
            cwd=REPO, env=_env(tmp_path), stdout=subprocess.PIPE, stderr=err, text=True,
        )  # fmt: skip
        try:
            _wait_until(lambda: "worker.started" in err_path.read_text())
            worker.send_signal(signal.SIGTERM)
            _wait_until(lambda: "worker.signal" in err_path.read_text())
            _wait_until(lambda: log.exists() and len(log.read_text().split()) == 20)
            worker.send_signal(signal.SIGINT)
            out, _ = worker.communicate(timeout=60)
        finally:
            worker.kill()
    assert worker.returncode == 0, err_path.read_text()
    summary = json.loads(out)
    assert summary["drained"] is False
    assert summary["unfinished"] == 1
    events = _events(err_path.read_text())
    assert any(e["event"] == "worker.unhandled_types" and e["types"] == ["elsewhere"]
               for e in events)  # fmt: skip
    assert any(e["event"] == "worker.forced" and e["signal"] == "SIGINT" for e in events)
    counts = _states(url)
    assert sorted(counts.values()).count(TaskState.COMPLETED) == 20


def test_retry_dead_requeues_dead_letters(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 't.db'}"
    env = _env(tmp_path)
    task_id = run_cli("submit", "--store", url, "--type", "boom", "--max-attempts", "1",
                      cwd=tmp_path).stdout.strip()  # fmt: skip
    worker = run_cli("worker", "--store", url, "--handler", f"boom={FAIL}", "--drain",
                     cwd=REPO, env=env)  # fmt: skip
    assert worker.returncode == 0, worker.stderr
    assert _states(url) == {task_id: TaskState.DEAD_LETTERED}
    dead = run_cli("tasks", "--store", url, "--state", "dead_lettered", cwd=tmp_path)
    assert "boom always fails" in dead.stdout

    retried = run_cli("retry-dead", "--store", url, cwd=tmp_path)
    assert retried.returncode == 0, retried.stderr
    assert retried.stdout.strip() == "1"
    assert _states(url) == {task_id: TaskState.QUEUED}
    again = run_cli("retry-dead", "--store", url, "--json", cwd=tmp_path)
    assert json.loads(again.stdout) == {"requeued": 0}


def test_status_and_tasks_do_not_modify_the_store(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    url = f"sqlite:///{db}"
    for n in range(3):
        run_cli("submit", "--store", url, "--type", "work", "--payload", str(n), cwd=tmp_path)
    before = _digest(db)
    for args in (("status",), ("status", "--json"), ("tasks",), ("tasks", "--json")):
        assert run_cli(*args, "--store", url, cwd=tmp_path).returncode == 0
    assert _digest(db) == before


@pytest.mark.parametrize("command", ["submit", "status", "tasks", "retry-dead", "worker"])
def test_a_file_that_is_not_a_store_is_a_one_line_error(tmp_path: Path, command: str) -> None:
    junk = tmp_path / "notes.db"
    junk.write_bytes(b"these are my notes, not a database\n" * 100)
    extra = {"submit": ["--type", "work"], "worker": ["--handler", f"work={APPEND}"]}
    proc = run_cli(command, "--store", f"sqlite:///{junk}", *extra.get(command, []),
                   cwd=REPO, env=_env(tmp_path))  # fmt: skip
    _assert_one_line_error(proc, str(junk), "not a SQLite database")
    assert junk.read_bytes() == b"these are my notes, not a database\n" * 100


def test_unusable_store_locations_are_one_line_errors(tmp_path: Path) -> None:
    missing_dir = tmp_path / "no" / "such" / "dir" / "t.db"
    proc = run_cli("submit", "--store", f"sqlite:///{missing_dir}", "--type", "w", cwd=tmp_path)
    _assert_one_line_error(proc, str(missing_dir))
    proc = run_cli("status", "--store", f"sqlite:///{missing_dir}", cwd=tmp_path)
    _assert_one_line_error(proc, str(missing_dir))
    proc = run_cli("status", cwd=tmp_path)  # no arbiter.db here yet
    _assert_one_line_error(proc, "arbiter.db")
    assert not (tmp_path / "arbiter.db").exists()
    proc = run_cli("tasks", "--store", "mysql://db/tasks", cwd=tmp_path)
    _assert_one_line_error(proc, "unknown store scheme")


def test_console_script_imports_handlers_from_the_working_directory(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("arbiter")
    if not script.exists():
        pytest.skip("the arbiter console script is not installed next to this Python")
    url = f"sqlite:///{tmp_path / 't.db'}"
    run_cli("submit", "--store", url, "--type", "work", cwd=tmp_path)
    env = _env(tmp_path)
    env.pop("PYTHONPATH")  # the handler module is found because cwd is the project
    proc = subprocess.run(
        [str(script), "worker", "--store", url, "--handler", f"work={APPEND}", "--drain"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert set(_states(url).values()) == {TaskState.COMPLETED}


# -- in-process: the same commands through supervisor.cli.main ------------------------------
@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ARBITER_TEST_LOG", str(tmp_path / "executed.log"))
    monkeypatch.syspath_prepend(str(REPO))
    return tmp_path


def _main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["--log-format", "json", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_in_process_round_trip(in_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _main(capsys, "submit", "--type", "work", "--payload", "[1, 2]")
    assert code == 0
    task_id = out.strip()
    code, out, _ = _main(capsys, "submit", "--type", "boom", "--max-attempts", "1", "--json")
    assert code == 0
    boom_id = json.loads(out)["task_id"]

    code, out, _ = _main(capsys, "status")
    assert code == 0
    assert "queued" in out
    assert "unfinished  2" in out

    handlers = ["--handler", f"work={APPEND}", "--handler", f"boom={FAIL}"]
    code, out, err = _main(capsys, "worker", *handlers, "--drain", "--concurrency", "3")
    assert code == 0, err
    assert "drained" in out
    assert (in_tmp / "executed.log").read_text() == f"{task_id}\n"

    code, out, _ = _main(capsys, "tasks", "--state", "dead_lettered")
    assert boom_id in out
    assert "RuntimeError" in out or "always fails" in out
    code, out, _ = _main(capsys, "tasks", "--json")
    assert {r["task_id"]: r["state"] for r in json.loads(out)} == {
        task_id: "COMPLETED",
        boom_id: "DEAD_LETTERED",
    }
    code, out, _ = _main(capsys, "retry-dead", "--json")
    assert json.loads(out) == {"requeued": 1}
    code, out, _ = _main(capsys, "status", "--json")
    assert json.loads(out)["counts"]["queued"] == 1


def test_in_process_worker_stops_on_sigterm(
    in_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _main(capsys, "submit", "--type", "elsewhere")[0] == 0
    original = signal.getsignal(signal.SIGTERM)

    def terminate() -> None:
        _wait_until(lambda: signal.getsignal(signal.SIGTERM) is not original)
        os.kill(os.getpid(), signal.SIGTERM)

    sender = threading.Thread(target=terminate)
    sender.start()
    code, out, err = _main(capsys, "worker", "--handler", f"work={APPEND}",
                           "--drain-timeout", "0.1", "--json")  # fmt: skip
    sender.join()
    assert code == 0, err
    assert json.loads(out) == {
        "store": "sqlite:///arbiter.db",
        "reason": "signal",
        "completed": 0,
        "failed": 0,
        "unfinished": 1,
        "delayed": 0,
        "drained": False,
    }
    assert signal.getsignal(signal.SIGTERM) is original  # put back


def test_in_process_worker_outside_the_main_thread(
    in_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _main(capsys, "submit", "--type", "work")[0] == 0
    codes: list[int] = []
    runner = threading.Thread(
        target=lambda: codes.append(main(["worker", "--handler", f"work={APPEND}", "--drain"]))
    )
    runner.start()
    runner.join(60)
    assert codes == [0]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["submit", "--type", "w", "--payload", "{"], "--payload is not valid JSON"),
        (["submit", "--type", "", "--payload", "1"], "invalid task: type"),
        (["submit", "--type", "w", "--payload", json.dumps("x" * 1_100_000)], "limit"),
        (["worker"], "at least one --handler"),
        (["worker", "--handler", "=x:y"], "TYPE=package.module:function"),
        (["worker", "--handler", "work"], "TYPE=package.module:function"),
        (["worker", "--handler", f"a={APPEND}", "--handler", f"a={APPEND}"], "twice"),
        (["worker", "--handler", "a=no_such_module_xyz:f"], "cannot import"),
        (["worker", "--handler", "a=tests.acceptance.crash_handlers:nope"], "has no"),
        (["status"], "no task store at arbiter.db"),
        (["retry-dead"], "no task store at arbiter.db"),
        (["tasks", "--store", "sqlite://host/x.db"], "has a host"),
        (["status", "--store", "bogus://x"], "unknown store scheme"),
    ],
)
def test_in_process_errors_exit_2_with_one_line(
    in_tmp: Path, capsys: pytest.CaptureFixture[str], args: list[str], needle: str
) -> None:
    code, out, err = _main(capsys, *args)
    assert code == 2
    assert out == ""
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1
    assert lines[0].startswith(f"arbiter {args[0]}: error: ")
    assert needle in lines[0]


def test_in_process_corrupt_store(in_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (in_tmp / "arbiter.db").write_bytes(b"\x00garbage" * 512)
    for args in (["status"], ["tasks"], ["retry-dead"], ["submit", "--type", "w"]):
        code, _, err = _main(capsys, *args)
        assert code == 2
        assert "arbiter.db is not a SQLite database" in err
    # A SQLite file that is someone else's database is refused too, and left alone.
    conn = sqlite3.connect(in_tmp / "other.db")
    with conn:
        conn.execute("CREATE TABLE notes (text TEXT)")
    conn.close()
    before = _digest(in_tmp / "other.db")
    code, _, err = _main(capsys, "status", "--store", "sqlite:///other.db")
    assert code == 2
    assert "not an Arbiter task store" in err
    assert _digest(in_tmp / "other.db") == before


def test_in_process_status_of_an_empty_memory_store(
    in_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = _main(capsys, "status", "--store", "memory://")
    assert code == 0
    assert "unfinished  0" in out
    code, out, _ = _main(capsys, "tasks", "--store", "memory://", "--json")
    assert json.loads(out) == []


def test_in_process_worker_options_are_checked(
    in_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["worker", "--handler", f"work={APPEND}", "--concurrency", "0"])
    assert exited.value.code == 2
    assert "must be at least 1" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        main(["worker", "--handler", f"work={APPEND}", "--drain-timeout", "-1"])
    assert exited.value.code == 2
    assert "must be seconds >= 0" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        main(["worker", "--handler", f"work={APPEND}", "--commit-window", "-1"])
    assert exited.value.code == 2
    assert "must be at least 0" in capsys.readouterr().err


def test_in_process_delayed_submit_waits_pending_until_a_worker_runs_it(
    in_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = _main(capsys, "submit", "--type", "work", "--delay", "0.3", "--json")
    assert code == 0
    submitted = json.loads(out)
    assert submitted["state"] == "pending"
    code, out, _ = _main(capsys, "tasks", "--state", "pending")
    assert submitted["task_id"] in out
    code, out, err = _main(capsys, "worker", "--handler", f"work={APPEND}", "--drain")
    assert code == 0, err
    assert (in_tmp / "executed.log").read_text() == f"{submitted['task_id']}\n"
    with open_store(f"sqlite:///{in_tmp / 'arbiter.db'}") as store:
        (record,) = store.list_tasks()
    started = record.history[0].started_at
    assert record.state is TaskState.COMPLETED and started is not None
    assert started >= record.created_at + timedelta(seconds=0.3)
    code, out, _ = _main(capsys, "submit", "--type", "work", "--run-at", "2000-01-01T00:00Z")
    assert code == 0  # a past instant: queued at once
    code, out, _ = _main(capsys, "tasks", "--state", "queued")
    assert len(out.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--run-at", "2030-01-01T00:00"], "give a UTC offset"),
        (["--run-at", "tomorrow"], "not an ISO 8601 instant"),
        (["--delay", "-1"], "must be seconds >= 0"),
        (["--delay", "1", "--run-at", "2030-01-01T00:00Z"], "not allowed with argument"),
    ],
)
def test_in_process_bad_delays_are_refused(
    in_tmp: Path, capsys: pytest.CaptureFixture[str], args: list[str], needle: str
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["submit", "--type", "work", *args])
    assert exited.value.code == 2
    assert needle in capsys.readouterr().err
    assert not (in_tmp / "arbiter.db").exists()


def test_a_worker_with_a_cron_entry_submits_and_runs_its_tasks(tmp_path: Path) -> None:
    env = _env(tmp_path)
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "supervisor.cli", "--log-format", "json", "worker"),
            *("--handler", f"work={APPEND}", "--cron", "beat", "* * * * * *", "work"),
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    log = tmp_path / "executed.log"
    try:
        _wait_until(lambda: log.exists() and len(log.read_text().splitlines()) >= 2)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    fired = [e for e in _events(err) if e["event"] == "scheduler.cron_fired"]
    assert len(fired) >= 2
    with open_store(f"sqlite:///{tmp_path / 'arbiter.db'}") as store:
        keys = [r.spec.idempotency_key for r in store.list_tasks()]
    assert len(keys) == len(set(keys)) >= 2
    assert all(key is not None and key.startswith("cron:beat:") for key in keys)


def test_in_process_bad_cron_entries_are_one_line_errors(
    in_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = ["--cron", "x", "every day", "work"]
    code, _, err = _main(capsys, "worker", "--handler", f"work={APPEND}", *bad)
    assert code == 2 and "5 or 6 fields" in err
    twice = ["--cron", "x", "* * * * *", "work"] * 2
    code, _, err = _main(capsys, "worker", "--handler", f"work={APPEND}", *twice)
    assert code == 2 and "distinct names" in err


def test_in_process_prune_deletes_old_finished_tasks(
    in_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for task_type in ("work", "work", "boom"):
        assert _main(capsys, "submit", "--type", task_type, "--max-attempts", "1")[0] == 0
    assert _main(capsys, "submit", "--type", "later", "--delay", "3600")[0] == 0
    handlers = ["--handler", f"work={APPEND}", "--handler", f"boom={FAIL}"]
    code, out, err = _main(capsys, "worker", *handlers, "--drain", "--json")
    assert code == 0, err
    summary = json.loads(out)  # drained, though a task waits an hour: it is not due
    assert (summary["drained"], summary["unfinished"], summary["delayed"]) == (True, 1, 1)
    code, out, _ = _main(capsys, "prune", "--older-than", "3600", "--json")
    assert (code, json.loads(out)) == (0, {"deleted": 0})  # nothing is that old
    code, out, _ = _main(capsys, "prune", "--older-than", "0", "--json")
    assert (code, json.loads(out)) == (0, {"deleted": 2})  # the two completed ones
    code, out, _ = _main(capsys, "prune", "--older-than", "0", "--dead-letters")
    assert (code, out.strip()) == (0, "1")
    code, out, _ = _main(capsys, "status", "--json")
    assert json.loads(out)["counts"]["pending"] == 1  # unfinished: never pruned
    assert json.loads(out)["total"] == 1
    code, _, err = _main(capsys, "prune", "--older-than", "0", "--store", "sqlite:///none.db")
    assert code == 2 and "no task store" in err
