"""Retention: a runner deletes finished tasks from its store once they are old enough.

The store-level behaviour (what is deleted, in which order, keys freed) is in the journal
contract tests; here the runner's timer, the journal's batches and the settings.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from messages import AgentSpec, PermanentError, TaskState
from supervisor import RunnerConfig, TaskContext, TaskRunner
from tests.conftest import WAIT_S, wait_for


def handler(task: TaskContext) -> Any:
    if task.payload.get("fail"):
        raise PermanentError("told to fail")
    gate = _gates.get(task.payload.get("gate", ""))
    if gate is not None:
        gate.wait(WAIT_S)
    return task.payload.get("n")


_gates: dict[str, threading.Event] = {}


def journal_stats(runner: TaskRunner) -> dict[str, Any]:
    stats: dict[str, Any] = runner._actor_statistics(runner._peers.get("journal"))
    return stats


@pytest.mark.parametrize("store", ["memory://", "sqlite"])
def test_finished_tasks_are_pruned_and_live_ones_and_dead_letters_kept(
    store: str, tmp_path: Path, logs: list[dict[str, Any]]
) -> None:
    url = f"sqlite:///{tmp_path / 'tasks.db'}" if store == "sqlite" else store
    gate = _gates.setdefault(f"hold-{store}", threading.Event())
    config = RunnerConfig(store=url, keep_finished_s=0.05, prune_interval_s=0.02)
    with TaskRunner.start(config) as runner:
        runner.register_agent(
            AgentSpec(agent_id="a", capabilities={"t"}, max_concurrency=2), handler
        )
        held = runner.submit({"type": "t", "payload": {"gate": f"hold-{store}"}})
        dead = runner.submit({"type": "t", "payload": {"fail": True}})
        done = runner.submit_many([{"type": "t", "payload": {"n": n}} for n in range(50)])
        assert [h.result(WAIT_S) for h in done[:3]] == [0, 1, 2]
        wait_for(
            lambda: (
                runner.status()["counts"]["completed"] == 0
                and journal_stats(runner)["pruned"] == 50
            )
        )
        assert all(runner._require_store().get(h.task_id) is None for h in done)
        assert runner.get(held.task_id).state is TaskState.RUNNING  # live: kept
        assert runner.wait(dead.task_id, WAIT_S).state is TaskState.DEAD_LETTERED
        gate.set()
        assert held.result(WAIT_S) is None
        wait_for(lambda: runner._require_store().get(held.task_id) is None)
        assert runner.get(dead.task_id).state is TaskState.DEAD_LETTERED  # not asked for
    pruned = [e for e in logs if e["event"] == "journal.pruned"]
    assert sum(e["tasks"] for e in pruned) == 51
    assert all(sorted(e["states"]) == ["CANCELLED", "COMPLETED"] for e in pruned)


def test_dead_letters_are_pruned_on_their_own_setting_and_keys_come_free() -> None:
    config = RunnerConfig(keep_dead_letters_s=0.05, prune_interval_s=0.02)
    with TaskRunner.start(config) as runner:
        runner.register_agent(AgentSpec(agent_id="a", capabilities={"t"}), handler)
        dead = runner.submit({"type": "t", "payload": {"fail": True}, "idempotency_key": "k"})
        ok = runner.submit({"type": "t", "payload": {"n": 1}})
        assert ok.result(WAIT_S) == 1
        wait_for(lambda: runner._require_store().get(dead.task_id) is None)
        assert runner.get(ok.task_id).state is TaskState.COMPLETED  # finished: not asked for
        again = runner.submit({"type": "t", "payload": {"n": 2}, "idempotency_key": "k"})
        assert again.task_id != dead.task_id  # the key was freed with the pruned task
        assert again.result(WAIT_S) == 2


def test_retention_settings_are_checked() -> None:
    for bad in ({"keep_finished_s": 0}, {"keep_dead_letters_s": -1}, {"prune_interval_s": 0}):
        with pytest.raises(ValueError):
            RunnerConfig(**bad)
