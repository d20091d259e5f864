"""Images by reference (issue 11): a result's image_url / heatmap_url fetch the archived frame and
heatmap from the running daemon's HTTP server (token required when configured); the same files
by seq, and P/cmd/snapshot by seq; path traversal gets 400/404 and never a file outside."""

from __future__ import annotations

import base64
import http.client
import json
import os
import urllib.parse

import cv2
import numpy as np
import pytest

from tests.helpers.broker import free_port
from tests.helpers.station import Subscriber, start_daemon, station_config, stop_daemon, write_config, write_parts
from tests.helpers.tiny_bundle import make_tiny_bundle
from tests.test_part_identity import _Commander

TOKEN = "images-token-123"


def _get(port: int, path: str, token: str | None = TOKEN) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {token}"} if token else {})  # path sent verbatim
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


@pytest.fixture
def station(tmp_path, mosquitto):
    model_dir = make_tiny_bundle(tmp_path / "model", image_size=32, threshold=0.5)
    write_parts(tmp_path / "parts", 3)  # part_0002 is NG: archived with its heatmap
    (tmp_path / "token").write_text(TOKEN + "\n")
    (tmp_path / "secret.txt").write_text("outside the archive")
    port = free_port()
    cfg = station_config(tmp_path, mosquitto.port, model_dir, tmp_path / "parts",
                         camera={"loop": True, "trigger": {"mode": "software", "software_source": "command"}},
                         archive={"enabled": True, "path": str(tmp_path / "archive"),
                                  "base_url": f"http://127.0.0.1:{port}", "require_token": True},
                         health={"enabled": True, "port": port, "token_file": str(tmp_path / "token")})
    config = write_config(tmp_path / "station.yaml", cfg)
    sub = Subscriber(mosquitto.port)
    mes = _Commander(mosquitto.port)
    proc = start_daemon(config, log_path=tmp_path / "daemon.log")  # a full stderr pipe would block the daemon
    try:
        sub.wait_for(lambda: any(s.get("state") == "ready" for s in sub.payloads("status")), 60, "station ready")
        mes.send("trigger", {"count": 3})
        sub.wait_for(lambda: len(sub.results_by_seq()) >= 3, 20, "3 results")
        yield port, sub, mes, tmp_path
    finally:
        mes.close()
        sub.close()
        assert stop_daemon(proc) == 0


def test_result_urls_fetch_the_archived_image_and_heatmap(station):
    port, sub, mes, tmp_path = station
    ng = [r for r in sub.results_by_seq().values() if r["verdict"] == "NG"]
    assert len(ng) == 1 and all("image_url" not in r for r in sub.results_by_seq().values() if r["verdict"] == "OK")
    result = ng[0]
    assert result["image_url"] == f"http://127.0.0.1:{port}/images/{result['archive']}"
    assert result["heatmap_url"] == f"http://127.0.0.1:{port}/images/{result['heatmap']}"
    path = urllib.parse.urlsplit(result["image_url"]).path
    status, body = _get(port, path)
    assert status == 200
    image = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_UNCHANGED)
    assert image.shape[:2] == (96, 128) and image[35, 45] == 255  # the part as grabbed, defect included
    assert body == (tmp_path / "archive" / result["archive"]).read_bytes()
    status, heat = _get(port, urllib.parse.urlsplit(result["heatmap_url"]).path)
    assert status == 200 and cv2.imdecode(np.frombuffer(heat, np.uint8), cv2.IMREAD_COLOR).shape[:2] == (96, 128)
    # the same files by seq
    assert _get(port, f"/images/seq/{result['seq']}/original.png") == (200, body)
    assert _get(port, f"/images/seq/{result['seq']}/heatmap.png") == (200, heat)
    ok_seq = next(r["seq"] for r in sub.results_by_seq().values() if r["verdict"] == "OK")
    assert _get(port, f"/images/seq/{ok_seq}/original.png")[0] == 404  # OK parts are not archived
    # token
    assert _get(port, path, token=None)[0] == 401
    assert _get(port, path, token="wrong")[0] == 401
    assert _get(port, path + f"?token={TOKEN}", token=None)[0] == 200  # an <img src> cannot set headers
    # snapshot by seq over MQTT
    mes.send("snapshot", {"seq": result["seq"], "format": "png", "id": "snap"})
    sub.wait_for(lambda: any(r.get("id") == "snap" for r in mes.replies), 10, "snapshot reply")
    reply = next(r for r in mes.replies if r.get("id") == "snap")
    assert reply["ok"] and (reply["result"]["width"], reply["result"]["height"]) == (128, 96)
    snap = cv2.imdecode(np.frombuffer(base64.b64decode(reply["result"]["data"]), np.uint8), cv2.IMREAD_UNCHANGED)
    assert snap[35, 45].max() == 255
    mes.send("snapshot", {"seq": ok_seq, "id": "snap-ok"})
    sub.wait_for(lambda: any(r.get("id") == "snap-ok" for r in mes.replies), 10, "snapshot reply")
    assert "no archived frame for seq" in next(r for r in mes.replies if r.get("id") == "snap-ok")["error"]


def test_path_traversal_never_reaches_a_file_outside_the_archive(station):
    port, sub, _mes, tmp_path = station
    ng = next(r for r in sub.results_by_seq().values() if r["verdict"] == "NG")
    day = ng["archive"].split("/")[0]
    os.symlink(tmp_path / "secret.txt", tmp_path / "archive" / day / "leak.png")  # a link planted inside
    attempts = [
        "/images/../secret.txt", "/images/../../etc/passwd", "/images/%2e%2e/secret.txt",
        "/images/%2e%2e%2fsecret.txt", f"/images/{day}/..%2F..%2Fsecret.txt", f"/images/{day}/../../secret.txt",
        "/images//etc/passwd", "/images/%2Fetc%2Fpasswd", f"/images/{day}/..png", "/images/seq/0/original.png",
        "/images/seq/1/../../secret.txt", f"/images/{day}/{ng['archive'].split('/')[1]}%00.png",
        f"/images/{day}/leak.png", "/images/2000-01-01/nothing.png", "/images/state/outbox.sqlite",
    ]
    for path in attempts:
        status, body = _get(port, path)
        assert status in (400, 404), (path, status)
        assert b"outside the archive" not in body and b"root:" not in body, path
