"""Pipeline and supervisor in-process: queues, drops vs back-pressure, ERROR verdicts, batching,
heartbeats, PipelineControl (threshold, snapshot, status, reload). No broker: a fake publisher."""

from __future__ import annotations

import threading
import time

import cv2
import numpy as np
import pytest
import yaml

from edge_inspector.acquisition.base import Frame, FrameSource
from edge_inspector.config.models import CameraConfig, Config
from edge_inspector.inference.base import Engine
from edge_inspector.observer import PipelineObserver
from edge_inspector.pipeline.queues import END, StageQueue
from edge_inspector.supervisor import Supervisor
from tests.helpers.tiny_bundle import make_tiny_bundle


# ------------------------------------------------------------------------------- fakes
class ListSource(FrameSource):
    def __init__(self, images, triggered=True, interval_s=0.0):
        self.images = list(images)
        self.triggered = triggered
        self.interval_s = interval_s
        self._closed = threading.Event()

    def open(self):
        self._set_state("open")

    def frames(self):
        for i, img in enumerate(self.images):
            if self._closed.is_set():
                return
            now = time.monotonic()
            yield Frame(frame_id=f"f{i}", image=img, ts_grab=now, ts_wall=time.time(), source=f"img{i}",
                        error=None if img is not None else f"img{i}: grab failed (timeout)")
            if self.interval_s:
                self._closed.wait(self.interval_s)
        self._set_state("ended")

    def close(self):
        self._closed.set()


class NumpyEngine(Engine):
    """The tiny bundle's math in numpy, with knobs: delay per call, failure on a marker value,
    a gate that can block inference (stall), and a record of batch sizes."""

    def __init__(self, delay_s=0.0, fail_marker=None):
        self.delay_s = delay_s
        self.fail_marker = fail_marker
        self.batch_sizes = []
        self.gate = threading.Event()
        self.gate.set()

    def infer(self, batch):
        self.gate.wait()
        self.batch_sizes.append(len(batch))
        if self.fail_marker is not None and np.any(np.isclose(batch[:, 0, 0, 0], self.fail_marker)):
            raise RuntimeError("session.run failed: simulated CUDA error")
        time.sleep(self.delay_s)
        maps = np.abs(batch).mean(axis=1)
        return maps.astype(np.float32), maps.reshape(len(batch), -1).max(axis=1)


class FakePublisher:
    def __init__(self, cfg, model_info, on_state, outbox=None, on_acked=None):
        self.cfg, self.model, self.on_acked = cfg, dict(model_info), on_acked
        self.verdicts, self.models, self.status = [], [], {}
        self.outbox = outbox if outbox is not None else []
        self.stopped = False

    def start(self):
        pass

    def publish_verdict(self, verdict):
        self.verdicts.append(verdict)
        # as MqttPublisher does: the payload names the verdict's own model when it has one
        self.models.append(dict(verdict.model or self.model))
        seq = len(self.verdicts)
        if self.on_acked:
            self.on_acked(seq)
        return seq

    def publish_health(self, counters):
        self.health = counters

    def set_status(self, **fields):
        self.status.update(fields)

    def stop(self, timeout=10.0):
        self.stopped = True

    @property
    def outbox_depth(self):
        return 0


class Recorder(PipelineObserver):
    def __init__(self):
        self.drops, self.published, self.states, self.models = [], [], [], []
        self.frames = 0

    def on_frame(self, frame):
        self.frames += 1

    def on_drop(self, stage, reason):
        self.drops.append((stage, reason))

    def on_published(self, seq, verdict):
        self.published.append((seq, verdict.frame_id if verdict else None))

    def on_state(self, component, state, detail=""):
        self.states.append((component, state, detail))

    def on_model(self, name, sha256):
        self.models.append(sha256)


def grey(value=127, shape=(96, 128)):
    return np.full(shape, value, np.uint8)


def blotched():
    img = grey()
    img[30:42, 40:56] = 255
    return img


@pytest.fixture
def model_dir(tmp_path):
    return make_tiny_bundle(tmp_path / "model", image_size=32, threshold=0.5)


