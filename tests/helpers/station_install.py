"""Installing a station into a scratch root the way deploy/install.sh does on a real IPC, offline.

* ``build_wheel``: this checkout as a wheel (what a station engineer copies to the IPC);
* ``runtime_site``: a folder of links to the runtime dependencies already installed in the test
  venv (numpy, onnxruntime, OpenCV, pypylon, ...: ~570 MB that a real install downloads). On
  ``PYTHONPATH`` pip counts them as installed, so the release venv gets only edge-inspector and
  the test needs neither a network nor minutes of copying; the station's ``<instance>.env``
  (the unit's ``EnvironmentFile=``) puts the same folder on the daemon's path;
* ``unit_invocation``: the unit's ExecStart, user and environment as systemd would give them.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import pwd
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[2]


def build_wheel(out_dir: Path) -> Path:
    """Built from a copy: an in-tree build would leave build/ and *.egg-info in the checkout."""
    out_dir.mkdir(parents=True, exist_ok=True)
    src = out_dir / "src"
    shutil.copytree(REPO / "edge_inspector", src / "edge_inspector", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--disable-pip-version-check", "-w", str(out_dir), str(src)], check=True, timeout=300,
                   capture_output=True)
    shutil.rmtree(src)
    (wheel,) = out_dir.glob("edge_inspector-*.whl")
    return wheel


def _runtime_closure() -> list[md.Distribution]:
    """This checkout's runtime dependencies (pyproject.toml: the installed metadata of an
    editable install can be older) and theirs."""
    seen: dict[str, md.Distribution] = {}
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    todo = [Requirement(r) for r in project["dependencies"]]
    while todo:
        req = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        key = req.name.lower().replace("_", "-")
        if key in seen:
            continue
        dist = md.distribution(req.name)
        seen[key] = dist
        todo += [Requirement(r) for r in dist.requires or []]
    return list(seen.values())


def runtime_site(dest: Path) -> Path:
    """Links to each runtime dependency's top-level files and its .dist-info (readable by all)."""
    dest.mkdir(parents=True, exist_ok=True)
    for dist in _runtime_closure():
        site = Path(dist.locate_file(""))
        tops = {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in tops:
            if top == "__pycache__" or top.endswith(".pth"):
                continue
            link = dest / top
            if not link.exists() and (site / top).exists():
                link.symlink_to(site / top)
    return dest


def unit_invocation(unit_file: Path, instance: str, root: Path, notify_socket: str) -> dict:
    """argv, env, user, group, cwd for ``edge-inspector@<instance>`` as systemd would start it
    (specifiers %i and %S, Environment=, EnvironmentFile=, StateDirectory=, WatchdogSec=)."""
    text = unit_file.read_text()

    def values(key: str) -> list[str]:
        return [m.group(1).replace("%i", instance).replace("%S", str(root / "var/lib"))
                for m in re.finditer(rf"^{key}=(.*)$", text, re.M)]

    user = values("User")[0]
    account = pwd.getpwnam(user)
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
           "HOME": account.pw_dir, "USER": user, "LOGNAME": user, "NOTIFY_SOCKET": notify_socket,
           "INVOCATION_ID": "0" * 32}
    for line in values("Environment"):
        env.update(item.split("=", 1) for item in shlex.split(line))
    for name in values("EnvironmentFile"):
        path = Path(name.lstrip("-"))
        if path.exists():
            env.update(line.split("=", 1) for line in path.read_text().splitlines()
                       if "=" in line and not line.lstrip().startswith("#"))
        elif not name.startswith("-"):
            raise FileNotFoundError(path)
    for key, var, base in (("StateDirectory", "STATE_DIRECTORY", "var/lib"), ("CacheDirectory", "CACHE_DIRECTORY", "var/cache")):
        folder = root / base / values(key)[0]
        folder.mkdir(parents=True, exist_ok=True)
        os.chown(folder, account.pw_uid, account.pw_gid)
        env[var] = str(folder)
    watchdog = values("WatchdogSec")
    if watchdog:
        env["WATCHDOG_USEC"] = str(int(watchdog[0]) * 1_000_000)
    return {"args": shlex.split(values("ExecStart")[0]), "env": env, "user": user,
            "group": values("Group")[0], "cwd": values("WorkingDirectory")[0]}
