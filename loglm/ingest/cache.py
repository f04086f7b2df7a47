"""A memo dict bounded by the bytes of its keys: ingest's hot-path caches (message shapes, tokens, masked
messages) must not grow with a flood of unique lines (hardening issue, item 5: unique 60 KB lines grew a
stream from 0.8 to 4.8 GB).  Keys longer than ``key_max`` are never stored; when the stored keys exceed
``max_bytes`` the cache starts over (the hot entries come back within a few lines)."""

from __future__ import annotations


class BoundedCache(dict):
    def __init__(self, max_bytes: int = 32 << 20, key_max: int = 1024):
        super().__init__()
        self.max_bytes, self.key_max = max_bytes, key_max
        self.key_bytes = 0

    def put(self, key, value) -> None:
        size = len(key)
        if size > self.key_max:
            return
        if self.key_bytes + size > self.max_bytes:
            self.clear()
        if key not in self:
            self.key_bytes += size
        self[key] = value

    def clear(self) -> None:
        super().clear()
        self.key_bytes = 0
