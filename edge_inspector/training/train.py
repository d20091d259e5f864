"""``edge-inspector train``: good images → model bundle (model.onnx + model.json + checkpoint.pt).

Steps:
 1. read ``train/good`` only (unreadable files skipped with a counted warning), split off a
    seeded hold-out for calibration;
 2. run the frozen backbone once over the training images and ``augmented_copies`` photometric
    variants of each (brightness/contrast/gamma/specular, the runtime's own preprocessing), so
    training iterates over cached features and costs no backbone passes;
 3. fit per-channel feature standardisation;
 4. train the MDAAE (and the SA-GAN for ``aegan``/``default``), tracking the Fréchet distance
    between real and reconstructed pooled features on the hold-out set;
 5. build the kNN memory bank (``knn``/``default``) by greedy coreset over the clean training
    patches (raw mean-centred features by default, ``knn_features``) and the principal subspace
    of those patches (``default``: its ``sub`` and ``res`` terms);
 6. fit term and score normalisation and the threshold on the hold-out images; for ``default``,
    choose the term weights on faint synthetic anomalies drawn on the hold-out (fusion.py);
 7. export ONNX with a parity check and write the bundle.

Deterministic on CPU for a given seed: every random draw comes from seeded generators, the
thread count is fixed and torch's deterministic-algorithms mode is on.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from tqdm import tqdm

from edge_inspector import BUNDLE_FORMAT_VERSION, __version__
from edge_inspector.datasets import extra_good_paths, fingerprint, list_test_items, load_images, load_train_good
from edge_inspector.drift import drift_reference, image_stats
from edge_inspector.errors import InputError
from edge_inspector.inference.bundle import io_spec, write_meta
from edge_inspector.logging import get_logger
from edge_inspector.preprocess import Preprocessor, random_photometric, to_bgr_uint8
from edge_inspector.preprocess.quality import exposure_stats
from edge_inspector.training.backbone import BACKBONE_NAME, DEFAULT_TAPS, FeatureExtractor
from edge_inspector.training.calibrate import f1_threshold, far_threshold
from edge_inspector.training.fusion import full_weights, select_fusion_weights
from edge_inspector.training.export import CHECKPOINT_FORMAT, CHECKPOINT_NAME, export_bundle
from edge_inspector.training.knn import KnnScorer, greedy_coreset
from edge_inspector.training.mdaae import Mdaae, MdaaeConfig, reconstruction_loss, reconstruction_terms
from edge_inspector.training.sagan import (
    Discriminator,
    GanSchedule,
    discriminator_loss,
    feature_matching_loss,
    FrechetReference,
    generator_adversarial_loss,
    pooled_descriptors,
)
from edge_inspector.training.scoring import (
    AE_HEADS,
    GAN_HEADS,
    HEADS,
    KNN_FEATURES,
    KNN_HEADS,
    TERMS,
    InspectionModel,
    ModelConfig,
    score_units_note,
)

log = get_logger(__name__)

CURVE_NAME = "training_curve.json"


@dataclass
class TrainSettings:
    head: str = "default"
    iterations: Optional[int] = None
    image_size: int = 256
    seed: int = 0
    device: str = "cpu"
    far_target: float = 0.01
    holdout: float = 0.15
    validation: Optional[str] = None
    lighting: str = "none"
    progress: bool = True
    export: bool = True
    augmented_copies: int = 2
    batch_size: int = 8
    learning_rate: float = 1e-3
    coreset_fraction: float = 0.01
    gan: GanSchedule = field(default_factory=GanSchedule)
    threads: int = 2
    # default head: fix the mix to {ae: this, knn: 1 − this}; None = choose the term weights on
    # synthetic anomalies drawn on the held-out good images (fusion.select_fusion_weights)
    fusion_ae_weight: Optional[float] = None
    knn_features: str = "raw"  # "raw" (PatchCore: mean-centred backbone features) or "standardised"
    subspace_dim: int = 64  # default head: principal subspace behind its "sub" and "res" terms
    curve_points: int = 20  # Fréchet-distance points tracked over a run (each costs an eigendecomposition)
    name: Optional[str] = None
    # --extra-good: more good images (e.g. the operator page's feedback set), always trained on,
    # never held out, so a part an operator marked "good — false alarm" is learned
    extra_good: Optional[str] = None

    def resolved_iterations(self) -> int:
        if self.iterations is not None:
            if self.iterations < 0:
                raise InputError(f"--iterations {self.iterations} must be ≥ 0")
            return int(self.iterations)
        if self.head == "knn":
            return 0
        # The paper's Fréchet distance converged at ~2 230 iterations; on cached, standardised
        # features ours flattens within a few hundred (training_curve.json; docs/model.md), and
        # 600 steps keep training within the 10-minute budget on 2 shared cores.
        return 600 if self.image_size >= 192 else 300


# ----------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------
@dataclass
class FeatureCache:
    train: torch.Tensor  # (n_train·(1+copies))×C×G×G raw backbone features
    train_clean: torch.Tensor  # n_train×C×G×G, un-augmented
    holdout: torch.Tensor  # n_holdout×C×G×G, un-augmented
    holdout_images: torch.Tensor  # n_holdout×3×S×S model inputs (for calibrating the full graph)


def split_holdout(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of n images into (train indices, hold-out indices)."""
    if not 0.0 <= fraction < 1.0:
        raise InputError(f"--holdout {fraction} must be in [0, 1)")
    order = np.random.default_rng(seed).permutation(n)
    n_hold = int(round(fraction * n)) if n >= 2 else 0
    if fraction > 0 and n >= 2:
        n_hold = min(max(n_hold, 1), n - 1)
    return np.sort(order[n_hold:]), np.sort(order[:n_hold])


