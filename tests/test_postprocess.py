"""postprocess/regions.py: hand-made anomaly maps → defects in original-image pixels."""

import math

import numpy as np

from edge_inspector.postprocess.regions import RegionSettings, decide, error_verdict, find_defects
from edge_inspector.preprocess.core import Geometry, Preprocessor


def identity_geometry(size=64):
    return Geometry(orig_h=size, orig_w=size, roi_x=0, roi_y=0, roi_w=size, roi_h=size, input_h=size, input_w=size)


def test_single_blob_identity_geometry():
    amap = np.zeros((64, 64), np.float32)
    amap[10:14, 20:26] = 0.8  # 6 wide, 4 high
    amap[11, 22] = 0.95
    d = find_defects(amap, identity_geometry(), RegionSettings(threshold=0.5, min_defect_area_px=1))
    assert len(d) == 1
    assert d[0].bbox == (20, 10, 6, 4)
    assert d[0].area_px == 24
    assert d[0].centroid == (22.5, 11.5)
    assert math.isclose(d[0].score, 0.95, rel_tol=1e-6)


def test_roi_offset_and_scale_map_back_to_original_pixels():
    # ROI 128×64 at (100, 40) of a 300×200 frame, resized to 64×64: sx = 2, sy = 1.
    geom = Geometry(orig_h=200, orig_w=300, roi_x=100, roi_y=40, roi_w=128, roi_h=64, input_h=64, input_w=64)
    amap = np.zeros((64, 64), np.float32)
    amap[5:9, 10:13] = 1.0  # model pixels x 10..12, y 5..8
    d = find_defects(amap, geom, RegionSettings(threshold=0.5, min_defect_area_px=1))
    assert len(d) == 1
    assert d[0].bbox == (100 + 20, 40 + 5, 6, 4)
    assert d[0].area_px == 12 * 2
    # model centroid (11, 6.5) → original pixel centres: x 120..125 → 122.5, y 45..48 → 46.5
    assert d[0].centroid == (122.5, 46.5)


def test_geometry_from_real_preprocessor_roundtrip():
    # a bright square at known original coordinates must come back at those coordinates
    frame = np.full((240, 320), 127, np.uint8)
    frame[100:120, 200:240] = 255
    pre = Preprocessor(64, roi=(160, 80, 128, 64))  # sx = 2, sy = 1
    x, geom = pre.prepare(frame)
    amap = np.abs(x).mean(axis=0)
    d = find_defects(amap, geom, RegionSettings(threshold=0.5, min_defect_area_px=1))
    assert len(d) == 1
    bx, by, bw, bh = d[0].bbox
    assert (bx, by, bw, bh) == (200, 100, 40, 20)
    assert abs(d[0].centroid[0] - 219.5) < 1.0 and abs(d[0].centroid[1] - 109.5) < 1.0


def test_min_area_is_in_original_pixels():
    geom = Geometry(orig_h=256, orig_w=256, roi_x=0, roi_y=0, roi_w=256, roi_h=256, input_h=64, input_w=64)  # 4×4 per map px
    amap = np.zeros((64, 64), np.float32)
    amap[3, 3] = 1.0  # one map pixel = 16 original pixels
    assert len(find_defects(amap, geom, RegionSettings(threshold=0.5, min_defect_area_px=16))) == 1
    assert find_defects(amap, geom, RegionSettings(threshold=0.5, min_defect_area_px=17)) == []


def test_top_k_by_score_and_map_threshold():
    amap = np.zeros((64, 64), np.float32)
    scores = [0.6, 0.9, 0.7, 0.8]
    for i, s in enumerate(scores):
        amap[5 + 12 * i : 9 + 12 * i, 5:9] = s
    settings = RegionSettings(threshold=0.5, min_defect_area_px=1, max_defects=2)
    d = find_defects(amap, identity_geometry(), settings)
    assert [round(x.score, 2) for x in d] == [0.9, 0.8]
    # map_threshold above two of the regions leaves only the others
    d = find_defects(amap, identity_geometry(), RegionSettings(threshold=0.5, map_threshold=0.75, min_defect_area_px=1))
    assert sorted(round(x.score, 2) for x in d) == [0.8, 0.9]


def test_diagonal_pixels_join_one_region():
    amap = np.zeros((64, 64), np.float32)
    amap[10, 10] = amap[11, 11] = amap[12, 12] = 1.0
    d = find_defects(amap, identity_geometry(), RegionSettings(threshold=0.5, min_defect_area_px=1))
    assert len(d) == 1 and d[0].bbox == (10, 10, 3, 3) and d[0].area_px == 3


def test_map_of_other_size_than_model_input_uses_map_scale():
    geom = Geometry(orig_h=128, orig_w=128, roi_x=0, roi_y=0, roi_w=128, roi_h=128, input_h=64, input_w=64)
    amap = np.zeros((32, 32), np.float32)  # a model that outputs a quarter-size map
    amap[0, 0] = 1.0
    d = find_defects(amap, geom, RegionSettings(threshold=0.5, min_defect_area_px=1))
    assert d[0].bbox == (0, 0, 4, 4) and d[0].area_px == 16


def test_decide_ok_ng_boundary_and_nan():
    amap = np.zeros((64, 64), np.float32)
    amap[20:30, 20:30] = 0.5
    settings = RegionSettings(threshold=0.5, min_defect_area_px=1)
    ng = decide("f1", 1.0, 2.0, 0.5, amap, identity_geometry(), settings)  # score == threshold → NG
    assert ng.verdict == "NG" and ng.threshold == 0.5 and len(ng.defects) == 1 and ng.error is None
    ok = decide("f2", 1.0, 2.0, 0.4999, amap * 0.9, identity_geometry(), settings)
    assert ok.verdict == "OK" and ok.defects == []
    bad = decide("f3", 1.0, 2.0, float("nan"), amap, identity_geometry(), settings)
    assert bad.verdict == "ERROR" and "non-finite" in bad.error and bad.score is None


def test_ng_with_only_tiny_regions_stays_ng_without_defects():
    amap = np.zeros((64, 64), np.float32)
    amap[1, 1] = 0.9
    v = decide("f", 0, 0, 0.9, amap, identity_geometry(), RegionSettings(threshold=0.5, min_defect_area_px=4))
    assert v.verdict == "NG" and v.defects == []


def test_error_verdict_and_payload_dict():
    v = error_verdict("f9", 10.0, 5.0, "grab failed", 0.5)
    assert (v.verdict, v.score, v.threshold, v.error) == ("ERROR", None, 0.5, "grab failed")
    amap = np.zeros((64, 64), np.float32)
    amap[0:4, 0:4] = 1.0
    d = find_defects(amap, identity_geometry(), RegionSettings(threshold=0.5, min_defect_area_px=1))[0].to_dict()
    assert d == {"bbox": [0, 0, 4, 4], "centroid": [1.5, 1.5], "area_px": 16, "score": 1.0}
