"""Training side: tiny end-to-end train → bundle → ONNX parity, calibration, determinism, bad input.

Everything runs on small synthetic parts (a disc on a background, defects are dark rectangles)
at 64² with a few iterations, so the module stays within about a minute on 2 cores.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from edge_inspector.cli import main  # noqa: E402
from edge_inspector.errors import InputError  # noqa: E402
from edge_inspector.inference.bundle import METADATA_KEY, load_bundle  # noqa: E402
from edge_inspector.training.calibrate import f1_threshold, far_threshold  # noqa: E402
from edge_inspector.training.knn import KnnScorer, greedy_coreset  # noqa: E402
from edge_inspector.training.mdaae import MdaaeConfig  # noqa: E402
from edge_inspector.training.sagan import frechet_distance  # noqa: E402
from edge_inspector.training.train import TrainSettings, train_autoencoder, train_bundle  # noqa: E402

SIZE = 64


def make_part(rng: np.random.Generator, size: int = 80, defect: bool = False) -> np.ndarray:
    img = np.full((size, size, 3), 70, np.uint8)
    centre = (size // 2 + int(rng.integers(-2, 3)), size // 2 + int(rng.integers(-2, 3)))
    cv2.circle(img, centre, size // 3, (190, 170, 150), -1)
    img = np.clip(img.astype(int) + rng.integers(-6, 7, img.shape), 0, 255).astype(np.uint8)
    if defect:
        x, y = (int(v) for v in rng.integers(size // 3, size // 2, 2))
        cv2.rectangle(img, (x, y), (x + size // 6, y + size // 7), (15, 15, 15), -1)
    return img


def make_dataset(root: Path, n_train: int = 12, n_test: int = 4, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    (root / "train" / "good").mkdir(parents=True)
    for i in range(n_train):
        cv2.imwrite(str(root / "train" / "good" / f"{i:03d}.png"), make_part(rng))
    for kind in ("good", "hole"):
        (root / "test" / kind).mkdir(parents=True)
        for i in range(n_test):
            cv2.imwrite(str(root / "test" / kind / f"{i:03d}.png"), make_part(rng, defect=kind != "good"))
    return root


def prepared(paths: list[Path], size: int = SIZE) -> np.ndarray:
    from edge_inspector.imageio import read_image
    from edge_inspector.preprocess import Preprocessor

    pre = Preprocessor(size)
    return np.stack([pre.prepare(read_image(p))[0] for p in paths])


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data") / "part")


@pytest.fixture(scope="module")
def default_bundle(synthetic, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("model") / "bundle"
    torch.set_num_threads(2)
    train_bundle(synthetic, out, head="default", iterations=30, image_size=SIZE, seed=0, progress=False,
                 validation=synthetic, augmented_copies=1, curve_points=3)
    return out


# -- end to end -------------------------------------------------------------------------------
def test_train_writes_a_complete_bundle(default_bundle):
    for name in ("model.onnx", "model.json", "checkpoint.pt", "training_curve.json"):
        assert (default_bundle / name).is_file(), name
    bundle = load_bundle(default_bundle)  # validates format version, keys and onnx_sha256
    meta = bundle.meta
    assert meta["head"] == "default" and meta["image_size"] == SIZE
    assert [lvl["stride"] for lvl in meta["fusion_levels"]] == [8, 16, 32]
    assert len(meta["training_set"]["fingerprint"]) == 64
    assert len(meta["preprocess"]["train_stats"]["mean"]) == 3
    # the default lighting is recorded, with the figures match_hist needs at the station
    assert meta["preprocess"]["lighting"] == "match_hist"
    exposure = meta["preprocess"]["train_stats"]["exposure"]
    assert len(exposure["luma_percentiles"]) == 101 and exposure["tone_curve"] == "gain_gamma_offset"
    band = exposure["slope_band"]
    assert all(lo <= m <= hi for lo, m, hi in zip(band["low"], band["mean"], band["high"]))
    assert "threshold_f1" in meta
    assert meta["export"]["parity"]["passed"] is True
    curve = json.loads((default_bundle / "training_curve.json").read_text())["points"]
    assert len(curve) >= 2 and all(np.isfinite(p["frechet"]) for p in curve)
    assert meta["training_curve"]["points"][-1]["frechet"] == curve[-1]["frechet"]


def test_onnx_is_self_describing_and_matches_torch(default_bundle, synthetic):
    import onnx
    import onnxruntime as ort

    from edge_inspector.training.export import load_checkpoint

    proto = onnx.load(str(default_bundle / "model.onnx"))
    props = {p.key: p.value for p in proto.metadata_props}
    embedded = json.loads(props[METADATA_KEY])
    assert embedded["threshold"] == json.loads((default_bundle / "model.json").read_text())["threshold"]

    images = prepared(sorted((synthetic / "test" / "hole").glob("*.png"))[:3])
    session = ort.InferenceSession(str(default_bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    ort_map, ort_score = session.run(["anomaly_map", "score"], {"image": images})
    assert ort_map.shape == (3, 1, SIZE, SIZE) and ort_score.shape == (3,)
    model, _ = load_checkpoint(default_bundle)
    with torch.no_grad():
        t_map, t_score = model(torch.from_numpy(images))
    assert np.max(np.abs(ort_map - t_map.numpy())) < 1e-2
    assert np.max(np.abs(ort_score - t_score.numpy())) < 1e-2
    # The score is the map's maximum: thresholding the map at the image threshold finds a region
    # whenever the image is NG.
    np.testing.assert_allclose(ort_score, ort_map.reshape(3, -1).max(axis=1), rtol=0, atol=1e-5)


def test_defective_parts_score_above_good_parts(default_bundle, synthetic):
    import onnxruntime as ort

    session = ort.InferenceSession(str(default_bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    good = session.run(["score"], {"image": prepared(sorted((synthetic / "test" / "good").glob("*.png")))})[0]
    bad = session.run(["score"], {"image": prepared(sorted((synthetic / "test" / "hole").glob("*.png")))})[0]
    assert bad.min() > good.max()
    threshold = load_bundle(default_bundle).threshold
    assert (bad >= threshold).all()


def make_tall_dataset(root: Path, n_train: int = 12, n_test: int = 4, seed: int = 1) -> Path:
    """Parts twice as high as wide (160×80): two discs stacked, the defect on one of them."""
    rng = np.random.default_rng(seed)
    (root / "ground_truth" / "hole").mkdir(parents=True)
    for kind, n in (("train/good", n_train), ("test/good", n_test), ("test/hole", n_test)):
        (root / kind).mkdir(parents=True)
        for i in range(n):
            halves = [make_part(rng), make_part(rng, defect=kind == "test/hole")]
            part = np.vstack(halves[:: 1 if i % 2 else -1])
            cv2.imwrite(str(root / kind / f"{i:03d}.png"), part)
            if kind == "test/hole":  # the defect is the only near-black paint
                mask = (part.max(axis=2) < 40).astype(np.uint8) * 255
                cv2.imwrite(str(root / "ground_truth" / "hole" / f"{i:03d}_mask.png"), mask)
    return root


def test_a_tall_part_trains_a_model_with_the_parts_aspect(tmp_path, capsys):
    data = make_tall_dataset(tmp_path / "tall")
    torch.set_num_threads(2)
    out = train_bundle(data, tmp_path / "m", head="default", iterations=20, image_size=SIZE, progress=False,
                       augmented_copies=1, curve_points=2)
    bundle = load_bundle(out)
    # 160×80 frames: short side 64 as a square model had, the long side in proportion → 128 × 64
    assert bundle.input_shape == (128, 64) and bundle.meta["input_shape"] == [128, 64]
    assert bundle.meta["preprocess"]["train_stats"]["frame_size"] == [160, 80]
    assert bundle.meta["export"]["parity"]["passed"] is True
    import onnx

    dims = [d.dim_value for d in onnx.load(str(bundle.onnx_path)).graph.input[0].type.tensor_type.shape.dim]
    assert dims[1:] == [3, 128, 64]
    assert main(["evaluate", "--model", str(out), "--data", str(data), "--json", str(tmp_path / "e.json")]) == 0
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["model"]["input_shape"] == [128, 64]
    assert result["image_auroc"] >= 0.9 and result["pixel_auroc"] >= 0.8


def test_geometry_square_keeps_the_square_input(tmp_path):
    data = make_tall_dataset(tmp_path / "tall", n_train=8, n_test=1)
    out = train_bundle(data, tmp_path / "m", head="knn", image_size=SIZE, progress=False, augmented_copies=0,
                       geometry="square")
    assert load_bundle(out).input_shape == (SIZE, SIZE)


def test_an_unknown_geometry_is_named(synthetic, tmp_path):
    from edge_inspector.errors import InputError

    with pytest.raises(InputError, match="--geometry round: use keep_aspect or square"):
        train_bundle(synthetic, tmp_path / "m", head="knn", image_size=SIZE, progress=False, geometry="round")


def test_export_cli_writes_onnx_and_reports_parity(default_bundle, tmp_path, capsys):
    out = tmp_path / "exported.onnx"
    assert main(["export", "--model", str(default_bundle), "--out", str(out)]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out.is_file() and report["parity"]["passed"]
    assert report["parity"]["max_abs_diff_score"] < 1e-2


def test_quantize_writes_an_int8_backbone_bundle_that_still_ranks_defects(default_bundle, synthetic, tmp_path, capsys):
    import onnx

    from edge_inspector.training.evaluate import evaluate_bundle

    out = tmp_path / "int8"
    assert main(["quantize", "--model", str(default_bundle), "--data", str(synthetic), "--out", str(out),
                 "--images", "6"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["calibration_images"] == 6 and report["quantised_nodes"] > 0
    bundle = load_bundle(out)  # sha256 in model.json matches the new graph
    q = bundle.meta["quantization"]
    assert q["float_bundle_sha256"] == load_bundle(default_bundle).sha256
    graph = onnx.load(out / "model.onnx").graph
    ops = [n.op_type for n in graph.node]
    assert "QLinearConv" in ops
    # only the backbone is integer: every float Conv left belongs to the heads
    assert all(not n.name.startswith("/backbone/") for n in graph.node if n.op_type == "Conv")
    assert (out / "checkpoint.pt").is_file()
    ev_float, ev_int8 = evaluate_bundle(default_bundle, synthetic), evaluate_bundle(out, synthetic)
    assert ev_float["image_auroc"] == 1.0 and ev_int8["image_auroc"] == 1.0
    # an already quantised bundle, and --out equal to --model, are refused with one line
    assert main(["quantize", "--model", str(out), "--data", str(synthetic), "--out", str(tmp_path / "again")]) == 2
    assert "already quantised" in capsys.readouterr().err
    assert main(["quantize", "--model", str(default_bundle), "--data", str(synthetic), "--out", str(default_bundle)]) == 2
    assert "--out must differ" in capsys.readouterr().err


def test_quantize_that_cannot_keep_the_score_units_leaves_no_bundle(default_bundle, synthetic, tmp_path, capsys,
                                                                      monkeypatch):
    import edge_inspector.training.quantize as quantize

    # the integer graph's scores running against the float ones: refused, and nothing half-written stays
    monkeypatch.setattr(quantize, "_scores", lambda path, inputs, threads: (
        np.zeros((len(inputs), 1, SIZE, SIZE), np.float32),
        np.arange(len(inputs), dtype=np.float32) * (-1.0 if Path(path).parent.name == "int8" else 1.0)))
    out = tmp_path / "int8"
    assert main(["quantize", "--model", str(default_bundle), "--data", str(synthetic), "--out", str(out),
                 "--images", "4"]) == 2
    assert "do not track" in capsys.readouterr().err
    assert not out.exists()


def test_train_cli_names_the_terms_the_default_head_chose(synthetic, tmp_path, capsys):
    out = tmp_path / "m"
    assert main(["train", "--data", str(synthetic), "--out", str(out), "--head", "default", "--iterations", "4",
                 "--image-size", str(SIZE), "--no-export"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    weights = json.loads((out / "model.json").read_text())["fusion_weights"]
    assert summary["terms"] == {t: w for t, w in weights.items() if w} and summary["terms"]
    # a tiny hold-out: the default rule refuses, and the summary says which rule set the threshold and why
    assert summary["threshold_rule"] == "holdout"
    assert summary["threshold_rule_refused"].startswith("train_pooled: ") and "--holdout" in summary["threshold_rule_refused"]


# -- default head: subspace terms ---------------------------------------------------------------
def _rewritten_checkpoint(bundle: Path, target: Path, edit) -> Path:
    checkpoint = torch.load(bundle / "checkpoint.pt", weights_only=True)
    edit(checkpoint)
    target.mkdir()
    torch.save(checkpoint, target / "checkpoint.pt")
    return target


def test_subspace_terms_match_an_independent_projection(default_bundle, synthetic):
    from edge_inspector.training.export import load_checkpoint

    model, _ = load_checkpoint(default_bundle)
    assert model.subspace is not None and model.subspace.shape == (344, 64)
    v = model.subspace
    assert torch.allclose(v.t() @ v, torch.eye(64), atol=1e-4)  # orthonormal directions
    images = torch.from_numpy(prepared(sorted((synthetic / "test" / "hole").glob("*.png"))))
    with torch.no_grad():
        z = model.standardised_features(images)
        grids = model.term_grids(z, ("knn", "sub", "res"))
    x = model.knn_space(z).permute(0, 2, 3, 1).reshape(-1, 344)
    off_subspace = (x - (x @ v) @ v.t()).norm(dim=1)
    assert torch.allclose(grids["res"].flatten(), off_subspace, rtol=1e-3, atol=1e-3)
    # a projection never lengthens a distance: the subspace distance is at most the full one
    assert (grids["sub"] <= grids["knn"] + 1e-3).all()
    assert (grids["sub"] < grids["knn"] - 1e-3).any()


@pytest.mark.parametrize("weights", [{"knn": 0.4, "sub": 0.3, "res": 0.2, "ae": 0.1}, {"sub": 1.0},
                                     {"ae": 0.5, "gan": 0.5}, {"sub": 0.6, "ae": 0.2, "gan": 0.2}])
def test_any_term_mix_exports_with_parity_and_only_its_terms(default_bundle, tmp_path, capsys, weights):
    import onnx

    from edge_inspector.training.fusion import full_weights

    def edit(checkpoint):
        checkpoint["config"]["fusion_weights"] = full_weights(weights)

    model_dir = _rewritten_checkpoint(default_bundle, tmp_path / "m", edit)
    out = tmp_path / "mix.onnx"
    assert main(["export", "--model", str(model_dir), "--out", str(out)]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["parity"]["passed"] and report["parity"]["max_abs_diff_score"] < 1e-2
    shapes = {tuple(init.dims) for init in onnx.load(out).graph.initializer}
    has_full_bank = any(len(d) == 2 and d[0] == 344 + 1 for d in shapes)  # [−2m; ‖m‖²], KnnScorer
    assert has_full_bank == ("knn" in weights)  # a term with weight 0 is not in the graph
    names = {init.name for init in onnx.load(out).graph.initializer}
    assert any(n.startswith("critic.") for n in names) == ("gan" in weights)
    assert any(n.startswith("mdaae.decoder.") for n in names) == ("ae" in weights or "gan" in weights)


def test_the_gan_critic_is_the_trained_discriminator_with_its_spectral_norm_folded():
    from edge_inspector.training.sagan import Critic, Discriminator

    torch.manual_seed(0)
    disc = Discriminator(24, width=16)
    x = torch.randn(3, 24, 8, 8)
    disc.train()
    for _ in range(3):  # power iterations move the spectral-norm state away from its initial value
        disc(x)
    disc.eval()
    critic = Critic.from_discriminator(disc)
    with torch.no_grad():
        _, feats = disc(x)
        torch.testing.assert_close(critic.features(x), feats[1])
        assert all(not hasattr(m, "weight_orig") for m in critic.modules())
        # the term: zero for a perfect reconstruction, positive where the two differ
        z_hat = x.clone()
        z_hat[:, :, 2:4, 2:4] += 3.0
        term = critic.discrepancy(x, z_hat)
        assert term.shape == (3, 1, 8, 8)
        assert torch.count_nonzero(critic.discrepancy(x, x)) == 0
        assert term[:, :, 2:4, 2:4].mean() > term[:, :, 6:, 6:].mean()
    assert hasattr(disc.stem[0], "weight_orig")  # the training discriminator is left as it was


def test_the_default_head_carries_the_gan_critic(default_bundle):
    from edge_inspector.training.export import load_checkpoint

    model, meta = load_checkpoint(default_bundle)
    assert model.critic is not None and meta["critic_width"] == model.critic.width == 64
    assert "gan" in model.available_terms() and "gan" in meta["fusion_weights"]
    assert meta["score_normalisation"]["term_std"]["gan"] > 0


def test_train_default_runs_the_fused_ae_gan_in_the_exported_graph(default_bundle):
    """Whatever memory term the good-only selection adds, the station's graph holds the AE decoder
    and the GAN critic, both with a non-zero weight (issue 13)."""
    import onnx

    meta = json.loads((default_bundle / "model.json").read_text())
    assert meta["fusion_weights"]["ae"] > 0 and meta["fusion_weights"]["gan"] > 0
    names = {init.name for init in onnx.load(default_bundle / "model.onnx").graph.initializer}
    assert any(n.startswith("mdaae.decoder.") for n in names)
    assert any(n.startswith("critic.") for n in names)


def test_fixed_fusion_weights_are_checked(synthetic, tmp_path, capsys):
    from edge_inspector.training.fusion import fixed_fusion

    assert fixed_fusion({"ae": 0.5, "gan": 0.5, "knn": 0.0}, ("ae", "gan")) == {"ae": 0.5, "gan": 0.5}
    with pytest.raises(ValueError, match="cannot compute"):
        fixed_fusion({"knn": 1.0}, ("ae", "gan"))
    with pytest.raises(ValueError, match="unknown terms"):
        fixed_fusion({"gans": 1.0}, ("ae", "gan"))
    for bad in ({"gans": 1.0}, {"ae": -0.5, "gan": 1.0}, {"ae": 0.0}):
        with pytest.raises(InputError, match="fusion_weights"):
            train_bundle(synthetic, tmp_path / "x", head="default", iterations=1, image_size=SIZE, progress=False,
                         fusion_weights=bad)


def test_default_checkpoint_from_before_the_subspace_terms_still_loads(default_bundle, tmp_path):
    from edge_inspector.training.export import load_checkpoint

    def edit(checkpoint):
        state = checkpoint["state_dict"]
        for key in [k for k in state if k == "subspace" or k.startswith(("knn_sub.", "critic."))]:
            del state[key]
        state["term_mean"], state["term_std"] = state["term_mean"][:2], state["term_std"][:2]
        checkpoint["config"].pop("subspace_dim")
        checkpoint["config"].pop("critic_width")  # the critic came later still
        checkpoint["config"]["fusion_weights"] = {"ae": 0.0, "knn": 1.0}

    model, _ = load_checkpoint(_rewritten_checkpoint(default_bundle, tmp_path / "old", edit))
    assert model.subspace is None and model.available_terms() == ("ae", "knn")
    assert model.term_mean.shape == (5,) and model.term_std[2:].tolist() == [1.0, 1.0, 1.0]


def test_default_checkpoint_from_before_the_gan_critic_still_loads_and_exports(default_bundle, tmp_path, capsys):
    from edge_inspector.training.export import load_checkpoint
    from edge_inspector.training.fusion import full_weights

    def edit(checkpoint):
        state = checkpoint["state_dict"]
        for key in [k for k in state if k.startswith("critic.")]:
            del state[key]
        state["term_mean"], state["term_std"] = state["term_mean"][:4], state["term_std"][:4]
        checkpoint["config"].pop("critic_width")
        checkpoint["config"]["fusion_weights"] = {t: w for t, w in full_weights({"sub": 1.0}).items() if t != "gan"}

    model_dir = _rewritten_checkpoint(default_bundle, tmp_path / "old", edit)
    model, _ = load_checkpoint(model_dir)
    assert model.critic is None and "gan" not in model.available_terms()
    assert main(["export", "--model", str(model_dir), "--out", str(tmp_path / "old.onnx")]) == 0


def test_checkpoint_from_before_grid_smoothing_keeps_its_own_smoothing(default_bundle, tmp_path):
    from edge_inspector.training.export import load_checkpoint

    new, _ = load_checkpoint(default_bundle)
    assert new.config.smooth_on_grid and new.smooth_x.numel() == 3  # σ = 1 px at 64² is 1/8 cell on the grid

    def edit(checkpoint):
        from edge_inspector.training.scoring import gaussian_kernel_1d

        checkpoint["config"].pop("smooth_on_grid")
        checkpoint["config"].pop("subspace_bank_size")  # the sub term's bank was the whole bank then
        kernel = gaussian_kernel_1d(1.0)  # what such a checkpoint holds: the kernel for the 64² map
        checkpoint["state_dict"]["smooth_x"] = kernel.view(1, 1, 1, -1)
        checkpoint["state_dict"]["smooth_y"] = kernel.view(1, 1, -1, 1)

    old, _ = load_checkpoint(_rewritten_checkpoint(default_bundle, tmp_path / "old", edit))
    assert not old.config.smooth_on_grid and old.smooth_x.numel() == 7  # σ = 1 px on the 64² map
    assert old.knn_sub.size == old.knn.size


def _smoothing_model(on_grid: bool):
    from edge_inspector.training.scoring import InspectionModel, ModelConfig

    return InspectionModel(ModelConfig(head="knn", image_size=256, smooth_on_grid=on_grid))


@pytest.mark.parametrize("defect", ["cell", "blob", "line"])
def test_smoothing_on_the_grid_gives_the_map_of_smoothing_the_upsampled_one(defect):
    g = torch.Generator().manual_seed(0)
    grid = 0.3 * torch.randn(1, 1, 32, 32, generator=g)
    where = {"cell": (slice(9, 10), slice(20, 21)), "blob": (slice(22, 25), slice(5, 8)),
             "line": (slice(4, 28), slice(15, 16))}[defect]
    grid[0, 0][where] += 3.0
    with torch.no_grad():
        on_grid = _smoothing_model(True).upsample_and_smooth(grid, 256)[0, 0].numpy()
        on_image = _smoothing_model(False).upsample_and_smooth(grid, 256)[0, 0].numpy()
    assert on_grid.shape == on_image.shape == (256, 256)
    assert np.corrcoef(on_grid.ravel(), on_image.ravel())[0, 1] > 0.97
    # the peak (the image score) is on the defect in both, a few pixels apart at most; smoothing
    # on the grid flattens a one-cell defect less (σ of half a cell on 32 samples, not 4 px on 256)
    peak_grid = np.unravel_index(on_grid.argmax(), on_grid.shape)
    peak_image = np.unravel_index(on_image.argmax(), on_image.shape)
    assert max(abs(int(a) - int(b)) for a, b in zip(peak_grid, peak_image)) <= 6
    assert on_grid.max() >= 0.95 * on_image.max()


def test_reconstruction_terms_as_channel_sum_convolutions_match_the_definition():
    import torch.nn.functional as F

    from edge_inspector.training.mdaae import reconstruction_terms

    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 40, 6, 5, generator=g)
    z_hat = z + 0.3 * torch.randn(2, 40, 6, 5, generator=g)
    expected_l2 = (z - z_hat).pow(2).mean(dim=1, keepdim=True)
    expected_cos = 1.0 - F.cosine_similarity(z, z_hat, dim=1).unsqueeze(1)
    ones = torch.ones(1, 40, 1, 1)
    for sum_channels in (None, lambda x: F.conv2d(x, ones)):
        l2, cos = reconstruction_terms(z, z_hat) if sum_channels is None else reconstruction_terms(z, z_hat, sum_channels)
        torch.testing.assert_close(l2, expected_l2, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(cos, expected_cos, atol=1e-5, rtol=1e-5)


def test_the_subspace_terms_bank_is_a_covering_subset_of_the_projected_bank(default_bundle, tmp_path):
    from edge_inspector.training.components import subspace_bank_index
    from edge_inspector.training.export import load_checkpoint

    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0] * 4, [40.0] * 4, [-40.0] * 4, [0.0, 40.0, 0.0, -40.0]])
    projected = torch.cat([c + torch.randn(50, 4, generator=g) for c in centres])
    index = subspace_bank_index(projected, 4, seed=0)
    assert index.tolist() == sorted(index.tolist()) and {int(i) // 50 for i in index} == {0, 1, 2, 3}
    assert subspace_bank_index(projected, 0, seed=0).tolist() == list(range(200))  # 0: the whole bank
    # the entries covering operator-marked good images (the bank's last rows) are always kept
    kept = subspace_bank_index(projected, 4, seed=0, keep_last=3).tolist()
    assert len(kept) == 4 and kept[-3:] == [197, 198, 199]
    assert subspace_bank_index(projected, 500, seed=0).tolist() == list(range(200))

    # a bundle whose sub bank is smaller than its memory bank loads with that size
    model, _ = load_checkpoint(default_bundle)
    keep = subspace_bank_index(model.knn_sub.bank_t.t(), 3, seed=0)

    def edit(checkpoint):
        state = checkpoint["state_dict"]
        state["knn_sub.bank_t"] = state["knn_sub.bank_t"][:, keep].contiguous()
        state["knn_sub.bank_sq"] = state["knn_sub.bank_sq"][keep].contiguous()
        checkpoint["config"]["subspace_bank_size"] = 3

    small, _ = load_checkpoint(_rewritten_checkpoint(default_bundle, tmp_path / "small", edit))
    assert small.knn_sub.size == 3 < small.knn.size


# -- determinism ----------------------------------------------------------------------------------
def test_training_is_deterministic_for_a_seed(synthetic, tmp_path):
    states = []
    for run in ("a", "b"):
        out = train_bundle(synthetic, tmp_path / run, head="ae", iterations=6, image_size=SIZE, seed=3,
                           progress=False, export=False, augmented_copies=1, curve_points=2)
        states.append(torch.load(out / "checkpoint.pt", weights_only=True))
    first, second = (s["state_dict"] for s in states)
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key
    assert states[0]["meta"]["threshold"] == states[1]["meta"]["threshold"]


def test_gan_training_runs_and_tracks_frechet_distance():
    torch.manual_seed(0)
    config = MdaaeConfig(level_channels=(8, 8, 16))
    z = torch.randn(6, 32, 8, 8)
    settings = TrainSettings(head="aegan", batch_size=4, progress=False, curve_points=5)
    ae, curve, timing, critic = train_autoencoder(z, z[:4], config, settings, iterations=20, use_gan=True, device="cpu")
    assert timing["gan_steps"] > 0 and timing["ae_steps"] > 0
    assert critic is not None and critic.discrepancy(z, ae(z)).shape == (6, 1, 8, 8)
    assert any(p["lambda"] > 0 for p in curve) and any(p["d_loss"] is not None for p in curve)
    assert curve[-1]["eval_l2"] < curve[0]["eval_l2"]


# -- components -----------------------------------------------------------------------------------
def test_frechet_distance_matches_closed_form():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4000, 3))
    b = rng.normal(size=(4000, 3)) * 2.0 + 1.0
    # N(0, I) vs N(1, 4I): |Δμ|² = 3, Tr = 3 + 12 − 2·Tr(2I) = 3 → 6
    assert frechet_distance(a, b) == pytest.approx(6.0, rel=0.08)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)


def test_knn_scorer_equals_brute_force_nearest_distance():
    g = torch.Generator().manual_seed(0)
    bank = torch.randn(50, 16, generator=g)
    z = torch.randn(2, 16, 3, 4, generator=g)
    got = KnnScorer(bank)(z)
    flat = z.permute(0, 2, 3, 1).reshape(-1, 16)
    expected = torch.cdist(flat, bank).min(dim=1).values.reshape(2, 3, 4)
    torch.testing.assert_close(got[:, 0], expected, atol=1e-4, rtol=1e-4)


def test_an_operator_marked_good_image_is_covered_as_densely_as_typical_training_patches():
    from edge_inspector.training.components import cover_patches, typical_bank_distance

    g = torch.Generator().manual_seed(0)
    training = torch.randn(2000, 8, generator=g)
    bank = training[greedy_coreset(training, 20, seed=0)]
    reach = typical_bank_distance(training, bank, seed=0)
    unusual = torch.randn(64, 8, generator=g) + 6.0  # one image's patches, far from every training patch
    assert torch.cdist(unusual, bank).min(dim=1).values.min() > reach
    added = cover_patches(unusual, bank, reach)
    covered = torch.cdist(unusual, torch.cat([bank, unusual[added]])).min(dim=1).values
    assert covered.max() <= reach and 0 < added.numel() < unusual.shape[0]
    assert cover_patches(training[:100], bank, float("inf")).numel() == 0  # nothing beyond reach: nothing added


def test_greedy_coreset_covers_every_cluster():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0] * 8, [50.0] * 8, [-50.0] * 8])
    points = torch.cat([c + torch.randn(200, 8, generator=g) for c in centres])
    chosen = greedy_coreset(points, 3, seed=1)
    clusters = {int(i) // 200 for i in chosen}
    assert clusters == {0, 1, 2}


# -- calibration ----------------------------------------------------------------------------------
def test_far_threshold_meets_the_target_on_large_samples():
    scores = np.random.default_rng(0).normal(size=2000)
    result = far_threshold(scores, 0.01)
    assert result["method"] == "empirical"
    assert (scores >= result["threshold"]).mean() <= 0.01
    assert (scores >= result["threshold"]).mean() >= 0.009  # not needlessly conservative
    assert result["threshold"] == pytest.approx(2.326, abs=0.2)


def test_far_threshold_on_few_scores_uses_the_gaussian_floor():
    scores = np.array([0.0, 0.1, -0.2, 0.3, -0.1, 0.05, 0.2, -0.3, 0.15, -0.05])
    result = far_threshold(scores, 0.01)
    assert result["threshold"] > scores.max()
    assert result["method"] == "gaussian_tail_floor"
    assert result["far_on_calibration"] == 0.0


def test_f1_threshold_separates_separable_scores():
    scores = np.array([0.1, 0.2, 0.3, 0.9, 1.0, 1.2])
    labels = np.array([0, 0, 0, 1, 1, 1])
    result = f1_threshold(scores, labels)
    assert result["f1"] == 1.0
    assert 0.3 < result["threshold"] <= 0.9


# -- bad input ------------------------------------------------------------------------------------
def _one_line_error(capsys, needle: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err, "expected an error message"
    last = err[-1]
    assert "error" in last and needle in last, last
    assert "Traceback" not in "\n".join(err)
    return last


def test_train_missing_train_good_is_exit_2(tmp_path, capsys):
    (tmp_path / "cat").mkdir()
    rc = main(["train", "--data", str(tmp_path / "cat"), "--out", str(tmp_path / "m"), "--head", "knn", "--image-size", "64"])
    assert rc == 2
    _one_line_error(capsys, "train/good")


def test_train_empty_train_good_is_exit_2(tmp_path, capsys):
    (tmp_path / "cat" / "train" / "good").mkdir(parents=True)
    rc = main(["train", "--data", str(tmp_path / "cat"), "--out", str(tmp_path / "m"), "--head", "knn", "--image-size", "64"])
    assert rc == 2
    _one_line_error(capsys, "no images")


def test_train_with_only_unreadable_images_is_exit_2(tmp_path, capsys):
    good = tmp_path / "cat" / "train" / "good"
    good.mkdir(parents=True)
    ok, png = cv2.imencode(".png", make_part(np.random.default_rng(0)))
    (good / "truncated.png").write_bytes(png.tobytes()[: len(png) // 2])
    (good / "garbage.png").write_bytes(b"not an image at all")
    rc = main(["train", "--data", str(tmp_path / "cat"), "--out", str(tmp_path / "m"), "--head", "knn", "--image-size", "64"])
    assert rc == 2
    _one_line_error(capsys, "no readable")


def test_train_skips_unreadable_images_when_others_remain(tmp_path, capsys):
    root = make_dataset(tmp_path / "cat", n_train=4, n_test=1)
    ok, png = cv2.imencode(".png", make_part(np.random.default_rng(1)))
    (root / "train" / "good" / "zz_truncated.png").write_bytes(png.tobytes()[: len(png) // 2])
    rc = main(["train", "--data", str(root), "--out", str(tmp_path / "m"), "--head", "knn", "--image-size", "64", "--no-export"])
    assert rc == 0
    err = capsys.readouterr().err
    assert "zz_truncated.png" in err and "skipped 1 unreadable" in err
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    assert meta["training_set"]["n_images"] == 4


def test_train_bad_image_size_is_exit_2(synthetic, tmp_path, capsys):
    rc = main(["train", "--data", str(synthetic), "--out", str(tmp_path / "m"), "--image-size", "60"])
    assert rc == 2
    _one_line_error(capsys, "--image-size")


def test_export_missing_checkpoint_is_exit_2(tmp_path, capsys):
    (tmp_path / "m").mkdir()
    assert main(["export", "--model", str(tmp_path / "m"), "--out", str(tmp_path / "x.onnx")]) == 2
    _one_line_error(capsys, "checkpoint.pt")


def test_export_corrupt_checkpoint_is_exit_2(tmp_path, capsys):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "checkpoint.pt").write_bytes(b"\x80\x04corrupt")
    assert main(["export", "--model", str(tmp_path / "m"), "--out", str(tmp_path / "x.onnx")]) == 2
    _one_line_error(capsys, "corrupt")


def test_export_incompatible_checkpoint_is_exit_2(default_bundle, tmp_path, capsys):
    checkpoint = torch.load(default_bundle / "checkpoint.pt", weights_only=True)
    checkpoint["meta"]["format_version"] = 999
    (tmp_path / "m").mkdir()
    torch.save(checkpoint, tmp_path / "m" / "checkpoint.pt")
    assert main(["export", "--model", str(tmp_path / "m"), "--out", str(tmp_path / "x.onnx")]) == 2
    _one_line_error(capsys, "version")


def test_export_checkpoint_with_mismatched_weights_is_exit_2(default_bundle, tmp_path, capsys):
    checkpoint = torch.load(default_bundle / "checkpoint.pt", weights_only=True)
    checkpoint["state_dict"].pop("score_scale")
    (tmp_path / "m").mkdir()
    torch.save(checkpoint, tmp_path / "m" / "checkpoint.pt")
    assert main(["export", "--model", str(tmp_path / "m"), "--out", str(tmp_path / "x.onnx")]) == 2
    _one_line_error(capsys, "does not match")


# -- default head: term weights chosen on synthetic anomalies over good images -----------------
class _StubTerms:
    """Just enough of InspectionModel for select_fusion_weights: one informative term, the others noise."""

    def __init__(self, informative: str, good: torch.Tensor, terms=("ae", "knn", "sub", "res", "gan")) -> None:
        self.informative = informative
        self.terms = terms
        self.good_mean = torch.nn.functional.avg_pool2d(good, 8).mean(dim=0, keepdim=True)
        self.noise = torch.Generator().manual_seed(0)

    def available_terms(self):
        return self.terms

    def standardised_features(self, image):
        return torch.nn.functional.avg_pool2d(image, 8)

    def term_grids(self, z, names):
        deviation = (z - self.good_mean).abs().sum(dim=1, keepdim=True)
        return {n: deviation if n == self.informative
                else torch.rand(z.shape[0], 1, *z.shape[2:], generator=self.noise) for n in names}

    def standardised_term(self, name, grid):
        return grid

    def upsample_and_smooth(self, grid, size):
        return torch.nn.functional.interpolate(grid, size=tuple(size), mode="bilinear", align_corners=False)


@pytest.mark.parametrize("informative, expected", [("knn", {"knn": 0.8, "ae": 0.1, "gan": 0.1}),
                                                   ("sub", {"sub": 0.8, "ae": 0.1, "gan": 0.1}),
                                                   ("ae", {"ae": 0.8, "gan": 0.2})])
def test_fusion_selection_picks_the_informative_term(synthetic, informative, expected):
    from edge_inspector.training.fusion import CANDIDATES, full_weights, select_fusion_weights

    good = torch.from_numpy(prepared(sorted((synthetic / "train" / "good").glob("*.png"))))
    weights, selection = select_fusion_weights(_StubTerms(informative, good), good, seed=0)
    assert weights == full_weights(expected) == selection["weights"]
    assert [row["weights"] for row in selection["candidates"]] == list(CANDIDATES)
    # whichever memory term the draws favour, the station runs the fused AE-GAN
    assert all(row["weights"]["ae"] > 0 and row["weights"]["gan"] > 0 for row in selection["candidates"])
    assert selection["n_synthetic_per_draw"] == good.shape[0]
    assert selection["contrast"] == 0.3
    assert all(len(row["pixel_auroc_draws"]) == selection["draws"] == 6 for row in selection["candidates"])


def test_fusion_selection_takes_the_ae_gan_prior_when_no_term_sees_the_synthetic_defects(synthetic):
    from edge_inspector.training.fusion import PRIOR, full_weights, select_fusion_weights

    good = torch.from_numpy(prepared(sorted((synthetic / "train" / "good").glob("*.png"))))
    weights, selection = select_fusion_weights(_StubTerms("nothing", good), good, seed=0)  # every term is noise
    assert not selection["informative"] and selection["best_synthetic_pixel_auroc"] < 0.6
    assert weights == full_weights(PRIOR) == full_weights({"ae": 0.8, "gan": 0.2})
    # a model without the GAN critic (a checkpoint from before it) takes the prior's AE term
    weights, _ = select_fusion_weights(_StubTerms("nothing", good, terms=("ae", "knn", "sub", "res")), good, seed=0)
    assert weights == full_weights({"ae": 1.0})
    _, informed = select_fusion_weights(_StubTerms("knn", good), good, seed=0)
    assert informed["informative"]


def test_fusion_selection_only_offers_candidates_the_model_can_compute(synthetic):
    from edge_inspector.training.fusion import select_fusion_weights

    good = torch.from_numpy(prepared(sorted((synthetic / "train" / "good").glob("*.png"))))
    weights, selection = select_fusion_weights(_StubTerms("knn", good, terms=("ae", "knn")), good, seed=0)
    # candidates needing the subspace or residual are left out; the missing critic is dropped and
    # the rest renormalised
    assert [row["weights"] for row in selection["candidates"]] == [{"knn": 0.888889, "ae": 0.111111}, {"ae": 1.0}]
    assert weights["knn"] == 0.888889 and weights["sub"] == weights["res"] == weights["gan"] == 0.0


def test_synthetic_anomalies_are_blended_in_at_the_given_contrast(synthetic):
    from edge_inspector.training.fusion import synthetic_anomalies

    good = torch.from_numpy(prepared(sorted((synthetic / "train" / "good").glob("*.png"))))
    full, masks, _ = synthetic_anomalies(good, seed=1, contrast=1.0)
    faint, masks_faint, _ = synthetic_anomalies(good, seed=1, contrast=0.3)
    assert np.array_equal(masks, masks_faint)
    assert torch.allclose(faint - good, 0.3 * (full - good), atol=1e-5)
    assert (full - good).abs().sum() > 0


def test_fusion_rule_takes_the_cheapest_candidate_within_one_standard_error_of_the_best():
    from edge_inspector.training.fusion import choose

    cheap, costly = {"knn": 1.0}, {"knn": 0.8, "ae": 0.2}
    # costly is better on average but not consistently: a tie, so the cheaper (earlier) one wins
    table = [{"weights": cheap, "pixel_auroc_draws": [0.90, 0.93, 0.88, 0.92]},
             {"weights": costly, "pixel_auroc_draws": [0.91, 0.92, 0.90, 0.921]}]
    assert choose(table) == cheap
    # costly is better on every draw by a steady margin: no tie
    table[1]["pixel_auroc_draws"] = [0.905, 0.935, 0.885, 0.925]
    assert choose(table) == costly
    # a single draw: plain maximum
    assert choose([{"weights": cheap, "pixel_auroc_draws": [0.9]}, {"weights": costly, "pixel_auroc_draws": [0.91]}]) == costly


def test_default_head_chooses_its_fusion_weight_without_test_images(synthetic, tmp_path, monkeypatch):
    import shutil

    import edge_inspector.datasets as datasets
    from edge_inspector.training.fusion import CANDIDATES

    data = tmp_path / "goodonly"
    shutil.copytree(synthetic / "train", data / "train")  # no test/ at all
    monkeypatch.setattr(datasets, "list_test_items", lambda *a, **k: pytest.fail("train read test items"))
    out = train_bundle(data, tmp_path / "m", head="default", iterations=4, image_size=SIZE, seed=0, progress=False,
                       export=False, augmented_copies=1, curve_points=2)
    meta = json.loads((out / "model.json").read_text())
    selection = meta["score_normalisation"]["fusion"]["selection"]
    assert meta["fusion_weights"] == selection["weights"]
    assert list(meta["fusion_weights"]) == ["ae", "knn", "sub", "res", "gan"]
    assert abs(sum(meta["fusion_weights"].values()) - 1.0) < 1e-9
    assert [row["weights"] for row in selection["candidates"]] == list(CANDIDATES)
    assert meta["subspace_dim"] == 64
    assert meta["knn_features"] == "raw"


def test_fused_terms_are_scaled_by_the_tail_of_good_parts_not_their_spread():
    """term_stats: a term's location is its median over the held-out good positions and its unit
    the distance from there to their 99.9th percentile, so two terms with the same spread but
    different tails weigh differently at the map's maximum."""
    from types import SimpleNamespace

    from edge_inspector.training.scoring import TERMS
    from edge_inspector.training.term_stats import TAIL_QUANTILE, fit_term_statistics

    gen = torch.Generator().manual_seed(0)
    light = torch.randn(40, 1, 16, 16, generator=gen)  # Gaussian tail
    torch.manual_seed(0)  # StudentT draws from the global generator
    heavy = torch.distributions.StudentT(2.0).sample((40, 1, 16, 16))  # a few far-out positions
    heavy = heavy / heavy.std() * light.std()  # the same standard deviation
    grids = {"knn": light, "ae": heavy}
    model = SimpleNamespace(mdaae=None, config=SimpleNamespace(head="default"),
                            available_terms=lambda: ("ae", "knn"),
                            # z carries each held-out image's index, so every batch gets its own rows
                            term_grids=lambda z, names: {n: grids[n][z[:, 0].long()] for n in names},
                            term_mean=torch.zeros(len(TERMS)), term_std=torch.ones(len(TERMS)))
    stats = fit_term_statistics(model, torch.zeros(1), torch.arange(40.0).view(40, 1), "cpu")
    assert stats["term_scaling"] == {"rule": "median_tail", "tail_quantile": TAIL_QUANTILE}
    for name, grid in grids.items():
        k = TERMS.index(name)
        values = grid.flatten().double()
        assert model.term_mean[k].item() == pytest.approx(values.median().item(), rel=1e-5)
        assert model.term_std[k].item() == pytest.approx((torch.quantile(values, TAIL_QUANTILE) - values.median()).item(), rel=1e-5)
    # same spread, but the heavy-tailed term's unit is larger: it counts for less at equal weight
    assert model.term_std[TERMS.index("ae")] > 1.5 * model.term_std[TERMS.index("knn")]
