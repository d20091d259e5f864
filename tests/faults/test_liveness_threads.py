"""Class 2, restart policy: an exception in the MQTT outbox worker, the software-trigger timer,
the NG archive writer or the command handler is logged, counted (``edge_inspector_thread_restarts_total``, P/health's
``mqtt.worker_errors``) and survived — every verdict still reaches MES, in seq order."""

from __future__ import annotations

import pytest

from tests.helpers.broker import free_port
from tests.helpers.faults import assert_contiguous, healthz, log_events, metric, start_daemon, wait_until
from tests.helpers.station import Subscriber, station_config, stop_daemon, write_config, write_parts
from tests.helpers.tiny_bundle import make_tiny_bundle

N = 12


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny_bundle(tmp_path_factory.mktemp("model") / "m")


def _station(tmp_path, port, model_dir, **sections):
    images = tmp_path / "images"
    write_parts(images, N)
    cfg = station_config(tmp_path, port, model_dir, images, **sections)
    return write_config(tmp_path / "station.yaml", cfg)


def test_publisher_loop_exception_is_survived_and_every_result_arrives(tmp_path, mosquitto, model_dir):
    # Issue 8: the worker's own error handler raised (log.error(..., event=...)) and the thread
    # died for good: nothing was published again while /healthz said 200.
    config = _station(tmp_path, mosquitto.port, model_dir, camera={"fps": 5.0})  # long enough for P/health
    sub = Subscriber(mosquitto.port)
    log = tmp_path / "daemon.log"
    proc = start_daemon(config, faults="mqtt.worker:raise:5", log_path=log)
    try:
        assert proc.wait(60) == 0, log.read_text()[-2000:]
        wait_until(lambda: len(sub.results_by_seq()) >= N, 10, "every result", log_path=log)
        assert_contiguous(sub.results_by_seq())
        assert sorted(sub.results_by_seq()) == list(range(1, N + 1))
        errors = log_events(log, "mqtt_worker_error")
        assert errors and errors[0]["worker_event"] and "fault injected" in errors[0]["error"]
        assert not log_events(log, "logging_call_failed")
        assert log_events(log, "stopped")[-1]["undelivered_in_outbox"] == 0
        health = [h for h in sub.payloads("health") if h["mqtt"].get("worker_errors")]
        assert health and health[-1]["mqtt"]["worker_errors"] == 1 and health[-1]["liveness"]["healthy"] is True
    finally:
        sub.close()
        if proc.poll() is None:
            stop_daemon(proc)


def test_archive_writer_and_trigger_timer_crashes_are_restarted_and_counted(tmp_path, mosquitto, model_dir):
    health_port = free_port()
    config = _station(tmp_path, mosquitto.port, model_dir,
                      camera={"fps": 10.0, "loop": True, "trigger": {"mode": "software"}},
                      archive={"enabled": True, "path": str(tmp_path / "archive")},
                      health={"enabled": True, "port": health_port})
    sub = Subscriber(mosquitto.port)
    log = tmp_path / "daemon.log"
    proc = start_daemon(config, faults="archive.writer:raise:1,trigger.timer:raise:2", log_path=log)
    try:
        wait_until(lambda: metric(health_port, "edge_inspector_thread_restarts_total", thread="archive-writer") == 1
                   and metric(health_port, "edge_inspector_thread_restarts_total", thread="software-trigger") == 1,
                   30, "both restarts counted in /metrics", proc, log)
        # after the restarts the line goes on: more results, NG frames archived with a reference
        wait_until(lambda: len(sub.results_by_seq()) >= N, 30, f"{N} results", proc, log)
        ng = [r for r in sub.results_by_seq().values() if r["verdict"] == "NG"]
        wait_until(lambda: any("archive" in r for r in sub.results_by_seq().values()), 10, "an archived NG result")
        for r in sub.results_by_seq().values():
            if "archive" in r:
                assert (tmp_path / "archive" / r["archive"]).is_file()  # named only once written
        assert ng
        crashed = {e["thread"] for e in log_events(log, "thread_crashed")}
        assert crashed == {"archive-writer", "software-trigger"}
    finally:
        sub.close()
        rc = stop_daemon(proc)
    assert rc == 0, log.read_text()[-2000:]
    assert_contiguous(sub.results_by_seq())


