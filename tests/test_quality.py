"""Image-quality gate (preprocess/quality.py), the light-stress transforms (preprocess/photometric.py)
and one daemon run: a saturated frame from a folder camera ends as an ERROR result naming overexposure."""

from __future__ import annotations


import cv2
import numpy as np
import pytest

from edge_inspector.config.models import QualityConfig
from edge_inspector.health.metrics import MetricsObserver
from edge_inspector.postprocess.verdict import Verdict
from edge_inspector.preprocess.photometric import LightCondition, apply_gradient, apply_highlight
from edge_inspector.preprocess.quality import QualityGate, exposure_stats, measure
from edge_inspector.publish.payload import parse_plc, parse_result
from tests.helpers.station import Subscriber, run_to_end, station_config, write_config, write_parts, frame_stem
from tests.helpers.tiny_bundle import make_tiny_bundle


def _gate(exposure=None, train_mean=None, roi=None, **limits) -> QualityGate:
    stats = None
    if exposure is not None or train_mean is not None:
        stats = {"mean": [train_mean] * 3 if train_mean is not None else [100.0] * 3, "std": [20.0] * 3}
        if exposure is not None:
            stats["exposure"] = exposure
    return QualityGate.from_settings(QualityConfig(**limits), {"lighting": "none", "train_stats": stats}, roi)


def _grey(value: int, shape=(120, 160)) -> np.ndarray:
    return np.full(shape, value, np.uint8)


def test_measure_counts_saturated_and_black_pixels():
    img = _grey(100, (200, 200))
    img[:50] = 255  # a quarter saturated
    img[150:] = 0  # a quarter black
    e = measure(cv2.cvtColor(img, cv2.COLOR_GRAY2BGR))
    assert e.saturated_fraction == pytest.approx(0.25, abs=0.01)
    assert e.black_fraction == pytest.approx(0.25, abs=0.01)
    assert e.mean_luma == pytest.approx((255 * 50 + 100 * 100) / 200, abs=1.0)


def test_one_saturated_channel_counts_as_saturated():
    img = np.full((64, 64, 3), 80, np.uint8)
    img[:, :32, 2] = 255  # red channel clipped on half the frame
    assert measure(img).saturated_fraction == pytest.approx(0.5, abs=0.02)


def test_exposure_stats_of_training_images():
    stats = exposure_stats([_grey(90), _grey(110)])
    assert stats["mean_luma"] == {"min": 90.0, "max": 110.0, "mean": 100.0}
    assert stats["saturated_fraction_max"] == 0 and stats["black_fraction_max"] == 0 and stats["n_images"] == 2


def test_gate_against_bundle_exposure_stats():
    exposure = exposure_stats([_grey(90), _grey(110)])
    gate = _gate(exposure)
    assert gate.check(_grey(100)) is None
    assert gate.check(_grey(200)) is None  # brighter than training, nothing clipped: the normalisation's job
    kind, reason = gate.check(_grey(255))
    assert kind == "overexposed" and reason.startswith("overexposed: 100.0% of pixels saturated")
    assert "saturated_margin" in reason
    # a highlight: 25 % of the frame saturated, more than the training images' 0 % + 20 %
    spot = _grey(100)
    spot[:30] = 255
    assert gate.check(spot)[0] == "overexposed"
    kind, reason = gate.check(_grey(0))
    assert kind == "underexposed" and reason.startswith("underexposed: 100.0% of pixels black") and "\n" not in reason
    assert gate.check(_grey(30)) is None  # 30 × 4 > 90
    kind, reason = gate.check(_grey(20))  # 20 × 4 < 90
    assert kind == "underexposed" and "mean_ratio" in reason
    assert gate.check(_grey(245)) is None  # the ratio's upper bound (4 × 110) lies above max_mean
    kind, reason = gate.check(_grey(252))
    assert kind == "overexposed"  # (saturated first: 252 ≥ saturated_level)


