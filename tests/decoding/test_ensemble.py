"""Ensembles: several models decode as one, with the average of their next-token probabilities."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from transformer.checkpoint import save_checkpoint
from transformer.config import DecodeConfig, ModelConfig
from transformer.data.tokenizer import Tokenizer
from transformer.decoding.ensemble import Ensemble
from transformer.decoding.search import decode_batch, greedy_decode
from transformer.errors import CheckpointError
from transformer.inference import TorchTranslator, load_torch_translator, translate_texts
from transformer.model.transformer import Transformer
from transformer.tokens import BOS_ID, EOS_ID, PAD_ID

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one intra-op thread for tiny tensors

VOCAB = 23


def other_model(vocab: int = VOCAB, seed: int = 10, **overrides) -> Transformer:
    """A tiny model of another shape (wider, deeper decoder, shallower encoder) on the same vocabulary."""
    torch.manual_seed(seed)
    settings = dict(src_vocab_size=vocab, tgt_vocab_size=vocab, tie_output=False, d_model=48, d_ff=96,
                    n_encoder_layers=1, n_decoder_layers=3)
    config = ModelConfig.preset("tiny", **{**settings, **overrides})
    model = Transformer(config)
    nn.init.normal_(model.output.weight, std=0.4)
    return model.eval()


@torch.no_grad()
def mean_probs_log(models: list[Transformer], src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
    """log(mean of the models' softmax) by full teacher-forced forward passes, in float64: (B, T, V)."""
    probs = [F.softmax(m(src, tgt_in).double(), dim=-1) for m in models]
    return torch.stack(probs).mean(0).log()


def hypotheses(results) -> list[list[list[int]]]:
    return [[h.tokens for h in hyps] for hyps in results]


# ------------------------------------------------------------------------------------------- the maths
@pytest.mark.parametrize("beam_size", [1, 4])
def test_an_ensemble_of_one_decodes_as_the_model(beam_size, tiny_model, random_src):
    model, src = tiny_model(VOCAB, seed=2), random_src(6, VOCAB, seed=3)
    cfg = DecodeConfig(beam_size=beam_size, n_best=beam_size, length_penalty=0.6, max_len_a=1.2, max_len_b=5)
    alone = decode_batch(model, src, cfg)
    ensemble = decode_batch(Ensemble([model]), src, cfg)
    assert hypotheses(ensemble) == hypotheses(alone)
    assert len({len(hs[0].tokens) for hs in alone}) > 1  # outputs of several lengths: not vacuous
    # Not bit-exact: the ensemble returns log-probs, which the searches' log_softmax renormalises (~1e-7 off).
    for a, b in zip(ensemble, alone):
        assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=1e-5)
        assert [h.log_prob for h in a] == pytest.approx([h.log_prob for h in b], abs=1e-5)


def test_decode_is_the_log_of_the_mean_probability(tiny_model, random_src):
    models = [tiny_model(VOCAB, seed=1), other_model(seed=2)]
    ensemble = Ensemble(models).eval()
    src = random_src(5, VOCAB, seed=4)
    g = torch.Generator().manual_seed(5)
    tgt_in = torch.cat([torch.full((5, 1), BOS_ID), torch.randint(4, VOCAB, (5, 6), generator=g)], dim=1)
    with torch.no_grad():
        got = ensemble(src, tgt_in)  # teacher forcing
        state = ensemble.init_state(src, max_len=7)  # and step by step, each model with its own cached state
        steps = torch.stack([ensemble.decode_step(tgt_in[:, : t + 1], state) for t in range(7)], dim=1)
    assert got.dtype == torch.float32 and got.shape == (5, 7, VOCAB)
    torch.testing.assert_close(steps, got, atol=1e-5, rtol=0)
    expected = mean_probs_log(models, src, tgt_in)
    torch.testing.assert_close(got.double(), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(got.logsumexp(-1), torch.zeros(5, 7), atol=1e-5, rtol=0)  # normalised
    # Not vacuous: averaging the log-probabilities (a geometric mean) instead would be far off.
    geometric = torch.stack([F.log_softmax(m(src, tgt_in).double(), -1) for m in models]).mean(0)
    assert (geometric - expected).abs().max() > 0.05
    for model in models:  # and the ensemble is neither member alone
        assert (F.log_softmax(model(src, tgt_in).double(), -1) - expected).abs().max() > 0.05


@pytest.mark.parametrize("beam_size", [1, 4])
def test_cached_equals_uncached_with_models_of_different_shapes(beam_size, tiny_model, random_src):
    models = [tiny_model(VOCAB, seed=6), other_model(seed=7), tiny_model(VOCAB, seed=8)]
    assert len({(m.config.d_model, m.config.n_decoder_layers) for m in models}) == 2
    ensemble, src = Ensemble(models).eval(), random_src(7, VOCAB, seed=9)
    cfg = DecodeConfig(beam_size=beam_size, n_best=beam_size, length_penalty=0.6, max_len_a=1.2, max_len_b=5)
    cached = decode_batch(ensemble, src, cfg, use_cache=True)
    uncached = decode_batch(ensemble, src, cfg, use_cache=False)
    assert hypotheses(cached) == hypotheses(uncached)
    for a, b in zip(cached, uncached):
        assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=1e-4)
    assert len({len(hs[0].tokens) for hs in cached}) > 1  # sentences finish at different steps
    for model in models:  # the ensemble's translations are its own, not those of one member
        assert hypotheses(decode_batch(model, src, cfg)) != hypotheses(cached)


