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
        """Keep batch rows ``index`` (beam selection, or dropping finished sentences)."""
        self.k = self.k.index_select(0, index)
        self.v = self.v.index_select(0, index)

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

    def reorder(self, index: torch.Tensor) -> None:
        """Keep batch rows ``index`` in every layer (self- and cross-attention)."""
        for layer in self.layers:
            layer.self_attn.reorder(index)
            layer.cross_attn.reorder(index)
