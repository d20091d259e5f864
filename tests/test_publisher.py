"""MqttPublisher against a real mosquitto: contract fields, status + Last Will, broker outages,
publisher killed during an outage, PLC messages never replayed, resubscribe on reconnect."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

jsonschema = pytest.importorskip("jsonschema")
import paho.mqtt.client as paho  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402
from paho.mqtt.packettypes import PacketTypes  # noqa: E402
from paho.mqtt.properties import Properties  # noqa: E402

from edge_inspector.config.models import Config  # noqa: E402
from edge_inspector.errors import ConfigError  # noqa: E402
from edge_inspector.postprocess.verdict import Defect, Verdict  # noqa: E402
from edge_inspector.publish import MqttPublisher, Outbox, parse_plc, parse_result, read_password  # noqa: E402
from tests.helpers.contracts import validator  # noqa: E402

pytestmark = pytest.mark.mosquitto

REPO = Path(__file__).resolve().parents[1]
MODEL = {"name": "bottle-knn", "sha256": "cd" * 32}


_validator = validator  # tests/helpers/contracts.py


def _config(broker, tmp_path: Path, protocol: str = "5", **mqtt) -> Config:
    settings = dict(host="127.0.0.1", port=broker.port, protocol=protocol, reconnect_min_s=0.1,
                    reconnect_max_s=0.5, keepalive_s=5, plc_expiry_s=5)
    settings.update(mqtt)
    return Config.model_validate({
        "station": {"line": "L1", "name": "S1"},
        "mqtt": settings,
        "outbox": {"path": str(tmp_path / "outbox.sqlite")},
    })


def _verdict(i: int, kind: str = "OK") -> Verdict:
    defects = [] if kind != "NG" else [Defect(bbox=(5, 6, 7, 8), centroid=(8.4, 9.6), area_px=40, score=0.9)]
    return Verdict(frame_id=f"frame-{i}", verdict=kind, score=None if kind == "ERROR" else 0.25 + (kind == "NG"),
                   threshold=0.5, ts_wall=time.time(), ts_grab=time.monotonic(), defects=defects,
                   error="camera timeout" if kind == "ERROR" else None)


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class Subscriber:
    """An MES-like subscriber: persistent MQTT 5 session (queued QoS 1 messages survive its own
    disconnection and a broker restart), dedupe on seq."""

    def __init__(self, port: int, topic_base: str, client_id: str = "mes-test", persistent: bool = True):
        self.messages: list[paho.MQTTMessage] = []
        self.lock = threading.Lock()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
        self.client.reconnect_delay_set(0.1, 0.5)
        self.topic_base = topic_base
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(f"{topic_base}/#", qos=1)
        self.client.on_message = self._on_message
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 300 if persistent else 0
        self.client.connect("127.0.0.1", port, keepalive=5, clean_start=not persistent, properties=props)
        self.client.loop_start()
        wait_for(self.client.is_connected, 5, "subscriber connection")

    def _on_message(self, _c, _u, msg):
        with self.lock:
            self.messages.append(msg)

    def on(self, name: str) -> list[paho.MQTTMessage]:
        with self.lock:
            return [m for m in self.messages if m.topic == f"{self.topic_base}/{name}"]

    def results(self) -> list[dict]:
        return [parse_result(m.payload) for m in self.on("result")]

    def result_seqs_first_seen(self) -> list[int]:
        seen, order = set(), []
        for r in self.results():
            if r["seq"] not in seen:
                seen.add(r["seq"])
                order.append(r["seq"])
        return order

    def statuses(self) -> list[dict]:
        return [json.loads(m.payload) for m in self.on("status")]

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def subscriber_factory(mosquitto):
    made: list[Subscriber] = []

    def make(**kw) -> Subscriber:
        sub = Subscriber(mosquitto.port, "edge-inspector/L1/S1", **kw)
        made.append(sub)
        return sub

    yield make
    for sub in made:
        sub.close()


# --------------------------------------------------------------------------------- subprocess
DRIVER = r"""
import json, os, sys, time
from edge_inspector.config.models import Config
from edge_inspector.postprocess.verdict import Verdict
from edge_inspector.logging import setup_logging
from edge_inspector.publish import MqttPublisher, Outbox
setup_logging("INFO", json_logs=True)  # logs to stderr; stdout carries the replies
cfg = Config.model_validate(json.loads(sys.argv[1]))
outbox = Outbox(cfg.outbox.path)
pub = MqttPublisher(cfg, outbox, {"name": "bottle-knn", "sha256": "cd" * 32})
pub.start()
def say(**kw):
    print(json.dumps(kw), flush=True)
