"""deploy/install.sh: syntax, the plan it prints with --dry-run, and the config it generates."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from edge_inspector.config.loader import load_config
from edge_inspector.instance import instance_port

REPO = Path(__file__).resolve().parents[1]
INSTALL = REPO / "deploy" / "install.sh"


def _dry_run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(INSTALL), "--dry-run", *args], capture_output=True, text=True, timeout=60)


def test_dry_run_never_reads_the_hosts_station_files(tmp_path):
    """With --root the plan depends only on the scratch root: a station once installed on this
    machine (/etc/edge-inspector/line2-st3.yaml) does not change it ("keeping existing ...")."""
    (tmp_path / "etc/edge-inspector").mkdir(parents=True)
    (tmp_path / "etc/edge-inspector/line2-st3.yaml").write_text("station: {line: line2, name: st3}\n")
    proc = _dry_run("--root", str(tmp_path), "--source", str(REPO), "--station", "line2-st3")
    assert proc.returncode == 0, proc.stderr
    assert f"keeping existing {tmp_path}/etc/edge-inspector/line2-st3.yaml" in proc.stdout
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = _dry_run("--root", str(empty), "--source", str(REPO), "--station", "line2-st3")
    assert f"write {empty}/etc/edge-inspector/line2-st3.yaml" in proc.stdout


def test_install_script_parses():
    subprocess.run(["bash", "-n", str(INSTALL)], check=True, timeout=30)
    if shutil.which("shellcheck"):
        subprocess.run(["shellcheck", "-S", "warning", str(INSTALL)], check=True, timeout=60)


def test_dry_run_plan_covers_the_station_install(tmp_path):
    root = re.escape(str(tmp_path))
    proc = _dry_run("--root", str(tmp_path), "--source", str(REPO), "--station", "line2-st3", "--gpu", "--enable")
    assert proc.returncode == 0, proc.stderr
    plan = proc.stdout
    steps = [
        r"/usr/bin/python3 -m venv \S+/releases/\S+/venv",  # a Python the service user can read
        r"pip install --quiet --disable-pip-version-check /",  # the package into a fresh release venv
        r"pip install --quiet --disable-pip-version-check --no-deps onnxruntime-gpu",
        r"runuser -u edge-inspector -- \S+/releases/\S+/venv/bin/edge-inspector --version",  # verified as the service user
        r"write \S+/releases/\S+/VERIFIED",
        rf"/etc/sysctl.d/",
        rf"70-edge-inspector-cameras.rules {root}/etc/udev/rules.d/",
        r"skipped: udevadm",
        rf"write {root}/etc/edge-inspector/line2-st3.yaml \(station line2/st3",
        rf"mv -T {root}/opt/edge-inspector/current.new {root}/opt/edge-inspector/current",  # atomic switch, after all of it
        rf"check-config --quiet {root}/etc/edge-inspector/line2-st3.yaml",
        r"skipped: starting edge-inspector@line2-st3",
    ]
    positions = []
    for step in steps:
        match = re.search(step, plan)
        assert match, f"missing step {step!r} in:\n{plan}"
        positions.append(match.start())
    assert positions == sorted(positions), "steps out of order (the switch must come after every build step)"


@pytest.mark.parametrize("args, message", [
    (["--station", "line2/../st3", "--source", "."], "letters, digits"),
    (["--station", "st1"], "--source is required"),
    (["--bogus"], "unknown option --bogus"),
])
def test_bad_arguments_fail_with_one_clear_line(args, message):
    proc = _dry_run(*args)
    assert proc.returncode == 2
    assert message in proc.stderr


def test_generated_station_config_is_valid_and_keeps_state_out_of_etc(tmp_path, monkeypatch):
    """The heredoc install.sh writes must pass the real config loader (schema drift breaks installs)."""
    text = INSTALL.read_text()
    template = re.search(r'cat >"\$cfg" <<EOF\n(.*?)\nEOF\n', text, re.S).group(1)
    station = "line2-st3"
    rendered = (
        template.replace("$STATION", station).replace("$line", "line2").replace("$name", "st3")
        .replace("$PREFIX", "/opt/edge-inspector")
    )
    assert "$" not in rendered
    cfg_file = tmp_path / f"{station}.yaml"
    cfg_file.write_text(rendered)
    # As the unit runs it: ProtectSystem=strict makes /etc read-only; state lives in the StateDirectory.
    monkeypatch.setenv("STATE_DIRECTORY", f"/var/lib/edge-inspector/{station}")
    monkeypatch.setenv("EDGE_INSPECTOR_INSTANCE", station)
    cfg = load_config(cfg_file)
    assert (cfg.station.line, cfg.station.name) == ("line2", "st3")
    assert str(cfg.outbox.path) == f"/var/lib/edge-inspector/{station}/outbox.sqlite"
    assert str(cfg.archive.path) == f"/var/lib/edge-inspector/{station}/archive"
    assert cfg.health.port == instance_port(station)