def test_gate_allows_what_training_images_already_had():
    """A bright scene whose training images were 40 % saturated (the bottle's white background)."""
    train = _grey(120)
    train[:48] = 255
    gate = _gate(exposure_stats([train]))
    assert gate.check(train) is None
    brighter = train.copy()
    brighter[48:66] = 255  # 55 %: 15 points more than the training images' 40 %, within the margin (20)
    assert gate.check(brighter) is None
    brighter[48:78] = 255  # 65 %: beyond 40 % + 20 % (and the absolute 60 %)
    assert gate.check(brighter)[0] == "overexposed"


def test_gate_without_exposure_stats_uses_train_mean_and_absolute_limits():
    gate = _gate(train_mean=20.0)  # a dark scene (the tire): its mean from train_stats
    assert gate.check(_grey(60)) is None
    kind, reason = gate.check(_grey(90))
    assert kind == "overexposed" and "mean_ratio=4" in reason
    bare = _gate()  # no training statistics at all: absolute limits only
    assert bare.check(_grey(60)) is None and bare.check(_grey(1))[0] == "underexposed"
    half = _grey(100)
    half[:80] = 255  # 67 % saturated
    assert bare.check(half)[0] == "overexposed" and "max_saturated_fraction" in bare.check(half)[1]


def test_gate_looks_at_the_roi_and_can_be_disabled():
    img = _grey(255)
    img[20:60, 20:60] = 100
    gate = _gate(exposure_stats([_grey(100)]), roi=(20, 20, 40, 40))
    assert gate.check(img) is None
    assert _gate(exposure_stats([_grey(100)])).check(img)[0] == "overexposed"
    assert _gate(exposure_stats([_grey(100)]), enabled=False).check(_grey(255)) is None


def test_metrics_count_gated_frames():
    metrics = MetricsObserver()
    v = Verdict("f1", "ERROR", None, 1.0, 0.0, 0.0, error="overexposed: x", quality="overexposed")
    metrics.on_verdict(v, None, None)
    metrics.on_verdict(Verdict("f2", "OK", 0.1, 1.0, 0.0, 0.0), None, None)
    get = metrics.registry.get_sample_value
    assert get("edge_inspector_quality_gated_total", {"kind": "overexposed"}) == 1
    assert get("edge_inspector_quality_gated_total", {"kind": "underexposed"}) == 0


# -- light-stress transforms ---------------------------------------------------------------------

def test_light_condition_clean_is_identity_and_gain_gamma_act():
    img = (np.random.default_rng(0).random((40, 50, 3)) * 200).astype(np.uint8)
    assert np.array_equal(LightCondition("clean").apply(img), img)
    assert LightCondition("clean").is_clean and not LightCondition("g", gain=1.2).is_clean
    assert LightCondition("g", gain=1.2).apply(img).mean() > img.mean() * 1.15
    assert LightCondition("y", gamma=0.6).apply(img).mean() > img.mean()
    assert LightCondition("o", offset=-30).apply(img).mean() < img.mean() - 25


def test_gradient_ramps_from_one_edge_to_the_other():
    out = apply_gradient(_grey(100, (50, 101)), 0.4)
    assert out[:, 0].mean() == pytest.approx(60, abs=1) and out[:, -1].mean() == pytest.approx(140, abs=1)
    vertical = apply_gradient(_grey(100, (101, 50)), 0.4, angle_deg=90)
    assert vertical[0].mean() == pytest.approx(60, abs=1) and vertical[-1].mean() == pytest.approx(140, abs=1)


def test_highlight_adds_its_grey_levels_at_the_centre_and_is_reproducible():
    out = apply_highlight(_grey(50, (100, 100)), 0.5, 0.5, 0.1, 100)
    assert out[50, 50] == 150 and out[0, 0] == 50
    cond = LightCondition("h", highlight_radius=0.08, highlight_add=100, seed=3)
    img = _grey(50, (100, 120))
    assert np.array_equal(cond.apply(img, 7), cond.apply(img, 7))
    assert not np.array_equal(cond.apply(img, 7), cond.apply(img, 8))  # each image its own spot


