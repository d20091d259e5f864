"""Part identity end to end (issue 11): a trigger's part_id / product / context reach the result,
part_ref reaches the PLC message, frame_id stays unique across daemon restarts, free-run parts
get a generated id, hardware-trigger announcements (P/cmd/part) are taken one per frame."""

from __future__ import annotations

import json
import threading

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge_inspector.acquisition.parts import PART_REF_MAX, PartQueue, PartTag, part_ref_for
from edge_inspector.publish.commands import CommandHandler
from tests.helpers.fake_control import FakeControl
from tests.helpers.station import Subscriber, start_daemon, station_config, stop_daemon, write_config, write_parts
from tests.helpers.tiny_bundle import make_tiny_bundle
from tests.test_pipeline import ListSource, NumpyEngine, blotched, grey, make_supervisor, run_to_end

BASE = "ei/l1/st1"


# ------------------------------------------------------------------------------ units
def test_part_ref_is_what_a_plc_can_compare():
    assert part_ref_for(None) == 0 and part_ref_for("") == 0
    assert part_ref_for("004711") == 4711  # a numeric part number is echoed as the number
    assert part_ref_for("DMC-4711", given=17) == 17  # the PLC's own reference wins
    hashed = part_ref_for("DMC-4711")
    assert 1 <= hashed <= PART_REF_MAX and hashed == part_ref_for("DMC-4711")  # stable, never 0
    assert part_ref_for(str(PART_REF_MAX + 1)) != PART_REF_MAX + 1  # out of DINT range: hashed


def test_part_queue_is_bounded_and_fifo():
    parts = PartQueue(limit=2)
    a, b = PartTag.make("a"), PartTag.make("b")
    assert parts.announce(a) and parts.announce(b) and not parts.announce(PartTag.make("c"))
    assert parts.take() == a and parts.take() == b and parts.take() is None


@pytest.mark.parametrize("payload,error", [
    ({"count": 2, "part_id": "A1"}, "send count 1 per identified part"),
    ({"part_id": "A\n1"}, "part_id: String should match pattern"),
    ({"part_id": "x" * 65}, "part_id: String should have at most 64 characters"),
    ({"product": "../etc"}, "product: String should match pattern"),
    ({"context": {"k": 1}}, "context.k: Input should be a valid string"),
    ({"context": {f"k{i}": "v" for i in range(17)}}, "context: Dictionary should have at most 16 items"),
    ({"part_ref": 0}, "part_ref: Input should be greater than or equal to 1"),
    ({"part_ref": True}, "part_ref: expected a number, got true"),
    ({"schema": "edge-inspector.command/2"}, "schema: Input should be 'edge-inspector.command/1'"),
])
def test_bad_part_identity_is_refused_in_one_line(payload, error):
    control = FakeControl()
    reply = CommandHandler(control, BASE).execute("trigger", json.dumps(payload).encode())
    assert reply["ok"] is False and error in reply["error"] and "\n" not in reply["error"]
    assert control.trigger_calls == []


def test_trigger_and_part_commands_hand_the_tag_to_the_pipeline():
    control = FakeControl()
    handler = CommandHandler(control, BASE)
    reply = handler.execute("trigger", json.dumps({"part_id": "DMC-1", "product": "p500", "context": {"lot": "L7"},
                                                   "schema": "edge-inspector.command/1"}).encode())
    assert reply["ok"] and reply["result"]["part_id"] == "DMC-1" and reply["result"]["part_ref"] == part_ref_for("DMC-1")
    assert control.trigger_tags == [PartTag("DMC-1", "p500", {"lot": "L7"}, part_ref_for("DMC-1"))]
    assert handler.execute("part", json.dumps({"part_id": "7", "part_ref": 99}).encode())["ok"]
    assert control.announced == [PartTag("7", None, {}, 99)]
    assert not handler.execute("part", b"{}")["ok"]  # nothing to announce
    assert handler.execute("part", b'{"clear": true}')["ok"] and control.announced[-1] == (None, True)


