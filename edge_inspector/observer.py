"""Seams between the pipeline (supervisor.py) and station operations (health/, archive/, systemd).

The supervisor calls a ``PipelineObserver`` at every step; metrics, the NG archive and anything
else that watches the line implement it. Operations code drives the running pipeline only
through ``PipelineControl`` (reload, threshold, snapshot, status, heartbeats), so the remote
command handler, SIGHUP and the watchdog all use the same path.
"""

from __future__ import annotations

from typing import Any, Optional, Protocol

import numpy as np


class PipelineObserver:
    """No-op base; override what you need. Called from pipeline threads: be quick, never raise."""

    def on_frame(self, frame: Any) -> None:
        """A frame entered the pipeline (accepted from the camera)."""

    def on_drop(self, stage: str, reason: str) -> None:
        """A free-run frame was dropped (queue full) — never for triggered frames."""

    def on_stage_latency(self, stage: str, seconds: float) -> None:
        """One frame's time in a stage (acquisition, preprocess, inference, postprocess, publish)."""

    def on_queue_depth(self, queue: str, depth: int) -> None: ...

    def on_verdict(self, verdict: Any, frame: Any, anomaly_map: Optional[np.ndarray]) -> Optional[str]:
        """A verdict is final (before publishing). May return an archive reference to put in the
        payload (the NG archive does); anomaly_map is at model-input size, or None on ERROR.
        A reference with ``resolve(timeout) -> str | None`` (archive.store.PendingRef) is resolved
        by the publish stage first: a payload names only a file that was written."""
        return None

    def on_published(self, seq: int, verdict: Any) -> None:
        """The broker acknowledged (PUBACK) a result of this run."""

    def on_replayed(self, seq: int) -> None:
        """The broker acknowledged a result an earlier run left in the outbox."""

    def on_state(self, component: str, state: str, detail: str = "") -> None:
        """camera / mqtt / model / pipeline state changes (e.g. camera 'reconnecting')."""

    def on_outbox_depth(self, depth: int) -> None: ...

    def on_model(self, name: str, sha256: str) -> None:
        """The model in service changed (start or hot swap)."""


class CompositeObserver(PipelineObserver):
    """Fans every call out to several observers; one failing observer does not stop the others."""

    def __init__(self, *observers: PipelineObserver):
        self.observers = [o for o in observers if o is not None]

    def add(self, observer: PipelineObserver) -> None:
        self.observers.append(observer)

    def _each(self, name: str, *args):
        result = None
        for o in self.observers:
            try:
                r = getattr(o, name)(*args)
                if r is not None and result is None:
                    result = r
            except Exception:  # noqa: BLE001 - observers must never break the line
                import logging

                logging.getLogger(__name__).exception("observer %s.%s failed", type(o).__name__, name)
        return result

    def on_frame(self, frame):
        self._each("on_frame", frame)

    def on_drop(self, stage, reason):
        self._each("on_drop", stage, reason)

    def on_stage_latency(self, stage, seconds):
        self._each("on_stage_latency", stage, seconds)

    def on_queue_depth(self, queue, depth):
        self._each("on_queue_depth", queue, depth)

    def on_verdict(self, verdict, frame, anomaly_map):
        return self._each("on_verdict", verdict, frame, anomaly_map)

    def on_published(self, seq, verdict):
        self._each("on_published", seq, verdict)

    def on_replayed(self, seq):
        self._each("on_replayed", seq)

    def on_state(self, component, state, detail=""):
        self._each("on_state", component, state, detail)

    def on_outbox_depth(self, depth):
        self._each("on_outbox_depth", depth)

    def on_model(self, name, sha256):
        self._each("on_model", name, sha256)


def find_observer(supervisor: Any, kind: type) -> Any:
    """The observer of type ``kind`` already registered with the supervisor (ops components
    that build on another one find it here), or None."""
    for observer in getattr(getattr(supervisor, "observer", None), "observers", ()):
        if isinstance(observer, kind):
            return observer
    return None


class PipelineControl(Protocol):
    """What operations may ask of a running pipeline (implemented by supervisor.Supervisor)."""

    def reload(self, config_path: Optional[str] = None) -> tuple[bool, str]:
        """Re-read and re-validate the config; apply changes (a new model.path is loaded, warmed
        up and swapped atomically). On any error keep the running config/model; return (ok, message)."""

    def set_threshold(self, value: float) -> tuple[bool, str]: ...

    def trigger(self, count: int = 1, tag: Any = None) -> tuple[bool, str]:
        """Fire ``count`` software triggers (``camera.trigger.software_source: command``); a
        trigger the camera cannot execute still ends as an ERROR result. ``tag`` (a
        ``PartTag``) names the part(s) imaged. (ok, message)."""

    def select_product(self, product: str) -> tuple[bool, str]:
        """Put this product's recipe in service from the next frame on (``P/cmd/product``)."""

    def announce_part(self, tag: Any, clear: bool = False) -> tuple[bool, str]:
        """Queue the identity of the part the next hardware trigger images (``P/cmd/part``);
        ``clear`` drops the announcements still waiting first."""

    def snapshot(self, seq: Optional[int] = None) -> Optional[np.ndarray]:
        """The last grabbed frame (original pixels), or the archived frame of result ``seq``; None
        when there is none."""

    def status(self) -> dict:
        """fps, frames in/out, verdict counts, mqtt state, outbox depth, camera state, model id."""

    def stage_heartbeats(self) -> dict[str, float]:
        """Seconds since each stage's last heartbeat (a stage blocked on an empty queue still beats)."""