def make_supervisor(tmp_path, model_dir, source, engine, observers=(), config_path=None, **cfg_over):
    data = {"station": {"line": "l1", "name": "st1"}, "model": {"path": str(model_dir), "warmup_runs": 0}, "pipeline": {"queue_size": 2},
            "postprocess": {"min_defect_area_px": 1}, "outbox": {"path": str(tmp_path / "outbox.sqlite")},
            "archive": {"enabled": False, "path": str(tmp_path / "archive")}, "health": {"enabled": False}}
    for k, v in cfg_over.items():
        data[k] = {**data.get(k, {}), **v}
    cfg = Config.model_validate(data)
    return Supervisor(cfg, config_path=config_path, observers=observers,
                      source_factory=lambda c, on_state: _wired(source, on_state),
                      publisher_factory=FakePublisher,
                      engine_factory=lambda c, b: engine)


def _wired(source, on_state):
    source.on_state = on_state
    return source


def run_to_end(sup, timeout=20):
    sup.start()
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("rc", sup.run()))
    t.start()
    t.join(timeout)
    assert not t.is_alive(), "supervisor did not finish"
    return result["rc"]


# ------------------------------------------------------------------------------- queues
def test_queue_drop_oldest_returns_the_oldest_and_never_drops_end():
    q = StageQueue("frames", 2, "drop_oldest")
    assert q.put(1) is None and q.put(2) is None
    assert q.put(3) == 1 and len(q) == 2
    done = threading.Thread(target=q.put, args=(END,))  # END waits for room instead of evicting
    done.start()
    time.sleep(0.2)
    assert done.is_alive() and len(q) == 2
    assert q.get(0.1) == 2
    done.join(2)
    assert q.get(0.1) == 3 and q.get(0.1) is END and q.get(0.01) is None


def test_queue_block_policy_waits_and_beats():
    q = StageQueue("tensors", 1, "block")
    q.put("a")
    beats = []
    t = threading.Thread(target=lambda: q.put("b", heartbeat=lambda: beats.append(1), poll_s=0.05))
    t.start()
    time.sleep(0.3)
    assert t.is_alive() and beats, "a blocked producer waits and keeps beating"
    assert q.get(0.1) == "a"
    t.join(2)
    assert q.get(0.1) == "b"


# ------------------------------------------------------------------------------- flow
def test_free_run_drops_oldest_and_counts_every_drop(tmp_path, model_dir):
    source = ListSource([grey() for _ in range(40)], triggered=False)
    rec = Recorder()
    sup = make_supervisor(tmp_path, model_dir, source, NumpyEngine(delay_s=0.02), observers=[rec])
    assert run_to_end(sup) == 0
    p = sup.pipeline
    assert p.frames_dropped > 0 and len(rec.drops) == p.frames_dropped
    assert p.frames_in == 40 == p.frames_out + p.frames_dropped
    assert len(sup.publisher.verdicts) == p.frames_out
    assert sup.status()["frames_dropped"] == p.frames_dropped


def test_triggered_applies_back_pressure_never_drops(tmp_path, model_dir):
    source = ListSource([grey() for _ in range(20)], triggered=True)
    sup = make_supervisor(tmp_path, model_dir, source, NumpyEngine(delay_s=0.01))
    assert run_to_end(sup) == 0
    assert sup.pipeline.frames_dropped == 0
    assert [v.frame_id for v in sup.publisher.verdicts] == [f"f{i}" for i in range(20)]


def test_every_bad_frame_becomes_an_error_verdict_in_order(tmp_path, model_dir):
    images = [
        grey(),
        None,  # grab failure
        np.zeros((10, 10, 2), np.uint8),  # wrong channel count
        np.zeros((10, 10, 5), np.uint8),
        np.zeros((0, 0), np.uint8),  # empty
        np.zeros((5, 5), np.int64),  # dtype no camera gives
        grey(0.2),  # → marker value: the engine raises for this one only
        blotched(),
        grey(),
    ]
    images[6] = np.full((96, 128), 127 - 128 * 0.25, np.float32)  # float frame; TF-normalised ≈ -0.25
    engine = NumpyEngine(fail_marker=round((127 - 128 * 0.25 - 127) / 128, 4))
    rec = Recorder()
    sup = make_supervisor(tmp_path, model_dir, ListSource(images), engine, observers=[rec])
    assert run_to_end(sup) == 0
    verdicts = sup.publisher.verdicts
    assert [v.frame_id for v in verdicts] == [f"f{i}" for i in range(len(images))]
    kinds = [v.verdict for v in verdicts]
    assert kinds == ["OK", "ERROR", "ERROR", "ERROR", "ERROR", "ERROR", "ERROR", "NG", "OK"]
    assert "grab failed" in verdicts[1].error
    assert "channels" in verdicts[2].error and "channels" in verdicts[3].error  # camera.expect.channels
    assert "inference failed" in verdicts[6].error and "CUDA" in verdicts[6].error
    assert all(v.threshold == 0.5 for v in verdicts)
    assert verdicts[7].defects and verdicts[7].model["sha256"] == sup.current_runtime().bundle.sha256
    assert [s for s, _ in rec.published] == list(range(1, len(images) + 1))  # on_published per PUBACK


