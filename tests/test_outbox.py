"""Outbox: seq persistence, ordering, ack, quota policies, corrupt files, threads."""

from __future__ import annotations

import json
import sqlite3
import threading
import time

import pytest

from pathlib import Path

from edge_inspector.publish.outbox import SEQ_RESERVE, Outbox, OutboxFullError
from edge_inspector.publish.payload import SEQ_MAX, build_plc, parse_plc, parse_result


def _payload(i: int, pad: int = 0) -> dict:
    return {"schema": "edge-inspector.result/1", "frame_id": f"f{i}", "pad": "x" * pad}


def test_add_assigns_increasing_seq_and_stores_it_in_the_json(tmp_path):
    box = Outbox(tmp_path / "o.sqlite")
    seqs = [box.add(_payload(i)) for i in range(5)]
    assert seqs == [1, 2, 3, 4, 5]
    rows = box.pending(10)
    assert [s for s, _ in rows] == seqs
    first = json.loads(rows[0][1])
    assert list(first)[:2] == ["schema", "seq"] and first["seq"] == 1 and first["frame_id"] == "f0"
    assert box.depth() == 5
    box.close()


def test_seq_survives_reopen_even_when_every_row_was_acked(tmp_path):
    path = tmp_path / "o.sqlite"
    box = Outbox(path)
    for i in range(3):
        box.add(_payload(i))
    for seq, _ in box.pending(10):
        assert box.ack(seq)
    assert box.depth() == 0
    box.close()
    box = Outbox(path)
    assert box.last_seq == 3 and box.depth() == 0
    assert box.add(_payload(9)) == 4
    box.close()


def test_pending_is_in_seq_order_and_respects_after_and_limit(tmp_path):
    box = Outbox(tmp_path / "o.sqlite")
    for i in range(10):
        box.add(_payload(i))
    box.ack(3)
    assert [s for s, _ in box.pending(4)] == [1, 2, 4, 5]
    assert [s for s, _ in box.pending(3, after_seq=5)] == [6, 7, 8]
    assert box.ack(3) is False  # acking twice is harmless and reported
    assert box.depth() == 9
    box.close()


def test_unacked_rows_survive_reopen(tmp_path):
    path = tmp_path / "o.sqlite"
    box = Outbox(path)
    for i in range(4):
        box.add(_payload(i))
    box.ack(1)
    # no close(): simulate a crash, the connection is just dropped
    del box
    box = Outbox(path)
    assert [s for s, _ in box.pending(10)] == [2, 3, 4]
    box.close()


def test_drop_oldest_evicts_oldest_keeps_newest_and_counts(tmp_path):
    path = tmp_path / "o.sqlite"
    box = Outbox(path, max_mb=0.1, when_full="drop_oldest")
    n = 400
    for i in range(n):
        box.add(_payload(i, pad=1000))
    assert box.used_bytes() <= box.max_bytes
    evicted = box.evicted_total
    assert evicted > 0 and box.depth() == n - evicted
    seqs = [s for s, _ in box.pending(n)]
    assert seqs == list(range(evicted + 1, n + 1))  # exactly the oldest ones went
    box.close()
    assert Outbox(path, max_mb=0.1).evicted_total == evicted  # persisted for health reporting


def test_stop_policy_refuses_without_consuming_a_seq(tmp_path):
    box = Outbox(tmp_path / "o.sqlite", max_mb=0.1, when_full="stop")
    with pytest.raises(OutboxFullError, match=r"o\.sqlite is full .*policy 'stop'"):
        for i in range(1000):
            box.add(_payload(i, pad=1000))
    stored = box.depth()
    assert stored == box.last_seq and box.evicted_total == 0
    for seq, _ in box.pending(20):  # space comes back once results are delivered
        box.ack(seq)
    assert box.add(_payload(0, pad=1000)) == stored + 1
    box.close()


