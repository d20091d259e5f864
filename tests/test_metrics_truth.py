"""Metrics that tell the truth (issue 10): scrape the real daemon's /metrics, parse it with
prometheus_client's parser, and hold each metric against the pipeline's own counters — across a
replay of an earlier run's outbox — plus a lint of the names (Prometheus naming conventions).

Reproduces: queue depth stuck at 1; frames_out counting an earlier run's replayed rows (150 out
against 47 in); no mqtt series before the first connection (the broker-down alert could not
fire); archive_usage{kind=bytes|files|queued} mixing units.
"""

from __future__ import annotations

import json
import re
import time
import urllib.request

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers.broker import Mosquitto, free_port, mosquitto_binary
from tests.helpers.station import (Subscriber, bundle_and_parts, run_cli, start_daemon, station_config, stop_daemon,
                                   write_config)

pytest.importorskip("onnx", reason="the tiny test bundle is built with onnx (the train extra)")

pytestmark = pytest.mark.skipif(not mosquitto_binary(), reason="mosquitto is not installed (apt-get install -y mosquitto)")

NAME = re.compile(r"^edge_inspector_[a-z0-9_]+$")
UNITS = ("seconds", "bytes")


def scrape(port: int) -> dict[str, dict]:
    """{family name: {"type": ..., "samples": {(sample name, sorted labels): value}}}"""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    families = {}
    for family in text_string_to_metric_families(text):
        families[family.name] = {
            "type": family.type,
            "samples": {(s.name, tuple(sorted(s.labels.items()))): s.value for s in family.samples},
        }
    return families


def value(families: dict, name: str, **labels) -> float:
    for family in families.values():
        for (sample, found), v in family["samples"].items():
            if sample == name and dict(found) == {k: str(x) for k, x in labels.items()}:
                return v
    raise AssertionError(f"{name}{labels} not scraped")


def lint(families: dict) -> list[str]:
    """Prometheus naming: namespace, counters end in _total, gauges never do, a unit named in
    the metric is its suffix, one unit per metric (no label that switches bytes/files/...)."""
    problems = []
    for name, family in families.items():
        if name.endswith("_created"):
            continue  # prometheus_client's creation timestamps of counters/histograms, not our names
        kind = family["type"]
        if not NAME.match(name):
            problems.append(f"{name}: not edge_inspector_<snake_case>")
        samples = {s for s, _ in family["samples"]}
        if kind == "counter" and any(not s.endswith(("_total", "_created")) for s in samples):
            problems.append(f"{name}: counter samples must end in _total")
        if kind == "gauge" and name.endswith("_total"):
            problems.append(f"{name}: a gauge named like a counter")
        for unit in UNITS:
            if unit in name.split("_") and not name.endswith(unit):
                problems.append(f"{name}: the unit {unit} must be the suffix")
        label_values = {v for _, labels in family["samples"] for _, v in labels}
        if len(label_values & {"bytes", "files", "seconds", "queued"}) > 1:
            problems.append(f"{name}: mixes units in one metric ({sorted(label_values)})")
    return problems