def test_light_effects_compose_in_the_scene_and_the_sensor_clips_once():
    """A white background the camera already clips, under a lamp 1.4× brighter ramped ±30 %: the
    scene is at least 255 · 1.4 · 0.7 ≈ 250 everywhere, so the frame stays near-white. Clipping after
    the gain and then darkening by the ramp would show a grey wedge (≈ 178) no camera records."""
    white = _grey(255, (60, 80))
    out = LightCondition("lamp", gain=1.4, gradient=0.3).apply(white)
    assert out.min() >= 249
    # each effect alone is what its primitive does
    img = (np.random.default_rng(2).random((40, 50, 3)) * 200).astype(np.uint8)
    assert np.array_equal(LightCondition("d", gradient=0.3, gradient_angle_deg=30.0).apply(img), apply_gradient(img, 0.3, 30.0))
    assert np.array_equal(LightCondition("g", gain=1.3).apply(img), np.clip(img * np.float32(1.3), 0, 255).astype(np.uint8))


# -- the daemon --------------------------------------------------------------------------------

def test_daemon_turns_a_saturated_frame_into_an_overexposed_error(tmp_path, mosquitto):
    images = tmp_path / "images"
    write_parts(images, 12, defect_every=0)  # mid-grey parts (127); 9 of them after the bad two
    cv2.imwrite(str(images / "part_0001a_saturated.png"), np.full((96, 128), 255, np.uint8))
    cv2.imwrite(str(images / "part_0002a_black.png"), np.zeros((96, 128), np.uint8))
    train = {"mean": [127.0] * 3, "std": [1.0] * 3, "exposure": exposure_stats([np.full((96, 128), 127, np.uint8)])}
    model_dir = make_tiny_bundle(tmp_path / "model", image_size=64, threshold=0.5,
                                 preprocess={"lighting": "none", "train_stats": train})
    # 10 fps, health every 0.2 s: several health messages go out after the two bad frames
    cfg = station_config(tmp_path, mosquitto.port, model_dir, images, camera={"fps": 10.0},
                         mqtt={**station_config(tmp_path, 0, model_dir, images)["mqtt"], "port": mosquitto.port, "health_interval_s": 0.2})
    config = write_config(tmp_path / "station.yaml", cfg)
    sub = Subscriber(mosquitto.port)
    try:
        run_to_end(config)
        sub.wait_for(lambda: len(sub.results_by_seq()) >= 14 and len(sub.payloads("plc")) >= 14, 10, "14 results")
        results = {frame_stem(r): r for r in (parse_result(p) for p, _ in sub.raw("result"))}
        sat, black = results["part_0001a_saturated"], results["part_0002a_black"]
        assert sat["verdict"] == "ERROR" and sat["error"].startswith("overexposed: 100.0% of pixels saturated")
        assert "part_0001a_saturated.png" in sat["error"]
        assert black["verdict"] == "ERROR" and black["error"].startswith("underexposed:")
        assert sorted(r["verdict"] for r in results.values()) == ["ERROR"] * 2 + ["OK"] * 12
        assert [parse_plc(p)["res"] for p, _ in sub.raw("plc")].count(3) == 2
        gated = [(h["counters"]["gated_overexposed"], h["counters"]["gated_underexposed"]) for h in sub.payloads("health")]
        assert gated and gated[0] <= gated[-1] and (1, 1) in gated, gated  # counted once each, never more
        assert all(o <= 1 and u <= 1 for o, u in gated), gated
    finally:
        sub.close()


# -- lighting: config and bundle agree -------------------------------------------------------------

def _cfg_and_bundle(tmp_path, config_lighting, bundle_lighting):
    from edge_inspector.config.models import Config
    from edge_inspector.inference.bundle import load_bundle

    flat = tmp_path / "flat.png"
    cv2.imwrite(str(flat), np.full((32, 32), 200, np.uint8))
    pre = {} if config_lighting is None else {"lighting": config_lighting, "flat_field_reference": str(flat)}
    cfg = Config.model_validate({"station": {"line": "l", "name": "s"}, "preprocess": pre})
    bundle = load_bundle(make_tiny_bundle(tmp_path / f"m_{bundle_lighting}", image_size=64,
                                          preprocess={"lighting": bundle_lighting, "train_stats": None}))
    return cfg, bundle


