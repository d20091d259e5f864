"""structlog set up once: JSON lines by default, a readable console when stderr is a TTY.

A logging call can never raise (``_safe_wrapper_class``): the daemon logs from its error
handlers, and a handler that raises because of its own log line (a keyword that collides with
structlog's ``event`` argument, a bad ``%`` format, an unserialisable value) turns a handled
fault into a dead thread. A broken call logs ``logging_call_failed`` instead, naming the event.
"""

from __future__ import annotations

import json
import logging
import sys
import time

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
        wrapper_class=_safe_wrapper_class(numeric_level),
        logger_factory=structlog.PrintLoggerFactory(file=_CurrentStderr()),
        cache_logger_on_first_use=False,
    )
    if not _configured:
        logging.basicConfig(level=numeric_level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
        _configured = True


_LEVEL_METHODS = ("debug", "info", "warning", "warn", "error", "exception", "critical", "fatal", "msg")


def _safe_wrapper_class(level: int) -> type:
    """structlog's filtering bound logger whose level methods never raise.

    ``event`` given as a keyword (it is the positional event name) is kept as ``event_field``;
    any other failure (format string, renderer) writes one ``logging_call_failed`` line with the
    event name and the error instead of raising into the caller.
    """
    base = structlog.make_filtering_bound_logger(level)

    def make(name: str):
        unsafe = getattr(base, name)

        def method(self, *args, **kw):
            try:
                if "event" in kw:  # structlog's own argument: keep the caller's value under another key
                    kw["event_field"] = kw.pop("event")
                if not args:
                    args = ("log_call_without_event",)
                return unsafe(self, *args, **kw)
            except Exception as exc:  # noqa: BLE001 - see docstring: logging must not raise
                _report_failed_call(args[0] if args else None, exc)
                return None

        method.__name__ = name
        return method

    return type(f"Safe{base.__name__}", (base,), {name: make(name) for name in _LEVEL_METHODS})


def _report_failed_call(event, exc: Exception) -> None:
    try:
        line = json.dumps({"event": "logging_call_failed", "level": "error", "logged_event": str(event)[:200],
                           "error": f"{type(exc).__name__}: {exc}"[:500],
                           "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        sys.stderr.write(line + "\n")
    except Exception:  # noqa: BLE001 - stderr itself is gone: nothing left to tell
        pass


def get_logger(name: str | None = None, **initial):
    return structlog.get_logger(name, **initial) if name else structlog.get_logger(**initial)
