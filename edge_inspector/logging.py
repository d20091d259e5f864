"""structlog set up once: JSON lines by default, a readable console when stderr is a TTY.

A logging call can never raise (``_safe_wrapper_class``): the daemon logs from its error
handlers, and a handler that raises because of its own log line (a keyword that collides with
structlog's ``event`` argument, a bad ``%`` format, an unserialisable value) turns a handled
fault into a dead thread. A broken call logs ``logging_call_failed`` instead, naming the event.

Journal hygiene (issue 10): with JSON logs every line the daemon writes is one JSON object with
``station`` and ``line``. The stdlib ``logging`` records (paho, Python warnings) are rendered by
the same processors; native libraries are quietened at their own log-level settings
(``quiet_native_libraries``), and whatever they still print to file descriptor 2 (onnxruntime's
C++ logger, OpenCV/FFmpeg, a crash dump) is caught by ``native_output_to_log`` and re-emitted as
``native_output`` events.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sys
import threading
import time
from typing import Iterator, Optional, TextIO

import structlog

_STATIC_FIELDS: dict[str, str] = {}  # station/line: on every line, from every thread
_JSON = {"on": False}


class _Sink:
    """Where log lines go: whatever sys.stderr is at write time (tests and daemons may replace
    it), or the saved real stderr while ``native_output_to_log`` owns file descriptor 2."""

    target: Optional[TextIO] = None

    def write(self, text: str) -> int:
        return (self.target or sys.stderr).write(text)

    def flush(self) -> None:
        (self.target or sys.stderr).flush()


_SINK = _Sink()


def _add_static_fields(_logger, _name, event_dict):
    for key, value in _STATIC_FIELDS.items():
        event_dict.setdefault(key, value)
    return event_dict


def bind_station(line: str, name: str) -> None:
    """Every later log line carries ``line`` and ``station`` (a journal shared by two instances)."""
    _STATIC_FIELDS.update(line=line, station=name)


def json_logs_on() -> bool:
    return _JSON["on"]


def setup_logging(level: str = "INFO", json_logs: bool | None = None) -> None:
    """Configure structlog and the stdlib root logger. Safe to call more than once."""
    if json_logs is None:
        json_logs = not sys.stderr.isatty()
    _JSON["on"] = bool(json_logs)
    numeric_level = logging.getLevelName(level.upper()) if isinstance(level, str) else level
    if not isinstance(numeric_level, int):
        numeric_level = logging.INFO
    renderer = structlog.processors.JSONRenderer(ensure_ascii=False) if json_logs else structlog.dev.ConsoleRenderer()
    shared = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _add_static_fields,
    ]
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, *shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=_safe_wrapper_class(numeric_level),
        logger_factory=structlog.PrintLoggerFactory(file=_SINK),
        cache_logger_on_first_use=False,
    )
    # stdlib records (paho's "Caught exception in ...", Python warnings) through the same renderer.
    handler = logging.StreamHandler(_SINK)
    handler.set_name("edge-inspector")
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared, structlog.processors.format_exc_info],
    ))
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == "edge-inspector"]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric_level)
    logging.captureWarnings(True)


# Native libraries: their own switches first (the cheapest silence). Environment variables must
# be set before the library is imported; cli.main sets them before dispatching `run`.
NATIVE_LOG_ENV = {
    "OPENCV_LOG_LEVEL": "ERROR",
    "OPENCV_FFMPEG_LOGLEVEL": "16",  # AV_LOG_ERROR: FFmpeg's per-stream warnings (RTSP, files) off
}


def quiet_native_env() -> None:
    for key, value in NATIVE_LOG_ENV.items():
        os.environ.setdefault(key, value)


def quiet_native_libraries(level: str = "INFO") -> None:
    """onnxruntime's default logger and OpenCV's: errors only (warnings too at DEBUG)."""
    debug = str(level).upper() == "DEBUG"
    try:
        import onnxruntime as ort

        ort.set_default_logger_severity(2 if debug else 3)
    except Exception:  # noqa: BLE001 - a missing or odd runtime must not stop logging set-up
        pass
    try:
        import cv2

        cv2.setLogLevel(3 if debug else 2)  # 2 = ERROR, 3 = WARNING
    except Exception:  # noqa: BLE001
        pass


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# onnxruntime "[W:onnxruntime:...]", OpenCV "[ WARN:0@1.2]" / "[ERROR:0@...]", Python "Traceback"
_NATIVE_LEVELS = (
    (re.compile(r"\[E:|\[ERROR|\bERROR\b|Traceback|Error:|Fatal", re.I), "error"),
    (re.compile(r"\[I:|\[ INFO|\[V:"), "info"),
)


def _native_level(text: str) -> str:
    for pattern, level in _NATIVE_LEVELS:
        if pattern.search(text):
            return level
    return "warning"


@contextlib.contextmanager
def native_output_to_log(enabled: bool = True) -> Iterator[None]:
    """While active: file descriptor 2 is a pipe; a reader thread turns each line written to it
    by native code or by Python's own stderr writers into a JSON ``native_output`` event (colour
    codes removed), or passes it through unchanged if the config turns JSON logs off. Log lines
    themselves go to the saved real stderr. On exit the real stderr is restored and every
    captured line has been emitted. Entered before `run` imports onnxruntime, whose C++ logger
    writes its first warning at import time."""
    if not enabled:
        yield
        return
    sys.stderr.flush()
    real = os.fdopen(os.dup(2), "w", buffering=1, encoding="utf-8", errors="replace")
    read_fd, write_fd = os.pipe()
    os.dup2(write_fd, 2)
    os.close(write_fd)
    log = get_logger("edge_inspector.native")

    def pump() -> None:
        # This loop must outlive any single bad line: if it stopped reading, the pipe would fill
        # and every later write to stderr (native code's included) would block the daemon.
        with os.fdopen(read_fd, "rb") as pipe:
            for raw in pipe:
                try:
                    text = _ANSI.sub("", raw.decode("utf-8", "replace")).rstrip()
                    if not text:
                        continue
                    if _JSON["on"]:
                        getattr(log, _native_level(text))("native_output", output=text)
                    else:
                        _SINK.write(text + "\n")
                except Exception:  # noqa: BLE001 - e.g. the real stderr gone: drop the line, keep draining
                    continue

    reader = threading.Thread(target=pump, name="native-stderr", daemon=True)
    _SINK.target = real
    reader.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(real.fileno(), 2)  # closes the pipe's last write end: the reader sees EOF
        reader.join(5)
        _SINK.target = None
        real.close()


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
                           "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **_STATIC_FIELDS})
        _SINK.write(line + "\n")
    except Exception:  # noqa: BLE001 - stderr itself is gone: nothing left to tell
        pass


def get_logger(name: str | None = None, **initial):
    return structlog.get_logger(name, **initial) if name else structlog.get_logger(**initial)
