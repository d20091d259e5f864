"""Software triggers (camera.trigger.mode: software): the daemon's own timer, back-pressure, and
the P/cmd/trigger command — in-process supervisors, the last two on pylon's emulated camera and
a real mosquitto."""

from __future__ import annotations

import json
import threading
import time

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge_inspector.acquisition.folder import FolderSource
from edge_inspector.acquisition.trigger import MAX_TRIGGERS_AHEAD, SoftwareTrigger
from edge_inspector.config.models import CameraConfig, Config
from edge_inspector.supervisor import Supervisor
from tests.helpers.station import Subscriber, station_config, write_parts
from tests.helpers.tiny_bundle import make_tiny_bundle
from tests.test_pipeline import NumpyEngine, make_supervisor, run_to_end


# ------------------------------------------------------------------------------ no broker
class CountingSource:
    """Stands in for a camera: counts trigger() calls; ``executes`` decides their outcome."""

    state = "open"

    def __init__(self, executes=True):
        self.calls = 0
        self.executes = executes

    def trigger(self):
        self.calls += 1
        return self.executes


def _camera(**trigger) -> CameraConfig:
    return CameraConfig.model_validate({"type": "folder", "fps": 200.0, "trigger": {"mode": "software", **trigger}})


def test_timer_never_runs_ahead_of_the_frames_the_pipeline_took():
    source, taken = CountingSource(), [0]
    driver = SoftwareTrigger(source, _camera(), lambda: taken[0])
    driver.start()
    try:
        time.sleep(0.3)  # 60 periods at 200 fps, but the acquisition stage took nothing
        assert source.calls == MAX_TRIGGERS_AHEAD
        taken[0] = 1  # the frame entered the pipeline: the next trigger may go
        deadline = time.monotonic() + 2
        while source.calls < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.1)
        assert source.calls == 2
        assert driver.status()["late"] >= 1  # the blocked schedule re-anchored, no burst to catch up
    finally:
        driver.stop()


def test_commands_fire_only_when_the_station_chose_command_triggers():
    timer_driven = SoftwareTrigger(CountingSource(), _camera(software_source="timer"), lambda: 0)
    ok, message = timer_driven.fire(2)
    assert not ok and "software_source=timer" in message and timer_driven.source.calls == 0

    command_driven = SoftwareTrigger(CountingSource(), _camera(software_source="command"), lambda: 0)
    command_driven.start()  # no timer in command mode: nothing fires by itself
    time.sleep(0.05)
    assert command_driven.source.calls == 0
    assert command_driven.fire(3) == (True, "3 trigger(s) fired")
    command_driven.source.executes = False  # camera reconnecting: the source makes ERROR frames
    ok, message = command_driven.fire(2)
    assert not ok and "2 of 2 trigger(s) could not be executed" in message
    command_driven.source.state = "closed"  # stopping: nothing would turn a trigger into a result
    assert command_driven.fire(1) == (False, "camera closed: no trigger fired")
    assert command_driven.status() == {"origin": "command", "fired": 5, "failed": 2, "late": 0}
    command_driven.stop()


def test_timer_paced_folder_replay_under_slow_inference_loses_no_part(tmp_path):
    """Folder source in software mode driven by the supervisor's timer, inference slower than the
    trigger rate: every image ends as one verdict, none is dropped, and the trigger count
    never exceeds the frames taken by more than MAX_TRIGGERS_AHEAD."""
    images = tmp_path / "images"
    write_parts(images, 12)
    model_dir = make_tiny_bundle(tmp_path / "model", image_size=32, threshold=0.5)
    camera = {"type": "folder", "path": str(images), "fps": 100.0, "trigger": {"mode": "software"}}
    source = FolderSource(CameraConfig.model_validate(camera))
    sup = make_supervisor(tmp_path, model_dir, source, NumpyEngine(delay_s=0.03), camera=camera)
    t0 = time.monotonic()
    assert run_to_end(sup) == 0
    assert len(sup.publisher.verdicts) == 12 and sup.pipeline.frames_dropped == 0
    assert [v.verdict for v in sup.publisher.verdicts].count("ERROR") == 0
    fired = sup.software_trigger.fired
    assert 12 <= fired <= 12 + MAX_TRIGGERS_AHEAD
    assert time.monotonic() - t0 < 15


# ------------------------------------------------------------------------------ pylon + broker
@pytest.fixture
def pylon_station(tmp_path, mosquitto, monkeypatch):
    pytest.importorskip("pypylon")
    monkeypatch.setenv("PYLON_CAMEMU", "1")
    images = tmp_path / "images"
    write_parts(images, 6)
    model_dir = make_tiny_bundle(tmp_path / "model")

    def build(max_frames=None, **trigger):
        data = station_config(tmp_path, mosquitto.port, model_dir, images,
                              camera={"type": "pylon", "fps": 20.0, "pixel_format": "Mono8",
                                      "trigger": {"mode": "software", **trigger}})
        return Supervisor(Config.model_validate(data), max_frames=max_frames)

    return build


