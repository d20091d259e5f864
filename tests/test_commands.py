"""Remote commands through a real mosquitto: MQTT 5 response topic + correlation data."""

from __future__ import annotations

import base64
import json
import queue
import threading
import uuid

import cv2
import numpy as np
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_inspector.publish.commands import CommandHandler, paho_replier
from tests.helpers.contracts import assert_valid
from tests.helpers.fake_control import FakeControl

BASE = "edge-inspector/line1/st1"


# --- pure validation (no broker) ---------------------------------------------------------------
@pytest.fixture
def handler():
    return CommandHandler(FakeControl(), BASE)


@pytest.mark.parametrize(
    "name, payload, error",
    [
        ("set-threshold", b"{}", "value: Field required"),
        ("set-threshold", b'{"value": -1}', "value: Input should be greater than 0"),
        ("set-threshold", b'{"value": "high"}', "value: Input should be a valid number"),
        ("set-threshold", b'{"value": 0.5, "persist": true}', "persist: Extra inputs are not permitted"),
        ("set-threshold", b"{value: 1}", "payload is not JSON"),
        ("set-threshold", b"[0.5]", "payload must be a JSON object, got list"),
        ("snapshot", b'{"max_side": 4}', "max_side: Input should be greater than or equal to 16"),
        ("trigger", b'{"count": 0}', "count: Input should be greater than or equal to 1"),
        ("trigger", b'{"count": 33}', "count: Input should be less than or equal to 32"),
        ("trigger", b'{"count": "2"}', "count: Input should be a valid integer"),
        ("trigger", b'{"count": 1.5}', "count: Input should be a valid integer"),
        ("reboot", b"{}", "unknown command 'reboot'; known: reload, set-threshold, snapshot, status, trigger"),
    ],
)
def test_invalid_payloads_give_one_line_errors(handler, name, payload, error):
    reply = handler.execute(name, payload)
    assert reply["ok"] is False and reply["command"] == name
    assert reply["error"].startswith(error), reply["error"]
    assert "\n" not in reply["error"]
    assert handler.control.threshold == 0.5  # nothing was applied


def test_trigger_fires_the_requested_count_and_reports_refusals(handler):
    control = handler.control
    assert handler.execute("trigger", b"") == {"ok": True, "command": "trigger",
                                               "result": {"count": 1, "message": "triggers fired"}}
    assert handler.execute("trigger", b'{"count": 3, "id": "t2"}')["result"]["count"] == 3
    control.trigger_result = (False, "camera.trigger.mode is hardware: only a software-triggered camera takes remote triggers")
    assert handler.execute("trigger", b"{}") == {"ok": False, "command": "trigger",
                                                 "error": control.trigger_result[1]}
    assert control.trigger_calls == [1, 3, 1]


def test_nan_threshold_is_refused(handler):
    assert handler.execute("set-threshold", b'{"value": NaN}')["ok"] is False


def test_status_reload_snapshot(handler):
    control = handler.control
    assert handler.execute("status", b"")["result"]["mqtt_state"] == "connected"  # empty payload means {}
    assert handler.execute("reload", b"{}") == {"ok": True, "command": "reload", "result": {"message": "config reloaded"}}
    control.reload_result = (False, "model.path: /x/model.onnx not found\n(kept the running model)")
    assert handler.execute("reload", b'{"id": "r1"}') == {
        "ok": False,
        "command": "reload",
        "error": "model.path: /x/model.onnx not found (kept the running model)",
        "id": "r1",
    }
    assert control.reload_calls == [None, None]  # a remote client never picks the config file

    assert handler.execute("snapshot", b"{}") == {"ok": False, "command": "snapshot", "error": "no frame grabbed yet"}
    control.frame = np.full((600, 2000), 128, np.uint8)
    result = handler.execute("snapshot", b'{"max_side": 500, "format": "png"}')["result"]
    img = cv2.imdecode(np.frombuffer(base64.b64decode(result["data"]), np.uint8), cv2.IMREAD_UNCHANGED)
    assert (result["width"], result["height"]) == (2000, 600)
    assert img.shape[:2] == (150, 500) == (result["sent_height"], result["sent_width"])


def test_response_topic_may_not_point_into_the_station_tree(handler):
    sent = []
    handler._reply = lambda topic, payload, corr: sent.append(topic)
    for response_topic in (f"{BASE}/result", f"{BASE}/status", "mes/#"):
        msg = paho.MQTTMessage(topic=f"{BASE}/cmd/status".encode())
        msg.properties = Properties(PacketTypes.PUBLISH)
        msg.properties.ResponseTopic = response_topic
        handler.on_message(msg)
    handler.start()
    handler.stop()
    assert sent == []


