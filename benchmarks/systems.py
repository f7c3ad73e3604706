"""The registry of benchmarked systems: ``SYSTEMS`` maps a name to a system object.

A system object provides (see ``System``):

* ``noop_throughput(n) -> float``: run n no-op tasks, return tasks/s from the first enqueue
  to the last completion (counted inside the task);
* ``paced_latency(rate_per_s, n) -> {"end_to_end_ms": {"p50", "p95", "p99"}}``: submit n
  tasks open-loop at the given rate, latency from scheduled submit time to completion;
* ``durable_submit(n) -> {"tasks_per_s": ...}``: hand n tasks over with no consumer running
  (Arbiter adds ``tasks_per_s_single_submit``);
* ``memory_per_queued_task(n) -> {"bytes_per_task": ...}``: tracemalloc bytes per task with
  n tasks queued and no consumer;

  every method is optional: a system without it is simply not run on that workload;
* optionally ``unavailable_reason() -> str | None`` (a reason to skip it, e.g. a missing
  package), ``packages`` (distribution names whose versions go into the report) and
  ``settings() -> dict`` (how it is set up, recorded in the report's config).

Floors are the systems whose name starts with ``floor-``; every other system gets ratio
figures against them.

Arbiter's own systems live in ``benchmarks/arbiter_systems.py`` (written with the
runtime), which must expose a ``SYSTEMS`` dict of the same shape; ``register_arbiter()``
adds them when that module exists.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any, Protocol, runtime_checkable

from benchmarks.floors import PykkaFloor, QueueFloor
from benchmarks.peers import CeleryPeer, DramatiqPeer, HueyPeer


@runtime_checkable
class System(Protocol):
    def noop_throughput(self, n: int) -> float: ...


@runtime_checkable
class PacedSystem(System, Protocol):
    def paced_latency(self, rate_per_s: float, n: int) -> dict[str, dict[str, float]]: ...


FLOOR_SYSTEMS: dict[str, Any] = {
    "floor-queue": QueueFloor(),
    "floor-pykka-4hop": PykkaFloor(),
}
PEER_SYSTEMS: dict[str, Any] = {
    "dramatiq": DramatiqPeer(),
    "huey": HueyPeer(),
    "celery": CeleryPeer(),
}
SYSTEMS: dict[str, Any] = {**FLOOR_SYSTEMS, **PEER_SYSTEMS}

ARBITER_MODULE = "benchmarks.arbiter_systems"
ARBITER_PACKAGES: tuple[str, ...] = ("arbiter-taskrunner", "pykka", "pydantic", "structlog")


def register_arbiter() -> tuple[list[str], str]:
    """Add the systems of ``benchmarks.arbiter_systems`` (if present) to ``SYSTEMS``.

    Returns (names added, a message to print). Floors stay first, then Arbiter, then peers.
    """
    if importlib.util.find_spec(ARBITER_MODULE) is None:
        return [], f"arbiter systems are not available yet ({ARBITER_MODULE} does not exist)"
    try:
        module = importlib.import_module(ARBITER_MODULE)
    except Exception as exc:
        return [], f"arbiter systems are not available: importing {ARBITER_MODULE} failed: {exc!r}"
    found = getattr(module, "SYSTEMS", None)
    if not isinstance(found, dict):
        return [], f"arbiter systems are not available: {ARBITER_MODULE} has no SYSTEMS dict"
    added = [name for name in found if name not in FLOOR_SYSTEMS]
    ordered: dict[str, Any] = dict(FLOOR_SYSTEMS)
    ordered.update({name: found[name] for name in added})
    ordered.update({k: v for k, v in SYSTEMS.items() if k not in ordered})
    SYSTEMS.clear()
    SYSTEMS.update(ordered)
    return added, f"arbiter systems registered: {', '.join(added) or '(none)'}"


def unavailable_reason(system: Any) -> str | None:
    """Why the system cannot run here, or None."""
    check = getattr(system, "unavailable_reason", None)
    if callable(check):
        reason = check()
        return str(reason) if reason else None
    return None


def supports_paced(system: Any) -> bool:
    return callable(getattr(system, "paced_latency", None))


def supports(system: Any, workload: str) -> bool:
    """True if the system has the method of that workload (named like the workload)."""
    return callable(getattr(system, workload, None))


def settings_of(system: Any) -> dict[str, Any] | None:
    describe = getattr(system, "settings", None)
    return dict(describe()) if callable(describe) else None


def packages_of(name: str, system: Any) -> tuple[str, ...]:
    declared = getattr(system, "packages", None)
    if declared is not None:
        return tuple(declared)
    if name.startswith("arbiter"):
        return ARBITER_PACKAGES
    return ()
