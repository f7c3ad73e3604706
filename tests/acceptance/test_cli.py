"""The ``arbiter`` command as a user runs it: a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys


def run_cli(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "supervisor.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_supervision_demo_shows_restarts_in_the_log() -> None:
    proc = run_cli("--log-format", "json", "supervision-demo", "--messages", "500",
                   "--crash-every", "100", "--json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["processed"] == 500
    assert summary["lost"] == 0
    assert summary["restarts"] == 4
    events = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    restarted = [e for e in events if e["event"] == "supervisor.child_restarted"]
    assert [e["restart_count"] for e in restarted] == [1, 2, 3, 4]
    assert all(e["child"] == "tally" for e in restarted)
    assert sum(e["event"] == "supervisor.child_failed" for e in events) == 4


CRASH_ALL = ("queue", "router", "registry", "retry", "scheduler", "health", "performance", "agent")


def test_demo_crashing_every_actor_loses_no_task() -> None:
    crash_args = [arg for actor in CRASH_ALL for arg in ("--crash", actor)]
    proc = run_cli("--log-format", "json", "demo", "--tasks", "20000", "--fail-rate", "0.02",
                   *crash_args, "--crash-interval", "0.1", "--json", timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-5000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["submitted"] == 20000
    assert summary["completed"] + summary["dead_lettered"] == summary["submitted"]
    assert summary["lost"] == 0
    assert summary["restarts"] > 0
    events = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    restarted = {e["child"] for e in events if e["event"] == "supervisor.child_restarted"}
    # Every pipeline actor that was crashed shows its restart in the log.
    assert {"queue", "router", "registry", "retry", "health", "performance"} <= restarted
    assert any(child.startswith("agent:") for child in restarted)
    assert set(summary) == {
        "submitted", "completed", "failed", "dead_lettered", "lost", "duplicates", "restarts",
        "elapsed_s", "throughput_per_s", "route_assign_ms", "end_to_end_ms",
    }  # fmt: skip
    assert set(summary["route_assign_ms"]) == {"p50", "p95", "p99"}


def test_demo_without_crashes_completes_everything() -> None:
    proc = run_cli("demo", "--tasks", "2000", "--agents", "3", "--json")
    assert proc.returncode == 0, proc.stderr[-5000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["completed"] == 2000
    assert summary["lost"] == summary["duplicates"] == summary["restarts"] == 0