def bgr_channel_stats(images: list[np.ndarray]) -> dict:
    """Per-channel mean/std (BGR) of the training images, for the runtime's 'match_train' lighting."""
    from edge_inspector.preprocess import to_bgr_uint8

    sums = np.zeros(3)
    sq = np.zeros(3)
    count = 0
    for img in images:
        f = to_bgr_uint8(img).reshape(-1, 3).astype(np.float64)
        sums += f.sum(axis=0)
        sq += (f**2).sum(axis=0)
        count += f.shape[0]
    mean = sums / count
    std = np.sqrt(np.maximum(sq / count - mean**2, 0.0))
    return {"mean": [round(float(v), 4) for v in mean], "std": [round(float(v), 4) for v in std]}


@torch.no_grad()
def extract(backbone, tensors: list[np.ndarray], device: str, batch: int = 16, bar=None) -> torch.Tensor:
    outs = []
    for i in range(0, len(tensors), batch):
        x = torch.from_numpy(np.stack(tensors[i : i + batch])).to(device)
        outs.append(backbone(x).cpu())
        if bar is not None:
            bar.update(x.shape[0])
    return torch.cat(outs)


# ----------------------------------------------------------------------------------------------
# training
# ----------------------------------------------------------------------------------------------
def _set_determinism(seed: int, threads: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))
    torch.set_num_threads(max(1, threads))
    torch.use_deterministic_algorithms(True, warn_only=True)


