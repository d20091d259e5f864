"""The daemon under a real NOTIFY_SOCKET, as systemd runs it.

1. ``edge-inspector run`` as a subprocess with NOTIFY_SOCKET + WATCHDOG_USEC: READY=1 after
   start-up, STATUS= lines, WATCHDOG=1 pings, /metrics and /healthz, a remote command over
   MQTT 5, NG frames archived with the reference in the result, STATUS=reloaded after SIGHUP,
   STOPPING=1 on SIGTERM.
2. The supervisor in-process with an inference engine that hangs on demand: WATCHDOG=1 stops
   and /healthz turns 503 while the inference stage is stalled, and both recover after it.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_inspector.config.models import Config
from tests.helpers.broker import free_port
from tests.helpers.notify_listener import NotifyListener
from tests.helpers.station import REPO, Subscriber, station_config, stop_daemon, write_config, write_parts
from tests.helpers.tiny_bundle import make_tiny_bundle

pytestmark = pytest.mark.mosquitto


def _http(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def _metric(text: str, line_prefix: str) -> float:
    for line in text.splitlines():
        if line.startswith(line_prefix + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{line_prefix} not in /metrics")


@pytest.fixture
def listener():
    lst = NotifyListener()
    yield lst
    lst.close()


@pytest.fixture
def model_dir(tmp_path):
    return make_tiny_bundle(tmp_path / "model", image_size=64, threshold=0.5)


def _command(port: int, topic: str, payload: dict) -> dict:
    """An MES-side MQTT 5 request/response round trip."""
    replies: "queue.Queue[paho.MQTTMessage]" = queue.Queue()
    ready = threading.Event()
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"mes-{uuid.uuid4().hex[:6]}", protocol=paho.MQTTv5)
    reply_topic = "ei/l1/st1/reply/test-" + uuid.uuid4().hex[:8]
    client.on_connect = lambda c, u, f, rc, p: c.subscribe(reply_topic, qos=1)
    client.on_subscribe = lambda *a: ready.set()
    client.on_message = lambda c, u, m: replies.put(m)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        assert ready.wait(10)
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = reply_topic
        props.CorrelationData = b"corr-42"
        client.publish(topic, json.dumps(payload), qos=1, properties=props).wait_for_publish(5)
        msg = replies.get(timeout=15)
        assert msg.properties.CorrelationData == b"corr-42"
        return json.loads(msg.payload)
    finally:
        client.loop_stop()
        client.disconnect()


def test_daemon_ready_status_watchdog_metrics_commands_archive(tmp_path, mosquitto, model_dir, listener):
    images = tmp_path / "images"
    write_parts(images, 6)  # parts 2 and 5 are NG
    health_port = free_port()
    cfg = station_config(
        tmp_path, mosquitto.port, model_dir, images,
        camera={"type": "folder", "path": str(images), "fps": 20.0, "loop": True},
        health={"enabled": True, "host": "127.0.0.1", "port": health_port},
        archive={"enabled": True, "path": str(tmp_path / "archive")},
    )
    config = write_config(tmp_path / "station.yaml", cfg)
    env = dict(os.environ, PYTHONUNBUFFERED="1", NOTIFY_SOCKET=listener.address, WATCHDOG_USEC="1000000")
    env.pop("WATCHDOG_PID", None)
    sub = Subscriber(mosquitto.port)
    proc = subprocess.Popen([sys.executable, "-m", "edge_inspector", "run", "--config", str(config)],
                            cwd=str(REPO), env=env, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "daemon.log", "wb"))
    try:
        ready = listener.wait_for("READY", timeout_s=90)
        assert ready["READY"] == "1" and ready["STATUS"].startswith("ready")
        listener.drain(1.6)  # pings every WATCHDOG_USEC/2 = 0.5 s
        assert listener.count("WATCHDOG") >= 2
        status = [m["STATUS"] for m in listener.messages if "WATCHDOG" in m and "STATUS" in m][-1]
        assert "fps=" in status and "mqtt=connected" in status and "outbox=" in status, status

        code, body = _http(f"http://127.0.0.1:{health_port}/healthz")
        assert code == 200 and json.loads(body)["status"] == "ok", body
        _, metrics = _http(f"http://127.0.0.1:{health_port}/metrics")
        assert _metric(metrics, "edge_inspector_frames_in_total") > 0
        assert _metric(metrics, 'edge_inspector_verdicts_total{verdict="NG"}') > 0
        assert 'edge_inspector_model_info{name="tiny-default"' in metrics

        reply = _command(mosquitto.port, "ei/l1/st1/cmd/set-threshold", {"value": 0.9})
        assert reply["ok"] is True, reply
        reply = _command(mosquitto.port, "ei/l1/st1/cmd/status", {})
        assert reply["ok"] is True and reply["result"]["threshold"] == 0.9

        sub.wait_for(lambda: any(r.get("archive") for r in sub.payloads("result")), 10, "an archived NG result")
        ng = next(r for r in sub.payloads("result") if r.get("archive"))
        assert ng["verdict"] == "NG"
        deadline = time.monotonic() + 5
        while not (tmp_path / "archive" / ng["archive"]).is_file() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (tmp_path / "archive" / ng["archive"]).is_file()

        proc.send_signal(signal.SIGHUP)  # what `systemctl reload` (ExecReload=kill -HUP) does
        deadline = time.monotonic() + 15
        while not any(m.get("STATUS", "").startswith("reloaded") for m in listener.messages):
            assert time.monotonic() < deadline, "no STATUS=reloaded... after SIGHUP"
            listener.drain(0.1)

        assert stop_daemon(proc) == 0
        listener.drain(0.3)
        assert listener.count("STOPPING") == 1
    finally:
        stop_daemon(proc)
        sub.close()
        print((tmp_path / "daemon.log").read_text()[-3000:])


class _GatedEngine:
    """The real onnxruntime engine, except that ``gate.clear()`` makes inference hang."""

    def __init__(self, engine):
        self._engine = engine
        self.gate = threading.Event()
        self.gate.set()

    def infer(self, batch):
        self.gate.wait()
        return self._engine.infer(batch)

    def infer_one(self, tensor):
        self.gate.wait()
        return self._engine.infer_one(tensor)

    def __getattr__(self, name):
        return getattr(self._engine, name)


def test_watchdog_stops_and_healthz_fails_while_inference_is_stalled(tmp_path, mosquitto, model_dir, listener, monkeypatch):
    from edge_inspector.pipeline.runtime import open_engine
    from edge_inspector.supervisor import Supervisor

    images = tmp_path / "images"
    write_parts(images, 4)
    health_port = free_port()
    data = station_config(
        tmp_path, mosquitto.port, model_dir, images,
        camera={"type": "folder", "path": str(images), "fps": 20.0, "loop": True},
        health={"enabled": True, "host": "127.0.0.1", "port": health_port},
        pipeline={"heartbeat_timeout_s": 1.0, "shutdown_timeout_s": 3.0},
    )
    monkeypatch.setenv("NOTIFY_SOCKET", listener.address)
    monkeypatch.setenv("WATCHDOG_USEC", "400000")  # a ping every 0.2 s
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    engines = []

    def engine_factory(cfg, bundle):
        engines.append(_GatedEngine(open_engine(cfg, bundle)))
        return engines[-1]

    sup = Supervisor(Config.model_validate(data), engine_factory=engine_factory)
    sup.start()
    runner = threading.Thread(target=sup.run, name="test-supervisor")
    runner.start()
    try:
        listener.wait_for("READY", timeout_s=30)
        listener.drain(1.0)
        assert listener.count("WATCHDOG") >= 3
        assert _http(f"http://127.0.0.1:{health_port}/healthz")[0] == 200

        engines[0].gate.clear()  # inference hangs inside session.run
        time.sleep(1.5)  # > heartbeat_timeout_s: the stall is now visible
        listener.drain(0.1)
        before = listener.count("WATCHDOG")
        listener.drain(1.0)
        assert listener.count("WATCHDOG") == before, "no WATCHDOG=1 while inference is stalled"
        assert any("STALLED" in m.get("STATUS", "") and "inference" in m["STATUS"] for m in listener.messages)
        code, body = _http(f"http://127.0.0.1:{health_port}/healthz")
        assert code == 503 and "inference" in json.loads(body)["stalled"], body

        engines[0].gate.set()
        listener.drain(1.0)
        assert listener.count("WATCHDOG") > before, "pings resume once the stage beats again"
        assert _http(f"http://127.0.0.1:{health_port}/healthz")[0] == 200
    finally:
        engines[0].gate.set() if engines else None
        sup.request_stop("test")
        runner.join(30)
    assert not runner.is_alive()
