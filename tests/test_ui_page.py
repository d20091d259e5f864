"""Operator page over real HTTP against the real daemon (folder camera, tiny bundle, mosquitto):
latest part, NG gallery, server-sent events, feedback with and without the token, path safety,
and a browser that stops reading does not slow inspection."""

from __future__ import annotations

import json
import queue
import socket
import threading
import time

import pytest

from edge_inspector.ui.live import EventHub
from tests.helpers.page import TOKEN, feedback, page_station, request, start_page_daemon, wait_state
from tests.helpers.station import Subscriber, start_daemon, stop_daemon, write_parts
from tests.helpers.tiny_bundle import make_tiny_bundle


@pytest.fixture
def model_dir(tmp_path):
    return make_tiny_bundle(tmp_path / "model", image_size=64, threshold=0.5)


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "images"
    write_parts(folder, 6)  # parts 2 and 5 carry a white blotch: NG on the tiny bundle
    return folder


def _has_ng(state):
    return bool(state["gallery"]) and state["latest"] is not None


def test_page_shows_latest_part_gallery_and_pushes_events(tmp_path, mosquitto, model_dir, images):
    proc, base = start_page_daemon(tmp_path, mosquitto.port, model_dir, images)
    try:
        state = wait_state(base, _has_ng, proc=proc, what="an NG part in the gallery")
        ng = state["gallery"][0]
        assert ng["verdict"] == "NG" and ng["score"] >= 0.99 and ng["threshold"] == 0.5
        assert ng["defects"] and ng["defects"][0]["bbox"][0] >= 36  # the blotch at x 40..55
        assert ng["part_id"] is None  # shown when the trigger carries one (issue 11)
        for key in ("frame_url", "overlay_url"):
            code, body, headers = request(base + ng[key])
            assert code == 200 and headers["Content-Type"] == "image/jpeg" and body[:2] == b"\xff\xd8"
        stats = state["stats"]
        assert stats["station"] == "l1/st1" and stats["counts"]["NG"] >= 1 and stats["counts"]["OK"] >= 1
        assert 0 < stats["yield"] < 1
        assert stats["drift"]["status"] == "unavailable" and "retrain" in stats["drift"]["reason"]
        assert state["strip"] and state["actions"]["enabled"] is True
        # the page and its own files, nothing else
        for path, kind in (("/", "text/html"), ("/ui/", "text/html"), ("/ui/static/app.js", "text/javascript"),
                           ("/ui/static/style.css", "text/css")):
            code, body, headers = request(base + path)
            assert code == 200 and headers["Content-Type"].startswith(kind), path
            assert b"http://" not in body and b"https://" not in body, f"{path} must not load anything from elsewhere"
        # live updates: the event stream delivers new parts as they pass
        with socket.create_connection(("127.0.0.1", int(base.rsplit(":", 1)[1])), timeout=10) as s:
            s.sendall(b"GET /ui/events HTTP/1.1\r\nHost: x\r\n\r\n")
            received = b""
            while received.count(b"event: part") < 2:
                chunk = s.recv(65536)
                assert chunk, "event stream closed"
                received += chunk
        assert b"text/event-stream" in received and b"event: hello" in received
        event = json.loads(received.split(b"event: part\ndata: ", 1)[1].split(b"\n", 1)[0])
        assert event["card"]["verdict"] in ("OK", "NG") and "counts" in event["stats"]
        metrics = request(base + "/metrics")[1].decode()
        assert 'edge_inspector_ui_frames_total{kind="shown"}' in metrics
        assert "edge_inspector_drift_available 0.0" in metrics
    finally:
        stop_daemon(proc)