def test_garbage_file_is_kept_aside_and_seq_never_goes_back(tmp_path):
    path = tmp_path / "o.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    before_s = int(time.time())
    box = Outbox(path)
    assert box.quarantined is not None and box.quarantined.name.startswith("o.sqlite.corrupt-")
    assert box.quarantined.read_bytes().startswith(b"this is not a database")  # never deleted
    seq = box.add(_payload(0))
    # last seq unreadable and no reservation file: the clock in seconds, inside the 32-bit range
    assert before_s < seq <= SEQ_MAX
    parse_plc(json.dumps(build_plc({"seq": seq, "verdict": "OK", "score": 0.1, "defects": []})))
    box.close()


def test_corrupt_outbox_continues_above_every_issued_seq_within_the_plc_range(tmp_path):
    # Issue 8: after quarantine the counter restarted at the time in ms (1 796 004 754 404),
    # outside the PLC payload's 32-bit range, and parse_plc rejected it. The reservation file
    # now says how far seq may have gone: the counter continues above that, in range.
    path = tmp_path / "o.sqlite"
    box = Outbox(path)
    issued = [box.add(_payload(i)) for i in range(5)]
    box.close()
    path.write_bytes(b"garbage" * 1000)  # the database and its last seq are gone
    for suffix in ("-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    box = Outbox(path)
    seq = box.add(_payload(9))
    assert max(issued) < seq <= max(issued) + SEQ_RESERVE  # a bounded gap, never a step back
    result = json.loads(box.pending(10)[-1][1])
    assert parse_result(json.dumps({**result, "ts": "2026-01-01T00:00:00.000Z", "station": {"line": "l", "name": "s"},
                                    "verdict": "OK", "score": 0.1, "threshold": 0.5, "defects": [],
                                    "model": {"name": "m", "sha256": "0" * 64}}))["seq"] == seq
    assert parse_plc(json.dumps(build_plc({"seq": seq, "verdict": "OK", "score": 0.1, "defects": []})))["seq"] == seq
    box.close()


def test_seq_wraps_to_one_after_the_32_bit_maximum_and_keeps_order(tmp_path):
    path = tmp_path / "o.sqlite"
    box = Outbox(path)
    box.close()
    with sqlite3.connect(path) as db:  # fast-forward the counter to just below the maximum
        db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('last_seq', ?)", (SEQ_MAX - 2,))
    box = Outbox(path)
    seqs = [box.add(_payload(i)) for i in range(4)]
    assert seqs == [SEQ_MAX - 1, SEQ_MAX, 1, 2]
    # rows from before the wrap stay older: replay order and "after" positions follow storage order
    assert [s for s, _ in box.pending(10)] == seqs
    assert [s for s, _ in box.pending(10, after_seq=SEQ_MAX - 1)] == [SEQ_MAX, 1, 2]
    assert [s for s, _ in box.pending(10, after_seq=SEQ_MAX)] == [1, 2]
    assert [s for s, _ in box.pending(10, after_seq=1)] == [2]
    assert [s for s, _ in box.pending(2)] == [SEQ_MAX - 1, SEQ_MAX]
    box.close()
    box = Outbox(path)
    assert box.add(_payload(9)) == 3
    box.close()


def test_the_window_of_waiting_results_spans_the_wrap(tmp_path):
    """What a new run counts as replays: the waiting results' cyclic seq window. Its own results
    after the wrap (seq 1, 2, … below the earlier run's last seq) are not in it."""
    from edge_inspector.publish.outbox import seq_in_window

    path = tmp_path / "o.sqlite"
    box = Outbox(path)
    assert box.pending_window() is None
    box.close()
    with sqlite3.connect(path) as db:
        db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('last_seq', ?)", (SEQ_MAX - 3,))
    box = Outbox(path)
    left = [box.add(_payload(i)) for i in range(2)]  # an earlier run's results, not acknowledged
    box.close()
    box = Outbox(path)  # the next run opens it
    window = box.pending_window()
    assert window == (SEQ_MAX - 2, SEQ_MAX - 1) == (left[0], left[1])
    own = [box.add(_payload(i)) for i in range(3)]
    assert own == [SEQ_MAX, 1, 2]
    assert all(seq_in_window(s, window) for s in left)
    assert not any(seq_in_window(s, window) for s in own)  # "≤ the last seq at start" said yes to 1, 2
    # a window that itself wraps
    assert seq_in_window(SEQ_MAX, (SEQ_MAX - 1, 2)) and seq_in_window(1, (SEQ_MAX - 1, 2))
    assert not seq_in_window(3, (SEQ_MAX - 1, 2)) and not seq_in_window(5, None)
    box.close()


def test_truncated_file_salvages_last_seq_and_readable_rows(tmp_path):
    path = tmp_path / "o.sqlite"
    box = Outbox(path)
    for i in range(300):
        box.add(_payload(i, pad=500))
    box.close()  # checkpoints the WAL into the main file
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    box = Outbox(path)
    assert box.quarantined is not None and box.quarantined.exists()
    assert box.last_seq >= 300  # seq continues after the old counter
    assert box.add(_payload(1)) > 300
    box.close()


def test_concurrent_adds_get_unique_contiguous_seqs(tmp_path):
    box = Outbox(tmp_path / "o.sqlite")
    got: list[int] = []
    lock = threading.Lock()

    def writer():
        for i in range(50):
            seq = box.add(_payload(i))
            with lock:
                got.append(seq)

    threads = [threading.Thread(target=writer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == list(range(1, 201))
    box.close()


def test_wal_mode_is_on(tmp_path):
    path = tmp_path / "o.sqlite"
    Outbox(path).close()
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_bad_policy_is_one_line_error(tmp_path):
    with pytest.raises(ValueError, match="when_full"):
        Outbox(tmp_path / "o.sqlite", when_full="explode")


def test_second_opener_of_the_same_outbox_is_refused(tmp_path):
    from edge_inspector.publish.outbox import OutboxError

    path = tmp_path / "o.sqlite"
    box = Outbox(path)
    with pytest.raises(OutboxError, match=rf"outbox {path} is in use by another process \(pid \d+\)"):
        Outbox(path)
    box.close()
    Outbox(path).close()  # released on close


def test_unopenable_path_is_an_error_and_nothing_is_moved(tmp_path):
    from edge_inspector.publish.outbox import OutboxError

    path = tmp_path / "o.sqlite"
    path.mkdir()  # a directory where the file should be: not corruption, must not be "recovered"
    with pytest.raises(OutboxError, match=r"o\.sqlite: cannot open"):
        Outbox(path)
    assert path.is_dir() and not list(tmp_path.glob("*.corrupt-*"))


def test_session_counts_opens_and_an_outbox_from_before_sessions_still_replays(tmp_path):
    """An outbox written by a version without ``session`` (no meta row): its rows replay as they
    were stored, and the counter starts (from the Unix time in minutes) and then counts opens."""
    path = tmp_path / "o.sqlite"
    old_row = json.dumps({"schema": "edge-inspector.result/1", "seq": 41, "frame_id": "cam0-41", "ts": "2025-11-28T16:15:36.123Z",
                          "station": {"line": "l", "name": "s"}, "verdict": "OK", "score": 0.1, "threshold": 0.5,
                          "defects": [], "model": {"name": "m", "sha256": "ab" * 32}})
    conn = sqlite3.connect(path)  # the layout older versions wrote
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)")
    conn.execute("CREATE TABLE outbox (seq INTEGER PRIMARY KEY, created REAL NOT NULL, payload TEXT NOT NULL)")
    conn.execute("INSERT INTO outbox VALUES (41, 0, ?)", (old_row,))
    conn.execute("INSERT INTO meta VALUES ('last_seq', 41)")
    conn.commit()
    conn.close()
    box = Outbox(path)
    first = box.session
    assert first >= int(time.time() // 60) - 1
    assert box.pending(10) == [(41, old_row)]  # byte for byte what was stored
    plc = build_plc(parse_result(old_row))
    assert plc["part_ref"] == 0 and parse_plc(json.dumps(plc)) == plc
    assert box.add(_payload(1)) == 42
    box.close()
    box = Outbox(path)
    assert box.session == first + 1
    box.close()
