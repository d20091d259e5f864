"""Class 2, fatal policy: an exception in any pipeline stage brings the real daemon down with
exit 1 (so systemd restarts it) instead of leaving a silently dead thread; what MES received
stays contiguous, and a restart continues the seq without a gap."""

from __future__ import annotations

import pytest

from tests.helpers.faults import assert_contiguous, log_events, start_daemon, wait_until
from tests.helpers.station import Subscriber, station_config, stop_daemon, write_config, write_parts
from tests.helpers.tiny_bundle import make_tiny_bundle

STAGES = ("acquisition", "preprocess", "inference", "postprocess", "publish")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny_bundle(tmp_path_factory.mktemp("model") / "m")


@pytest.mark.parametrize("stage", STAGES)
def test_stage_exception_exits_1_and_restart_continues_seq(tmp_path, mosquitto, model_dir, stage):
    images = tmp_path / "images"
    write_parts(images, 10)
    cfg = station_config(tmp_path, mosquitto.port, model_dir, images, camera={"fps": 20.0},
                         pipeline={"shutdown_timeout_s": 2.0})
    config = write_config(tmp_path / "station.yaml", cfg)
    sub = Subscriber(mosquitto.port)
    log1, log2 = tmp_path / "first.log", tmp_path / "second.log"
    first = start_daemon(config, faults=f"stage.{stage}:raise:3", log_path=log1)
    second = None
    try:
        rc = first.wait(60)
        assert rc == 1, log1.read_text()[-2000:]  # a dead stage ends the daemon: systemd restarts it
        failed = log_events(log1, "stage_failed")
        assert failed and failed[0]["stage"] == stage
        stopped = log_events(log1, "stopped")[-1]
        assert stopped["exit_code"] == 1
        wait_until(lambda: sub.payloads("status") and sub.payloads("status")[-1]["online"] is False, 10,
                   "offline status after the failure")
        first_seqs = sorted(sub.results_by_seq())
        assert len(first_seqs) <= 3  # nothing published after the injected fault
        if first_seqs:
            assert_contiguous(first_seqs)

        second = start_daemon(config, log_path=log2)  # the restart systemd would do, fault gone
        assert second.wait(60) == 0, log2.read_text()[-2000:]
        wait_until(lambda: len(sub.results_by_seq()) >= len(first_seqs) + 10, 15, "the second run's results")
        assert_contiguous(sub.results_by_seq())  # seq continues after the failed run, no gap
    finally:
        sub.close()
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                stop_daemon(proc)
