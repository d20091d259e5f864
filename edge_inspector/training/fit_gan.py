"""Training loop of the self-attention GAN scorer (sagan.py) on the trained MDAAE's residuals.

The scorer reads the residual R = Z − Ẑ of the frozen MDAAE (all levels on the 32² grid): a defect
the autoencoder rebuilds as normal appearance leaves its deviation in R, so perturbing R is a
faithful model of what a defect does to the scorer's input, and D learns which residual directions
are anomalous instead of a fixed L2/cosine. (On the raw features, SimpleNet-style, the scorer
learned "perturbed = larger norm" and ranked tire's dark defects *below* good parts: image AUROC
0.20, pixel 0.46 in the cached-feature study; docs/model.md.)

Per step, on a mini-batch of cached images:
  1. D step: the adaptor + discriminator learn real residual maps → normal, and two kinds of
     negatives → anomalous inside a random blob: Gaussian-perturbed residuals (SimpleNet's base,
     per-image strength in [0.5, 1.5]·σ) and the generator's perturbations (detached; norm
     strength·√C, the same band).
  2. G step: the generator, non-saturating loss, learns perturbations D calls normal.
The generator's norm band makes the game stable by construction (it cannot win by producing
normal features, nor escape to trivial ones); the discriminator is not spectrally normalised
because it is not asked to be a smooth critic: it is the scorer.

Convergence: every ``iterations / curve_points`` steps, the Fréchet distance (in the adaptor's
space) between the generator's pseudo-anomalous residuals and the real residuals of the held-out
good images, and the mean D and G losses, are recorded.
"""

from __future__ import annotations

import time

import torch
from tqdm import tqdm

from edge_inspector.training.sagan import (
    FrechetReference,
    GanConfig,
    GanScorer,
    PerturbationGenerator,
    blob_masks,
    discriminator_loss,
    generator_loss,
)
from edge_inspector.training.mdaae import Mdaae
from edge_inspector.training.scoring import residual_map
from edge_inspector.training.settings import TrainSettings

MASK_BANK = 512  # blob masks drawn once per run (a quantile per mask is too slow per step)
FRECHET_SAMPLES = 4000


def _strength(config: GanConfig, n: int, generator: torch.Generator) -> torch.Tensor:
    """Per-image perturbation strength (per-channel σ, in standardised units) in [lo, hi]·sigma."""
    lo, hi = config.generator_norm
    return config.sigma * torch.empty(n, 1, 1, 1).uniform_(lo, hi, generator=generator)


@torch.no_grad()
def _frechet_point(scorer: GanScorer, gen: PerturbationGenerator, hold: torch.Tensor, reference: FrechetReference,
                   pick: torch.Tensor, generator: torch.Generator) -> float:
    strength = _strength(scorer.config, hold.shape[0], generator).to(hold.device)
    fake = scorer.adaptor(hold + gen(hold, strength * hold.shape[1] ** 0.5, generator))
    rows = fake.permute(0, 2, 3, 1).reshape(-1, fake.shape[1])[pick]
    return round(reference.distance(rows.double().cpu().numpy()), 4)


@torch.no_grad()
def residuals(ae: Mdaae, levels: list[torch.Tensor], device: str, chunk: int = 16) -> torch.Tensor:
    out = []
    for i in range(0, levels[0].shape[0], chunk):
        z = [x[i : i + chunk].float().to(device) for x in levels]
        out.append(residual_map(z, ae(z)))
    return torch.cat(out)