def test_backlog_is_batched_and_a_failed_batch_retries_one_by_one(tmp_path, model_dir):
    engine = NumpyEngine()
    engine.gate.clear()  # hold inference so a backlog forms
    images = [grey() for _ in range(6)]
    images[4] = np.full((96, 128), 127 - 128 * 0.25, np.float32)
    engine.fail_marker = round(-0.25, 4)
    sup = make_supervisor(tmp_path, model_dir, ListSource(images), engine, pipeline={"queue_size": 8})
    sup.start()
    t = threading.Thread(target=sup.run)
    t.start()
    time.sleep(0.5)
    engine.gate.set()
    t.join(20)
    assert max(engine.batch_sizes) > 1
    kinds = [v.verdict for v in sup.publisher.verdicts]
    assert kinds == ["OK", "OK", "OK", "OK", "ERROR", "OK"]


def test_max_frames_publishes_exactly_n(tmp_path, model_dir):
    sup = make_supervisor(tmp_path, model_dir, ListSource([grey()] * 50), NumpyEngine())
    sup.max_frames = 7
    assert run_to_end(sup) == 0
    assert len(sup.publisher.verdicts) == 7 and sup.publisher.stopped


# ------------------------------------------------------------------------------- control
def test_heartbeats_show_the_stalled_stage_only(tmp_path, model_dir):
    engine = NumpyEngine()
    sup = make_supervisor(tmp_path, model_dir, ListSource([grey()] * 200, interval_s=0.01, triggered=False), engine)
    sup.start()
    t = threading.Thread(target=sup.run)
    t.start()
    try:
        time.sleep(0.3)
        engine.gate.clear()  # inference hangs inside session.run
        time.sleep(3.0)
        beats = sup.stage_heartbeats()
        assert set(beats) == {"acquisition", "preprocess", "inference", "postprocess", "publish", "supervisor"}
        # waiting stages beat every 0.5 s, the supervisor loop every 0.2 s: < 1.5 s leaves room
        # for a loaded 2-core CI box
        assert beats["inference"] > 2.5
        assert all(beats[s] < 1.5 for s in ("acquisition", "preprocess", "postprocess", "publish", "supervisor")), beats
    finally:
        engine.gate.set()
        sup.request_stop("test")
        t.join(20)


def test_set_threshold_snapshot_status(tmp_path, model_dir):
    engine = NumpyEngine()
    source = ListSource([blotched() for _ in range(300)], interval_s=0.01)
    sup = make_supervisor(tmp_path, model_dir, source, engine)
    sup.start()
    t = threading.Thread(target=sup.run)
    t.start()
    try:
        time.sleep(0.3)
        # Same rule as the config and the command layer: finite, not a boolean, 0 < t <= 1e6.
        for bad in ("abc", float("nan"), float("inf"), 0, -1.0, True, 2e6):
            ok, msg = sup.set_threshold(bad)
            assert ok is False and "threshold must" in msg, (bad, msg)
        assert sup.status()["threshold_override"] is None
        ok, msg = sup.set_threshold(5.0)
        assert ok and "5" in msg
        time.sleep(0.3)
        assert sup.publisher.verdicts[-1].verdict == "OK" and sup.publisher.verdicts[-1].threshold == 5.0
        snap = sup.snapshot()
        assert snap is not None and snap.shape == (96, 128)
        st = sup.status()
        for key in ("fps", "frames_in", "frames_out", "frames_dropped", "verdicts", "mqtt_state", "outbox_depth",
                    "camera_state", "model", "threshold", "heartbeats_s", "queues", "last_reload"):
            assert key in st, key
        assert st["threshold"] == 5.0 and st["camera_state"] == "open" and st["model"]["sha256"]
    finally:
        sup.request_stop("test")
        t.join(20)


