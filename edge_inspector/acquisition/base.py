"""FrameSource interface: every camera kind yields Frames the same way."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Iterator, Optional

import numpy as np


@dataclass
class Frame:
    """One grabbed image. ``image`` is None when the grab itself failed (``error`` says why):
    such a frame still becomes an ERROR verdict so a triggered part is never lost silently."""

    frame_id: str
    image: Optional[np.ndarray]
    ts_grab: float  # host monotonic-clock seconds at grab (time.monotonic())
    ts_wall: float  # host wall-clock (time.time()) at grab, for the payload's UTC timestamp
    source: str = ""
    error: Optional[str] = None
    meta: dict = field(default_factory=dict)


class FrameSource(abc.ABC):
    """A camera. ``open`` may block and retry; ``frames`` yields until ``close`` or the source ends.

    Implementations: folder.py, opencv.py, pylon.py. Reconnection after faults is the source's
    own job (with backoff); ``state`` reports it ("open", "reconnecting", "closed", "ended").
    """

    triggered: bool = False  # True when every frame stands for a real part (back-pressure, never drop)

    @abc.abstractmethod
    def open(self) -> None: ...

    @abc.abstractmethod
    def frames(self) -> Iterator[Frame]: ...

    @abc.abstractmethod
    def close(self) -> None: ...

    @property
    def state(self) -> str:
        return "unknown"

    def trigger(self) -> None:
        """Software trigger (sources that support it)."""
        raise NotImplementedError(f"{type(self).__name__} has no software trigger")

    def __enter__(self):
        self.open()
        return self

    def __exit__(self, *exc):
        self.close()