def test_greedy_takes_the_argmax_of_the_averaged_distribution_and_scores_match(tiny_model, random_src):
    models = [tiny_model(VOCAB, seed=11), other_model(seed=12)]
    with torch.no_grad():
        for model in models:
            model.output.weight[EOS_ID] *= 3  # so that some outputs end before their maximum length
    ensemble, src = Ensemble(models).eval(), random_src(8, VOCAB, seed=13)
    cfg = DecodeConfig(beam_size=1, length_penalty=0.0, max_len_a=1.0, max_len_b=4)
    results = decode_batch(ensemble, src, cfg)
    for model in models:  # not vacuous: neither member alone would give these outputs
        assert hypotheses(decode_batch(model, src, cfg)) != hypotheses(results)
    checked_eos = 0
    for i, (hyp,) in enumerate(results):
        row = src[i : i + 1, : int((src[i] != PAD_ID).sum())]
        max_len = int(cfg.max_len_a * row.size(1) + cfg.max_len_b)
        y = hyp.tokens
        lprobs = mean_probs_log(models, row, torch.tensor([[BOS_ID] + y]))[0]  # (len(y) + 1, V)
        allowed = lprobs.clone()
        allowed[:, [PAD_ID, BOS_ID]] = -math.inf  # never generated
        allowed[0, EOS_ID] = -math.inf  # min_len = 1
        chosen = allowed.argmax(-1).tolist()
        assert chosen[: len(y)] == y
        if len(y) < max_len:  # otherwise EOS was forced
            assert chosen[len(y)] == EOS_ID
            checked_eos += 1
        assert hyp.log_prob == pytest.approx(float(lprobs.gather(1, torch.tensor([y + [EOS_ID]]).T).sum()), abs=1e-4)
    assert checked_eos >= 2
    # The same hypotheses without the cache, and through greedy_decode.
    uncached = greedy_decode(ensemble, src, cfg, use_cache=False)
    assert hypotheses(uncached) == hypotheses(results)
    assert [h[0].log_prob for h in uncached] == pytest.approx([h[0].log_prob for h in results], abs=1e-4)


def test_beam_hypotheses_score_the_averaged_distribution(tiny_model, random_src):
    models = [tiny_model(VOCAB, seed=14), other_model(seed=15)]
    ensemble, src = Ensemble(models).eval(), random_src(3, VOCAB, seed=16)
    cfg = DecodeConfig(beam_size=4, n_best=4, length_penalty=0.0, max_len_a=1.0, max_len_b=3)
    for i, hyps in enumerate(decode_batch(ensemble, src, cfg)):
        row = src[i : i + 1, : int((src[i] != PAD_ID).sum())]
        assert len(hyps) == 4
        for h in hyps:
            lprobs = mean_probs_log(models, row, torch.tensor([[BOS_ID] + h.tokens]))[0]
            assert h.log_prob == pytest.approx(float(lprobs.gather(1, torch.tensor([h.tokens + [EOS_ID]]).T).sum()),
                                               abs=1e-4)


@torch.no_grad()
def test_the_models_states_reorder_together(tiny_model, random_src):
    """One ``reorder`` on the ensemble's state moves every model's state (memories of different widths); the
    next step then equals a fresh uncached ensemble state on the kept rows."""
    models = [tiny_model(VOCAB, seed=20), other_model(seed=21)]
    ensemble, src, k = Ensemble(models).eval(), random_src(3, VOCAB, seed=22), 2
    state = ensemble.init_state(src, max_len=6, beam_size=k)
    assert [s.memory.shape[-1] for s in state.states] == [32, 48]  # each model's own memory, no concatenation
    g = torch.Generator().manual_seed(23)
    tgt = torch.cat([torch.full((6, 1), BOS_ID), torch.randint(4, VOCAB, (6, 5), generator=g)], dim=1)
    for t in range(2):
        ensemble.decode_step(tgt[:, : t + 1], state)
    index = torch.tensor([1, 1, 5, 4])  # sentence 1 leaves; beams chosen within sentences 0 and 2
    state.reorder(index)
    tgt = tgt[index]
    assert all(s.rows == 4 and s.memory.size(0) == 2 and s.length == 2 for s in state.states)
    fresh = ensemble.init_state(src[[0, 2]], max_len=6, beam_size=k, use_cache=False)
    torch.testing.assert_close(ensemble.decode_step(tgt[:, :3], state), ensemble.decode_step(tgt[:, :3], fresh))
    rows_src = src[[0, 2]].repeat_interleave(k, dim=0)
    torch.testing.assert_close(ensemble.decode_step(tgt[:, :4], state), ensemble(rows_src, tgt[:, :4])[:, -1],
                               atol=1e-5, rtol=0)


