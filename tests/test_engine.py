"""OnnxEngine on the tiny bundle: shapes, values, provider fallback, input checks, corrupt files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edge_inspector.errors import InputError, ModelBundleError
from edge_inspector.inference.bundle import load_bundle
from edge_inspector.inference.onnx_engine import OnnxEngine, normalise_providers
from tests.helpers.tiny_bundle import make_tiny_bundle

S = 32


@pytest.fixture
def bundle(tmp_path):
    return load_bundle(make_tiny_bundle(tmp_path / "m", image_size=S))


def test_infer_shapes_and_values(bundle):
    eng = OnnxEngine.from_bundle(bundle, intra_op_threads=1)
    x = np.random.default_rng(0).normal(size=(3, 3, S, S)).astype(np.float32)
    maps, scores = eng.infer(x)
    assert maps.shape == (3, S, S) and maps.dtype == np.float32
    assert scores.shape == (3,) and scores.dtype == np.float32
    expected = np.abs(x).mean(axis=1)
    np.testing.assert_allclose(maps, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(scores, expected.reshape(3, -1).max(axis=1), rtol=1e-5)
    one = eng.infer_one(x[0])
    assert one.anomaly_map.shape == (S, S) and one.score == pytest.approx(float(scores[0]), rel=1e-5)
    eng.warm_up(2)
    eng.close()


def test_provider_fallback_ends_on_cpu(bundle):
    import onnxruntime as ort

    eng = OnnxEngine.from_bundle(bundle, providers=["tensorrt", "cuda", "cpu"])
    avail = ort.get_available_providers()
    if "CUDAExecutionProvider" not in avail and "TensorrtExecutionProvider" not in avail:
        assert eng.provider == "cpu"
        assert any("not available" in n for n in eng.provider_notes)
    assert eng.provider in ("tensorrt", "cuda", "cpu")
    # CPU is always appended as the last resort, even when not asked for
    assert OnnxEngine.from_bundle(bundle, providers="cuda").provider in ("cuda", "cpu")


def test_normalise_providers():
    assert normalise_providers("cuda, cpu") == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert normalise_providers(["TRT"]) == ["TensorrtExecutionProvider", "CPUExecutionProvider"]
    assert normalise_providers(None)[-1] == "CPUExecutionProvider"
    with pytest.raises(InputError, match="gpu0"):
        normalise_providers(["gpu0"])


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((1, 3, S, S), np.float64),  # dtype
        np.zeros((3, S, S), np.float32),  # rank
        np.zeros((1, 1, S, S), np.float32),  # channels
        np.zeros((1, 3, S + 1, S), np.float32),  # size
        np.zeros((0, 3, S, S), np.float32),  # empty batch
        [[0.0]],  # not an array
    ],
)
def test_bad_input_is_input_error(bundle, bad):
    eng = OnnxEngine.from_bundle(bundle)
    with pytest.raises(InputError):
        eng.infer(bad)


def test_corrupt_onnx_is_bundle_error(tmp_path):
    d = make_tiny_bundle(tmp_path / "m", image_size=S, onnx_sha256=None)  # no hash: reach the parser
    (d / "model.onnx").write_bytes(b"this is not a protobuf" * 20)
    b = load_bundle(d)
    with pytest.raises(ModelBundleError) as exc:
        OnnxEngine.from_bundle(b)
    msg = str(exc.value)
    assert str(d / "model.onnx") in msg and "\n" not in msg


def test_image_size_mismatch_is_bundle_error(tmp_path):
    d = make_tiny_bundle(tmp_path / "m", image_size=S)
    meta = json.loads((d / "model.json").read_text())
    meta["image_size"] = S * 2
    (d / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelBundleError, match="image_size"):
        OnnxEngine.from_bundle(load_bundle(d))


def test_missing_output_name_is_bundle_error(tmp_path):
    d = make_tiny_bundle(tmp_path / "m", image_size=S, outputs={"map": "heat", "score": "score"})
    with pytest.raises(ModelBundleError, match="heat"):
        OnnxEngine.from_bundle(load_bundle(d))


def test_a_keep_aspect_bundle_takes_and_returns_its_height_and_width(tmp_path):
    eng = OnnxEngine.from_bundle(load_bundle(make_tiny_bundle(tmp_path / "m", image_size=S, input_shape=(64, 32))),
                                 intra_op_threads=1)
    x = np.random.default_rng(0).normal(size=(2, 3, 64, 32)).astype(np.float32)
    maps, scores = eng.infer(x)
    assert maps.shape == (2, 64, 32)
    np.testing.assert_allclose(maps, np.abs(x).mean(axis=1), rtol=1e-5, atol=1e-6)
    with pytest.raises(InputError, match="N×3×64×32"):
        eng.infer(np.zeros((1, 3, 32, 64), np.float32))  # transposed: height and width are not interchangeable
    eng.warm_up(1)


def test_input_shape_that_disagrees_with_the_onnx_graph_is_bundle_error(tmp_path):
    d = make_tiny_bundle(tmp_path / "m", image_size=S, input_shape=(64, 32))
    meta = json.loads((d / "model.json").read_text())
    meta["input_shape"] = [32, 64]
    (d / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelBundleError, match=r"expected \[N, 3, 32, 64\]"):
        OnnxEngine.from_bundle(load_bundle(d))


def test_unreadable_embedded_input_shape_is_bundle_error(tmp_path):
    import hashlib

    from tests.helpers.tiny_bundle import make_tiny_onnx_bytes, tiny_meta

    d = make_tiny_bundle(tmp_path / "m", image_size=S)
    embedded = {**tiny_meta(S), "input_shape": "tall"}
    data = make_tiny_onnx_bytes(S, metadata=embedded)
    (d / "model.onnx").write_bytes(data)
    meta = json.loads((d / "model.json").read_text())
    meta["onnx_sha256"] = hashlib.sha256(data).hexdigest()
    (d / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelBundleError, match="embedded metadata has an unreadable image_size/input_shape"):
        OnnxEngine.from_bundle(load_bundle(d))
