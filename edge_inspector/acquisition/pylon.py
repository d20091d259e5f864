"""Basler cameras through pypylon: open by serial, free-run or software/hardware trigger,
exposure/gain/pixel format from config, host timestamps, reopen by serial after faults.

Bench testing uses pylon's own camera emulator (bundled with the pypylon wheel): set
``PYLON_CAMEMU=<count>`` in the environment before the first device enumeration (importing
pypylon earlier is fine; see ``enable_emulation``), and point ``camera.path`` at an image file or
folder: the emulated camera then replays those files bit-exactly (``ImageFileMode``).
"""

from __future__ import annotations

import collections
import os
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
from pypylon import genicam, pylon

from edge_inspector.acquisition.base import (
    POLL_INTERVAL_S,
    Backoff,
    CameraError,
    Frame,
    FrameSource,
    StateCallback,
    stamp,
)
from edge_inspector.config.models import CameraConfig
from edge_inspector.errors import InputError
from edge_inspector.faults import fault_point
from edge_inspector.logging import get_logger

log = get_logger("edge_inspector.acquisition.pylon")

EMULATOR_DEVICE_CLASS = "BaslerCamEmu"
_POLL_MS = int(POLL_INTERVAL_S * 1000)


def enable_emulation(count: int = 1) -> None:
    """Make pylon enumerate ``count`` emulated cameras (serials 0815-0000, 0815-0001, ...).

    pylon reads ``PYLON_CAMEMU`` at each device enumeration, so this works after ``import
    pypylon`` too, but it must run before the enumeration that should see the emulators.
    """
    os.environ["PYLON_CAMEMU"] = str(int(count))


def list_serials() -> list[str]:
    """Serial numbers of every camera pylon can see now (emulators included)."""
    return [d.GetSerialNumber() for d in pylon.TlFactory.GetInstance().EnumerateDevices()]


def _short(exc: BaseException) -> str:
    """genicam messages end with ' : XException thrown in node ... (file ..., line ...)': keep the sentence."""
    text = str(exc).strip()
    for marker in (" : ", "Exception thrown"):
        head, sep, _ = text.partition(marker)
        if sep and head:
            text = head
    return text.rstrip(". ") or exc.__class__.__name__


