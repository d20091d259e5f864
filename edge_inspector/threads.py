"""Supervised threads: no long-running thread of the daemon can die silently.

Two policies, chosen per thread by who starts it:

* **fatal** — the five pipeline stages (pipeline/stages.py ``Pipeline._guarded``): a stage that
  raises ends the daemon with exit 1 (systemd restarts it); a half pipeline must not keep the
  camera triggered while nothing is inspected.
* **restart** — everything around the pipeline (MQTT outbox worker, software-trigger timer, NG
  archive writer, command handler, health server, watchdog): ``start_supervised`` logs the
  exception, counts it in ``THREAD_RESTARTS`` (exported as
  ``edge_inspector_thread_restarts_total{thread}``) and runs the loop again after a backoff
  (0.5 s doubling to 30 s; back to 0.5 s once a run lasted a minute). A loop that returns ends
  its thread normally.

Either way, liveness does not trust a thread for being alive: /healthz and the watchdog read
heartbeats that only the working loop itself updates (see health/liveness.py).
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Optional

from edge_inspector.logging import get_logger

log = get_logger(__name__)

MIN_BACKOFF_S = 0.5
MAX_BACKOFF_S = 30.0
STABLE_RUN_S = 60.0  # a run this long resets the backoff

_counts_lock = threading.Lock()
THREAD_RESTARTS: dict[str, int] = {}  # thread name -> restarts since the process started


def restart_counts() -> dict[str, int]:
    with _counts_lock:
        return dict(THREAD_RESTARTS)


def start_supervised(name: str, loop: Callable[[], None], stop: Optional[threading.Event] = None,
                     min_backoff_s: float = MIN_BACKOFF_S, max_backoff_s: float = MAX_BACKOFF_S) -> threading.Thread:
    """Start daemon thread ``name`` running ``loop()``; restart it (with backoff) whenever it raises,
    until it returns or ``stop`` is set."""
    stop = stop or threading.Event()

    def run() -> None:
        delay = min_backoff_s
        while True:
            started = time.monotonic()
            try:
                loop()
                return
            except Exception as exc:  # noqa: BLE001 - the point of this module
                with _counts_lock:
                    THREAD_RESTARTS[name] = THREAD_RESTARTS.get(name, 0) + 1
                    restarts = THREAD_RESTARTS[name]
                if time.monotonic() - started >= STABLE_RUN_S:
                    delay = min_backoff_s
                log.exception("thread_crashed", thread=name, restarts=restarts, restart_in_s=delay,
                              error=f"{type(exc).__name__}: {exc}")
            if stop.wait(delay):
                return
            delay = min(delay * 2, max_backoff_s)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    return thread