def train_gan(ae: Mdaae, train_levels: list[torch.Tensor], hold_levels: list[torch.Tensor], config: GanConfig,
              settings: TrainSettings, iterations: int, device: str) -> tuple[GanScorer, list[dict], dict]:
    """Fit the GAN scorer on ``ae``'s residuals. Returns (scorer in eval mode, curve points, timing)."""
    ae = ae.to(device).eval()
    torch.manual_seed(settings.seed + 10)
    generator = torch.Generator().manual_seed(settings.seed + 11)
    scorer = GanScorer(config).to(device)
    gen = PerturbationGenerator(config.in_channels, config.noise_channels).to(device)
    d_opt = torch.optim.Adam(scorer.parameters(), lr=settings.gan_learning_rate)
    g_opt = torch.optim.Adam(gen.parameters(), lr=settings.gan_learning_rate, betas=(0.5, 0.999))
    hold = residuals(ae, hold_levels, device)
    grid = hold.shape[-1]
    masks = blob_masks(MASK_BANK, grid, torch.Generator().manual_seed(settings.seed + 12)).to(device)
    n = train_levels[0].shape[0]
    batch = min(settings.batch_size, n)
    every = max(1, iterations // max(settings.curve_points, 1))

    def reference_rows() -> tuple[FrechetReference, torch.Tensor]:
        with torch.no_grad():
            real = scorer.adaptor(hold).permute(0, 2, 3, 1).reshape(-1, config.adapted_channels)
        pick = torch.randperm(real.shape[0], generator=generator)[:FRECHET_SAMPLES]
        return FrechetReference(real[pick].double().cpu().numpy()), pick

    curve: list[dict] = []
    losses = {"d": 0.0, "g": 0.0, "count": 0}

    def record(step: int) -> None:
        reference, pick = reference_rows()  # the adaptor moves: the real side is re-fitted per point
        curve.append({"iteration": step, "frechet": _frechet_point(scorer, gen, hold, reference, pick, generator),
                      "d_loss": round(losses["d"] / max(losses["count"], 1), 4) if losses["count"] else None,
                      "g_loss": round(losses["g"] / max(losses["count"], 1), 4) if losses["count"] else None})
        losses.update(d=0.0, g=0.0, count=0)

    scorer.train()
    record(0)
    started = time.perf_counter()
    bar = tqdm(total=iterations, desc="train sa-gan", disable=not settings.progress, unit="it")
    for step in range(1, iterations + 1):
        idx = torch.randint(n, (batch,), generator=generator)
        x = residuals(ae, [z[idx] for z in train_levels], device)  # on the fly: no residual cache
        mask = masks[torch.randint(MASK_BANK, (batch,), generator=generator)]
        strength = _strength(config, batch, generator).to(device)
        # Negatives are perturbed residuals (input space, standardised units): a scale the adaptor
        # cannot shrink away — perturbing *adapted* features let the adaptor trade norm for
        # separability (tire pixel AUROC 0.58 vs 0.85 for this input-space form, cached-feature study).
        d = scorer
        gaussian = torch.where(mask, x + strength * torch.randn(x.shape, generator=generator).to(device), x)
        delta = gen(x, strength * x.shape[1] ** 0.5, generator)
        generated = torch.where(mask, x + delta.detach(), x)
        d_loss = discriminator_loss(d(x), [d(gaussian), d(generated)], mask)
        d_opt.zero_grad(set_to_none=True)
        d_loss.backward()
        d_opt.step()
        # G step (non-saturating): D's current view of fresh generated residuals
        g_loss = generator_loss(d(torch.where(mask, x + gen(x, strength * x.shape[1] ** 0.5, generator), x)), mask)
        g_opt.zero_grad(set_to_none=True)
        g_loss.backward()
        g_opt.step()
        losses["d"] += float(d_loss.detach())
        losses["g"] += float(g_loss.detach())
        losses["count"] += 1
        bar.update(1)
        if step % every == 0 or step == iterations:
            record(step)
            bar.set_postfix(d=curve[-1]["d_loss"], fd=curve[-1]["frechet"])
    bar.close()
    elapsed = time.perf_counter() - started
    timing = {"gan_steps": iterations, "gan_s": round(elapsed, 2),
              "gan_step_ms": round(1000 * elapsed / iterations, 2) if iterations else None}
    return scorer.eval(), curve, timing