def train_autoencoder(
    z_train: torch.Tensor,
    z_eval: torch.Tensor,
    config: MdaaeConfig,
    settings: TrainSettings,
    iterations: int,
    use_gan: bool,
    device: str,
) -> tuple[Mdaae, list[dict], dict]:
    """Fit the MDAAE (+ SA-GAN) on standardised cached features. Returns (model, curve, timing)."""
    generator = torch.Generator().manual_seed(settings.seed + 1)
    ae = Mdaae(config).to(device)
    optimiser = torch.optim.Adam(ae.parameters(), lr=settings.learning_rate, betas=(0.5, 0.999))
    schedule = settings.gan
    disc = d_optimiser = None
    if use_gan:
        disc = Discriminator(z_train.shape[1]).to(device)
        d_optimiser = torch.optim.Adam(disc.parameters(), lr=settings.learning_rate * schedule.d_lr_ratio, betas=(0.5, 0.999))
    # Cosine decay: large steps early, a settled reconstruction at the end (the map is read off it).
    lr_scale = lambda step: 0.5 * (1.0 + math.cos(math.pi * step / max(iterations, 1)))  # noqa: E731
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, lr_scale)
    curve: list[dict] = []
    eval_every = max(1, iterations // max(settings.curve_points, 1))
    frechet_reference = FrechetReference(pooled_descriptors(z_eval))
    n = z_train.shape[0]
    batch = min(settings.batch_size, n)
    timing = {"ae_steps": 0, "gan_steps": 0, "ae_step_s": 0.0, "gan_step_s": 0.0}
    running = {"rec": 0.0, "d": float("nan"), "g_adv": float("nan"), "count": 0}

    def evaluate(step: int) -> None:
        ae.eval()
        with torch.no_grad():
            z_hat = torch.cat([ae(z_eval[i : i + 16].to(device)).cpu() for i in range(0, z_eval.shape[0], 16)])
            _, l2, cos = reconstruction_loss(z_eval, z_hat)
        ae.train()
        point = {
            "iteration": step,
            "frechet": round(frechet_reference.distance(pooled_descriptors(z_hat)), 4),
            "eval_l2": round(float(l2), 5),
            "eval_cos": round(float(cos), 5),
            "train_rec": round(running["rec"] / max(running["count"], 1), 5),
            "d_loss": None if math.isnan(running["d"]) else round(running["d"], 4),
            "g_adv": None if math.isnan(running["g_adv"]) else round(running["g_adv"], 4),
            "lambda": round(schedule.adv_weight(step / max(iterations, 1)), 5) if use_gan else 0.0,
        }
        if ae.last_level_weights is not None:
            point["level_weights"] = [round(float(v), 3) for v in ae.last_level_weights.mean(dim=0)]
        curve.append(point)
        running.update(rec=0.0, count=0)

    ae.train()
    evaluate(0)
    bar = tqdm(total=iterations, desc="train " + ("ae+gan" if use_gan else "ae"), disable=not settings.progress, unit="it")
    for step in range(1, iterations + 1):
        started = time.perf_counter()
        progress = step / iterations
        idx = torch.randint(n, (batch,), generator=generator)
        z = z_train[idx].to(device)
        z_hat = ae(z)
        loss, _, _ = reconstruction_loss(z, z_hat)
        running["rec"] += float(loss.detach())
        running["count"] += 1
        gan_active = use_gan and progress >= schedule.d_start
        if gan_active:
            noise = schedule.noise_std(progress)
            # D step on detached reconstructions (skipped while D is already winning).
            real_in = z + noise * torch.randn(z.shape, generator=generator).to(device)
            fake_in = z_hat.detach() + noise * torch.randn(z.shape, generator=generator).to(device)
            real_logits, _ = disc(real_in)
            fake_logits, _ = disc(fake_in)
            d_loss = discriminator_loss(real_logits, fake_logits)
            running["d"] = float(d_loss.detach())
            if float(d_loss) >= schedule.d_loss_floor:
                d_optimiser.zero_grad(set_to_none=True)
                d_loss.backward()
                d_optimiser.step()
            weight = schedule.adv_weight(progress)
            if weight > 0:
                fake_logits, fake_feats = disc(z_hat + noise * torch.randn(z.shape, generator=generator).to(device))
                with torch.no_grad():
                    _, real_feats = disc(real_in)
                g_adv = generator_adversarial_loss(fake_logits)
                fm = feature_matching_loss(real_feats, fake_feats)
                running["g_adv"] = float(g_adv.detach())
                loss = loss + weight * (g_adv + schedule.feature_matching_weight * fm)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        scheduler.step()
        elapsed = time.perf_counter() - started
        key = "gan" if gan_active else "ae"
        timing[f"{key}_steps"] += 1
        timing[f"{key}_step_s"] += elapsed
        bar.update(1)
        if step % eval_every == 0 or step == iterations:
            evaluate(step)
            bar.set_postfix(rec=curve[-1]["train_rec"], fd=curve[-1]["frechet"])
    bar.close()
    for key in ("ae", "gan"):
        steps = timing[f"{key}_steps"]
        timing[f"{key}_step_ms"] = round(1000 * timing[f"{key}_step_s"] / steps, 2) if steps else None
    ae.eval()
    return ae, curve, timing


@torch.no_grad()
def fit_term_statistics(model: InspectionModel, z_train_clean: torch.Tensor, z_hold: torch.Tensor, device: str) -> dict:
    """AE term scales (mean L2, mean 1−cos on good training features) and per-position term
    mean/std on held-out good features (for the default head's fusion)."""
    stats: dict = {}
    if model.mdaae is not None:
        l2s, coss = [], []
        for i in range(0, z_train_clean.shape[0], 16):
            z = z_train_clean[i : i + 16].to(device)
            l2, cos = reconstruction_terms(z, model.mdaae(z))
            l2s.append(l2.mean().item() * z.shape[0])
            coss.append(cos.mean().item() * z.shape[0])
        count = z_train_clean.shape[0]
        scales = torch.tensor([max(sum(l2s) / count, 1e-8), max(sum(coss) / count, 1e-8)])
        model.ae_term_scales.copy_(scales)
        stats["ae_term_scales"] = {"l2_mean": float(scales[0]), "cos_mean": float(scales[1])}
    if model.config.head == "default":
        names = model.available_terms()
        values: dict[str, list] = {n: [] for n in names}
        for i in range(0, z_hold.shape[0], 16):
            for name, grid in model.term_grids(z_hold[i : i + 16].to(device), names).items():
                values[name].append(grid.flatten().cpu())
        stats["term_mean"], stats["term_std"] = {}, {}
        for name in names:
            v = torch.cat(values[name])
            k = TERMS.index(name)
            model.term_mean[k] = v.mean()
            model.term_std[k] = v.std().clamp_min(1e-6)
            stats["term_mean"][name] = float(model.term_mean[k])
            stats["term_std"][name] = float(model.term_std[k])
    return stats


@torch.no_grad()
def raw_image_scores(model: InspectionModel, images: torch.Tensor, device: str, batch: int = 8) -> np.ndarray:
    out = []
    for i in range(0, images.shape[0], batch):
        out.append(model.raw_map(images[i : i + batch].to(device)).amax(dim=(1, 2, 3)).cpu())
    return torch.cat(out).numpy().astype(np.float64)


@torch.no_grad()
def normalised_scores(model: InspectionModel, images: torch.Tensor, device: str, batch: int = 8) -> np.ndarray:
    out = []
    for i in range(0, images.shape[0], batch):
        out.append(model(images[i : i + batch].to(device))[1].cpu())
    return torch.cat(out).numpy().astype(np.float64)


# ----------------------------------------------------------------------------------------------
# bundle
# ----------------------------------------------------------------------------------------------
def build_meta(
    model: InspectionModel,
    settings: TrainSettings,
    name: str,
    train_paths: list[Path],
    n_train: int,
    n_holdout: int,
    train_stats: dict,
    calibration: dict,
    threshold_f1: Optional[dict],
    score_stats: dict,
    curve: list[dict],
    timing: dict,
    drift: Optional[dict] = None,
    n_extra_good: int = 0,
) -> dict:
    cfg = model.config
    meta = {
        "format_version": BUNDLE_FORMAT_VERSION,
        "package_version": __version__,
        "name": name,
        "head": cfg.head,
        "backbone": BACKBONE_NAME,
        "image_size": cfg.image_size,
        "input": io_spec()[0],
        "outputs": io_spec()[1],
        "fusion_levels": [t.as_dict() for t in cfg.taps],
        "fusion_weights": dict(cfg.fusion_weights) if cfg.head == "default" else None,
        "knn_features": cfg.knn_features if cfg.head in KNN_HEADS else None,
        "subspace_dim": cfg.subspace_dim if cfg.head == "default" else None,
        "threshold": round(float(calibration["threshold"]), 6),
        "threshold_far_target": settings.far_target,
        "threshold_calibration": calibration,
        "score_normalisation": {
            "kind": "affine_on_good_holdout",
            "offset": float(model.score_offset),
            "scale": float(model.score_scale),
            "note": score_units_note(),
            "image_score": "max of the smoothed map",
            "smoothing_sigma_px": cfg.sigma,
            **score_stats,
        },
        "preprocess": {"lighting": settings.lighting, "train_stats": train_stats},
        "training_set": {
            "fingerprint": fingerprint(train_paths),
            "n_images": len(train_paths),
            "n_train": n_train,
            "n_holdout": n_holdout,
            "augmented_copies": settings.augmented_copies,
            "extra_good": {"folder": settings.extra_good, "n_images": n_extra_good} if settings.extra_good else None,
        },
        # calibration scores and image statistics for the station's drift monitor (drift.py)
        "drift_reference": drift,
        "training": {
            "seed": settings.seed,
            "iterations": settings.resolved_iterations(),
            "batch_size": settings.batch_size,
            "learning_rate": settings.learning_rate,
            "gan": settings.gan.as_dict() if cfg.head in GAN_HEADS else None,
            "mdaae": cfg.mdaae.as_dict() if cfg.mdaae else None,
            "knn_bank_size": cfg.bank_size if cfg.head in KNN_HEADS else None,
            "coreset_fraction": settings.coreset_fraction if cfg.head in KNN_HEADS else None,
            "timing": timing,
        },
        "training_curve": curve_summary(curve),
    }
    if threshold_f1 is not None:
        meta["threshold_f1"] = round(float(threshold_f1["threshold"]), 6)
        meta["threshold_f1_detail"] = threshold_f1
    return meta


def curve_summary(curve: list[dict]) -> dict:
    if not curve:
        return {"points": [], "final": None}
    return {
        "points": [{"iteration": p["iteration"], "frechet": p["frechet"], "eval_l2": p["eval_l2"]} for p in curve],
        "final": curve[-1],
        "frechet_initial": curve[0]["frechet"],
        "frechet_final": curve[-1]["frechet"],
    }


def save_checkpoint(model: InspectionModel, meta: dict, path: Path) -> None:
    torch.save(
        {"format": CHECKPOINT_FORMAT, "config": model.config.as_dict(), "state_dict": model.state_dict(), "meta": meta},
        path,
    )


# ----------------------------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------------------------
def train_bundle(
    data_dir: str | Path,
    out_dir: str | Path,
    head: str = "default",
    iterations: Optional[int] = None,
    image_size: int = 256,
    seed: int = 0,
    device: str = "cpu",
    far_target: float = 0.01,
    holdout: float = 0.15,
    validation: Optional[str | Path] = None,
    lighting: str = "none",
    progress: bool = True,
    **overrides,
) -> Path:
    """Train a model bundle from ``data_dir/train/good`` into ``out_dir``; returns ``out_dir``.

    ``overrides`` are further :class:`TrainSettings` fields (e.g. ``export=False``,
    ``augmented_copies=1``, ``gan=GanSchedule(...)``)."""
    settings = TrainSettings(
        head=head,
        iterations=iterations,
        image_size=image_size,
        seed=seed,
        device=device,
        far_target=far_target,
        holdout=holdout,
        validation=str(validation) if validation else None,
        lighting=lighting,
        progress=progress,
        **overrides,
    )
    return fit(Path(data_dir), Path(out_dir), settings)


def _check_settings(settings: TrainSettings) -> None:
    if settings.head not in HEADS:
        raise InputError(f"unknown head '{settings.head}' (use {', '.join(HEADS)})")
    if settings.image_size < 32 or settings.image_size % 8:
        raise InputError(f"--image-size {settings.image_size} must be a multiple of 8 and ≥ 32")
    if not 0.0 < settings.far_target < 1.0:
        raise InputError(f"--far-target {settings.far_target} must be between 0 and 1 (exclusive)")
    if settings.lighting not in ("none", "clahe", "match_train", "match_hist"):
        raise InputError(f"--lighting {settings.lighting}: use none, clahe, match_train or match_hist")
    if settings.knn_features not in KNN_FEATURES:
        raise InputError(f"knn_features {settings.knn_features!r}: use {' or '.join(KNN_FEATURES)}")
    if settings.fusion_ae_weight is not None and not 0.0 <= settings.fusion_ae_weight <= 1.0:
        raise InputError(f"fusion_ae_weight {settings.fusion_ae_weight} must be in [0, 1]")
    if settings.subspace_dim < 0:
        raise InputError(f"subspace_dim {settings.subspace_dim} must be ≥ 0 (0: no subspace terms)")
    if settings.device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device available to torch on this machine")
    settings.resolved_iterations()


@dataclass
class TrainingData:
    """Everything later stages need from the dataset, computed once (shared across heads)."""

    paths: list[Path]
    train_idx: np.ndarray
    hold_idx: np.ndarray
    train_stats: dict
    image_stats: list  # (mean luma, contrast) per image: the drift monitor's reference
    n_extra_good: int
    preprocessor: Preprocessor
    feature_mean: torch.Tensor
    feature_std: torch.Tensor
    z_train: torch.Tensor  # standardised features, clean + augmented copies
    z_clean: torch.Tensor  # standardised features of the clean training images
    z_hold: torch.Tensor  # standardised features of the hold-out images
    hold_images: torch.Tensor  # hold-out model inputs (N×3×S×S)
    timing: dict


@dataclass
class Components:
    """Trained parts a head is assembled from."""

    ae: Optional[Mdaae] = None
    ae_config: Optional[MdaaeConfig] = None
    used_gan: bool = False
    bank: Optional[torch.Tensor] = None
    subspace: Optional[torch.Tensor] = None  # C×d principal directions of the bank's feature space
    curve: list = field(default_factory=list)
    timing: dict = field(default_factory=dict)


def _reduce_for_augmentation(image: np.ndarray, limit: int) -> np.ndarray:
    import cv2

    h, w = image.shape[:2]
    factor = limit / max(h, w)
    if factor >= 1.0:
        return image
    return cv2.resize(image, (max(1, round(w * factor)), max(1, round(h * factor))), interpolation=cv2.INTER_AREA)


def prepare_data(data_dir: Path, settings: TrainSettings, backbone) -> TrainingData:
    """Read train/good, split the hold-out, cache standardised backbone features."""
    started = time.perf_counter()
    paths, images = load_train_good(data_dir)
    train_idx, hold_idx = split_holdout(len(images), settings.holdout, settings.seed)
    if hold_idx.size == 0:
        log.warning("no hold-out images: calibrating on training images (threshold will be optimistic)", n_images=len(images))
        hold_idx = train_idx
    n_extra = 0
    if settings.extra_good:
        extra_paths, extra_images = load_images(extra_good_paths(settings.extra_good), "extra good images")
        n_extra = len(extra_images)
        train_idx = np.concatenate([train_idx, np.arange(len(images), len(images) + n_extra)])
        paths, images = paths + extra_paths, images + extra_images
        log.info("extra good images", folder=settings.extra_good, n_images=n_extra)
    stats = [image_stats(img) for img in images]
    train_stats = bgr_channel_stats(images)
    # Exposure figures of train/good for the station's image-quality gate (preprocess/quality.py).
    train_stats["exposure"] = exposure_stats(to_bgr_uint8(img) for img in images)
    pre = Preprocessor(settings.image_size, lighting=settings.lighting, train_stats=train_stats)
    log.info("training data", n_images=len(images), n_train=int(train_idx.size), n_holdout=int(hold_idx.size),
             image_size=settings.image_size, augmented_copies=settings.augmented_copies)
    aug_rng = np.random.default_rng(settings.seed + 2)
    clean = [pre.prepare(images[i])[0] for i in train_idx]
    # Augment a copy reduced to 2×S (not the full 900² frame): the photometric ops are pointwise
    # or smooth, so the result after the final resize is the same at a fraction of the cost.
    reduced = {int(i): _reduce_for_augmentation(images[i], 2 * settings.image_size) for i in train_idx}
    augmented = [
        pre.prepare(random_photometric(reduced[int(i)], aug_rng))[0]
        for _ in range(settings.augmented_copies)
        for i in train_idx
    ]
    del reduced
    hold_tensors = [pre.prepare(images[i])[0] for i in hold_idx]
    del images
    total = len(clean) + len(augmented) + len(hold_tensors)
    with tqdm(total=total, desc="backbone features", disable=not settings.progress, unit="img") as bar:
        feats_clean = extract(backbone, clean, settings.device, bar=bar)
        feats_aug = extract(backbone, augmented, settings.device, bar=bar) if augmented else feats_clean[:0]
        feats_hold = extract(backbone, hold_tensors, settings.device, bar=bar)
    all_train = torch.cat([feats_clean, feats_aug])
    del feats_aug
    mean = all_train.mean(dim=(0, 2, 3), keepdim=True)
    std = all_train.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-4)
    all_train.sub_(mean).div_(std)  # in place: the cache is the largest allocation of a run
    elapsed = time.perf_counter() - started
    return TrainingData(
        paths=paths,
        train_idx=train_idx,
        hold_idx=hold_idx,
        train_stats=train_stats,
        image_stats=stats,
        n_extra_good=n_extra,
        preprocessor=pre,
        feature_mean=mean,
        feature_std=std,
        z_train=all_train,
        z_clean=(feats_clean - mean) / std,
        z_hold=(feats_hold - mean) / std,
        hold_images=torch.from_numpy(np.stack(hold_tensors)),
        timing={"features_s": round(elapsed, 2), "n_backbone_passes": total,
                "features_ms_per_image": round(1000 * elapsed / max(total, 1), 1)},
    )


