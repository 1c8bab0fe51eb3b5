"""KVCache, DecoderCache and DecoderState: append, read, overflow, reorder, prefilled caches."""

from __future__ import annotations

import pytest
import torch

from transformer.model.kv_cache import DecoderCache, DecoderState, KVCache, LayerCache

B, H, DH = 3, 2, 4


def step(batch: int = B, t: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(batch, H, t, DH), torch.randn(batch, H, t, DH)


def test_append_returns_everything_so_far() -> None:
    cache = KVCache(B, H, DH, max_len=5)
    assert cache.length == 0 and cache.max_len == 5
    k0, v0 = cache.keys_values()
    assert k0.shape == (B, H, 0, DH)
    k1, v1 = step(t=2)
    k, v = cache.append(k1, v1)
    assert cache.length == 2
    torch.testing.assert_close(k, k1)
    torch.testing.assert_close(v, v1)
    k2, v2 = step()
    k, v = cache.append(k2, v2)
    assert cache.length == 3 and k.shape == (B, H, 3, DH)
    torch.testing.assert_close(k, torch.cat([k1, k2], dim=2))
    torch.testing.assert_close(v, torch.cat([v1, v2], dim=2))
    kk, vv = cache.keys_values()
    assert torch.equal(kk, k) and torch.equal(vv, v)


def test_dtype_and_device() -> None:
    cache = KVCache(B, H, DH, 2, device="cpu", dtype=torch.bfloat16)
    k, v = cache.append(*step())
    assert k.dtype == v.dtype == torch.bfloat16 and k.device.type == "cpu"


def test_overflow_is_an_error() -> None:
    cache = KVCache(B, H, DH, max_len=2)
    cache.append(*step(t=2))
    with pytest.raises(ValueError, match="overflow"):
        cache.append(*step())
    assert cache.length == 2  # a failed append changes nothing


def test_sizes_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        KVCache(B, H, DH, max_len=0)


def test_reset() -> None:
    cache = KVCache(B, H, DH, max_len=3)
    cache.append(*step(t=3))
    cache.reset()
    assert cache.length == 0
    k1, v1 = step()
    torch.testing.assert_close(cache.append(k1, v1)[0], k1)


def test_reorder_selects_batch_rows() -> None:
    cache = KVCache(B, H, DH, max_len=4)
    k1, v1 = step(t=2)
    cache.append(k1, v1)
    index = torch.tensor([2, 2, 0, 1])  # may grow, repeat and drop rows (beam search)
    cache.reorder(index)
    assert cache.length == 2
    k, v = cache.keys_values()
    torch.testing.assert_close(k, k1[index])
    torch.testing.assert_close(v, v1[index])
    k2, v2 = step(batch=4)
    k, _ = cache.append(k2, v2)  # still appendable after the reorder
    torch.testing.assert_close(k, torch.cat([k1[index], k2], dim=2))


def test_from_tensors_is_full() -> None:
    k, v = step(t=6)
    cache = KVCache.from_tensors(k, v)
    assert cache.length == cache.max_len == 6
    kk, vv = cache.keys_values()
    assert torch.equal(kk, k) and torch.equal(vv, v)
    with pytest.raises(ValueError, match="overflow"):
        cache.append(*step())


def two_layer_cache(rows: int = B, sentences: int = B) -> DecoderCache:
    """Self-attention caches of ``rows`` rows (3 positions filled), cross-attention ones of ``sentences`` rows."""
    layers = []
    for _ in range(2):
        self_cache = KVCache(rows, H, DH, max_len=4)
        self_cache.append(*step(batch=rows, t=3))
        layers.append(LayerCache(self_attn=self_cache, cross_attn=KVCache.from_tensors(*step(batch=sentences, t=5))))
    return DecoderCache(layers)


def test_decoder_cache_reorders_every_layer() -> None:
    cache = two_layer_cache()
    assert cache.length == 3
    before = [(layer.self_attn.keys_values(), layer.cross_attn.keys_values()) for layer in cache.layers]
    index = torch.tensor([1, 0])
    cache.reorder(index, index)
    assert cache.length == 3
    for layer, ((sk, sv), (ck, cv)) in zip(cache.layers, before):
        torch.testing.assert_close(layer.self_attn.keys_values()[0], sk[index])
        torch.testing.assert_close(layer.self_attn.keys_values()[1], sv[index])
        torch.testing.assert_close(layer.cross_attn.keys_values()[0], ck[index])
        torch.testing.assert_close(layer.cross_attn.keys_values()[1], cv[index])


def test_beam_reorders_keep_cross_attention_apart() -> None:
    # Beams permuted within their sentences: only self-attention moves; cross keys/values stay put.
    cache = two_layer_cache()
    before = [(layer.self_attn.keys_values()[0], layer.cross_attn.keys_values()[0]) for layer in cache.layers]
    cache.reorder(torch.tensor([2, 2, 0]))
    for layer, (sk, ck) in zip(cache.layers, before):
        assert torch.equal(layer.self_attn.keys_values()[0], sk[[2, 2, 0]])
        assert layer.cross_attn.keys_values()[0] is ck or torch.equal(layer.cross_attn.keys_values()[0], ck)
    # A sentence leaves: each side gets its own index.
    cache.reorder(torch.tensor([1]), torch.tensor([0]))
    for layer, (sk, ck) in zip(cache.layers, before):
        assert torch.equal(layer.self_attn.keys_values()[0], sk[[2]])
        assert torch.equal(layer.cross_attn.keys_values()[0], ck[[0]])


def test_reorder_copies_only_filled_positions_and_appending_continues() -> None:
    cache = KVCache(B, H, DH, max_len=8)
    k1, v1 = step(t=2)
    cache.append(k1, v1)
    cache.reorder(torch.tensor([1, 0]))
    assert cache.max_len == 8 and cache.k.shape == (2, H, 8, DH)  # room left for the rest of the decoding
    k2, v2 = step(batch=2, t=6)
    k, v = cache.append(k2, v2)
    assert torch.equal(k, torch.cat([k1[[1, 0]], k2], dim=2)) and torch.equal(v, torch.cat([v1[[1, 0]], v2], dim=2))


def test_empty_decoder_cache_has_length_zero() -> None:
    assert DecoderCache([]).length == 0


# ------------------------------------------------------------------------------------------ DecoderState
def beam_state(sentences: int = 3, k: int = 2, use_cache: bool = True) -> DecoderState:
    """A state of ``sentences`` sentences with ``k`` beams each: memory (N, 5, 8), mask (N, 1, 1, 5)."""
    cache = two_layer_cache(rows=sentences * k, sentences=sentences) if use_cache else None
    return DecoderState(torch.randn(sentences, 5, 8), torch.rand(sentences, 1, 1, 5) > 0.3, cache, beam_size=k)


def snapshot(state: DecoderState) -> dict[str, torch.Tensor]:
    tensors = {"memory": state.memory, "src_mask": state.src_mask}
    for i, layer in enumerate(state.cache.layers):
        tensors[f"self{i}"] = layer.self_attn.keys_values()[0]
        tensors[f"cross{i}"] = layer.cross_attn.keys_values()[0]
    return tensors


def test_state_reorder_selects_beams_without_touching_the_sentences() -> None:
    state = beam_state()
    assert state.rows == 6 and state.length == 3
    before = snapshot(state)
    index = torch.tensor([1, 1, 2, 3, 5, 4])  # beams within each of the 3 sentences
    state.reorder(index)
    after = snapshot(state)
    for name, tensor in before.items():
        if name.startswith("self"):
            assert torch.equal(after[name], tensor[index])
        else:  # per sentence: shared by its beams, not even copied
            assert after[name] is tensor or after[name].data_ptr() == tensor.data_ptr()
    assert state.length == 3


def test_state_reorder_drops_sentences_everywhere() -> None:
    state = beam_state()
    before = snapshot(state)
    index = torch.tensor([1, 0, 4, 4])  # sentence 1 leaves; beams of 0 swapped, beam 0 of sentence 2 copied
    state.reorder(index)
    after = snapshot(state)
    for name, tensor in before.items():
        expected = tensor[index] if name.startswith("self") else tensor[[0, 2]]
        assert torch.equal(after[name], expected), name
    assert state.rows == 4 and state.memory.shape == (2, 5, 8)
    state.reorder(torch.tensor([2, 3]))  # then sentence 0 leaves too
    assert torch.equal(state.memory, before["memory"][[2]])
    assert torch.equal(state.cache.layers[0].self_attn.keys_values()[0], before["self0"][[4, 4]])


def test_state_without_cache_reorders_its_memory() -> None:
    state = beam_state(use_cache=False)
    memory = state.memory
    assert state.length == 0
    state.reorder(torch.tensor([4, 5]))
    assert torch.equal(state.memory, memory[[2]]) and state.src_mask.shape == (1, 1, 1, 5)


def test_state_reorder_needs_whole_sentences() -> None:
    state = beam_state()
    with pytest.raises(ValueError, match="whole sentences"):
        state.reorder(torch.tensor([0, 1, 2]))  # 3 rows for beams of 2
    with pytest.raises(ValueError, match="whole sentences"):
        state.reorder(torch.arange(8))  # more rows than there are
    with pytest.raises(ValueError, match="beam_size"):
        DecoderState(torch.zeros(1, 2, 3), torch.ones(1, 1, 1, 2, dtype=torch.bool), None, beam_size=0)
