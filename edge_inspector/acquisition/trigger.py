"""Who fires software triggers (``camera.trigger.mode: software``).

A software-triggered source (pylon, folder) images a part only when ``FrameSource.trigger()`` is
called. ``camera.trigger.software_source`` says who calls it:

* ``timer`` (default): this module's timer thread, one trigger every 1/``camera.fps`` s. It keeps
  at most ``MAX_TRIGGERS_AHEAD`` trigger(s) ahead of the frames the acquisition stage has taken:
  when inference lags, the acquisition stage blocks on the full queue (triggered frames are never
  dropped), so the timer waits instead of piling images up in the camera's buffers, where a
  camera out of buffers would turn the next trigger into an ERROR part. The schedule then
  re-anchors (``Pacer``) rather than bursting to catch up; ``late`` counts those ticks.
* ``command``: no timer; ``fire(n)`` runs for each ``P/cmd/trigger`` (a PLC or MES knows when a
  part is in front of the camera). Commands are refused in ``timer`` mode: two trigger sources
  interleaving would make the back-pressure count meaningless and the part sequence ambiguous.

A trigger that cannot be executed (camera reconnecting, not ready) is not this module's to
report: the source turns it into an error Frame, so the part still ends as an ERROR verdict.
"""

from __future__ import annotations

import threading
from typing import Callable, Optional

from edge_inspector.acquisition.base import POLL_INTERVAL_S, FrameSource, Pacer
from edge_inspector.acquisition.parts import PartQueue, PartTag
from edge_inspector.config.models import CameraConfig
from edge_inspector.faults import fault_point
from edge_inspector.logging import get_logger
from edge_inspector.threads import start_supervised

log = get_logger("edge_inspector.acquisition.trigger")

# One trigger may be outstanding while the previous frame waits for room in the frames queue:
# enough to keep the camera exposing while inference works, bounded so nothing piles up.
MAX_TRIGGERS_AHEAD = 1


class SoftwareTrigger:
    """Fires ``source.trigger()`` from the timer thread or on request (see module docstring).

    ``frames_taken()`` returns how many frames the acquisition stage has taken from the source
    so far (``Pipeline.frames_in``): every executed or failed trigger yields exactly one frame.
    The timer stops by itself once the source is closed or ended (nothing would take the frame).
    """

    def __init__(self, source: FrameSource, camera_cfg: CameraConfig, frames_taken: Callable[[], int],
                 max_triggers: Optional[int] = None, parts: Optional[PartQueue] = None):
        self.source = source
        # Identity of the parts fired by command, taken by the acquisition stage frame by frame.
        self.parts = parts if parts is not None else PartQueue()
        # ``--max-frames N``: the timer fires N triggers and no more, so no part is imaged that
        # the stopping pipeline would never inspect.
        self.max_triggers = max_triggers
        self.origin = camera_cfg.trigger.software_source
        self.fps = camera_cfg.fps
        self._frames_taken = frames_taken
        # one trigger at a time keeps `fired` and the camera in step; re-entrant: a command holds it
        # across its announcements and triggers
        self._fire_lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._pacer = Pacer(self.fps)
        self.fired = 0  # trigger() calls that returned (True or False): each one yields a frame
        self.failed = 0  # of those, triggers the camera could not execute (ERROR parts)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        if self.origin != "timer" or self._thread is not None:
            return
        self._stop.clear()
        self._thread = start_supervised("software-trigger", self._run_timer, self._stop)
        log.info("software_trigger_timer_started", fps=self.fps)

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def status(self) -> dict:
        return {"origin": self.origin, "fired": self.fired, "failed": self.failed, "late": self._pacer.late_ticks}

    # ------------------------------------------------------------------ firing
    def fire(self, count: int = 1, tag: Optional[PartTag] = None) -> tuple[bool, str]:
        """Remote trigger (``P/cmd/trigger``): fire ``count`` triggers now, back to back; each
        frame carries ``tag`` (part id, product, context) when given."""
        if self.origin != "command":
            return False, ("triggers come from the daemon's timer (camera.trigger.software_source=timer); "
                           "set it to command to fire them remotely")
        if self.source.state in ("closed", "ended"):  # no acquisition left to turn a trigger into a result
            return False, f"camera {self.source.state}: no trigger fired"
        with self._fire_lock:
            # Queue the tags and fire in one step: a check of the queue's length before announcing
            # could pass for two commands at once, and a trigger fired for a tag the full queue
            # refused would hand its frame the next part's identity.
            if tag is not None and not self.parts.announce(tag, count):
                return False, (f"{len(self.parts)} announced part(s) still wait for their frames: "
                               f"no trigger fired (at most {self.parts.limit} ahead)")
            executed = sum(1 for _ in range(count) if self._fire_one(announced=tag is not None))
        failed = count - executed
        if failed:
            return False, (f"{failed} of {count} trigger(s) could not be executed (camera {self.source.state}); "
                           "each becomes an ERROR result")
        return True, f"{count} trigger(s) fired"

    def _fire_one(self, announced: bool = False) -> bool:
        """One trigger. ``announced``: its part's tag is already queued (before the trigger, so its
        frame finds it); withdrawn again when the trigger raises and no frame will come."""
        with self._fire_lock:
            try:
                executed = bool(self.source.trigger())
            except Exception:  # noqa: BLE001 - a source bug must not kill the timer; no frame follows
                log.exception("software_trigger_failed")
                if announced:
                    self.parts.withdraw_last()
                return False
            self.fired += 1
            if not executed:
                self.failed += 1
            return executed

    def _run_timer(self) -> None:
        while not self._stop.is_set():
            fault_point("trigger.timer")
            if self.max_triggers is not None and self.fired >= self.max_triggers:
                log.info("software_trigger_timer_done", fired=self.fired)
                return
            # Back-pressure: wait until the acquisition stage has taken the previous frames.
            while self.fired - self._frames_taken() >= MAX_TRIGGERS_AHEAD:
                if self._stop.wait(POLL_INTERVAL_S / 2):
                    return
            if not self._pacer.wait(self._stop):
                return
            if self.source.state in ("closed", "ended"):
                log.info("software_trigger_timer_done", fired=self.fired, camera=self.source.state)
                return
            self._fire_one()
