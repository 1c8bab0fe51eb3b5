"""Explicit state for step-by-step decoding; absent in training.

``KVCache`` holds the keys and values of one attention layer in preallocated tensors, so that appending
a decoding step copies only the new token's keys/values. Cross-attention uses the same class, filled
once from the encoder output. ``DecoderCache`` groups them per decoder layer. ``DecoderState`` is what a
search carries from step to step: the caches, the encoder memory and its source mask, with one operation,
``reorder`` along the batch axis, for beam selection and for dropping finished sentences alike.
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
    """Per-layer caches of the whole decoder; made by ``Transformer.init_cache``.

    The self-attention caches have one row per hypothesis (R = N*K: K beams of each of N sentences), the
    cross-attention ones one row per sentence (N): the beams of a sentence share its encoder keys/values.
    """

    def __init__(self, layers: list[LayerCache]) -> None:
        self.layers = layers

    @property
    def length(self) -> int:
        """Number of target positions already decoded."""
        return self.layers[0].self_attn.length if self.layers else 0

    def reorder(self, rows: torch.Tensor, sentences: torch.Tensor | None = None) -> None:
        """Keep self-attention rows ``rows`` (R',) and, unless None, cross-attention rows ``sentences`` (N',)."""
        for layer in self.layers:
            layer.self_attn.reorder(rows)
            if sentences is not None:
                layer.cross_attn.reorder(sentences)


@dataclass
class DecoderState:
    """What step-by-step decoding carries between steps, for N sentences with K hypotheses (beams) each.

    ``memory`` (N, S, D), ``src_mask`` (N, 1, 1, S) and the cross-attention keys/values have one row per
    sentence; the self-attention caches one per hypothesis: row ``i * K + k`` is beam k of sentence i. Made by
    ``Transformer.init_state``, read by ``Transformer.decode_step``; ``cache`` is None for uncached decoding
    (each step recomputes the whole prefix; for checks).
    """

    memory: torch.Tensor
    src_mask: torch.Tensor
    cache: DecoderCache | None
    beam_size: int = 1

    def __post_init__(self) -> None:
        if self.beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, got {self.beam_size}")

    @property
    def rows(self) -> int:
        """R = N*K, the batch size of the decoder input."""
        return self.memory.size(0) * self.beam_size

    @property
    def length(self) -> int:
        """Target positions the cache holds (0 without a cache): ``decode_step`` feeds only the later ones."""
        return self.cache.length if self.cache is not None else 0

    def reorder(self, index: torch.Tensor) -> None:
        """Keep hypotheses ``index`` (R',) of the current R rows: beam selection and dropping sentences alike.

        ``index`` keeps sentences whole and in order: its rows ``i*K .. i*K + K - 1`` all come from one sentence
        (from any of its beams), and the sentences kept keep their order. The per-sentence tensors (memory,
        mask, cross-attention keys/values) are therefore re-indexed only when sentences leave (R' < R).
        """
        k = self.beam_size
        if index.numel() % k or index.numel() > self.rows:
            raise ValueError(f"reorder needs whole sentences of {k} rows, at most {self.rows}; got {index.numel()}")
        sentences = None
        if index.numel() < self.rows:  # sentences left: the first beam of each block names its sentence
            sentences = index[::k] // k  # (N',)
            self.memory = self.memory.index_select(0, sentences)
            self.src_mask = self.src_mask.index_select(0, sentences)
        if self.cache is not None:
            self.cache.reorder(index, sentences)
