"""Station fixtures for pipeline tests: part images, a station YAML, a daemon subprocess, and an
MQTT subscriber that records every result/plc/status message (real mosquitto, tiny bundle)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Optional

import cv2
import numpy as np
import paho.mqtt.client as paho
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from edge_inspector.publish.payload import camera_frame_id
from tests.helpers.contracts import TOPIC_SCHEMAS, schema_errors

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable


def write_parts(folder: Path, n: int, size: tuple[int, int] = (96, 128), defect_every: int = 3) -> list[Path]:
    """n mid-grey parts (score ≈ 0 on the tiny bundle); every ``defect_every``-th one has a white
    12×16 blotch at a known place (x 40..55, y 30..41), which the tiny bundle scores ≈ 1."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    h, w = size
    for i in range(n):
        img = np.full((h, w), 127, np.uint8)
        if defect_every and i % defect_every == defect_every - 1:
            img[30:42, 40:56] = 255
        p = folder / f"part_{i:04d}.png"
        cv2.imwrite(str(p), img)
        paths.append(p)
    return paths


def bundle_and_parts(tmp: Path, n_parts: int) -> tuple[Path, Path]:
    """A tiny model bundle in ``tmp/model`` and ``n_parts`` part images in ``tmp/images``."""
    from tests.helpers.tiny_bundle import make_tiny_bundle  # needs onnx (the train extra)

    images = tmp / "images"
    write_parts(images, n_parts)
    return make_tiny_bundle(tmp / "model"), images