def test_reload_rejects_bad_config_and_bad_model_then_swaps_a_good_model(tmp_path, model_dir):
    config = tmp_path / "station.yaml"
    base = {"station": {"line": "l1", "name": "st1"}, "model": {"path": str(model_dir), "warmup_runs": 0}, "pipeline": {"queue_size": 2},
            "postprocess": {"min_defect_area_px": 1}, "outbox": {"path": str(tmp_path / "outbox.sqlite")},
            "archive": {"enabled": False, "path": str(tmp_path / "archive")}, "health": {"enabled": False}}
    config.write_text(yaml.safe_dump(base))
    engine = NumpyEngine()
    rec = Recorder()
    sup = make_supervisor(tmp_path, model_dir, ListSource([blotched() for _ in range(1000)], interval_s=0.005),
                          engine, observers=[rec], config_path=config)
    sup.start()
    t = threading.Thread(target=sup.run)
    t.start()
    try:
        old_sha = sup.current_runtime().bundle.sha256
        config.write_text(yaml.safe_dump({**base, "camera": {"fps": 0}}))
        ok, msg = sup.reload()
        assert not ok and "camera.fps" in msg and sup.status()["last_reload"]["ok"] is False
        broken = make_tiny_bundle(tmp_path / "broken", image_size=32, format_version=99)
        config.write_text(yaml.safe_dump({**base, "model": {**base["model"], "path": str(broken)}}))
        ok, msg = sup.reload()
        assert not ok and "format version" in msg
        assert sup.current_runtime().bundle.sha256 == old_sha

        new_dir = make_tiny_bundle(tmp_path / "new", image_size=48, threshold=0.3)
        config.write_text(yaml.safe_dump({**base, "model": {**base["model"], "path": str(new_dir)},
                                          "camera": {"fps": 7}}))
        ok, msg = sup.reload()
        assert ok and "loading in the background" in msg and "restart needed for: camera" in msg
        deadline = time.monotonic() + 10
        while sup.current_runtime().bundle.sha256 == old_sha and time.monotonic() < deadline:
            time.sleep(0.05)
        new_sha = sup.current_runtime().bundle.sha256
        assert new_sha != old_sha and rec.models[-1] == new_sha
        assert sup.cfg.camera.fps == CameraConfig().fps  # restart-only section kept its running value
        time.sleep(0.3)
    finally:
        sup.request_stop("test")
        t.join(20)
    # payload model follows the verdict's own generation: old, then new, never interleaved
    shas = [m["sha256"] for m in sup.publisher.models]
    switch = shas.index(new_sha)
    assert set(shas[:switch]) == {old_sha} and set(shas[switch:]) == {new_sha}
    assert sup.publisher.verdicts[-1].threshold == 0.3


def test_model_that_fails_to_load_keeps_the_running_one_and_can_be_retried(tmp_path, model_dir):
    config = tmp_path / "station.yaml"
    base = {"station": {"line": "l1", "name": "st1"}, "model": {"path": str(model_dir), "warmup_runs": 0}, "outbox": {"path": str(tmp_path / "o.sqlite")},
            "archive": {"enabled": False, "path": str(tmp_path / "archive")}, "health": {"enabled": False}}
    config.write_text(yaml.safe_dump(base))
    engine = NumpyEngine()
    attempts = []

    def engine_factory(cfg, bundle):
        attempts.append(bundle.image_size)
        if bundle.image_size == 40:
            raise RuntimeError("CUDA out of memory (simulated)")
        return engine

    cfg = Config.model_validate(base)
    sup = Supervisor(cfg, config_path=config, source_factory=lambda c, on_state: ListSource([grey()] * 1000, interval_s=0.005),
                     publisher_factory=FakePublisher, engine_factory=engine_factory)
    sup.start()
    t = threading.Thread(target=sup.run)
    t.start()
    try:
        old_sha = sup.current_runtime().bundle.sha256
        bad = make_tiny_bundle(tmp_path / "bad", image_size=40)
        config.write_text(yaml.safe_dump({**base, "model": {**base["model"], "path": str(bad)}}))
        ok, _ = sup.reload()
        assert ok  # accepted: the failure happens later, in the background
        deadline = time.monotonic() + 10
        while sup.status()["model_load"]["state"] != "failed" and time.monotonic() < deadline:
            time.sleep(0.05)
        st = sup.status()
        assert st["model_load"]["state"] == "failed" and "out of memory" in st["model_load"]["message"]
        assert st["model"]["sha256"] == old_sha and str(sup.cfg.model.path) == str(model_dir)
        n = len(sup.publisher.verdicts)
        time.sleep(0.3)
        assert len(sup.publisher.verdicts) > n  # still inspecting with the old model
        sup.reload()  # same file again: the load is retried, not skipped as "unchanged"
        deadline = time.monotonic() + 10
        while attempts.count(40) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert attempts.count(40) == 2
    finally:
        sup.request_stop("test")
        t.join(20)