def test_feedback_needs_the_token_and_writes_image_and_record(tmp_path, mosquitto, model_dir, images):
    proc, base = start_page_daemon(tmp_path, mosquitto.port, model_dir, images)
    try:
        state = wait_state(base, _has_ng, proc=proc, what="an NG part")
        card = state["gallery"][0]
        assert feedback(base, card["id"], token=None)[0] == 401
        assert feedback(base, card["id"], token="wrong")[0] == 401
        assert feedback(base, card["id"], label="maybe")[0] == 400
        code, body = feedback(base, card["id"], who="")
        assert code == 400 and "'who'" in body["message"]
        assert request(base + "/ui/feedback", "POST", b"{not json", TOKEN)[0] == 400
        assert feedback(base, 10**9)[0] == 404
        assert not (tmp_path / "feedback").exists()  # nothing refused left anything behind

        code, body = feedback(base, card["id"], label="good", who="anna", why="oil stain, not a dent")
        assert code == 200 and body["ok"], body
        files = sorted((tmp_path / "feedback" / "test" / "good").iterdir())
        assert [f.suffix for f in files] == [".json", ".png"]
        record = json.loads(files[0].read_text())
        assert record["who"] == "anna" and record["why"] == "oil stain, not a dent" and record["label"] == "good"
        assert record["verdict"] == "NG" and record["score"] == card["score"] and record["frame_id"] == card["frame_id"]
        assert record["model"]["name"] == "tiny-default" and record["when"].endswith("Z") and record["image"] == files[1].name
        assert isinstance(record["seq"], int)
        import cv2

        assert cv2.imread(str(files[1]), cv2.IMREAD_UNCHANGED).shape == (96, 128)  # the original frame, full size

        latest = state["latest"]
        assert feedback(base, latest["id"], label="defect")[0] == 200
        assert len(list((tmp_path / "feedback" / "test" / "defect").glob("*.png"))) == 1
        metrics = request(base + "/metrics")[1].decode()
        assert 'edge_inspector_feedback_total{label="good"} 1.0' in metrics
        assert 'edge_inspector_feedback_total{label="defect"} 1.0' in metrics
        assert 'edge_inspector_feedback_total{label="refused"} 6.0' in metrics
    finally:
        stop_daemon(proc)


def test_without_a_configured_token_feedback_is_refused_with_a_reason(tmp_path, mosquitto, model_dir, images):
    proc, base = start_page_daemon(tmp_path, mosquitto.port, model_dir, images, token=None)
    try:
        state = wait_state(base, _has_ng, proc=proc, what="an NG part")
        assert state["actions"]["enabled"] is False and "no station token" in state["actions"]["reason"]
        code, body = feedback(base, state["gallery"][0]["id"], token="anything")
        assert code == 403 and "no station token configured" in body["message"]
        assert not (tmp_path / "feedback").exists()
    finally:
        stop_daemon(proc)


TRAVERSALS = [
    "/ui/static/../../cli.py", "/ui/static/%2e%2e/%2e%2e/cli.py", "/ui/static/..%2f..%2fcli.py",
    "/ui/static/", "/ui/static/live.py", "/ui/img/1/../../../etc/passwd", "/ui/img/../1/frame.jpg",
    "/ui/img/1/frame.png", "/ui/img/-1/frame.jpg", "/ui/img/1/x/../frame.jpg", "/ui/static//etc/passwd",
    "/ui/static/%2fetc%2fpasswd", "/ui/img/1/frame.jpg%00.png", "/ui/img/99999999999999/frame.jpg",
]


def test_no_path_reaches_a_file_outside_the_page(tmp_path, mosquitto, model_dir, images):
    proc, base = start_page_daemon(tmp_path, mosquitto.port, model_dir, images)
    try:
        state = wait_state(base, _has_ng, proc=proc, what="cards to exist")
        assert request(base + f"/ui/img/{state['latest']['id']}/frame.jpg")[0] == 200  # the real ones do answer
        answers = {path: request(base + path)[0] for path in TRAVERSALS}
    finally:
        stop_daemon(proc)
    assert answers == {path: 404 for path in TRAVERSALS}


