"""The demo's pieces: synthetic parts generator, embedded broker, result formatting/scoring."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_inspector.demo import synthetic
from edge_inspector.demo.broker import AmqttBroker, MosquittoBroker, amqtt_available, mosquitto_binary, start_broker
from edge_inspector.demo.runner import Frame, Received, _frame_for, format_result, station_config, summarise


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*.png"))}


def test_generator_is_deterministic_and_mvtec_layout(tmp_path):
    a = synthetic.generate_dataset(tmp_path / "a", n_train=3, n_test_good=2, n_test_scratch=2, n_test_dent=2, size=96, seed=7)
    synthetic.generate_dataset(tmp_path / "b", n_train=3, n_test_good=2, n_test_scratch=2, n_test_dent=2, size=96, seed=7)
    c = synthetic.generate_dataset(tmp_path / "c", n_train=3, n_test_good=2, n_test_scratch=2, n_test_dent=2, size=96, seed=8)
    da, db, dc = _digest(tmp_path / "a"), _digest(tmp_path / "b"), _digest(tmp_path / "c")
    assert da == db
    assert da != dc
    root = tmp_path / "a"
    assert len(list((root / "train" / "good").glob("*.png"))) == 3
    for kind in ("good", "scratch", "dent"):
        assert len(list((root / "test" / kind).glob("*.png"))) == 2
    assert not (root / "ground_truth" / "good").exists()
    for kind in ("scratch", "dent"):
        for img in (root / "test" / kind).glob("*.png"):
            assert (root / "ground_truth" / kind / f"{img.stem}_mask.png").is_file()
    assert a.counts == {"train/good": 3, "test/good": 2, "test/scratch": 2, "test/dent": 2}
    assert json.loads((root / "dataset.json").read_text())["counts"] == a.counts


def test_more_images_do_not_change_existing_ones(tmp_path):
    synthetic.generate_dataset(tmp_path / "small", n_train=2, n_test_good=1, n_test_scratch=1, n_test_dent=1, size=96)
    synthetic.generate_dataset(tmp_path / "big", n_train=4, n_test_good=3, n_test_scratch=3, n_test_dent=3, size=96)
    small, big = _digest(tmp_path / "small"), _digest(tmp_path / "big")
    assert all(big[k] == v for k, v in small.items())


@pytest.mark.parametrize("defect", ["scratch", "dent"])
def test_masks_match_the_defect(defect):
    """The mask covers exactly where the defective image differs from the same part without it."""
    for i in range(6):
        rng_good = synthetic._rng(3, "test", defect, i)
        rng_bad = synthetic._rng(3, "test", defect, i)
        # same stream up to the defect: render the good part with the defect stream, then compare
        part = synthetic.render_part(rng_bad, 128, defect)
        img, geom, light = synthetic._render_good(rng_good, 128)
        assert part.mask is not None and part.mask.dtype == np.uint8
        m = part.mask > 0
        assert 6 <= m.sum() <= 0.05 * m.size  # a small defect, not empty
        # the defect lies on the metal part, not on the belt
        assert (m & synthetic._on_metal(128, geom, margin=0)).sum() == m.sum()
        ref = np.clip(np.round(img), 0, 255)
        diff = np.abs(part.image.astype(np.float32) - ref)
        # strong change inside the mask, only sensor noise outside
        assert np.percentile(diff[m], 90) > 20
        assert np.percentile(diff[~m], 99) < 12
        x, y, w, h = part.bbox
        ys, xs = np.nonzero(m)
        assert (x, y, x + w - 1, y + h - 1) == (xs.min(), ys.min(), xs.max(), ys.max())


def test_good_parts_have_no_mask_and_vary():
    a = synthetic.render_part(synthetic._rng(0, "train", "good", 0), 128)
    b = synthetic.render_part(synthetic._rng(0, "train", "good", 1), 128)
    assert a.mask is None and a.bbox is None
    assert a.image.shape == (128, 128) and a.image.dtype == np.uint8
    assert np.abs(a.image.astype(int) - b.image.astype(int)).mean() > 2  # jitter, lighting, texture


def test_written_masks_are_binary_and_match_images(tmp_path):
    info = synthetic.generate_dataset(tmp_path, n_train=1, n_test_good=1, n_test_scratch=2, n_test_dent=2, size=96, seed=1)
    for item in info.test_items:
        img = cv2.imread(str(tmp_path / item["file"]), cv2.IMREAD_UNCHANGED)
        assert img.shape[:2] == (96, 96)
        if item["type"] == "good":
            assert item["mask"] is None
            continue
        mask = cv2.imread(str(tmp_path / item["mask"]), cv2.IMREAD_GRAYSCALE)
        assert set(np.unique(mask)) <= {0, 255} and mask.max() == 255
        x, y, w, h = item["bbox"]
        assert mask[y : y + h, x : x + w].max() == 255


def test_split_test_counts():
    assert synthetic.split_test_counts(40) == (20, 10, 10)
    assert synthetic.split_test_counts(5) == (3, 1, 1)
    assert sum(synthetic.split_test_counts(7)) == 7
    assert synthetic.split_test_counts(1) == (1, 0, 0)


# ------------------------------------------------------------------------------------ brokers


def _relay(broker) -> list[bytes]:
    import paho.mqtt.client as mqtt

    proto = mqtt.MQTTv5 if broker.protocol == "5" else mqtt.MQTTv311
    got, msgs = threading.Event(), []
    subscribed = threading.Event()
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="t-sub", protocol=proto)
    sub.on_message = lambda c, u, m: (msgs.append(m.payload), got.set())
    sub.on_subscribe = lambda *a: subscribed.set()
    sub.connect(broker.host, broker.port)
    sub.loop_start()
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="t-pub", protocol=proto)
    try:
        sub.subscribe("demo/test", qos=1)
        assert subscribed.wait(5)
        pub.connect(broker.host, broker.port)
        pub.loop_start()
        pub.publish("demo/test", b"hello", qos=1).wait_for_publish(5)
        assert got.wait(5)
    finally:
        pub.loop_stop()
        pub.disconnect()
        sub.loop_stop()
        sub.disconnect()
    return msgs


@pytest.mark.mosquitto
def test_mosquitto_broker_relays_and_stops(tmp_path):
    if not mosquitto_binary():
        pytest.skip("mosquitto is not installed")
    broker = MosquittoBroker(tmp_path / "broker").start()
    try:
        assert broker.protocol == "5"
        assert _relay(broker) == [b"hello"]
        if __import__("os").geteuid() == 0:
            assert "user root" in broker.conf.read_text()
    finally:
        broker.stop()
    assert broker.proc is None


def test_amqtt_fallback_relays_and_stops():
    if not amqtt_available():
        pytest.skip("amqtt is not installed (pip install amqtt)")
    import socket

    with AmqttBroker().start() as broker:
        assert broker.protocol == "3.1.1"
        assert _relay(broker) == [b"hello"]
        port = broker.port
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()


def test_start_broker_prefers_mosquitto(tmp_path):
    if not (mosquitto_binary() or amqtt_available()):
        pytest.skip("no broker available")
    with start_broker(tmp_path) as broker:
        assert broker.kind == ("mosquitto" if mosquitto_binary() else "amqtt (in-process)")


# ----------------------------------------------------------------------- config and scoring


def test_generated_station_config_is_valid(tmp_path):
    import yaml

    from edge_inspector.config.loader import load_config

    class B:
        host, port, protocol = "127.0.0.1", 1884, "3.1.1"

    for camera in ("pylon", "folder"):
        cfg = station_config(tmp_path, camera, tmp_path / "line", tmp_path / "model", B(), 10)
        path = tmp_path / f"{camera}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        loaded = load_config(path)
        assert loaded.camera.type == camera and loaded.mqtt.protocol == "3.1.1" and loaded.mqtt.port == 1884


def _frames():
    return [Frame(1, "f0001.png", "good", None), Frame(2, "f0002.png", "scratch", [10, 10, 20, 4]), Frame(3, "f0003.png", "dent", [50, 50, 8, 8])]


def test_frame_matching_folder_pylon_and_order():
    frames = _frames()
    assert _frame_for({"frame_id": "f0002-7"}, frames, 0).truth == "scratch"
    assert _frame_for({"frame_id": "0815-0000-3"}, frames, 0).truth == "dent"
    assert _frame_for({"frame_id": "0815-0000-4"}, frames, 0).truth == "good"  # emulator looped
    assert _frame_for({"frame_id": "x"}, frames, 1).truth == "scratch"
    assert _frame_for({"frame_id": "s29933715-f0002-7"}, frames, 0).truth == "scratch"  # with the session part
    assert _frame_for({"frame_id": "s12-0815-0000-3"}, frames, 0).truth == "dent"


def test_summary_counts_catches_false_alarms_and_location():
    frames = _frames()
    now = time.time()
    ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now - 0.02)) + f".{int(((now - 0.02) % 1) * 1e6):06d}+00:00"
    rs = [
        Received({"seq": 1, "frame_id": "f0001-1", "verdict": "NG", "ts": ts, "defects": []}, now),
        Received({"seq": 2, "frame_id": "f0002-2", "verdict": "NG", "ts": ts, "defects": [{"bbox": [12, 9, 5, 5]}]}, now),
        Received({"seq": 3, "frame_id": "f0003-3", "verdict": "OK", "ts": ts, "defects": []}, now),
    ]
    s = summarise(rs, frames)
    assert (s["parts_inspected"], s["defective"], s["good"]) == (3, 2, 1)
    assert (s["caught"], s["located"], s["false_alarms"]) == (1, 1, 1)
    assert s["by_type"]["dent"] == {"n": 1, "ng": 0}
    assert 5 < s["latency_ms_median"] < 1000
    line = format_result({**rs[1].payload, "score": 3.2, "threshold": 2.3}, frames[1])
    assert "NG" in line and "x=12 y=9 w=5 h=5" in line and "caught" in line


# --------------------------------------------------------------------------- the whole demo


@pytest.mark.slow
def test_demo_end_to_end_small(tmp_path, capsys):
    """Reduced demo: 16 training parts, 4 test parts, 128 px model, folder camera, any broker.
    (`make demo` runs the full-size one with the pylon emulator.)"""
    pytest.importorskip("torch")
    if not (mosquitto_binary() or amqtt_available()):
        pytest.skip("no broker available")
    from edge_inspector.demo.runner import run_demo

    t0 = time.monotonic()
    s = run_demo(tmp_path / "demo", parts=4, camera="folder", n_train=16, image_px=128, model_px=128, daemon_timeout_s=90)
    out = capsys.readouterr().out
    assert s["parts_inspected"] == s["parts_expected"] == 4
    assert s["errors"] == 0
    assert s["camera"] == "folder"
    assert out.count("seq=") == 4 and "truth=" in out
    assert (tmp_path / "demo" / "station.yaml").is_file() and (tmp_path / "demo" / "summary.json").is_file()
    assert time.monotonic() - t0 < 120


def _tiny_train(monkeypatch):
    """Replace training by the hand-built tiny ONNX bundle: exercises the runner without torch."""
    from edge_inspector.demo import runner
    from tests.helpers.tiny_bundle import make_tiny_bundle

    monkeypatch.setattr(runner, "_train", lambda data_dir, model_dir, model_px=64, lighting=None:
                        make_tiny_bundle(model_dir, image_size=64, threshold=0.5))


def test_demo_runner_with_tiny_model(tmp_path, monkeypatch, capsys):
    """The runner's broker → daemon → MES path with a hand-built model (seconds, no torch)."""
    if not (mosquitto_binary() or amqtt_available()):
        pytest.skip("no broker available")
    from edge_inspector.demo.runner import run_demo

    _tiny_train(monkeypatch)
    s = run_demo(tmp_path / "demo", parts=3, camera="folder", n_train=2, image_px=96, daemon_timeout_s=60)
    out = capsys.readouterr().out
    assert s["parts_inspected"] == 3 and s["errors"] == 0
    assert out.count("seq=") == 3


