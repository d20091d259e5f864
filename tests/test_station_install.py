"""deploy/install.sh for real, into a scratch root: install, first start as the service user with
the unit's environment (READY=1 on a NOTIFY_SOCKET), upgrade, prune, rollback, uninstall.

Needs root (it creates the `edge-inspector` system user and runs commands as it), runuser and a
system python3 with venv. Nothing under the host's /etc, /opt or /var/lib is read or written:
every path is under the scratch root (``--root``); only the service user is host-wide. Offline and
fast: the release venv gets this checkout's wheel, its dependencies come from the test venv via
PYTHONPATH (tests/helpers/station_install.py). About 40-60 s on 2 cores (three venvs).
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.helpers.broker import free_port
from tests.helpers.notify_listener import NotifyListener
from tests.helpers.station import write_parts

REPO = Path(__file__).resolve().parents[1]
INSTALL = REPO / "deploy" / "install.sh"
SYSTEM_PYTHON = "/usr/bin/python3"
STATION = "line2-st3"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="creates the service user and runs as it: needs root"),
    pytest.mark.skipif(shutil.which("runuser") is None, reason="runuser (util-linux) missing"),
    pytest.mark.skipif(subprocess.run([SYSTEM_PYTHON, "-c", "import venv, ensurepip"], capture_output=True).returncode != 0,
                       reason=f"{SYSTEM_PYTHON} with venv/ensurepip missing (Debian: apt-get install python3-venv)"),
]
onnx = pytest.importorskip("onnx", reason="the tiny test bundle is built with onnx (the train extra)")


@pytest.fixture(scope="module")
def scratch():
    """A scratch root the service user can traverse (pytest's tmp_path is 0700 root)."""
    from tests.helpers.station_install import build_wheel, runtime_site

    top = Path(tempfile.mkdtemp(prefix="ei-install-", dir="/tmp"))
    top.chmod(0o755)
    root = top / "root"
    root.mkdir()
    wheel = build_wheel(top / "wheels")
    site = runtime_site(top / "runtime-site")
    env = {**os.environ, "PYTHONPATH": str(site), "PIP_NO_CACHE_DIR": "1"}
    env.pop("VIRTUAL_ENV", None)
    yield {"top": top, "root": root, "wheel": wheel, "site": site, "env": env}
    shutil.rmtree(top, ignore_errors=True)


def install(scratch, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["bash", str(INSTALL), "--root", str(scratch["root"]), *args], env=scratch["env"],
                          capture_output=True, text=True, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def releases(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "opt/edge-inspector/releases").iterdir())


def in_service(root: Path) -> str:
    return os.readlink(root / "opt/edge-inspector/current").split("/")[-1]


def test_install_start_upgrade_prune_rollback_uninstall(scratch):
    root, wheel = scratch["root"], scratch["wheel"]
    prefix, conf = root / "opt/edge-inspector", root / "etc/edge-inspector"

    # --- a Python the service user cannot run (root's pyenv, mode 0700): refused before anything is built
    pyenv_python = os.path.realpath(shutil.which("python3", path=str(Path(os.sys.executable).parent)) or os.sys.executable)
    if pyenv_python.startswith("/root/"):
        proc = install(scratch, "--source", str(wheel), "--python", pyenv_python, check=False)
        assert proc.returncode == 2 and "the service user edge-inspector cannot run it" in proc.stderr, proc.stderr
        assert not (prefix / "releases").exists() or not releases(root)

    # --- first install on a bare host: no model yet. It says so, it does not start anything.
    first = install(scratch, "--source", str(wheel), "--station", STATION, "--wheelhouse", str(wheel.parent), "--keep", "2")
    out = first.stdout + first.stderr
    assert f"station {STATION} is installed but not ready to start" in first.stderr
    assert "model.path: " in first.stderr and "model directory not found" in first.stderr
    assert "skipped: udevadm" in out and "skipped: systemctl daemon-reload" in out  # no udev/systemd here: said, not failed
    venv_python = prefix / "venv/bin/python"
    assert os.path.realpath(venv_python).startswith("/usr/bin/python3"), "the venv must link to a Python the service user can read"
    (release1,) = releases(root)
    assert (prefix / "releases" / release1 / "VERIFIED").read_text().startswith("edge-inspector ")
    assert (prefix / "docs/operations.md").exists()
    assert not any("torch" in p.name for p in (prefix / "venv/lib").glob("python3*/site-packages/*")), "runtime only"

    # --- the engineer adds the model and a camera, installs again with --enable: check passes
    from tests.helpers.tiny_bundle import make_tiny_bundle

    make_tiny_bundle(prefix / "models/tiny-2026-11-30")
    (prefix / "models/current").symlink_to("tiny-2026-11-30")
    images = scratch["top"] / "images"
    write_parts(images, 6)
    cfg_file = conf / f"{STATION}.yaml"
    cfg = yaml.safe_load(cfg_file.read_text())
    cfg["camera"] = {"type": "folder", "path": str(images), "fps": 20.0, "loop": True}
    cfg["model"].update(providers=["cpu"], intra_op_threads=1, warmup_runs=1)
    cfg["mqtt"] = {"host": "127.0.0.1", "port": 9, "reconnect_min_s": 0.2, "reconnect_max_s": 1.0}
    # a free port, not the per-instance default (9310 + crc32 mod 600, covered by test_preflight):
    # that one may be taken on the host running the tests
    cfg.setdefault("health", {})["port"] = scratch["health_port"] = free_port()
    cfg_file.write_text(yaml.safe_dump(cfg))  # keeps its mode 0640 and group edge-inspector
    (conf / f"{STATION}.env").write_text(f"PYTHONPATH={scratch['site']}\n")
    second = install(scratch, "--source", str(wheel), "--station", STATION, "--enable", "--wheelhouse", str(wheel.parent), "--keep", "2")
    assert f"keeping existing {cfg_file}" in second.stdout
    assert f"skipped: starting edge-inspector@{STATION}" in second.stdout
    release2 = in_service(root)
    assert releases(root) == [release1, release2]

    # --- a release that fails to build changes nothing in service (and leaves nothing behind)
    bad = scratch["top"] / "bad" / wheel.name
    bad.parent.mkdir()
    bad.write_bytes(b"not a wheel")
    proc = install(scratch, "--source", str(bad), "--wheelhouse", str(wheel.parent), check=False)
    assert proc.returncode != 0 and "failed before the switch" in proc.stderr, proc.stdout + proc.stderr
    assert in_service(root) == release2 and releases(root) == [release1, release2]

    # --- the unit as installed verifies (its ExecStart now exists)
    analyze = shutil.which("systemd-analyze")
    if analyze:
        unit = root / "etc/systemd/system/edge-inspector@.service"
        proc = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
        ours = [line for line in (proc.stdout + proc.stderr).splitlines() if "edge-inspector@" in line]
        assert not ours, "\n".join(ours)

    # --- the unit's ExecStart, as the service user, with the unit's environment: READY=1
    start_unit_and_scrape(scratch)

    # --- upgrade: a third release; --keep 2 prunes the oldest
    install(scratch, "--source", str(wheel), "--wheelhouse", str(wheel.parent), "--keep", "2")
    release3 = in_service(root)
    assert releases(root) == [release2, release3], "the oldest release is pruned"

    # --- rollback: only to a release that verified (a half-built one is skipped); docs follow
    broken = prefix / "releases" / (release2 + "x")  # sorts between release2 and release3
    (broken / "venv").mkdir(parents=True)
    proc = install(scratch, "--rollback")
    assert f"rolling back: {release3} -> {release2}" in proc.stdout
    assert in_service(root) == release2
    assert os.path.realpath(prefix / "docs") == str(prefix / "releases" / release2 / "docs")
    assert os.path.realpath(prefix / "venv") == str(prefix / "releases" / release2 / "venv")
    proc = install(scratch, "--rollback", check=False)
    assert proc.returncode == 2 and "no older verified release" in proc.stderr

    # --- uninstall keeps config, models and the outbox; --purge removes them
    proc = install(scratch, "--uninstall")
    assert not (prefix / "releases").exists() and not (prefix / "venv").exists()
    assert not (root / "etc/systemd/system/edge-inspector@.service").exists()
    assert cfg_file.exists() and (prefix / "models/tiny-2026-11-30/model.onnx").exists()
    assert (root / f"var/lib/edge-inspector/{STATION}/outbox.sqlite").exists()
    assert "kept" in proc.stdout
    install(scratch, "--uninstall", "--purge")
    assert not prefix.exists() and not conf.exists() and not (root / "var/lib/edge-inspector").exists()


def start_unit_and_scrape(scratch) -> None:
    from tests.helpers.station_install import unit_invocation

    root = scratch["root"]
    listener = NotifyListener()
    os.chmod(Path(listener.address).parent, 0o755)
    os.chmod(listener.address, 0o777)  # the service user sends to it
    unit = unit_invocation(root / "etc/systemd/system/edge-inspector@.service", STATION, root, listener.address)
    account = pwd.getpwnam(unit["user"])
    proc = subprocess.Popen(unit["args"], env=unit["env"], cwd=unit["cwd"], user=unit["user"], group=unit["group"],
                            extra_groups=os.getgrouplist(unit["user"], account.pw_gid),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        ready = listener.wait_for("READY", timeout_s=90)
        assert ready["READY"] == "1"
        with urllib.request.urlopen(f"http://127.0.0.1:{scratch['health_port']}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        assert f'station="line2/st3"' in text
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        listener.close()
    lines = err.decode().splitlines()
    for line in lines:  # the journal's view: every line JSON (jq recipes in docs/operations.md)
        json.loads(line)
    assert any(json.loads(line).get("event") == "stopped" for line in lines)
    assert (Path(unit["env"]["STATE_DIRECTORY"]) / "outbox.sqlite").stat().st_uid == account.pw_uid