def _running_on_grey_frames(base: dict, config, publisher_factory):
    """A supervisor on ``base`` (its file at ``config``, for reloads) inspecting grey frames with
    the numpy engine, started and running in a thread: (supervisor, thread)."""
    sup = Supervisor(Config.model_validate(base), config_path=config, publisher_factory=publisher_factory,
                     source_factory=lambda c, on_state: ListSource([grey()] * 2000, interval_s=0.005),
                     engine_factory=lambda c, b: NumpyEngine())
    sup.start()
    t = threading.Thread(target=sup.run)
    t.start()
    return sup, t


def test_reload_with_new_broker_replaces_publisher_on_same_outbox(tmp_path, model_dir):
    config = tmp_path / "station.yaml"
    base = {"station": {"line": "l1", "name": "st1"}, "model": {"path": str(model_dir), "warmup_runs": 0}, "outbox": {"path": str(tmp_path / "o.sqlite")},
            "archive": {"enabled": False, "path": str(tmp_path / "archive")}, "health": {"enabled": False}}
    config.write_text(yaml.safe_dump(base))
    built = []

    def publisher_factory(cfg, model_info, on_state, outbox=None, on_acked=None):
        if cfg.mqtt.port == 1:
            raise ValueError("mqtt.tls.ca_file: file not found (simulated)")
        pub = FakePublisher(cfg, model_info, on_state, outbox=outbox, on_acked=on_acked)
        built.append(pub)
        return pub

    sup, t = _running_on_grey_frames(base, config, publisher_factory)
    try:
        time.sleep(0.2)
        config.write_text(yaml.safe_dump({**base, "mqtt": {"port": 1}}))
        ok, msg = sup.reload()
        assert not ok and "simulated" in msg and sup.publisher is built[0] and not built[0].stopped
        config.write_text(yaml.safe_dump({**base, "mqtt": {"port": 1884}}))
        ok, msg = sup.reload()
        assert ok and "publisher" in msg
        first, second = built
        assert first.stopped and sup.publisher is second and second.outbox is first.outbox
        n = len(second.verdicts)
        time.sleep(0.3)
        assert len(second.verdicts) > n
    finally:
        sup.request_stop("test")
        t.join(20)
    ids = [v.frame_id for v in first.verdicts + second.verdicts]
    assert ids == [f"f{i}" for i in range(len(ids))]  # nothing lost or repeated across the handover


