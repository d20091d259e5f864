"""Training memory stays bounded as the training set grows: images are decoded one at a time, the
feature cache has a fixed number of float16 maps, and the coreset sees a capped patch sample.

Footprint figures on the dev sets come from benchmarks/training_benchmark.py (docs/benchmarks.md);
these tests pin the mechanisms, with a stand-in backbone so they run in seconds.
"""

from __future__ import annotations

import tracemalloc

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from edge_inspector.training.components import bank_candidates  # noqa: E402
from edge_inspector.training.features import CACHE_DTYPE, augmentation_jobs, prepare_data  # noqa: E402
from edge_inspector.training.settings import TrainSettings  # noqa: E402

BIG = 1200  # px: one decoded frame is 4.3 MB, the set 16× that


class PoolBackbone(torch.nn.Module):
    """Image N×3×S×S → N×C×S/8×S/8: the real extractor's shapes at a fraction of its cost."""

    out_channels = 6

    def forward(self, x):
        pooled = torch.nn.functional.avg_pool2d(x, 8)
        return torch.cat([pooled, pooled.pow(2)], dim=1)


@pytest.fixture(scope="module")
def big_images(tmp_path_factory):
    root = tmp_path_factory.mktemp("big") / "part"
    (root / "train" / "good").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(16):
        img = rng.integers(0, 255, (BIG, BIG, 3), dtype=np.uint8)
        cv2.imwrite(str(root / "train" / "good" / f"{i:02d}.png"), img)
    return root


def test_feature_preparation_never_holds_the_whole_set_of_decoded_images(big_images):
    settings = TrainSettings(image_size=64, progress=False, augmented_copies=2, holdout=0.25)
    tracemalloc.start()
    try:
        data = prepare_data(big_images, settings, PoolBackbone())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    frame = BIG * BIG * 3
    assert data.z_train.shape[0] == 12 * 3 and data.z_hold.shape[0] == 4
    # Holding every decoded image (the old loader) peaks at ≥ 16 frames; streaming needs a few.
    assert peak < 5 * frame, f"peak {peak / frame:.1f} decoded frames"


def test_feature_cache_is_float16_with_a_fixed_number_of_maps(big_images):
    settings = TrainSettings(image_size=64, progress=False, augmented_copies=2, holdout=0.25, feature_cache_images=20)
    data = prepare_data(big_images, settings, PoolBackbone())
    assert data.z_train.dtype == CACHE_DTYPE and data.z_train.shape[0] == 20  # 12 clean + 8 of 24 copies
    assert data.z_clean.data_ptr() == data.z_train.data_ptr() and data.z_clean.shape[0] == 12
    # Standardised over everything cached: per-channel mean ≈ 0 and std ≈ 1 (float16 rounding aside).
    z = data.z_train.float()
    assert z.mean(dim=(0, 2, 3)).abs().max() < 1e-2
    assert (z.std(dim=(0, 2, 3)) - 1).abs().max() < 1e-2


def test_augmentation_jobs_are_all_copies_below_the_cap_and_a_seeded_subset_above():
    idx = np.array([0, 2, 5, 7])
    assert augmentation_jobs(idx, 2, 100, seed=1) == [(0, 0), (0, 2), (0, 5), (0, 7), (1, 0), (1, 2), (1, 5), (1, 7)]
    capped = augmentation_jobs(idx, 3, 5, seed=1)
    assert len(capped) == 5 and capped == sorted(capped) and len(set(capped)) == 5
    assert capped == augmentation_jobs(idx, 3, 5, seed=1) and capped != augmentation_jobs(idx, 3, 5, seed=2)
    assert augmentation_jobs(idx, 2, 0, seed=1) == []


def test_bank_candidates_are_every_patch_below_the_cap_and_a_uniform_sample_above():
    z = torch.randn(70, 4, 3, 3).half()  # more than one 64-image block
    scale = torch.rand(1, 4, 1, 1) + 0.5
    every = (z.float() * scale).permute(0, 2, 3, 1).reshape(-1, 4)
    patches, rows = bank_candidates(z, scale, 10_000, seed=0)
    assert torch.equal(patches, every) and torch.equal(rows, torch.arange(70).repeat_interleave(9))
    sample, rows = bank_candidates(z, scale, 200, seed=0)
    assert sample.shape == (200, 4) and sample.dtype == torch.float32
    assert all(torch.equal(r, every[k * 9 : k * 9 + 9][(every[k * 9 : k * 9 + 9] == r).all(dim=1)][0]) for r, k in zip(sample, rows.tolist()))
    rows = {tuple(r.tolist()) for r in every}
    assert all(tuple(r.tolist()) in rows for r in sample)
    # both 64-image blocks contribute, in proportion to their patches (64·9 vs 6·9)
    first_block = {tuple(r.tolist()) for r in every[: 64 * 9]}
    share = sum(tuple(r.tolist()) in first_block for r in sample) / 200
    assert 0.8 < share < 0.99
