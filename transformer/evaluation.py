"""Corpus BLEU and chrF with sacreBLEU on detokenized text, and the one evaluation function.

``evaluate_model`` is called both by ``transformer evaluate`` and by the trainer's validation, so that
validation BLEU and offline BLEU are the same number for the same checkpoint and settings.

``tokenized_bleu`` is the other measure, the one Multi30k papers report: hypotheses and references lowercased,
punctuation-normalised and tokenized by Moses (with its escaping of ``& | < > ' " [ ]``), then BLEU on the
tokens as ``multi-bleu.perl`` computes it. ``moses_tokenize`` is that pipeline; applied to the raw Multi30k
files it gives the official ``data/task1/tok/*.lc.norm.tok.*`` files line for line.
"""

from __future__ import annotations

import importlib.metadata
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from sacrebleu.metrics import BLEU, CHRF

from transformer.config import DecodeConfig
from transformer.errors import DataError, require_extra
from transformer.inference.translator import Translator, translate_texts

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


def require_moses() -> None:
    """Check that sacremoses can be imported (before hours of decoding, not after).

    Raises:
        MissingExtraError: it cannot; the message gives the install command.
    """
    require_extra("sacremoses", "moses", "tokenized BLEU (--tokenize moses)")


def moses_tokenize(texts: Sequence[str], lang: str) -> list[str]:
    """Lowercase, Moses punctuation normalisation and Moses tokenization with escaping, as Multi30k's tok files.

    The official files were made by ``lowercase.perl | normalize-punctuation.perl -l LANG | tokenizer.perl -l LANG``
    (Moses of 2016). ``perl_parity`` (a lone ``’`` becomes ``"``) and the line end given to the normaliser
    reproduce that script: it sees each line with its "\n", so its German rule that moves a period after a
    closing quote (``tea."`` -> ``tea".``) applies at the end of a line too. (One difference remains, absent
    from Multi30k: a lone ``‘`` or ``‚`` becomes ``'`` here and ``"`` in that script.)

    Args:
        texts: detokenized sentences (hypotheses or references).
        lang: their language code (``en``, ``de``, ...): nonbreaking prefixes and quote rules depend on it.

    Raises:
        MissingExtraError: sacremoses is not installed.
    """
    require_moses()
    from sacremoses import MosesPunctNormalizer, MosesTokenizer

    normalizer, tokenizer = MosesPunctNormalizer(lang=lang, perl_parity=True), MosesTokenizer(lang=lang)
    return [
        tokenizer.tokenize(normalizer.normalize(text.lower() + "\n"), escape=True, return_str=True) for text in texts
    ]


def tokenized_bleu(hypotheses: Sequence[str], references: Sequence[str], *, lang: str) -> dict[str, Any]:
    """BLEU as Multi30k papers report it: ``moses_tokenize`` on both sides, then BLEU of the tokens.

    On the tokens, sacreBLEU with ``tokenize="none"`` computes what ``multi-bleu.perl`` does (n-grams of
    whitespace-separated tokens, corpus brevity penalty); only where some n-gram order has no match at all do
    they differ (sacreBLEU smooths, multi-bleu.perl gives 0).

    Returns:
        ``{"bleu": float, "bleu_signature": str, "bleu_text": str, "sentences": int}``; the signature is
        sacreBLEU's with ``case:lc``, ``tok:moses-norm-esc-LANG`` and the sacremoses version.

    Raises:
        DataError: the two lists differ in length, or are empty.
        MissingExtraError: sacremoses is not installed.
    """
    if len(hypotheses) != len(references):
        raise DataError(
            f"{len(hypotheses)} hypotheses but {len(references)} references: they must match line by line"
        )
    if not hypotheses:
        raise DataError("no sentences to score")
    hyps, refs = moses_tokenize(hypotheses, lang), moses_tokenize(references, lang)
    bleu = BLEU(tokenize="none", force=True)  # force: tokenized input is intended here (no warning)
    score = bleu.corpus_score(hyps, [refs])
    signature = bleu.get_signature()
    signature.update("case", "lc")
    signature.update("tok", f"moses-norm-esc-{lang}")
    signature.update("sacremoses", importlib.metadata.version("sacremoses"))
    return {"bleu": score.score, "bleu_signature": str(signature), "bleu_text": str(score), "sentences": len(hyps)}


def evaluate_model(
    translator: Translator,
    src_texts: Sequence[str],
    ref_texts: Sequence[str],
    cfg: DecodeConfig,
    *,
    max_sentences: int = 0,
    progress: Callable[[int], None] | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """Translate ``src_texts`` with ``cfg`` and score the result against ``ref_texts``.

    Args:
        translator: either engine (``transformer.inference``); the trainer's validation passes a
            ``TorchTranslator`` of the model it trains. A multilingual model's is that of one direction
            (``translator_for``), the direction of ``src_texts`` and ``ref_texts``.
        src_texts, ref_texts: raw parallel sentences.
        cfg: decoding settings (greedy when ``beam_size == 1``).
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
    hypotheses = translate_texts(translator, src_texts, cfg, progress=progress)
    seconds = time.perf_counter() - start
    scores = corpus_scores(hypotheses, ref_texts)
    scores["seconds"] = seconds
    logger.info("BLEU %.2f chrF %.2f on %d sentences (%.1f s)", scores["bleu"], scores["chrf"], len(hypotheses), seconds)
    return scores, hypotheses
