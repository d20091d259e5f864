"""Class 4, disk full is a state: the outbox and the NG archive report it (/healthz, status
payload, ``edge_inspector_disk_full``), keep what they have and resume by themselves when space
returns; results name an archive file only once it is written; SIGTERM on a full disk is bounded
and exits 1 saying what remains; a restart on a still-full disk runs in the same reported state.

Each test mounts a 1 MiB tmpfs (root only, as CI runs; skipped with the reason otherwise)."""

from __future__ import annotations

import signal

import pytest

from tests.helpers.broker import free_port
from tests.helpers.faults import (assert_contiguous, fill_disk, healthz, log_events, metric, small_tmpfs,
                                  start_daemon, wait_until)
from tests.helpers.station import Subscriber, fatal_message, run_cli, station_config, stop_daemon, write_config, write_parts
from tests.helpers.tiny_bundle import make_tiny_bundle


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny_bundle(tmp_path_factory.mktemp("model") / "m")


def _config(tmp_path, port, model_dir, health_port, **sections):
    images = tmp_path / "images"
    write_parts(images, 8)
    cfg = station_config(tmp_path, port, model_dir, images, camera={"fps": 10.0, "loop": True},
                         pipeline={"heartbeat_timeout_s": 1.5, "shutdown_timeout_s": 3.0},
                         health={"enabled": True, "port": health_port}, **sections)
    return write_config(tmp_path / "station.yaml", cfg)


def _blocked_on_outbox(port):
    code, body = healthz(port)
    return body if code == 503 and body.get("status") == "blocked" and "outbox" in body.get("conditions", {}) else None


def test_outbox_disk_full_while_broker_down_reports_and_resumes(tmp_path, mosquitto, model_dir):
    # Issue 8: the MQTT worker died for good on this (its error handler raised), nothing was
    # published after the disk was freed, and /healthz kept saying 200.
    health_port = free_port()
    with small_tmpfs(tmp_path / "state"):
        config = _config(tmp_path, mosquitto.port, model_dir, health_port)
        sub = Subscriber(mosquitto.port, persistent=True)
        log = tmp_path / "daemon.log"
        proc = start_daemon(config, log_path=log)
        try:
            wait_until(lambda: len(sub.results_by_seq()) >= 3, 30, "first results", proc, log)
            mosquitto.stop()
            filler = fill_disk(tmp_path / "state")
            body = wait_until(lambda: _blocked_on_outbox(health_port), 15, "/healthz blocked: outbox disk full", proc, log)
            assert "disk full" in body["conditions"]["outbox"]
            assert metric(health_port, "edge_inspector_disk_full", store="outbox") == 1
            mosquitto.start()  # the broker is back, the disk still full: still blocked, nothing lost
            wait_until(lambda: sub.payloads("status") and sub.payloads("status")[-1].get("conditions", {}).get("outbox"),
                       20, "status payload naming the full outbox disk", proc, log)
            assert _blocked_on_outbox(health_port)
            filler.unlink()  # space returns: everything resumes by itself
            wait_until(lambda: healthz(health_port)[0] == 200, 20, "healthy again after space returned", proc, log)
            assert metric(health_port, "edge_inspector_disk_full", store="outbox") == 0
            seen = len(sub.results_by_seq())
            wait_until(lambda: len(sub.results_by_seq()) > seen + 5, 20, "results after space returned", proc, log)
            wait_until(lambda: sub.payloads("status")[-1].get("conditions") == {}, 10, "status with the condition cleared")
        finally:
            rc = stop_daemon(proc)
            sub.close()
        assert rc == 0, log.read_text()[-3000:]
        assert log_events(log, "stopped")[-1]["undelivered_in_outbox"] == 0
        assert_contiguous(sub.results_by_seq())  # nothing lost across the whole episode


