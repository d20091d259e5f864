"""Broker frozen (SIGSTOP), broker killed, daemon SIGKILLed: health tells the truth at each step
(a frozen link is a delivery stall, an outage is a reported state), and MES ends up with every
seq, contiguous, across all of it."""

from __future__ import annotations

import signal
import time

import pytest

from tests.helpers.broker import free_port
from tests.helpers.faults import assert_contiguous, healthz, log_events, start_daemon, wait_until
from tests.helpers.station import Subscriber, station_config, stop_daemon, write_config, write_parts
from tests.helpers.tiny_bundle import make_tiny_bundle


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny_bundle(tmp_path_factory.mktemp("model") / "m")


def _status(port):
    code, body = healthz(port)
    return code, body


def test_broker_freeze_kill_and_daemon_sigkill(tmp_path, mosquitto, model_dir):
    health_port = free_port()
    images = tmp_path / "images"
    write_parts(images, 8)
    cfg = station_config(tmp_path, mosquitto.port, model_dir, images,
                         camera={"fps": 10.0, "loop": True},
                         mqtt={"keepalive_s": 5},
                         pipeline={"heartbeat_timeout_s": 1.5, "shutdown_timeout_s": 3.0},
                         health={"enabled": True, "port": health_port})
    config = write_config(tmp_path / "station.yaml", cfg)
    sub = Subscriber(mosquitto.port, persistent=True)
    log1, log2 = tmp_path / "first.log", tmp_path / "second.log"
    first = start_daemon(config, log_path=log1)
    second = None
    try:
        wait_until(lambda: healthz(health_port)[0] == 200 and len(sub.results_by_seq()) >= 5, 30,
                   "healthy and delivering", first, log1)

        # 1. frozen broker: the TCP link looks up, but no PUBACK comes back → delivery stalls
        mosquitto.proc.send_signal(signal.SIGSTOP)
        try:
            code, body = wait_until(lambda: (lambda r: r if r[0] == 503 else None)(healthz(health_port)), 10,
                                    "/healthz 503 while the broker is frozen", first, log1)
            assert "delivery" in body["stalled"], body
        finally:
            mosquitto.proc.send_signal(signal.SIGCONT)
        wait_until(lambda: healthz(health_port)[0] == 200, 20, "healthy again after the broker thawed", first, log1)

        # 2. broker killed: an outage is a state (results wait in the outbox), not a stall
        mosquitto.stop()
        wait_until(lambda: any(e.get("event") == "mqtt_disconnected" for e in log_events(log1)), 15,
                   "the daemon noticing the outage", first, log1)
        for _ in range(8):
            code, body = healthz(health_port)
            assert code == 200, body
            time.sleep(0.25)
        mosquitto.start()
        before = len(sub.results_by_seq())
        wait_until(lambda: len(sub.results_by_seq()) > before + 5, 30, "delivery after the outage", first, log1)

        # 3. daemon SIGKILLed mid-run; the restart (what systemd does) continues the seq
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        second = start_daemon(config, log_path=log2)
        seen = len(sub.results_by_seq())
        wait_until(lambda: len(sub.results_by_seq()) > seen + 5, 30, "results after the restart", second, log2)
        assert stop_daemon(second) == 0, log2.read_text()[-2000:]
        last = log_events(log2, "stopped")[-1]
        assert last["undelivered_in_outbox"] == 0 and last["verdicts_lost"] == 0
        wait_until(lambda: max(sub.results_by_seq()) >= last_outbox_seq(tmp_path), 10, "the last result")
        assert_contiguous(sub.results_by_seq())
        assert max(sub.results_by_seq()) == last_outbox_seq(tmp_path)
    finally:
        sub.close()
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                stop_daemon(proc, signal.SIGKILL)


def last_outbox_seq(tmp_path) -> int:
    import sqlite3

    with sqlite3.connect(tmp_path / "state" / "outbox.sqlite") as db:
        return db.execute("SELECT value FROM meta WHERE key='last_seq'").fetchone()[0]
