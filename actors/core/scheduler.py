"""The pure core of the scheduler actor: delayed tasks and cron entries, by wall-clock time.

No threads, no clock of its own: the shell passes the current time in. Delayed tasks wait
in the same timer heap as the retry scheduler's (:class:`RetrySchedulerCore`), keyed by
their run time as a POSIX timestamp, not a monotonic one: a user asks for "at 09:00", and
a process restarted in between must still mean the same instant. Cron entries are a table
of :class:`~messages.task.CronSpec` with the next fire time of each, computed by croniter
in the entry's time zone (so "every day at 09:00 Europe/Berlin" follows daylight saving).

Fire times are coalesced: a tick that comes late, past several fire times of one entry,
fires it once, for the latest of them (a runner paused for a minute does not start sixty
copies of a per-second job). A fire time missed while no runner ran is skipped: an entry
added at start fires first at its next time after that start.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import NamedTuple
from zoneinfo import ZoneInfo

from croniter import croniter

from actors.core.retry import RetrySchedulerCore
from messages.task import CronSpec

__all__ = ["CronEntry", "CronTable", "DelayedTasks", "cron_key", "next_fire", "previous_fire"]

DelayedTasks = RetrySchedulerCore
"""Delayed tasks by run time (POSIX seconds): the retry scheduler's timer heap."""


def next_fire(spec: CronSpec, after: datetime) -> datetime:
    """The first fire time of ``spec`` strictly after ``after`` (aware), in UTC."""
    local = after.astimezone(ZoneInfo(spec.timezone))
    fire: datetime = croniter(spec.cron, local).get_next(datetime)
    return fire.astimezone(UTC)


def previous_fire(spec: CronSpec, until: datetime) -> datetime:
    """The last fire time of ``spec`` at or before ``until`` (aware), in UTC."""
    local = until.astimezone(ZoneInfo(spec.timezone))
    # croniter's get_prev is strictly before its start; a fire time exactly at ``until``
    # is the next one after the previous.
    before: datetime = croniter(spec.cron, local).get_prev(datetime)
    candidate = next_fire(spec, before)
    return candidate if candidate <= until else before.astimezone(UTC)


def cron_key(name: str, fire: datetime) -> str:
    """The idempotency key of the task ``name`` fires at ``fire``: one task per fire time,
    whichever runner (or incarnation) submits it."""
    return f"cron:{name}:{fire.astimezone(UTC).isoformat()}"


class CronEntry(NamedTuple):
    """A cron entry and its next fire time (UTC)."""

    spec: CronSpec
    next_fire: datetime


class CronTable:
    """Cron entries by name, each with its next fire time."""

    __slots__ = ("_entries",)

    def __init__(self) -> None:
        """An empty table."""
        self._entries: dict[str, CronEntry] = {}

    def __len__(self) -> int:
        """How many entries."""
        return len(self._entries)

    def add(self, spec: CronSpec, now: datetime) -> datetime:
        """Add ``spec`` (replacing an entry of the same name); it fires first at its next
        time after ``now``, which is returned."""
        fire = next_fire(spec, now)
        self._entries[spec.name] = CronEntry(spec, fire)
        return fire

    def remove(self, name: str) -> bool:
        """Remove the entry ``name``; True if there was one."""
        return self._entries.pop(name, None) is not None

    def entries(self) -> list[CronEntry]:
        """Every entry, by name."""
        return [self._entries[name] for name in sorted(self._entries)]

    def next_due(self) -> datetime | None:
        """The earliest next fire time, or None when the table is empty."""
        if not self._entries:
            return None
        return min(entry.next_fire for entry in self._entries.values())

    def pop_due(self, now: datetime) -> list[tuple[CronSpec, datetime]]:
        """The entries due at ``now`` with the fire time each fires for (the latest one at
        or before ``now``: late ticks coalesce), by name; each then waits for its next fire
        time after ``now``."""
        fired: list[tuple[CronSpec, datetime]] = []
        for name in sorted(self._entries):
            spec, fire = self._entries[name]
            if fire > now:
                continue
            latest = max(fire, previous_fire(spec, now))
            fired.append((spec, latest))
            self._entries[name] = CronEntry(spec, next_fire(spec, now))
        return fired
