"""Multi-head attention (Section 3.2 of the paper) on top of ``scaled_dot_product_attention``."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from transformer.model.kv_cache import KVCache


def attention_weights(
    q: torch.Tensor, k: torch.Tensor, *, mask: torch.Tensor | None = None, is_causal: bool = False
) -> torch.Tensor:
    """softmax(Q K^T / sqrt(d_k)) with masked positions at probability 0.

    Args:
        q: (B, H, T, Dh) queries; k: (B, H, S, Dh) keys.
        mask: boolean, broadcastable to (B, H, T, S); True where attention is allowed.
        is_causal: additionally forbid keys after the query's position.

    Returns:
        (B, H, T, S) attention probabilities (float32 computation, cast back to q's dtype).
    """
    scores = (q.float() @ k.float().transpose(-2, -1)) / math.sqrt(q.size(-1))
    if is_causal:
        scores = scores.masked_fill(~torch.ones_like(scores, dtype=torch.bool).tril(), float("-inf"))
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    probs = scores.softmax(dim=-1)
    # A query with no allowed key (e.g. an all-pad row) gets all zeros, as in SDPA, instead of NaN.
    probs = probs.masked_fill(scores.isneginf().all(dim=-1, keepdim=True), 0.0)
    return probs.to(q.dtype)


class MultiHeadAttention(nn.Module):
    """Self- or cross-attention with separate Q/K/V/output projections.

    Self-attention when ``memory`` is None; cross-attention over ``memory`` otherwise. During step-by-step
    decoding a ``KVCache`` is passed: for self-attention the new keys/values are appended to it, for
    cross-attention it already holds the keys/values of ``memory`` (see ``project_kv``) and ``memory`` is unused.
    """

    def __init__(self, d_model: int, n_heads: int, *, dropout: float = 0.0, bias: bool = True) -> None:
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.dropout = dropout
        self.q_proj = nn.Linear(d_model, d_model, bias=bias)
        self.k_proj = nn.Linear(d_model, d_model, bias=bias)
        self.v_proj = nn.Linear(d_model, d_model, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.n_heads, self.head_dim).transpose(1, 2)  # (B, T, D) -> (B, H, T, Dh)

    def project_kv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of ``x``: (B, S, D) -> two (B, H, S, Dh)."""
        return self._split_heads(self.k_proj(x)), self._split_heads(self.v_proj(x))

    def project_qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys and values of ``x`` for self-attention: (B, T, D) -> three (B, H, T, Dh)."""
        return self._split_heads(self.q_proj(x)), self._split_heads(self.k_proj(x)), self._split_heads(self.v_proj(x))

    def forward(
        self,
        x: torch.Tensor,
        memory: torch.Tensor | None = None,
        *,
        mask: torch.Tensor | None = None,
        is_causal: bool = False,
        cache: KVCache | None = None,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Attend from ``x`` (B, T, D) to itself or to ``memory`` (B, S, D).

        Args:
            mask: boolean, broadcastable to (B, H, T, S), True where attention is allowed.
            is_causal: causal self-attention without building a mask (lets SDPA pick its fastest kernel).
            cache: see the class docstring.
            need_weights: also return the (B, H, T, S) attention probabilities (slower path, for inspection).

        Returns:
            (B, T, D) output and the attention probabilities or None.
        """
        if memory is None:
            q, k, v = self.project_qkv(x)
            if cache is not None:
                k, v = cache.append(k, v)
        else:
            q = self._split_heads(self.q_proj(x))
            k, v = cache.keys_values() if cache is not None else self.project_kv(memory)
        if is_causal and q.size(2) != k.size(2):
            raise ValueError("is_causal needs as many queries as keys; pass an explicit mask with a cache")

        weights = None
        if need_weights:
            weights = attention_weights(q, k, mask=mask, is_causal=is_causal)
            out = F.dropout(weights, self.dropout, self.training) @ v
        else:
            dropout = self.dropout if self.training else 0.0
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=is_causal)
        b, _, t, _ = out.shape
        out = out.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim)  # (B, H, T, Dh) -> (B, T, D)
        return self.out_proj(out), weights
