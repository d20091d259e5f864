"""Issue 8, classes 1 and 3, against the real daemon and a real mosquitto: what the MES receives
(verdicts, error text, seq contiguity) and what health says when bad values and odd frames
arrive. Each test starts ``edge-inspector run`` as a subprocess, as systemd would."""

from __future__ import annotations

import json
import signal

import cv2
import numpy as np
import pytest

from edge_inspector.publish.payload import parse_plc, parse_result
from tests.helpers.broker import free_port
from tests.helpers.bad_inputs import make_nan_bundle, odd_frames
from tests.helpers.faults import http_get
from tests.helpers.station import Subscriber, fatal_message, run_cli, run_to_end, start_daemon, station_config, stop_daemon, write_config, write_parts, frame_stem
from tests.helpers.tiny_bundle import make_tiny_bundle

ODD_REASONS = {  # odd frame kind → what its ERROR says
    "tiny": "1×1 frame is narrower than camera.expect.min_width",
    "sliver": "5000×1 frame is wider than camera.expect.max_width",
    "huge": "8000×8000 PNG frame is larger than the 40 MP limit; not decoded (camera.expect.max_megapixels)",
    "alpha": "has 4 channels, camera.expect.channels allows [1, 3]",
}


@pytest.fixture
def model_dir(tmp_path):
    return make_tiny_bundle(tmp_path / "model", image_size=64, threshold=0.5)


def _contiguous(results: list[dict]) -> list[dict]:
    by_seq = {r["seq"]: r for r in results}
    seqs = sorted(by_seq)
    assert len(results) == len(seqs), "a seq arrived twice"
    assert seqs == list(range(seqs[0], seqs[-1] + 1)), f"seq gap: {seqs}"
    return [by_seq[s] for s in seqs]


def _json_or_none(raw: bytes):
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        return None


def test_odd_frames_become_one_error_each_and_the_station_stays_healthy(tmp_path, mosquitto, model_dir):
    images = tmp_path / "images"
    write_parts(images, 4, defect_every=2)  # part_0000 OK, part_0001 NG, ...
    odd = odd_frames(images, np.full((96, 128), 127, np.uint8))
    ok, buf = cv2.imencode(".jpg", np.full((96, 128), 127, np.uint8))
    (images / "part_0002b_jpegnamedpng.png").write_bytes(buf.tobytes())  # valid JPEG, wrong name: decodes
    files = sorted(p.stem for p in images.iterdir())
    health_port = free_port()
    cfg = station_config(tmp_path, mosquitto.port, model_dir, images, camera={"fps": 30.0, "loop": True},
                         health={"enabled": True, "port": health_port})
    config = write_config(tmp_path / "station.yaml", cfg)
    sub = Subscriber(mosquitto.port)
    proc = start_daemon(config, log_path=tmp_path / "daemon.log")
    try:
        sub.wait_for(lambda: len(sub.results_by_seq()) >= 2 * len(files), 60, "two passes over the folder")
        status, body = http_get(health_port, "/healthz")
        assert status == 200, body  # odd frames are the parts' fault, not the station's
        _, metrics = http_get(health_port, "/metrics")
        errors = [float(line.split()[-1]) for line in metrics.splitlines()
                  if line.startswith('edge_inspector_verdicts_total{verdict="ERROR"}')]
        assert errors and errors[0] >= len(odd), metrics[-2000:]
        assert proc.poll() is None, "the daemon stopped"
        assert stop_daemon(proc) == 0
    finally:
        if proc.poll() is None:
            stop_daemon(proc, signal.SIGKILL)
        sub.close()

    ordered = _contiguous([parse_result(raw) for raw, _ in sub.raw("result")])
    stems = [frame_stem(r) for r in ordered]
    assert stems == [files[i % len(files)] for i in range(len(stems))], "a frame was lost, doubled or reordered"
    for r in ordered:
        stem = frame_stem(r)
        kind = stem.split("_")[-1]
        if kind in ODD_REASONS:
            assert r["verdict"] == "ERROR" and r["score"] is None and r["defects"] == [], r
            assert ODD_REASONS[kind] in r["error"] and "\n" not in r["error"], r["error"]
            assert r["error"].startswith(str(odd[kind])), r["error"]  # names the file
        elif stem == "part_0001" or stem == "part_0003":
            assert r["verdict"] == "NG", r
        else:
            assert r["verdict"] == "OK", r  # good parts, the JPEG named .png included
    plcs = {p["seq"]: p for p in (parse_plc(raw) for raw, _ in sub.raw("plc"))}
    for r in ordered:
        if r["seq"] in plcs:
            assert plcs[r["seq"]]["res"] == {"OK": 1, "NG": 2, "ERROR": 3}[r["verdict"]]


