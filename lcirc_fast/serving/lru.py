"""A thread-safe LRU cache bounded by the bytes of what it holds."""
from __future__ import annotations

import threading
from collections import OrderedDict


class ByteLRU:
    """key -> (value, nbytes), least recently used dropped first once the total passes
    `capacity` bytes. A value larger than the capacity is not kept. Counts hits and misses."""

    def __init__(self, capacity: int):
        if capacity < 0:
            raise ValueError(f"cache capacity must be >= 0 bytes, got {capacity}")
        self.capacity = capacity
        self._items: OrderedDict = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key):
        """The value under `key` (now the most recent), or None."""
        with self._lock:
            item = self._items.get(key)
            if item is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return item[0]

    def put(self, key, value, nbytes: int) -> None:
        with self._lock:
            self._drop(key)
            if nbytes > self.capacity:
                return
            self._items[key] = (value, nbytes)
            self._bytes += nbytes
            while self._bytes > self.capacity:
                self._drop(next(iter(self._items)))

    def pop(self, key) -> None:
        with self._lock:
            self._drop(key)

    def _drop(self, key) -> None:
        item = self._items.pop(key, None)
        if item is not None:
            self._bytes -= item[1]

    @property
    def nbytes(self) -> int:
        with self._lock:
            return self._bytes

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def __contains__(self, key) -> bool:
        with self._lock:
            return key in self._items
