"""``python -m benchmarks.demo``: the real demo command beside the real pykka floor."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.demo import main


def test_one_small_round_writes_the_document(tmp_path: Path) -> None:
    out = tmp_path / "demo.json"
    document = main(["--rounds", "1", "--tasks", "400", "--agents", "2", "--out", str(out)])
    assert json.loads(out.read_text()) == document
    (only,) = document["rounds"]
    assert only["lost"] == 0 and only["demo_tasks_per_s"] > 0 and only["floor_tasks_per_s"] > 0
    assert only["ratio"] == round(only["demo_tasks_per_s"] / only["floor_tasks_per_s"], 4)
    assert document["config"] == {"tasks": 400, "agents": 2, "rounds": 1}
    assert document["summary"]["ratio_median"] == round(only["ratio"], 3)
