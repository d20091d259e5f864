"""NG archive: references, heatmaps, OK sampling, quota and age eviction (oldest first)."""

from __future__ import annotations

import os
import time
from datetime import datetime, timezone

import cv2
import numpy as np
import pytest

from edge_inspector.acquisition.base import Frame
from edge_inspector.archive.store import HEATMAP_SUFFIX, ArchiveStore
from edge_inspector.config.models import ArchiveConfig
from edge_inspector.postprocess.verdict import Defect, Verdict

TS = datetime(2026, 11, 28, 23, 59, 30, tzinfo=timezone.utc).timestamp()


def _frame(i: int, size=(48, 64), seed=None) -> Frame:
    rng = np.random.default_rng(i if seed is None else seed)
    img = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)  # noise: PNG cannot shrink it much
    return Frame(frame_id=f"cam0-{i:06d}", image=img, ts_grab=time.monotonic(), ts_wall=TS)


def _verdict(frame: Frame, kind: str = "NG") -> Verdict:
    defects = [Defect(bbox=(4, 4, 10, 8), centroid=(9, 8), area_px=80, score=0.9)] if kind == "NG" else []
    return Verdict(frame.frame_id, kind, 0.9, 0.5, ts_wall=frame.ts_wall, ts_grab=frame.ts_grab, defects=defects)


def _map(size=16) -> np.ndarray:
    m = np.zeros((1, 1, size, size), np.float32)
    m[..., 2:6, 2:6] = 1.0
    return m


@pytest.fixture
def make_store(tmp_path):
    stores = []

    def make(**overrides) -> ArchiveStore:
        cfg = ArchiveConfig(path=tmp_path / "archive", **overrides)
        store = ArchiveStore(cfg).start()
        stores.append(store)
        return store

    yield make
    for s in stores:
        s.stop()


