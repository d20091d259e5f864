"""threads.start_supervised (restart policy) and the fault-injection plan parser."""

from __future__ import annotations

import threading

import pytest

from edge_inspector import faults
from edge_inspector.threads import restart_counts, start_supervised


def test_a_raising_loop_is_restarted_and_counted_until_it_returns():
    runs = []

    def loop():
        runs.append(1)
        if len(runs) < 3:
            raise RuntimeError(f"crash {len(runs)}")

    thread = start_supervised("test-restarts", loop, min_backoff_s=0.01, max_backoff_s=0.02)
    thread.join(5)
    assert not thread.is_alive() and len(runs) == 3
    assert restart_counts()["test-restarts"] == 2


def test_stop_ends_the_backoff_instead_of_restarting():
    stop = threading.Event()
    runs = []

    def loop():
        runs.append(1)
        stop.set()
        raise RuntimeError("crash while stopping")

    thread = start_supervised("test-stop", loop, stop, min_backoff_s=10.0)
    thread.join(5)
    assert not thread.is_alive() and runs == [1]


def test_fault_plan_parsing_and_one_shot_raise(monkeypatch):
    plan = faults.parse_plan("stage.inference:raise:2, camera.grab:hang")
    assert (plan["stage.inference"].action, plan["stage.inference"].after) == ("raise", 2)
    assert (plan["camera.grab"].action, plan["camera.grab"].after) == ("hang", 0)
    for bad in ("x", "x:explode", "x:raise:soon", "x:raise:1:2"):
        with pytest.raises(ValueError, match="EDGE_INSPECTOR_FAULTS"):
            faults.parse_plan(bad)
    monkeypatch.setattr(faults, "_PLAN", faults.parse_plan("p:raise:2"))
    faults.fault_point("p")
    faults.fault_point("p")
    faults.fault_point("other")
    with pytest.raises(faults.InjectedFault, match="fault injected at p"):
        faults.fault_point("p")
    faults.fault_point("p")  # once only: a restarted thread carries on