# --- through a real broker ---------------------------------------------------------------------
class _Client:
    """A MES-side MQTT 5 client collecting everything on its subscriptions."""

    def __init__(self, port: int, client_id: str):
        self.messages: "queue.Queue[paho.MQTTMessage]" = queue.Queue()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
        self.client.on_message = lambda c, u, m: self.messages.put(m)
        connected = threading.Event()
        self.client.on_connect = lambda c, u, f, rc, p: connected.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert connected.wait(10), "could not connect to mosquitto"

    def subscribe(self, topic: str) -> None:
        done = threading.Event()
        self.client.on_subscribe = lambda *a: done.set()
        self.client.subscribe(topic, qos=1)
        assert done.wait(10)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def station(mosquitto):
    """The station side: a paho client subscribed to P/cmd/+ feeding a CommandHandler."""
    control = FakeControl()
    station_client = _Client(mosquitto.port, "station")
    handler = CommandHandler(control, BASE, reply=paho_replier(station_client.client)).start()
    station_client.client.message_callback_add(handler.topic_filter, lambda c, u, m: handler.on_message(m))
    station_client.subscribe(handler.topic_filter)
    mes = _Client(mosquitto.port, "mes")
    yield control, mes
    handler.stop()
    mes.close()
    station_client.close()


def _request(mes: _Client, name: str, payload: dict | bytes, timeout: float = 10.0):
    reply_topic = f"mes/replies/{uuid.uuid4().hex}"
    mes.subscribe(reply_topic)
    correlation = uuid.uuid4().bytes
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = reply_topic
    props.CorrelationData = correlation
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    mes.client.publish(f"{BASE}/cmd/{name}", body, qos=1, properties=props).wait_for_publish(5)
    msg = mes.messages.get(timeout=timeout)
    assert msg.topic == reply_topic
    assert msg.properties.CorrelationData == correlation, "the reply must carry the request's correlation data"
    reply = json.loads(msg.payload)
    assert_valid("reply", reply)
    return reply


def test_set_threshold_over_mqtt5(station):
    control, mes = station
    reply = _request(mes, "set-threshold", {"value": 0.73})
    assert reply["ok"] is True and reply["command"] == "set-threshold"
    assert reply["result"]["threshold"] == 0.73
    assert control.threshold == 0.73


def test_invalid_payload_over_mqtt5(station):
    control, mes = station
    reply = _request(mes, "set-threshold", {"value": "loads"})
    assert reply == {"schema": "edge-inspector.reply/1", "ok": False, "command": "set-threshold",
                     "error": "value: Input should be a valid number, unable to parse string as a number"}
    assert control.threshold == 0.5


def test_unknown_command_over_mqtt5(station):
    _, mes = station
    reply = _request(mes, "self-destruct", b"")
    assert reply["ok"] is False and reply["error"].startswith("unknown command 'self-destruct'")


def test_mqtt311_client_gets_reply_on_reply_topic_with_id(station, mosquitto):
    _, _ = station
    old = paho.Client(CallbackAPIVersion.VERSION2, client_id="plc-gateway", protocol=paho.MQTTv311)
    got: "queue.Queue[paho.MQTTMessage]" = queue.Queue()
    subscribed = threading.Event()
    old.on_message = lambda c, u, m: got.put(m)
    old.on_subscribe = lambda *a: subscribed.set()
    old.connect("127.0.0.1", mosquitto.port)
    old.loop_start()
    try:
        old.subscribe(f"{BASE}/reply/#", qos=1)
        assert subscribed.wait(10)
        old.publish(f"{BASE}/cmd/status", json.dumps({"id": "abc-1"}), qos=1).wait_for_publish(5)
        msg = got.get(timeout=10)
        assert msg.topic == f"{BASE}/reply/status"
        reply = json.loads(msg.payload)
        assert reply["ok"] is True and reply["id"] == "abc-1" and reply["result"]["fps"] == 4.9
    finally:
        old.loop_stop()
        old.disconnect()


def test_command_ops_resubscribes_when_a_reload_replaces_the_publisher():
    from types import SimpleNamespace

    from edge_inspector.config.models import Config
    from edge_inspector.publish.commands import CommandOps

    class RecordingPublisher:
        def __init__(self):
            self.subscriptions, self.replies = [], []

        def subscribe(self, topic_filter, callback, qos=1):
            self.subscriptions.append(topic_filter)

        def publish_reply(self, topic, payload, correlation_data):
            self.replies.append((topic, json.loads(payload), correlation_data))

    first, second = RecordingPublisher(), RecordingPublisher()
    control = FakeControl()
    station1 = Config.model_validate({"station": {"line": "line1", "name": "station1"}})
    supervisor = SimpleNamespace(cfg=station1, publisher=first, **{m: getattr(control, m) for m in
                                 ("reload", "set_threshold", "snapshot", "status", "stage_heartbeats")})
    ops = CommandOps(supervisor)
    ops.start()
    try:
        assert first.subscriptions == ["edge-inspector/line1/station1/cmd/+"]
        assert ops.apply_config(station1) == "commands: unchanged"

        renamed = Config.model_validate({"station": {"line": "line1", "name": "st9"}})
        supervisor.publisher = second  # what Supervisor._replace_publisher does on an mqtt/station change
        assert ops.apply_config(renamed) == "commands: subscribed edge-inspector/line1/st9/cmd/+"
        assert second.subscriptions == ["edge-inspector/line1/st9/cmd/+"]

        msg = paho.MQTTMessage(topic=b"edge-inspector/line1/st9/cmd/status")
        msg.payload = b'{"id": "x"}'
        ops.handler.on_message(msg)
    finally:
        ops.stop()
    assert second.replies and second.replies[0][0] == "edge-inspector/line1/st9/reply/status"
    assert second.replies[0][1]["ok"] is True and first.replies == []
