"""One definition of "the pipeline is alive", shared by /healthz, P/health and the watchdog.

They must agree: if /healthz says a stage is stalled, systemd must not be told all is well.
Liveness comes from what each part *did* (a heartbeat is beaten by the working loop itself:
a grab, an item taken, an outbox worker pass, a PUBACK), never from a flag that a stuck call
could leave green. On top, ``assess`` reports *conditions*: states in which every part works
but results cannot be stored (outbox disk full) — /healthz is 503 for those too, while the
watchdog keeps pinging, because a restart cannot free a disk.
"""

from __future__ import annotations

import math
from typing import Mapping, Optional


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


def _finite_or_none(value: float) -> Optional[float]:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return round(value, 3) if math.isfinite(value) else None  # JSON has no Infinity


def assess(heartbeat_ages_s: Mapping[str, float], timeout_s: float,
           conditions: Optional[Mapping[str, str]] = None,
           warnings: Optional[Mapping[str, str]] = None) -> tuple[bool, dict]:
    """(healthy, body) — the /healthz body and P/health's ``liveness`` section.

    Unhealthy when a heartbeat is stale (``status: stalled``) or a blocking condition holds
    (``status: blocked``, e.g. ``{"outbox": "disk full ..."}``). ``warnings`` (e.g. the NG
    archive's disk is full) are reported but leave the station healthy: verdicts still flow.
    """
    if not heartbeat_ages_s:
        return False, {"status": "starting", "reason": "no stage has reported a heartbeat yet"}
    heartbeats = {stage: _finite_or_none(age) for stage, age in sorted(heartbeat_ages_s.items())}
    extra = {"warnings": dict(warnings)} if warnings else {}
    stalled = stalled_stages(heartbeat_ages_s, timeout_s)
    if stalled:
        return False, {"status": "stalled", "reason": f"{describe_stalled(stalled)} (timeout {timeout_s:g}s)",
                       "stalled": sorted(stalled), "heartbeats": heartbeats, **({"conditions": dict(conditions)} if conditions else {}), **extra}
    if conditions:
        reason = "; ".join(f"{name}: {text}" for name, text in sorted(conditions.items()))
        return False, {"status": "blocked", "reason": reason, "conditions": dict(conditions), "heartbeats": heartbeats, **extra}
    return True, {"status": "ok", "heartbeats": heartbeats, "timeout_s": timeout_s, **extra}
