"""Logging set-up for hosts and the CLI. Library code only calls ``structlog.get_logger``."""

from __future__ import annotations

import logging
import sys
from typing import Literal, TextIO

import structlog

__all__ = ["configure_logging"]


class _ToStructlog(logging.Handler):
    """Stdlib logging of libraries (psycopg's pool, pykka) as structlog events
    ``library.log``: the same format, and one line per write, so that lines of two threads
    never run into each other."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except (TypeError, ValueError) as exc:  # a library's bad format string
            message = f"{record.msg!r} (unformattable: {exc})"
        structlog.get_logger("arbiter.library").log(
            record.levelno, "library.log", logger=record.name, message=message
        )


def configure_logging(
    fmt: Literal["auto", "console", "json"] = "auto",
    level: int | str = logging.INFO,
    stream: TextIO | None = None,
) -> None:
    """Configure structlog: human-readable on a terminal, JSON lines otherwise.

    ``fmt="auto"`` picks the console renderer when ``stream`` is a TTY.
    """
    out = stream if stream is not None else sys.stderr
    if isinstance(level, str):
        level = logging.getLevelNamesMapping()[level.upper()]
    if fmt == "auto":
        fmt = "console" if out.isatty() else "json"
    processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if fmt == "json":
        processors += [
            structlog.processors.dict_tracebacks,
            structlog.processors.JSONRenderer(),
        ]
    else:
        processors.append(structlog.dev.ConsoleRenderer(colors=out.isatty()))
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.WriteLoggerFactory(out),  # line and newline: one write
        cache_logger_on_first_use=False,
    )
    root = logging.getLogger()
    if not any(isinstance(handler, _ToStructlog) for handler in root.handlers):
        handler = _ToStructlog(logging.WARNING)
        root.addHandler(handler)