def test_the_shortest_learned_position_table_caps_the_lengths(tiny_model, random_src):
    # Model 0 is sinusoidal (1024 positions); model 1's learned table has 10: lengths and inputs must fit it.
    models = [tiny_model(VOCAB, seed=17), other_model(seed=18, positional="learned", max_positions=10)]
    ensemble = Ensemble(models).eval()
    assert ensemble.config.positional == "learned" and ensemble.config.max_positions == 10
    src = random_src(3, VOCAB, seed=19, min_len=8, max_len=9)
    cfg = DecodeConfig(beam_size=1, max_len_a=2.0, max_len_b=20, min_len=30)  # never allowed to stop early
    assert [len(hyps[0].tokens) for hyps in greedy_decode(ensemble, src, cfg)] == [9, 9, 9]  # position 9 (fed after 9 tokens) is the table's last


def test_models_must_share_the_vocabulary(tiny_model):
    with pytest.raises(ValueError, match="at least one model"):
        Ensemble([])
    with pytest.raises(ValueError, match="src_vocab_size"):
        Ensemble([tiny_model(VOCAB), tiny_model(VOCAB + 6)])
    with pytest.raises(ValueError, match="model 1 has tgt_vocab_size=29"):
        Ensemble([tiny_model(VOCAB), other_model(tgt_vocab_size=29)])


# ------------------------------------------------------------------------------------------ checkpoints
@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, tokenizer, make_state):
    """Two checkpoints of one vocabulary (different weights) and the models they hold."""
    folder = tmp_path_factory.mktemp("ensemble")
    models = []
    for seed in (0, 1):
        state, model = make_state(tokenizer, seed)
        save_checkpoint(state, folder / f"m{seed}.pt")
        models.append(model.eval())
    return folder, models


def test_load_torch_translator_of_several_checkpoints_decodes_their_ensemble(checkpoints, tokenizer):
    folder, models = checkpoints
    single, _ = load_torch_translator([folder / "m0.pt"])
    assert type(single.model) is Transformer  # one checkpoint: the plain model
    loaded, config = load_torch_translator([folder / "m0.pt", folder / "m1.pt"])
    assert isinstance(loaded.model, Ensemble) and len(loaded.model.models) == 2 and not loaded.model.training
    assert loaded.tokenizer.to_state() == tokenizer.to_state() and config.model == models[0].config
    texts = ["a man rides a bike", "two dogs play in the park", "a woman reads"]
    cfg = DecodeConfig(beam_size=3, max_len_a=0.5, max_len_b=4)
    got = translate_texts(loaded, texts, cfg)
    assert got == translate_texts(TorchTranslator(Ensemble(models), tokenizer), texts, cfg)
    assert got != translate_texts(single, texts, cfg)  # not the first model alone
    assert len(got) == 3 and all(isinstance(t, str) for t in got)


def test_load_ensemble_refuses_another_vocabulary(checkpoints, tokenizer, make_state, tmp_path):
    folder, _ = checkpoints
    texts = ["the cat sleeps on a red sofa", "an old car drives past the shop", "children sing a song"] * 5
    other = Tokenizer.train(texts, texts, tmp_path / "spm", vocab_size=40, joint=True)
    assert (other.src_vocab_size, other.tgt_vocab_size) == (tokenizer.src_vocab_size, tokenizer.tgt_vocab_size)
    state, _ = make_state(other, seed=2)  # same sizes: only the vocabulary check can tell
    save_checkpoint(state, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="another vocabulary"):
        load_torch_translator([folder / "m0.pt", tmp_path / "other.pt"])
    with pytest.raises(CheckpointError, match="no checkpoints"):
        load_torch_translator([])
    with pytest.raises(CheckpointError, match="not found"):
        load_torch_translator([folder / "m0.pt", tmp_path / "missing.pt"])


def test_load_ensemble_accepts_one_vocabulary_trained_with_other_thread_counts(
    checkpoints, tokenizer, make_state, tmp_path, monkeypatch
):
    """SentencePiece records num_threads (the CPU count) in the model file: runs on two machines give other
    bytes for the same vocabulary, which must not stop them from forming an ensemble."""
    folder, _ = checkpoints
    texts = ["a man rides a bike", "two dogs play in the park", "a woman reads a book"] * 5  # as the fixture's
    monkeypatch.setattr("transformer.data.tokenizer.os.cpu_count", lambda: 97)
    retrained = Tokenizer.train(texts, texts, tmp_path / "spm", vocab_size=40, joint=True)
    assert retrained.to_state()["src_model"] != tokenizer.to_state()["src_model"]  # other bytes ...
    state, _ = make_state(retrained, seed=3)
    save_checkpoint(state, tmp_path / "same_vocab.pt")
    loaded, _ = load_torch_translator([folder / "m0.pt", tmp_path / "same_vocab.pt"])  # ... same pieces
    assert isinstance(loaded.model, Ensemble)
