"""Replay image files as a camera: a folder in name order, or one file, once or looping.

Used for bench tests, benchmarks and the demo. Pacing follows ``camera.fps`` on monotonic
deadlines; ``camera.trigger.mode`` decides whether frames count as parts (see ``folder_trigger_mode``).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from edge_inspector.acquisition.base import POLL_INTERVAL_S, CameraError, Frame, FrameSource, Pacer, StateCallback, stamp
from edge_inspector.acquisition.expect import max_pixels
from edge_inspector.config.models import CameraConfig
from edge_inspector.errors import DatasetError, InputError
from edge_inspector.faults import fault_point
from edge_inspector.imageio import IMAGE_SUFFIXES, ImageTooLargeError, list_images, read_image
from edge_inspector.logging import get_logger

log = get_logger("edge_inspector.acquisition.folder")


def folder_trigger_mode(camera_cfg: CameraConfig) -> str:
    """The effective trigger mode of a folder replay.

    Each replayed image normally stands for a part, so unless the station config *explicitly*
    says ``camera.trigger.mode: free_run`` the replay behaves like a hardware-triggered camera
    paced at ``camera.fps`` (triggered: the pipeline applies back-pressure, never drops).
    ``software`` releases one image per ``trigger()`` call and does not pace by itself (the
    daemon's trigger timer fires at ``camera.fps``: see acquisition/trigger.py).
    """
    trigger_cfg = camera_cfg.trigger
    explicitly_set = "trigger" in camera_cfg.model_fields_set and "mode" in trigger_cfg.model_fields_set
    if not explicitly_set:
        return "hardware"
    return trigger_cfg.mode


class FolderSource(FrameSource):
    """Replays ``camera.path`` (a folder of images, in name order, or a single image file).

    An unreadable or corrupt file becomes a Frame with ``image=None`` and ``error`` naming the
    file, so the part still ends as an ERROR verdict. Files are decoded by content, and one whose
    header announces more than ``camera.expect.max_megapixels`` is refused before decoding, so a
    stray huge file costs no memory. Frame ids are ``<stem>-<n>`` with ``n``
    counting every frame of this source (unique across loop passes).
    """

    def __init__(self, camera_cfg: CameraConfig, on_state: Optional[StateCallback] = None):
        self._cfg = camera_cfg
        self.on_state = on_state
        self.trigger_mode = folder_trigger_mode(camera_cfg)
        self.triggered = self.trigger_mode != "free_run"
        self._files: list[Path] = []
        self._stop = threading.Event()
        self._pending_triggers = threading.Semaphore(0)
        self.late_ticks = 0  # pacing slots missed because the consumer stalled (see Pacer)

    @property
    def files(self) -> list[Path]:
        return list(self._files)

    def open(self) -> None:
        self._files = self._resolve_files(self._cfg.path)
        self._stop.clear()
        log.info("folder_source_open", path=self._cfg.path, images=len(self._files), fps=self._cfg.fps,
                 loop=self._cfg.loop, trigger_mode=self.trigger_mode)
        self._set_state("open", f"{self._cfg.path}: {len(self._files)} image(s)")

    @staticmethod
    def _resolve_files(path_text: Optional[str]) -> list[Path]:
        if not path_text:
            raise InputError("camera.path: required for camera.type=folder (a folder of images or one image file)")
        path = Path(path_text)
        if path.is_dir():
            files = list_images(path)
            if not files:
                raise InputError(f"camera.path={path}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
            return files
        if path.is_file():
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                raise InputError(f"camera.path={path}: not an image file (expected one of {', '.join(IMAGE_SUFFIXES)})")
            return [path]
        raise InputError(f"camera.path={path}: no such folder or file")

    def frames(self) -> Iterator[Frame]:
        if not self._files:
            raise CameraError("FolderSource.frames(): call open() first")
        pacer = Pacer(self._cfg.fps)
        loop_pass = 0
        while True:
            for index, path in enumerate(self._files):
                # Decode before waiting so the frame leaves on its deadline, not deadline + decode time.
                image, error = self._load(path, max_pixels(self._cfg.expect))
                fault_point("camera.grab")
                if not self._wait_for_slot(pacer):
                    return
                ts_grab, ts_wall = stamp()
                yield Frame(
                    frame_id=self._next_frame_id(path.stem),
                    image=image,
                    ts_grab=ts_grab,
                    ts_wall=ts_wall,
                    source=str(path),
                    error=error,
                    meta={"path": str(path), "index": index, "pass": loop_pass},
                )
                self.late_ticks = pacer.late_ticks
                if self._stop.is_set():
                    return
            if not self._cfg.loop:
                self._set_state("ended", f"{len(self._files)} image(s) replayed")
                return
            loop_pass += 1

    def _wait_for_slot(self, pacer: Pacer) -> bool:
        if self.trigger_mode != "software":
            return pacer.wait(self._stop, alive=self._report_alive)
        while not self._pending_triggers.acquire(timeout=POLL_INTERVAL_S):
            self._report_alive()  # waiting for the next trigger is work, not a hang
            if self._stop.is_set():
                return False
        return not self._stop.is_set()

    @staticmethod
    def _load(path: Path, pixel_limit: int) -> tuple[Optional[np.ndarray], Optional[str]]:
        try:
            return read_image(path, max_pixels=pixel_limit), None
        except ImageTooLargeError as exc:
            return None, f"{exc} (camera.expect.max_megapixels)"
        except DatasetError as exc:  # message already starts with the file name
            return None, str(exc)
        except Exception as exc:  # noqa: BLE001 - one bad file must become an ERROR frame, not end the replay
            return None, f"{path}: cannot decode image ({exc.__class__.__name__}: {exc})"

    def trigger(self) -> bool:
        """Release the next image (``camera.trigger.mode: software`` only). Thread-safe."""
        if self.trigger_mode != "software":
            raise CameraError(f"folder source: trigger() needs camera.trigger.mode=software (it is {self.trigger_mode})")
        self._pending_triggers.release()
        return True

    def close(self) -> None:
        self._stop.set()
        if self._state not in ("closed", "unknown"):
            self._set_state("closed")
