"""Encoder and decoder layers: sub-layers wrapped in residual connections with LayerNorm.

Post-LN (the paper's, ``norm_first=False``): x = LayerNorm(x + Dropout(sublayer(x))).
Pre-LN (``norm_first=True``):               x = x + Dropout(sublayer(LayerNorm(x))); the stack then
needs a final LayerNorm, which ``Encoder``/``Decoder`` add.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from transformer.config import ModelConfig
from transformer.model.attention import MultiHeadAttention
from transformer.model.dropout import Dropout
from transformer.model.feed_forward import FeedForward
from transformer.model.kv_cache import LayerCache


class Residual(nn.Module):
    """A residual connection around one sub-layer, with its LayerNorm and dropout."""

    def __init__(self, d_model: int, *, dropout: float, norm_first: bool, eps: float = 1e-5) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d_model, eps=eps)
        self.dropout = Dropout(dropout)
        self.norm_first = norm_first

    def forward(self, x: torch.Tensor, sublayer: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        if self.norm_first:
            return x + self.dropout(sublayer(self.norm(x)))
        return self.norm(x + self.dropout(sublayer(x)))


class EncoderLayer(nn.Module):
    """Self-attention, then feed-forward."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        c = config
        self.self_attn = MultiHeadAttention(c.d_model, c.n_heads, dropout=c.attention_dropout)
        self.feed_forward = FeedForward(c.d_model, c.d_ff, activation=c.activation, dropout=c.activation_dropout)
        self.attn_block = Residual(c.d_model, dropout=c.dropout, norm_first=c.norm_first, eps=c.layer_norm_eps)
        self.ff_block = Residual(c.d_model, dropout=c.dropout, norm_first=c.norm_first, eps=c.layer_norm_eps)

    def forward(self, x: torch.Tensor, src_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, S, D) -> (B, S, D); ``src_mask`` (B, 1, 1, S) is True at real source tokens."""
        x = self.attn_block(x, lambda h: self.self_attn(h, mask=src_mask)[0])
        return self.ff_block(x, self.feed_forward)


class DecoderLayer(nn.Module):
    """Masked self-attention, encoder-decoder attention, then feed-forward."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        c = config
        self.self_attn = MultiHeadAttention(c.d_model, c.n_heads, dropout=c.attention_dropout)
        self.cross_attn = MultiHeadAttention(c.d_model, c.n_heads, dropout=c.attention_dropout)
        self.feed_forward = FeedForward(c.d_model, c.d_ff, activation=c.activation, dropout=c.activation_dropout)
        self.self_block = Residual(c.d_model, dropout=c.dropout, norm_first=c.norm_first, eps=c.layer_norm_eps)
        self.cross_block = Residual(c.d_model, dropout=c.dropout, norm_first=c.norm_first, eps=c.layer_norm_eps)
        self.ff_block = Residual(c.d_model, dropout=c.dropout, norm_first=c.norm_first, eps=c.layer_norm_eps)

    def forward(
        self,
        x: torch.Tensor,
        memory: torch.Tensor,
        *,
        src_mask: torch.Tensor | None = None,
        tgt_mask: torch.Tensor | None = None,
        cache: LayerCache | None = None,
    ) -> torch.Tensor:
        """(B, T, D) target states attending to (B, S, D) memory -> (B, T, D).

        Args:
            src_mask: (B, 1, 1, S), True at real source tokens.
            tgt_mask: (B, 1, T, T_total) self-attention mask; None means causal. With right padding, causal
                alone is exact for every real position (a real token never sees a later pad).
            cache: this layer's caches during step-by-step decoding.
        """
        self_cache = cache.self_attn if cache is not None else None
        cross_cache = cache.cross_attn if cache is not None else None
        # Without a cache, "causal" is SDPA's is_causal flag (fastest kernels). With a cache and a single new
        # token there is nothing to mask: every cached position is in the past.
        is_causal = tgt_mask is None and cache is None
        x = self.self_block(x, lambda h: self.self_attn(h, mask=tgt_mask, is_causal=is_causal, cache=self_cache)[0])
        x = self.cross_block(x, lambda h: self.cross_attn(h, memory, mask=src_mask, cache=cross_cache)[0])
        return self.ff_block(x, self.feed_forward)
