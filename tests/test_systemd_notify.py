"""sd_notify against a real AF_UNIX datagram listener, and the watchdog's stall behaviour."""

from __future__ import annotations

import os
import time

import pytest

from edge_inspector.systemd import SystemdNotifier, WatchdogLoop, format_status
from tests.helpers.fake_control import FakeControl
from tests.helpers.notify_listener import NotifyListener


@pytest.fixture(params=[False, True], ids=["path", "abstract"])
def listener(request):
    lst = NotifyListener(abstract=request.param)
    yield lst
    lst.close()


def test_no_notify_socket_is_a_silent_no_op():
    notifier = SystemdNotifier(environ={})
    assert not notifier.enabled
    assert notifier.ready() is False and notifier.watchdog() is False
    loop = WatchdogLoop(notifier, FakeControl().stage_heartbeats, 10.0).start()
    assert loop._thread is None  # no thread when nobody listens
    loop.stop()


def test_ready_status_stopping_reloading_reach_the_socket(listener):
    notifier = SystemdNotifier(environ={"NOTIFY_SOCKET": listener.address})
    assert notifier.ready("warmed up, camera open")
    assert notifier.status("line\nbreak")
    assert notifier.reloading()
    assert notifier.stopping()
    msgs = listener.drain(0.2)
    assert msgs[0] == {"READY": "1", "STATUS": "warmed up, camera open"}
    assert msgs[1] == {"STATUS": "line break"}  # a newline must not inject a new KEY= line
    assert msgs[2]["RELOADING"] == "1"
    usec = int(msgs[2]["MONOTONIC_USEC"])
    assert abs(usec / 1e6 - time.monotonic()) < 5  # CLOCK_MONOTONIC, the clock systemd compares with
    assert msgs[3] == {"STOPPING": "1"}
    notifier.close()


def test_watchdog_interval_is_half_of_watchdog_usec_and_respects_watchdog_pid():
    assert SystemdNotifier(environ={"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "3000000"}).watchdog_interval_s == 1.5
    mine = {"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}
    assert SystemdNotifier(environ=mine).watchdog_interval_s == 1.0
    other = dict(mine, WATCHDOG_PID=str(os.getpid() + 1))
    assert SystemdNotifier(environ=other).watchdog_interval_s is None
    assert SystemdNotifier(environ={"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "bogus"}).watchdog_interval_s is None


def test_send_failure_never_raises(tmp_path):
    notifier = SystemdNotifier(environ={"NOTIFY_SOCKET": str(tmp_path / "nobody-listens.sock")})
    assert notifier.enabled
    assert notifier.watchdog() is False


def test_watchdog_pings_while_fresh_stops_when_a_stage_stalls_and_resumes(listener):
    # live: the stages not stalled by hand keep beating, however long the test takes on a slow
    # machine (a fixed beat time made them "stall" too once a run passed the timeout)
    control = FakeControl(live=True)
    env = {"NOTIFY_SOCKET": listener.address, "WATCHDOG_USEC": "200000"}  # ping every 0.1 s
    loop = WatchdogLoop(SystemdNotifier(environ=env), control.stage_heartbeats, heartbeat_timeout_s=5.0, status=control.status)
    loop.start()
    try:
        listener.drain(0.5)
        assert listener.count("WATCHDOG") >= 3
        status = listener.wait_for("STATUS")["STATUS"]
        assert "fps=4.9" in status and "mqtt=connected" in status and "outbox=3" in status

        control.stall("inference", seconds_ago=50.0)
        listener.drain(0.25)  # let an in-flight tick finish
        before = listener.count("WATCHDOG")
        listener.drain(0.6)
        assert listener.count("WATCHDOG") == before, "WATCHDOG=1 must stop while a stage is stalled"
        stalled = [m["STATUS"] for m in listener.messages if m.get("STATUS", "").startswith("STALLED")]
        assert stalled and "inference" in stalled[-1]

        control.beat("inference")
        listener.drain(0.5)
        assert listener.count("WATCHDOG") > before
    finally:
        loop.stop()


def test_failing_heartbeat_probe_withholds_the_ping(listener):
    def broken():
        raise RuntimeError("supervisor gone")

    env = {"NOTIFY_SOCKET": listener.address, "WATCHDOG_USEC": "200000"}
    loop = WatchdogLoop(SystemdNotifier(environ=env), broken, heartbeat_timeout_s=1.0)
    assert loop.tick() is False
    msgs = listener.drain(0.1)
    assert not any("WATCHDOG" in m for m in msgs)
    assert "supervisor gone" in msgs[-1]["STATUS"]


def test_format_status_tolerates_nested_and_missing_keys():
    assert format_status({}) == "running"
    text = format_status({"fps": 20.04, "mqtt": {"state": "reconnecting"}, "outbox": {"depth": 12}, "camera": "open"})
    assert text == "fps=20.0 mqtt=reconnecting outbox=12 camera=open"


def test_systemd_ops_maps_pipeline_states_to_notify_messages(listener):
    from edge_inspector.systemd import SystemdOps

    ops = SystemdOps(FakeControl(), 10.0, SystemdNotifier(environ={"NOTIFY_SOCKET": listener.address}))
    ops.on_state("camera", "open")  # not the pipeline: nothing to tell systemd
    ops.on_state("pipeline", "ready", "model tiny, camera folder")
    ops.on_state("pipeline", "reloaded", "applied: nothing changed")  # no RELOADING before: STATUS only
    ops.on_state("pipeline", "reloading", "SIGHUP")
    ops.on_state("pipeline", "reload_failed", "model.path: not found")
    ops.on_state("pipeline", "stopping", "SIGTERM")
    msgs = listener.drain(0.2)
    assert msgs[0] == {"READY": "1", "STATUS": "ready: model tiny, camera folder"}
    assert msgs[1] == {"STATUS": "reloaded: applied: nothing changed"}
    assert msgs[2]["RELOADING"] == "1" and "MONOTONIC_USEC" in msgs[2]
    assert msgs[3] == {"READY": "1", "STATUS": "reload failed, old config kept: model.path: not found"}
    assert msgs[4] == {"STOPPING": "1", "STATUS": "stopping: SIGTERM"}
    assert len(msgs) == 5
    ops.stop()


def test_systemd_component_only_exists_under_systemd(monkeypatch):
    from types import SimpleNamespace

    from edge_inspector.config.models import Config
    from edge_inspector.systemd import SystemdOps, create_ops_component

    supervisor = SimpleNamespace(cfg=Config.model_validate({"station": {"line": "l1", "name": "st1"}}), stage_heartbeats=dict, status=dict)
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert create_ops_component(supervisor) is None
    monkeypatch.setenv("NOTIFY_SOCKET", "@edge-inspector-test-nobody")
    assert isinstance(create_ops_component(supervisor), SystemdOps)