def test_metrics_match_the_pipeline_after_a_replay(tmp_path):
    model, images = bundle_and_parts(tmp_path, 4)
    broker = Mosquitto(tmp_path / "broker")  # its port is fixed now; started later
    health_port = free_port()
    cfg = station_config(tmp_path, broker.port, model, images, health={"enabled": True, "port": health_port},
                         archive={"enabled": True, "path": str(tmp_path / "archive")},
                         pipeline={"shutdown_timeout_s": 1.0})
    config = write_config(tmp_path / "station.yaml", cfg)

    # Run 1, broker down: 4 results stay in the outbox (exit 1 says so).
    first = run_cli("run", "--config", str(config), timeout=90)
    assert first.returncode == 1, first.stderr[-2000:]
    stopped1 = [json.loads(line) for line in first.stderr.splitlines() if '"stopped"' in line][-1]
    assert stopped1["undelivered_in_outbox"] == 4

    # Run 2: parts only on P/cmd/trigger, so the counts are exact while the daemon runs.
    cfg["camera"].update(loop=True, trigger={"mode": "software", "software_source": "command"})
    write_config(config, cfg)
    proc = start_daemon(config)
    sub = None
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                m = scrape(health_port)
                if value(m, "edge_inspector_outbox_depth") == 4:
                    break
            except (OSError, AssertionError):
                pass
            assert time.monotonic() < deadline and proc.poll() is None, "daemon did not come up"
            time.sleep(0.2)
        # Never connected yet: the series exists (0), so `broker_connected == 0` alerts fire.
        assert value(m, "edge_inspector_broker_connected") == 0
        assert value(m, "edge_inspector_frames_out_total") == 0  # waiting in the outbox is not "out"
        assert value(m, "edge_inspector_results_replayed_total") == 0
        assert lint(m) == []

        broker.start()
        sub = Subscriber(broker.port)
        sub.wait_for(lambda: len(sub.results_by_seq()) >= 4, 30, "the earlier run's 4 results replayed")
        commander = paho.Client(CallbackAPIVersion.VERSION2, client_id="test-plc", protocol=paho.MQTTv5)
        commander.connect("127.0.0.1", broker.port)
        commander.loop_start()
        commander.publish("ei/l1/st1/cmd/trigger", json.dumps({"count": 3}), qos=1).wait_for_publish(5)
        sub.wait_for(lambda: len(sub.results_by_seq()) >= 7, 30, "3 new results")
        commander.loop_stop()
        commander.disconnect()
        deadline = time.monotonic() + 10
        while True:  # the outbox gauge follows the supervisor's loop (every 0.2 s)
            m = scrape(health_port)
            if value(m, "edge_inspector_outbox_depth") == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        rc = stop_daemon(proc)
        _, err = proc.communicate(timeout=10)
        if sub is not None:
            sub.close()
        broker.stop()
    stopped = [json.loads(line) for line in err.decode().splitlines() if '"stopped"' in line][-1]
    assert rc == 0, stopped

    # Each metric against the pipeline's own counters (the `stopped` line) and the broker's view.
    assert value(m, "edge_inspector_frames_in_total") == stopped["frames_in"] == 3
    assert value(m, "edge_inspector_frames_out_total") == stopped["frames_out"] == 3
    assert value(m, "edge_inspector_results_replayed_total") == 4 == stopped1["undelivered_in_outbox"]
    assert value(m, "edge_inspector_frames_out_total") + value(m, "edge_inspector_results_replayed_total") \
        == len(sub.results_by_seq()) == 7
    assert sum(value(m, "edge_inspector_verdicts_total", verdict=v) for v in ("OK", "NG", "ERROR")) == 3
    assert value(m, "edge_inspector_outbox_depth") == 0
    assert value(m, "edge_inspector_broker_connected") == 1
    queues = {dict(labels)["queue"]: v for (s, labels), v in m["edge_inspector_queue_depth"]["samples"].items()}
    assert queues and all(v == 0 for v in queues.values()), queues  # idle line: nothing waits
    # The NG archive, one unit per metric: files on disk (this run's NG frames and the earlier
    # run's) and their size in bytes.
    saved = value(m, "edge_inspector_archive_frames_total", kind="saved")
    files = sorted((tmp_path / "archive").rglob("*.png"))
    assert saved == value(m, "edge_inspector_verdicts_total", verdict="NG") >= 1
    assert value(m, "edge_inspector_archive_files") == len([f for f in files if ".heatmap" not in f.name]) > saved
    assert value(m, "edge_inspector_archive_size_bytes") == sum(f.stat().st_size for f in files)
    assert value(m, "edge_inspector_archive_queue_depth") == 0
    assert "edge_inspector_archive_usage" not in m
    assert lint(m) == [], lint(m)


def test_lint_finds_what_the_old_metrics_did_wrong():
    """The lint itself can fail: the old archive_usage{kind} and a mis-suffixed unit."""
    text = (
        "# TYPE edge_inspector_archive_usage gauge\n"
        'edge_inspector_archive_usage{kind="bytes"} 10\nedge_inspector_archive_usage{kind="files"} 1\n'
        "# TYPE edge_inspector_seconds_waiting gauge\nedge_inspector_seconds_waiting 1\n"
        "# TYPE edge_inspector_queued_total gauge\nedge_inspector_queued_total 1\n"
    )
    families = {f.name: {"type": f.type, "samples": {(s.name, tuple(sorted(s.labels.items()))): s.value for s in f.samples}}
                for f in text_string_to_metric_families(text)}
    problems = lint(families)
    assert any("archive_usage: mixes units" in p for p in problems), problems
    assert any("seconds_waiting: the unit seconds must be the suffix" in p for p in problems), problems
    assert any("queued_total: a gauge named like a counter" in p for p in problems), problems
