"""Test-only fault injection: make a named point of the daemon raise or hang, on purpose.

The fault-injection suite (tests/faults/) runs the real daemon with
``EDGE_INSPECTOR_FAULTS="<point>:<action>[:<after>],..."`` in its environment, e.g.
``stage.inference:raise:3`` (the 4th time the inference stage takes an item, it raises once) or
``camera.grab:hang`` (the camera's next grab never returns). Actions: ``raise`` (an
``InjectedFault``, once: a restarted thread then carries on) and ``hang`` (blocks that thread
for good, as a stuck driver call does).

The plan is read once, at import. Without the variable ``fault_point`` is one global test per
call; the daemon logs ``fault_injection_armed`` at start when a plan is set, so an armed
production unit cannot go unnoticed.

Points: ``stage.<acquisition|preprocess|inference|postprocess|publish>`` (each item a stage
takes), ``camera.grab`` (each frame a folder/pylon source is about to deliver), ``mqtt.worker``
(each event of the publisher's outbox worker), ``trigger.timer``, ``archive.writer``,
``commands.handler``, ``watchdog``, ``supervisor.loop`` (each loop pass of those threads).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

ENV_VAR = "EDGE_INSPECTOR_FAULTS"


class InjectedFault(RuntimeError):
    """Raised by an armed ``raise`` fault point."""


@dataclass
class _Fault:
    action: str  # "raise" | "hang"
    after: int  # hits to let pass first
    hits: int = 0
    fired: bool = False


def parse_plan(text: str) -> dict[str, _Fault]:
    """``"a:raise:3,b:hang"`` → {point: _Fault}. A malformed entry is a ValueError naming it."""
    plan: dict[str, _Fault] = {}
    for entry in filter(None, (e.strip() for e in text.split(","))):
        parts = entry.split(":")
        if len(parts) not in (2, 3) or parts[1] not in ("raise", "hang"):
            raise ValueError(f"{ENV_VAR}: entry {entry!r} is not <point>:<raise|hang>[:<after>]")
        try:
            after = int(parts[2]) if len(parts) == 3 else 0
        except ValueError:
            raise ValueError(f"{ENV_VAR}: entry {entry!r}: <after> must be an integer") from None
        plan[parts[0]] = _Fault(parts[1], after)
    return plan


try:
    _PLAN: dict[str, _Fault] = parse_plan(os.environ.get(ENV_VAR, ""))
    PLAN_ERROR = ""
except ValueError as _exc:  # reported by the daemon at start (exit 2), not as an import traceback
    _PLAN, PLAN_ERROR = {}, str(_exc)
_LOCK = threading.Lock()


def armed() -> dict[str, str]:
    """The plan in force (point → action), for the start-up warning."""
    return {point: f"{f.action} after {f.after}" for point, f in _PLAN.items()}


def fault_point(name: str) -> None:
    """Raise or hang here when the plan says so for ``name``; otherwise return at once."""
    if not _PLAN:
        return
    fault = _PLAN.get(name)
    if fault is None:
        return
    with _LOCK:
        if fault.fired:
            return
        fault.hits += 1
        if fault.hits <= fault.after:
            return
        fault.fired = True
    if fault.action == "hang":
        threading.Event().wait()  # never set: this thread is stuck, as in a hung driver call
    raise InjectedFault(f"fault injected at {name}")