def test_reload_applies_threshold_roi_lighting_postprocess_archive_without_reopening_the_camera(tmp_path, model_dir):
    config = tmp_path / "station.yaml"
    base = {"station": {"line": "l1", "name": "st1"}, "model": {"path": str(model_dir), "warmup_runs": 0}, "outbox": {"path": str(tmp_path / "o.sqlite")},
            "postprocess": {"min_defect_area_px": 1},
            "archive": {"enabled": True, "path": str(tmp_path / "archive")}, "health": {"enabled": False}}
    config.write_text(yaml.safe_dump(base))
    opened = []

    class CountingSource(ListSource):
        def open(self):
            opened.append(time.monotonic())
            super().open()

    source = CountingSource([blotched() for _ in range(2000)], interval_s=0.005)
    engine = NumpyEngine()
    sup = Supervisor(Config.model_validate(base), config_path=config, publisher_factory=FakePublisher,
                     source_factory=lambda c, on_state: _wired(source, on_state), engine_factory=lambda c, b: engine)
    sup.start()
    t = threading.Thread(target=sup.run)
    t.start()
    try:
        time.sleep(0.2)
        first = sup.current_runtime()
        flat = tmp_path / "flat.png"  # flat_field is the lighting a station may add over a bundle trained without
        cv2.imwrite(str(flat), np.full((96, 128), 200, np.uint8))
        new = {**base, "model": {**base["model"], "threshold": 0.8},
               "preprocess": {"roi": [8, 4, 96, 80], "lighting": "flat_field", "flat_field_reference": str(flat)},
               "postprocess": {"min_defect_area_px": 5, "max_defects": 3},
               "archive": {**base["archive"], "max_mb": 10.0, "sample_ok_every": 2}}
        config.write_text(yaml.safe_dump(new))
        ok, msg = sup.reload()
        assert ok and "threshold 0.5 -> 0.8" in msg and "preprocess" in msg and "postprocess" in msg, msg
        rt = sup.current_runtime()
        assert rt.engine is first.engine and rt.bundle.sha256 == first.bundle.sha256  # no model reload
        assert rt.generation == first.generation + 1
        assert rt.preprocessor.roi == (8, 4, 96, 80) and rt.preprocessor.lighting == "flat_field"
        assert rt.regions.min_defect_area_px == 5 and rt.regions.max_defects == 3
        assert "archive: max_mb 2048.0 -> 10.0, sample_ok_every 0 -> 2" in msg, msg
        n = len(sup.publisher.verdicts)
        deadline = time.monotonic() + 10
        while not any(v.threshold == 0.8 for v in sup.publisher.verdicts[n:]) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert any(v.threshold == 0.8 for v in sup.publisher.verdicts[n:])
        assert len(opened) == 1 and not source._closed.is_set()  # the camera never restarted
    finally:
        sup.request_stop("test")
        t.join(20)
    ids = [v.frame_id for v in sup.publisher.verdicts]
    assert ids == [f"f{i}" for i in range(len(ids))]  # nothing lost or repeated across the reload


def test_a_keep_aspect_model_finds_the_defect_where_it_is_in_a_tall_frame(tmp_path):
    # a 128×32 input (height×width) for 480×120 frames: the verdict must place the defect in frame
    # pixels with each axis's own scale
    model = make_tiny_bundle(tmp_path / "tall", image_size=64, threshold=0.5, input_shape=(128, 32))
    frame = grey(shape=(480, 120))
    frame[300:330, 40:80] = 255  # 40 wide × 30 high, at x 40, y 300
    sup = make_supervisor(tmp_path, model, ListSource([frame, grey(shape=(480, 120))]), NumpyEngine(),
                          camera={"expect": {"min_width": 16, "min_height": 16}})
    assert run_to_end(sup) == 0
    bad, good = sup.publisher.verdicts
    assert (bad.verdict, good.verdict) == ("NG", "OK")
    (defect,) = bad.defects
    # within one map pixel (3.75 frame pixels on each axis) of the true box and centre
    x, y, w, h = defect.bbox
    assert abs(x - 40) <= 4 and abs(y - 300) <= 4 and abs(w - 40) <= 8 and abs(h - 30) <= 8
    cx, cy = defect.centroid
    assert abs(cx - 59.5) <= 4 and abs(cy - 314.5) <= 4


def test_reload_onto_a_taken_health_port_keeps_the_station_scrapable(tmp_path, model_dir):
    import socket
    import urllib.request

    from edge_inspector.health.server import HealthOps

    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    taken = blocker.getsockname()[1]
    config = tmp_path / "station.yaml"
    base = {"station": {"line": "l1", "name": "st1"}, "model": {"path": str(model_dir), "warmup_runs": 0},
            "outbox": {"path": str(tmp_path / "o.sqlite")}, "archive": {"enabled": False, "path": str(tmp_path / "archive")},
            "health": {"enabled": True, "port": 0}}  # 0: a port the OS picks
    config.write_text(yaml.safe_dump(base))
    sup, t = _running_on_grey_frames(base, config, FakePublisher)
    try:
        port = next(c for c in sup.ops if isinstance(c, HealthOps)).server.port
        config.write_text(yaml.safe_dump({**base, "health": {"enabled": True, "port": taken}}))
        ok, msg = sup.reload()
        # the rest of the reload applies; the health part names the clash and where it still serves
        assert f"health.port={taken}" in msg and "already in use" in msg and f"still serving http://127.0.0.1:{port}" in msg
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            assert response.status == 200
    finally:
        sup.request_stop("test")
        t.join(20)
        blocker.close()
