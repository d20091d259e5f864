"""Training loop of the MDAAE on cached standardised levels (reconstruction only).

The anomaly map is read off the reconstruction, so training only asks for good reconstructions
of normal parts: AdamW, one-cycle learning rate (short warm-up, long cosine decay: large steps
early, a settled reconstruction at the end), random mini-batches of cached images. The curve
records the hold-out reconstruction loss and the learned level weights.
"""

from __future__ import annotations

import time

import torch
from tqdm import tqdm

from edge_inspector.training.mdaae import Mdaae, MdaaeConfig, reconstruction_loss
from edge_inspector.training.settings import TrainSettings


@torch.no_grad()
def _holdout_loss(ae: Mdaae, levels: list[torch.Tensor], device: str) -> float:
    total, n = 0.0, levels[0].shape[0]
    for i in range(0, n, 16):
        z = [x[i : i + 16].float().to(device) for x in levels]
        total += float(reconstruction_loss(z, ae(z))) * z[0].shape[0]
    return total / max(n, 1)


def train_mdaae(train_levels: list[torch.Tensor], hold_levels: list[torch.Tensor], config: MdaaeConfig,
                settings: TrainSettings, iterations: int, device: str) -> tuple[Mdaae, list[dict], dict]:
    """Fit the MDAAE. Returns (model in eval mode, curve points, timing)."""
    torch.manual_seed(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed + 1)
    ae = Mdaae(config).to(device)
    optimiser = torch.optim.AdamW(ae.parameters(), lr=settings.learning_rate, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimiser, settings.learning_rate, total_steps=max(iterations, 1),
                                                    pct_start=0.1) if iterations else None
    n = train_levels[0].shape[0]
    batch = min(settings.batch_size, n)
    every = max(1, iterations // 10)
    curve: list[dict] = [{"iteration": 0, "holdout_loss": round(_holdout_loss(ae.eval(), hold_levels, device), 5)}]
    ae.train()
    running, count = 0.0, 0
    started = time.perf_counter()
    bar = tqdm(total=iterations, desc="train mdaae", disable=not settings.progress, unit="it")
    for step in range(1, iterations + 1):
        idx = torch.randint(n, (batch,), generator=generator)
        z = [x[idx].float().to(device) for x in train_levels]
        loss = reconstruction_loss(z, ae(z))
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        scheduler.step()
        running, count = running + float(loss.detach()), count + 1
        bar.update(1)
        if step % every == 0 or step == iterations:
            point = {"iteration": step, "train_loss": round(running / count, 5),
                     "holdout_loss": round(_holdout_loss(ae.eval(), hold_levels, device), 5)}
            ae.train()
            if ae.last_level_weights is not None:
                point["level_weights"] = [round(float(v), 3) for v in ae.last_level_weights.mean(dim=0).flatten()]
            curve.append(point)
            running, count = 0.0, 0
            bar.set_postfix(loss=point["train_loss"])
    bar.close()
    elapsed = time.perf_counter() - started
    timing = {"mdaae_steps": iterations, "mdaae_s": round(elapsed, 2),
              "mdaae_step_ms": round(1000 * elapsed / iterations, 2) if iterations else None}
    return ae.eval(), curve, timing
