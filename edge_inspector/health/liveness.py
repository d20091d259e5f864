"""One definition of "the pipeline is alive", shared by /healthz and the systemd watchdog.

Both must agree: if /healthz says a stage is stalled, systemd must not be told all is well.
"""

from __future__ import annotations

import math
from typing import Mapping


def stalled_stages(heartbeat_ages_s: Mapping[str, float], timeout_s: float) -> dict[str, float]:
    """Stages whose last heartbeat is older than ``timeout_s`` (name → age in seconds).

    A non-finite age (NaN, inf — a stage that never beat) counts as stalled: not knowing is not healthy.
    """
    stalled = {}
    for stage, age in heartbeat_ages_s.items():
        try:
            age = float(age)
        except (TypeError, ValueError):
            age = math.inf
        if not math.isfinite(age) or age > timeout_s:
            stalled[stage] = age
    return stalled


def describe_stalled(stalled: Mapping[str, float]) -> str:
    """'inference stalled 12.3s, publish stalled inf' — for STATUS= lines and logs."""
    return ", ".join(f"{stage} stalled {age:.1f}s" for stage, age in sorted(stalled.items()))
