"""Greedy decoding and beam search on tensors, batched over sentences and beams, with the KV cache.

Text in, text out is one level up: ``transformer.inference`` (sorting, batching, truncation, detokenization).

Conventions shared by both searches:

- ``src`` is a padded (B, S) LongTensor (PAD_ID after each row's final EOS); outputs exclude BOS and EOS.
- The maximum output length of a sentence is ``int(max_len_a * src_len + max_len_b)`` tokens (EOS not
  counted), where ``src_len`` is its number of non-pad source tokens, EOS included (as in fairseq). At that
  length EOS is forced. Before ``min_len`` tokens EOS is forbidden. PAD and BOS are never generated.
  ``no_repeat_ngram_size = n > 0`` forbids any token that would repeat an n-gram of the output. Should
  these rules leave a row no token at all, it ends (EOS), even before ``min_len``.
- Scores are sums of the model's log-probabilities (float32 ``log_softmax``) of the tokens *and* the final
  EOS, so they can be recomputed by teacher forcing. A hypothesis' ``score`` divides this sum by the GNMT
  length penalty ``((5 + len) / 6) ** alpha``, with ``len`` = tokens + 1 (the EOS); ``alpha = 0`` leaves
  the raw sum.
- The model's ``init_state`` encodes the batch once into a decoder state (a ``DecoderState``, or an ensemble's
  ``EnsembleState``); ``decode_step`` gives the next-token logits of every row. Beams are flattened into the
  batch axis (row ``i * K + k`` is beam k of sentence i). The searches change the state through one operation,
  ``state.reorder(index)``: it selects the beams and drops the sentences whose search is over, so the work
  shrinks as they finish.
- Both searches have one signature, ``(model, src, cfg, *, use_cache=True)``, and one result: for each
  sentence a list of ``Hypothesis`` (greedy: exactly one).

Beam search follows fairseq's candidate rule: each step takes the 2K best (beam, token) extensions; the EOS
extensions among the first K become finished hypotheses, the first K non-EOS extensions the new beams. A
sentence keeps its K best finished hypotheses and stops when no open beam can still beat the worst of them,
using the exact bound of tensor2tensor's beam search: an open beam's log-prob can only fall, so its best
reachable score is ``log_prob / max(lp(len + 1), lp(max_len + 1))`` (for ``alpha >= 0`` the penalty at the
maximum length). With ``alpha = 0`` and K = 1 this reduces to greedy decoding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F

from transformer.config import DecodeConfig, ModelConfig
from transformer.tokens import BOS_ID, EOS_ID, PAD_ID

NEG_INF = float("-inf")


@dataclass
class Hypothesis:
    """One translation: ``tokens`` without BOS/EOS, its length-penalised ``score`` and raw ``log_prob``."""

    tokens: list[int]
    score: float
    log_prob: float


class SearchState(Protocol):
    """What a search needs of a decoder state: one reorder along the batch axis (see ``DecoderState.reorder``)."""

    def reorder(self, index: torch.Tensor) -> None: ...


class SearchModel(Protocol):
    """What the searches need of a model: a ``Transformer``, an ``Ensemble``, or a scripted fake in tests."""

    config: ModelConfig

    def init_state(
        self, src: torch.Tensor, max_len: int, *, beam_size: int = 1, use_cache: bool = True
    ) -> SearchState: ...

    def decode_step(self, tokens: torch.Tensor, state: SearchState) -> torch.Tensor: ...


def gnmt_length_penalty(length: torch.Tensor | int, alpha: float) -> torch.Tensor | float:
    """GNMT length penalty ((5 + length) / 6) ** alpha (Wu et al., 2016); 1 when ``alpha`` is 0."""
    return ((5 + length) / 6) ** alpha


# ------------------------------------------------------------------------------------------ shared steps
def _max_lengths(config: ModelConfig, src: torch.Tensor, a: float, b: int) -> torch.Tensor:
    """(B, S) padded source ids -> (B,) maximum output lengths ``int(a * src_len + b)``."""
    src_len = src.ne(PAD_ID).sum(-1).tolist()
    # Python floats, so that the cap is exactly what ``int(a * len + b)`` gives by hand.
    max_lens = torch.tensor([int(a * n + b) for n in src_len], dtype=torch.long, device=src.device)
    if config.positional == "learned":  # position max_len (fed after max_len tokens) must exist
        max_lens = max_lens.clamp(max=config.max_positions - 1)
    return max_lens


def _step_log_probs(model: SearchModel, tokens: torch.Tensor, step: int, state: SearchState) -> torch.Tensor:
    """Next-token log-probabilities of the (R, step + 1) prefixes -> (R, V) float32."""
    return F.log_softmax(model.decode_step(tokens[:, : step + 1], state).float(), dim=-1)


def _constrain(
    lprobs: torch.Tensor,
    generated: torch.Tensor,
    max_lens: torch.Tensor,
    *,
    min_len: int,
    no_repeat_ngram_size: int,
    shortest_max_len: int = 0,
) -> torch.Tensor:
    """Apply the decoding rules to (R, V) log-probs in place (no renormalisation).

    Args:
        generated: (R, t) tokens generated so far (no BOS).
        max_lens: (R,) maximum output lengths; rows with ``t >= max_len`` may only produce EOS.
        shortest_max_len: a host-side lower bound of ``max_lens``: before it no row can be forced to end.

    Returns:
        ``lprobs`` with forbidden tokens at -inf. A row left with nothing allowed gets EOS back, so every
        row always has a finite choice.
    """
    step = generated.size(1)
    eos = lprobs[:, EOS_ID].clone()
    lprobs[:, PAD_ID] = NEG_INF
    lprobs[:, BOS_ID] = NEG_INF
    if step < min_len:
        lprobs[:, EOS_ID] = NEG_INF
    n = no_repeat_ngram_size
    if n > 0 and step >= n:
        windows = generated.unfold(1, n, 1)  # (R, t - n + 1, n): every n-gram so far
        seen = (windows[:, :, :-1] == generated[:, step - n + 1 :].unsqueeze(1)).all(-1)  # (R, W) same n-1 prefix
        banned = torch.zeros_like(lprobs).scatter_add_(1, windows[:, :, -1], seen.to(lprobs.dtype))
        lprobs.masked_fill_(banned > 0, NEG_INF)
    force_eos = step >= max_lens  # (R,)
    # Only these bans can leave a row with nothing allowed (log-softmax of finite logits is finite, and
    # PAD/BOS alone never cover the vocabulary). Decided on the host: no device sync, and on most steps no
    # full passes over (R, V).
    may_ban_all = step < min_len or (n > 0 and step >= n)
    if may_ban_all:
        force_eos = force_eos | torch.isinf(lprobs).all(-1)
    if may_ban_all or step >= shortest_max_len:
        lprobs.masked_fill_(force_eos.unsqueeze(1), NEG_INF)
        lprobs[:, EOS_ID] = torch.where(force_eos, eos, lprobs[:, EOS_ID])
    return lprobs


def _start(
    model: SearchModel, src: torch.Tensor, cfg: DecodeConfig, beam_size: int, use_cache: bool
) -> tuple[SearchState, torch.Tensor, torch.Tensor]:
    """Encode once for ``beam_size`` rows per sentence.

    Returns:
        the decoder state, max_lens (B,), and the (B*K, L+1) token buffer (BOS then PAD), L = max(max_lens).
    """
    max_lens = _max_lengths(model.config, src, cfg.max_len_a, cfg.max_len_b)
    longest = int(max_lens.max())
    state = model.init_state(src, longest + 1, beam_size=beam_size, use_cache=use_cache)
    tokens = torch.full((src.size(0) * beam_size, longest + 1), PAD_ID, dtype=torch.long, device=src.device)
    tokens[:, 0] = BOS_ID
    return state, max_lens, tokens


# ------------------------------------------------------------------------------------------------ greedy
@torch.no_grad()
def greedy_decode(
    model: SearchModel, src: torch.Tensor, cfg: DecodeConfig, *, use_cache: bool = True
) -> list[list[Hypothesis]]:
    """Pick the most probable token at each step (``cfg.beam_size`` and ``cfg.n_best`` are not read).

    Args:
        model: an eval-mode ``Transformer`` or ``Ensemble`` (anything with ``config/init_state/decode_step``).
        src: (B, S) padded source ids, each row ending with EOS.
        cfg: max_len_a/max_len_b (maximum output length ``int(a * src_len + b)``), min_len (EOS forbidden
            before), no_repeat_ngram_size (if > 0, never repeat an n-gram of this size), length_penalty (of
            the score only).
        use_cache: decode step by step with the KV cache (False recomputes the prefix; for checks).

    Returns:
        For each of the B sentences, one ``Hypothesis``: tokens without BOS/EOS, the raw log-prob (EOS
        included) and the score (log-prob over the length penalty).
    """
    state, max_lens, tokens = _start(model, src, cfg, 1, use_cache)
    batch, longest, shortest = src.size(0), tokens.size(1) - 1, int(max_lens.min())
    out = torch.full((batch, longest), PAD_ID, dtype=torch.long, device=src.device)
    lengths = max_lens.clone()
    log_probs = torch.zeros(batch, device=src.device)
    active = torch.arange(batch, device=src.device)  # original index of each row still decoding
    for t in range(longest + 1):
        lprobs = _step_log_probs(model, tokens, t, state)  # (R, V)
        lprobs = _constrain(
            lprobs, tokens[:, 1 : t + 1], max_lens[active], min_len=cfg.min_len,
            no_repeat_ngram_size=cfg.no_repeat_ngram_size, shortest_max_len=shortest,
        )
        best_lprob, best = lprobs.max(-1)  # (R,)
        log_probs[active] += best_lprob
        ended = best == EOS_ID
        if t < longest:
            out[active, t] = best.masked_fill(ended, PAD_ID)
            tokens[:, t + 1] = best
        lengths[active[ended]] = t
        n_ended = int(ended.sum())  # the step's one host-device sync
        if n_ended == ended.numel():
            break
        if n_ended:  # drop finished sentences from the batch
            keep = (~ended).nonzero().squeeze(1)
            active, tokens = active[keep], tokens[keep]
            state.reorder(keep)
    return [
        [Hypothesis(row[:n], lp / gnmt_length_penalty(n + 1, cfg.length_penalty), lp)]
        for row, n, lp in zip(out.tolist(), lengths.tolist(), log_probs.tolist())
    ]


# ------------------------------------------------------------------------------------------- beam search
@dataclass
class _Finished:
    """The K best finished hypotheses of every sentence, best first; a -inf score marks an empty slot."""

    scores: torch.Tensor  # (B, K) length-penalised
    log_probs: torch.Tensor  # (B, K) raw sums, EOS included
    lengths: torch.Tensor  # (B, K) tokens without EOS
    tokens: torch.Tensor  # (B, K, L)

    @classmethod
    def empty(cls, batch: int, k: int, longest: int, device: torch.device) -> _Finished:
        return cls(
            scores=torch.full((batch, k), NEG_INF, device=device),
            log_probs=torch.full((batch, k), NEG_INF, device=device),
            lengths=torch.zeros(batch, k, dtype=torch.long, device=device),
            tokens=torch.full((batch, k, longest), PAD_ID, dtype=torch.long, device=device),
        )

    def add(
        self, sentences: torch.Tensor, scores: torch.Tensor, log_probs: torch.Tensor, tokens: torch.Tensor, length: int
    ) -> None:
        """Merge new hypotheses of ``length`` tokens: (N, K) scores/log_probs, (N, K, L) tokens, of ``sentences`` (N,)."""
        k = self.scores.size(1)
        top, index = torch.cat([self.scores[sentences], scores], dim=1).topk(k, dim=1)  # K best of (N, 2K)
        self.scores[sentences] = top
        self.log_probs[sentences] = torch.cat([self.log_probs[sentences], log_probs], 1).gather(1, index)
        lengths = torch.cat([self.lengths[sentences], torch.full_like(index, length)], 1)
        self.lengths[sentences] = lengths.gather(1, index)
        merged = torch.cat([self.tokens[sentences], tokens], 1)  # (N, 2K, L)
        self.tokens[sentences] = merged.gather(1, index.unsqueeze(-1).expand(-1, -1, merged.size(-1)))

    def hypotheses(self, n_best: int) -> list[list[Hypothesis]]:
        """The ``n_best`` best of each sentence as Python lists (empty slots left out)."""
        results = []
        for scores, log_probs, lengths, tokens in zip(
            self.scores.tolist(), self.log_probs.tolist(), self.lengths.tolist(), self.tokens.tolist()
        ):
            slots = zip(scores[:n_best], log_probs, lengths, tokens)
            results.append([Hypothesis(toks[:n], score, lp) for score, lp, n, toks in slots if score != NEG_INF])
        return results


@torch.no_grad()
def beam_search(
    model: SearchModel, src: torch.Tensor, cfg: DecodeConfig, *, use_cache: bool = True
) -> list[list[Hypothesis]]:
    """Batched beam search (see the module docstring for the rules).

    Args:
        model, src, use_cache: as in ``greedy_decode``.
        cfg: as in ``greedy_decode``, and beam_size (K, open beams per sentence), length_penalty (GNMT alpha;
            0 ranks by the raw log-prob sum), n_best (hypotheses returned per sentence, <= K).

    Returns:
        For each of the B sentences, up to ``cfg.n_best`` distinct hypotheses, best first.
    """
    k, alpha, device = cfg.beam_size, cfg.length_penalty, src.device
    state, max_lens, tokens = _start(model, src, cfg, k, use_cache)
    batch, longest, shortest = src.size(0), tokens.size(1) - 1, int(max_lens.min())
    finished = _Finished.empty(batch, k, longest, device)
    scores = torch.full((batch, k), NEG_INF, device=device)  # (N, K) raw log-probs of the open beams
    scores[:, 0] = 0.0  # all beams start as BOS: keep one, or the first step would pick K copies
    active = torch.arange(batch, device=device)  # (N,) original index of each sentence still searching
    for t in range(longest + 1):
        n = active.numel()
        lprobs = _step_log_probs(model, tokens, t, state)  # (N*K, V)
        lprobs = _constrain(
            lprobs, tokens[:, 1 : t + 1], max_lens[active].repeat_interleave(k),
            min_len=cfg.min_len, no_repeat_ngram_size=cfg.no_repeat_ngram_size, shortest_max_len=shortest,
        )
        vocab = lprobs.size(-1)
        cand = (scores.unsqueeze(-1) + lprobs.view(n, k, vocab)).view(n, k * vocab)
        cand_scores, cand_index = cand.topk(2 * k, dim=1)  # (N, 2K), best first
        cand_beams, cand_tokens = cand_index // vocab, cand_index % vocab
        row_base = (torch.arange(n, device=device) * k).unsqueeze(1)  # (N, 1): first row of each sentence

        is_eos = cand_tokens == EOS_ID
        if bool(is_eos[:, :k].any()):  # EOS among the first K candidates: finished hypotheses
            log_probs = cand_scores[:, :k].masked_fill(~is_eos[:, :k], NEG_INF)  # (N, K)
            prefixes = tokens[(row_base + cand_beams[:, :k]).view(-1), 1:].view(n, k, longest)
            finished.add(active, log_probs / gnmt_length_penalty(t + 1, alpha), log_probs, prefixes, t)

        # The first K non-EOS candidates are the new beams (there are at least K: at most K are EOS).
        order = is_eos.long() * (2 * k) + torch.arange(2 * k, device=device)
        keep_cand = order.topk(k, dim=1, largest=False).indices  # (N, K), in rank order
        scores = cand_scores.gather(1, keep_cand)
        parents = row_base + cand_beams.gather(1, keep_cand)  # (N, K) rows of the current batch
        next_tokens = cand_tokens.gather(1, keep_cand)

        # Done when no open beam can still enter the K best finished (exact bound, see module docstring).
        best_penalty = torch.maximum(
            torch.as_tensor(gnmt_length_penalty(t + 2, alpha), device=device),
            gnmt_length_penalty(max_lens[active] + 1, alpha),
        )
        done = scores[:, 0] / best_penalty <= finished.scores[active, -1]  # (N,)
        if t == longest or bool(done.all()):
            break
        keep = (~done).nonzero().squeeze(1)  # (N',) sentences that go on
        rows = parents[keep].view(-1)  # (N'*K,) beam selection and sentence dropping in one index
        tokens = tokens[rows]
        tokens[:, t + 1] = next_tokens[keep].view(-1)
        scores, active = scores[keep], active[keep]
        state.reorder(rows)
    return finished.hypotheses(cfg.n_best)


# ----------------------------------------------------------------------------------------- entry points
def decode_batch(
    model: SearchModel, src: torch.Tensor, cfg: DecodeConfig, *, use_cache: bool = True
) -> list[list[Hypothesis]]:
    """Decode (B, S) source ids with the settings of ``cfg``: greedy when ``beam_size == 1``, else beam search.

    Returns:
        For each sentence, a list of up to ``cfg.n_best`` hypotheses, best first (one for greedy).
    """
    search = greedy_decode if cfg.beam_size == 1 else beam_search
    return search(model, src, cfg, use_cache=use_cache)
