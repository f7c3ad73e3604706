"""``arbiter submit | worker | status | tasks | retry-dead | prune``: a durable task store
from the shell.

Every command takes ``--store URL`` or ``--store-file PATH`` (default: ``$ARBITER_STORE``,
else the URL in the file ``$ARBITER_STORE_FILE``, else ``sqlite:///arbiter.db`` in the
working directory). ``submit`` and ``retry-dead`` start a runner without agents and stop it without
draining, so their tasks stay QUEUED in the store for a worker; ``worker`` runs handlers
until SIGTERM/SIGINT (or, with ``--drain``, until no task is unfinished); ``status`` and
``tasks`` only read the store.

A store that cannot be opened (not a SQLite file, a missing directory, a malformed URL)
and bad input end the command with one line on stderr and exit code 2.

On a PostgreSQL store many workers (on many hosts) share the tasks: each claims what its
handlers can run, under a lease (``--lease``); ``status`` lists the runners alive.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from types import FrameType
from typing import Any
from urllib.parse import unquote, urlsplit

import structlog
from pydantic import ValidationError

from actors.journal.store import (
    PRUNED_BY_DEFAULT,
    TaskStore,
    open_store,
    redact_url,
    resolve_store_url,
    store_for_url,
)
from messages.errors import InvalidMessage, StoreError
from messages.task import TERMINAL_STATES, AgentSpec, CronSpec, TaskRecord, TaskSpec, TaskState
from supervisor.runner import RunnerConfig, TaskRunner, load_handler

__all__ = ["DEFAULT_STORE", "CommandError", "add_commands"]

DEFAULT_STORE = "sqlite:///arbiter.db"
"""The store of every command when ``--store`` is not given: a file in the working dir."""

_log = structlog.get_logger("arbiter.worker")

_DRAIN_CHECK_S = 0.25  # how often `worker --drain` counts the unfinished tasks

_STATE_NAMES = tuple(state.value.lower() for state in TaskState)


class CommandError(Exception):
    """A command cannot run; its message is printed as one line and the exit code is 2."""


# -- parser ---------------------------------------------------------------------------------
def add_commands(sub: Any) -> None:
    """Add ``submit``, ``worker``, ``status``, ``tasks``, ``retry-dead`` and ``prune``."""
    submit = sub.add_parser("submit", help="store a task for a worker; prints its id")
    _add_store(submit)
    submit.add_argument("--type", required=True, help="the task type (what a handler does)")
    submit.add_argument("--payload", default="{}", help="the task's payload, as JSON")
    submit.add_argument("--priority", type=int, default=0, help="0..9, higher runs first")
    submit.add_argument(
        "--idempotency-key", default=None, help="a key already used returns that task's id"
    )
    submit.add_argument("--max-attempts", type=int, default=None, help="attempts before DLQ")
    when = submit.add_mutually_exclusive_group()
    when.add_argument(
        "--delay", type=_seconds, default=None, metavar="SECONDS", help="run no sooner than this"
    )
    when.add_argument(
        "--run-at",
        type=_instant,
        default=None,
        metavar="ISO8601",
        help="run no sooner than this instant (with a UTC offset, e.g. 2027-01-01T09:00Z)",
    )
    submit.add_argument("--json", action="store_true", help="print {task_id, state} as JSON")
    submit.set_defaults(run=_guarded(_submit))

    worker = sub.add_parser(
        "worker", help="run handlers on the store's tasks until SIGTERM/SIGINT (or --drain)"
    )
    _add_store(worker)
    worker.add_argument(
        "--handler",
        action="append",
        default=[],
        metavar="TYPE=module:function",
        help="run tasks of TYPE with this function (repeatable; one agent each)",
    )
    worker.add_argument(
        "--concurrency", type=_positive_int, default=4, help="tasks at once per handler"
    )
    worker.add_argument(
        "--commit-window",
        type=_non_negative_int,
        default=256,
        help="attempts beyond the slots that may run ahead of the store's commits; bounds "
        "what runs again after a kill -9 (see RunnerConfig.commit_window)",
    )
    worker.add_argument(
        "--drain",
        action="store_true",
        help="exit 0 once no task in the store is unfinished (delayed ones not due yet excepted)",
    )
    worker.add_argument(
        "--drain-timeout",
        type=_seconds,
        default=30.0,
        help="on SIGTERM/SIGINT, wait this long for unfinished tasks (a second signal: at once)",
    )
    worker.add_argument(
        "--lease",
        type=_positive_seconds,
        default=30.0,
        help="shared (postgres) store: seconds a claimed task stays this worker's without "
        "a renewal; a worker killed or stuck this long loses its tasks to the others",
    )
    worker.add_argument(
        "--claim-interval",
        type=_positive_seconds,
        default=0.5,
        help="shared (postgres) store: seconds between looks for work when no notification "
        "came (LISTEN/NOTIFY wakes an idle worker at once)",
    )
    worker.add_argument(
        "--store-wait",
        type=_seconds,
        default=60.0,
        help="at start, keep trying a store that is unavailable (a database still starting) "
        "this many seconds, with backoff (0: fail at once)",
    )
    worker.add_argument(
        "--cron",
        nargs=3,
        action="append",
        default=[],
        metavar=("NAME", "EXPR", "TYPE"),
        help="submit a task of TYPE at every fire time of the cron EXPR (5 fields, or 6 "
        "with seconds last; UTC); repeatable. On a shared store one worker fires each time",
    )
    worker.add_argument(
        "--keep-finished",
        type=_positive_seconds,
        default=None,
        metavar="SECONDS",
        help="delete COMPLETED and CANCELLED tasks this long after they finished (every "
        "minute); default: keep them",
    )
    worker.add_argument(
        "--keep-dead-letters",
        type=_positive_seconds,
        default=None,
        metavar="SECONDS",
        help="the same for DEAD_LETTERED tasks; default: keep them",
    )
    worker.add_argument("--json", action="store_true", help="print the exit summary as JSON")
    worker.set_defaults(run=_guarded(_worker))

    status = sub.add_parser(
        "status", help="how many tasks are in each state (and, shared, the runners alive)"
    )
    _add_store(status)
    status.add_argument(
        "--max-age",
        type=_positive_seconds,
        default=30.0,
        help="shared (postgres) store: list runners that heartbeated in this many seconds",
    )
    status.add_argument("--json", action="store_true", help="print as JSON")
    status.set_defaults(run=_guarded(_status))

    tasks = sub.add_parser("tasks", help="list the store's tasks, oldest first")
    _add_store(tasks)
    tasks.add_argument("--state", type=str.lower, choices=_STATE_NAMES, default=None)
    tasks.add_argument("--limit", type=_positive_int, default=1000)
    tasks.add_argument("--json", action="store_true", help="print the full records as JSON")
    tasks.set_defaults(run=_guarded(_tasks))

    retry = sub.add_parser("retry-dead", help="put every dead-lettered task back in the queue")
    _add_store(retry)
    retry.add_argument("--json", action="store_true", help="print {requeued} as JSON")
    retry.set_defaults(run=_guarded(_retry_dead))

    prune = sub.add_parser("prune", help="delete finished tasks older than --older-than")
    _add_store(prune)
    prune.add_argument(
        "--older-than",
        type=_seconds,
        required=True,
        metavar="SECONDS",
        help="delete COMPLETED and CANCELLED tasks that finished at least this long ago",
    )
    prune.add_argument(
        "--dead-letters", action="store_true", help="delete old DEAD_LETTERED tasks too"
    )
    prune.add_argument("--json", action="store_true", help="print {deleted} as JSON")
    prune.set_defaults(run=_guarded(_prune))


def _add_store(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--store",
        default=None,
        help="store URL (default: $ARBITER_STORE, else the URL in the file "
        f"$ARBITER_STORE_FILE, else {DEFAULT_STORE})",
    )
    where.add_argument(
        "--store-file",
        default=None,
        metavar="PATH",
        help="read the store URL from the first line of this file (keeps a password out "
        "of the command line)",
    )


def _int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an int of at least ``minimum``."""

    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    parse.__name__ = "int"  # argparse's "invalid int value: 'x'" for a non-number
    return parse


