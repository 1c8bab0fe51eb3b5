"""The whole encoder-decoder: shapes, positions, causality, padding, cached decoding, sizes, options, precision."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from transformer.config import PRESETS, ModelConfig
from transformer.model.transformer import Transformer, count_parameters
from transformer.tokens import PAD_ID

MODEL_DIR = Path(__file__).resolve().parents[2] / "transformer" / "model"
TOL = dict(atol=1e-5, rtol=1e-5)


class NoPositions(nn.Module):
    """Stands in for a positional encoding: adds nothing."""

    def forward(self, x: torch.Tensor, *, offset: int = 0) -> torch.Tensor:
        return x


def test_output_shapes(make_model, tokens) -> None:
    model = make_model()
    src, tgt = tokens(2, 7), tokens(2, 5)
    logits = model(src, tgt)
    assert logits.shape == (2, 5, model.config.tgt_vocab_size) and torch.isfinite(logits).all()
    memory = model.encode(src, model.src_mask(src))
    assert memory.shape == (2, 7, model.config.d_model)
    torch.testing.assert_close(model.decode(tgt, memory, model.src_mask(src)), logits, **TOL)


def test_different_vocabularies(make_model, tokens) -> None:
    model = make_model(src_vocab_size=11, tgt_vocab_size=29)
    assert model(tokens(2, 4, vocab=11), tokens(2, 3, vocab=29)).shape == (2, 3, 29)


# ------------------------------------------------------------------------------------- positions


def test_without_positions_the_encoder_is_permutation_equivariant(make_model, tokens) -> None:
    """Why positions exist: without them, self-attention cannot tell word orders apart."""
    src = torch.randperm(22)[:7][None] + 1  # distinct tokens, so a permutation really changes the input
    perm = torch.tensor([3, 0, 6, 1, 5, 2, 4])

    model = make_model()
    model.encoder.positional = NoPositions()
    torch.testing.assert_close(model.encode(src[:, perm]), model.encode(src)[:, perm], **TOL)

    with_positions = make_model()
    assert not torch.allclose(with_positions.encode(src[:, perm]), with_positions.encode(src)[:, perm], atol=1e-3)


# ------------------------------------------------------------------------------- causality, padding


@pytest.mark.parametrize("norm_first", [False, True], ids=["post-LN", "pre-LN"])
def test_no_future_leakage(make_model, tokens, norm_first: bool) -> None:
    model = make_model(norm_first=norm_first)
    src, tgt = tokens(2, 6), tokens(2, 7)
    logits = model(src, tgt)
    for t in range(tgt.size(1) - 1):
        changed = tgt.clone()
        changed[:, t + 1 :] = tokens(2, tgt.size(1) - t - 1)
        changed[:, t + 1] = tgt[:, t + 1] % (model.config.tgt_vocab_size - 1) + 1  # surely different
        other = model(src, changed)
        torch.testing.assert_close(other[:, : t + 1], logits[:, : t + 1], **TOL)
        assert not torch.allclose(other[:, t + 1], logits[:, t + 1], atol=1e-4)  # the change is visible after t


@pytest.mark.parametrize("norm_first", [False, True], ids=["post-LN", "pre-LN"])
def test_source_padding_does_not_change_outputs(make_model, tokens, norm_first: bool) -> None:
    model = make_model(norm_first=norm_first)
    src, tgt = tokens(1, 5), tokens(1, 4)
    padded = torch.cat([src, torch.full((1, 3), PAD_ID)], dim=1)
    torch.testing.assert_close(model(padded, tgt), model(src, tgt), **TOL)
    memory = model.encode(padded, model.src_mask(padded))
    torch.testing.assert_close(memory[:, :5], model.encode(src), **TOL)


@pytest.mark.parametrize("norm_first", [False, True], ids=["post-LN", "pre-LN"])
def test_target_padding_does_not_change_real_positions(make_model, tokens, norm_first: bool) -> None:
    model = make_model(norm_first=norm_first)
    src, tgt = tokens(1, 5), tokens(1, 4)
    padded = torch.cat([tgt, torch.full((1, 3), PAD_ID)], dim=1)
    torch.testing.assert_close(model(src, padded)[:, :4], model(src, tgt), **TOL)


def test_a_sentence_decodes_the_same_alone_and_in_a_batch(make_model, tokens) -> None:
    model = make_model()
    src_a, tgt_a = tokens(1, 4), tokens(1, 3)
    src_b, tgt_b = tokens(1, 9), tokens(1, 8)
    src = torch.cat([torch.cat([src_a, torch.full((1, 5), PAD_ID)], dim=1), src_b])
    tgt = torch.cat([torch.cat([tgt_a, torch.full((1, 5), PAD_ID)], dim=1), tgt_b])
    batched = model(src, tgt)
    torch.testing.assert_close(batched[:1, :3], model(src_a, tgt_a), **TOL)
    torch.testing.assert_close(batched[1:], model(src_b, tgt_b), **TOL)


def test_long_inputs_past_max_positions_with_sinusoids(make_model, tokens) -> None:
    model = make_model(max_positions=8)
    assert torch.isfinite(model(tokens(1, 12), tokens(1, 10))).all()


def test_learned_positions_error_past_max_positions(make_model, tokens) -> None:
    model = make_model(positional="learned", max_positions=8)
    assert model(tokens(1, 8), tokens(1, 8)).shape == (1, 8, model.config.tgt_vocab_size)
    with pytest.raises(ValueError, match="max_positions=8"):
        model(tokens(1, 9), tokens(1, 3))


# ---------------------------------------------------------------------------------- cached decoding


def padded_batch(tokens) -> tuple[torch.Tensor, torch.Tensor]:
    src = tokens(2, 6)
    src[1, 4:] = PAD_ID  # the cross-attention must use the source mask
    return src, tokens(2, 7)


@pytest.mark.parametrize(
    "options",
    [dict(norm_first=False), dict(norm_first=True), dict(positional="learned", max_positions=16)],
    ids=["post-LN", "pre-LN", "learned-positions"],
)
@torch.no_grad()
def test_cached_decoding_step_by_step_equals_full_pass(make_model, tokens, options) -> None:
    model = make_model(**options)
    src, tgt = padded_batch(tokens)
    src_mask = model.src_mask(src)
    memory = model.encode(src, src_mask)
    full = model.decode(tgt, memory, src_mask)
    cache = model.init_cache(memory, max_len=tgt.size(1))
    steps = []
    for t in range(tgt.size(1)):
        assert cache.length == t
        steps.append(model.decode(tgt[:, t : t + 1], memory, src_mask, cache=cache))
    torch.testing.assert_close(torch.cat(steps, dim=1), full, **TOL)
    torch.testing.assert_close(full, model(src, tgt), **TOL)


@pytest.mark.parametrize("norm_first", [False, True], ids=["post-LN", "pre-LN"])
@torch.no_grad()
def test_cached_decoding_of_a_chunk_after_a_prefix(make_model, tokens, norm_first: bool) -> None:
    model = make_model(norm_first=norm_first)
    src, tgt = padded_batch(tokens)
    src_mask = model.src_mask(src)
    memory = model.encode(src, src_mask)
    full = model.decode(tgt, memory, src_mask)
    cache = model.init_cache(memory, max_len=tgt.size(1))
    prefix = [model.decode(tgt[:, t : t + 1], memory, src_mask, cache=cache) for t in range(2)]
    chunk = model.decode(tgt[:, 2:6], memory, src_mask, cache=cache)  # four new tokens at once
    last = model.decode(tgt[:, 6:], memory, src_mask, cache=cache)
    assert chunk.shape[1] == 4 and cache.length == 7
    torch.testing.assert_close(torch.cat([*prefix, chunk, last], dim=1), full, **TOL)


@pytest.mark.parametrize("norm_first", [False, True], ids=["post-LN", "pre-LN"])
@torch.no_grad()
def test_decoder_state_reorder_equals_recomputing(make_model, tokens, norm_first: bool) -> None:
    """Beam search's one operation, ``state.reorder``: selecting beams, then dropping a sentence. The next-step
    logits of the kept rows must match a fresh uncached state and the teacher-forced pass of the same rows."""
    model = make_model(norm_first=norm_first)
    src = tokens(3, 6)
    src[1, 4:] = PAD_ID  # the cross-attention must use the source mask
    k = 2
    state = model.init_state(src, max_len=8, beam_size=k)  # memory per sentence, self-attention per row
    assert state.memory.shape == (3, 6, 32) and state.rows == 6
    tgt = tokens(6, 8)  # (N*K, 8): row i*K + b is beam b of sentence i
    for t in range(3):
        model.decode_step(tgt[:, : t + 1], state)

    def check(kept_sentences: list[int], length: int) -> None:
        logits = model.decode_step(tgt[:, :length], state)  # (R, V)
        fresh = model.init_state(src[kept_sentences], max_len=8, beam_size=k, use_cache=False)
        torch.testing.assert_close(logits, model.decode_step(tgt[:, :length], fresh), **TOL)
        rows_src = src[kept_sentences].repeat_interleave(k, dim=0)  # memory repeated per row: no folding
        torch.testing.assert_close(logits, model(rows_src, tgt[:, :length])[:, -1], **TOL)

    index = torch.tensor([1, 1, 3, 2, 4, 5])  # beams chosen within their sentences; row 1 copied twice
    state.reorder(index)
    tgt = torch.cat([tgt[index, :3], tokens(6, 5)], dim=1)  # the two copies of row 1 now diverge
    check([0, 1, 2], 4)
    index = torch.tensor([1, 0, 5, 5])  # sentence 1 leaves, the beams of sentence 0 swap
    state.reorder(index)
    tgt = torch.cat([tgt[index, :4], tokens(4, 4)], dim=1)
    assert state.memory.shape == (2, 6, 32) and state.length == 4
    check([0, 2], 5)
    check([0, 2], 8)  # several new positions at once after a reorder


@torch.no_grad()
def test_rows_must_be_whole_hypotheses_of_the_sentences(make_model, tokens) -> None:
    model = make_model()
    memory = model.encode(tokens(2, 4))
    assert model.decode(tokens(6, 3), memory).shape == (6, 3, 23)  # 3 hypotheses per sentence
    with pytest.raises(ValueError, match="whole number of hypotheses"):
        model.decode(tokens(5, 3), memory)


def test_cache_overflow_is_an_error(make_model, tokens) -> None:
    model = make_model()
    src = tokens(1, 4)
    memory = model.encode(src)
    cache = model.init_cache(memory, max_len=2)
    model.decode(tokens(1, 2), memory, cache=cache)
    with pytest.raises(ValueError, match="overflow"):
        model.decode(tokens(1, 1), memory, cache=cache)


# ------------------------------------------------------------------------------- parameter counts


def expected_parameters(c: ModelConfig) -> int:
    """Closed-form count of the model's distinct parameters."""
    d, f = c.d_model, c.d_ff
    attention = 4 * (d * d + d)  # Q, K, V and output projections with biases
    ffn = 2 * d * f + f + d
    norm = 2 * d  # LayerNorm weight and bias
    encoder_layer = attention + ffn + 2 * norm
    decoder_layer = 2 * attention + ffn + 3 * norm
    embeddings = c.src_vocab_size * d + (0 if c.share_embeddings else c.tgt_vocab_size * d)
    positions = 2 * c.max_positions * d if c.positional == "learned" else 0  # sinusoids are a buffer
    final_norms = 2 * norm if c.norm_first else 0
    output = 0 if c.tie_output else c.tgt_vocab_size * d  # no bias
    layers = c.n_encoder_layers * encoder_layer + c.n_decoder_layers * decoder_layer
    return embeddings + positions + layers + final_norms + output