@pytest.mark.parametrize("config_lighting, bundle_lighting, runs", [
    (None, "none", "none"), (None, "clahe", "clahe"), ("clahe", "clahe", "clahe"), ("flat_field", "none", "flat_field"),
])
def test_station_runs_the_bundles_lighting(tmp_path, config_lighting, bundle_lighting, runs):
    from edge_inspector.pipeline.runtime import build_preprocessor

    cfg, bundle = _cfg_and_bundle(tmp_path, config_lighting, bundle_lighting)
    assert build_preprocessor(cfg, bundle).lighting == runs


@pytest.mark.parametrize("config_lighting, bundle_lighting", [("clahe", "none"), ("none", "match_hist"), ("flat_field", "clahe")])
def test_lighting_mismatch_between_config_and_bundle_is_one_line_error(tmp_path, config_lighting, bundle_lighting):
    from edge_inspector.errors import InputError
    from edge_inspector.pipeline.runtime import build_preprocessor

    cfg, bundle = _cfg_and_bundle(tmp_path, config_lighting, bundle_lighting)
    with pytest.raises(InputError) as err:
        build_preprocessor(cfg, bundle)
    msg = str(err.value)
    assert msg.startswith(f"preprocess.lighting={config_lighting} does not match the model bundle's lighting '{bundle_lighting}'")
    assert "model.json" in msg and "\n" not in msg


def test_match_hist_undoes_global_light_changes():
    from edge_inspector.preprocess.core import Preprocessor

    rng = np.random.default_rng(0)
    img = cv2.GaussianBlur((rng.random((120, 160, 3)) * 160 + 40).astype(np.uint8), (5, 5), 0)
    stats = {"mean": [100.0] * 3, "std": [30.0] * 3, "exposure": exposure_stats([img])}
    matched, plain = Preprocessor(64, lighting="match_hist", train_stats=stats), Preprocessor(64)
    ref = matched.prepare_rgb(img)[0].astype(np.float32)
    for cond in (LightCondition("g", gain=1.3), LightCondition("y", gamma=0.6), LightCondition("o", offset=-30),
                 LightCondition("d", gradient=0.3, gradient_angle_deg=30.0)):
        moved = cond.apply(img)
        assert np.abs(matched.prepare_rgb(moved)[0] - ref).mean() < 3.0
        assert np.abs(plain.prepare_rgb(moved)[0] - plain.prepare_rgb(img)[0].astype(np.float32)).mean() > 10.0


def test_match_hist_needs_the_bundles_percentiles():
    from edge_inspector.errors import InputError
    from edge_inspector.preprocess.core import Preprocessor

    with pytest.raises(InputError, match="luma_percentiles"):
        Preprocessor(64, lighting="match_hist", train_stats={"mean": [1, 1, 1], "std": [1, 1, 1]})


def test_levelling_removes_a_ramp_and_leaves_an_even_frame_alone():
    from edge_inspector.preprocess.levelling import level

    rng = np.random.default_rng(1)
    even = cv2.GaussianBlur((rng.random((90, 120, 3)) * 100 + 80).astype(np.uint8), (7, 7), 0)
    assert np.abs(level(even).astype(np.float32) - even).mean() < 1.0
    ramped = apply_gradient(even, 0.3, 30.0)
    assert np.abs(ramped.astype(np.float32) - even).mean() > 10
    assert np.abs(level(ramped).astype(np.float32) - even).mean() < 4.0


def test_levelling_keeps_clipped_pixels_clipped():
    """A white background clipped by the sensor has no known true value: levelling must not turn
    it grey (it did wherever the fitted plane leant, and the model alarmed on the grey)."""
    from edge_inspector.preprocess.levelling import level

    rng = np.random.default_rng(2)
    part = cv2.GaussianBlur((rng.random((90, 120, 3)) * 60 + 40).astype(np.uint8), (7, 7), 0)
    frame = apply_gradient(part, 0.3, 0.0)
    frame[:, :15] = 255  # an overexposed background on both sides of a centred part
    frame[:, 105:] = 255
    levelled = level(frame)
    assert (levelled[:, :15] == 255).all() and (levelled[:, 105:] == 255).all()
    # the part between them is still levelled (the plane fit, bright background included, takes
    # out part of its slope; test_levelling_removes_a_ramp… covers a frame without clipping)
    def slope(img):
        return img[:, 80:100].astype(np.float32).mean() - img[:, 20:40].astype(np.float32).mean()
    assert slope(frame) > 10.0
    assert 0.0 < slope(levelled) < 0.9 * slope(frame)


