"""What a translation attended to: attention maps of a sentence pair, and word alignments from them.

A finished translation's attention is computed afterwards by one teacher-forced pass over the source and the
hypothesis with weights requested (``Transformer.forward(..., return_attention=True)``). It is the attention
the search saw: cached step-by-step decoding computes the same numbers as a full pass, and the searches keep
the fast SDPA path.

Alignment (as fairseq's ``--print-alignment``): the target piece predicted at decoder position t is linked to
the source that position attends to most, in the cross-attention of one decoder layer averaged over its heads.
Pieces are mapped to words (a SentencePiece piece that starts with '▁' starts a word): a target word's row is
the mean of its pieces' rows, a source word's column the sum of its pieces' columns (its share of the
attention), and each target word is linked to its argmax source word. The source EOS, where attention parks
when it has nowhere better to go, is never a candidate. Links are ``i-j`` pairs, 0-based source word i and
target word j, the words being the whitespace-separated words of the source text and of the translation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from transformer.config import DecodeConfig
from transformer.data.batching import pad_ids
from transformer.data.tokenizer import Tokenizer
from transformer.decoding.search import Hypothesis
from transformer.inference.torch_engine import TorchTranslator
from transformer.inference.translator import best_texts, encode_sources
from transformer.model.transformer import Transformer
from transformer.tokens import BOS_ID, EOS_ID

WORD_START = "\u2581"  # SentencePiece's word-boundary marker
ALIGNMENT_LAYER = -1  # the default layer: the last (1-based; negative counts from the end)


@dataclass
class SentenceAttention:
    """The attention probabilities of one sentence pair, every layer and head, as float32 CPU tensors.

    Attributes:
        src_pieces: the S source pieces, EOS ("</s>") last: the keys of encoder and cross-attention.
        tgt_pieces: the T target pieces the decoder predicts, EOS last: the rows of cross-attention.
        decoder_input: the T decoder inputs, BOS ("<s>") first: rows and keys of decoder self-attention.
        encoder: (L_enc, H, S, S); decoder: (L_dec, H, T, T); cross: (L_dec, H, T, S).
        src_prefix: the leading source pieces that are not words of the text: 1 for a multilingual model's
            target-language tag ("<2de>"), else 0.
    """

    src_pieces: list[str]
    tgt_pieces: list[str]
    decoder_input: list[str]
    encoder: torch.Tensor
    decoder: torch.Tensor
    cross: torch.Tensor
    src_prefix: int = 0


@torch.no_grad()
def forced_attention(
    model: Transformer,
    tokenizer: Tokenizer,
    src_ids: Sequence[Sequence[int]],
    tgt_ids: Sequence[Sequence[int]],
    *,
    device: torch.device | str,
    batch_size: int = 64,
) -> list[SentenceAttention]:
    """Attention of each (source, target) pair in one teacher-forced pass per batch.

    Args:
        tokenizer: the vocabulary that encoded ``src_ids`` (with the target's tag of a multilingual model).
        src_ids: source ids, each ending with EOS (as ``encode_sources`` gives them).
        tgt_ids: target pieces without BOS/EOS (a ``Hypothesis.tokens``, or an encoded reference).

    Padding never changes a real position's attention, so pairs are batched freely and cut back to size.
    """
    src_vocab, tgt_vocab = tokenizer.pieces()
    was_training = model.training
    model.eval()
    out: list[SentenceAttention] = []
    try:
        for start in range(0, len(src_ids), batch_size):
            srcs = src_ids[start : start + batch_size]
            tgts = [list(t) for t in tgt_ids[start : start + batch_size]]
            _, weights = model(
                pad_ids(srcs, device), pad_ids([[BOS_ID] + t for t in tgts], device), return_attention=True
            )
            stacked = [torch.stack(w, dim=1).float().cpu() for w in (weights.encoder, weights.decoder, weights.cross)]
            for b, (src, tgt) in enumerate(zip(srcs, tgts)):
                s, t = len(src), len(tgt) + 1  # decoder positions: BOS + pieces in, pieces + EOS out
                out.append(
                    SentenceAttention(
                        src_pieces=[src_vocab[i] for i in src],
                        tgt_pieces=[tgt_vocab[i] for i in tgt + [EOS_ID]],
                        decoder_input=[tgt_vocab[i] for i in [BOS_ID] + tgt],
                        encoder=stacked[0][b, :, :, :s, :s],
                        decoder=stacked[1][b, :, :, :t, :t],
                        cross=stacked[2][b, :, :, :t, :s],
                        src_prefix=len(tokenizer.source_prefix),
                    )
                )
    finally:
        model.train(was_training)
    return out


def word_ids(pieces: Sequence[str]) -> list[int]:
    """The 0-based word of each SentencePiece piece: a piece that starts with '▁' starts a new word, unless the
    word so far is a bare '▁' (as before a digit: '▁', '4'), which the next piece joins."""
    ids, word, bare = [], -1, False
    for piece in pieces:
        if word < 0 or (piece.startswith(WORD_START) and not bare):
            word, bare = word + 1, True  # a new word, without text so far
        bare = bare and piece == WORD_START
        ids.append(word)
    return ids


def layer_index(layer: int, n_layers: int) -> int:
    """0-based index of ``layer``, counted from 1 (first) or from -1 (last).

    Raises:
        ValueError: the model has no such layer.
    """
    if not (1 <= layer <= n_layers or -n_layers <= layer <= -1):
        raise ValueError(f"layer {layer} does not exist: the decoder has layers 1..{n_layers} (or -1..-{n_layers})")
    return layer - 1 if layer > 0 else n_layers + layer


def word_alignment(cross: torch.Tensor, src_pieces: Sequence[str], tgt_pieces: Sequence[str]) -> list[tuple[int, int]]:
    """Source-target word links from a (T, S) piece attention matrix (see the module docstring).

    Args:
        cross: (T, S) attention of the T target pieces (rows) over the S source pieces, EOS excluded on both
            sides (EOS rows and columns, if present, must be cut off by the caller).
        src_pieces, tgt_pieces: the S and T piece strings, for the word boundaries.

    Returns:
        (source word, target word) pairs, one per target word, in target order.
    """
    if cross.shape != (len(tgt_pieces), len(src_pieces)):
        raise ValueError(f"attention of shape {tuple(cross.shape)} for {len(tgt_pieces)} x {len(src_pieces)} pieces")
    if not len(src_pieces) or not len(tgt_pieces):
        return []
    src_words = torch.tensor(word_ids(src_pieces))
    tgt_words = torch.tensor(word_ids(tgt_pieces))
    n_src, n_tgt = int(src_words[-1]) + 1, int(tgt_words[-1]) + 1
    cross = cross.float()
    # (T, S) -> (T, S_words): each source word's share of a piece's attention.
    per_src_word = torch.zeros(len(tgt_pieces), n_src).index_add_(1, src_words, cross)
    # (T, S_words) -> (T_words, S_words): the mean over a target word's pieces.
    summed = torch.zeros(n_tgt, n_src).index_add_(0, tgt_words, per_src_word)
    counts = torch.bincount(tgt_words, minlength=n_tgt).unsqueeze(1)
    best = (summed / counts).argmax(dim=1)
    return [(int(i), j) for j, i in enumerate(best.tolist())]


def sentence_alignment(attention: SentenceAttention, *, layer: int = ALIGNMENT_LAYER) -> list[tuple[int, int]]:
    """Word links of one sentence pair from the head-averaged cross-attention of decoder ``layer`` (1-based); the
    source words are those of the text, after the tag of a multilingual model."""
    cross = attention.cross[layer_index(layer, attention.cross.size(0))].mean(dim=0)  # (T, S)
    p = attention.src_prefix
    return word_alignment(cross[:-1, p:-1], attention.src_pieces[p:-1], attention.tgt_pieces[:-1])


def format_alignment(pairs: Sequence[tuple[int, int]]) -> str:
    """Pairs as the usual ``i-j`` text (source-target, space-separated), e.g. ``0-0 1-2 2-1``."""
    return " ".join(f"{i}-{j}" for i, j in pairs)


def align_hypotheses(
    model: Transformer,
    tokenizer: Tokenizer,
    texts: Sequence[str],
    nbest: Sequence[Sequence[Hypothesis]],
    *,
    layer: int = ALIGNMENT_LAYER,
    device: torch.device | str,
    max_src_tokens: int | None = None,
    batch_size: int = 64,
) -> list[list[list[tuple[int, int]]]]:
    """Word alignment of each hypothesis of a ``TorchTranslator.translate`` result for ``texts`` (same nesting).

    ``max_src_tokens`` must be the value the hypotheses were decoded with (None: ``max_positions``), so that
    the source is truncated the same way.

    Raises:
        ValueError: ``layer`` does not exist in the decoder.
    """
    layer_index(layer, model.config.n_decoder_layers)
    if max_src_tokens is None:
        max_src_tokens = model.config.max_positions
    todo = [(i, k) for i, hyps in enumerate(nbest) for k in range(len(hyps))]
    sources = (
        encode_sources(tokenizer, [texts[i] for i, _ in todo], max_src_tokens=max_src_tokens, warn=False)
        if todo else []
    )
    attentions = forced_attention(
        model, tokenizer, sources, [nbest[i][k].tokens for i, k in todo], device=device, batch_size=batch_size
    )
    result: list[list[list[tuple[int, int]]]] = [[] for _ in nbest]
    for (i, _), attention in zip(todo, attentions):
        result[i].append(sentence_alignment(attention, layer=layer))
    return result


def pair_attention(
    model: Transformer, tokenizer: Tokenizer, sources: Sequence[str], targets: Sequence[str], *, device: torch.device | str
) -> list[SentenceAttention]:
    """Attention of given sentence pairs (e.g. a sentence and its reference), each target forced through the model."""
    src = encode_sources(tokenizer, sources, max_src_tokens=model.config.max_positions)
    return forced_attention(model, tokenizer, src, tokenizer.encode_tgt(list(targets)), device=device)


def translate_with_attention(
    model: Transformer,
    tokenizer: Tokenizer,
    texts: Sequence[str],
    cfg: DecodeConfig,
    *,
    device: torch.device | str,
    max_src_tokens: int | None = None,
) -> list[tuple[str, SentenceAttention | None]]:
    """The best translation of each text (beam or greedy search with ``cfg``) and its attention (None for an empty
    text)."""
    nbest = TorchTranslator(model, tokenizer, device=device).translate(texts, cfg, max_src_tokens=max_src_tokens)
    todo = [i for i, hyps in enumerate(nbest) if hyps]
    limit = model.config.max_positions if max_src_tokens is None else max_src_tokens
    sources = encode_sources(tokenizer, [texts[i] for i in todo], max_src_tokens=limit, warn=False) if todo else []
    attentions = forced_attention(
        model, tokenizer, sources, [nbest[i][0].tokens for i in todo], device=device, batch_size=cfg.batch_size
    )
    found = dict(zip(todo, attentions))
    return [(text, found.get(i)) for i, text in enumerate(best_texts(tokenizer, nbest))]


def align_pairs(
    model: Transformer,
    tokenizer: Tokenizer,
    sources: Sequence[str],
    targets: Sequence[str],
    *,
    layer: int = ALIGNMENT_LAYER,
    device: torch.device | str,
) -> list[list[tuple[int, int]]]:
    """Word alignment of given sentence pairs (e.g. references), by forcing each target through the model."""
    layer_index(layer, model.config.n_decoder_layers)
    return [sentence_alignment(a, layer=layer) for a in pair_attention(model, tokenizer, sources, targets, device=device)]