def fit_components(data: TrainingData, settings: TrainSettings, train_ae: bool, use_gan: bool, build_bank: bool) -> Components:
    """Train the MDAAE (with or without the GAN) and/or build the kNN memory bank."""
    parts = Components()
    if train_ae:
        torch.manual_seed(settings.seed)
        parts.ae_config = MdaaeConfig(level_channels=tuple(t.channels for t in DEFAULT_TAPS))
        t0 = time.perf_counter()
        ae, curve, ae_timing = train_autoencoder(
            data.z_train, data.z_hold, parts.ae_config, settings, settings.resolved_iterations(), use_gan, settings.device
        )
        parts.ae, parts.curve, parts.used_gan = ae.cpu(), curve, use_gan
        parts.timing.update(ae_timing)
        parts.timing["autoencoder_s"] = round(time.perf_counter() - t0, 2)
    if build_bank:
        t0 = time.perf_counter()
        # Candidates are the clean training patches only. Adding the photometrically augmented
        # copies (to cover other lighting) was measured to hurt badly — tire pixel AUROC 0.901 vs
        # 0.967, image 0.637 vs 0.722: greedy k-center selection spends the bank on the augmented
        # outliers and leaves the normal appearance sparsely covered.
        z = data.z_clean * data.feature_std if settings.knn_features == "raw" else data.z_clean
        patches = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        n_select = max(1, int(round(settings.coreset_fraction * patches.shape[0])))
        bar = tqdm(total=n_select, desc="coreset", disable=not settings.progress, unit="pt")
        chosen = greedy_coreset(patches, n_select, seed=settings.seed + 3, progress=lambda i, n: bar.update(1))
        bar.close()
        parts.bank = patches[chosen].clone()
        if settings.head == "default":  # only the default head has the subspace terms
            parts.subspace = principal_subspace(patches, settings.subspace_dim)
        parts.timing["coreset_s"] = round(time.perf_counter() - t0, 2)
        parts.timing["bank_size"] = int(chosen.numel())
    return parts


