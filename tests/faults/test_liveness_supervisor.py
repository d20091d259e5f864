"""Class 2, liveness from work done: the supervisor's own loop (reloads, stall reports, P/health)
has a heartbeat like every stage, so a hung loop turns /healthz 503 and stops the systemd
watchdog pings instead of leaving a station that reloads nothing and reports "ok"."""

from __future__ import annotations

import signal

import pytest

from tests.helpers.broker import free_port
from tests.helpers.faults import healthz, start_daemon, wait_until
from tests.helpers.notify_listener import NotifyListener
from tests.helpers.station import Subscriber, station_config, stop_daemon, write_config, write_parts
from tests.helpers.tiny_bundle import make_tiny_bundle

TIMEOUT_S = 1.5  # pipeline.heartbeat_timeout_s for this test


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny_bundle(tmp_path_factory.mktemp("model") / "m")


def test_hung_supervisor_loop_is_stalled_on_healthz_and_starves_the_watchdog(tmp_path, mosquitto, model_dir):
    health_port = free_port()
    images = tmp_path / "images"
    write_parts(images, 6)
    cfg = station_config(tmp_path, mosquitto.port, model_dir, images,
                         camera={"fps": 5.0, "loop": True},
                         pipeline={"heartbeat_timeout_s": TIMEOUT_S, "shutdown_timeout_s": 2.0},
                         health={"enabled": True, "port": health_port})
    config = write_config(tmp_path / "station.yaml", cfg)
    sub = Subscriber(mosquitto.port)
    notify = NotifyListener()
    log = tmp_path / "daemon.log"
    # ~10 loop passes (0.2 s each) of normal running first, then the loop hangs for good
    proc = start_daemon(config, faults="supervisor.loop:hang:10", log_path=log,
                        env={"NOTIFY_SOCKET": notify.address, "WATCHDOG_USEC": "400000"})
    try:
        notify.wait_for("READY", 30)
        notify.wait_for("WATCHDOG", 10)
        code, body = wait_until(lambda: (lambda r: r if r[0] == 503 else None)(healthz(health_port)), 15,
                                "/healthz 503 after the supervisor loop hung", proc, log)
        assert body["status"] == "stalled" and body["stalled"] == ["supervisor"], body
        notify.drain(0.3)
        notify.messages.clear()
        notify.drain(1.5)
        assert not any("WATCHDOG" in m for m in notify.messages), notify.messages
        # the stages go on inspecting meanwhile: results still reach the MES
        before = len(sub.results_by_seq())
        wait_until(lambda: len(sub.results_by_seq()) > before, 10, "results while the loop hangs", proc, log)
    finally:
        sub.close()
        notify.close()
        # SIGTERM is handled by the hung loop: systemd's TimeoutStopSec ends in SIGKILL, as here
        stop_daemon(proc, signal.SIGKILL, timeout=10)