def test_ng_frame_saved_with_heatmap_and_reference(make_store):
    store = make_store()
    frame = _frame(1)
    ref = store.on_verdict(_verdict(frame), frame, _map())
    assert ref == "2026-11-28/cam0-000001.png"  # the verdict's UTC day
    assert store.flush()
    saved = cv2.imread(str(store.root / ref), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(saved, frame.image)  # lossless, original pixels
    heat = cv2.imread(str(store.root / "2026-11-28" / f"cam0-000001{HEATMAP_SUFFIX}"))
    assert heat.shape == frame.image.shape
    assert tuple(heat[4, 8]) == (0, 0, 255)  # the defect box is drawn in red
    assert store.stats()["saved"] == 1


def test_ok_and_error_not_archived_unless_sampled(make_store, tmp_path):
    store = make_store()
    f = _frame(1)
    assert store.on_verdict(_verdict(f, "OK"), f, _map()) is None
    assert store.on_verdict(_verdict(f, "ERROR"), f, None) is None
    failed = Frame("cam0-x", None, 0, TS, error="grab timeout")
    assert store.on_verdict(_verdict(failed, "NG"), failed, None) is None


def test_every_nth_ok_frame_is_sampled(make_store):
    store = make_store(sample_ok_every=3)
    refs = []
    for i in range(1, 8):
        f = _frame(i)
        refs.append(store.on_verdict(_verdict(f, "OK"), f, _map()))
    assert [r is not None for r in refs] == [False, False, True, False, False, True, False]
    assert store.flush()
    assert (store.root / refs[2]).is_file() and (store.root / refs[5]).is_file()


def test_quota_evicts_oldest_first(make_store):
    store = make_store(max_mb=1.0, save_heatmap=False)
    refs, one_entry = [], None
    for i in range(6):
        f = _frame(i, size=(200, 300))  # ~180 kB of noise per PNG, all nearly the same size
        refs.append(store.on_verdict(_verdict(f), f, None))
        assert store.flush()
        one_entry = one_entry or store.stats()["bytes"]
    kept = [r for r in refs if (store.root / r).exists()]
    limit = 1.0 * 1024 * 1024
    assert store.stats()["bytes"] <= limit
    assert kept == refs[-len(kept):], "the newest frames must survive, the oldest go first"
    assert len(kept) == int(limit // one_entry)
    assert store.stats()["evicted_quota"] == len(refs) - len(kept)


def test_age_limit_removes_old_days_oldest_first_including_files_from_before_a_restart(tmp_path):
    root = tmp_path / "archive"
    now = time.time()
    for days_ago, name in ((40, "old-a"), (35, "old-b"), (2, "recent")):
        day = datetime.fromtimestamp(now - days_ago * 86400, tz=timezone.utc).strftime("%Y-%m-%d")
        (root / day).mkdir(parents=True, exist_ok=True)
        for fname in (f"{name}.png", f"{name}{HEATMAP_SUFFIX}"):
            p = root / day / fname
            p.write_bytes(b"x" * 1000)
            os.utime(p, (now - days_ago * 86400, now - days_ago * 86400))
    store = ArchiveStore(ArchiveConfig(path=root, max_age_days=30))
    assert store.stats()["files"] == 3 and store.stats()["bytes"] == 6000  # scanned at start
    store.enforce_limits()
    remaining = sorted(p.name for p in root.rglob("*.png"))
    assert remaining == ["recent.heatmap.png", "recent.png"]
    assert store.stats()["evicted_age"] == 2
    assert len([d for d in root.iterdir()]) == 1, "emptied day folders are removed"

    # reload with a shorter age limit applies at once
    store.apply_config(ArchiveConfig(path=root, max_age_days=1))
    assert list(root.rglob("*.png")) == []


def test_full_queue_skips_and_counts_instead_of_blocking(tmp_path):
    store = ArchiveStore(ArchiveConfig(path=tmp_path / "a"), queue_size=1)  # writer not started
    f1, f2 = _frame(1), _frame(2)
    assert store.on_verdict(_verdict(f1), f1, None) is not None
    t0 = time.monotonic()
    assert store.on_verdict(_verdict(f2), f2, None) is None  # no reference for a file never written
    assert time.monotonic() - t0 < 1.0  # a blocking put would hang here (the writer never runs)
    assert store.stats()["skipped_queue_full"] == 1
    store.start()
    store.stop()
    assert (store.root / "2026-11-28" / "cam0-000001.png").is_file()


def test_same_frame_id_twice_never_overwrites_and_unsafe_ids_stay_inside(make_store):
    store = make_store(save_heatmap=False)
    f = _frame(1)
    r1 = store.on_verdict(_verdict(f), f, None)
    r2 = store.on_verdict(_verdict(f), f, None)
    assert r1 != r2
    evil = Frame("../../etc/passwd", f.image, 0, TS)
    r3 = store.on_verdict(_verdict(evil), evil, None)
    assert store.flush()
    assert ".." not in r3 and "/" not in r3.split("/", 1)[1]
    assert (store.root / r3).resolve().is_relative_to(store.root.resolve())


def test_disabled_archive_returns_no_reference(make_store):
    store = make_store(enabled=False)
    f = _frame(1)
    assert store.on_verdict(_verdict(f), f, _map()) is None


def test_heatmap_covers_only_the_roi():
    from edge_inspector.archive.store import render_overlay

    image = np.full((100, 200), 127, np.uint8)
    heat = np.ones((16, 16), np.float32)  # hot everywhere the model looked
    overlay = render_overlay(image, heat, threshold=0.5, defects=[], geometry=(50, 20, 100, 60))
    assert overlay.shape == (100, 200, 3)
    assert (overlay[:20] == 127).all() and (overlay[:, :50] == 127).all()  # outside the ROI: untouched
    assert (overlay[20:80, 50:150] != 127).any(axis=2).all()  # inside: coloured
    # an ROI that runs past the frame is clipped as Preprocessor._crop does
    assert render_overlay(image, heat, 0.5, [], geometry=(150, 50, 500, 500)).shape == (100, 200, 3)


def test_evictions_are_logged_as_a_rate_limited_summary(make_store, capsys):
    """A full archive evicts on every write: one INFO line each flooded the journal (319 of 361
    lines). Now one summary per interval, and the last one at stop; the counter has every eviction."""
    import json

    from edge_inspector.logging import setup_logging

    setup_logging("INFO", json_logs=True)
    capsys.readouterr()
    store = make_store(max_mb=0.3, save_heatmap=False)
    for i in range(8):
        f = _frame(i, size=(200, 300))  # ~180 kB each: from the second write on, every write evicts
        store.on_verdict(_verdict(f), f, None)
        assert store.flush()
    store.stop()
    evicted = store.stats()["evicted_quota"]
    assert evicted >= 6
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    summaries = [line for line in lines if line["event"] == "archive_evicted"]
    assert len(summaries) == 2, summaries  # the first at once, the rest in the summary at stop
    assert sum(s["removed"] for s in summaries) == evicted
    assert summaries[-1]["by_reason"] == {"evicted_quota": evicted - summaries[0]["removed"]}