def test_demo_prints_the_operator_page_which_shows_the_parts_as_they_pass(tmp_path, monkeypatch, capsys):
    if not (mosquitto_binary() or amqtt_available()):
        pytest.skip("no broker available")
    from edge_inspector.demo.runner import print_summary, run_demo

    _tiny_train(monkeypatch)
    s = run_demo(tmp_path / "demo", parts=10, camera="folder", n_train=2, image_px=96, daemon_timeout_s=60)
    print_summary(s, tmp_path / "demo", kept=True)
    out = capsys.readouterr().out
    url = s["page"]["url"]
    assert f"operator page: {url}" in out and url.startswith("http://127.0.0.1:")
    # the demo itself polled the page while the parts passed (as a browser would)
    assert 1 <= s["page"]["parts_shown"] <= 10
    assert f"operator page   : {url} showed {s['page']['parts_shown']} part(s)" in out


def test_demo_reports_a_failing_daemon_in_one_line(tmp_path, monkeypatch, capsys):
    if not (mosquitto_binary() or amqtt_available()):
        pytest.skip("no broker available")
    import argparse
    import sys

    from edge_inspector.demo import runner

    _tiny_train(monkeypatch)
    monkeypatch.setattr(runner, "_daemon_command", lambda cfg, n: [sys.executable, "-c", "import sys; print('camera exploded'); sys.exit(3)"])
    rc = runner.cli_demo(argparse.Namespace(workdir=str(tmp_path / "w"), parts=2, camera="folder", log_level="WARNING"))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1
    assert len(err) == 1 and "daemon exited with code 3" in err[0] and "camera exploded" in err[0]