_positive_int = _int_at_least(1)
_non_negative_int = _int_at_least(0)


def _seconds(text: str) -> float:
    value = float(text)
    if not value >= 0:  # also refuses NaN
        raise argparse.ArgumentTypeError(f"must be seconds >= 0, got {text}")
    return value


def _instant(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 instant: {text}") from None
    if value.tzinfo is None:
        raise argparse.ArgumentTypeError(f"give a UTC offset (e.g. Z or +01:00): {text}")
    return value


def _positive_seconds(text: str) -> float:
    value = float(text)
    if not value > 0:  # also refuses NaN
        raise argparse.ArgumentTypeError(f"must be seconds > 0, got {text}")
    return value


def _guarded(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Run ``command``; a CommandError or a store failure is one line on stderr, exit 2."""

    def run(args: argparse.Namespace) -> int:
        try:
            try:
                args.store = resolve_store_url(args.store, args.store_file, default=DEFAULT_STORE)
            except ValueError as exc:
                raise CommandError(str(exc)) from None
            return command(args)
        except (CommandError, StoreError) as exc:
            message = " ".join(str(exc).split())  # one line, whatever the cause says
            print(f"arbiter {args.command}: error: {message}", file=sys.stderr)
            return 2

    return run


# -- opening the store ----------------------------------------------------------------------
def _check_url(url: str) -> None:
    try:
        store_for_url(url)  # parses the URL; opens nothing
    except ValueError as exc:
        raise CommandError(str(exc)) from None


def _sqlite_file(url: str) -> str | None:
    """The file a (valid) sqlite URL names, or None for another scheme."""
    if url.partition("://")[0].lower() != "sqlite":
        return None
    return unquote(urlsplit(url).path[1:])


def _open_existing(url: str) -> TaskStore:
    """Open a store that must exist already (reading commands create no file)."""
    _check_url(url)
    path = _sqlite_file(url)
    if path is not None and not os.path.exists(path):
        raise CommandError(f"no task store at {path} (submit a task first, or pass --store)")
    try:
        return open_store(url)
    except StoreError as exc:
        raise CommandError(f"cannot open store {redact_url(url)}: {exc}") from None


def _start_runner(url: str, **settings: Any) -> TaskRunner:
    """Start a runner on ``url`` with clear errors (``recover=False``: leave the store's
    unfinished tasks to the worker that owns them)."""
    _check_url(url)
    try:
        return TaskRunner.start(RunnerConfig(store=url, **settings))
    except StoreError as exc:
        raise CommandError(f"cannot open store {redact_url(url)}: {exc}") from None


# -- submit ---------------------------------------------------------------------------------
def _submit(args: argparse.Namespace) -> int:
    try:
        payload = json.loads(args.payload)
    except json.JSONDecodeError as exc:
        raise CommandError(f"--payload is not valid JSON: {exc}") from None
    fields: dict[str, Any] = {"type": args.type, "payload": payload, "priority": args.priority}
    if args.idempotency_key is not None:
        fields["idempotency_key"] = args.idempotency_key
    if args.max_attempts is not None:
        fields["max_attempts"] = args.max_attempts
    try:  # refuse bad input before the store is touched
        spec = TaskSpec.model_validate(fields)
    except ValidationError as exc:
        raise CommandError(_validation_message(exc)) from None
    # No agents, no drain: the task stays QUEUED in the store for a worker.
    runner = _start_runner(args.store, recover=False)
    try:
        try:
            handle = runner.submit(spec, delay_s=args.delay, run_at=args.run_at)
        except InvalidMessage as exc:  # e.g. a payload larger than max_payload_bytes
            raise CommandError(str(exc)) from None
        record = handle.record()
    finally:
        runner.stop(drain=False)
    if args.json:
        print(json.dumps({"task_id": str(record.task_id), "state": record.state.value.lower()}))
    else:
        print(record.task_id)
    return 0


def _validation_message(exc: ValidationError) -> str:
    problems = "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'task'}: {err['msg']}" for err in exc.errors()
    )
    return f"invalid task: {problems}"


# -- worker ---------------------------------------------------------------------------------
def _worker(args: argparse.Namespace) -> int:
    handlers = _load_handlers(args.handler)
    cron = _cron_entries(args.cron)
    with _stop_signals() as signals:
        # Installed before the runner starts: a signal during start-up stops it cleanly.
        runner = _start_runner(
            args.store,
            drain_timeout_s=args.drain_timeout,
            lease_s=args.lease,
            claim_interval_s=args.claim_interval,
            store_wait_s=args.store_wait,
            commit_window=args.commit_window,
            cron=cron,
            keep_finished_s=args.keep_finished,
            keep_dead_letters_s=args.keep_dead_letters,
        )
        try:
            for task_type, function in handlers.items():
                runner.register_agent(
                    AgentSpec(
                        agent_id=f"worker-{task_type}",
                        capabilities=frozenset({task_type}),
                        max_concurrency=args.concurrency,
                    ),
                    function,
                )
            _log.info(
                "worker.started",
                runner_id=runner.config.runner_id,
                store=redact_url(args.store),
                types=sorted(handlers),
                concurrency=args.concurrency,
                unfinished=runner.unfinished(),
                drain=args.drain,
            )
            _warn_unhandled(runner, args.store, set(handlers))
            reason = _serve(runner, signals, drain=args.drain)
            if reason == "signal":  # finish what is unfinished, within the limit
                _log.info(
                    "worker.signal",
                    signal=signals.received[0],
                    unfinished=runner.unfinished(),
                    drain_timeout_s=args.drain_timeout,
                )
                _drain(runner, signals, args.drain_timeout)
            summary = _worker_summary(runner, reason)
        finally:
            runner.stop(drain=False)  # what is still unfinished stays in the store
    _log.info("worker.stopped", **summary)
    print(json.dumps(summary) if args.json else _table(summary))
    return 0


def _cron_entries(entries: list[list[str]]) -> tuple[CronSpec, ...]:
    specs = []
    for name, expression, task_type in entries:
        try:
            specs.append(CronSpec(name=name, cron=expression, task=TaskSpec(type=task_type)))
        except ValidationError as exc:
            raise CommandError(f"--cron {name}: {_validation_message(exc)}") from None
    if len({spec.name for spec in specs}) != len(specs):
        raise CommandError("--cron entries need distinct names")
    return tuple(specs)


def _load_handlers(specs: list[str]) -> dict[str, Callable[..., Any]]:
    if not specs:
        raise CommandError("give at least one --handler TYPE=module:function")
    # A worker is started in the project it serves: import its handlers from there, as
    # `python -m` would (the console script's sys.path starts at the venv's bin/).
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    handlers: dict[str, Callable[..., Any]] = {}
    for spec in specs:
        task_type, sep, path = spec.partition("=")
        task_type = task_type.strip()
        if not sep or not task_type or not path:
            raise CommandError(f"--handler {spec!r} must look like TYPE=package.module:function")
        if task_type in handlers:
            raise CommandError(f"--handler names type {task_type!r} twice")
        try:
            handlers[task_type] = load_handler(path.strip())
        except InvalidMessage as exc:
            raise CommandError(str(exc)) from None
    return handlers


class _Signals:
    """What SIGTERM/SIGINT asked for: the first one to stop, a second one to stop at once.

    The handler only sets events (it may interrupt the main thread anywhere, even inside
    a log call); the main thread logs what happened.
    """

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.force = threading.Event()
        self.received: list[str] = []

    def handle(self, signum: int, frame: FrameType | None) -> None:
        self.received.append(signal.Signals(signum).name)
        if self.stop.is_set():
            self.force.set()
        self.stop.set()


@contextmanager
def _stop_signals() -> Iterator[_Signals]:
    """Handle SIGTERM/SIGINT while the worker runs; put the old handlers back after.

    Outside the main thread (a host running ``main`` in a thread) none is installed.
    """
    signals = _Signals()
    if threading.current_thread() is not threading.main_thread():
        yield signals
        return
    previous = {sig: signal.signal(sig, signals.handle) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield signals
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _serve(runner: TaskRunner, signals: _Signals, *, drain: bool) -> str:
    """Wait until a signal (returns "signal") or, with ``drain``, until no task is
    unfinished but delayed ones not due yet (returns "drained")."""
    checked = time.monotonic()
    while not signals.stop.wait(0.05):
        # (a count of the store's tasks by state: not every 50 ms on a big shared store)
        if drain and time.monotonic() - checked >= _DRAIN_CHECK_S:
            if runner.idle(_DRAIN_CHECK_S):
                return "drained"
            checked = time.monotonic()
    return "signal"


def _drain(runner: TaskRunner, signals: _Signals, timeout: float) -> None:
    """Wait up to ``timeout`` for every unfinished task (delayed ones due after it
    excepted), unless a second signal comes."""
    deadline = time.monotonic() + timeout
    while not runner.idle(timeout):
        if signals.force.is_set():
            _log.warning("worker.forced", signal=signals.received[-1])
            return
        left = deadline - time.monotonic()
        if left <= 0:
            _log.warning("worker.drain_timeout", drain_timeout_s=timeout)
            return
        signals.force.wait(min(0.05, left))


def _worker_summary(runner: TaskRunner, reason: str) -> dict[str, Any]:
    status = runner.status()
    agents = status["agents"]
    return {
        "store": status["store"],
        "reason": reason,
        "completed": sum(agent.get("completed", 0) for agent in agents),
        "failed": sum(agent.get("failed", 0) + agent.get("timed_out", 0) for agent in agents),
        "unfinished": runner.unfinished(),
        "delayed": status["counts"]["pending"],
        "drained": runner.idle(),
    }


def _warn_unhandled(runner: TaskRunner, url: str, types: set[str]) -> None:
    """Say so when unfinished tasks need another worker: a drain (--drain, or after a
    signal) waits for every unfinished task, these too.

    Read through the runner's store (no second connection pool to open: a worker paused
    while opening one found it timed out when resumed, and exited). Only advice: a store
    that fails this read is logged, and the worker goes on."""
    if _sqlite_file(url) is None and not url.startswith("postgres"):
        return  # memory://: nothing but this runner's own tasks
    try:
        unfinished = runner.unfinished_records()
    except StoreError as exc:
        _log.warning("worker.unhandled_check_failed", error=str(exc))
        return
    waiting = [r.spec.type for r in unfinished if r.spec.type not in types]
    if waiting:
        _log.warning(
            "worker.unhandled_types",
            types=sorted(set(waiting)),
            tasks=len(waiting),
            hint="a drain waits for these too; add a --handler for them",
        )


# -- reading commands -----------------------------------------------------------------------
def _status(args: argparse.Namespace) -> int:
    with _open_existing(args.store) as store:
        counts = store.counts()
        url = store.url
        runners = store.live_runners(args.max_age) if store.shared else None
    by_name = {state.value.lower(): counts.get(state, 0) for state in TaskState}
    unfinished = sum(n for state, n in counts.items() if state not in TERMINAL_STATES)
    summary: dict[str, Any] = {
        "store": url,
        "counts": by_name,
        "total": sum(by_name.values()),
        "unfinished": unfinished,
    }
    if runners is not None:
        summary["runners"] = runners
    if args.json:
        print(json.dumps(summary))
        return 0
    nonzero = {name: n for name, n in by_name.items() if n}
    lines = {"store": url, **nonzero, "unfinished": unfinished}
    if runners is not None:
        lines["runners"] = len(runners)
    print(_table(lines))
    for runner in runners or ():
        print(
            f"  {runner['runner_id']}  {runner['host']}:{runner['pid']}  "
            f"tasks {runner['tasks']}  heartbeat {runner['heartbeat_age_s']:.1f}s ago"
        )
    return 0


def _tasks(args: argparse.Namespace) -> int:
    state = TaskState(args.state.upper()) if args.state else None
    with _open_existing(args.store) as store:
        records = store.list_tasks(state, args.limit)
    if args.json:
        print(json.dumps([record.model_dump(mode="json") for record in records]))
        return 0
    for record in records:
        print(_task_line(record))
    return 0


def _task_line(record: TaskRecord) -> str:
    error = (record.last_error or "").replace("\n", " ")
    if len(error) > 60:
        error = error[:57] + "..."
    return (
        f"{record.task_id}  {record.state.value.lower():<13} {record.spec.type:<16} "
        f"p{record.spec.priority} attempt {record.attempt}/{record.max_attempts}  {error}"
    ).rstrip()


def _retry_dead(args: argparse.Namespace) -> int:
    _open_existing(args.store).close()  # refuse a store that does not exist yet
    runner = _start_runner(args.store, recover=False)
    try:
        requeued = runner.requeue_dead_letters()
    finally:
        runner.stop(drain=False)
    print(json.dumps({"requeued": requeued}) if args.json else requeued)
    return 0


def _prune(args: argparse.Namespace) -> int:
    states = (*PRUNED_BY_DEFAULT, TaskState.DEAD_LETTERED) if args.dead_letters else None
    before = datetime.now(UTC) - timedelta(seconds=args.older_than)
    deleted = 0
    with _open_existing(args.store) as store:
        while True:  # batches: a worker sharing the store is never locked out for long
            batch = store.prune(before, states or PRUNED_BY_DEFAULT, _PRUNE_BATCH)
            deleted += batch
            if batch < _PRUNE_BATCH:
                break
    _log.info("store.pruned", tasks=deleted, before=before.isoformat())
    print(json.dumps({"deleted": deleted}) if args.json else deleted)
    return 0


_PRUNE_BATCH = 1000


def _table(summary: dict[str, Any]) -> str:
    width = max(len(key) for key in summary)
    return "\n".join(f"{key:<{width}}  {value}" for key, value in summary.items())
