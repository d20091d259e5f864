"""systemd integration: the sd_notify datagram and the watchdog loop.

The protocol is one AF_UNIX datagram of newline-separated ``KEY=VALUE`` lines sent to the socket
named by ``$NOTIFY_SOCKET`` (see sd_notify(3)); it is small enough to write here rather than
depend on a library. Without ``$NOTIFY_SOCKET`` (run by hand, in tests, in a container) every
call is a no-op, so the daemon never needs to know whether systemd supervises it.

``WatchdogLoop`` pings ``WATCHDOG=1`` only while every stage's heartbeat is fresh: a stuck stage
(hung camera driver, wedged inference) stops the pings and systemd restarts the service after
``WatchdogSec=``. A thread that merely survives is not evidence that the line is inspecting.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from typing import Any, Callable, Mapping, Optional

from edge_inspector.health.liveness import describe_stalled, stalled_stages
from edge_inspector.faults import fault_point
from edge_inspector.logging import get_logger
from edge_inspector.observer import PipelineObserver
from edge_inspector.threads import start_supervised

log = get_logger(__name__)


class SystemdNotifier:
    """Sends sd_notify messages; every method is a no-op (returns False) without a socket.

    Never raises: a broken notify socket must not take the inspection line down with it.
    """

    def __init__(self, socket_path: Optional[str] = None, environ: Optional[Mapping[str, str]] = None):
        env = os.environ if environ is None else environ
        path = socket_path if socket_path is not None else env.get("NOTIFY_SOCKET", "")
        self._address: Optional[str | bytes] = self._parse_address(path)
        self._sock: Optional[socket.socket] = None
        self._lock = threading.Lock()
        self._last_error: Optional[str] = None
        self.watchdog_interval_s = self._watchdog_interval(env)

    @staticmethod
    def _parse_address(path: str) -> Optional[str]:
        if not path:
            return None
        if path.startswith("@"):
            # Abstract namespace: the kernel name starts with a NUL byte instead of '@'.
            return "\0" + path[1:]
        if path.startswith("/"):
            return path
        # vsock:... and other transports are for VMs; log once and stay silent rather than guess.
        log.warning("sd_notify_disabled", reason="notify socket address not supported", notify_socket=path)
        return None

    @staticmethod
    def _watchdog_interval(env: Mapping[str, str]) -> Optional[float]:
        """Half of WATCHDOG_USEC (sd_watchdog_enabled(3)'s advice), or None when not asked for."""
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        if not usec:
            return None
        if pid and pid.isdigit() and int(pid) != os.getpid():
            return None  # the watchdog belongs to another process (we were forked/execed by it)
        try:
            value = int(usec)
        except ValueError:
            log.warning("sd_watchdog_disabled", reason="WATCHDOG_USEC is not an integer", watchdog_usec=usec)
            return None
        return value / 2 / 1_000_000 if value > 0 else None

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, *lines: str) -> bool:
        """Send one datagram made of ``lines`` (each ``KEY=VALUE``). True when it was sent."""
        if self._address is None or not lines:
            return False
        payload = "\n".join(lines).encode("utf-8", "replace")
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                # MSG_DONTWAIT: if systemd ever stops reading, drop the message rather than
                # block the supervisor or a pipeline thread that reported a state change.
                self._sock.sendto(payload, socket.MSG_DONTWAIT, self._address)
                self._last_error = None
                return True
            except OSError as exc:
                message = f"{type(exc).__name__}: {exc}"
                if message != self._last_error:  # log each new failure once, not every second
                    log.warning("sd_notify_failed", error=message)
                    self._last_error = message
                self._close_locked()
                return False

    def ready(self, status: Optional[str] = None) -> bool:
        return self.notify("READY=1", *([f"STATUS={_one_line(status)}"] if status else []))

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={_one_line(text)}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def stopping(self, status: Optional[str] = None) -> bool:
        return self.notify("STOPPING=1", *([f"STATUS={_one_line(status)}"] if status else []))

    def reloading(self, status: Optional[str] = None) -> bool:
        """RELOADING=1 with MONOTONIC_USEC (required by systemd ≥ 253 so it can tell this reload
        from a stale message). Send ``ready()`` when the reload is finished, failed or not."""
        monotonic_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        lines = ["RELOADING=1", f"MONOTONIC_USEC={monotonic_usec}"]
        if status:
            lines.append(f"STATUS={_one_line(status)}")
        return self.notify(*lines)

    def close(self) -> None:
        with self._lock:
            self._close_locked()

    def _close_locked(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None


def _one_line(text: str) -> str:
    # A newline would start a new KEY=VALUE line in the datagram.
    return " ".join(str(text).split())


def format_status(status: Mapping) -> str:
    """PipelineControl.status() → the one-line STATUS= text shown by `systemctl status`.

    Tolerant of missing keys: the status dict grows over time and STATUS is for humans.
    """
    parts = []
    fps = status.get("fps")
    if isinstance(fps, (int, float)):
        parts.append(f"fps={fps:.1f}")
    for label, flat_key, field in (("mqtt", "mqtt_state", "state"), ("outbox", "outbox_depth", "depth"),
                                   ("camera", "camera_state", "state")):
        # Either a flat "<label>_<field>" key or a nested {"<label>": {"<field>": ...}} section.
        value = status.get(flat_key, status.get(label))
        if isinstance(value, Mapping):
            value = value.get(field)
        if value is not None:
            parts.append(f"{label}={value}")
    for key in ("frames_in", "frames_out"):
        if status.get(key) is not None:
            parts.append(f"{key}={status[key]}")
    return " ".join(parts) or "running"


class WatchdogLoop:
    """Background thread: ``WATCHDOG=1`` while every heartbeat is fresh, plus ``STATUS=`` lines.

    ``heartbeats`` and ``status`` are usually ``PipelineControl.stage_heartbeats`` and
    ``PipelineControl.status``. Ticks every ``WATCHDOG_USEC/2`` when systemd asked for a
    watchdog, else every ``status_interval_s`` (STATUS only). When a stage stalls the loop stops
    pinging and says which stage in STATUS=; it resumes by itself if the stage recovers before
    systemd's deadline.
    """

    def __init__(
        self,
        notifier: SystemdNotifier,
        heartbeats: Callable[[], Mapping[str, float]],
        heartbeat_timeout_s: float,
        status: Optional[Callable[[], Mapping]] = None,
        status_interval_s: float = 5.0,
    ):
        self.notifier = notifier
        self._heartbeats = heartbeats
        self._status = status
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.interval_s = notifier.watchdog_interval_s or status_interval_s
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._was_stalled = False
        self.pings_sent = 0

    def start(self) -> "WatchdogLoop":
        if not self.notifier.enabled:
            return self  # nothing listens: no thread to keep alive for months
        self._thread = start_supervised("sd-watchdog", self._run, self._stop)
        return self

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            fault_point("watchdog")
            self.tick()
            self._stop.wait(self.interval_s)

    def tick(self) -> bool:
        """One check: returns True when WATCHDOG=1 was sent."""
        try:
            stalled = stalled_stages(self._heartbeats(), self.heartbeat_timeout_s)
        except Exception as exc:  # noqa: BLE001 - a failing probe is itself a reason to stop pinging
            stalled = {f"heartbeat probe ({type(exc).__name__}: {exc})": float("inf")}
        if stalled:
            reason = describe_stalled(stalled)
            if not self._was_stalled:
                log.error("sd_watchdog_withheld", reason=reason)
            self._was_stalled = True
            self.notifier.status(f"STALLED: {reason}")
            return False
        if self._was_stalled:
            log.info("sd_watchdog_resumed", detail="all stages beating again")
            self._was_stalled = False
        lines = []
        if self.notifier.watchdog_interval_s is not None:
            lines.append("WATCHDOG=1")
        if self._status is not None:
            try:
                lines.append(f"STATUS={_one_line(format_status(self._status()))}")
            except Exception as exc:  # noqa: BLE001 - status text is cosmetic; the ping is not
                log.warning("sd_status_failed", error=f"{type(exc).__name__}: {exc}")
        sent = self.notifier.notify(*lines) if lines else False
        pinged = sent and "WATCHDOG=1" in lines
        self.pings_sent += int(pinged)
        return pinged


class SystemdOps(PipelineObserver):
    """The supervisor's systemd component: READY/STOPPING/RELOADING from pipeline states, and the
    watchdog loop over ``PipelineControl``.

    READY=1 is sent on the pipeline's "ready" state, which the supervisor enters only after the
    model is warmed up, the camera is open and the stage threads run.
    """

    def __init__(self, control: Any, heartbeat_timeout_s: float, notifier: Optional[SystemdNotifier] = None):
        self.notifier = notifier or SystemdNotifier()
        self.control = control
        self.watchdog = WatchdogLoop(self.notifier, control.stage_heartbeats, heartbeat_timeout_s, status=control.status)
        self._reloading = False

    def start(self) -> None:
        self.watchdog.start()

    def stop(self) -> None:
        self.watchdog.stop()
        self.notifier.close()

    def on_state(self, component: str, state: str, detail: str = "") -> None:
        if component != "pipeline":
            return
        if state == "ready":
            self.notifier.ready(f"ready: {detail}" if detail else "ready")
        elif state == "starting":
            self.notifier.status(f"starting: {detail}" if detail else "starting")
        elif state == "stopping":
            self.notifier.stopping(f"stopping: {detail}" if detail else "stopping")
        elif state == "reloading":
            self._reloading = self.notifier.reloading(f"reloading: {detail}" if detail else "reloading")
        elif state in ("reloaded", "reload_failed"):
            text = f"{'reloaded' if state == 'reloaded' else 'reload failed, old config kept'}: {detail}"
            if self._reloading:  # RELOADING=1 must be closed by READY=1, whatever the outcome
                self.notifier.ready(text)
                self._reloading = False
            else:
                self.notifier.status(text)
        elif state in ("failed", "stalled"):
            self.notifier.status(f"{state}: {detail}")


def create_ops_component(supervisor: Any) -> Optional[SystemdOps]:
    """Hook for Supervisor._build_ops. None when not run by systemd (no NOTIFY_SOCKET)."""
    notifier = SystemdNotifier()
    if not notifier.enabled:
        return None
    return SystemdOps(supervisor, supervisor.cfg.pipeline.heartbeat_timeout_s, notifier)
