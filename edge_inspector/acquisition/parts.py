"""Part identity: what a trigger says about the part it images (part id, product, context).

A triggered camera yields exactly one frame per trigger, in trigger order (acquisition/base.py),
so the identity of each part is queued when its trigger is announced and taken by the
acquisition stage for the next frame. Two announcers exist:

* ``P/cmd/trigger`` (software trigger, ``software_source: command``): the command carries the
  part and fires the trigger; the tag is queued *before* the trigger so the frame can never
  overtake it.
* ``P/cmd/part`` (hardware trigger): the PLC announces the part that its next trigger pulse will
  image. The queue is bounded (``MAX_ANNOUNCED``): a PLC announcing parts that never reach the
  camera is refused rather than shifting every later id further.

A frame without an announced part (free-run, timer trigger) gets a generated id: the result's
``frame_id``, unique across restarts.

``part_ref`` is what the PLC message echoes (PLCs read fixed integer layouts, not strings): the
integer the announcer gave, else the part id itself when it is a decimal number in range, else
CRC-32 of the part id (UTF-8) in 31 bits; 0 = no part id announced. Consumers that need
certainty send ``part_ref`` themselves (e.g. the PLC's own part counter).
"""

from __future__ import annotations

import collections
import threading
import zlib
from dataclasses import dataclass, field
from typing import Optional

PART_REF_MAX = 2**31 - 1  # a PLC DINT, like seq
MAX_ANNOUNCED = 32  # parts announced ahead of their frames (P/cmd/part, P/cmd/trigger bursts)


def part_ref_for(part_id: Optional[str], given: Optional[int] = None) -> int:
    """The integer a PLC gets for this part (module docstring)."""
    if given is not None:
        return int(given)
    if not part_id:
        return 0
    if part_id.isascii() and part_id.isdigit() and 0 < int(part_id) <= PART_REF_MAX:
        return int(part_id)
    return (zlib.crc32(part_id.encode("utf-8")) & PART_REF_MAX) or 1


@dataclass(frozen=True)
class PartTag:
    part_id: Optional[str] = None
    product: Optional[str] = None
    context: dict = field(default_factory=dict)
    part_ref: int = 0

    @classmethod
    def make(cls, part_id: Optional[str] = None, product: Optional[str] = None, context: Optional[dict] = None,
             part_ref: Optional[int] = None) -> "PartTag":
        return cls(part_id, product, dict(context or {}), part_ref_for(part_id, part_ref))


class PartQueue:
    """FIFO of announced parts, one taken per triggered frame. Thread-safe."""

    def __init__(self, limit: int = MAX_ANNOUNCED):
        self.limit = limit
        self._items: collections.deque[PartTag] = collections.deque()
        self._lock = threading.Lock()

    def announce(self, tag: PartTag, count: int = 1) -> bool:
        """Queue ``tag`` for the next ``count`` frames; False (nothing queued) when that would
        exceed the limit."""
        with self._lock:
            if len(self._items) + count > self.limit:
                return False
            self._items.extend([tag] * count)
            return True

    def clear(self) -> int:
        """Drop every waiting announcement (the PLC resynchronises after a missed pulse); how many."""
        with self._lock:
            dropped = len(self._items)
            self._items.clear()
            return dropped

    def withdraw_last(self) -> None:
        """Undo the newest announcement (its trigger raised: no frame will come for it)."""
        with self._lock:
            if self._items:
                self._items.pop()

    def take(self) -> Optional[PartTag]:
        with self._lock:
            return self._items.popleft() if self._items else None

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)