def test_training_on_overexposed_frames_warns_once_with_the_clipped_share(tmp_path, capsys):
    """A training set with a large clipped area gets one warning line naming the share; one with
    a few clipped highlights (kolektorsdd's bright texture: ≤ 3 %) does not."""
    import json

    from edge_inspector.logging import setup_logging
    from edge_inspector.training.features import scan_images

    setup_logging("INFO", json_logs=True)
    capsys.readouterr()
    rng = np.random.default_rng(3)

    def write(folder, white_columns):
        folder.mkdir()
        paths = []
        for k in range(3):
            img = (rng.random((40, 60, 3)) * 120 + 40).astype(np.uint8)
            img[:, :white_columns] = 255
            paths.append(folder / f"{k}.png")
            cv2.imwrite(str(paths[-1]), img)
        return paths

    *_, stats = scan_images([(write(tmp_path / "bright", 24), "train/good")])  # 40 % clipped
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    assert stats["exposure"]["saturated_fraction_mean"] == pytest.approx(0.4, abs=0.02)
    warning = [line for line in lines if "overexposed" in line["event"]]
    assert len(warning) == 1 and warning[0]["level"] == "warning"
    assert "40 %" in warning[0]["event"] and "exposure or gain" in warning[0]["event"]

    scan_images([(write(tmp_path / "fine", 1), "train/good")])  # under 2 % clipped
    assert "overexposed" not in capsys.readouterr().err


def test_match_hist_reclips_what_the_training_frames_clipped():
    """Training frames clipped their bright background at 255, hiding a falloff in one corner.
    A darker frame un-clips the background, corner falloff included: match_hist maps the share of
    the frame the training clipped (and a margin of CLIP_MARGIN_PERCENTILES) back to 255, so the
    model sees the white it was trained on, not a structure it never saw."""
    from edge_inspector.preprocess.core import Preprocessor

    rng = np.random.default_rng(4)
    h, w = 100, 100
    true_light = np.full((h, w), 320.0)  # the background is brighter than the sensor's range...
    true_light[:14, :14] = 262.0  # ...less so in one corner (2 % of the frame)
    part = cv2.GaussianBlur((rng.random((h, w)) * 120 + 40).astype(np.float32), (5, 5), 0)
    inside = np.zeros((h, w), bool)
    inside[25:75, 20:80] = True  # the part covers 30 % of the frame; the rest is background
    scene = np.where(inside, part, true_light)

    def shot(gain):
        return np.repeat(np.clip(scene * gain, 0, 255).astype(np.uint8)[..., None], 3, axis=2)

    train = shot(1.0)
    assert (train[~inside] == 255).all()  # training saw the whole background clipped
    stats = {"mean": [100.0] * 3, "std": [30.0] * 3, "exposure": exposure_stats([train])}
    matched = Preprocessor((h, w), lighting="match_hist", train_stats=stats)
    darker = matched.normalise_lighting(shot(0.8))  # background 256 → 255, the corner 209
    assert (darker[~inside] == 255).all()
    part_error = np.abs(darker[inside].astype(np.float32) - matched.normalise_lighting(train)[inside]).mean()
    assert part_error < 4.0
    # a bundle trained before the rule has no exposure.reclip_from: it keeps the tone curve it was
    # trained with, and the un-clipped corner shows
    old_stats = {**stats, "exposure": {k: v for k, v in stats["exposure"].items() if k != "reclip_from"}}
    old = Preprocessor((h, w), lighting="match_hist", train_stats=old_stats).normalise_lighting(shot(0.8))
    assert not (old[~inside] == 255).all()