def principal_subspace(patches: torch.Tensor, dim: int) -> Optional[torch.Tensor]:
    """The top-``dim`` eigenvectors (C×dim) of the second-moment matrix of the patch features
    (mean-centred already). Exact and deterministic: a C×C eigendecomposition."""
    channels = patches.shape[1]
    if dim <= 0 or dim >= channels:
        return None
    second = torch.zeros(channels, channels, dtype=torch.float64)
    for i in range(0, patches.shape[0], 65536):
        block = patches[i : i + 65536].float()
        second += (block.t() @ block).double()
    _, vectors = torch.linalg.eigh(second / patches.shape[0])
    return vectors[:, -dim:].flip(1).float().contiguous()  # largest first


def assemble(head: str, data: TrainingData, parts: Components, settings: TrainSettings, out_dir: Path,
             name: Optional[str] = None) -> Path:
    """Build the ``head`` model from trained parts, calibrate it on the hold-out and write the bundle."""
    started = time.perf_counter()
    if head in AE_HEADS and parts.ae is None:
        raise ValueError(f"head {head} needs a trained autoencoder")
    if head in KNN_HEADS and parts.bank is None:
        raise ValueError(f"head {head} needs a memory bank")
    device = settings.device
    fixed_w = settings.fusion_ae_weight
    config = ModelConfig(head=head, image_size=settings.image_size, taps=DEFAULT_TAPS,
                         mdaae=parts.ae_config if head in AE_HEADS else None,
                         bank_size=int(parts.bank.shape[0]) if head in KNN_HEADS else 0,
                         fusion_weights={"ae": fixed_w if fixed_w is not None else 0.5,
                                         "knn": 1.0 - (fixed_w if fixed_w is not None else 0.5)},
                         knn_features=settings.knn_features,
                         subspace_dim=int(parts.subspace.shape[1]) if head == "default" and parts.subspace is not None else 0)
    model = InspectionModel(config)
    model.feature_mean.copy_(data.feature_mean)
    model.feature_std.copy_(data.feature_std)
    if head in AE_HEADS:
        model.mdaae.load_state_dict(parts.ae.state_dict())
    if head in KNN_HEADS:
        model.knn = KnnScorer(parts.bank)
    if model.subspace is not None:
        model.subspace.copy_(parts.subspace)
        model.knn_sub = KnnScorer(parts.bank @ parts.subspace)
    model = model.to(device).eval()
    score_stats = fit_term_statistics(model, data.z_clean, data.z_hold, device)
    if head == "default":
        if fixed_w is None:
            weights, selection = select_fusion_weights(model, data.hold_images, device, seed=settings.seed + 4,
                                                       good_features=data.z_hold)
        else:
            weights = full_weights({"ae": float(fixed_w), "knn": 1.0 - float(fixed_w)})
            selection = {"rule": "fixed by the caller (fusion_ae_weight)", "weights": weights}
        model.config.fusion_weights = weights
        score_stats["fusion"] = {"weights": dict(model.config.fusion_weights), "selection": selection}
    raw_hold = raw_image_scores(model, data.hold_images, device)
    offset = float(raw_hold.mean())
    scale = float(raw_hold.std(ddof=1)) if raw_hold.size > 1 else 0.0
    # Floor the scale: a handful of near-identical hold-out scores must not blow the units up.
    scale = max(scale, 0.05 * abs(offset), 1e-6)
    model.score_offset.fill_(offset)
    model.score_scale.fill_(scale)
    calibration = far_threshold((raw_hold - offset) / scale, settings.far_target)
    threshold_f1 = _validation_threshold(model, data.preprocessor, settings, device) if settings.validation else None
    timing = {**data.timing, **parts.timing, "calibration_s": round(time.perf_counter() - started, 2)}
    head_settings = TrainSettings(**{**settings.__dict__, "head": head})
    meta = build_meta(model, head_settings, name or f"{head}", data.paths, int(data.train_idx.size), int(data.hold_idx.size),
                      data.train_stats, calibration, threshold_f1, score_stats,
                      parts.curve if head in AE_HEADS else [], timing,
                      drift=drift_reference((raw_hold - offset) / scale, data.image_stats), n_extra_good=data.n_extra_good)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = model.cpu()
    save_checkpoint(model, meta, out_dir / CHECKPOINT_NAME)
    curve = parts.curve if head in AE_HEADS else []
    (out_dir / CURVE_NAME).write_text(json.dumps({"head": head, "gan": parts.used_gan and head in GAN_HEADS,
                                                   "points": curve}, indent=1), encoding="utf-8")
    if settings.export:
        meta = export_bundle(model, meta, out_dir, sample_images=data.hold_images[:4])
    else:
        write_meta(out_dir, meta)
    log.info("bundle written", out=str(out_dir), head=head, threshold=meta["threshold"])
    return out_dir