def test_demo_lighting_option_reaches_training(tmp_path, monkeypatch):
    """edge-inspector demo --lighting X trains the demo model with X (the comparison
    docs/benchmarks.md cites); without it, train's default."""
    from edge_inspector.cli import build_parser
    from edge_inspector.demo import runner

    seen = []

    def fake_train(data_dir, model_dir, model_px=64, lighting=None):
        seen.append(lighting)
        raise runner.DemoError("stop after training")

    monkeypatch.setattr(runner, "_train", fake_train)
    for argv, expected in ((["demo", "--lighting", "match_hist"], "match_hist"), (["demo"], None)):
        args = build_parser().parse_args([*argv, "--workdir", str(tmp_path / "w"), "--camera", "folder"])
        args.log_level = "WARNING"
        assert runner.cli_demo(args) == 1
        assert seen[-1] == expected


def test_demo_rejects_bad_broker_choice(tmp_path, monkeypatch, capsys):
    import argparse

    from edge_inspector.demo import runner

    monkeypatch.setenv("EDGE_INSPECTOR_DEMO_BROKER", "rabbit")
    rc = runner.cli_demo(argparse.Namespace(workdir=str(tmp_path / "w"), parts=2, camera="folder", log_level="WARNING"))
    assert rc == 1
    assert "EDGE_INSPECTOR_DEMO_BROKER=rabbit" in capsys.readouterr().err


def test_pylon_probe_reports_missing_pypylon(monkeypatch):
    import importlib.util

    from edge_inspector.demo.runner import pylon_emulator_available

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pypylon" else real(name, *a))
    assert pylon_emulator_available() == (False, "pypylon is not installed")
