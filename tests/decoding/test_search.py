"""Greedy and beam search: hand-scripted fake decoders for the bookkeeping, a tiny real model for the rest."""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from transformer.config import DecodeConfig, ModelConfig
from transformer.decoding.search import Hypothesis, beam_search, decode_batch, gnmt_length_penalty, greedy_decode
from transformer.inference import TorchTranslator, translate_texts
from transformer.model.transformer import Transformer
from transformer.tokens import BOS_ID, EOS_ID, PAD_ID, UNK_ID

A, B, C = 4, 5, 6  # the fake model's ordinary tokens
FAKE_VOCAB = 7

Script = Callable[[int, tuple[int, ...]], dict[int, float]]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one intra-op thread for tiny tensors


# ------------------------------------------------------------------------------------------ fake model
class FakeState:
    """Stands in for ``DecoderState``: a sentence id per sentence and (cached) a prefix per row.

    ``reorder`` follows the real state's rule (per-sentence data re-indexed only when sentences leave) and
    checks that the search keeps its contract: whole sentences, in order, beams never moved across them.
    """

    def __init__(self, sentence: torch.Tensor, beam_size: int, use_cache: bool) -> None:
        self.sentence = sentence  # (N,)
        self.beam_size = beam_size
        self.prefix = torch.zeros(sentence.size(0) * beam_size, 0, dtype=torch.long) if use_cache else None

    def reorder(self, index: torch.Tensor) -> None:
        k = self.beam_size
        blocks = self.sentence.repeat_interleave(k)[index].view(-1, k)  # (N', K) sentence of each new row
        assert bool((blocks == blocks[:, :1]).all()), "beams moved across sentences"
        assert bool((blocks[1:, 0] > blocks[:-1, 0]).all()), "sentences out of order"  # fake_src's ids increase
        if index.numel() < self.sentence.numel() * k:
            self.sentence = self.sentence[index[::k] // k]
        assert torch.equal(self.sentence, blocks[:, 0]), "sentences changed without leaving"
        if self.prefix is not None:
            self.prefix = self.prefix[index]


class FakeModel(nn.Module):
    """A decoder whose next-token probabilities are written by hand (fairseq's test style).

    ``script(sentence_id, prefix)`` gives the probabilities after ``prefix`` (generated tokens, no BOS); the
    sentence id is the first source token. Tokens it leaves out get probability ~1e-9. With a cache only the
    new token is read, so a wrong ``reorder`` makes the cached run disagree with the uncached one.
    """

    def __init__(self, script: Script) -> None:
        super().__init__()
        self.config = ModelConfig.preset("tiny", src_vocab_size=FAKE_VOCAB, tgt_vocab_size=FAKE_VOCAB)
        self.script = script
        self.rows_per_call: list[int] = []

    def init_state(self, src: torch.Tensor, max_len: int, *, beam_size: int = 1, use_cache: bool = True) -> FakeState:
        return FakeState(src[:, 0].clone(), beam_size, use_cache)

    def decode_step(self, tokens: torch.Tensor, state: FakeState) -> torch.Tensor:
        if state.prefix is not None:
            state.prefix = torch.cat([state.prefix, tokens[:, state.prefix.size(1) :]], dim=1)
            assert state.prefix.size(1) == tokens.size(1)
            prefix = state.prefix
        else:
            prefix = tokens
        sentence = state.sentence.repeat_interleave(state.beam_size)
        assert bool((prefix[:, 0] == BOS_ID).all()) and sentence.size(0) == prefix.size(0)
        self.rows_per_call.append(prefix.size(0))
        probs = torch.full((prefix.size(0), FAKE_VOCAB), 1e-9)
        for r in range(prefix.size(0)):
            for token, p in self.script(int(sentence[r]), tuple(prefix[r, 1:].tolist())).items():
                probs[r, token] = p
        return probs.log()


def fake_src(*lengths: int) -> torch.Tensor:
    """Padded sources: sentence i has id 10 + i as its first token, ``lengths[i]`` tokens in all (EOS included)."""
    rows = [[10 + i] + [A] * (n - 2) + [EOS_ID] for i, n in enumerate(lengths)]
    width = max(lengths)
    return torch.tensor([r + [PAD_ID] * (width - len(r)) for r in rows])


def settings(**kw) -> DecodeConfig:
    """Decoding settings: greedy (beam 1) and no length penalty unless given."""
    return DecodeConfig(**{"beam_size": 1, "length_penalty": 0.0, **kw})


def best(results: list[list[Hypothesis]]) -> list[list[int]]:
    """The tokens of each sentence's best hypothesis."""
    return [hyps[0].tokens for hyps in results]


def both_searches(model, src, **kw) -> tuple[list[list[int]], list[list[Hypothesis]]]:
    """Greedy tokens and beam (K=3, alpha 0) hypotheses; each checked equal with and without the cache."""
    results = []
    for use_cache in (True, False):
        g = greedy_decode(model, src, settings(**kw), use_cache=use_cache)
        assert all(len(hyps) == 1 for hyps in g)  # greedy: one hypothesis per sentence
        b = beam_search(model, src, settings(beam_size=3, n_best=3, **kw), use_cache=use_cache)
        results.append((best(g), [[h.tokens for h in hyps] for hyps in b], b))
    assert results[0][:2] == results[1][:2]
    return results[0][0], results[0][2]


# ------------------------------------------------------------------------------ bookkeeping on the fake
def test_beam_beats_greedy_with_correct_nbest_scores():
    table = {
        (): {A: 0.6, B: 0.4},
        (A,): {A: 0.45, B: 0.3, EOS_ID: 0.25},
        (B,): {EOS_ID: 0.9, A: 0.05, B: 0.05},
        (A, A): {EOS_ID: 1.0},
        (A, B): {EOS_ID: 1.0},
    }
    model = FakeModel(lambda s, prefix: table.get(prefix, {EOS_ID: 1.0}))
    src = fake_src(4)
    kw = dict(max_len_a=0.0, max_len_b=5)
    assert best(greedy_decode(model, src, settings(**kw))) == [[A, A]]
    for use_cache in (True, False):
        (hyps,) = beam_search(model, src, settings(beam_size=2, n_best=2, **kw), use_cache=use_cache)
        assert [h.tokens for h in hyps] == [[B], [A, A]]
        assert [h.log_prob for h in hyps] == pytest.approx([math.log(0.36), math.log(0.27)], abs=1e-4)
        assert [h.score for h in hyps] == [h.log_prob for h in hyps]  # alpha = 0: no normalisation
    # With alpha = 1 each score is divided by (5 + len) / 6, len counting the EOS.
    (hyps,) = beam_search(model, src, settings(beam_size=2, length_penalty=1.0, n_best=2, **kw))
    expected = {(B,): math.log(0.36) / (7 / 6), (A, A): math.log(0.27) / (8 / 6)}
    assert {tuple(h.tokens): h.score for h in hyps} == pytest.approx(expected, abs=1e-4)
    assert hyps[0].score >= hyps[1].score


def test_eos_and_min_len():
    table = {(): {EOS_ID: 0.7, A: 0.3}, (A,): {EOS_ID: 0.8, B: 0.2}, (A, B): {EOS_ID: 0.9, C: 0.1}}
    model = FakeModel(lambda s, prefix: table.get(prefix, {EOS_ID: 1.0}))
    src = fake_src(5)
    for min_len, expected in ((0, []), (1, [A]), (2, [A, B]), (3, [A, B, C])):
        greedy, beams = both_searches(model, src, max_len_a=0.0, max_len_b=6, min_len=min_len)
        assert greedy == [expected]
        assert beams[0][0].tokens == expected
        assert all(len(h.tokens) >= min_len for h in beams[0])
        assert all(EOS_ID not in h.tokens and BOS_ID not in h.tokens for h in beams[0])


def test_max_length_is_a_times_source_length_plus_b():
    model = FakeModel(lambda s, prefix: {A: 0.6, B: 0.4 - 1e-6, EOS_ID: 1e-6})  # never wants to stop
    src = fake_src(4, 7)  # 4 and 7 source tokens, EOS included
    greedy, beams = both_searches(model, src, max_len_a=0.5, max_len_b=1)
    assert [len(g) for g in greedy] == [3, 4]  # int(0.5 * 4 + 1), int(0.5 * 7 + 1)
    assert [{len(h.tokens) for h in hyps} for hyps in beams] == [{3}, {4}]
    greedy, beams = both_searches(model, src, max_len_a=0.0, max_len_b=0)
    assert greedy == [[], []] and [[h.tokens for h in hyps] for hyps in beams] == [[[]], [[]]]


@pytest.mark.parametrize("n", [1, 2, 3])
def test_no_repeat_ngram(n):
    model = FakeModel(lambda s, prefix: {A: 0.7, B: 0.2, C: 0.1 - 1e-6, EOS_ID: 1e-6})
    src = fake_src(5)
    greedy, _ = both_searches(model, src, max_len_a=0.0, max_len_b=8)
    assert greedy == [[A] * 8]
    greedy, beams = both_searches(model, src, max_len_a=0.0, max_len_b=8, no_repeat_ngram_size=n)
    for tokens in greedy + [h.tokens for h in beams[0]]:
        ngrams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
        assert len(ngrams) == len(set(ngrams)), tokens
    assert greedy[0][: n + 1] == [A] * n + [B]  # blocked exactly when the n-gram would repeat


def test_finished_sentences_leave_the_batch():
    # Sentence 10 stops at once; sentence 11 goes on for 5 tokens.
    def script(sentence: int, prefix: tuple[int, ...]) -> dict[int, float]:
        if sentence == 10 or len(prefix) == 5:
            return {EOS_ID: 0.9, A: 0.1}
        return {A: 0.99, EOS_ID: 0.01}

    model = FakeModel(script)
    src = fake_src(3, 8)
    assert best(greedy_decode(model, src, settings(max_len_a=0.0, max_len_b=5, min_len=0))) == [[], [A] * 5]
    assert model.rows_per_call == [2] + [1] * 5
    model.rows_per_call.clear()
    hyps = beam_search(model, src, settings(beam_size=2, max_len_a=0.0, max_len_b=5, min_len=0))
    assert [h[0].tokens for h in hyps] == [[], [A] * 5]
    # Sentence 10 needs a second finished hypothesis (K=2) before it can stop, then leaves.
    assert model.rows_per_call == [4, 4, 2, 2, 2, 2]


def test_random_script_cached_equals_uncached_and_alone():
    """Prefix-dependent random distributions: the cache reorder and batch shrinking must track every row."""

    def script(sentence: int, prefix: tuple[int, ...]) -> dict[int, float]:
        rng = random.Random(hash((sentence, prefix)))
        weights = [rng.random() ** 3 for _ in (UNK_ID, EOS_ID, A, B, C)]
        return {tok: w / sum(weights) for tok, w in zip((UNK_ID, EOS_ID, A, B, C), weights)}

    model = FakeModel(script)
    src = fake_src(6, 3, 9, 4)
    for k in (1, 2, 4):
        cfg = settings(beam_size=k, length_penalty=0.8, n_best=k, max_len_a=1.0, max_len_b=2)
        batched = {use_cache: beam_search(model, src, cfg, use_cache=use_cache) for use_cache in (True, False)}
        assert batched[True] == batched[False]
        for i in range(src.size(0)):
            row = src[i : i + 1, : int((src[i] != PAD_ID).sum())]
            alone = beam_search(model, row, cfg)
            assert alone[0] == batched[True][i]


# ---------------------------------------------------------------------------------- tiny real model
# conftest.py's ``tiny_model(vocab, seed)`` and ``random_src(batch, vocab, seed)`` fixtures build the inputs.
@torch.no_grad()
def teacher_forced_log_prob(model: Transformer, src_row: torch.Tensor, tokens: list[int]) -> float:
    """log P(tokens + EOS | src) by one full forward pass."""
    src = src_row[src_row != PAD_ID].unsqueeze(0)
    tgt_in = torch.tensor([[BOS_ID] + tokens])
    lprobs = F.log_softmax(model(src, tgt_in).float(), dim=-1)[0]  # (T, V)
    return float(lprobs.gather(1, torch.tensor([tokens + [EOS_ID]]).T).sum())


def test_beam_size_one_equals_greedy(tiny_model, random_src):
    model, src = tiny_model(23), random_src(8, 23)
    cfg = settings(max_len_a=1.0, max_len_b=4)
    greedy = greedy_decode(model, src, cfg)
    beam = beam_search(model, src, cfg)  # beam_size 1
    assert best(beam) == best(greedy)
    assert len({len(g) for g in best(greedy)}) > 1  # outputs of several lengths: the check is not vacuous
    assert [h[0].log_prob for h in greedy] == pytest.approx([h[0].log_prob for h in beam], abs=1e-4)
    assert [h[0].score for h in greedy] == pytest.approx([h[0].score for h in beam], abs=1e-4)
    assert decode_batch(model, src, cfg) == greedy


@pytest.mark.parametrize("beam_size", [1, 4])
def test_cached_equals_uncached(beam_size, tiny_model, random_src):
    model, src = tiny_model(23, seed=2), random_src(6, 23, seed=3)
    cfg = DecodeConfig(beam_size=beam_size, n_best=beam_size, length_penalty=0.6, max_len_a=1.2, max_len_b=5)
    cached = decode_batch(model, src, cfg, use_cache=True)
    uncached = decode_batch(model, src, cfg, use_cache=False)
    assert [[h.tokens for h in hs] for hs in cached] == [[h.tokens for h in hs] for hs in uncached]
    for a, b in zip(cached, uncached):
        assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=1e-4)


