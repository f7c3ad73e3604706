"""The ``arbiter`` command line."""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from actors.base import Actor
from supervisor.commands import add_commands
from supervisor.demo import add_demo_parser
from supervisor.logging import configure_logging
from supervisor.strategy import ChildSpec, Strategy
from supervisor.system import ActorSystem

__all__ = ["main"]


@dataclass(frozen=True, slots=True)
class _Work:
    number: int


@dataclass(frozen=True, slots=True)
class _Crash:
    number: int


class _Tally(Actor):
    """Counts work; fails on purpose when told to, to show a supervised restart."""

    def __init__(self, done: threading.Event, total: int) -> None:
        self.done = done
        self.total = total
        self.seen = 0

    def receive(self, message: Any) -> Any:
        if isinstance(message, _Crash):
            raise RuntimeError(f"injected crash before message {message.number}")
        self.seen += 1
        if isinstance(message, _Work) and message.number == self.total - 1:
            self.done.set()
        return self.seen


def _supervision_demo(args: argparse.Namespace) -> int:
    log = structlog.get_logger("arbiter.demo")
    done = threading.Event()
    system = ActorSystem.start(
        strategy=Strategy.ONE_FOR_ONE, max_restarts=args.messages, within_s=60.0
    )
    started = time.perf_counter()
    try:
        ref = system.spawn(ChildSpec(name="tally", factory=lambda: _Tally(done, args.messages)))
        crashes = 0
        for number in range(args.messages):
            if args.crash_every and number and number % args.crash_every == 0:
                ref.tell(_Crash(number))
                crashes += 1
            ref.tell(_Work(number))
        finished = done.wait(30.0)
        stats = ref.statistics()
    finally:
        system.stop()
    summary = {
        "messages": args.messages,
        "processed": stats.processed,
        "crashes_injected": crashes,
        "restarts": stats.restarts,
        "dead_letters": system.dead_letter_office.total,
        "lost": args.messages - stats.processed,
        "elapsed_s": round(time.perf_counter() - started, 3),
    }
    log.info("demo.summary", **summary)
    print(json.dumps(summary) if args.json else _table(summary))
    return 0 if finished and summary["lost"] == 0 else 1


def _table(summary: dict[str, Any]) -> str:
    width = max(len(key) for key in summary)
    return "\n".join(f"{key:<{width}}  {value}" for key, value in summary.items())


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="arbiter", description="Arbiter task runner")
    parser.add_argument(
        "--log-format", choices=["auto", "console", "json"], default="auto", help="log renderer"
    )
    parser.add_argument("--log-level", default="INFO", help="minimum log level")
    sub = parser.add_subparsers(dest="command", required=True)
    sup = sub.add_parser(
        "supervision-demo", help="crash a supervised actor and watch it restart in the log"
    )
    sup.add_argument("--messages", type=int, default=1000)
    sup.add_argument("--crash-every", type=int, default=250)
    sup.add_argument("--json", action="store_true", help="print the summary as JSON")
    sup.set_defaults(run=_supervision_demo)
    add_demo_parser(sub)
    add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``arbiter`` console script."""
    args = _parser().parse_args(argv)
    configure_logging(args.log_format, args.log_level)
    code: int = args.run(args)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
