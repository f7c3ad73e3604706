"""Logging set-up for hosts and the CLI. Library code only calls ``structlog.get_logger``."""

from __future__ import annotations

import logging
import sys
from typing import Literal, TextIO

import structlog

__all__ = ["configure_logging"]


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
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
