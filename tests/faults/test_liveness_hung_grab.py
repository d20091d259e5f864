"""Class 2, liveness from work done: a driver call that hangs in ``camera.trigger.mode: hardware``
turns /healthz 503, P/health unhealthy and stops the systemd watchdog pings — while a triggered
line that is merely idle (no parts) stays healthy. The supervisor's own loop (reloads, stall
reports, P/health) has a heartbeat too: a hung loop is seen the same way, never a station that
reloads nothing and reports "ok"."""

from __future__ import annotations

import signal
import time

import pytest

from tests.helpers.broker import free_port
from tests.helpers.faults import assert_contiguous, healthz, start_daemon, wait_until
from tests.helpers.notify_listener import NotifyListener
from tests.helpers.station import Subscriber, station_config, stop_daemon, write_config, write_parts
from tests.helpers.tiny_bundle import make_tiny_bundle

TIMEOUT_S = 1.5  # pipeline.heartbeat_timeout_s for these tests


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny_bundle(tmp_path_factory.mktemp("model") / "m")


def _config(tmp_path, port, model_dir, health_port, trigger):
    images = tmp_path / "images"
    write_parts(images, 6)
    cfg = station_config(tmp_path, port, model_dir, images,
                         camera={"fps": 10.0, "loop": True, "trigger": trigger},
                         pipeline={"heartbeat_timeout_s": TIMEOUT_S, "shutdown_timeout_s": 2.0},
                         health={"enabled": True, "port": health_port})
    return write_config(tmp_path / "station.yaml", cfg)


def _start_watched(config, faults, log, notify):
    """The daemon under a watchdog (NOTIFY_SOCKET, WATCHDOG_USEC), pinging once READY."""
    proc = start_daemon(config, faults=faults, log_path=log,
                        env={"NOTIFY_SOCKET": notify.address, "WATCHDOG_USEC": "400000"})
    notify.wait_for("READY", 30)
    notify.wait_for("WATCHDOG", 10)  # pinged while working
    return proc


def _stalled_body(health_port, proc, log, what):
    code, body = wait_until(lambda: (lambda r: r if r[0] == 503 else None)(healthz(health_port)), 15,
                            f"/healthz 503 after {what}", proc, log)
    return body


def _sent_after_stall(notify):
    """What the daemon sends to NOTIFY_SOCKET once the stall was seen, over 1.5 s (almost four
    WATCHDOG_USEC periods); what was sent before is drained and dropped."""
    notify.drain(0.3)
    notify.messages.clear()
    notify.drain(1.5)
    return notify.messages


def test_hung_grab_in_hardware_trigger_mode_is_seen_everywhere(tmp_path, mosquitto, model_dir):
    health_port = free_port()
    config = _config(tmp_path, mosquitto.port, model_dir, health_port, {"mode": "hardware"})
    sub = Subscriber(mosquitto.port)
    notify = NotifyListener()
    log = tmp_path / "daemon.log"
    proc = _start_watched(config, "camera.grab:hang:4", log, notify)
    try:
        body = _stalled_body(health_port, proc, log, "the hung grab")
        assert body["status"] == "stalled" and body["stalled"] == ["acquisition"], body
        # P/health says the same (liveness section), not "all fine"
        wait_until(lambda: any(h.get("liveness", {}).get("stalled") == ["acquisition"] for h in sub.payloads("health")),
                   5, "P/health reporting the stalled acquisition", proc, log)
        # the watchdog stops being fed: no WATCHDOG=1 any more, a STALLED status instead
        messages = _sent_after_stall(notify)
        assert not any("WATCHDOG" in m for m in messages), messages
        assert any(m.get("STATUS", "").startswith("STALLED: acquisition") for m in messages), messages
        assert len(sub.results_by_seq()) == 4  # the frames grabbed before the hang, nothing invented
        assert_contiguous(sub.results_by_seq())
    finally:
        sub.close()
        notify.close()
        rc = stop_daemon(proc, signal.SIGTERM, timeout=20)
    assert rc == 1  # a hung thread cannot drain: unclean stop, said so by the exit code


def test_idle_triggered_line_stays_healthy(tmp_path, mosquitto, model_dir):
    # Software trigger from commands, none sent: the camera waits for parts far longer than the
    # heartbeat timeout. Its wait loop beats, so the station is healthy, not "stalled".
    health_port = free_port()
    config = _config(tmp_path, mosquitto.port, model_dir, health_port, {"mode": "software", "software_source": "command"})
    log = tmp_path / "daemon.log"
    proc = start_daemon(config, log_path=log)
    try:
        wait_until(lambda: healthz(health_port)[0] == 200, 30, "/healthz 200 after start", proc, log)
        end = time.monotonic() + 3 * TIMEOUT_S
        while time.monotonic() < end:
            code, body = healthz(health_port)
            assert code == 200, body
            time.sleep(0.3)
    finally:
        rc = stop_daemon(proc)
    assert rc == 0, log.read_text()[-2000:]


def test_hung_supervisor_loop_is_stalled_on_healthz_and_starves_the_watchdog(tmp_path, mosquitto, model_dir):
    health_port = free_port()
    config = _config(tmp_path, mosquitto.port, model_dir, health_port, {"mode": "free_run"})
    sub = Subscriber(mosquitto.port)
    notify = NotifyListener()
    log = tmp_path / "daemon.log"
    # ~10 loop passes (0.2 s each) of normal running first, then the loop hangs for good
    proc = _start_watched(config, "supervisor.loop:hang:10", log, notify)
    try:
        body = _stalled_body(health_port, proc, log, "the supervisor loop hung")
        assert body["status"] == "stalled" and body["stalled"] == ["supervisor"], body
        messages = _sent_after_stall(notify)
        assert not any("WATCHDOG" in m for m in messages), messages
        # the stages go on inspecting meanwhile: results still reach the MES
        before = len(sub.results_by_seq())
        wait_until(lambda: len(sub.results_by_seq()) > before, 10, "results while the loop hangs", proc, log)
    finally:
        sub.close()
        notify.close()
        # SIGTERM is served by the hung loop: systemd's TimeoutStopSec ends in SIGKILL, as here
        stop_daemon(proc, signal.SIGKILL, timeout=10)
