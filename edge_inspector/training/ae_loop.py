"""The MDAAE (+ SA-GAN) training loop on cached, standardised features, with the Fréchet-distance
curve tracked on the hold-out."""

from __future__ import annotations

import math
import time

import torch
from tqdm import tqdm

from edge_inspector.training.mdaae import Mdaae, MdaaeConfig, reconstruction_loss
from edge_inspector.training.sagan import (
    Critic,
    Discriminator,
    FrechetReference,
    discriminator_loss,
    feature_matching_loss,
    generator_adversarial_loss,
    pooled_descriptors,
)
from edge_inspector.training.settings import TrainSettings


def train_autoencoder(
    z_train: torch.Tensor,
    z_eval: torch.Tensor,
    config: MdaaeConfig,
    settings: TrainSettings,
    iterations: int,
    use_gan: bool,
    device: str,
) -> tuple[Mdaae, list[dict], dict, Critic | None]:
    """Fit the MDAAE (+ SA-GAN) on standardised cached features. Returns (model, curve, timing,
    critic): the critic is the trained discriminator's scoring part (None without the GAN)."""
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
        z = z_train[idx].to(device, torch.float32)  # the cache may be float16
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
            if float(d_loss.detach()) >= schedule.d_loss_floor:
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
    return ae, curve, timing, (Critic.from_discriminator(disc) if disc is not None else None)
