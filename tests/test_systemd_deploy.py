"""deploy/install.sh: syntax, the plan it prints with --dry-run, and the config it generates."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from edge_inspector.config.loader import load_config

REPO = Path(__file__).resolve().parents[1]
INSTALL = REPO / "deploy" / "install.sh"


def _dry_run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(INSTALL), "--dry-run", *args], capture_output=True, text=True, timeout=60)


def test_install_script_parses():
    subprocess.run(["bash", "-n", str(INSTALL)], check=True, timeout=30)
    if shutil.which("shellcheck"):
        subprocess.run(["shellcheck", "-S", "warning", str(INSTALL)], check=True, timeout=60)


def test_dry_run_plan_covers_the_station_install():
    proc = _dry_run("--source", str(REPO), "--station", "line2-st3", "--gpu", "--enable")
    assert proc.returncode == 0, proc.stderr
    plan = proc.stdout
    for step in (
        r"pip install --quiet /",  # the package into a fresh release venv
        r"pip install --quiet --no-deps onnxruntime-gpu",
        r"mv -T /opt/edge-inspector/venv.new /opt/edge-inspector/venv",  # atomic switch
        r"/etc/sysctl.d/",
        r"70-edge-inspector-cameras.rules /etc/udev/rules.d/",
        r"edge-inspector@.service /etc/systemd/system/",
        r"write /etc/edge-inspector/line2-st3.yaml \(station line2/st3",
        r"check-config --quiet /etc/edge-inspector/line2-st3.yaml",
        r"systemctl enable --now edge-inspector@line2-st3",
    ):
        assert re.search(step, plan), f"missing step {step!r} in:\n{plan}"


@pytest.mark.parametrize("args, message", [
    (["--station", "line2/../st3", "--source", "."], "letters, digits"),
    (["--station", "st1"], "--source is required"),
    (["--bogus"], "unknown option --bogus"),
])
def test_bad_arguments_fail_with_one_clear_line(args, message):
    proc = _dry_run(*args)
    assert proc.returncode == 2
    assert message in proc.stderr


def test_generated_station_config_is_valid_and_keeps_state_out_of_etc(tmp_path):
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
    cfg = load_config(cfg_file)
    assert (cfg.station.line, cfg.station.name) == ("line2", "st3")
    # ProtectSystem=strict makes /etc read-only: state must live in the StateDirectory.
    assert str(cfg.outbox.path).startswith(f"/var/lib/edge-inspector/{station}/")
    assert str(cfg.archive.path).startswith(f"/var/lib/edge-inspector/{station}/")