class PylonSource(FrameSource):
    """A Basler camera. ``triggered`` is True for ``software``/``hardware`` trigger modes.

    * ``frames()`` grabs with ``GrabStrategy_OneByOne`` (no frame is skipped by pylon) in slices
      of ~0.1 s so that ``close()`` from another thread is noticed promptly.
    * Device removal (``IsCameraDeviceRemoved``) or ``camera.max_consecutive_failures`` failed
      grabs/timeouts close the device and reopen the *same serial* with exponential backoff,
      reporting "reconnecting"/"open" through ``on_state``.
    * In triggered modes a failed grab, a software trigger that produced no image within
      ``camera.grab_timeout_ms``, and triggers outstanding when the camera is lost each become a
      Frame with ``image=None`` and ``error``, so every triggered part still ends as a verdict.
      In free-run, failed grabs are only counted (``stats``).
    """

    def __init__(self, camera_cfg: CameraConfig, on_state: Optional[StateCallback] = None):
        self._cfg = camera_cfg
        self.on_state = on_state
        self.trigger_mode = camera_cfg.trigger.mode
        self.triggered = self.trigger_mode != "free_run"
        # Pinned at the first open even when camera.serial is empty, so a reconnect can never
        # silently switch to a different camera.
        self.serial: Optional[str] = camera_cfg.serial or None
        self.model_name = ""
        self.is_emulator = False
        self._camera: Optional[pylon.InstantCamera] = None
        # _grab_lock: held by the acquisition thread around RetrieveResult; close() takes it so a
        # device is never torn down under a running grab. _camera_lock: guards swapping
        # self._camera against trigger(). Order: _grab_lock before _camera_lock.
        self._grab_lock = threading.Lock()
        self._camera_lock = threading.RLock()
        self._stop = threading.Event()
        self._error_frames: collections.deque[Frame] = collections.deque()
        self._outstanding_triggers: collections.deque[float] = collections.deque()
        self._mono_converter: Optional[pylon.ImageFormatConverter] = None
        self._color_converter: Optional[pylon.ImageFormatConverter] = None
        self.pixel_format = ""
        self.stats = {"grabbed": 0, "failed_grabs": 0, "grab_exceptions": 0, "timeouts": 0,
                      "lost_triggers": 0, "reconnects": 0}

    # ------------------------------------------------------------------ open / configure

    def open(self) -> None:
        self._stop.clear()
        camera = self._connect()
        with self._camera_lock:
            self._camera = camera
        self._set_state("open", f"{self.model_name} {self.serial}")

    def _find_device(self) -> "pylon.DeviceInfo":
        factory = pylon.TlFactory.GetInstance()
        if self.serial:
            wanted = pylon.DeviceInfo()
            wanted.SetSerialNumber(self.serial)
            devices = factory.EnumerateDevices([wanted])
            if not devices:
                others = ", ".join(list_serials()) or "none"
                raise CameraError(f"camera.serial={self.serial}: no pylon camera with this serial (cameras found: {others})")
        else:
            devices = factory.EnumerateDevices()
            if not devices:
                raise CameraError("camera.type=pylon: no camera found (check power, cable and IP setup; "
                                  "for bench tests set PYLON_CAMEMU=1 to use pylon's emulator)")
        return devices[0]

    def _connect(self) -> "pylon.InstantCamera":
        """Find, open, configure and start grabbing. Raises CameraError / InputError (one line)."""
        info = self._find_device()
        serial = info.GetSerialNumber()
        try:
            camera = pylon.InstantCamera(pylon.TlFactory.GetInstance().CreateDevice(info))
            camera.Open()
        except genicam.GenericException as exc:
            raise CameraError(f"pylon camera {serial}: cannot open ({_short(exc)}); is another program using it?") from None
        try:
            self.is_emulator = info.GetDeviceClass() == EMULATOR_DEVICE_CLASS
            self._configure(camera, serial)
            camera.StartGrabbing(pylon.GrabStrategy_OneByOne)
        except BaseException:
            _teardown(camera)
            raise
        self.serial = serial
        self.model_name = info.GetModelName()
        self.pixel_format = _read(camera.GetNodeMap(), "PixelFormat") or ""
        log.info("pylon_camera_open", serial=serial, model=self.model_name, emulator=self.is_emulator,
                 trigger_mode=self.trigger_mode, pixel_format=self.pixel_format)
        return camera

    def _configure(self, camera: "pylon.InstantCamera", serial: str) -> None:
        cfg = self._cfg
        nodes = camera.GetNodeMap()
        where = f"pylon camera {serial}"
        if cfg.path:
            if self.is_emulator:
                image_path = Path(cfg.path).resolve()
                if not image_path.exists():
                    raise InputError(f"camera.path={cfg.path}: no such image file or folder for the emulated camera")
                _set(nodes, "TestImageSelector", "Off", "camera.path", where, optional=True)
                _set(nodes, "ImageFileMode", "On", "camera.path", where)
                _set(nodes, "ImageFilename", str(image_path), "camera.path", where)
            else:
                log.warning("pylon_path_ignored", serial=serial, path=cfg.path,
                            reason="camera.path only feeds images to pylon's emulated camera")
        if cfg.pixel_format:
            _set(nodes, "PixelFormat", cfg.pixel_format, "camera.pixel_format", where)
        if cfg.exposure_us is not None:
            _set(nodes, "ExposureAuto", "Off", "camera.exposure_us", where, optional=True, quiet=True)
            # SFNC 2 cameras (ace USB, ace 2) call it ExposureTime; older GigE cameras ExposureTimeAbs.
            _set_first(nodes, ("ExposureTime", "ExposureTimeAbs"), cfg.exposure_us, "camera.exposure_us", where)
        if cfg.gain_db is not None:
            _set(nodes, "GainAuto", "Off", "camera.gain_db", where, optional=True, quiet=True)
            _set_first(nodes, ("Gain", "GainAbs"), cfg.gain_db, "camera.gain_db", where)
        if cfg.auto_exposure:
            _set(nodes, "ExposureAuto", "Continuous", "camera.auto_exposure", where)
            _set(nodes, "GainAuto", "Continuous", "camera.auto_exposure", where, optional=True)
            if cfg.auto_target_brightness is not None:
                self._set_brightness_target(nodes, cfg.auto_target_brightness, where)
        # FrameStart is the trigger that starts each image; other selectors stay as the camera has them.
        _set(nodes, "TriggerSelector", "FrameStart", "camera.trigger", where, optional=True)
        if self.trigger_mode == "free_run":
            _set(nodes, "TriggerMode", "Off", "camera.trigger.mode", where, optional=True)
            _set(nodes, "AcquisitionFrameRateEnable", True, "camera.fps", where, optional=True)
            _set_first(nodes, ("AcquisitionFrameRate", "AcquisitionFrameRateAbs"), cfg.fps, "camera.fps", where)
        else:
            source = "Software" if self.trigger_mode == "software" else cfg.trigger.source
            key = "camera.trigger.mode" if self.trigger_mode == "software" else "camera.trigger.source"
            _set(nodes, "TriggerMode", "On", "camera.trigger.mode", where)
            _set(nodes, "TriggerSource", source, key, where)
            if self.trigger_mode == "hardware":
                _set(nodes, "TriggerActivation", cfg.trigger.activation, "camera.trigger.activation", where, optional=True)
            # A frame-rate limit would delay triggered exposures; the trigger sets the pace.
            _set(nodes, "AcquisitionFrameRateEnable", False, "camera.fps", where, optional=True, quiet=True)

    @staticmethod
    def _set_brightness_target(nodes, target: float, where: str) -> None:
        """SFNC 2 cameras (ace USB, ace 2) take AutoTargetBrightness as 0..1 of full scale; older
        GigE cameras AutoTargetValue as an 8-bit grey value. A camera with neither cannot hold
        the target the station asked for: that is a config error, not a warning."""
        key = "camera.auto_target_brightness"
        if _node(nodes, "AutoTargetBrightness") is not None:
            _set(nodes, "AutoTargetBrightness", float(target), key, where)
        elif _node(nodes, "AutoTargetValue") is not None:
            _set(nodes, "AutoTargetValue", int(round(target * 255)), key, where)
        else:
            raise InputError(f"{key}={target:g}: {where} has neither AutoTargetBrightness nor AutoTargetValue; "
                             f"leave it null to keep the camera's own target")

    # ------------------------------------------------------------------ grabbing

    def frames(self) -> Iterator[Frame]:
        if self._camera is None:
            raise CameraError("PylonSource.frames(): call open() first")
        backoff = Backoff(self._cfg.reconnect_min_s, self._cfg.reconnect_max_s)
        grab_timeout_s = self._cfg.grab_timeout_ms / 1000.0
        consecutive_failures = 0
        last_image_at = time.monotonic()
        try:
            while True:
                while self._error_frames:
                    yield self._error_frames.popleft()
                if self._stop.is_set():
                    return
                self._report_alive()  # each poll slice: waiting for a trigger is not a hang
                fault_point("camera.grab")
                reconnect_reason = None
                with self._grab_lock:
                    if self._stop.is_set():
                        return
                    camera = self._camera
                    if camera is None or self._device_removed(camera):
                        reconnect_reason = "device removed"
                        grabbed = None
                    else:
                        grabbed = self._retrieve(camera)
                now = time.monotonic()
                if reconnect_reason is None and grabbed is None:  # a poll slice passed without an image
                    if self.trigger_mode == "free_run" and now - last_image_at > grab_timeout_s:
                        self.stats["timeouts"] += 1
                        consecutive_failures += 1
                        last_image_at = now
                    elif (self.trigger_mode == "software" and self._outstanding_triggers
                          and now - self._outstanding_triggers[0] > grab_timeout_s):
                        self._outstanding_triggers.popleft()
                        self.stats["lost_triggers"] += 1
                        consecutive_failures += 1
                        self._queue_error(f"software trigger produced no image within {self._cfg.grab_timeout_ms} ms")
                elif grabbed is not None:
                    ok, frame = grabbed
                    if frame is not None:  # a buffer came back: it answers the oldest trigger
                        last_image_at = now
                        if self._outstanding_triggers:
                            self._outstanding_triggers.popleft()
                    if ok:
                        consecutive_failures = 0
                        backoff.reset()
                        yield frame
                    else:
                        consecutive_failures += 1
                        if frame is None:
                            # RetrieveResult raised: no exposure behind it, but do not spin on a
                            # broken device while the failures add up to a reconnect.
                            self._stop.wait(POLL_INTERVAL_S)
                        elif self.triggered:
                            yield frame
                if reconnect_reason is None and consecutive_failures >= self._cfg.max_consecutive_failures:
                    reconnect_reason = f"{consecutive_failures} consecutive failed grabs"
                if reconnect_reason is not None:
                    if not self._reconnect(backoff, reconnect_reason):
                        return
                    consecutive_failures = 0
                    last_image_at = time.monotonic()
        finally:
            self._shutdown_camera()

    def _device_removed(self, camera: "pylon.InstantCamera") -> bool:
        """Seam for tests: pylon's emulator cannot be unplugged, so tests override this."""
        return camera.IsCameraDeviceRemoved()

    def _retrieve(self, camera: "pylon.InstantCamera") -> Optional[tuple[bool, Optional[Frame]]]:
        """One poll slice: None when no image arrived, else (grab_succeeded, frame).

        A failed buffer stands for an exposure that really happened (a part was triggered), so
        it becomes an error Frame; an exception from RetrieveResult gives (False, None): a
        failure that counts towards a reconnect but has no part behind it.
        """
        try:
            result = camera.RetrieveResult(_POLL_MS, pylon.TimeoutHandling_Return)
        except genicam.GenericException as exc:
            self.stats["grab_exceptions"] += 1
            log.warning("pylon_retrieve_failed", serial=self.serial, error=_short(exc))
            return False, None
        if not result.IsValid():
            return None
        try:
            ts_grab, ts_wall = stamp()
            meta: dict[str, Any] = {"serial": self.serial, "block_id": result.GetBlockID(),
                                    "pixel_format": self.pixel_format}
            device_ts = result.GetTimeStamp()
            if device_ts:  # 0 on the emulator and on cameras without timestamps
                meta["device_timestamp"] = device_ts
            if not result.GrabSucceeded():
                self.stats["failed_grabs"] += 1
                reason = result.GetErrorDescription().strip() or "no reason given"
                error = f"pylon camera {self.serial}: grab failed ({reason}, code 0x{result.GetErrorCode():x})"
                log.warning("pylon_grab_failed", serial=self.serial, error=error, triggered=self.triggered)
                return False, Frame(frame_id=self._next_id(), image=None, ts_grab=ts_grab, ts_wall=ts_wall,
                                    source=f"pylon:{self.serial}", error=error, meta=meta)
            image = self._to_uint8(result)
            self.stats["grabbed"] += 1
            return True, Frame(frame_id=self._next_id(), image=image, ts_grab=ts_grab, ts_wall=ts_wall,
                               source=f"pylon:{self.serial}", meta=meta)
        finally:
            result.Release()

    def _next_id(self) -> str:
        return self._next_frame_id(self.serial)

    def _error_frame(self, reason: str) -> Frame:
        ts_grab, ts_wall = stamp()
        return Frame(frame_id=self._next_id(), image=None, ts_grab=ts_grab, ts_wall=ts_wall,
                     source=f"pylon:{self.serial}", error=f"pylon camera {self.serial}: {reason}",
                     meta={"serial": self.serial})

    def _queue_error(self, reason: str) -> None:
        self._error_frames.append(self._error_frame(reason))

    def _to_uint8(self, result) -> np.ndarray:
        """Mono formats → 2-D uint8 (high bits kept); Bayer and colour → BGR uint8 (OpenCV order)."""
        pixel_type = result.GetPixelType()
        if pixel_type in (pylon.PixelType_Mono8, pylon.PixelType_BGR8packed):
            return result.GetArray()  # already the output layout; GetArray copies out of the buffer
        if pylon.IsBayer(pixel_type) or pylon.IsColorImage(pixel_type):
            if self._color_converter is None:
                self._color_converter = pylon.ImageFormatConverter()
                self._color_converter.OutputPixelFormat = pylon.PixelType_BGR8packed
            return self._color_converter.Convert(result).GetArray()
        if self._mono_converter is None:
            self._mono_converter = pylon.ImageFormatConverter()
            self._mono_converter.OutputPixelFormat = pylon.PixelType_Mono8
        return self._mono_converter.Convert(result).GetArray()

    # ------------------------------------------------------------------ faults

    def _reconnect(self, backoff: Backoff, reason: str) -> bool:
        """Close the device and reopen the pinned serial until it works or close() is called."""
        log.warning("pylon_camera_lost", serial=self.serial, reason=reason)
        self._shutdown_camera()
        # Parts triggered but not yet imaged are gone with the device: report each one.
        while self._outstanding_triggers:
            self._outstanding_triggers.popleft()
            self.stats["lost_triggers"] += 1
            self._queue_error(f"software trigger lost: camera {reason}")
        attempt = 0
        while not self._stop.is_set():
            attempt += 1
            delay = backoff.next_delay()
            self._set_state("reconnecting", f"{self.serial}: {reason}; attempt {attempt} in {delay:.2f}s")
            if not self.wait_to_reconnect(self._stop, delay):
                return False
            try:
                camera = self._connect()
            except InputError as exc:
                # The settings worked at start, so a rejection now (the emulator's image folder
                # gone, a swapped camera behind the serial) is a fault of the device's world, not
                # a typo: keep retrying with backoff, saying why, until it works or we are closed.
                reason = str(exc)
                log.error("pylon_reconnect_rejected", serial=self.serial, attempt=attempt, error=reason)
                continue
            except (CameraError, genicam.GenericException) as exc:
                reason = _short(exc) if isinstance(exc, genicam.GenericException) else str(exc)
                continue
            with self._grab_lock, self._camera_lock:
                if self._stop.is_set():
                    _teardown(camera)
                    return False
                self._camera = camera
            self.stats["reconnects"] += 1
            self._set_state("open", f"{self.serial}: reopened after {attempt} attempt(s)")
            return True
        return False

    def _shutdown_camera(self) -> None:
        with self._camera_lock:
            camera, self._camera = self._camera, None
        if camera is not None:
            _teardown(camera)

    # ------------------------------------------------------------------ control (any thread)

    def trigger(self) -> bool:
        """Execute a software trigger (``camera.trigger.mode: software``). Thread-safe.

        Returns False when the trigger could not be executed (camera reconnecting, not ready
        within ``grab_timeout_ms``); the part then still reaches ``frames()`` as an error Frame.
        """
        if self.trigger_mode != "software":
            raise CameraError(f"pylon camera {self.serial}: trigger() needs camera.trigger.mode=software (it is {self.trigger_mode})")
        with self._camera_lock:
            camera = self._camera
            if camera is None or self._stop.is_set():
                self.stats["lost_triggers"] += 1
                self._queue_error(f"software trigger while the camera is {self.state}: part not imaged")
                return False
            try:
                if not camera.WaitForFrameTriggerReady(self._cfg.grab_timeout_ms, pylon.TimeoutHandling_Return):
                    self.stats["lost_triggers"] += 1
                    self._queue_error(f"camera not ready for a software trigger within {self._cfg.grab_timeout_ms} ms")
                    return False
                # Recorded before executing so the grab loop can never see the image before the trigger.
                self._outstanding_triggers.append(time.monotonic())
                camera.ExecuteSoftwareTrigger()
            except genicam.GenericException as exc:
                if self._outstanding_triggers:
                    self._outstanding_triggers.pop()
                self.stats["lost_triggers"] += 1
                self._queue_error(f"software trigger failed ({_short(exc)})")
                return False
        return True

    def close(self) -> None:
        self._stop.set()
        # Waits at most one poll slice for a running RetrieveResult to return.
        with self._grab_lock:
            self._shutdown_camera()
        if self._outstanding_triggers:
            log.warning("pylon_triggers_unanswered_at_close", serial=self.serial, count=len(self._outstanding_triggers))
        if self._state not in ("closed", "unknown"):
            self._set_state("closed", f"{self.serial}")


