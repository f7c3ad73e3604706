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
