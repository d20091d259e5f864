"""A real NOTIFY_SOCKET: what systemd listens on, for tests of sd_notify and the watchdog."""

from __future__ import annotations

import os
import socket
import tempfile
import time
from pathlib import Path


class NotifyListener:
    """AF_UNIX datagram socket in a short temp dir (sun_path is limited to 108 bytes).

    ``messages`` holds every datagram received, each parsed to a dict of KEY=VALUE lines.
    """

    def __init__(self, abstract: bool = False):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = f"edge-inspector-test-{os.getpid()}-{id(self)}"
            self.sock.bind("\0" + name)
            self.address = "@" + name
            self._dir = None
        else:
            self._dir = Path(tempfile.mkdtemp(prefix="ein-", dir="/tmp"))
            path = self._dir / "notify.sock"
            self.sock.bind(str(path))
            self.address = str(path)
        self.sock.settimeout(0.1)
        self.messages: list[dict[str, str]] = []

    def drain(self, duration_s: float = 0.0) -> list[dict[str, str]]:
        """Collect datagrams for ``duration_s`` (at least one non-blocking pass)."""
        deadline = time.monotonic() + duration_s
        while True:
            try:
                data = self.sock.recv(65536)
                fields = dict(line.split("=", 1) for line in data.decode().split("\n") if "=" in line)
                self.messages.append(fields)
                continue
            except socket.timeout:
                pass
            if time.monotonic() >= deadline:
                return self.messages

    def wait_for(self, key: str, timeout_s: float = 10.0, value: str | None = None) -> dict[str, str]:
        """First message (already received or arriving within timeout) that has ``key``."""
        deadline = time.monotonic() + timeout_s
        seen = 0
        while True:
            for msg in self.messages[seen:]:
                if key in msg and (value is None or msg[key] == value):
                    return msg
            seen = len(self.messages)
            if time.monotonic() >= deadline:
                raise AssertionError(f"no {key}= message within {timeout_s}s; got {self.messages!r}")
            self.drain(0.1)

    def count(self, key: str) -> int:
        return sum(1 for m in self.messages if key in m)

    def close(self) -> None:
        self.sock.close()
        if self._dir is not None:
            for p in self._dir.iterdir():
                p.unlink()
            self._dir.rmdir()
