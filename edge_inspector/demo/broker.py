"""An embedded MQTT broker for the demo: mosquitto when installed, else an in-process amqtt.

Both listen on a free loopback port only (127.0.0.1) and allow anonymous clients; that is fine
for a demo on one machine and never for a station (see docs/configuration.md: mqtt.*).

- mosquitto: a temporary config with persistence in the work dir. Started as root, mosquitto
  drops privileges to user 'mosquitto' and then silently cannot write its files, so we add
  ``user root`` when running as root.
- amqtt (``pip install amqtt``): a pure-Python asyncio broker run on its own thread. It speaks
  MQTT 3.1.1 only, so clients must use protocol 3.1.1 (``protocol`` tells them).

    with start_broker(workdir) as broker:
        print(broker.kind, broker.port, broker.protocol)
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Optional

from edge_inspector.errors import InspectorError


class BrokerError(InspectorError):
    """No broker could be started."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mosquitto_binary() -> Optional[str]:
    found = shutil.which("mosquitto")
    if found:
        return found
    for cand in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto", "/opt/homebrew/sbin/mosquitto"):
        if os.path.exists(cand) and os.access(cand, os.X_OK):
            return cand
    return None


def amqtt_available() -> bool:
    try:
        import amqtt.broker  # noqa: F401
    except Exception:  # noqa: BLE001 - missing or broken: either way not usable
        return False
    return True


def _wait_listening(port: int, timeout: float, alive=lambda: True) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return True
        except OSError:
            if not alive():
                return False
            time.sleep(0.05)
    return False


class EmbeddedBroker:
    """Common interface: kind, host, port, protocol ("5" or "3.1.1"), stop(); a context manager."""

    kind = "none"
    protocol = "5"
    host = "127.0.0.1"
    port = 0

    def stop(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
        return False

    def describe(self) -> str:
        return f"{self.kind} on {self.host}:{self.port} (MQTT {self.protocol})"


class MosquittoBroker(EmbeddedBroker):
    kind = "mosquitto"
    protocol = "5"

    def __init__(self, workdir: str | Path, port: Optional[int] = None, binary: Optional[str] = None):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.binary = binary or mosquitto_binary()
        if not self.binary:
            raise BrokerError("mosquitto is not installed")
        self.port = port or free_port()
        self.proc: Optional[subprocess.Popen] = None
        self.conf = self.workdir / "mosquitto.conf"
        self.log = self.workdir / "mosquitto.log"
        lines = [
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous true",
            "persistence true",
            f"persistence_location {self.workdir.resolve()}/",
            f"log_dest file {self.log.resolve()}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "max_queued_messages 100000",
            # Without it, Nagle's algorithm holds a PUBACK behind the previous unacknowledged
            # small packet until the client's delayed ACK (~40 ms on Linux): measured p99
            # grab→PUBACK 56 ms with, vs the p90 of 13 ms.
            "set_tcp_nodelay true",
        ]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            lines.insert(0, "user root")
        self.conf.write_text("\n".join(lines) + "\n")

    def start(self, timeout: float = 10.0) -> "MosquittoBroker":
        self.proc = subprocess.Popen(
            [self.binary, "-c", str(self.conf)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if not _wait_listening(self.port, timeout, alive=lambda: self.proc.poll() is None):
            code = self.proc.poll()
            self.stop()
            why = f"exited with {code}" if code is not None else "did not listen in time"
            raise BrokerError(f"mosquitto {why}; see {self.log}")
        return self

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


class AmqttBroker(EmbeddedBroker):
    """amqtt's broker on a private event loop in a daemon thread (MQTT 3.1.1 only)."""

    kind = "amqtt (in-process)"
    protocol = "3.1.1"

    def __init__(self, port: Optional[int] = None):
        if not amqtt_available():
            raise BrokerError("amqtt is not installed (pip install amqtt)")
        self.port = port or free_port()
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._thread: Optional[threading.Thread] = None
        self._broker = None
        self._ready = threading.Event()
        self._error: Optional[BaseException] = None

    def _config(self) -> dict:
        return {
            "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{self.port}", "max_connections": 64}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)

        async def _start():
            from amqtt.broker import Broker

            self._broker = Broker(self._config(), loop=loop)
            await self._broker.start()

        try:
            loop.run_until_complete(_start())
        except BaseException as exc:  # noqa: BLE001 - reported to start()
            self._error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            try:
                pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
                for t in pending:
                    t.cancel()
                if pending:
                    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            finally:
                loop.close()

    def start(self, timeout: float = 10.0) -> "AmqttBroker":
        # amqtt logs every packet at INFO/DEBUG; keep the demo's output readable.
        for name in ("amqtt", "transitions"):
            logging.getLogger(name).setLevel(logging.WARNING)
        self._thread = threading.Thread(target=self._run, name="amqtt-broker", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise BrokerError("amqtt broker did not start in time")
        if self._error is not None:
            raise BrokerError(f"amqtt broker failed to start: {self._error.__class__.__name__}: {self._error}")
        # Broker.start() returned, so the listener is bound (no probe connection: amqtt would log
        # an empty connection as an error).
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        self._loop = self._thread = None
        if loop.is_running() and self._broker is not None:
            fut = asyncio.run_coroutine_threadsafe(self._broker.shutdown(), loop)
            try:
                fut.result(10)
            except Exception:  # noqa: BLE001 - shutting down anyway
                pass
        if not loop.is_closed():
            loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def start_broker(workdir: str | Path, prefer: str = "auto") -> EmbeddedBroker:
    """Start mosquitto if installed (unless prefer='amqtt'), else amqtt; BrokerError if neither works."""
    errors = []
    order = {"auto": ("mosquitto", "amqtt"), "mosquitto": ("mosquitto",), "amqtt": ("amqtt",)}[prefer]
    for kind in order:
        try:
            if kind == "mosquitto":
                if not mosquitto_binary():
                    errors.append("mosquitto not installed")
                    continue
                return MosquittoBroker(Path(workdir) / "broker").start()
            return AmqttBroker().start()
        except BrokerError as exc:
            errors.append(str(exc))
    raise BrokerError("no MQTT broker available: " + "; ".join(errors) + " (apt-get install mosquitto, or pip install amqtt)")