VARIANTS = {
    "default": {},
    "untied": dict(tie_output=False),
    "shared": dict(share_embeddings=True),
    "shared-untied": dict(share_embeddings=True, tie_output=False),
    "pre-LN-learned": dict(norm_first=True, positional="learned", max_positions=64),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("preset", list(PRESETS))
def test_parameter_count_matches_closed_form(preset: str, variant: str) -> None:
    config = ModelConfig.preset(preset, src_vocab_size=1000, tgt_vocab_size=1000, **VARIANTS[variant])
    with torch.device("meta"):  # shapes without memory or init time, even for "big"
        model = Transformer(config)
    assert count_parameters(model) == expected_parameters(config)


def test_closed_form_agrees_with_the_paper() -> None:
    """Table 3: base has 65M parameters and big 213M, with a shared vocabulary of about 37000 tokens."""
    for preset, millions in (("base", 65), ("big", 213)):
        config = ModelConfig.preset(preset, src_vocab_size=37000, tgt_vocab_size=37000, share_embeddings=True)
        assert expected_parameters(config) == pytest.approx(millions * 1e6, rel=0.05)


def test_gradients_reach_every_parameter(make_model, tokens) -> None:
    model = make_model(tie_output=False, positional="learned", norm_first=True).train()
    src, tgt = tokens(3, 6), tokens(3, 5)
    labels = tokens(3, 5)
    loss = F.cross_entropy(model(src, tgt).flatten(0, 1), labels.flatten())
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        if name.endswith("k_proj.bias"):
            # Softmax is invariant to adding q.b_k to every score of a row: this gradient is zero by design.
            assert p.grad.abs().max() < 1e-6, name
        else:
            assert p.grad.abs().max() > 0, name


# -------------------------------------------------------------------------------------------- options


def test_norm_first_adds_final_layer_norms(make_model) -> None:
    post, pre = make_model(norm_first=False), make_model(norm_first=True)
    for stack in (post.encoder, post.decoder):
        assert isinstance(stack.final_norm, nn.Identity)
    for stack in (pre.encoder, pre.decoder):
        assert isinstance(stack.final_norm, nn.LayerNorm)
        assert stack.final_norm.normalized_shape == (pre.config.d_model,)
    assert count_parameters(pre) - count_parameters(post) == 2 * 2 * pre.config.d_model
    assert all(layer.attn_block.norm_first for layer in pre.encoder.layers)


def test_gelu_option(make_model, tokens) -> None:
    relu, gelu = make_model(activation="relu"), make_model(activation="gelu")
    assert gelu.encoder.layers[0].feed_forward.activation == "gelu"
    assert gelu.decoder.layers[-1].feed_forward.activation == "gelu"
    src, tgt = tokens(2, 5), tokens(2, 4)
    out = gelu(src, tgt)
    assert torch.isfinite(out).all()
    assert not torch.allclose(out, relu(src, tgt), atol=1e-4)  # same weights (same seed), another activation


def test_share_embeddings(make_model) -> None:
    shared = make_model(share_embeddings=True)
    assert shared.encoder.embedding is shared.decoder.embedding
    assert shared.encoder.embedding.weight is shared.decoder.embedding.weight
    separate = make_model()
    assert separate.encoder.embedding.weight is not separate.decoder.embedding.weight


def test_tie_output(make_model) -> None:
    tied = make_model(tie_output=True)
    assert tied.output.weight is tied.decoder.embedding.weight
    untied = make_model(tie_output=False)
    assert untied.output.weight is not untied.decoder.embedding.weight
    assert untied.output.weight.shape == (untied.config.tgt_vocab_size, untied.config.d_model)
    assert untied.output.bias is None
    all_shared = make_model(share_embeddings=True, tie_output=True)
    assert all_shared.output.weight is all_shared.encoder.embedding.weight


def test_pad_embeddings_start_at_zero(make_model) -> None:
    model = make_model()
    assert torch.all(model.encoder.embedding.weight[PAD_ID] == 0)
    assert torch.all(model.decoder.embedding.weight[PAD_ID] == 0)


def test_the_source_mask_hides_exactly_the_pad_id(make_model) -> None:
    model = make_model()
    src = torch.tensor([[5, PAD_ID + 1, PAD_ID, PAD_ID]])
    assert model.src_mask(src)[0, 0, 0].tolist() == [True, True, False, False]


def test_the_model_imports_no_data_module() -> None:
    """The model knows the special ids from ``transformer.tokens`` only: no tokenizer, corpus or batching."""
    imported = []
    for path in sorted(MODEL_DIR.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported.append(node.module)
            elif isinstance(node, ast.Import):
                imported += [alias.name for alias in node.names]
    assert "transformer.tokens" in imported  # so the check below cannot pass vacuously
    assert not [name for name in imported if name.startswith("transformer.data")]


def test_dropout_is_active_only_in_training(make_model, tokens) -> None:
    model = make_model(dropout=0.3)
    src, tgt = tokens(2, 5), tokens(2, 4)
    torch.testing.assert_close(model(src, tgt), model(src, tgt))
    model.train()
    assert not torch.allclose(model(src, tgt), model(src, tgt))


# ------------------------------------------------------------------------------------------ precision


def _bf16_cached_equals_full(model: Transformer, src: torch.Tensor, tgt: torch.Tensor, device_type: str) -> None:
    with torch.no_grad(), torch.autocast(device_type, dtype=torch.bfloat16):
        src_mask = model.src_mask(src)
        memory = model.encode(src, src_mask)
        full = model.decode(tgt, memory, src_mask)
        cache = model.init_cache(memory, max_len=tgt.size(1))
        steps = [model.decode(tgt[:, t : t + 1], memory, src_mask, cache=cache) for t in range(tgt.size(1))]
    assert full.dtype == torch.bfloat16
    torch.testing.assert_close(torch.cat(steps, dim=1).float(), full.float(), atol=5e-2, rtol=5e-2)


def test_bf16_autocast_is_close_to_fp32(make_model, tokens) -> None:
    model = make_model()
    src, tgt = padded_batch(tokens)
    reference = model(src, tgt)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(src, tgt)
    assert low.dtype == torch.bfloat16 and torch.isfinite(low).all()
    torch.testing.assert_close(low.float(), reference, atol=0.1, rtol=0.05)
    _bf16_cached_equals_full(model, src, tgt, "cpu")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_bf16_training_step_and_cached_decoding(make_model, tokens) -> None:
    device = torch.device("cuda")
    model = make_model(norm_first=True).to(device).train()
    src, tgt = (x.to(device) for x in padded_batch(tokens))
    labels = tokens(2, 7).to(device)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits = model(src, tgt)
    assert logits.device.type == "cuda" and torch.isfinite(logits).all()
    loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten())
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.device.type == "cuda" and torch.isfinite(p.grad).all(), name
    _bf16_cached_equals_full(model.eval(), src, tgt, "cuda")


# ------------------------------------------------------------------------------- attention weights


@pytest.mark.parametrize("norm_first", [False, True], ids=["post-LN", "pre-LN"])
@torch.no_grad()
def test_attention_weights_through_forward(make_model, tokens, norm_first: bool) -> None:
    """Every layer's probabilities: rows sum to 1, pad keys get 0, nothing above the decoder's diagonal, and
    asking for them changes no output."""
    model = make_model(norm_first=norm_first)
    src, tgt = tokens(3, 6), tokens(3, 5)
    src[1, 4:] = PAD_ID
    src[2, 2:] = PAD_ID
    logits, weights = model(src, tgt, return_attention=True)
    torch.testing.assert_close(logits, model(src, tgt), **TOL)
    hidden, _ = model(src, tgt, return_hidden=True, return_attention=True)
    torch.testing.assert_close(hidden, model(src, tgt, return_hidden=True), **TOL)

    c = model.config
    assert [len(weights.encoder), len(weights.decoder), len(weights.cross)] == [c.n_encoder_layers, c.n_decoder_layers,
                                                                                c.n_decoder_layers]
    real = src.ne(PAD_ID)[:, None, None, :]  # (B, 1, 1, S)
    for w in weights.encoder + weights.cross:
        assert w.shape[:2] == (3, c.n_heads) and w.shape[-1] == 6
        torch.testing.assert_close(w.sum(-1), torch.ones(w.shape[:-1]))
        assert torch.all(w.masked_select(~real.expand_as(w)) == 0)  # padding columns: exactly 0
        assert torch.all(w.masked_select(real.expand_as(w)) > 0)
    for w in weights.decoder:
        assert w.shape == (3, c.n_heads, 5, 5)
        torch.testing.assert_close(w.sum(-1), torch.ones(3, c.n_heads, 5))
        assert torch.all(w.triu(diagonal=1) == 0) and torch.all(w[..., torch.ones(5, 5, dtype=torch.bool).tril()] > 0)


def test_the_default_forward_never_builds_the_probabilities(make_model, tokens, monkeypatch) -> None:
    """The normal path stays on ``scaled_dot_product_attention``: the explicit softmax runs only when asked."""
    import transformer.model.attention as attention

    calls = []
    real_weights = attention.attention_weights
    monkeypatch.setattr(attention, "attention_weights", lambda *a, **k: calls.append(1) or real_weights(*a, **k))
    model = make_model()
    src, tgt = tokens(2, 6), tokens(2, 5)
    model(src, tgt)
    model(src, tgt, return_hidden=True)
    model.decode_step(tgt[:, :1], model.init_state(src, max_len=4))
    assert calls == []
    model(src, tgt, return_attention=True)
    c = model.config
    assert len(calls) == c.n_encoder_layers + 2 * c.n_decoder_layers


@torch.no_grad()
def test_cached_step_attention_equals_the_forced_pass(make_model, tokens) -> None:
    """Step by step with the KV cache and K hypotheses per sentence (folded into the cross-attention's query
    axis), each step's probabilities equal the rows of one teacher-forced pass: what a search attended to is
    what the forced pass shows."""
    model = make_model()
    src = tokens(2, 6)
    src[1, 4:] = PAD_ID
    k, tgt = 3, tokens(6, 5)  # row i*K + b: hypothesis b of sentence i
    state = model.init_state(src, max_len=5, beam_size=k)
    steps = {"self": [], "cross": []}
    for t in range(5):
        self_w, cross_w = [], []
        model.decoder(tgt[:, t : t + 1], state.memory, src_mask=state.src_mask, cache=state.cache,
                      self_weights=self_w, cross_weights=cross_w)
        steps["self"].append(self_w)
        steps["cross"].append(cross_w)
    _, forced = model(src.repeat_interleave(k, dim=0), tgt, return_attention=True)
    for layer in range(model.config.n_decoder_layers):
        cross = torch.cat([s[layer] for s in steps["cross"]], dim=2)  # (R, H, T, S)
        torch.testing.assert_close(cross, forced.cross[layer], **TOL)
        for t in range(5):  # step t sees keys 0..t
            torch.testing.assert_close(steps["self"][t][layer][:, :, 0, : t + 1], forced.decoder[layer][:, :, t, : t + 1],
                                       **TOL)