def test_command_handler_crash_is_restarted_and_answers_again(tmp_path, mosquitto, model_dir):
    health_port = free_port()
    config = _station(tmp_path, mosquitto.port, model_dir, camera={"fps": 5.0, "loop": True},
                      health={"enabled": True, "port": health_port})
    sub = Subscriber(mosquitto.port)
    log = tmp_path / "daemon.log"
    proc = start_daemon(config, faults="commands.handler:raise:0", log_path=log)
    try:
        wait_until(lambda: sub.payloads("status") and sub.payloads("status")[-1].get("state") == "ready", 30,
                   "station ready", proc, log)
        sub.client.publish("ei/l1/st1/cmd/status", b"{}", qos=1).wait_for_publish(5)  # hits the fault
        wait_until(lambda: metric(health_port, "edge_inspector_thread_restarts_total", thread="mqtt-commands") == 1,
                   15, "the command thread restart counted", proc, log)
        sub.client.publish("ei/l1/st1/cmd/status", b"{}", qos=1).wait_for_publish(5)
        # replies arrive on P/reply/status, which the test subscriber records under "status" (last topic level)
        wait_until(lambda: any(r.get("command") == "status" and r.get("ok") for r in sub.payloads("status")), 15,
                   "a reply from the restarted handler", proc, log)
    finally:
        sub.close()
        rc = stop_daemon(proc)
    assert rc == 0, log.read_text()[-2000:]


def test_a_raising_mqtt_callback_does_not_kill_the_network_thread(tmp_path, mosquitto):
    # paho re-raises callback exceptions by default, which ends its network thread for good (no
    # PUBACKs, no reconnects). Here the status built in on_connect raises (a non-finite field, the
    # kind of value issue 8 found in status): results must still flow, and reconnects still work.
    import time

    from edge_inspector.config.models import Config
    from edge_inspector.postprocess.verdict import Verdict
    from edge_inspector.publish import MqttPublisher, Outbox

    cfg = Config.model_validate({"station": {"line": "l1", "name": "st1"},
                                 "mqtt": {"host": "127.0.0.1", "port": mosquitto.port, "reconnect_min_s": 0.1,
                                          "reconnect_max_s": 0.5, "keepalive_s": 5},
                                 "outbox": {"path": str(tmp_path / "outbox.sqlite")}})
    # persistent: the broker queues the result published before this subscriber is back from the
    # restart (a clean session lost it whenever the publisher reconnected first)
    sub = Subscriber(mosquitto.port, base=cfg.topic_base, persistent=True)
    pub = MqttPublisher(cfg, Outbox(cfg.outbox.path), {"name": "m", "sha256": "ab" * 32})
    pub.set_status(threshold=float("nan"))  # building the online status now raises inside on_connect
    original_on_connect = pub._client.on_connect

    def on_connect_then_raise(*args):  # and a callback that raises outright
        original_on_connect(*args)
        raise RuntimeError("injected in on_connect")

    pub._client.on_connect = on_connect_then_raise
    pub.start()
    try:
        verdicts = [Verdict(frame_id=f"f{i}", verdict="OK", score=0.1, threshold=0.5, ts_wall=time.time(),
                            ts_grab=time.monotonic()) for i in range(3)]
        for v in verdicts:
            pub.publish_verdict(v)
        wait_until(lambda: len(sub.results_by_seq()) == 3, 10, "results despite the raising callbacks")
        mosquitto.restart()  # the network thread is alive: it reconnects and delivers again
        pub.publish_verdict(verdicts[0])
        wait_until(lambda: len(sub.results_by_seq()) == 4, 15, "a result after the broker restart")
        assert pub.stats["reconnects"] >= 1
    finally:
        pub.stop(timeout=2)
        sub.close()


def test_hung_publisher_loop_is_unhealthy_everywhere_not_connected_and_fine(tmp_path, mosquitto, model_dir):
    # Issue 8: with the outbox worker gone, /healthz said 200 and P/health "connected" while
    # nothing was published. A worker stuck for good must show in /healthz and P/health.
    health_port = free_port()
    config = _station(tmp_path, mosquitto.port, model_dir, camera={"fps": 10.0, "loop": True},
                      pipeline={"heartbeat_timeout_s": 1.5, "shutdown_timeout_s": 2.0},
                      health={"enabled": True, "port": health_port})
    sub = Subscriber(mosquitto.port)
    log = tmp_path / "daemon.log"
    proc = start_daemon(config, faults="mqtt.worker:hang:20", log_path=log)
    try:
        # A 503 while the pipeline is still starting (a loaded machine) is not the one we look for.
        code, body = wait_until(lambda: (lambda r: r if r[0] == 503 and "mqtt_worker" in r[1].get("stalled", []) else None)(
                                    healthz(health_port)),
                                20, "/healthz 503 for the hung outbox worker", proc, log)
        assert "mqtt_worker" in body["stalled"], body
        wait_until(lambda: any(h["mqtt"]["connected"] and h.get("liveness", {}).get("healthy") is False
                               and "mqtt_worker" in h["liveness"].get("stalled", []) for h in sub.payloads("health")),
                   10, "P/health: link up, but not healthy", proc, log)
        assert_contiguous(sub.results_by_seq())  # what did arrive is in order
    finally:
        sub.close()
        rc = stop_daemon(proc)
    assert rc == 1  # results remain undelivered in the outbox: said by the exit code
    assert log_events(log, "stopped")[-1]["undelivered_in_outbox"] > 0
