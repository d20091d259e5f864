"""OpenCV capture: a USB camera index ("0"), an RTSP/HTTP URL, or a video file.

Live sources (index, URL) reconnect with exponential backoff after ``camera.max_consecutive_failures``
failed reads; because OpenCV cannot tell "wrong URL" from "camera not up yet", a live source that
cannot be opened at start-up does not fail ``open()``: it reports "reconnecting" and keeps trying.
Video files are checked at ``open()``, paced at ``camera.fps`` and end (or loop) at end of file.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Iterator, Optional

import cv2

from edge_inspector.acquisition.base import Backoff, CameraError, Frame, FrameSource, Pacer, StateCallback, stamp
from edge_inspector.config.models import CameraConfig
from edge_inspector.errors import InputError
from edge_inspector.logging import get_logger

log = get_logger("edge_inspector.acquisition.opencv")

_STREAM_SCHEMES = ("rtsp://", "rtsps://", "http://", "https://", "rtmp://", "udp://", "tcp://")


class OpenCVSource(FrameSource):
    """Frames from ``cv2.VideoCapture``. ``camera.trigger.mode``: ``free_run`` (default; frames may
    be dropped downstream) or ``hardware`` (the camera is externally triggered, every frame is a
    part). ``software`` is rejected: OpenCV has no portable software trigger."""

    def __init__(self, camera_cfg: CameraConfig, on_state: Optional[StateCallback] = None):
        self._cfg = camera_cfg
        self.on_state = on_state
        self.triggered = camera_cfg.trigger.mode == "hardware"
        self.kind, self.label = self._classify(camera_cfg.path)
        self._cap: Optional[cv2.VideoCapture] = None
        # Held around every use of the capture: close() from another thread must not release it
        # while the acquisition thread is inside read().
        self._cap_lock = threading.Lock()
        self._stop = threading.Event()
        self.read_failures = 0  # total failed reads on live sources, for health counters
        self.reconnects = 0

    @staticmethod
    def _classify(path: Optional[str]) -> tuple[str, str]:
        if path is None or not str(path).strip():
            raise InputError("camera.path: required for camera.type=opencv (device index such as \"0\", URL, or video file)")
        text = str(path).strip()
        if text.isdigit():
            return "device", f"usb{text}"
        if text.lower().startswith(_STREAM_SCHEMES):
            return "stream", "stream"
        return "file", Path(text).stem or "video"

    @property
    def path(self) -> str:
        return str(self._cfg.path).strip()

    def open(self) -> None:
        if self._cfg.trigger.mode == "software":
            raise InputError("camera.trigger.mode=software: the opencv source has no software trigger (use free_run or hardware)")
        self._stop.clear()
        if self.kind == "file":
            if not Path(self.path).is_file():
                raise InputError(f"camera.path={self.path}: no such video file")
            cap = self._open_capture()
            if cap is None:
                raise InputError(f"camera.path={self.path}: OpenCV cannot open this video file (corrupt or unsupported codec)")
            self._cap = cap
            self._set_state("open", self.path)
            return
        cap = self._open_capture()
        if cap is None:
            log.warning("opencv_open_failed", path=self.path, kind=self.kind)
            self._set_state("reconnecting", f"{self.path}: cannot open; will retry")
            return
        self._cap = cap
        self._set_state("open", self.path)

    def _open_capture(self) -> Optional[cv2.VideoCapture]:
        timeout_ms = self._cfg.grab_timeout_ms
        if self.kind == "device":
            cap = cv2.VideoCapture(int(self.path))
            if cap.isOpened():
                cap.set(cv2.CAP_PROP_FPS, self._cfg.fps)  # a request; many USB cameras ignore it
        elif self.kind == "stream":
            # Bounded open/read so a dead camera cannot block the acquisition thread (and close()) for long.
            cap = cv2.VideoCapture(self.path, cv2.CAP_FFMPEG,
                                   [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, timeout_ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, timeout_ms])
        else:
            cap = cv2.VideoCapture(self.path)
        if not cap.isOpened():
            cap.release()
            return None
        return cap

    def frames(self) -> Iterator[Frame]:
        if self._cap is None and self.kind == "file":
            raise CameraError("OpenCVSource.frames(): call open() first")
        backoff = Backoff(self._cfg.reconnect_min_s, self._cfg.reconnect_max_s)
        pacer = Pacer(self._cfg.fps) if self.kind == "file" else None
        consecutive_failures = 0
        frames_this_pass = 0
        loop_pass = 0
        try:
            while not self._stop.is_set():
                if self._cap is None:
                    if not self._reconnect(backoff, "cannot open" if consecutive_failures == 0 else
                                           f"{consecutive_failures} consecutive read failures"):
                        return
                    consecutive_failures = 0
                self._report_alive()  # a read returning (even empty, e.g. no trigger yet) is a sign of life
                ok, image = self._read()
                if self._stop.is_set():
                    return
                if not ok:
                    if self.kind == "file":
                        if frames_this_pass == 0:
                            self._set_state("error", f"{self.path}: no decodable frames")
                            return
                        if not self._cfg.loop:
                            self._set_state("ended", f"{self.path}: end of file")
                            return
                        self._rewind()
                        frames_this_pass = 0
                        loop_pass += 1
                        continue
                    consecutive_failures += 1
                    self.read_failures += 1
                    if consecutive_failures >= self._cfg.max_consecutive_failures:
                        self._release()
                    continue
                consecutive_failures = 0
                backoff.reset()
                frames_this_pass += 1
                if pacer is not None and not pacer.wait(self._stop, alive=self._report_alive):
                    return
                ts_grab, ts_wall = stamp()
                yield Frame(
                    frame_id=self._next_frame_id(self.label),
                    image=image,
                    ts_grab=ts_grab,
                    ts_wall=ts_wall,
                    source=self.path,
                    meta={"pass": loop_pass} if self.kind == "file" else {},
                )
        finally:
            self._release()

    def _read(self):
        with self._cap_lock:
            if self._cap is None or self._stop.is_set():
                return False, None
            return self._cap.read()

    def _rewind(self) -> None:
        # Reopening is more reliable than seeking to frame 0 across containers and codecs.
        self._release()
        cap = self._open_capture()
        if cap is None:
            message = f"camera.path={self.path}: cannot reopen video file to loop"
            self._set_state("error", message)
            raise CameraError(message)
        with self._cap_lock:
            self._cap = cap

    def _reconnect(self, backoff: Backoff, reason: str) -> bool:
        while not self._stop.is_set():
            delay = backoff.next_delay()
            self._set_state("reconnecting", f"{self.path}: {reason}; retry in {delay:.2f}s")
            if not self.wait_to_reconnect(self._stop, delay):
                return False
            cap = self._open_capture()
            if cap is not None:
                with self._cap_lock:
                    self._cap = cap
                self.reconnects += 1
                self._set_state("open", f"{self.path}: reconnected")
                return True
            reason = "cannot open"
        return False

    def _release(self) -> None:
        with self._cap_lock:
            if self._cap is not None:
                self._cap.release()
                self._cap = None

    def close(self) -> None:
        self._stop.set()
        # Waits for an in-flight read (bounded by the capture's read timeout) before releasing.
        self._release()
        if self._state not in ("closed", "unknown"):
            self._set_state("closed")
