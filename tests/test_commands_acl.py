"""The shipped broker config (deploy/mosquitto) really enforces who may publish commands.

Runs mosquitto with deploy/mosquitto/edge-inspector.conf and acl.example (paths and ports
rewritten to a temp dir), TLS with a throw-away CA, and password accounts for a station and MES.
"""

from __future__ import annotations

import os
import queue
import shutil
import subprocess
import threading
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.helpers.broker import Mosquitto, free_port, mosquitto_binary

REPO = Path(__file__).resolve().parents[1]
P = "edge-inspector/line2/st3"
PASSWORDS = {"edge-inspector-line2-st3": "station-secret", "mes": "mes-secret"}

pytestmark = pytest.mark.mosquitto


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture
def broker(tmp_path):
    if not mosquitto_binary():
        pytest.skip("mosquitto is not installed (apt-get install -y mosquitto)")
    for tool in ("openssl", "mosquitto_passwd"):
        if not shutil.which(tool):
            pytest.skip(f"{tool} not installed")
    etc = tmp_path / "etc"
    (etc / "certs").mkdir(parents=True)
    certs = etc / "certs"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
             "-keyout", "ca.key", "-out", "ca.crt", cwd=certs)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-keyout", "broker.key", "-out", "broker.csr", cwd=certs)
    (certs / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", "broker.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2",
             "-extfile", "san.ext", "-out", "broker.crt", cwd=certs)
    passwd = etc / "passwd"
    for i, (user, password) in enumerate(PASSWORDS.items()):
        subprocess.run(["mosquitto_passwd", *(["-c"] if i == 0 else []), "-b", str(passwd), user, password], check=True, timeout=30)
    shutil.copy(REPO / "deploy" / "mosquitto" / "acl.example", etc / "acl")
    os.chmod(passwd, 0o600)

    server = Mosquitto(tmp_path / "broker")
    tls_port = free_port()
    conf = (REPO / "deploy" / "mosquitto" / "edge-inspector.conf").read_text()
    conf = (
        conf.replace("/etc/mosquitto/", f"{etc}/")
        .replace("/var/lib/mosquitto/", f"{server.workdir}/")
        .replace("listener 8883", f"listener {tls_port} 127.0.0.1")
        .replace("listener 1883 127.0.0.1", f"listener {server.port} 127.0.0.1")
        .replace("log_dest syslog", f"log_dest file {server.workdir}/mosquitto.log")
    )
    if os.geteuid() == 0:
        conf = "user root\n" + conf
    server.conf.write_text(conf)
    server.start()
    yield tls_port, certs / "ca.crt"
    server.stop()


class _Client:
    def __init__(self, port: int, ca: Path, user: str | None, password: str | None = None):
        self.messages: "queue.Queue[paho.MQTTMessage]" = queue.Queue()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"test-{user}", protocol=paho.MQTTv5)
        self.client.tls_set(ca_certs=str(ca))
        if user:
            self.client.username_pw_set(user, password)
        self.connack = queue.Queue()
        self.client.on_connect = lambda c, u, f, rc, p: self.connack.put(rc)
        self.client.on_message = lambda c, u, m: self.messages.put(m)
        self.client.connect("localhost", port)
        self.client.loop_start()
        self.reason = self.connack.get(timeout=10)

    def subscribe(self, topic: str) -> None:
        done = threading.Event()
        self.client.on_subscribe = lambda *a: done.set()
        self.client.subscribe(topic, qos=1)
        assert done.wait(10)

    def publish(self, topic: str, payload: bytes = b"{}") -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(5)

    def topics(self, wait_s: float = 1.0) -> list[str]:
        out = []
        try:
            while True:
                out.append(self.messages.get(timeout=wait_s).topic)
        except queue.Empty:
            return out

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def test_only_mes_may_command_and_stations_stay_in_their_tree(broker):
    port, ca = broker
    anonymous = _Client(port, ca, None)
    assert anonymous.reason.is_failure, "anonymous clients must be refused"
    anonymous.close()

    station = _Client(port, ca, "edge-inspector-line2-st3", PASSWORDS["edge-inspector-line2-st3"])
    mes = _Client(port, ca, "mes", PASSWORDS["mes"])
    try:
        assert not station.reason.is_failure and not mes.reason.is_failure
        station.subscribe(f"{P}/cmd/+")
        mes.subscribe("edge-inspector/#")

        mes.publish(f"{P}/cmd/status")  # allowed: MES commands the station
        station.publish(f"{P}/result")  # allowed: the station's own results
        station.publish(f"{P}/reply/status")  # allowed: command replies
        station.publish(f"{P}/cmd/reload")  # refused: a station may not command (itself or others)
        station.publish("edge-inspector/line2/st4/result")  # refused: another station's tree

        assert station.topics() == [f"{P}/cmd/status"]
        seen = mes.topics()
        assert f"{P}/result" in seen and f"{P}/reply/status" in seen
        assert f"{P}/cmd/reload" not in seen and "edge-inspector/line2/st4/result" not in seen
    finally:
        station.close()
        mes.close()
