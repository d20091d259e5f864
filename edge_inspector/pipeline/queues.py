"""Bounded hand-over queues between pipeline stages.

Two policies, chosen per queue by the supervisor:

* ``block`` (back-pressure): ``put`` waits until there is room. Used for every queue after the
  first one (a frame accepted into the pipeline must end as a verdict) and for the camera queue
  when the camera is triggered (every frame is a real part).
* ``drop_oldest``: ``put`` never waits; when full, the oldest waiting item is removed and handed
  back to the caller, who must count it. Used for the camera queue in free-run, where a stale
  frame is worth less than the newest one.

``END`` travels down the queues like an item: each stage forwards it after its last real item,
so shutdown drains everything already accepted.
"""

from __future__ import annotations

import collections
import threading
from typing import Any, Callable, Literal, Optional

END = object()  # end-of-stream marker: "no more items will follow"

Policy = Literal["block", "drop_oldest"]


class StageQueue:
    def __init__(self, name: str, maxsize: int, policy: Policy = "block"):
        if maxsize < 1:
            raise ValueError("queue size must be >= 1")
        self.name = name
        self.maxsize = int(maxsize)
        self.policy = policy
        self._items: collections.deque = collections.deque()
        self._lock = threading.Lock()
        self._not_empty = threading.Condition(self._lock)
        self._not_full = threading.Condition(self._lock)

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def put(self, item: Any, heartbeat: Optional[Callable[[], None]] = None, poll_s: float = 0.5) -> Optional[Any]:
        """Enqueue ``item``. Returns the item dropped to make room (drop_oldest), else None.

        Blocking puts wake every ``poll_s`` to call ``heartbeat``: a stage waiting on a slow
        consumer is alive, the consumer is the one whose heartbeat goes stale. ``END`` is never
        dropped and never dropped for (it must reach the end of the line)."""
        with self._lock:
            dropped = None
            if self.policy == "drop_oldest" and item is not END and len(self._items) >= self.maxsize:
                dropped = self._pop_oldest_droppable()
            while len(self._items) >= self.maxsize and dropped is None:
                self._not_full.wait(poll_s)
                if heartbeat is not None:
                    heartbeat()
            self._items.append(item)
            self._not_empty.notify()
            return dropped

    def _pop_oldest_droppable(self) -> Optional[Any]:
        for i, queued in enumerate(self._items):
            if queued is not END:
                del self._items[i]
                return queued
        return None

    def get(self, timeout: float) -> Any:
        """The next item, or None after ``timeout`` seconds without one."""
        with self._lock:
            if not self._items:
                self._not_empty.wait(timeout)
                if not self._items:
                    return None
            item = self._items.popleft()
            self._not_full.notify()
            return item

    def get_nowait_if(self, accept: Callable[[Any], bool]) -> Optional[Any]:
        """Pop the head only if ``accept(head)`` (used to batch compatible items); else None."""
        with self._lock:
            if self._items and self._items[0] is not END and accept(self._items[0]):
                item = self._items.popleft()
                self._not_full.notify()
                return item
            return None
