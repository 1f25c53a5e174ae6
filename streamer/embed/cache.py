"""Content-addressed cache of per-window embeddings.

A light curve that grows by appended points changes only its last window under
non-overlapping windows, so a stream re-embedding growing curves can reuse most windows.
Windows are keyed by a digest of their exact model inputs: a point inserted earlier
shifts every later window, changes their bytes and therefore misses the cache, so a stale
embedding can never be served.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import numpy as np

from streamer.embed.tensors import InputTensors


class WindowCache:
    """LRU map from window content digest to that window's model output.

    Parameters
    ----------
    max_bytes : int
        Memory budget for cached embeddings (array bytes plus a fixed per-entry
        overhead); least recently used entries are evicted beyond it.
    """

    #: Approximate bookkeeping bytes per entry (key, OrderedDict node, array header).
    ENTRY_OVERHEAD = 200

    def __init__(self, max_bytes: int) -> None:
        if max_bytes <= 0:
            raise ValueError(f"window cache budget must be positive, got {max_bytes} bytes")
        self.max_bytes = int(max_bytes)
        self.bytes_used = 0
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[bytes, np.ndarray] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def keys_for(tensors: InputTensors, output: str) -> list[bytes]:
        """Digest of every window's model inputs (and the requested output)."""
        feeds = [np.ascontiguousarray(a) for a in tensors.asdict().values()]
        rows = [a.reshape(a.shape[0], -1).view(np.uint8) for a in feeds]
        prefix = output.encode()
        keys = []
        for w in range(tensors.n_windows):
            digest = hashlib.blake2b(prefix, digest_size=20)
            for r in rows:
                digest.update(r[w])
            keys.append(digest.digest())
        return keys

    def get(self, key: bytes) -> np.ndarray | None:
        value = self._entries.get(key)
        if value is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return value

    def put(self, key: bytes, value: np.ndarray) -> None:
        if key in self._entries:
            return
        size = value.nbytes + self.ENTRY_OVERHEAD
        if size > self.max_bytes:
            return
        # Own a compact copy: a view would pin the whole batch output array in memory.
        self._entries[key] = value.copy()
        self.bytes_used += size
        while self.bytes_used > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self.bytes_used -= evicted.nbytes + self.ENTRY_OVERHEAD

    def clear(self) -> None:
        self._entries.clear()
        self.bytes_used = 0
