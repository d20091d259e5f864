"""A real mosquitto on a free loopback port, with persistence in a temp dir (restartable).

The same launcher the demo uses (edge_inspector.demo.broker), plus restart for outage tests:
the port and the persistence directory stay the same across restarts.
"""

from __future__ import annotations

from edge_inspector.demo.broker import MosquittoBroker, free_port, mosquitto_binary

__all__ = ["Mosquitto", "free_port", "mosquitto_binary"]


class Mosquitto(MosquittoBroker):
    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None
