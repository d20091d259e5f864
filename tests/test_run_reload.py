"""SIGHUP reload in a running daemon: threshold change, a rejected config, then a new model
hot-swapped — the subscriber sees no lost or doubled seq and the new model's sha afterwards."""

from __future__ import annotations

import signal

import yaml

from edge_inspector.inference.bundle import load_bundle
from edge_inspector.publish.payload import parse_result
from tests.helpers.station import Subscriber, start_daemon, station_config, stop_daemon, write_config, write_parts
from tests.helpers.tiny_bundle import make_tiny_bundle


def test_sighup_threshold_then_model_swap(tmp_path, mosquitto):
    images = tmp_path / "images"
    write_parts(images, 9)  # every third part NG-worthy (score 1.0), the rest ≈ 0
    old_model = make_tiny_bundle(tmp_path / "model_a", image_size=64, threshold=0.5)
    new_model = make_tiny_bundle(tmp_path / "model_b", image_size=48, threshold=0.25)  # other size: new preprocess too
    old_sha, new_sha = load_bundle(old_model).sha256, load_bundle(new_model).sha256
    assert old_sha != new_sha
    cfg = station_config(tmp_path, mosquitto.port, old_model, images, camera={"fps": 25.0, "loop": True})
    config = write_config(tmp_path / "station.yaml", cfg)
    sub = Subscriber(mosquitto.port)
    proc = start_daemon(config, log_path=tmp_path / "daemon.log")
    try:
        count = lambda: len(sub.results_by_seq())  # noqa: E731
        sub.wait_for(lambda: count() >= 5, 30, "first results")

        cfg["model"]["threshold"] = 2.0  # nothing reaches 2.0: every part OK from now on
        write_config(config, cfg)
        proc.send_signal(signal.SIGHUP)
        sub.wait_for(lambda: any(r["threshold"] == 2.0 for r in sub.payloads("result")), 10, "threshold 2.0 in results")

        config.write_text(yaml.safe_dump({**cfg, "camera": {**cfg["camera"], "fps": -5}}))  # invalid
        proc.send_signal(signal.SIGHUP)
        sub.wait_for(lambda: any((s.get("last_reload") or {}).get("ok") is False for s in sub.payloads("status")), 10,
                     "rejected reload on the status topic")
        mark = count()
        sub.wait_for(lambda: count() >= mark + 5, 10, "results after the rejected reload")  # still inspecting

        cfg["model"] = {**cfg["model"], "path": str(new_model)}
        cfg["model"].pop("threshold")
        write_config(config, cfg)
        proc.send_signal(signal.SIGHUP)
        sub.wait_for(lambda: sum(r["model"]["sha256"] == new_sha for r in sub.payloads("result")) >= 10, 20,
                     "10 results from the new model")
        assert stop_daemon(proc) == 0
    finally:
        if proc.poll() is None:
            stop_daemon(proc, signal.SIGKILL)
        sub.close()

    results = [parse_result(raw) for raw, _ in sub.raw("result")]
    by_seq = {r["seq"]: r for r in results}
    seqs = sorted(by_seq)
    assert seqs == list(range(seqs[0], seqs[-1] + 1)), "seq gap across the reloads"
    assert len(results) == len(seqs), "a seq arrived twice"
    ordered = [by_seq[s] for s in seqs]
    # a frame preprocessed for the 64² model but scored by the 48² one would be an ERROR
    assert [r["error"] for r in ordered if r["verdict"] == "ERROR"] == []
    # phases in order: old model @0.5 → old model @2.0 → new model @0.25; never back
    phase = [(r["model"]["sha256"], r["threshold"]) for r in ordered]
    expected_order = [(old_sha, 0.5), (old_sha, 2.0), (new_sha, 0.25)]
    indices = [expected_order.index(p) for p in phase]
    assert indices == sorted(indices) and set(indices) == {0, 1, 2}, phase
    for r in ordered:
        if r["threshold"] == 2.0:
            assert r["verdict"] == "OK"
        if r["model"]["sha256"] == new_sha and r["score"] >= 0.25:
            assert r["verdict"] == "NG" and r["defects"]  # the blotch maps back from the 48×48 grid
            x, y, w, h = r["defects"][0]["bbox"]
            assert abs(x - 40) <= 3 and abs(y - 30) <= 3
    final_status = sub.payloads("status")
    assert any(s.get("model", {}).get("sha256") == new_sha and s["online"] for s in final_status)
