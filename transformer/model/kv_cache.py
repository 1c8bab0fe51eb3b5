"""Explicit attention caches for step-by-step decoding; absent in training.

``KVCache`` holds the keys and values of one attention layer in preallocated tensors, so that appending
a decoding step copies only the new token's keys/values. Cross-attention uses the same class, filled
once from the encoder output. ``DecoderCache`` groups them per decoder layer; beam search needs a single
operation on it: ``reorder`` along the batch axis.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


class KVCache:
    """Keys and values of one attention layer: (B, H, max_len, D/H) buffers and a fill length."""

    def __init__(
        self,
        batch_size: int,
        n_heads: int,
        head_dim: int,
        max_len: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if min(batch_size, n_heads, head_dim, max_len) <= 0:
            raise ValueError("KVCache sizes must be positive")
        shape = (batch_size, n_heads, max_len, head_dim)
        self.k = torch.empty(shape, device=device, dtype=dtype)
        self.v = torch.empty(shape, device=device, dtype=dtype)
        self.length = 0  # a host-side int: reading it never syncs with the device

    @classmethod
    def from_tensors(cls, k: torch.Tensor, v: torch.Tensor) -> KVCache:
        """A full cache holding ``k`` and ``v`` (B, H, S, D/H), e.g. cross-attention keys/values."""
        cache = cls.__new__(cls)
        cache.k, cache.v, cache.length = k, v, k.size(2)
        return cache

    @property
    def max_len(self) -> int:
        return self.k.size(2)

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store (B, H, t, D/H) new keys/values; return all keys/values so far, (B, H, length, D/H)."""
        end = self.length + k.size(2)
        if end > self.max_len:
            raise ValueError(f"KVCache overflow: {end} positions > max_len {self.max_len}")
        self.k[:, :, self.length : end] = k
        self.v[:, :, self.length : end] = v
        self.length = end
        return self.keys_values()

    def keys_values(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.k[:, :, : self.length], self.v[:, :, : self.length]

    def reorder(self, index: torch.Tensor) -> None:
        """Keep batch rows ``index`` (beam selection, or dropping finished sentences).

        Only the filled positions are copied: the rest of a fresh buffer is never written, so beam search
        pays for what it has decoded rather than for ``max_len`` (about 10x less copying early on).
        """
        shape = (index.numel(), *self.k.shape[1:])
        k, v = self.k.new_empty(shape), self.v.new_empty(shape)
        filled = slice(0, self.length)
        torch.index_select(self.k[:, :, filled], 0, index, out=k[:, :, filled])
        torch.index_select(self.v[:, :, filled], 0, index, out=v[:, :, filled])
        self.k, self.v = k, v

    def reset(self) -> None:
        self.length = 0


@dataclass
class LayerCache:
    """The caches of one decoder layer."""

    self_attn: KVCache  # grows by one position per decoding step
    cross_attn: KVCache  # the encoder output's keys/values, computed once


class DecoderCache:
    """Per-layer caches of the whole decoder; made by ``Transformer.init_cache``."""

    def __init__(self, layers: list[LayerCache]) -> None:
        self.layers = layers

    @property
    def length(self) -> int:
        """Number of target positions already decoded."""
        return self.layers[0].self_attn.length if self.layers else 0

    def reorder(self, index: torch.Tensor, cross_index: torch.Tensor | None = None) -> None:
        """Keep batch rows ``index`` of the self-attention caches and ``cross_index`` (default: ``index``)
        of the cross-attention ones.

        Beam search passes a separate ``cross_index``: the beams of one sentence share their encoder
        keys/values, so those need reindexing only when whole sentences leave the batch.
        """
        cross_index = index if cross_index is None else cross_index
        for layer in self.layers:
            layer.self_attn.reorder(index)
            layer.cross_attn.reorder(cross_index)

    def reorder_self(self, index: torch.Tensor) -> None:
        """Keep batch rows ``index`` of the self-attention caches only (beams permuted within sentences)."""
        for layer in self.layers:
            layer.self_attn.reorder(index)
