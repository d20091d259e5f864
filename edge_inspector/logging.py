"""structlog set up once: JSON lines by default, a readable console when stderr is a TTY."""

from __future__ import annotations

import logging
import sys

import structlog

_configured = False


class _CurrentStderr:
    """Writes to whatever sys.stderr is at write time (tests and daemons may replace it)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def setup_logging(level: str = "INFO", json_logs: bool | None = None) -> None:
    """Configure structlog and the stdlib root logger. Safe to call more than once."""
    global _configured
    if json_logs is None:
        json_logs = not sys.stderr.isatty()
    numeric_level = logging.getLevelName(level.upper()) if isinstance(level, str) else level
    if not isinstance(numeric_level, int):
        numeric_level = logging.INFO
    renderer = structlog.processors.JSONRenderer() if json_logs else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=structlog.PrintLoggerFactory(file=_CurrentStderr()),
        cache_logger_on_first_use=False,
    )
    if not _configured:
        logging.basicConfig(level=numeric_level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
        _configured = True


def get_logger(name: str | None = None, **initial):
    return structlog.get_logger(name, **initial) if name else structlog.get_logger(**initial)
