"""Shared fixtures: a running actor system that is always stopped, captured logs."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import structlog
from hypothesis import HealthCheck, settings

from supervisor import ActorSystem

settings.register_profile(
    "ci", max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=60, deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")

WAIT_S = 10.0  # generous upper bound for waits on events; tests never sleep for ordering


@pytest.fixture
def make_system() -> Iterator[Callable[..., ActorSystem]]:
    """Start actor systems with the given options; stop them all after the test."""
    systems: list[ActorSystem] = []

    def _make(**options: Any) -> ActorSystem:
        system = ActorSystem.start(**options)
        systems.append(system)
        return system

    yield _make
    for system in systems:
        system.stop(timeout_s=5.0)


@pytest.fixture
def logs() -> Iterator[list[dict[str, Any]]]:
    """Every structlog event emitted during the test, as dicts."""
    with structlog.testing.capture_logs() as captured:
        yield captured


def wait_for(predicate: Callable[[], bool], timeout: float = WAIT_S) -> None:
    """Wait until ``predicate()`` holds, re-checking every few ms, failing after ``timeout``.

    For state that other threads change without an event to wait on; the result never
    depends on how long the wait takes.
    """
    tick = threading.Event()
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        tick.wait(0.002)


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """A test that runs the CLI in-process configures structlog to write to a stream that
    pytest closes afterwards; put the defaults back after every test."""
    yield
    structlog.reset_defaults()
