"""``python -m benchmarks.demo``: the real demo command beside the real pykka floor."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from benchmarks import demo
from benchmarks.demo import main


def test_one_small_round_writes_the_document(tmp_path: Path) -> None:
    out = tmp_path / "demo.json"
    document = main(["--rounds", "1", "--tasks", "400", "--agents", "2", "--out", str(out)])
    assert json.loads(out.read_text()) == document
    (only,) = document["rounds"]
    assert only["lost"] == 0 and only["demo_tasks_per_s"] > 0 and only["floor_tasks_per_s"] > 0
    assert only["ratio"] == round(only["demo_tasks_per_s"] / only["floor_tasks_per_s"], 4)
    assert document["config"] == {"tasks": 400, "agents": 2, "rounds": 1, "pinned_cpu": None}
    assert document["summary"]["ratio_median"] == round(only["ratio"], 3)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="Linux CPU affinity only")
def test_pin_cpu_runs_both_sides_on_one_cpu_and_puts_the_affinity_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = os.sched_getaffinity(0)
    cpu = min(before)
    seen: list[set[int]] = []
    real_run_demo = demo.run_demo

    def run_demo(tasks: int, agents: int) -> dict[str, object]:
        seen.append(os.sched_getaffinity(0))  # what the demo's process inherits
        return real_run_demo(tasks, agents)

    monkeypatch.setattr(demo, "run_demo", run_demo)
    document = main(
        ["--rounds", "1", "--tasks", "300", "--agents", "1", "--pin-cpu", str(cpu),
         "--out", str(tmp_path / "demo.json")]
    )  # fmt: skip
    assert seen == [{cpu}]
    assert document["config"]["pinned_cpu"] == cpu
    assert document["rounds"][0]["lost"] == 0
    assert os.sched_getaffinity(0) == before


def test_pin_cpu_refuses_a_cpu_the_process_cannot_use(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        main(["--rounds", "1", "--pin-cpu", "100000", "--out", str(tmp_path / "demo.json")])
