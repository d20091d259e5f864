"""A first start that explains itself (issue 10): check-config checks what `run` will need, per-instance
defaults keep two stations apart, and a health port clash is a start error, never READY.

Each test reproduces a "Why" bullet: a fresh install's missing model passed check-config; the
example's absolute state paths were read-only under the unit; two instances took the same port.
"""

from __future__ import annotations

import os
import socket
import subprocess

import pytest

from edge_inspector.config.loader import load_config
from edge_inspector.instance import BASE_PORT, PORT_RANGE, instance_port
from tests.helpers.notify_listener import NotifyListener
from tests.helpers.station import PYTHON, REPO, bundle_and_parts, station_config, write_config

pytest.importorskip("onnx", reason="the tiny test bundle is built with onnx (the train extra)")


def _cli(*args: str, env: dict | None = None, timeout: float = 90) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items()
                if k not in ("NOTIFY_SOCKET", "STATE_DIRECTORY", "EDGE_INSPECTOR_INSTANCE")}
    full_env.update(env or {})
    return subprocess.run([PYTHON, "-m", "edge_inspector", *args], cwd=str(REPO), env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def _one_line(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert "Traceback" not in proc.stderr, proc.stderr
    return lines[-1]


@pytest.fixture
def station(tmp_path):
    model, images = bundle_and_parts(tmp_path, 2)
    cfg = station_config(tmp_path, 1, model, images)
    for section in ("outbox",):
        cfg.pop(section)  # per-instance defaults decide
    cfg["health"] = {"enabled": True}
    return tmp_path, cfg


def test_check_config_refuses_a_station_without_its_model(station):
    """Fresh install: model.path names a folder that does not exist — check-config used to pass."""
    tmp, cfg = station
    cfg["model"]["path"] = str(tmp / "models" / "current")
    path = write_config(tmp / "st.yaml", cfg)
    r = _cli("check-config", "--quiet", str(path))
    assert r.returncode == 2
    assert f"model.path: {tmp}/models/current: model directory not found" in _one_line(r)
    run = _cli("run", "--config", str(path), "--max-frames", "1")
    assert run.returncode == 2 and "model directory not found" in _one_line(run)


def test_check_config_refuses_a_model_onnxruntime_cannot_load(station):
    tmp, cfg = station
    (tmp / "model" / "model.onnx").write_bytes(b"not an onnx file")
    path = write_config(tmp / "st.yaml", cfg)
    r = _cli("check-config", "--quiet", str(path), "--set", "health.port=0")
    assert r.returncode == 2 and "model.path" in _one_line(r), r.stderr


def test_state_paths_outside_the_units_state_directory_are_refused_by_check_config_and_run(station, tmp_path):
    """The example config's absolute /var/lib/... paths under ProtectSystem=strict: read-only there."""
    tmp, cfg = station
    state = tmp / "var-lib" / "st"
    state.mkdir(parents=True)
    cfg["outbox"] = {"path": str(tmp / "elsewhere" / "outbox.sqlite")}
    cfg["health"]["port"] = 0
    path = write_config(tmp / "st.yaml", cfg)
    unit_env = {"STATE_DIRECTORY": str(state), "EDGE_INSPECTOR_INSTANCE": "st"}
    for args in (("check-config", "--quiet", str(path)), ("run", "--config", str(path), "--max-frames", "1")):
        r = _cli(*args, env=unit_env)
        assert r.returncode == 2, (args, r.stderr)
        line = _one_line(r)
        assert f"outbox.path={tmp}/elsewhere/outbox.sqlite: read-only for the service" in line, line
        assert str(state) in line
    # By hand (no unit) the same path is fine: writable here.
    assert _cli("check-config", "--quiet", str(path)).returncode == 0


def test_check_config_refuses_an_unwritable_state_path(station):
    tmp, cfg = station
    (tmp / "a-file").write_text("x")
    cfg["outbox"] = {"path": str(tmp / "a-file" / "outbox.sqlite")}
    cfg["health"]["port"] = 0
    path = write_config(tmp / "st.yaml", cfg)
    r = _cli("check-config", "--quiet", str(path))
    assert r.returncode == 2 and f"outbox.path={tmp}/a-file/outbox.sqlite: {tmp}/a-file is not a folder" in _one_line(r)


def test_per_instance_defaults_keep_two_stations_apart(station):
    tmp, cfg = station
    path = write_config(tmp / "st.yaml", cfg)
    loaded = {}
    for name in ("line2-st3", "line2-st4"):
        state = tmp / "state-root" / name
        env = {"STATE_DIRECTORY": str(state), "EDGE_INSPECTOR_INSTANCE": name}
        os.environ.update(env)
        try:
            loaded[name] = load_config(path)
        finally:
            for key in env:
                os.environ.pop(key)
        assert loaded[name].outbox.path == state / "outbox.sqlite"
        assert loaded[name].archive.path == state / "archive"
        assert loaded[name].health.port == instance_port(name)
        assert BASE_PORT <= instance_port(name) < BASE_PORT + PORT_RANGE
    assert loaded["line2-st3"].health.port != loaded["line2-st4"].health.port
    # By hand: the documented fallbacks, relative to the config file's folder.
    by_hand = load_config(path)
    assert by_hand.outbox.path == tmp / "state" / "outbox.sqlite" and by_hand.health.port == BASE_PORT
    # An explicit value always wins, relative state paths land in the state directory.
    os.environ.update({"STATE_DIRECTORY": str(tmp / "sd"), "EDGE_INSPECTOR_INSTANCE": "x"})
    try:
        explicit = load_config(path, ["health.port=9555", "outbox.path=db/out.sqlite"])
    finally:
        os.environ.pop("STATE_DIRECTORY")
        os.environ.pop("EDGE_INSPECTOR_INSTANCE")
    assert explicit.health.port == 9555 and explicit.outbox.path == tmp / "sd" / "db" / "out.sqlite"


def test_health_port_taken_is_exit_2_from_check_config_and_run_and_never_ready(station):
    """Two instances on one port: the second used to log it, run unmonitored and say READY=1."""
    tmp, cfg = station
    blocker = socket.create_server(("127.0.0.1", 0))
    taken = blocker.getsockname()[1]
    cfg["health"]["port"] = taken
    path = write_config(tmp / "st.yaml", cfg)
    listener = NotifyListener()
    try:
        r = _cli("check-config", "--quiet", str(path))
        assert r.returncode == 2 and f"health.port={taken} on health.host=127.0.0.1: already in use" in _one_line(r)
        assert _cli("check-config", "--quiet", "--ignore-port", str(path)).returncode == 0
        run = _cli("run", "--config", str(path), env={"NOTIFY_SOCKET": listener.address})
        assert run.returncode == 2, run.stderr
        assert f"health.port={taken} on health.host=127.0.0.1: already in use" in _one_line(run)
        listener.drain(0.2)
        assert listener.count("READY") == 0, listener.messages
    finally:
        listener.close()
        blocker.close()


def test_the_example_configs_state_paths_are_writable_under_the_unit(monkeypatch, tmp_path):
    """The example used to name absolute /var/lib/edge-inspector/... paths: read-only under
    ProtectSystem=strict for any instance, while check-config passed."""
    from edge_inspector.preflight import unit_view_problem

    state = tmp_path / "var/lib/edge-inspector/line2-st3"
    monkeypatch.setenv("STATE_DIRECTORY", str(state))
    monkeypatch.setenv("EDGE_INSPECTOR_INSTANCE", "line2-st3")
    cfg = load_config(REPO / "config" / "station.example.yaml")
    assert unit_view_problem(cfg) is None
    assert cfg.outbox.path == state / "outbox.sqlite" and cfg.archive.path == state / "archive"
    assert cfg.health.port == instance_port("line2-st3")


def test_check_config_checks_every_products_bundle(station):
    """Recipes (issue 11): a product whose bundle is missing would fail at its first switch, in
    the middle of a shift; check-config names it before the station starts. With a default
    product, model.path is not what runs and need not exist."""
    tmp, cfg = station
    cfg["model"]["path"] = str(tmp / "models" / "current")  # not installed: the recipes name the bundles
    cfg["recipes"] = {"products": {"p1": {"model_path": str(tmp / "model")}, "p2": {"model_path": str(tmp / "nowhere")}},
                      "default": "p1"}
    path = write_config(tmp / "st.yaml", cfg)
    r = _cli("check-config", "--quiet", str(path), "--set", "health.port=0")
    assert r.returncode == 2 and f"recipes.products.p2.model_path: {tmp}/nowhere: model directory not found" in _one_line(r)
    r = _cli("check-config", "--quiet", str(path), "--set", "health.port=0", "--set", f"recipes.products.p2.model_path={tmp / 'model'}")
    assert r.returncode == 0, r.stderr