@pytest.mark.parametrize("beam_size", [1, 3])
def test_sentence_decodes_the_same_alone_and_in_a_padded_batch(beam_size, tiny_model, random_src):
    model, src = tiny_model(23, seed=4), random_src(7, 23, seed=5, min_len=2, max_len=12)
    cfg = DecodeConfig(beam_size=beam_size, n_best=beam_size, length_penalty=0.6, max_len_a=1.0, max_len_b=3)
    batched = decode_batch(model, src, cfg)
    for i in range(src.size(0)):
        alone = decode_batch(model, src[i : i + 1, : int((src[i] != PAD_ID).sum())], cfg)[0]
        assert [h.tokens for h in alone] == [h.tokens for h in batched[i]]
        assert [h.score for h in alone] == pytest.approx([h.score for h in batched[i]], abs=1e-4)


def test_nbest_sorted_distinct_and_scores_match_teacher_forcing(tiny_model, random_src):
    model, src = tiny_model(23, seed=6), random_src(4, 23, seed=7)
    alpha = 0.6
    nbest = beam_search(model, src, settings(beam_size=5, length_penalty=alpha, n_best=5, max_len_a=1.0, max_len_b=3))
    for i, hyps in enumerate(nbest):
        assert len(hyps) == 5
        scores = [h.score for h in hyps]
        assert scores == sorted(scores, reverse=True)
        assert len({tuple(h.tokens) for h in hyps}) == len(hyps)
        for h in hyps:
            assert not {PAD_ID, BOS_ID, EOS_ID} & set(h.tokens)
            assert h.log_prob == pytest.approx(teacher_forced_log_prob(model, src[i], h.tokens), abs=1e-4)
            assert h.score == pytest.approx(h.log_prob / gnmt_length_penalty(len(h.tokens) + 1, alpha), abs=1e-5)


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_large_beam_finds_the_exhaustive_best(alpha, tiny_model, random_src):
    """Vocabulary of 7 (4 specials + 3 tokens), at most 3 output tokens: score every possible output."""
    vocab, max_len = 7, 3
    model, src = tiny_model(vocab, seed=8), random_src(2, vocab, seed=9, min_len=3, max_len=5)
    words = [UNK_ID, 4, 5, 6]  # what the search may emit besides EOS (PAD and BOS are never generated)
    outputs = [list(t) for n in range(max_len + 1) for t in itertools.product(words, repeat=n)]  # 85
    # The beam is wide enough to never prune: it must return exactly the exhaustive ranking.
    cfg = settings(beam_size=80, length_penalty=alpha, n_best=5, min_len=0, max_len_a=0.0, max_len_b=max_len)
    found = beam_search(model, src, cfg)
    for i in range(src.size(0)):
        exact = sorted(
            ((teacher_forced_log_prob(model, src[i], y) / gnmt_length_penalty(len(y) + 1, alpha), y) for y in outputs),
            key=lambda pair: -pair[0],
        )
        assert [h.tokens for h in found[i]] == [y for _, y in exact[:5]]
        assert [h.score for h in found[i]] == pytest.approx([s for s, _ in exact[:5]], abs=1e-4)


def test_translate_reports_progress_after_each_batch(tokenizer, make_state):
    """``progress(n)`` after each decoded batch, n its sentences; blank texts are neither decoded nor counted."""
    _, model = make_state(tokenizer)
    translator = TorchTranslator(model.eval(), tokenizer, device="cpu")
    texts = ["a man rides", "", "two dogs play in the park", "a book", "   ", "a woman reads a book", "a dog"]
    calls: list[int] = []
    cfg = DecodeConfig(beam_size=2, batch_size=2, max_len_a=0.0, max_len_b=3)
    out = translator.translate(texts, cfg, progress=calls.append)
    assert calls == [2, 2, 1] and [len(h) for h in out] == [1, 0, 1, 1, 0, 1, 1]
    assert out == translator.translate(texts, cfg)  # the same without a callback
    translations = []
    assert translate_texts(translator, texts, cfg, progress=translations.append)[1] == ""
    assert translations == calls
