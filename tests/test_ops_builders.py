"""The supervisor builds its ops components explicitly by name (issue 8: OPS_MODULES discovery
skipped a missing module silently, so one renamed file would switch the watchdog off)."""

from __future__ import annotations

from edge_inspector import supervisor
from edge_inspector.archive.store import ArchiveStore
from edge_inspector.config.models import Config
from edge_inspector.drift import DriftMonitor
from edge_inspector.health.metrics import MetricsObserver
from edge_inspector.health.server import HealthOps
from edge_inspector.publish.commands import CommandOps
from edge_inspector.systemd import SystemdOps
from edge_inspector.ui.live import LiveView


def test_no_module_discovery_is_left():
    assert not hasattr(supervisor, "OPS_MODULES")
    assert not hasattr(supervisor, "importlib")
    assert [name for name, _ in supervisor.OPS_BUILDERS] == ["watchdog", "metrics", "drift", "ui", "health", "archive", "commands"]


def test_every_component_is_built_when_configured(monkeypatch, tmp_path):
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify.sock"))
    cfg = Config.model_validate({"station": {"line": "l", "name": "s"}, "health": {"enabled": True, "port": 0},
                                 "archive": {"enabled": False, "path": str(tmp_path / "a")}})
    sup = supervisor.Supervisor(cfg)
    kinds = [type(c) for c in sup._build_ops()]
    assert kinds == [SystemdOps, MetricsObserver, DriftMonitor, LiveView, HealthOps, ArchiveStore, CommandOps]


def test_switched_off_components_are_logged_not_silently_missing(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    cfg = Config.model_validate({"station": {"line": "l", "name": "s"}, "health": {"enabled": False},
                                 "archive": {"enabled": False, "path": str(tmp_path / "a")}})
    kinds = [type(c) for c in supervisor.Supervisor(cfg)._build_ops()]
    assert kinds == [DriftMonitor, ArchiveStore, CommandOps]  # drift still goes out on P/health
    out = capsys.readouterr()
    text = out.out + out.err
    assert text.count("ops_component_off") == 4  # watchdog, metrics, ui (lives on the health server), health
