"""FrameSource interface: every camera kind yields Frames the same way.

Threading model shared by all sources (folder.py, opencv.py, pylon.py):

* ``open()`` runs in the caller's thread and fails fast with a one-line error
  (``InputError`` for bad configuration, ``CameraError`` when the device cannot be reached).
* ``frames()`` is a blocking generator meant for one acquisition thread. It waits for the next
  image (pacing, trigger, camera), reconnects by itself after faults, and returns when the
  source ends (``state == "ended"``) or when ``close()`` is called.
* ``close()`` and ``trigger()`` may be called from any other thread. ``close()`` makes a running
  ``frames()`` return within about one poll interval (~0.1 s); a generator suspended at its
  ``yield`` (consumer applying back-pressure) returns on its next resumption.
* While a source waits to retry a lost camera it calls ``on_alive`` (set by the pipeline) every
  poll interval (``wait_to_reconnect``): the acquisition thread is busy on purpose, not hung, so
  its heartbeat keeps beating. The same holds while a source waits for its next part (trigger,
  frame pacing): its wait loop calls ``on_alive`` every poll interval. A thread stuck inside a
  driver call makes no such call, so its heartbeat goes stale whatever the trigger mode.
"""

from __future__ import annotations

import abc
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional

import numpy as np

from edge_inspector.errors import InspectorError
from edge_inspector.logging import get_logger

_log = get_logger("edge_inspector.acquisition")

# on_state(state, detail): called on every state change, from whichever thread caused it
# (usually the acquisition thread). States: "open", "reconnecting", "closed", "ended", "error".
StateCallback = Callable[[str, str], None]
# on_alive(): "this acquisition thread is running, just has no frame to give yet" (see
# FrameSource.wait_to_reconnect); the pipeline turns it into an acquisition heartbeat.
AliveCallback = Callable[[], None]

# How often blocking waits wake up to notice close(): bounds shutdown latency.
POLL_INTERVAL_S = 0.1


class CameraError(InspectorError):
    """A camera that cannot be opened or used (not found, in use, unplugged). Exit code 1:
    unlike InputError this is usually a hardware or cabling problem, not a typo."""


@dataclass
class Frame:
    """One grabbed image. ``image`` is None when the grab itself failed (``error`` says why):
    such a frame still becomes an ERROR verdict so a triggered part is never lost silently."""

    frame_id: str
    image: Optional[np.ndarray]
    ts_grab: float  # host monotonic-clock seconds at grab (time.monotonic())
    ts_wall: float  # host wall-clock (time.time()) at grab, for the payload's UTC timestamp
    source: str = ""
    error: Optional[str] = None
    meta: dict = field(default_factory=dict)