say(started=True, last_seq=outbox.last_seq, depth=outbox.depth())
n = 0
for line in sys.stdin:
    cmd, *args = line.split()
    if cmd == "wait_connected":
        deadline = time.monotonic() + float(args[0])
        while not pub.connected and time.monotonic() < deadline:
            time.sleep(0.02)
        say(connected=pub.connected)
    elif cmd == "publish":
        seqs = []
        for _ in range(int(args[0])):
            n += 1
            seqs.append(pub.publish_verdict(Verdict(frame_id=f"pid{os.getpid()}-{n}", verdict="OK", score=0.1,
                                                    threshold=0.5, ts_wall=time.time(), ts_grab=0.0)))
        say(seqs=seqs)
    elif cmd == "flush":
        say(flushed=pub.flush(float(args[0])), depth=outbox.depth(), stats=pub.stats)
    elif cmd == "stop":
        pub.stop(5)
        outbox.close()
        say(stopped=True)
        break
"""


class PublisherProcess:
    def __init__(self, cfg: Config, workdir: Path):
        script = workdir / "publisher_driver.py"
        script.write_text(DRIVER)
        self.stderr = open(workdir / f"publisher-{time.monotonic_ns()}.log", "w")
        env = dict(os.environ, PYTHONPATH=str(REPO))
        self.proc = subprocess.Popen([sys.executable, str(script), cfg.model_dump_json()], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.stderr, text=True, env=env, cwd=str(REPO))
        self.lines: "queue.Queue[str]" = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.hello = self.reply(timeout=20)

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line)

    def reply(self, timeout: float = 10) -> dict:
        try:
            return json.loads(self.lines.get(timeout=timeout))
        except queue.Empty:
            raise AssertionError(f"publisher process silent for {timeout} s; log: {self.stderr.name}") from None

    def ask(self, command: str, timeout: float = 10) -> dict:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.reply(timeout)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(5)
        self.stderr.close()


@pytest.fixture
def publisher_processes():
    procs: list[PublisherProcess] = []
    yield procs
    for p in procs:
        p.kill()


# --------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_every_contract_field_arrives_and_validates(mosquitto, tmp_path, subscriber_factory, protocol):
    sub = subscriber_factory()
    cfg = _config(mosquitto, tmp_path, protocol=protocol)
    outbox = Outbox(cfg.outbox.path)
    pub = MqttPublisher(cfg, outbox, MODEL)
    pub.start()
    try:
        wait_for(lambda: pub.connected, 5, "publisher connection")
        swapped = {"name": "bottle-knn-v2", "sha256": "ef" * 32}  # hot swap: the verdict names its model
        sent = [_verdict(0, "NG"), _verdict(1, "OK"), _verdict(2, "ERROR"), _verdict(3, "OK")]
        sent[3].model = swapped
        seqs = [pub.publish_verdict(v) for v in sent]
        assert seqs == [1, 2, 3, 4]
        wait_for(lambda: len(sub.on("result")) >= 4 and len(sub.on("plc")) >= 4, 5, "4 results and 4 PLC messages")
        assert pub.flush(5) and outbox.depth() == 0

        results = {r["seq"]: r for r in sub.results()}
        for seq, verdict in zip(seqs, sent):
            r = results[seq]
            _validator("result").validate(r)
            assert r["frame_id"] == f"s{outbox.session}-{verdict.frame_id}" and r["verdict"] == verdict.verdict
            assert r["station"] == {"line": "L1", "name": "S1"}
            assert r["model"] == (swapped if seq == 4 else MODEL)
            assert r["ts"].endswith("Z") and r["threshold"] == (None if verdict.verdict == "ERROR" else 0.5)
        for m in sub.on("result") + sub.on("plc"):  # MQTT 5: routable without parsing the JSON
            props = dict(getattr(m.properties, "UserProperty", None) or [])
            if protocol == "5":
                assert m.properties.ContentType == "application/json"
                assert props == {"schema": str(json.loads(m.payload)["schema"]), "station": "L1/S1"}
            else:
                assert not props
        assert results[1]["defects"] == [{"bbox": [5, 6, 7, 8], "centroid": [8.4, 9.6], "area_px": 40, "score": 0.9}]
        assert results[3]["error"] == "camera timeout" and results[3]["score"] is None

        plcs = {}
        for m in sub.on("plc"):
            plc = parse_plc(m.payload)
            _validator("plc").validate(plc)
            plcs[plc["seq"]] = plc
            assert m.retain is False
            expiry = getattr(m.properties, "MessageExpiryInterval", None)
            # MQTT 5: broker forwards the remaining lifetime; 3.1.1 has no expiry at all
            assert (1 <= expiry <= 5) if protocol == "5" else expiry is None
        assert plcs[1] == {"schema": 2, "seq": 1, "res": 2, "score_milli": 1250, "n_def": 1, "x0": 8, "y0": 10, "part_ref": 0}
        assert plcs[2]["res"] == 1 and plcs[3]["res"] == 3

        status = [s for s in sub.statuses() if s["online"]]
        assert status, "no online status"
        _validator("status").validate(status[-1])
        assert status[-1]["model"] == MODEL and status[-1]["mqtt"]["protocol"] == protocol

        pub.set_status(camera="reconnecting")
        wait_for(lambda: any(s.get("camera") == "reconnecting" for s in sub.statuses()), 5, "status update")
        assert pub.publish_health({"frames": 3})
        wait_for(lambda: sub.on("health"), 5, "health message")
        health = json.loads(sub.on("health")[-1].payload)
        _validator("health").validate(health)
        assert health["mqtt"]["acked"] == 4 and health["outbox"]["last_seq"] == 4

        assert pub.publish_reply(pub.topic("reply/status"), b'{"ok": true}', b"corr-1")
        wait_for(lambda: sub.on("reply/status"), 5, "command reply")
        reply = sub.on("reply/status")[-1]
        if protocol == "5":
            assert reply.properties.CorrelationData == b"corr-1"
    finally:
        pub.stop(5)
        outbox.close()
    assert pub.stats["acked"] == 4 and pub.stats["plc_published"] == 4

    # Retained offline status after a clean stop, seen by a subscriber that connects later.
    late = subscriber_factory(client_id="late", persistent=False)
    wait_for(lambda: late.on("status"), 5, "retained status")
    msg = late.on("status")[-1]
    assert msg.retain and json.loads(msg.payload)["online"] is False and json.loads(msg.payload)["reason"] == "stopped"


def test_last_will_marks_station_offline_when_process_is_killed(mosquitto, tmp_path, subscriber_factory,
                                                                publisher_processes):
    cfg = _config(mosquitto, tmp_path)
    proc = PublisherProcess(cfg, tmp_path)
    publisher_processes.append(proc)
    assert proc.ask("wait_connected 10")["connected"]
    late = subscriber_factory(client_id="watcher", persistent=False)
    wait_for(lambda: any(s["online"] for s in late.statuses()), 5, "retained online status")
    assert late.on("status")[0].retain  # a subscriber that joins later still learns the state

    proc.kill()
    wait_for(lambda: any(not s["online"] for s in late.statuses()), 5, "Last Will")
    will = [s for s in late.statuses() if not s["online"]][-1]
    _validator("status").validate(will)
    assert will["reason"] == "connection_lost" and will["station"] == {"line": "L1", "name": "S1"}
    birth = [s for s in late.statuses() if s["online"]][-1]
    assert will["session"] == birth["session"] >= 1  # the will names the birth it ends
    will_message = [m for m in late.on("status") if not json.loads(m.payload)["online"]][-1]
    assert dict(will_message.properties.UserProperty) == {"schema": "edge-inspector.status/1", "station": "L1/S1"}


def test_broker_outage_loses_nothing_and_plc_is_not_replayed(mosquitto, tmp_path, subscriber_factory):
    sub = subscriber_factory()
    cfg = _config(mosquitto, tmp_path)
    outbox = Outbox(cfg.outbox.path)
    commands: list[bytes] = []
    pub = MqttPublisher(cfg, outbox, MODEL)
    pub.subscribe(pub.topic("cmd"), lambda msg: commands.append(msg.payload))
    pub.start()
    try:
        wait_for(lambda: pub.connected, 5, "publisher connection")
        before = [pub.publish_verdict(_verdict(i)) for i in range(10)]
        assert pub.flush(5)

        mosquitto.stop()
        wait_for(lambda: not pub.connected, 5, "publisher to notice the outage")
        during = []
        t_end = time.monotonic() + 3.0  # several seconds of production with no broker
        while time.monotonic() < t_end:
            during.append(pub.publish_verdict(_verdict(100 + len(during), "NG")))
            time.sleep(0.1)
        assert outbox.depth() == len(during)
        mosquitto.start()

        after = [pub.publish_verdict(_verdict(1000 + i)) for i in range(10)]
        assert pub.flush(10), f"outbox not drained, depth {outbox.depth()}"
        everything = before + during + after
        assert everything == list(range(1, len(everything) + 1))
        wait_for(lambda: set(sub.result_seqs_first_seen()) >= set(everything), 10, "every result at the subscriber")
        first_seen = sub.result_seqs_first_seen()
        assert first_seen == everything  # no gap, strictly increasing once duplicates are removed
        assert pub.replayed >= len(during) and pub.stats["reconnects"] >= 1

        plc_seqs = {parse_plc(m.payload)["seq"] for m in sub.on("plc")}
        assert plc_seqs.isdisjoint(during), "stale PLC messages were replayed after the outage"
        assert set(before) <= plc_seqs and pub.stats["plc_skipped"] >= len(during)

        # Resubscribed after the reconnect (the publisher uses a clean session).
        wait_for(lambda: pub.connected, 5, "publisher reconnection")
        # SUBSCRIBE goes out right after CONNACK; until the broker has processed it a command is
        # not routed to us, so repeat the ping (a fixed sleep is flaky on a loaded CI box)
        deadline = time.monotonic() + 10
        while not commands and time.monotonic() < deadline:
            sub.client.publish(pub.topic("cmd"), b"ping", qos=1)
            time.sleep(0.3)
        assert commands and set(commands) == {b"ping"}, "no command received after the reconnect"
    finally:
        pub.stop(5)
        outbox.close()


def test_publisher_killed_during_outage_replays_from_outbox(mosquitto, tmp_path, subscriber_factory,
                                                            publisher_processes):
    sub = subscriber_factory()
    cfg = _config(mosquitto, tmp_path)
    first = PublisherProcess(cfg, tmp_path)
    publisher_processes.append(first)
    assert first.ask("wait_connected 10")["connected"]
    delivered = first.ask("publish 5")["seqs"]
    assert first.ask("flush 5")["flushed"]

    mosquitto.stop()
    stranded = first.ask("publish 5")["seqs"]  # only in the outbox: the broker is down
    first.kill()  # SIGKILL: no clean shutdown, no flush
    mosquitto.start()

    second = PublisherProcess(cfg, tmp_path)
    publisher_processes.append(second)
    assert second.hello["last_seq"] == 10 and second.hello["depth"] == 5
    assert second.ask("wait_connected 10")["connected"]
    fresh = second.ask("publish 5")["seqs"]
    assert fresh == [11, 12, 13, 14, 15]  # seq continues across the restart
    flushed = second.ask("flush 10")
    assert flushed["flushed"] and flushed["stats"]["replayed"] >= 5
    assert second.ask("stop")["stopped"]

    everything = delivered + stranded + fresh
    wait_for(lambda: set(sub.result_seqs_first_seen()) >= set(everything), 10, "every result at the subscriber")
    assert sub.result_seqs_first_seen() == everything
    plc_seqs = {parse_plc(m.payload)["seq"] for m in sub.on("plc")}
    assert plc_seqs.isdisjoint(stranded)


def test_password_comes_from_env_or_file_never_inline(tmp_path, monkeypatch):
    cfg = Config.model_validate({"station": {"line": "l1", "name": "st1"}, "mqtt": {"username": "u", "password_env": "EI_TEST_PW"}})
    with pytest.raises(ConfigError, match="environment variable EI_TEST_PW is not set"):
        read_password(cfg.mqtt)
    monkeypatch.setenv("EI_TEST_PW", "s3cret")
    assert read_password(cfg.mqtt) == "s3cret"
    secret = tmp_path / "pw"
    secret.write_text("from-file\n")
    cfg = Config.model_validate({"station": {"line": "l1", "name": "st1"}, "mqtt": {"username": "u", "password_file": str(secret)}})
    assert read_password(cfg.mqtt) == "from-file"
    cfg = Config.model_validate({"station": {"line": "l1", "name": "st1"}, "mqtt": {"username": "u", "password_file": str(tmp_path / "missing")}})
    with pytest.raises(ConfigError, match=r"mqtt\.password_file: cannot read .*missing"):
        read_password(cfg.mqtt)
    cfg = Config.model_validate({"station": {"line": "l1", "name": "st1"}, "mqtt": {"password_env": "EI_TEST_PW"}})
    with pytest.raises(ConfigError, match="mqtt.username is required"):
        read_password(cfg.mqtt)


def test_missing_tls_file_is_a_config_error(tmp_path):
    cfg = Config.model_validate({"station": {"line": "l1", "name": "st1"}, "mqtt": {"tls": {"enabled": True, "ca_file": str(tmp_path / "ca.pem")}},
                                 "outbox": {"path": str(tmp_path / "o.sqlite")}})
    outbox = Outbox(cfg.outbox.path)
    with pytest.raises(ConfigError, match=r"mqtt\.tls\.ca_file: file not found: .*ca\.pem"):
        MqttPublisher(cfg, outbox, MODEL)
    outbox.close()


def test_rows_leave_the_outbox_only_on_puback_within_a_bounded_window(mosquitto, tmp_path, subscriber_factory):
    sub = subscriber_factory()
    cfg = _config(mosquitto, tmp_path, max_inflight=3)
    outbox = Outbox(cfg.outbox.path)
    pub = MqttPublisher(cfg, outbox, MODEL)
    pub.start()
    try:
        wait_for(lambda: pub.connected, 5, "publisher connection")
        mosquitto.proc.send_signal(signal.SIGSTOP)  # broker frozen: TCP still up, no PUBACK comes back
        try:
            seqs = [pub.publish_verdict(_verdict(i)) for i in range(10)]
            wait_for(lambda: pub.published >= 3, 5, "the first window of results sent")
            time.sleep(0.5)  # time to send more, if the window were not enforced
            assert outbox.depth() == 10 and pub.acked == 0
            assert pub.published == 3 and pub.stats["inflight"] == 3  # window = mqtt.max_inflight
        finally:
            mosquitto.proc.send_signal(signal.SIGCONT)
        assert pub.flush(5) and pub.acked == 10
        wait_for(lambda: set(sub.result_seqs_first_seen()) >= set(seqs), 5, "results after the freeze")
        assert sub.result_seqs_first_seen() == seqs
    finally:
        pub.stop(5)
        outbox.close()


def test_outbox_full_with_stop_policy_publishes_nothing(tmp_path):
    cfg = Config.model_validate({"station": {"line": "l1", "name": "st1"}, "outbox": {"path": str(tmp_path / "o.sqlite"), "max_mb": 0.05, "when_full": "stop"}})
    outbox = Outbox(cfg.outbox.path, cfg.outbox.max_mb, cfg.outbox.when_full)
    pub = MqttPublisher(cfg, outbox, MODEL)  # never started: nothing can be sent anyway
    from edge_inspector.publish import OutboxFullError

    big = _verdict(0, "NG")
    big.defects = big.defects * 200
    with pytest.raises(OutboxFullError):
        for _ in range(200):
            pub.publish_verdict(big)
    assert pub.stats["plc_published"] == 0
    outbox.close()


def _secured_broker(tmp_path: Path):
    """mosquitto with a password file on the plain port and a TLS listener (server cert for 127.0.0.1)."""
    import shutil

    from tests.helpers.broker import Mosquitto, free_port, mosquitto_binary

    if not mosquitto_binary() or not shutil.which("mosquitto_passwd") or not shutil.which("openssl"):
        pytest.skip("mosquitto, mosquitto_passwd or openssl not installed")
    work = tmp_path / "secure-broker"
    broker = Mosquitto(work)
    pwfile = work / "passwd"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(pwfile), "station", "right-password"], check=True,
                   capture_output=True)
    pwfile.chmod(0o600)

    def openssl(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=work)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=test-ca")
    openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    (work / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.pem", "-days", "2", "-extfile", "san.ext")
    tls_port = free_port()
    conf = broker.conf.read_text().replace("allow_anonymous true", "allow_anonymous false")
    conf += (f"password_file {pwfile}\n"
             f"listener {tls_port} 127.0.0.1\ncafile {work}/ca.pem\ncertfile {work}/server.pem\nkeyfile {work}/server.key\n")
    broker.conf.write_text(conf)
    return broker.start(), tls_port, work / "ca.pem"


def test_username_password_from_env_and_tls(tmp_path, monkeypatch):
    broker, tls_port, ca = _secured_broker(tmp_path)
    monkeypatch.setenv("EI_BROKER_PW", "right-password")
    states: list[str] = []
    try:
        for port, tls in ((broker.port, {}), (tls_port, {"tls": {"enabled": True, "ca_file": str(ca)}})):
            cfg = _config(broker, tmp_path, username="station", password_env="EI_BROKER_PW", port=port, **tls)
            outbox = Outbox(tmp_path / f"o-{port}.sqlite")
            pub = MqttPublisher(cfg, outbox, MODEL)
            pub.start()
            try:
                assert pub.publish_verdict(_verdict(1)) == 1
                assert pub.flush(5), f"not delivered over {'TLS' if tls else 'plain'} with a password"
            finally:
                pub.stop(2)
                outbox.close()

        monkeypatch.setenv("EI_BROKER_PW", "wrong-password")
        cfg = _config(broker, tmp_path, username="station", password_env="EI_BROKER_PW")
        outbox = Outbox(tmp_path / "o-wrong.sqlite")
        pub = MqttPublisher(cfg, outbox, MODEL, on_state=lambda state, info: states.append(state))
        pub.start()
        try:
            wait_for(lambda: "refused" in states, 5, "connection refused with a wrong password")
            assert not pub.connected
        finally:
            pub.stop(1)
            outbox.close()
    finally:
        broker.stop()
