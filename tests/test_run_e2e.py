"""`edge-inspector run` end to end: folder camera → tiny ONNX bundle → real mosquitto → subscriber.

Each test starts the daemon as a subprocess, exactly as systemd would (so signals, exit codes,
stderr lines and imports are the real ones).
"""

from __future__ import annotations

import json
import re
import signal

import cv2
import numpy as np
import pytest

from edge_inspector.inference.bundle import load_bundle
from edge_inspector.publish.payload import parse_plc, parse_result
from tests.helpers.station import Subscriber, assert_retained_offline, fatal_message, run_cli, run_to_end, start_daemon, station_config, stop_daemon, write_config, write_parts, frame_stem
from tests.helpers.tiny_bundle import make_tiny_bundle

TS_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


@pytest.fixture
def model_dir(tmp_path):
    return make_tiny_bundle(tmp_path / "model", image_size=64, threshold=0.5)


def test_folder_to_broker_every_contract_field(tmp_path, mosquitto, model_dir):
    n = 12
    images = tmp_path / "images"
    files = write_parts(images, n)  # 128×96; parts 2, 5, 8, 11 carry a blotch at x 40..55, y 30..41
    # An ROI with a non-integer scale (112×88 → 64×64) proves defects come back in original pixels.
    cfg = station_config(tmp_path, mosquitto.port, model_dir, images, preprocess={"roi": [8, 4, 112, 88]})
    config = write_config(tmp_path / "station.yaml", cfg)
    sha = load_bundle(model_dir).sha256
    sub = Subscriber(mosquitto.port)
    try:
        run_to_end(config)
        sub.wait_for(lambda: len(sub.results_by_seq()) >= n and len(sub.payloads("plc")) >= n, 10, "all results")
        results = [parse_result(p) for p, _ in sub.raw("result")]
        by_seq = {r["seq"]: r for r in results}
        seqs = sorted(by_seq)
        assert seqs == list(range(seqs[0], seqs[0] + n)), seqs  # strictly increasing, no gap
        ordered = [by_seq[s] for s in seqs]
        assert [frame_stem(r) for r in ordered] == [f.stem for f in files]  # grab order
        for i, r in enumerate(ordered):
            assert r["schema"] == "edge-inspector.result/1"
            assert TS_RE.match(r["ts"])
            assert r["station"] == {"line": "l1", "name": "st1"}
            assert r["model"] == {"name": "tiny-default", "sha256": sha}
            assert r["threshold"] == 0.5
            assert "error" not in r
            if i % 3 == 2:
                assert r["verdict"] == "NG" and r["score"] >= 0.99
                assert len(r["defects"]) == 1
                d = r["defects"][0]
                x, y, w, h = d["bbox"]
                # true blotch: x 40..55, y 30..41 (16×12); resampling may blur it by a pixel or two
                assert abs(x - 40) <= 2 and abs(y - 30) <= 2 and abs(w - 16) <= 3 and abs(h - 12) <= 3, d
                assert abs(d["centroid"][0] - 47.5) <= 1.5 and abs(d["centroid"][1] - 35.5) <= 1.5
                assert 150 <= d["area_px"] <= 260 and d["score"] >= 0.99
            else:
                assert r["verdict"] == "OK" and r["score"] < 0.5 and r["defects"] == []

        plcs = {p["seq"]: p for p in (parse_plc(raw) for raw, _ in sub.raw("plc"))}
        assert sorted(plcs) == seqs
        for r in ordered:
            p = plcs[r["seq"]]
            assert p["res"] == {"OK": 1, "NG": 2, "ERROR": 3}[r["verdict"]]
            assert p["score_milli"] == round(r["score"] * 1000)
            assert p["n_def"] == len(r["defects"])
            if r["defects"]:
                assert (p["x0"], p["y0"]) == tuple(round(c) for c in r["defects"][0]["centroid"])
        _, props = sub.raw("plc")[0]
        assert getattr(props, "MessageExpiryInterval", None) is not None  # stale PLC messages expire
    finally:
        sub.close()
    # the retained status says offline after a clean exit
    assert_retained_offline(mosquitto.port)