def test_match_hist_leaves_a_few_clipped_highlights_alone():
    """Re-clipping is for training frames that clipped a large area; a texture whose brightest
    specks reach 255 (the pooled luma at 255 only at percentile 100) keeps its plain tone curve."""
    from edge_inspector.preprocess.quality import reclip_percentile

    rng = np.random.default_rng(5)
    texture = (rng.random((80, 80)) * 60 + 170).astype(np.uint8)
    texture[rng.random((80, 80)) < 0.01] = 255  # 1 % clipped specks
    assert reclip_percentile(np.asarray(exposure_stats([texture])["luma_percentiles"])) is None
    overexposed = texture.copy()
    overexposed[:, :30] = 255  # 38 % clipped
    start = reclip_percentile(np.asarray(exposure_stats([overexposed])["luma_percentiles"]))
    assert start is not None and 55.0 <= start <= 62.0


def test_match_tone_undoes_global_light_but_keeps_the_parts_own_slope():
    """match_tone is match_hist without levelling: global gain/gamma/offset are undone the same
    way, and the part's brightness slope stays."""
    from edge_inspector.preprocess.core import Preprocessor

    rng = np.random.default_rng(6)
    texture = cv2.GaussianBlur((rng.random((120, 160, 3)) * 80 + 60).astype(np.uint8), (5, 5), 0)
    sloped = apply_gradient(texture, 0.3, 0.0)  # the part is brighter to the right, in every frame
    stats = {"mean": [100.0] * 3, "std": [30.0] * 3, "exposure": exposure_stats([sloped])}
    tone = Preprocessor(64, lighting="match_tone", train_stats=stats)
    ref = tone.prepare_rgb(sloped)[0].astype(np.float32)
    for cond in (LightCondition("g", gain=1.3), LightCondition("y", gamma=0.6), LightCondition("o", offset=-30)):
        assert np.abs(tone.prepare_rgb(cond.apply(sloped))[0] - ref).mean() < 3.0
    assert _slope(ref) > 0.6 * _slope(cv2.resize(sloped, (64, 64), interpolation=cv2.INTER_AREA))


def _slope(img):
    """Mean of the right quarter minus the left quarter of a 64-wide image."""
    return img[:, 48:].astype(np.float32).mean() - img[:, :16].astype(np.float32).mean()


def _sloped_training_set(rng, n=12):
    """Frames of one textured part, lit from the right (slope about +0.3 in x), a little more or
    less from frame to frame."""
    texture = cv2.GaussianBlur((rng.random((120, 160, 3)) * 80 + 60).astype(np.uint8), (5, 5), 0)
    return texture, [apply_gradient(texture, 0.3 + rng.uniform(-0.02, 0.02), 0.0) for _ in range(n)]


def test_match_hist_keeps_the_training_frames_slope_and_levels_a_new_ramp():
    """The band of training slopes (exposure.slope_band), measured against the training frames'
    reference: a frame lit like the training frames passes match_hist's levelling untouched (so
    match_hist = match_tone on it), a ramp the training frames never showed is divided out down to
    the band's edge."""
    from edge_inspector.preprocess.core import Preprocessor
    from edge_inspector.preprocess.levelling import Reference, fit_ratio_slope, level

    texture, train = _sloped_training_set(np.random.default_rng(7))
    stats = {"mean": [100.0] * 3, "std": [30.0] * 3, "exposure": exposure_stats(train)}
    exposure = stats["exposure"]
    band, reference = exposure["slope_band"], Reference.from_json(exposure["reference"])
    assert exposure["levelling"] == "reference"
    # the part's own slope is in the reference, so the training frames' slopes against it are near 0
    assert band["low"][0] < fit_ratio_slope(train[0], reference)[1] < band["high"][0] and band["high"][0] - band["low"][0] < 0.2
    assert level(train[0], band, reference) is train[0]  # inside the band: the very same frame
    hist = Preprocessor(64, lighting="match_hist", train_stats=stats)
    tone = Preprocessor(64, lighting="match_tone", train_stats=stats)
    ref = hist.prepare_rgb(train[0])[0].astype(np.float32)
    assert np.array_equal(ref, tone.prepare_rgb(train[0])[0])
    assert _slope(ref) > 30.0  # the part's own slope is kept
    lamp_moved = apply_gradient(train[0], 0.3, 180.0)  # now also lit from the left
    assert fit_ratio_slope(lamp_moved, reference)[1] < band["low"][0]
    assert abs(fit_ratio_slope(level(lamp_moved, band, reference), reference)[1] - band["low"][0]) < 0.03  # to the band's edge
    assert np.abs(hist.prepare_rgb(lamp_moved)[0] - ref).mean() < 0.5 * np.abs(tone.prepare_rgb(lamp_moved)[0] - ref).mean()
    # a bundle trained before the band was recorded levels every frame flat, as it was trained
    old = Preprocessor(64, lighting="match_hist", train_stats={**stats, "exposure": {
        k: v for k, v in exposure.items() if k not in ("slope_band", "levelling", "reference")}})
    assert _slope(old.prepare_rgb(train[0])[0]) < 0.5 * _slope(ref)


