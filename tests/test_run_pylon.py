"""The daemon on pylon's camera emulator (PYLON_CAMEMU): the real pypylon acquisition path
through the whole pipeline to the broker. (PylonSource itself is tested in test_acquisition_pylon.)"""

from __future__ import annotations

import pytest

from edge_inspector.publish.payload import parse_result
from tests.helpers.station import Subscriber, start_daemon, station_config, write_config, write_parts
from tests.helpers.tiny_bundle import make_tiny_bundle

pytest.importorskip("pypylon")
pytestmark = pytest.mark.pylon


def test_daemon_on_emulated_pylon_camera(tmp_path, mosquitto, monkeypatch):
    monkeypatch.setenv("PYLON_CAMEMU", "1")  # inherited by the daemon subprocess
    images = tmp_path / "images"
    write_parts(images, 6)
    model_dir = make_tiny_bundle(tmp_path / "model")
    cfg = station_config(tmp_path, mosquitto.port, model_dir, images,
                         camera={"type": "pylon", "fps": 10.0, "pixel_format": "Mono8", "trigger": {"mode": "free_run"}})
    config = write_config(tmp_path / "station.yaml", cfg)
    sub = Subscriber(mosquitto.port)
    proc = None
    try:
        proc = start_daemon(config, "--max-frames", "8", log_path=tmp_path / "daemon.log")
        rc = proc.wait(90)
        assert rc == 0, (tmp_path / "daemon.log").read_text()[-3000:]
        sub.wait_for(lambda: len(sub.results_by_seq()) >= 8, 10, "8 results")
        results = [parse_result(raw) for raw, _ in sub.raw("result")]
        assert len({r["seq"] for r in results}) == 8
        assert all(r["verdict"] in ("OK", "NG") for r in results), [r.get("error") for r in results]
        assert any(r["verdict"] == "NG" for r in results) and any(r["verdict"] == "OK" for r in results)
    finally:
        sub.close()
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)
