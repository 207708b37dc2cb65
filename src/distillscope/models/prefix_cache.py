"""Prefill from cached blocks: targeted rollouts share long prefixes (the prompt, then the path
up to each child), so most of a prefix's keys and values were computed before.

A prefix is prefilled in fixed blocks of `BLOCK` positions ([0, 32), [32, 64), ...; the last
one partial). Block j is computed from its own tokens and the keys/values of blocks < j, and
stored under the tuple of tokens up to its end. A later prefix reuses every block whose tokens
it shares and computes the rest. Because the partition is fixed, a block's numbers depend on
the tokens alone, not on what was cached before: a run gives the same samples whether or not
the cache held a block (a resumed run starts with an empty cache), and a full block is never
confused with the partial block of a shorter prefix (different keys).

The cache is bounded in bytes (least recently used dropped first) and belongs to one model
(`HFModel`), whose weights are taken as fixed.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import torch

__all__ = ["BLOCK", "BlockCache", "ByteLRU", "prefill_cached", "tensor_bytes"]

BLOCK = 32


class ByteLRU:
    """A dict bounded in bytes: least recently used entries dropped first once the values hold
    more than `max_bytes` (`size(value)` bytes each; a value larger than the bound is not kept).
    The model's weights are taken as fixed (distillscope never trains); code that changes them
    should call `clear()`."""

    def __init__(self, size: Callable[[Any], int], max_bytes: int = 256 * 2**20) -> None:
        self.size = size
        self.max_bytes = max_bytes
        self._items: OrderedDict[Any, Any] = OrderedDict()
        self._bytes = 0
        self.hits = 0
        self.misses = 0

    def clear(self) -> None:
        self._items.clear()
        self._bytes = 0

    def get(self, key: Any) -> Any:
        item = self._items.get(key)
        if item is not None:
            self._items.move_to_end(key)
            self.hits += 1
        else:
            self.misses += 1
        return item

    def put(self, key: Any, item: Any) -> None:
        size = self.size(item)
        if size <= self.max_bytes:
            self._items[key] = item
            self._bytes += size
        while self._bytes > self.max_bytes:
            _, old = self._items.popitem(last=False)
            self._bytes -= self.size(old)


def tensor_bytes(*tensors: torch.Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


class BlockCache(ByteLRU):
    """(tokens up to a block's end) -> (keys per layer, values per layer, last hidden state)."""

    def __init__(self, max_bytes: int = 256 * 2**20) -> None:
        super().__init__(lambda item: tensor_bytes(*item[0], *item[1], item[2]), max_bytes)


def prefill_cached(run: Any, prefix: Sequence[int], cache: BlockCache):
    """`DecodeRunner.prefill` of `prefix` through the block cache: keys and values per layer
    (K, L, D) and the last position's logits (V)."""
    ids = list(prefix)
    n_layers = len(run.layers)
    ks_parts: list[list[torch.Tensor]] = [[] for _ in range(n_layers)]
    vs_parts: list[list[torch.Tensor]] = [[] for _ in range(n_layers)]
    item = None
    for start in range(0, len(ids), BLOCK):
        end = min(len(ids), start + BLOCK)
        key = tuple(ids[:end])
        item = cache.get(key)
        if item is None:
            past = None
            if start:
                past = ([torch.cat(p, dim=1) for p in ks_parts],
                        [torch.cat(p, dim=1) for p in vs_parts])
            block = torch.tensor(ids[start:end], dtype=torch.long, device=run.device)
            ks, vs, x = run._forward(block, start, past)
            item = (ks, vs, x[-1].clone())
            cache.put(key, item)
        for li in range(n_layers):
            ks_parts[li].append(item[0][li])
            vs_parts[li].append(item[1][li])
    assert item is not None, "an empty prefix"
    ks = [torch.cat(p, dim=1) if len(p) > 1 else p[0] for p in ks_parts]
    vs = [torch.cat(p, dim=1) if len(p) > 1 else p[0] for p in vs_parts]
    return ks, vs, run.last_logits(item[2])
