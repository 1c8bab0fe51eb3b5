"""Multi-head attention against softmax(Q K^T / sqrt(d_k)) V computed by hand from the module's weights."""

from __future__ import annotations

import math

import pytest
import torch

from transformer.model.attention import MultiHeadAttention, attention_weights
from transformer.model.kv_cache import KVCache
from transformer.model.masks import causal_mask

D_MODEL, N_HEADS = 16, 4


@pytest.fixture
def mha() -> MultiHeadAttention:
    torch.manual_seed(0)
    module = MultiHeadAttention(D_MODEL, N_HEADS).eval()
    for p in module.parameters():  # non-zero biases, so that a forgotten bias would show
        torch.nn.init.normal_(p, std=0.3)
    return module


def by_hand(mha: MultiHeadAttention, x: torch.Tensor, memory: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Reference: per head, softmax(q k^T / sqrt(d_k)) v; ``allowed`` is a (B, T, S) boolean mask."""
    dh = D_MODEL // N_HEADS
    q = x @ mha.q_proj.weight.T + mha.q_proj.bias
    k = memory @ mha.k_proj.weight.T + mha.k_proj.bias
    v = memory @ mha.v_proj.weight.T + mha.v_proj.bias
    heads = []
    for h in range(N_HEADS):
        cols = slice(h * dh, (h + 1) * dh)
        scores = q[..., cols] @ k[..., cols].transpose(1, 2) / math.sqrt(dh)  # (B, T, S)
        scores = scores.masked_fill(~allowed, float("-inf"))
        heads.append(scores.softmax(dim=-1) @ v[..., cols])
    return torch.cat(heads, dim=-1) @ mha.out_proj.weight.T + mha.out_proj.bias


def test_self_attention_with_padding_mask_equals_by_hand(mha: MultiHeadAttention) -> None:
    x = torch.randn(2, 5, D_MODEL)
    real = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.bool)
    out, weights = mha(x, mask=real[:, None, None, :])
    assert out.shape == (2, 5, D_MODEL) and weights is None
    torch.testing.assert_close(out, by_hand(mha, x, x, real[:, None, :].expand(2, 5, 5)), atol=1e-5, rtol=1e-5)


def test_causal_self_attention_equals_by_hand(mha: MultiHeadAttention) -> None:
    x = torch.randn(2, 6, D_MODEL)
    expected = by_hand(mha, x, x, torch.ones(6, 6, dtype=torch.bool).tril().expand(2, 6, 6))
    torch.testing.assert_close(mha(x, is_causal=True)[0], expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mha(x, mask=causal_mask(6))[0], expected, atol=1e-5, rtol=1e-5)


def test_self_attention_gradients_equal_by_hand(mha: MultiHeadAttention) -> None:
    """The one-product Q/K/V projection must give each projection its own, exact gradient."""
    x = torch.randn(2, 5, D_MODEL)
    allowed = torch.ones(5, 5, dtype=torch.bool).tril().expand(2, 5, 5)
    params = list(mha.parameters())
    grads = torch.autograd.grad(mha(x, is_causal=True)[0].square().sum(), params)
    expected = torch.autograd.grad(by_hand(mha, x, x, allowed).square().sum(), params)
    for (name, _), got, want in zip(mha.named_parameters(), grads, expected):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4, msg=name)


def test_causal_and_padding_together(mha: MultiHeadAttention) -> None:
    x = torch.randn(2, 5, D_MODEL)
    real = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.bool)
    allowed = real[:, None, :] & torch.ones(5, 5, dtype=torch.bool).tril()
    expected = by_hand(mha, x, x, allowed)
    for need_weights in (False, True):
        out, _ = mha(x, mask=real[:, None, None, :], is_causal=True, need_weights=need_weights)
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("is_causal", [False, True])
def test_need_weights_path_equals_sdpa_path(mha: MultiHeadAttention, is_causal: bool) -> None:
    x = torch.randn(3, 6, D_MODEL)
    real = torch.ones(3, 6, dtype=torch.bool)
    real[1, 4:] = False
    real[2, 2:] = False
    mask = real[:, None, None, :]
    fast, none = mha(x, mask=mask, is_causal=is_causal)
    slow, weights = mha(x, mask=mask, is_causal=is_causal, need_weights=True)
    assert none is None and weights.shape == (3, N_HEADS, 6, 6)
    torch.testing.assert_close(slow, fast, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, N_HEADS, 6))
    assert torch.all(weights.masked_select(~mask.expand_as(weights)) == 0)  # masked keys get exactly 0
    if is_causal:
        assert torch.all(weights.triu(diagonal=1) == 0)
    assert torch.all(weights[mask.expand_as(weights) & torch.ones(6, 6, dtype=torch.bool).tril()] > 0)


def test_attention_weights_function_by_hand() -> None:
    q, k = torch.randn(1, 1, 2, 4), torch.randn(1, 1, 3, 4)
    mask = torch.tensor([True, False, True])
    weights = attention_weights(q, k, mask=mask)
    for t in range(2):
        scores = [float(q[0, 0, t] @ k[0, 0, s]) / 2.0 for s in (0, 2)]  # sqrt(d_k) = 2
        total = sum(math.exp(s) for s in scores)
        assert weights[0, 0, t].tolist() == pytest.approx([math.exp(scores[0]) / total, 0.0, math.exp(scores[1]) / total], abs=1e-6)


def test_fully_masked_query_gives_zeros_in_both_paths(mha: MultiHeadAttention) -> None:
    """A query with nothing to attend to (an all-pad row) must not produce NaN, whichever path runs."""
    x = torch.randn(2, 3, D_MODEL)
    mask = torch.tensor([[True, True, False], [False, False, False]])[:, None, None, :]
    fast, _ = mha(x, mask=mask)
    slow, weights = mha(x, mask=mask, need_weights=True)
    assert torch.all(weights[1] == 0) and torch.isfinite(slow).all()
    torch.testing.assert_close(slow, fast, atol=1e-5, rtol=1e-5)


def test_cross_attention_uses_the_memory_length(mha: MultiHeadAttention) -> None:
    x, memory = torch.randn(2, 3, D_MODEL), torch.randn(2, 7, D_MODEL)
    real = torch.ones(2, 7, dtype=torch.bool)
    real[0, 5:] = False
    out, weights = mha(x, memory, mask=real[:, None, None, :], need_weights=True)
    assert out.shape == (2, 3, D_MODEL) and weights.shape == (2, N_HEADS, 3, 7)
    torch.testing.assert_close(out, by_hand(mha, x, memory, real[:, None, :].expand(2, 3, 7)), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mha(x, memory, mask=real[:, None, None, :])[0], out, atol=1e-5, rtol=1e-5)


def test_cross_attention_from_a_filled_cache_equals_memory(mha: MultiHeadAttention) -> None:
    x, memory = torch.randn(2, 3, D_MODEL), torch.randn(2, 7, D_MODEL)
    cache = KVCache.from_tensors(*mha.project_kv(memory))
    torch.testing.assert_close(mha(x, memory, cache=cache)[0], mha(x, memory)[0])
    torch.testing.assert_close(mha(x, torch.zeros_like(memory), cache=cache)[0], mha(x, memory)[0])  # memory unused
    assert cache.length == 7  # reading a cross-attention cache never grows it


def test_kv_cache_step_by_step_equals_full_causal(mha: MultiHeadAttention) -> None:
    x = torch.randn(2, 6, D_MODEL)
    full, _ = mha(x, is_causal=True)
    cache = KVCache(2, N_HEADS, D_MODEL // N_HEADS, max_len=8)
    steps = [mha(x[:, t : t + 1], cache=cache)[0] for t in range(6)]
    assert cache.length == 6
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


def test_kv_cache_chunk_after_prefix_equals_full_causal(mha: MultiHeadAttention) -> None:
    x = torch.randn(2, 7, D_MODEL)
    full, _ = mha(x, is_causal=True)
    cache = KVCache(2, N_HEADS, D_MODEL // N_HEADS, max_len=7)
    first, _ = mha(x[:, :3], mask=causal_mask(3), cache=cache)
    rest, _ = mha(x[:, 3:], mask=causal_mask(4, offset=3), cache=cache)
    torch.testing.assert_close(torch.cat([first, rest], dim=1), full, atol=1e-5, rtol=1e-5)


def test_is_causal_with_a_cache_needs_a_mask(mha: MultiHeadAttention) -> None:
    cache = KVCache(1, N_HEADS, D_MODEL // N_HEADS, max_len=4)
    mha(torch.randn(1, 1, D_MODEL), cache=cache)
    with pytest.raises(ValueError, match="is_causal"):
        mha(torch.randn(1, 2, D_MODEL), is_causal=True, cache=cache)


def test_heads_must_divide_d_model() -> None:
    with pytest.raises(ValueError, match="divisible"):
        MultiHeadAttention(30, 4)


def test_attention_dropout_only_in_training() -> None:
    torch.manual_seed(0)
    module = MultiHeadAttention(D_MODEL, N_HEADS, dropout=0.5)
    x = torch.randn(2, 5, D_MODEL)
    module.eval()
    torch.testing.assert_close(module(x)[0], module(x)[0])
    module.train()
    assert not torch.allclose(module(x)[0], module(x)[0])


def test_weights_step_by_step_with_a_cache_equal_the_full_causal_rows(mha: MultiHeadAttention) -> None:
    x = torch.randn(2, 5, D_MODEL)
    out, full = mha(x, is_causal=True, need_weights=True)
    cache = KVCache(2, N_HEADS, D_MODEL // N_HEADS, max_len=5)
    for t in range(5):
        step, weights = mha(x[:, t : t + 1], cache=cache, need_weights=True)
        assert weights.shape == (2, N_HEADS, 1, t + 1)
        torch.testing.assert_close(weights[:, :, 0], full[:, :, t, : t + 1], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(step[:, 0], out[:, t], atol=1e-5, rtol=1e-5)