def test_sigterm_and_restart_on_a_full_outbox_disk_are_bounded_and_exit_1(tmp_path, model_dir):
    # No broker at all: results can only wait in the outbox, and the outbox's disk is full.
    health_port = free_port()
    with small_tmpfs(tmp_path / "state"):
        config = _config(tmp_path, free_port(), model_dir, health_port)
        log1, log2 = tmp_path / "first.log", tmp_path / "second.log"
        proc = start_daemon(config, log_path=log1)
        try:
            wait_until(lambda: healthz(health_port)[0] == 200, 30, "daemon up", proc, log1)
            # Results already waiting before the disk fills (on a loaded machine the first ones can
            # take a while): they are what the exit line must count as undelivered.
            wait_until(lambda: (metric(health_port, "edge_inspector_outbox_depth") or 0) > 0, 30,
                       "results waiting in the outbox", proc, log1)
            fill_disk(tmp_path / "state")
            wait_until(lambda: _blocked_on_outbox(health_port), 15, "outbox disk full reported", proc, log1)
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(30)  # bounded: shutdown_timeout_s + a few seconds, not twice or never
        finally:
            if proc.poll() is None:
                proc.kill()
        assert rc == 1, log1.read_text()[-3000:]
        stopped = log_events(log1, "stopped")[-1]
        assert stopped["exit_code"] == 1 and stopped["undelivered_in_outbox"] > 0
        assert "remain in the outbox" in stopped["message"]

        proc = start_daemon(config, log_path=log2)  # restart on the still-full disk
        try:
            body = wait_until(lambda: _blocked_on_outbox(health_port), 30, "the restart reporting the full disk", proc, log2)
            assert body["status"] == "blocked"
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert rc == 1, log2.read_text()[-3000:]


def test_archive_disk_full_results_name_only_written_files(tmp_path, mosquitto, model_dir):
    health_port = free_port()
    archive = tmp_path / "archive"
    with small_tmpfs(archive):
        config = _config(tmp_path, mosquitto.port, model_dir, health_port,
                         archive={"enabled": True, "path": str(archive)})
        sub = Subscriber(mosquitto.port)
        log = tmp_path / "daemon.log"
        proc = start_daemon(config, log_path=log)
        try:
            wait_until(lambda: any("archive" in r for r in sub.results_by_seq().values()), 30, "an archived NG", proc, log)
            filler = fill_disk(archive)
            code, body = wait_until(lambda: (lambda r: r if "archive" in r[1].get("warnings", {}) else None)(healthz(health_port)),
                                    20, "/healthz warning about the archive disk", proc, log)
            assert code == 200  # verdicts still flow: degraded, not down
            assert metric(health_port, "edge_inspector_disk_full", store="archive") == 1
            wait_until(lambda: sub.payloads("status")[-1].get("warnings", {}).get("archive"), 10, "status warning")
            mark = max(sub.results_by_seq())
            wait_until(lambda: sum(1 for s, r in sub.results_by_seq().items() if s > mark and r["verdict"] == "NG") >= 3,
                       20, "NG results while the archive disk is full", proc, log)
            filler.unlink()
            wait_until(lambda: metric(health_port, "edge_inspector_disk_full", store="archive") == 0, 20,
                       "archive disk space back", proc, log)
            after = max(sub.results_by_seq())
            wait_until(lambda: any("archive" in r for s, r in sub.results_by_seq().items() if s > after), 20,
                       "archive references again", proc, log)
        finally:
            rc = stop_daemon(proc)
            sub.close()
            results = sub.results_by_seq()
            for r in results.values():  # every reference names a file that is on disk
                if "archive" in r:
                    assert (archive / r["archive"]).is_file(), r["archive"]
        assert rc == 0, log.read_text()[-3000:]
        assert any(r["verdict"] == "NG" and "archive" not in r for r in results.values())
        assert_contiguous(results)


def test_first_start_on_a_full_disk_exits_1_with_one_line(tmp_path, model_dir):
    # A full disk is not a bad path: exit 1 (systemd retries until space returns), never 2, never a hang.
    with small_tmpfs(tmp_path / "state"):
        fill_disk(tmp_path / "state")
        images = tmp_path / "images"
        write_parts(images, 2)
        config = write_config(tmp_path / "station.yaml", station_config(tmp_path, free_port(), model_dir, images))
        done = run_cli("run", "--config", str(config), timeout=60)
    assert done.returncode == 1, done.stderr[-2000:]
    last = fatal_message(done.stderr)
    assert last.startswith("edge-inspector run: error: outbox.path=") and "no space left" in last


@pytest.mark.parametrize("where", ["under_a_file", "is_a_file"])
def test_bad_archive_path_is_exit_2_naming_the_key(tmp_path, model_dir, where):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    path = blocker / "archive" if where == "under_a_file" else blocker
    images = tmp_path / "images"
    write_parts(images, 2)
    config = write_config(tmp_path / "station.yaml", station_config(
        tmp_path, free_port(), model_dir, images, archive={"enabled": True, "path": str(path)}))
    done = run_cli("run", "--config", str(config), timeout=60)
    assert done.returncode == 2, done.stderr[-2000:]
    assert fatal_message(done.stderr).startswith(f"edge-inspector run: error: archive.path={path}: cannot create the archive folder")
    assert "Traceback" not in done.stderr