def _write_bad_frames(folder):
    """Good parts interleaved with every kind of broken file a camera folder can hold."""
    write_parts(folder, 6, defect_every=0)
    good = (folder / "part_0000.png").read_bytes()
    (folder / "part_0001a_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    (folder / "part_0002a_truncated.png").write_bytes(good[: len(good) // 2])
    (folder / "part_0003a_empty.png").write_bytes(b"")
    cv2.imwrite(str(folder / "part_0004a_oddsize.png"), np.full((3, 5), 127, np.uint8))  # no frame of this camera
    return {"corrupt", "truncated", "empty", "oddsize"}


def test_bad_frames_become_error_verdicts_and_run_continues(tmp_path, mosquitto, model_dir):
    images = tmp_path / "images"
    bad_kinds = _write_bad_frames(images)
    cfg = station_config(tmp_path, mosquitto.port, model_dir, images, preprocess={"roi": [8, 4, 112, 88]})
    config = write_config(tmp_path / "station.yaml", cfg)
    sub = Subscriber(mosquitto.port)
    try:
        run_to_end(config)
        sub.wait_for(lambda: len(sub.results_by_seq()) >= 10, 10, "10 results")
        results = [parse_result(p) for p, _ in sub.raw("result")]
        errors = {frame_stem(r).split("_")[-1]: r for r in results if r["verdict"] == "ERROR"}
        assert set(errors) == bad_kinds
        for kind, r in errors.items():
            assert r["score"] is None and r["defects"] == [] and r["error"]
            assert "\n" not in r["error"]
        assert "narrower than camera.expect.min_width" in errors["oddsize"]["error"] and "truncated" in errors["truncated"]["error"]
        assert sum(r["verdict"] == "OK" for r in results) == 6  # the good parts around them still pass
        assert [p["res"] for p in sub.payloads("plc")].count(3) == 4
    finally:
        sub.close()


@pytest.mark.parametrize(
    "mutate, expect",
    [
        (lambda c, t: c["camera"].update(fps=-1), r"camera\.fps"),
        (lambda c, t: c["camera"].update(colour="red"), r"camera\.colour: unknown key"),
        (lambda c, t: c["model"].update(path=str(t / "no-such-model")), r"no-such-model.*not found"),
        (lambda c, t: (t / "model" / "model.json").write_text("{broken"), r"model\.json.*corrupt JSON"),
        (lambda c, t: c["camera"].update(path=str(t / "nowhere")), r"camera\.path=.*nowhere"),
        (lambda c, t: c["preprocess"].update(lighting="match_train"), r"match_train"),
        (lambda c, t: c["mqtt"].update(password_env="EI_TEST_UNSET_PASSWORD", username="u"), r"EI_TEST_UNSET_PASSWORD"),
        # a file where the outbox folder should be (works as root too, unlike a permission test)
        (lambda c, t: ((t / "not-a-dir").write_text("x"), c["outbox"].update(path=str(t / "not-a-dir" / "o.sqlite"))),
         r"outbox\.path=.*not-a-dir.*cannot create the outbox"),
    ],
    ids=["negative-fps", "unknown-key", "missing-model", "corrupt-model-json", "missing-camera-folder",
         "lighting-needs-train-stats", "password-env-unset", "outbox-path-unusable"],
)
def test_invalid_config_one_line_exit_2(tmp_path, model_dir, mutate, expect):
    images = tmp_path / "images"
    write_parts(images, 2)
    cfg = station_config(tmp_path, 1, model_dir, images, preprocess={})
    mutate(cfg, tmp_path)
    config = write_config(tmp_path / "bad.yaml", cfg)
    result = run_cli("run", "--config", str(config), timeout=60)
    lines = [ln for ln in result.stderr.splitlines() if "edge-inspector run:" in ln]
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(lines) == 1 and re.search(expect, fatal_message(result.stderr)), result.stderr[-2000:]
    assert "Traceback" not in result.stderr


def test_bad_yaml_and_missing_file_exit_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("camera: [unclosed\n")
    for path in (bad, tmp_path / "absent.yaml"):
        result = run_cli("run", "--config", str(path))
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1, result.stderr
        assert fatal_message(result.stderr).startswith("edge-inspector run: error: ") and str(path) in lines[0]


def test_sigterm_is_clean_and_status_retained_offline(tmp_path, mosquitto, model_dir):
    images = tmp_path / "images"
    write_parts(images, 5)
    cfg = station_config(tmp_path, mosquitto.port, model_dir, images, camera={"fps": 20.0, "loop": True})
    config = write_config(tmp_path / "station.yaml", cfg)
    sub = Subscriber(mosquitto.port)
    proc = None
    try:
        proc = start_daemon(config)
        sub.wait_for(lambda: len(sub.results_by_seq()) >= 10, 30, "10 results")
        sub.wait_for(lambda: any(s["online"] for s in sub.payloads("status")), 5, "online status")
        rc = stop_daemon(proc, signal.SIGTERM)
        err = proc.stderr.read().decode()
        assert rc == 0, err[-2000:]
        events = [json.loads(ln) for ln in err.splitlines() if ln.startswith("{")]
        stopped = [e for e in events if e.get("event") == "stopped"][-1]
        assert stopped["reason"] == "SIGTERM" and stopped["clean"] is True
        # every frame that entered the pipeline was published: nothing left in flight
        assert stopped["frames_in"] == stopped["frames_out"] + stopped["frames_dropped"]
        # the daemon had all PUBACKs before it exited; the subscriber's copies may still be on
        # their way on a loaded machine, so wait for them rather than sleep a fixed time
        sub.wait_for(lambda: len(sub.results_by_seq()) >= stopped["frames_out"], 10, "every published result")
        seqs = sorted(sub.results_by_seq())
        assert len(seqs) == stopped["frames_out"] and seqs == list(range(seqs[0], seqs[0] + len(seqs)))
        sub.wait_for(lambda: sub.payloads("status")[-1]["online"] is False, 10, "offline status")
    finally:
        sub.close()
        if proc is not None and proc.poll() is None:
            stop_daemon(proc, signal.SIGKILL)
    assert_retained_offline(mosquitto.port)


def test_run_never_imports_torch(tmp_path, model_dir):
    """The station runtime must not load torch (RAM, start time, and it is not installed there)."""
    images = tmp_path / "images"
    write_parts(images, 2)
    cfg = station_config(tmp_path, 1, model_dir, images)  # no broker: results stay in the outbox
    config = write_config(tmp_path / "station.yaml", cfg)
    code = (
        "import sys\n"
        "from edge_inspector.cli import main\n"
        f"rc = main(['run', '--config', {str(config)!r}, '--set', 'pipeline.shutdown_timeout_s=0.5'])\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'timm')\n"
        "               or m.startswith('edge_inspector.training'))\n"
        "print('RC', rc, 'HEAVY', heavy)\n"
    )
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    # exit 1: with no broker both results remain undelivered in the outbox (docs/operations.md)
    assert "RC 1 HEAVY []" in out.stdout, out.stdout + out.stderr[-2000:]