class FrameSource(abc.ABC):
    """A camera. ``open`` fails fast; ``frames`` yields until ``close`` or the source ends.

    Implementations: folder.py, opencv.py, pylon.py. Reconnection after faults is the source's
    own job (with backoff); ``state`` reports it ("open", "reconnecting", "closed", "ended",
    "error") and ``on_state`` (when set) is told about every change.
    """

    triggered: bool = False  # True when every frame stands for a real part (back-pressure, never drop)
    _frame_counter: int = 0  # per instance once a source numbers its first frame
    on_state: Optional[StateCallback] = None
    on_alive: Optional[AliveCallback] = None
    _state: str = "unknown"

    @abc.abstractmethod
    def open(self) -> None: ...

    @abc.abstractmethod
    def frames(self) -> Iterator[Frame]: ...

    @abc.abstractmethod
    def close(self) -> None: ...

    @property
    def state(self) -> str:
        return self._state

    def _set_state(self, state: str, detail: str = "") -> None:
        """Record a state change and tell ``on_state``. A failing callback is logged, never raised:
        a broken status publisher must not stop image acquisition."""
        if state == self._state and not detail:
            return
        self._state = state
        _log.info("camera_state", source=type(self).__name__, state=state, detail=detail)
        callback = self.on_state
        if callback is not None:
            try:
                callback(state, detail)
            except Exception:  # noqa: BLE001 - see docstring
                _log.exception("camera_state_callback_failed", state=state)

    def wait_to_reconnect(self, stop: threading.Event, delay_s: float) -> bool:
        """Sleep ``delay_s`` before the next reconnect attempt; False when ``stop`` was set meanwhile.

        Reconnecting can keep ``frames()`` silent for up to ``camera.reconnect_max_s`` (30 s by
        default), longer than ``pipeline.heartbeat_timeout_s``. Waking every poll interval to call
        ``on_alive`` is what tells the watchdog and /healthz that the acquisition thread is
        alive and doing its job: the liveness proof comes from the thread itself, so an attempt
        that hangs inside a driver call (open, enumerate) still stops the heartbeat.
        """
        deadline = time.monotonic() + delay_s
        while True:
            self._report_alive()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return not stop.is_set()
            if stop.wait(min(POLL_INTERVAL_S, remaining)):
                return False

    def _report_alive(self) -> None:
        callback = self.on_alive
        if callback is not None:
            try:
                callback()
            except Exception:  # noqa: BLE001 - liveness reporting must never stop acquisition
                _log.exception("camera_alive_callback_failed")

    def _next_frame_id(self, prefix: str) -> str:
        """``<prefix>-<n>``: unique within a run, also across loop passes and reconnects."""
        self._frame_counter += 1
        return f"{prefix}-{self._frame_counter}"

    def trigger(self) -> bool:
        """Software trigger (sources that support it; ``camera.trigger.mode: software``).

        Safe from any thread. True when executed; False when the part could not be imaged, in
        which case an error Frame for it comes out of ``frames()``."""
        raise NotImplementedError(f"{type(self).__name__} has no software trigger")

    def __enter__(self):
        self.open()
        return self

    def __exit__(self, *exc):
        self.close()


class Backoff:
    """Exponential reconnect delays: min_s, 2·min_s, ... capped at max_s; reset() after success."""

    def __init__(self, min_s: float, max_s: float):
        self.min_s = min_s
        self.max_s = max(min_s, max_s)
        self._next = min_s

    def next_delay(self) -> float:
        delay = self._next
        self._next = min(self._next * 2.0, self.max_s)
        return delay

    def reset(self) -> None:
        self._next = self.min_s


class Pacer:
    """Releases ticks at a fixed rate on monotonic deadlines (t0 + k/fps), so the rate does not
    drift with the time spent per frame. When the consumer stalls for more than one period the
    schedule re-anchors to now instead of bursting to catch up (``late_ticks`` counts those)."""

    def __init__(self, fps: float, clock: Callable[[], float] = time.monotonic):
        self.period = 1.0 / fps
        self._clock = clock
        self._deadline: Optional[float] = None
        self.late_ticks = 0

    def wait(self, stop: threading.Event, alive: Optional[Callable[[], None]] = None) -> bool:
        """Block until the next deadline; False when ``stop`` was set meanwhile. ``alive`` is
        called every poll interval while waiting (a slow frame rate is not a hung thread)."""
        now = self._clock()
        if self._deadline is None:
            self._deadline = now  # the first frame goes out at once
        elif now - self._deadline > self.period:
            self.late_ticks += 1
            self._deadline = now
        remaining = self._deadline - self._clock()
        # Event.wait returns at once when close() sets the event; the slices are only for ``alive``.
        while remaining > 0:
            if alive is not None:
                alive()
            if stop.wait(min(remaining, POLL_INTERVAL_S) if alive is not None else remaining):
                return False
            remaining = self._deadline - self._clock()
        if stop.is_set():
            return False
        self._deadline += self.period
        return True


def stamp() -> tuple[float, float]:
    """Host timestamps for a frame taken now: (monotonic, wall-clock)."""
    return time.monotonic(), time.time()
