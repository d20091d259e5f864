"""/metrics and /healthz over real HTTP on a free port, fed through the observer hooks."""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request

import pytest

from edge_inspector.errors import ConfigError
from edge_inspector.health.metrics import MetricsObserver
from edge_inspector.health.server import HealthServer
from edge_inspector.observer import CompositeObserver
from edge_inspector.postprocess.verdict import Verdict
from tests.helpers.fake_control import FakeControl


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def _value(text: str, metric: str, **labels) -> float:
    """One sample from the Prometheus text format (labels in any order)."""
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = re.match(r"^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$", line)
        if not m or m.group(1) != metric:
            continue
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(m.group(3))
    raise AssertionError(f"{metric}{labels} not in /metrics")


@pytest.fixture
def served():
    metrics = MetricsObserver(station="line1/st1")
    # live: the stages beat as a running pipeline's do, so the 2 s timeout measures what a test
    # stalls by hand, never how long the test (or a slow CI machine) took to get there
    control = FakeControl(live=True)
    server = HealthServer(metrics.registry, host="127.0.0.1", port=0, heartbeat_timeout_s=2.0).start()
    yield metrics, control, server
    server.stop()


def _verdict(kind: str, i: int) -> Verdict:
    return Verdict(frame_id=f"f{i}", verdict=kind, score=0.1, threshold=0.5, ts_wall=time.time(), ts_grab=time.monotonic())


def test_counters_move_with_the_pipeline(served):
    metrics, control, server = served
    observer = CompositeObserver(metrics)  # the way the supervisor calls it
    _, before = _get(server.url + "/metrics")
    assert _value(before, "edge_inspector_verdicts_total", verdict="NG") == 0
    assert _value(before, "edge_inspector_broker_connected") == 0  # from the start: the alert can fire

    for i in range(5):
        observer.on_frame(object())
        observer.on_stage_latency("inference", 0.012)
        observer.on_verdict(_verdict("NG" if i % 2 else "OK", i), None, None)
        observer.on_published(i + 1, None)
    observer.on_replayed(99)  # an earlier run's result: not a frame of this run
    observer.on_drop("acquisition", "queue_full")
    depths = {"frames": 1, "inference": 3}
    metrics.watch_queues(lambda: depths)
    observer.on_outbox_depth(42)
    observer.on_state("mqtt", "connected")
    observer.on_state("mqtt", "disconnected", "broker gone")
    observer.on_model("tiny-default", "ab" * 32)
    metrics.on_command("set-threshold", False)
    metrics.watch_heartbeats(control.stage_heartbeats)
    metrics.watch_counters("archive_files", "Archive activity", lambda: {"saved": 2, "skipped": 1})

    status, text = _get(server.url + "/metrics")
    assert status == 200
    assert _value(text, "edge_inspector_frames_in_total") == 5
    assert _value(text, "edge_inspector_frames_out_total") == 5
    assert _value(text, "edge_inspector_verdicts_total", verdict="NG") == 2
    assert _value(text, "edge_inspector_verdicts_total", verdict="OK") == 3
    assert _value(text, "edge_inspector_drops_total", stage="acquisition", reason="queue_full") == 1
    assert _value(text, "edge_inspector_stage_latency_seconds_count", stage="inference") == 5
    assert _value(text, "edge_inspector_stage_latency_seconds_bucket", stage="inference", le="0.02") == 5
    assert _value(text, "edge_inspector_stage_latency_seconds_bucket", stage="inference", le="0.01") == 0
    assert _value(text, "edge_inspector_results_replayed_total") == 1
    assert _value(text, "edge_inspector_queue_depth", queue="inference") == 3
    depths.update(frames=0, inference=0)  # read at scrape time: never stuck at the last put()
    _, again = _get(server.url + "/metrics")
    assert _value(again, "edge_inspector_queue_depth", queue="frames") == 0
    assert _value(again, "edge_inspector_broker_connected") == 0  # connected, then disconnected
    assert _value(text, "edge_inspector_outbox_depth") == 42
    assert _value(text, "edge_inspector_component_state", component="mqtt", state="disconnected") == 1
    assert _value(text, "edge_inspector_component_state", component="mqtt", state="connected") == 0
    assert _value(text, "edge_inspector_model_info", name="tiny-default", sha256="ab" * 32) == 1
    assert _value(text, "edge_inspector_heartbeat_age_seconds", stage="inference") < 2
    assert _value(text, "edge_inspector_archive_files_total", kind="skipped") == 1
    assert _value(text, "edge_inspector_commands_total", command="set-threshold", ok="false") == 1