def station_config(tmp: Path, port: int, model_dir: Path, images: Path, **sections: Any) -> dict:
    """A minimal station config dict; ``sections`` deep-merge over it (e.g. camera={"fps": 50})."""
    cfg: dict[str, Any] = {
        "station": {"line": "l1", "name": "st1"},
        "camera": {"type": "folder", "path": str(images), "fps": 50.0},
        "model": {"path": str(model_dir), "providers": ["cpu"], "intra_op_threads": 1, "warmup_runs": 1},
        "postprocess": {"min_defect_area_px": 4},
        "mqtt": {"host": "127.0.0.1", "port": port, "topic_prefix": "ei", "reconnect_min_s": 0.2,
                 "reconnect_max_s": 1.0, "health_interval_s": 1.0},
        "outbox": {"path": str(tmp / "state" / "outbox.sqlite")},
        "archive": {"enabled": False},
        "health": {"enabled": False, "port": 0},
        "logging": {"level": "INFO", "json_logs": True},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return path


def start_daemon(config: Path, *extra: str, log_path: Optional[Path] = None) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("NOTIFY_SOCKET", None)
    stderr = open(log_path, "ab") if log_path else subprocess.PIPE
    return subprocess.Popen(
        [PYTHON, "-m", "edge_inspector", "run", "--config", str(config), *extra],
        cwd=str(REPO), env=env, stdout=subprocess.PIPE, stderr=stderr,
    )


def run_to_end(config: Path, *extra: str, timeout: float = 60) -> None:
    """``edge-inspector run`` over a folder camera that does not loop: it stops after the last
    frame and must exit 0 (else its stderr's tail); killed if it does not end in ``timeout``."""
    proc = start_daemon(config, *extra)
    try:
        _, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            stop_daemon(proc, signal.SIGKILL)
    assert proc.returncode == 0, err.decode()[-2000:]


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("NOTIFY_SOCKET", None)
    return subprocess.run([PYTHON, "-m", "edge_inspector", *args], cwd=str(REPO), env=env,
                          capture_output=True, text=True, timeout=timeout)


def stop_daemon(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        # every thread's stack into the daemon's log (faulthandler on SIGUSR1), so the hang is diagnosable
        proc.send_signal(signal.SIGUSR1)
        time.sleep(1.0)
        raise
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


# Every station payload any test's Subscriber receives that breaks docs/schemas: checked after
# each test by the autouse fixture in tests/conftest.py.
CONTRACT_VIOLATIONS: list[str] = []


def check_contract(base: str, msg) -> None:
    """Validate a station's message by its topic; MQTT 5 user properties must match the body."""
    level = msg.topic[len(base) + 1:] if msg.topic.startswith(base + "/") else ""
    name = "reply" if level.startswith("reply/") else level
    if name not in TOPIC_SCHEMAS:
        return  # commands from the test itself, other stations' trees
    try:
        payload = json.loads(msg.payload)
    except ValueError as exc:
        CONTRACT_VIOLATIONS.append(f"{msg.topic}: not JSON ({exc})")
        return
    CONTRACT_VIOLATIONS.extend(f"{msg.topic}: {e}" for e in schema_errors(TOPIC_SCHEMAS[name], payload))
    user = dict(getattr(getattr(msg, "properties", None), "UserProperty", None) or [])
    if user and name != "reply" and user.get("schema") != str(payload.get("schema")):
        CONTRACT_VIOLATIONS.append(f"{msg.topic}: user property schema={user.get('schema')!r}, payload {payload.get('schema')!r}")


def frame_stem(result: dict) -> str:
    """The image file name (folder source) a result was made from: ``s12-part_0003-7`` → ``part_0003``."""
    return camera_frame_id(result["frame_id"]).rsplit("-", 1)[0]


class Subscriber:
    """Records every message under ``{prefix}/{line}/{station}/#``, reconnecting on its own."""

    def __init__(self, port: int, base: str = "ei/l1/st1", client_id: str = "test-mes", persistent: bool = False):
        """``persistent``: an MQTT 5 session that outlives disconnects and broker restarts (the
        broker keeps queueing QoS 1 results for us), as an MES subscriber should be set up."""
        self.base = base
        self.lock = threading.Lock()
        self.messages: dict[str, list[tuple[bytes, Any]]] = {}
        self.connected = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_disconnect = lambda *a: self.connected.clear()
        properties = None
        if persistent:
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties

            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = 600
        self.client.connect_async("127.0.0.1", port, clean_start=not persistent, properties=properties)
        self.client.loop_start()
        if not self.connected.wait(10):
            raise RuntimeError("test subscriber could not connect")

    def _on_connect(self, client, _u, _f, rc, _p):
        client.subscribe(self.base + "/#", qos=1)
        self.connected.set()

    def _on_message(self, _c, _u, msg):
        check_contract(self.base, msg)
        with self.lock:
            self.messages.setdefault(msg.topic.rsplit("/", 1)[-1], []).append((msg.payload, msg.properties))

    def payloads(self, kind: str) -> list[dict]:
        with self.lock:
            return [json.loads(p) for p, _ in self.messages.get(kind, [])]

    def raw(self, kind: str) -> list[tuple[bytes, Any]]:
        with self.lock:
            return list(self.messages.get(kind, []))

    def results_by_seq(self) -> dict[int, dict]:
        """Deduplicated on seq, as the contract tells subscribers to do."""
        return {r["seq"]: r for r in self.payloads("result")}

    def wait_for(self, predicate, timeout: float, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.05)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}")

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def assert_retained_offline(port: int) -> None:
    """A subscriber joining after the daemon stopped sees the retained status: offline."""
    late = Subscriber(port, client_id="late-joiner")
    try:
        late.wait_for(lambda: late.payloads("status"), 5, "retained status")
        assert late.payloads("status")[-1]["online"] is False
    finally:
        late.close()


def fatal_message(stderr: str) -> str:
    """The ``message`` of the daemon's last stderr line, the one that says why it stopped. Tests
    capture stderr (not a terminal), so JSON logs are on, as under systemd: that line must be a
    JSON ``run_failed`` event like every other line, or the journal's error recipe misses it."""
    last = stderr.strip().splitlines()[-1]
    record = json.loads(last)
    assert record.get("event") == "run_failed" and record.get("level") == "error", record
    return record["message"]
