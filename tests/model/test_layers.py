"""Encoder and decoder layers: residual + LayerNorm, post-LN and pre-LN, masks and caches."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from transformer.config import ModelConfig
from transformer.model.kv_cache import KVCache, LayerCache
from transformer.model.layers import DecoderLayer, EncoderLayer, Residual
from transformer.model.masks import causal_mask


def test_residual_post_ln_and_pre_ln() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8)
    sublayer = nn.Linear(8, 8)
    post = Residual(8, dropout=0.0, norm_first=False)
    pre = Residual(8, dropout=0.0, norm_first=True)
    for block in (post, pre):
        nn.init.normal_(block.norm.weight)
        nn.init.normal_(block.norm.bias)
    torch.testing.assert_close(post(x, sublayer), post.norm(x + sublayer(x)))
    torch.testing.assert_close(pre(x, sublayer), x + sublayer(pre.norm(x)))


def test_residual_uses_the_configured_eps() -> None:
    assert Residual(8, dropout=0.0, norm_first=False, eps=1e-6).norm.eps == 1e-6


@pytest.fixture(params=[False, True], ids=["post-LN", "pre-LN"])
def config(request, tiny_config: ModelConfig) -> ModelConfig:
    return dataclasses.replace(tiny_config, norm_first=request.param)


def test_encoder_layer_ignores_padded_keys(config: ModelConfig) -> None:
    torch.manual_seed(0)
    layer = EncoderLayer(config).eval()
    x = torch.randn(1, 5, config.d_model)
    mask = torch.tensor([[True, True, True, False, False]])[:, None, None, :]
    y = x.clone()
    y[:, 3:] = torch.randn(1, 2, config.d_model)  # change only what sits at the padded positions
    out_x, out_y = layer(x, mask), layer(y, mask)
    assert out_x.shape == x.shape
    torch.testing.assert_close(out_x[:, :3], out_y[:, :3], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out_x[:, :3], layer(x[:, :3]), atol=1e-5, rtol=1e-5)  # same as no padding at all


def test_decoder_layer_default_is_causal(config: ModelConfig) -> None:
    torch.manual_seed(0)
    layer = DecoderLayer(config).eval()
    x, memory = torch.randn(2, 6, config.d_model), torch.randn(2, 4, config.d_model)
    default = layer(x, memory)
    torch.testing.assert_close(default, layer(x, memory, tgt_mask=causal_mask(6)), atol=1e-5, rtol=1e-5)
    y = x.clone()
    y[:, 4:] += 1.0
    torch.testing.assert_close(layer(y, memory)[:, :4], default[:, :4], atol=1e-5, rtol=1e-5)


def test_decoder_layer_respects_the_source_mask(config: ModelConfig) -> None:
    torch.manual_seed(0)
    layer = DecoderLayer(config).eval()
    x, memory = torch.randn(1, 3, config.d_model), torch.randn(1, 5, config.d_model)
    src_mask = torch.tensor([[True, True, True, False, False]])[:, None, None, :]
    other = memory.clone()
    other[:, 3:] = torch.randn(1, 2, config.d_model)
    out = layer(x, memory, src_mask=src_mask)
    torch.testing.assert_close(layer(x, other, src_mask=src_mask), out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(layer(x, memory[:, :3]), out, atol=1e-5, rtol=1e-5)


def test_decoder_layer_with_cache_equals_full(config: ModelConfig) -> None:
    torch.manual_seed(0)
    layer = DecoderLayer(config).eval()
    x, memory = torch.randn(2, 5, config.d_model), torch.randn(2, 4, config.d_model)
    full = layer(x, memory)
    heads, dh = config.n_heads, config.head_dim
    cache = LayerCache(
        self_attn=KVCache(2, heads, dh, max_len=5), cross_attn=KVCache.from_tensors(*layer.cross_attn.project_kv(memory))
    )
    steps = [layer(x[:, t : t + 1], memory, cache=cache) for t in range(5)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


def test_layers_have_the_papers_sublayers(tiny_config: ModelConfig) -> None:
    encoder, decoder = EncoderLayer(tiny_config), DecoderLayer(tiny_config)
    assert sum(isinstance(m, nn.LayerNorm) for m in encoder.modules()) == 2
    assert sum(isinstance(m, nn.LayerNorm) for m in decoder.modules()) == 3
    assert decoder.self_attn is not decoder.cross_attn