def test_own_registry_is_isolated():
    a, b = MetricsObserver(), MetricsObserver()  # two in one process must not collide
    a.on_frame(None)
    assert a.registry.get_sample_value("edge_inspector_frames_in_total") == 1
    assert b.registry.get_sample_value("edge_inspector_frames_in_total") == 0


def test_healthz_starting_ok_then_503_when_a_heartbeat_is_stale(served):
    _, control, server = served
    status, body = _get(server.url + "/healthz")
    assert status == 503 and json.loads(body)["status"] == "starting"

    server.attach(control.stage_heartbeats)
    status, body = _get(server.url + "/healthz")
    assert status == 200, body
    assert json.loads(body)["status"] == "ok"

    control.stall("inference", seconds_ago=30)
    status, body = _get(server.url + "/healthz")
    payload = json.loads(body)
    assert status == 503
    assert payload["status"] == "stalled" and payload["stalled"] == ["inference"]
    assert "inference stalled 30" in payload["reason"]

    control.beat()
    assert _get(server.url + "/healthz")[0] == 200


def test_unknown_path_is_404(served):
    _, _, server = served
    assert _get(server.url + "/")[0] == 404


def test_binds_localhost_by_default():
    from edge_inspector.config.models import HealthConfig

    assert HealthConfig().host == "127.0.0.1"


def test_port_in_use_is_a_start_error_and_reload_rebinds(tmp_path):
    import socket

    from edge_inspector.config.models import Config
    from edge_inspector.health.server import HealthOps
    from tests.helpers.broker import free_port

    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    taken = blocker.getsockname()[1]
    metrics, control = MetricsObserver(), FakeControl()
    ops = HealthOps(metrics.registry, Config.model_validate({"station": {"line": "l1", "name": "st1"}, "health": {"port": taken}}), control.stage_heartbeats)
    try:
        # A station nobody can scrape must not say READY: exit 2 with the port in the message.
        with pytest.raises(ConfigError, match=rf"health.port={taken} on health.host=127.0.0.1: already in use"):
            ops.start()
        assert ops.server is None
        new_port = free_port()
        note = ops.apply_config(Config.model_validate({"station": {"line": "l1", "name": "st1"}, "health": {"port": new_port}}))
        assert note == f"health: serving http://127.0.0.1:{new_port}"
        assert _get(f"http://127.0.0.1:{new_port}/healthz")[0] == 200
        assert ops.apply_config(Config.model_validate({"station": {"line": "l1", "name": "st1"}, "health": {"port": new_port}})) == "health: unchanged"
    finally:
        ops.stop()
        blocker.close()


def test_a_reload_onto_a_taken_port_keeps_serving_on_the_old_one():
    import socket

    from edge_inspector.config.models import Config
    from edge_inspector.health.server import HealthOps

    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    taken = blocker.getsockname()[1]
    metrics, control = MetricsObserver(), FakeControl()

    def config(health_port):
        return Config.model_validate({"station": {"line": "l1", "name": "st1"}, "health": {"port": health_port}})

    ops = HealthOps(metrics.registry, config(0), control.stage_heartbeats)  # 0: a port the OS picks
    try:
        ops.start()
        port = ops.server.port
        with pytest.raises(ConfigError, match=rf"health.port={taken} .*already in use.*still serving http://127.0.0.1:{port}"):
            ops.apply_config(config(taken))
        # /metrics and /healthz never went away for good: the station stays scrapable
        assert _get(f"http://127.0.0.1:{port}/metrics")[0] == 200
        assert ops.server is not None and ops.server.port == port
        # the port freed, the same config applies on the next reload
        blocker.close()
        assert ops.apply_config(config(taken)) == f"health: serving http://127.0.0.1:{taken}"
        assert _get(f"http://127.0.0.1:{taken}/healthz")[0] in (200, 503)
    finally:
        ops.stop()
        blocker.close()