def test_hardware_announcements_are_taken_one_per_triggered_frame(tmp_path):
    """P/cmd/part queues identities; each triggered frame takes the next one, in order; frames
    beyond the announcements get generated ids."""
    model_dir = make_tiny_bundle(tmp_path / "model", image_size=32, threshold=0.5)
    free_run = make_supervisor(tmp_path / "free", model_dir, ListSource([grey()]), NumpyEngine())
    assert not free_run.announce_part(PartTag.make("A"))[0] and len(free_run.parts) == 0  # not a triggered station
    source = ListSource([grey(), blotched(), grey()], triggered=True)
    sup = make_supervisor(tmp_path, model_dir, source, NumpyEngine(), camera={"trigger": {"mode": "hardware"}})
    assert sup.announce_part(PartTag.make("stale"))[0]
    ok, message = sup.announce_part(None, clear=True)  # P/cmd/part {"clear": true} after a missed pulse
    assert ok and message == "1 waiting announcement(s) dropped" and len(sup.parts) == 0
    assert sup.announce_part(PartTag.make("A", "p1", {"lot": "L1"}))[0]
    ok, message = sup.announce_part(PartTag.make("B", "p1"))
    assert ok and message == "part queued for the next trigger (2 waiting)"
    assert run_to_end(sup) == 0
    verdicts = sup.publisher.verdicts
    assert [(v.part_id, v.product) for v in verdicts] == [("A", "p1"), ("B", "p1"), (None, None)]
    assert verdicts[0].context == {"lot": "L1"} and verdicts[1].part_ref == part_ref_for("B")


# ------------------------------------------------------------------------------ daemon + broker
class _Commander:
    def __init__(self, port: int):
        self.replies: list[dict] = []
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id="test-mes-commander", protocol=paho.MQTTv5)
        ready = threading.Event()
        self.client.on_connect = lambda c, *_: (c.subscribe(f"{BASE}/reply/#", qos=1), ready.set())
        self.client.on_message = lambda _c, _u, msg: self.replies.append(json.loads(msg.payload))
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert ready.wait(10)

    def send(self, name: str, payload: dict) -> None:
        self.client.publish(f"{BASE}/cmd/{name}", json.dumps(payload), qos=1).wait_for_publish(5)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def test_part_id_travels_trigger_to_result_and_plc_and_frame_ids_survive_restarts(tmp_path, mosquitto):
    model_dir = make_tiny_bundle(tmp_path / "model", image_size=32, threshold=0.5)
    write_parts(tmp_path / "parts", 3)  # part_0002 has a defect
    cfg = station_config(tmp_path, mosquitto.port, model_dir, tmp_path / "parts",
                         camera={"loop": True, "trigger": {"mode": "software", "software_source": "command"}})
    config = write_config(tmp_path / "station.yaml", cfg)
    sub = Subscriber(mosquitto.port)
    mes = _Commander(mosquitto.port)
    proc = None
    try:
        sessions = []
        for run in range(2):
            proc = start_daemon(config)
            sub.wait_for(lambda: len([s for s in sub.payloads("status") if s["online"] and s.get("state") == "ready"]) > run,
                         60, "station ready")
            sessions.append([s for s in sub.payloads("status") if s["online"]][-1]["session"])
            before = len(sub.results_by_seq())
            mes.send("trigger", {"part_id": f"DMC-{run}", "product": "bottle-500ml", "context": {"job": "J-2211", "lot": "L7"},
                                 "part_ref": 4711 + run, "id": f"t{run}"})
            mes.send("trigger", {"count": 2})  # parts without an id: generated ones
            sub.wait_for(lambda: len(sub.results_by_seq()) >= before + 3, 20, "3 results")
            assert stop_daemon(proc) == 0
            proc = None
        results = [sub.results_by_seq()[s] for s in sorted(sub.results_by_seq())]
        plc = {p["seq"]: p for p in sub.payloads("plc")}
        assert len(results) == 6 and sessions[1] == sessions[0] + 1
        for run, first in enumerate((results[0], results[3])):
            assert first["part_id"] == f"DMC-{run}" and first["product"] == "bottle-500ml"
            assert first["context"] == {"job": "J-2211", "lot": "L7"} and first["part_ref"] == 4711 + run
            assert "part_id_generated" not in first
            assert plc[first["seq"]]["part_ref"] == 4711 + run  # the PLC sees the reference it wrote
            assert first["frame_id"].startswith(f"s{sessions[run]}-")
        for generated in results[1:3] + results[4:]:
            assert generated["part_id"] == generated["frame_id"] and generated["part_id_generated"] is True
            assert generated["part_ref"] == 0 and plc[generated["seq"]]["part_ref"] == 0 and "product" not in generated
        frame_ids = [r["frame_id"] for r in results]
        assert len(set(frame_ids)) == 6, frame_ids  # the camera counter restarted; the ids did not repeat
        trigger_replies = [r for r in mes.replies if r.get("id") in ("t0", "t1")]
        assert [r["result"]["part_ref"] for r in trigger_replies] == [4711, 4712]
    finally:
        mes.close()
        sub.close()
        if proc is not None:
            stop_daemon(proc)
