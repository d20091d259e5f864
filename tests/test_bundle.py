"""Model bundle loading: valid tiny bundle, and every corrupt/incompatible case → ModelBundleError."""

from __future__ import annotations

import json

import onnx
import pytest

from edge_inspector import BUNDLE_FORMAT_VERSION
from edge_inspector.errors import ModelBundleError
from edge_inspector.inference.bundle import load_bundle
from tests.helpers.tiny_bundle import make_tiny_bundle


def test_tiny_bundle_is_valid(tmp_path):
    d = make_tiny_bundle(tmp_path / "m", image_size=48, threshold=0.25, head="knn")
    b = load_bundle(d)
    assert (b.image_size, b.threshold, b.head) == (48, 0.25, "knn")
    assert b.meta["format_version"] == BUNDLE_FORMAT_VERSION
    assert b.meta["onnx_sha256"] == b.sha256
    assert b.output_names == ("anomaly_map", "score")
    model = onnx.load(str(b.onnx_path))
    props = {p.key: p.value for p in model.metadata_props}
    assert json.loads(props["edge_inspector"])["image_size"] == 48
    assert model.opset_import[0].version == 17


def test_meta_overrides(tmp_path):
    d = make_tiny_bundle(tmp_path / "m", name="custom", threshold_f1=0.3)
    b = load_bundle(d)
    assert b.name == "custom" and b.meta["threshold_f1"] == 0.3


@pytest.mark.parametrize(
    "breakage, fragment",
    [
        ("missing_onnx", "model.onnx: missing"),
        ("missing_json", "model.json: missing"),
        ("corrupt_json", "corrupt JSON"),
        ("bad_version", "format version"),
        ("missing_key", "missing keys"),
        ("sha_mismatch", "sha256 does not match"),
        ("empty_onnx", "empty"),
        ("not_a_dir", "not found"),
    ],
)
def test_broken_bundles(tmp_path, breakage, fragment):
    d = make_tiny_bundle(tmp_path / "m")
    if breakage == "missing_onnx":
        (d / "model.onnx").unlink()
    elif breakage == "missing_json":
        (d / "model.json").unlink()
    elif breakage == "corrupt_json":
        (d / "model.json").write_text('{"format_version": 1, "head": ', encoding="utf-8")
    elif breakage == "bad_version":
        d = make_tiny_bundle(tmp_path / "m2", format_version=BUNDLE_FORMAT_VERSION + 1)
    elif breakage == "missing_key":
        d = make_tiny_bundle(tmp_path / "m2", backbone=None)
    elif breakage == "sha_mismatch":
        (d / "model.onnx").write_bytes((d / "model.onnx").read_bytes() + b"\0")
    elif breakage == "empty_onnx":
        (d / "model.onnx").write_bytes(b"")
    elif breakage == "not_a_dir":
        d = tmp_path / "nowhere"
    with pytest.raises(ModelBundleError) as exc:
        load_bundle(d)
    msg = str(exc.value)
    assert fragment in msg and "\n" not in msg
    assert exc.value.exit_code == 2


def test_a_bundle_without_input_shape_is_square(tmp_path):
    # every bundle written before keep-aspect models: the input is image_size × image_size
    assert load_bundle(make_tiny_bundle(tmp_path / "m", image_size=48)).input_shape == (48, 48)


def test_a_keep_aspect_bundle_reports_its_input_shape(tmp_path):
    b = load_bundle(make_tiny_bundle(tmp_path / "m", image_size=64, input_shape=(96, 32)))
    assert b.input_shape == (96, 32) and b.image_size == 64


@pytest.mark.parametrize("shape", [[96], [96, 32, 3], [96, "32"], [96, 16], [96, 5000], [96, True], "96x32"])
def test_a_bad_input_shape_is_a_one_line_error(tmp_path, shape):
    d = make_tiny_bundle(tmp_path / "m", image_size=64, input_shape=(96, 32))
    meta = json.loads((d / "model.json").read_text())
    meta["input_shape"] = shape
    (d / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelBundleError) as exc:
        load_bundle(d)
    msg = str(exc.value)
    assert "input_shape" in msg and str(d / "model.json") in msg and "\n" not in msg
