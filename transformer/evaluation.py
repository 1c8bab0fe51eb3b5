"""Corpus BLEU and chrF with sacreBLEU on detokenized text, and the one evaluation function.

``evaluate_model`` is called both by ``transformer evaluate`` and by the trainer's validation, so that
validation BLEU and offline BLEU are the same number for the same checkpoint and settings.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from sacrebleu.metrics import BLEU, CHRF

from transformer.config import DecodeConfig
from transformer.data.tokenizer import Tokenizer
from transformer.decoding.search import translate_texts
from transformer.errors import DataError
from transformer.model.transformer import Transformer

logger = logging.getLogger(__name__)


def corpus_scores(hypotheses: Sequence[str], references: Sequence[str], *, lowercase: bool = False) -> dict[str, Any]:
    """sacreBLEU corpus BLEU and chrF of detokenized hypotheses against untokenized references.

    Args:
        hypotheses: one detokenized translation per sentence.
        references: one reference per sentence, as in the corpus (not tokenized).
        lowercase: case-insensitive BLEU (chrF stays case-sensitive, sacreBLEU's default).

    Returns:
        ``{"bleu": float, "bleu_signature": str, "bleu_text": str, "chrf": float, "chrf_signature": str,
        "sentences": int}``; ``bleu_text`` is sacreBLEU's one-line summary (n-gram precisions, brevity penalty).

    Raises:
        DataError: the two lists differ in length, or are empty.
    """
    if len(hypotheses) != len(references):
        raise DataError(
            f"{len(hypotheses)} hypotheses but {len(references)} references: they must match line by line"
        )
    if not hypotheses:
        raise DataError("no sentences to score")
    hyps, refs = list(hypotheses), [list(references)]
    bleu, chrf = BLEU(lowercase=lowercase), CHRF()
    bleu_score, chrf_score = bleu.corpus_score(hyps, refs), chrf.corpus_score(hyps, refs)
    return {
        "bleu": bleu_score.score,
        "bleu_signature": str(bleu.get_signature()),
        "bleu_text": str(bleu_score),
        "chrf": chrf_score.score,
        "chrf_signature": str(chrf.get_signature()),
        "sentences": len(hyps),
    }


def evaluate_model(
    model: Transformer,
    tokenizer: Tokenizer,
    src_texts: Sequence[str],
    ref_texts: Sequence[str],
    cfg: DecodeConfig,
    *,
    device: torch.device | str,
    max_sentences: int = 0,
    progress: Callable[[int], None] | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """Translate ``src_texts`` with ``cfg`` and score the result against ``ref_texts``.

    Args:
        model: the (unwrapped) model; put in eval mode for the call, its mode restored after.
        tokenizer: the run's vocabulary.
        src_texts, ref_texts: raw parallel sentences.
        cfg: decoding settings (greedy when ``beam_size == 1``).
        device: where the source batches go (the model's device).
        max_sentences: score only the first N pairs; 0 for all.
        progress: called after each decoded batch with its number of sentences (e.g. a progress bar's
            ``update``); None for none, as in the trainer's validation.

    Returns:
        The scores of ``corpus_scores`` plus ``"seconds"`` (decoding wall time), and the hypotheses.

    Raises:
        ValueError: ``src_texts`` and ``ref_texts`` differ in length, or are empty.
    """
    if len(src_texts) != len(ref_texts):
        raise ValueError(f"{len(src_texts)} source sentences but {len(ref_texts)} references")
    if max_sentences > 0:
        src_texts, ref_texts = src_texts[:max_sentences], ref_texts[:max_sentences]
    start = time.perf_counter()
    hypotheses = translate_texts(model, tokenizer, src_texts, cfg, device=device, progress=progress)
    seconds = time.perf_counter() - start
    scores = corpus_scores(hypotheses, ref_texts)
    scores["seconds"] = seconds
    logger.info("BLEU %.2f chrF %.2f on %d sentences (%.1f s)", scores["bleu"], scores["chrf"], len(hypotheses), seconds)
    return scores, hypotheses
