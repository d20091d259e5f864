"""docs/mqtt.md "Walk-through for integrators", run as written: the station daemon on its own
mosquitto, the documented bridge to a central mosquitto, two MES instances on the documented
shared subscription (the docs' Python snippet itself), a PLC on the local broker, part identity
and a product switch by the documented commands — and every result delivered exactly once
across the two MES instances through a daemon restart."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge_inspector.inference.bundle import load_bundle
from tests.helpers.broker import Mosquitto
from tests.helpers.contracts import assert_valid
from tests.helpers.station import Subscriber, start_daemon, station_config, stop_daemon, write_config, write_parts
from tests.helpers.tiny_bundle import make_tiny_bundle

pytestmark = pytest.mark.mosquitto

DOC = Path(__file__).resolve().parents[1] / "docs" / "mqtt.md"
P = "edge-inspector/line1/station1"


def _walkthrough() -> str:
    text = DOC.read_text()
    return text[text.index("## Walk-through for integrators"):]


def _block(lang: str, after: str) -> str:
    section = _walkthrough()
    section = section[section.index(after):]
    return re.search(rf"```{lang}\n(.*?)```", section, re.S).group(1)


def _pub_payload(after: str, command: str) -> tuple[str, dict]:
    sh = _block("sh", after)
    match = re.search(rf"-t ({re.escape(P)}/cmd/{command}) .*?-m '(.*?)'", sh, re.S)
    return match.group(1), json.loads(match.group(2))


def _client(port: int, client_id: str, topics=(), messages=None) -> paho.Client:
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
    ready = threading.Event()
    client.on_connect = lambda c, *_: ([c.subscribe(t, qos=1) for t in topics], ready.set())
    if messages is not None:
        client.on_message = lambda _c, _u, msg: messages.append((msg.topic, json.loads(msg.payload), msg.properties))
    client.connect("127.0.0.1", port)
    client.loop_start()
    assert ready.wait(10)
    return client


def test_walkthrough_as_documented(tmp_path, mosquitto):
    central = mosquitto
    # --- 2. the station's own broker, bridged to the central one with the documented config
    local = Mosquitto(tmp_path / "station-broker")
    bridge = _block("conf", "### 2.").replace("central.example:1883", f"127.0.0.1:{central.port}")
    local.conf.write_text(local.conf.read_text() + bridge)
    local.start()
    # --- 1. the station config of the walk-through (tiny bundles, images from a folder)
    bundles = {"bottle-500ml": make_tiny_bundle(tmp_path / "models" / "bottle-500ml", image_size=32, threshold=0.5),
               "bottle-1l": make_tiny_bundle(tmp_path / "models" / "bottle-1l", image_size=48, threshold=0.5)}
    write_parts(tmp_path / "parts", 4)
    documented = _block("yaml", "### 1.")
    assert "software_source: command" in documented and "bottle-1l: {model_path: models/bottle-1l, threshold: 0.62}" in documented
    cfg = station_config(tmp_path, local.port, bundles["bottle-500ml"], tmp_path / "parts",
                         station={"line": "line1", "name": "station1"},
                         camera={"loop": True, "trigger": {"mode": "software", "software_source": "command"}},
                         mqtt={"topic_prefix": "edge-inspector"},
                         archive={"enabled": True, "path": str(tmp_path / "archive"), "base_url": "http://10.0.0.5:9310"},
                         recipes={"products": {"bottle-500ml": {"model_path": str(bundles["bottle-500ml"])},
                                               "bottle-1l": {"model_path": str(bundles["bottle-1l"]), "threshold": 0.62}},
                                  "default": "bottle-500ml"})
    config = write_config(tmp_path / "station.yaml", cfg)
    # --- 3. two MES instances: the docs' snippet, pointed at the central broker
    snippet = _block("python", "### 3.").replace('"central.example", 1883', f'"127.0.0.1", {central.port}')
    namespace: dict = {}
    exec(compile(snippet, "docs/mqtt.md walk-through step 3", "exec"), namespace)  # noqa: S102 - our own docs
    stored: dict[str, list[dict]] = {"mes-1": [], "mes-2": []}
    mes = [namespace["mes_instance"](name, stored[name].append) for name in stored]
    for client in mes:
        client.loop_start()
    central_watch = Subscriber(central.port, base=P, client_id="central-watch")  # validates every payload too
    commander_replies: list = []
    commander = _client(central.port, "mes-commander", [f"{P}/reply/#"], commander_replies)
    plc_messages: list = []
    plc = _client(local.port, "plc-1", [f"{P}/plc"], plc_messages)
    proc = None
    sessions: set = set()
    try:
        for run in range(2):
            proc = start_daemon(config, log_path=tmp_path / "daemon.log")
            # ready, in a new session: this daemon start has subscribed to its commands
            central_watch.wait_for(lambda: any(s["online"] and s.get("state") == "ready" and s["session"] not in sessions
                                               for s in central_watch.payloads("status")), 60, "station ready (status over the bridge)")
            sessions.add(next(s["session"] for s in reversed(central_watch.payloads("status")) if s["online"] and s.get("state") == "ready"))
            before = len(central_watch.results_by_seq())
            # --- 4. fire a part with its identity (the documented command)
            topic, payload = _pub_payload("### 4.", "trigger")
            payload = {**payload, "part_ref": payload["part_ref"] + run}
            commander.publish(topic, json.dumps(payload), qos=1)
            central_watch.wait_for(lambda: len(central_watch.results_by_seq()) > before, 20, "the identified part's result")
            # --- 5. product switch (the documented command), then one more part
            topic, switch = _pub_payload("### 5.", "product")
            commander.publish(topic, json.dumps(switch), qos=1)
            central_watch.wait_for(lambda: any(r["command"] == "product" for r in _replies(commander_replies)), 20, "product reply")
            commander.publish(f"{P}/cmd/trigger", json.dumps({"count": 1}), qos=1)
            central_watch.wait_for(lambda: len(central_watch.results_by_seq()) >= before + 2, 20, "the next result")
            commander.publish(f"{P}/cmd/product", json.dumps({"product": "bottle-500ml"}), qos=1)  # back, for the next run
            central_watch.wait_for(lambda: sum(r["command"] == "product" for r in _replies(commander_replies)) >= 2 * run + 2, 20, "switch back")
            assert stop_daemon(proc) == 0
            proc = None
        all_results = central_watch.results_by_seq()
        seqs = sorted(all_results)
        assert seqs == list(range(1, 5)), seqs
        central_watch.wait_for(lambda: sum(len(v) for v in stored.values()) >= 4, 20, "results at the MES instances")
        got = [r["seq"] for v in stored.values() for r in v]
        assert sorted(got) == seqs, f"every result exactly once across the MES instances, got {got}"
        assert all(stored.values()), "the shared subscription spreads the load over both instances"
        for r in (all_results[1], all_results[3]):  # the identified parts
            assert r["part_id"] == "DMC-4711-0815" and r["product"] == "bottle-500ml" and r["context"] == {"job": "J-2211"}
        plc_by_seq = {p["seq"]: p for _, p, _ in plc_messages}
        assert plc_by_seq[1]["part_ref"] == 101 and plc_by_seq[3]["part_ref"] == 102  # the PLC sees its reference
        one_litre = load_bundle(bundles["bottle-1l"])
        for r in (all_results[2], all_results[4]):  # after the switch
            assert r["product"] == "bottle-1l" and r["model"]["sha256"] == one_litre.sha256 and r["threshold"] == 0.62
        for topic, reply, _ in commander_replies:
            assert_valid("reply", reply)
        _raw, props = central_watch.raw("result")[0]
        assert dict(props.UserProperty) == {"schema": "edge-inspector.result/1", "station": "line1/station1"}  # kept by the bridge
    finally:
        for client in (commander, plc, *mes):
            client.loop_stop()
            client.disconnect()
        central_watch.close()
        if proc is not None:
            stop_daemon(proc)
        local.stop()


def _replies(messages) -> list[dict]:
    return [payload for _topic, payload, _props in messages]
