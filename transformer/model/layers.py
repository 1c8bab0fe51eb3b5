"""Encoder and decoder layers: sub-layers wrapped in residual connections with LayerNorm.

Post-LN (the paper's, ``norm_first=False``): x = LayerNorm(x + Dropout(sublayer(x))).
Pre-LN (``norm_first=True``):               x = x + Dropout(sublayer(LayerNorm(x))); the stack then
needs a final LayerNorm, which ``Encoder``/``Decoder`` add.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from transformer.config import ModelConfig
from transformer.model.attention import MultiHeadAttention
from transformer.model.feed_forward import FeedForward
from transformer.model.kv_cache import KVCache, LayerCache


class Residual(nn.Module):
    """A residual connection around one sub-layer, with its LayerNorm and dropout."""

    def __init__(self, d_model: int, *, dropout: float, norm_first: bool, eps: float = 1e-5) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d_model, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.norm_first = norm_first

    def forward(self, x: torch.Tensor, sublayer: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        if self.norm_first:
            return x + self.dropout(sublayer(self.norm(x)))
        return self.norm(x + self.dropout(sublayer(x)))


def _attend(
    attention: MultiHeadAttention, h: torch.Tensor, weights: list[torch.Tensor] | None, **options: Any
) -> torch.Tensor:
    """``attention(h, **options)``'s output; its probabilities are appended to ``weights`` when that is a list."""
    out, probs = attention(h, need_weights=weights is not None, **options)
    if weights is not None:
        weights.append(probs)
    return out


class EncoderLayer(nn.Module):
    """Self-attention, then feed-forward."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        c = config
        self.self_attn = MultiHeadAttention(c.d_model, c.n_heads, dropout=c.attention_dropout)
        self.feed_forward = FeedForward(c.d_model, c.d_ff, activation=c.activation, dropout=c.activation_dropout)
        self.attn_block = Residual(c.d_model, dropout=c.dropout, norm_first=c.norm_first, eps=c.layer_norm_eps)
        self.ff_block = Residual(c.d_model, dropout=c.dropout, norm_first=c.norm_first, eps=c.layer_norm_eps)

    def forward(
        self, x: torch.Tensor, src_mask: torch.Tensor | None = None, *, weights: list[torch.Tensor] | None = None
    ) -> torch.Tensor:
        """(B, S, D) -> (B, S, D); ``src_mask`` (B, 1, 1, S) is True at real source tokens.

        ``weights``: if a list is given, the (B, H, S, S) self-attention probabilities are appended to it
        (the slower explicit-softmax path); None keeps the fused SDPA path.
        """
        x = self.attn_block(x, lambda h: _attend(self.self_attn, h, weights, mask=src_mask))
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
        self_weights: list[torch.Tensor] | None = None,
        cross_weights: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """(R, T, D) target states attending to (N, S, D) memory -> (R, T, D); R = N*K (K hypotheses per sentence).

        Args:
            src_mask: (N, 1, 1, S), True at real source tokens.
            tgt_mask: (R, 1, T, T_total) self-attention mask; None means causal. With right padding, causal
                alone is exact for every real position (a real token never sees a later pad).
            cache: this layer's caches during step-by-step decoding.
            self_weights, cross_weights: if lists are given, the (R, H, T, T_total) self-attention and the
                (R, H, T, S) cross-attention probabilities are appended to them; None keeps the SDPA path.
        """
        self_cache = cache.self_attn if cache is not None else None
        cross_cache = cache.cross_attn if cache is not None else None
        # Without a cache, "causal" is SDPA's is_causal flag (fastest kernels). With a cache and a single new
        # token there is nothing to mask: every cached position is in the past.
        is_causal = tgt_mask is None and cache is None
        x = self.self_block(
            x, lambda h: _attend(self.self_attn, h, self_weights, mask=tgt_mask, is_causal=is_causal, cache=self_cache)
        )
        x = self.cross_block(x, lambda h: self._cross_attend(h, memory, src_mask, cross_cache, cross_weights))
        return self.ff_block(x, self.feed_forward)

    def _cross_attend(
        self,
        h: torch.Tensor,
        memory: torch.Tensor,
        src_mask: torch.Tensor | None,
        cache: KVCache | None,
        weights: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """(R, T, D) queries of R = N*K hypotheses attending to their sentences' (N, S, D) memory -> (R, T, D).

        The K hypotheses of a sentence share its memory, mask and cached keys/values: they are folded into the
        query axis, (N*K, T, D) -> (N, K*T, D), which is exact (cross-attention treats each query alone) and
        reads every sentence's keys once. Probabilities, when asked for, are unfolded back to (R, H, T, S).
        """
        r, t, d = h.shape
        n = memory.size(0)
        if r % n:
            raise ValueError(f"{r} target rows are not a whole number of hypotheses for {n} sentences")
        out, probs = self.cross_attn(
            h.reshape(n, (r // n) * t, d), memory, mask=src_mask, cache=cache, need_weights=weights is not None
        )
        if weights is not None:
            heads, s = probs.size(1), probs.size(-1)
            # (N, H, K*T, S) -> (N, H, K, T, S) -> (N, K, H, T, S) -> (R, H, T, S)
            weights.append(probs.view(n, heads, r // n, t, s).transpose(1, 2).reshape(r, heads, t, s))
        return out.reshape(r, t, d)