def _run_in_thread(sup: Supervisor) -> tuple[threading.Thread, dict]:
    sup.start()
    out: dict = {}
    thread = threading.Thread(target=lambda: out.setdefault("rc", sup.run()), name="test-supervisor")
    thread.start()
    return thread, out


def _assert_gapless_good_results(results: dict[int, dict], n: int) -> None:
    seqs = sorted(results)
    assert len(seqs) == n and seqs == list(range(seqs[0], seqs[0] + n)), seqs
    assert all(r["verdict"] in ("OK", "NG") for r in results.values()), [r.get("error") for r in results.values()]


@pytest.mark.pylon
def test_daemon_fires_software_triggers_on_the_emulated_pylon_camera(pylon_station, mosquitto):
    sub = Subscriber(mosquitto.port)
    sup = pylon_station(max_frames=10)
    try:
        thread, out = _run_in_thread(sup)
        thread.join(60)
        assert out.get("rc") == 0, sup.status()
        sub.wait_for(lambda: len(sub.results_by_seq()) >= 10, 10, "10 results")
        results = sub.results_by_seq()
        _assert_gapless_good_results(results, 10)
        # the emulator replays the folder in name order: 6 files, every 3rd has a defect
        assert [results[s]["verdict"] for s in sorted(results)] == ["OK", "OK", "NG"] * 3 + ["OK"]
        assert sup.software_trigger.failed == 0 and sup.pipeline.frames_dropped == 0
    finally:
        sub.close()
        if sup.pipeline is not None and not sup.pipeline.finished.is_set():
            sup.request_stop("test cleanup")


@pytest.mark.pylon
def test_trigger_command_images_exactly_the_requested_parts(pylon_station, mosquitto):
    sub = Subscriber(mosquitto.port)
    sup = pylon_station(software_source="command")
    replies: list[dict] = []
    commander = paho.Client(CallbackAPIVersion.VERSION2, client_id="test-plc", protocol=paho.MQTTv5)
    connected = threading.Event()
    commander.on_connect = lambda c, *_: (c.subscribe("ei/l1/st1/reply/trigger", qos=1), connected.set())
    commander.on_message = lambda _c, _u, msg: replies.append(json.loads(msg.payload))
    commander.connect("127.0.0.1", mosquitto.port)
    commander.loop_start()
    thread = None
    try:
        assert connected.wait(10)
        thread, out = _run_in_thread(sup)
        time.sleep(0.5)
        assert sub.results_by_seq() == {}  # no timer in command mode: nothing without a trigger
        commander.publish("ei/l1/st1/cmd/trigger", json.dumps({"count": 3, "id": "plc-1"}), qos=1)
        sub.wait_for(lambda: len(sub.results_by_seq()) >= 3 and replies, 15, "3 results and the reply")
        commander.publish("ei/l1/st1/cmd/trigger", b"", qos=1)  # empty payload: one trigger
        commander.publish("ei/l1/st1/cmd/trigger", json.dumps({"count": 100}), qos=1)  # refused
        sub.wait_for(lambda: len(sub.results_by_seq()) >= 4 and len(replies) >= 3, 15, "4 results, 3 replies")
        time.sleep(0.3)  # nothing more may arrive
        _assert_gapless_good_results(sub.results_by_seq(), 4)
        assert replies[0] == {"schema": "edge-inspector.reply/1", "ok": True, "command": "trigger", "id": "plc-1",
                              "result": {"count": 3, "message": "3 trigger(s) fired"}}
        assert replies[1]["ok"] is True and replies[2]["ok"] is False
        assert "count: Input should be less than or equal to 32" in replies[2]["error"]
    finally:
        commander.loop_stop()
        commander.disconnect()
        sub.close()
        if thread is not None:
            sup.request_stop("test done")
            thread.join(30)
            assert out.get("rc") == 0


def test_a_tagged_trigger_fires_only_when_its_tag_was_queued():
    """The queue's room is taken and the trigger fired in one step: when another command filled
    the queue in between (emulated by a queue that looks empty to a length check), no trigger
    fires for a tag the queue refused — its frame would carry the next part's identity."""
    from edge_inspector.acquisition.parts import PartQueue, PartTag

    class LooksEmpty(PartQueue):
        def __len__(self):
            return 0

    parts = LooksEmpty(limit=1)
    assert parts.announce(PartTag.make("first"))  # another command's part, still waiting
    source = CountingSource()
    driver = SoftwareTrigger(source, _camera(software_source="command"), lambda: 0, parts=parts)
    ok, message = driver.fire(1, PartTag.make("second"))
    assert not ok and "no trigger fired" in message
    assert source.calls == 0 and parts.take().part_id == "first" and parts.take() is None
    # with room, the tags are queued before their triggers, one per frame
    ok, _ = driver.fire(1, PartTag.make("third"))
    assert ok and source.calls == 1 and parts.take().part_id == "third"