@pytest.mark.parametrize("where", ["file", "set"])
@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf", "0", "-1"])
def test_run_refuses_a_threshold_that_cannot_decide(tmp_path, model_dir, where, value):
    cfg = station_config(tmp_path, 1, model_dir, tmp_path / "images")
    config = write_config(tmp_path / "station.yaml", cfg)
    extra = ["--set", f"model.threshold={value}"]
    if where == "file":
        config.write_text(config.read_text().replace("model:\n", f"model:\n  threshold: {value}\n", 1))
        extra = []
    r = run_cli("run", "--config", str(config), *extra)
    assert r.returncode == 2, r.stderr[-2000:]
    last = fatal_message(r.stderr)
    assert last.startswith("edge-inspector run: error: ") and "model.threshold" in last, last
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("threshold", ["NaN", "Infinity"])
def test_run_refuses_a_bundle_whose_threshold_is_not_finite(tmp_path, model_dir, threshold):
    meta = model_dir / "model.json"
    meta.write_text(meta.read_text().replace('"threshold": 0.5', f'"threshold": {threshold}'))
    config = write_config(tmp_path / "station.yaml", station_config(tmp_path, 1, model_dir, tmp_path / "images"))
    r = run_cli("run", "--config", str(config))
    assert r.returncode == 2, r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    assert "model.json: threshold must be a finite number" in last, last


def test_a_model_that_outputs_nan_gives_error_never_ok(tmp_path, mosquitto):
    model = make_nan_bundle(tmp_path / "model")
    images = tmp_path / "images"
    write_parts(images, 6)
    config = write_config(tmp_path / "station.yaml", station_config(tmp_path, mosquitto.port, model, images))
    sub = Subscriber(mosquitto.port)
    try:
        run_to_end(config)
        sub.wait_for(lambda: len(sub.results_by_seq()) >= 6 and len(sub.payloads("plc")) >= 6, 10, "6 results")
    finally:
        sub.close()
    ordered = _contiguous([parse_result(raw) for raw, _ in sub.raw("result")])
    assert [r["verdict"] for r in ordered] == ["ERROR"] * 6
    assert all("non-finite score" in r["error"] and r["threshold"] is None for r in ordered)
    assert [p["res"] for p in sub.payloads("plc")] == [3] * 6


def test_bad_threshold_by_sighup_or_command_keeps_the_running_one(tmp_path, mosquitto, model_dir):
    images = tmp_path / "images"
    write_parts(images, 6)
    cfg = station_config(tmp_path, mosquitto.port, model_dir, images, camera={"fps": 25.0, "loop": True})
    config = write_config(tmp_path / "station.yaml", cfg)
    sub = Subscriber(mosquitto.port)
    proc = start_daemon(config, log_path=tmp_path / "daemon.log")
    count = lambda: len(sub.results_by_seq())  # noqa: E731
    replies = lambda: [p for p in map(_json_or_none, (raw for raw, _ in sub.raw("set-threshold")))  # noqa: E731
                       if isinstance(p, dict) and "ok" in p]  # the replies, not our own requests
    try:
        sub.wait_for(lambda: count() >= 3, 30, "first results")
        # SIGHUP with a NaN threshold in the file: rejected, one line on the status topic
        config.write_text(config.read_text().replace("model:\n", "model:\n  threshold: .nan\n", 1))
        proc.send_signal(signal.SIGHUP)
        sub.wait_for(lambda: any((s.get("last_reload") or {}).get("ok") is False for s in sub.payloads("status")), 10,
                     "rejected reload on the status topic")
        rejected = [s["last_reload"] for s in sub.payloads("status") if (s.get("last_reload") or {}).get("ok") is False][-1]
        assert "model.threshold: Input should be a finite number" in rejected["message"]
        assert "keeping the running one" in rejected["message"] and "\n" not in rejected["message"]

        # the same values over P/cmd/set-threshold (MQTT 3.1.1-style replies on P/reply/set-threshold)
        for i, payload in enumerate([b'{"id": "c0", "value": true}', b'{"id": "c1", "value": NaN}',
                                     b'{"id": "c2", "value": -1}', b'{"id": "c3", "value": ' + b"[" * 5000 + b"]" * 5000 + b"}"]):
            sub.client.publish("ei/l1/st1/cmd/set-threshold", payload, qos=1)
        sub.wait_for(lambda: len(replies()) >= 4, 10, "4 command replies")
        assert [r["ok"] for r in replies()] == [False] * 4
        assert [r.get("id") for r in replies()][:3] == ["c0", "c1", "c2"]
        mark = count()
        sub.wait_for(lambda: count() >= mark + 5, 20, "results after the refusals")
        assert stop_daemon(proc) == 0
    finally:
        if proc.poll() is None:
            stop_daemon(proc, signal.SIGKILL)
        sub.close()
    ordered = _contiguous([parse_result(raw) for raw, _ in sub.raw("result")])
    assert {r["threshold"] for r in ordered} == {0.5}  # never NaN (null), never true/-1
    assert all(r["verdict"] in ("OK", "NG") for r in ordered)
    status = [s for s in sub.payloads("status") if s.get("online")]
    assert status and all(s.get("threshold") == 0.5 for s in status if "threshold" in s)