def test_a_browser_that_stops_reading_does_not_slow_inspection(tmp_path, mosquitto, model_dir):
    """A client opens the event stream with a tiny receive buffer and never reads: every frame
    is still inspected and published, and the daemon stops cleanly."""
    n = 600
    images = tmp_path / "many"
    write_parts(images, n)
    config, base = page_station(tmp_path, mosquitto.port, model_dir, images,
                                camera={"loop": False, "fps": 200.0})
    sub = Subscriber(mosquitto.port)
    stalled = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    proc = start_daemon(config, log_path=tmp_path / "daemon.log")
    try:
        deadline = time.monotonic() + 30
        while True:  # connect as soon as the page listens, before the parts pass
            try:
                stalled.connect(("127.0.0.1", int(base.rsplit(":", 1)[1])))
                break
            except OSError:
                assert time.monotonic() < deadline, "page never listened"
                time.sleep(0.05)
        stalled.sendall(b"GET /ui/events HTTP/1.1\r\nHost: x\r\n\r\n")
        sub.wait_for(lambda: len(sub.results_by_seq()) >= n, 90, f"{n} results with a stalled browser attached")
        assert proc.wait(30) == 0
    finally:
        stalled.close()
        stop_daemon(proc)
        sub.close()
    assert sorted(r["verdict"] for r in sub.results_by_seq().values()).count("NG") == n // 3


def test_event_hub_cuts_off_a_full_client_instead_of_waiting():
    hub = EventHub(client_queue=3)
    stalled, reader = hub.subscribe(), hub.subscribe()
    got: list = []
    done = threading.Event()

    def publish():
        for i in range(10):
            hub.publish("part", str(i))
            got.append(reader.get_nowait()[1])
        done.set()

    threading.Thread(target=publish, daemon=True).start()
    assert done.wait(5), "publish blocked on a client that does not read"
    assert got == [str(i) for i in range(10)]
    assert hub.cut_off == 1 and hub.clients == 1
    items = []
    while True:
        try:
            items.append(stalled.get_nowait())
        except queue.Empty:
            break
    assert items[-1] is None  # its HTTP thread is told to end


def test_the_page_files_ship_as_package_data():
    """A non-editable install (pip install .) must carry the static files the routes serve."""
    import fnmatch
    import tomllib

    from edge_inspector.ui.routes import STATIC
    from tests.helpers.station import REPO

    static = REPO / "edge_inspector" / "ui" / "static"
    assert sorted(p.name for p in static.iterdir()) == sorted(STATIC)
    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["edge_inspector"]
    for name in STATIC:
        assert any(fnmatch.fnmatch(f"ui/static/{name}", pattern) for pattern in patterns), name


def test_counters_start_over_at_each_shift():
    from datetime import datetime, timedelta
    import types

    from edge_inspector.config.models import Config
    from edge_inspector.ui.live import LiveView

    cfg = Config.model_validate({"station": {"line": "l", "name": "s"}, "ui": {"shift_starts": ["14:00", "06:00"]}})
    assert cfg.ui.shift_starts == ["06:00", "14:00"]
    morning = datetime.now().astimezone().replace(hour=13, minute=0, second=0, microsecond=0).timestamp()
    view = LiveView(cfg, clock=lambda: morning)

    def verdict(kind, at):
        view.on_verdict(types.SimpleNamespace(verdict=kind, score=0.1, threshold=0.5, ts_wall=at), types.SimpleNamespace(image=None), None)

    verdict("OK", morning + 60)
    verdict("NG", morning + 120)
    assert view.stats()["counts"] == {"OK": 1, "NG": 1, "ERROR": 0} and view.stats()["yield"] == 0.5
    afternoon = morning + timedelta(hours=1, minutes=1).total_seconds()  # 14:01: the second shift
    verdict("OK", afternoon)
    stats = view.stats()
    assert stats["counts"] == {"OK": 1, "NG": 0, "ERROR": 0} and stats["yield"] == 1.0
    assert datetime.fromtimestamp(stats["since"]).astimezone().strftime("%H:%M") == "14:00"


@pytest.mark.parametrize("bad", ["6:00", "24:00", "12:60", "noon"])
def test_shift_starts_must_be_clock_times(bad):
    from edge_inspector.config.models import UiConfig

    with pytest.raises(ValueError, match="HH:MM"):
        UiConfig(shift_starts=[bad])
