"""Broker outage + daemon SIGKILL during the outage: every result still arrives, in seq order,
without a gap (issue 3's hardest delivery test; real mosquitto with persistence)."""

from __future__ import annotations

import json
import signal
import sqlite3
import time

from edge_inspector.publish.payload import parse_result
from tests.helpers.station import Subscriber, start_daemon, station_config, stop_daemon, write_config, write_parts, frame_stem
from tests.helpers.tiny_bundle import make_tiny_bundle


def _outbox_state(path):
    with sqlite3.connect(path) as db:
        depth = db.execute("SELECT count(*) FROM outbox").fetchone()[0]
        last = db.execute("SELECT value FROM meta WHERE key='last_seq'").fetchone()[0]
    return depth, last


def test_broker_outage_and_sigkill_lose_nothing(tmp_path, mosquitto):
    n = 30
    images = tmp_path / "images"
    files = write_parts(images, n)
    model_dir = make_tiny_bundle(tmp_path / "model")
    cfg = station_config(tmp_path, mosquitto.port, model_dir, images, camera={"fps": 10.0})
    config = write_config(tmp_path / "station.yaml", cfg)
    outbox = tmp_path / "state" / "outbox.sqlite"
    sub = Subscriber(mosquitto.port, persistent=True)
    first = second = None
    try:
        first = start_daemon(config, log_path=tmp_path / "first.log")
        sub.wait_for(lambda: len(sub.results_by_seq()) >= 6, 30, "first results")
        mosquitto.stop()
        time.sleep(1.5)  # the daemon keeps inspecting; results wait in the outbox
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        depth_at_kill, last_seq_at_kill = _outbox_state(outbox)
        assert depth_at_kill >= 5, "the outage should have left results in the outbox"

        second = start_daemon(config, log_path=tmp_path / "second.log")  # broker still down
        time.sleep(2.0)
        mosquitto.start()
        rc = second.wait(60)  # folder ends → drain → flush → exit 0
        log = (tmp_path / "second.log").read_text()
        assert rc == 0, log[-2000:]
        stopped = [json.loads(ln) for ln in log.splitlines() if '"event": "stopped"' in ln][-1]
        assert stopped["frames_in"] == stopped["frames_out"] == n

        total = last_seq_at_kill + n
        sub.wait_for(lambda: len(sub.results_by_seq()) >= total, 20, f"{total} results")
        received = sub.results_by_seq()
        assert sorted(received) == list(range(1, total + 1))  # no gap, nothing lost
        for raw, _ in sub.raw("result"):  # duplicates (QoS 1) must be identical copies
            r = parse_result(raw)
            assert r == received[r["seq"]]
        # the second run's frames are the last n seqs, in grab order
        tail = [frame_stem(received[s]) for s in range(last_seq_at_kill + 1, total + 1)]
        assert tail == [f.stem for f in files]
        # and the first run's results before the kill are the folder's prefix, in order
        head = [frame_stem(received[s]) for s in range(1, last_seq_at_kill + 1)]
        assert head == [f.stem for f in files[: last_seq_at_kill]]
        assert _outbox_state(outbox) == (0, total)
    finally:
        sub.close()
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                stop_daemon(proc, signal.SIGKILL)
