"""Paged KV cache: fixed-size blocks handed out from a free list.

Storage per layer is one tensor ``[2, kv_heads, num_blocks · block_size, head_dim]`` (K, then V),
allocated once: head-major, so a gather of rows is already laid out for batched matmul, and K
and V together, so one ``index_copy_`` writes both and one ``index_select`` gathers both. A
request owns a list of block ids (its block table); position ``p`` of the request lives at flat
row ``table[p // block_size] · block_size + p % block_size``.

Admission control reserves every block a request can ever need (prompt + max_tokens) when it is
admitted, so a running request never runs out of cache mid-generation and nothing is preempted:
a request that does not fit now waits, one that can never fit is refused
(:class:`ResourceExhausted`), and the process never allocates past the budget.
"""

from __future__ import annotations

import threading

import torch

from atoll.core.errors import ResourceExhausted, request_fault

from .config import ModelConfig


def blocks_for(num_tokens: int, block_size: int) -> int:
    return -(-num_tokens // block_size)


class PagedKVCache:
    def __init__(self, cfg: ModelConfig, *, num_blocks: int, block_size: int, dtype: torch.dtype,
                 device: torch.device):
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"num_blocks ({num_blocks}) and block_size ({block_size}) must be >= 1")
        self.num_blocks, self.block_size = num_blocks, block_size
        rows = num_blocks * block_size
        shape = (2, cfg.num_kv_heads, rows, cfg.head_dim)
        self.layers = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.num_layers)]
        self._free = list(range(num_blocks - 1, -1, -1))   # pop() hands out low ids first
        self._lock = threading.Lock()

    @property
    def capacity_tokens(self) -> int:
        return self.num_blocks * self.block_size

    @property
    def bytes_per_token(self) -> int:
        t = self.layers[0]
        return len(self.layers) * 2 * t.shape[1] * t.shape[3] * t.element_size()

    @property
    def num_free(self) -> int:
        return len(self._free)

    def usage(self) -> float:
        return 1.0 - len(self._free) / self.num_blocks

    def check_fits_ever(self, num_tokens: int) -> None:
        need = blocks_for(num_tokens, self.block_size)
        if need > self.num_blocks:
            raise request_fault(ResourceExhausted(
                f"request needs {num_tokens} KV-cache tokens ({need} blocks) but the cache holds only "
                f"{self.capacity_tokens} tokens ({self.num_blocks} blocks)",
                hint="shorten the prompt, lower max_tokens, or give the engine a larger kv_cache_tokens"))

    def allocate(self, num_tokens: int) -> list[int] | None:
        """Blocks for ``num_tokens`` tokens, or None when not enough are free right now."""
        need = blocks_for(num_tokens, self.block_size)
        with self._lock:
            if need > len(self._free):
                return None
            return [self._free.pop() for _ in range(need)]

    def free(self, blocks: list[int]) -> None:
        with self._lock:
            self._free.extend(reversed(blocks))

    def rows(self, table: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Flat storage rows of ``positions`` for a block table (both long tensors, broadcastable)."""
        bs = self.block_size
        return table.gather(-1, positions // bs) * bs + positions % bs