# ---------------------------------------------------------------------- node helpers


def _teardown(camera: "pylon.InstantCamera") -> None:
    """Stop, close and destroy, ignoring errors: the device may already be gone."""
    for step in (camera.StopGrabbing, camera.Close, camera.DestroyDevice):
        try:
            step()
        except genicam.GenericException as exc:
            log.debug("pylon_teardown_step_failed", step=step.__name__, error=_short(exc))


def _node(nodes, name: str):
    node = nodes.GetNode(name)
    return node if node is not None and genicam.IsAvailable(node) else None


def _read(nodes, name: str) -> Optional[str]:
    node = _node(nodes, name)
    return node.ToString() if node is not None and genicam.IsReadable(node) else None


def _set_first(nodes, names: tuple[str, ...], value: Any, key: str, where: str) -> None:
    for name in names:
        if _node(nodes, name) is not None:
            _set(nodes, name, value, key, where)
            return
    log.warning("pylon_node_missing", camera=where, key=key, nodes=list(names),
                reason=f"{key} not applied: camera has none of {', '.join(names)}")


def _set(nodes, name: str, value: Any, key: str, where: str, optional: bool = False, quiet: bool = False) -> None:
    """Write one node. A missing node is a warning (camera models differ); a value the camera
    refuses is an InputError naming the config key, the value and what the camera accepts."""
    node = _node(nodes, name)
    if node is None:
        if not quiet:
            log.warning("pylon_node_missing", camera=where, node=name, key=key,
                        reason=f"{key}: camera has no {name} node; left as is")
        return
    if not genicam.IsWritable(node):
        if not quiet:
            log.warning("pylon_node_read_only", camera=where, node=name, key=key)
        return
    try:
        if isinstance(node, pylon.EnumParameter):
            allowed = list(node.GetSymbolics())
            if str(value) not in allowed:
                raise InputError(f"{key}={value}: {where} does not support {name}={value} (supported: {', '.join(allowed)})")
            node.Value = str(value)
        else:
            node.Value = value
    except genicam.OutOfRangeException:
        low, high = (node.GetMin(), node.GetMax()) if hasattr(node, "GetMin") else ("?", "?")
        raise InputError(f"{key}={value}: out of range for {name} on {where} (allowed {low}..{high})") from None
    except genicam.GenericException as exc:
        raise InputError(f"{key}={value}: {where} refused {name}={value} ({_short(exc)})") from None