def fit(data_dir: Path, out_dir: Path, settings: TrainSettings) -> Path:
    """The ``train`` pipeline for one head."""
    _check_settings(settings)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{out_dir}: --out exists and is not a directory")
    started = time.perf_counter()
    _set_determinism(settings.seed, settings.threads)
    backbone = FeatureExtractor(DEFAULT_TAPS).to(settings.device)
    data = prepare_data(data_dir, settings, backbone)
    head = settings.head
    log.info("training", head=head, iterations=settings.resolved_iterations(), seed=settings.seed)
    parts = fit_components(data, settings, train_ae=head in AE_HEADS, use_gan=head in GAN_HEADS, build_bank=head in KNN_HEADS)
    parts.timing["total_train_s"] = round(time.perf_counter() - started, 2)  # calibration+export excluded
    name = settings.name or f"{Path(data_dir).resolve().name}-{head}"
    return assemble(head, data, parts, settings, out_dir, name=name)


def _validation_threshold(model: InspectionModel, pre: Preprocessor, settings: TrainSettings, device: str) -> dict:
    items = list_test_items(settings.validation)
    paths, images = load_images([it.path for it in items], "validation images")
    kept = set(paths)
    labels = np.array([it.label for it in items if it.path in kept])
    tensors = torch.from_numpy(np.stack([pre.prepare(img)[0] for img in images]))
    scores = normalised_scores(model, tensors, device)
    return f1_threshold(scores, labels)


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------
def cli_train(args) -> int:
    out = train_bundle(
        args.data, args.out, head=args.head, iterations=args.iterations, image_size=args.image_size,
        seed=args.seed, device=args.device, far_target=args.far_target, holdout=args.holdout,
        validation=args.validation, lighting=args.lighting, progress=True,
        export=not getattr(args, "no_export", False), extra_good=args.extra_good,
    )
    meta = json.loads((out / "model.json").read_text(encoding="utf-8"))
    summary = {"model": str(out), "head": meta["head"], "threshold": meta["threshold"],
               "train_seconds": meta["training"]["timing"].get("total_train_s")}
    if meta.get("fusion_weights"):
        # which terms the station will run: chosen on the hold-out, so worth seeing at once
        summary["terms"] = {t: w for t, w in meta["fusion_weights"].items() if w}
    print(json.dumps(summary))
    return 0