def _part_on_white(size=(120, 120)):
    """A dark round part on a background its camera clipped to white (bottle's shape)."""
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.full((h, w, 3), 255, np.uint8)
    inside = (yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (0.35 * min(h, w)) ** 2
    rng = np.random.default_rng(1)
    img[inside] = (40 + rng.integers(0, 30, size=(int(inside.sum()), 1))).astype(np.uint8)
    return img


def test_the_reference_fit_sees_the_ramp_that_the_part_hides_from_a_plane_fit():
    """A plane through the luma also fits the part (its dark centre in a clipped background); the
    ratio to the training frames' reference divides the part out and leaves what light did. A lamp
    brighter by 1.4 and ramped ±30 % from left to right (slope 0.6 per frame width) clips most of
    the background again, and the plane fit's slope is far off; the reference fit's is not, and
    match_hist brings the frame back close to the clean one."""
    from edge_inspector.preprocess.core import Preprocessor
    from edge_inspector.preprocess.levelling import Reference, fit_ratio_slope, fit_slope

    part = _part_on_white()
    stats = {"mean": [100.0] * 3, "std": [30.0] * 3, "exposure": exposure_stats([part] * 4)}
    reference = Reference.from_json(stats["exposure"]["reference"])
    ramped = LightCondition("lamp", gain=1.4, gradient=0.3).apply(part)
    assert abs(fit_ratio_slope(ramped, reference)[1] - 0.6) < 0.1
    assert abs(fit_slope(ramped)[1] - 0.6) > 0.3
    hist = Preprocessor(64, lighting="match_hist", train_stats=stats)
    old = Preprocessor(64, lighting="match_hist", train_stats={**stats, "exposure": {
        k: v for k, v in stats["exposure"].items() if k not in ("levelling", "reference")}})
    clean = hist.prepare_rgb(part)[0].astype(np.float32)
    assert np.abs(hist.prepare_rgb(ramped)[0] - clean).mean() < 0.5 * np.abs(old.prepare_rgb(ramped)[0] - clean).mean()


@pytest.mark.parametrize("change, needle", [({"levelling": "spline"}, "levelling must be one of"),
                                             ({"reference": {"luma": [[1.0]], "clipped": [[0.0]]}}, "reference must hold"),
                                             ({"reference": None}, "reference must hold")])
def test_a_malformed_levelling_reference_is_a_one_line_error(change, needle):
    from edge_inspector.errors import InputError
    from edge_inspector.preprocess.core import Preprocessor

    stats = {"exposure": {**exposure_stats([np.full((20, 20, 3), 90, np.uint8)]), **change}}
    with pytest.raises(InputError) as err:
        Preprocessor(64, lighting="match_hist", train_stats=stats)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_a_malformed_slope_band_is_a_one_line_error():
    from edge_inspector.errors import InputError
    from edge_inspector.preprocess.core import Preprocessor

    stats = {"exposure": {**exposure_stats([np.full((20, 20, 3), 90, np.uint8)]), "slope_band": {"low": [0.1]}}}
    with pytest.raises(InputError) as err:
        Preprocessor(64, lighting="match_hist", train_stats=stats)
    assert "slope_band" in str(err.value) and "\n" not in str(err.value)


def test_match_tone_is_a_training_and_station_lighting(tmp_path):
    from edge_inspector.config.models import PreprocessConfig
    from edge_inspector.training.settings import TrainSettings, check_settings

    assert PreprocessConfig(lighting="match_tone").lighting == "match_tone"
    check_settings(TrainSettings(lighting="match_tone"))


def _belt_frames(rng, n=8):
    """Frames of a flat grey belt with sensor noise (σ 1.5 grey levels) and a brighter part whose
    place moves, the light a little stronger or weaker from frame to frame: each frame's
    histogram has two narrow bands, the pooled training histogram two wider ones."""
    frames = []
    for _ in range(n):
        img = np.full((96, 128), 90.0 + rng.uniform(-8, 8)) + rng.normal(0, 1.5, (96, 128))
        y, x = rng.integers(20, 50), rng.integers(20, 80)
        img[y : y + 30, x : x + 40] = 160.0 + rng.normal(0, 1.5, (30, 40))
        frames.append(np.repeat(np.clip(img, 0, 255).astype(np.uint8)[..., None], 3, axis=2))
    return frames


def test_the_fitted_tone_curve_does_not_amplify_sensor_noise():
    """Why new bundles fit a gain-gamma-offset curve (preprocess/tone.py): full histogram matching
    maps a dense band of grey levels onto the training percentiles' spread, so one grey level of
    noise on the belt becomes several; the fitted curve keeps a good frame's noise as it is."""
    from edge_inspector.preprocess.core import Preprocessor

    frames = _belt_frames(np.random.default_rng(8))
    stats = {"mean": [100.0] * 3, "std": [30.0] * 3, "exposure": exposure_stats(frames)}
    assert stats["exposure"]["tone_curve"] == "gain_gamma_offset"
    fitted = Preprocessor((96, 128), lighting="match_tone", train_stats=stats)
    histogram = Preprocessor((96, 128), lighting="match_tone",
                             train_stats={**stats, "exposure": {k: v for k, v in stats["exposure"].items() if k != "tone_curve"}})
    belt = np.zeros((96, 128), bool)
    belt[:15] = True  # rows no part reaches

    def belt_noise(img):
        return img[:, :, 0][belt].astype(np.float32).std()

    frame = frames[3]
    assert belt_noise(fitted.normalise_lighting(frame)) < 1.3 * belt_noise(frame)
    assert belt_noise(histogram.normalise_lighting(frame)) > 2.0 * belt_noise(frame)  # what old bundles do


def test_the_fitted_tone_curve_inverts_gain_gamma_and_offset():
    from edge_inspector.preprocess.tone import fit_gain_gamma_offset

    y = np.linspace(20.0, 200.0, 60)  # training levels
    for gain, gamma, offset in ((1.4, 1.0, 0.0), (1.0, 0.6, 0.0), (1.0, 1.0, -25.0), (0.7, 1.5, 10.0)):
        x = 255.0 * (np.clip(gain * y + offset, 0, 255) / 255.0) ** gamma  # LightCondition's order
        s, g, o = fit_gain_gamma_offset(x, y, 5, 250)
        unclipped = (x > 5) & (x < 250)
        assert np.abs(o + s * 255.0 * (x / 255.0) ** g - y)[unclipped].max() < 1.5, (gain, gamma, offset)
    assert fit_gain_gamma_offset(np.full(60, 255.0), y, 5, 250) is None  # all clipped: nothing to fit


def test_an_unknown_tone_curve_is_a_one_line_error():
    from edge_inspector.errors import InputError
    from edge_inspector.preprocess.core import Preprocessor

    stats = {"exposure": {**exposure_stats([np.full((20, 20, 3), 90, np.uint8)]), "tone_curve": "spline"}}
    with pytest.raises(InputError) as err:
        Preprocessor(64, lighting="match_tone", train_stats=stats)
    assert "tone_curve" in str(err.value) and "\n" not in str(err.value)
