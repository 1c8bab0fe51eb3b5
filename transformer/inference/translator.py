"""One way to translate: the protocol every engine implements, and the text-level rules they share.

A ``Translator`` turns raw source sentences into n-best ``Hypothesis`` lists. Two engines implement it: our
PyTorch model or an ensemble of them (``torch_engine.TorchTranslator``) and a CTranslate2 export
(``ct2_engine.CTranslate2Translator``). Both follow the same rules, written once here:

- a blank text is not decoded: it gets an empty n-best list (and an empty translation);
- a source is its SentencePiece pieces + EOS, cut to ``max_src_tokens`` ids (EOS kept), with one warning;
- results come back in the order of the input, whatever order the engine decodes in;
- a multilingual model's translator decodes one direction (``for_target``): its sources start with the target
  language's tag. The engines refuse untagged sources of such a model rather than translate them into nothing
  in particular.

``translate_texts`` (the best translation of each text, detokenized) and ``forced_log_probs`` (teacher-forced
log-probabilities of given translations) work with either engine.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Protocol

from transformer.config import DecodeConfig
from transformer.data.tokenizer import Tokenizer
from transformer.decoding.search import Hypothesis
from transformer.tokens import EOS_ID

logger = logging.getLogger(__name__)

ENGINES = ("torch", "ctranslate2")
# CTranslate2 weight types an export may have; here, so that the command line can offer them without importing
# the optional ctranslate2 package.
QUANTIZATIONS = ("float32", "int8", "int8_float32", "int16", "float16")


class Translator(Protocol):
    """What every engine offers: its vocabulary, n-best translation of texts, and teacher-forced scoring."""

    tokenizer: Tokenizer

    def for_target(self, lang: str) -> Translator:
        """This translator decoding into ``lang`` (``Tokenizer.for_target``), the model shared; a bilingual
        model's translator is the same as this one."""
        ...

    def translate(
        self,
        texts: Sequence[str],
        cfg: DecodeConfig,
        *,
        max_src_tokens: int | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> list[list[Hypothesis]]:
        """Up to ``cfg.n_best`` hypotheses per text, best first, in input order (see the module docstring).

        ``max_src_tokens`` None: the longest source the model can read. ``progress`` is called after each
        decoded batch with its number of sentences (blank texts are not counted).
        """
        ...

    def forced_log_probs(self, src: Sequence[Sequence[int]], tgt: Sequence[Sequence[int]]) -> list[list[float]]:
        """Log-probability of each target id and of the final EOS given the source (ids without BOS/EOS)."""
        ...


def source_ids(tokenizer: Tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """``tokenizer.encode_src``, refused for a multilingual vocabulary that puts no tag first (decoding that
    would translate into no language in particular).

    Raises:
        ValueError: a tagged vocabulary without a target language: use ``tokenizer.for_target(lang)``.
    """
    if tokenizer.tags and not tokenizer.source_prefix:
        raise ValueError(
            f"a multilingual model (target-language tags {', '.join(tokenizer.tags)}) translates into one language "
            "at a time: decode with translator.for_target(lang) (Tokenizer.for_target)"
        )
    return tokenizer.encode_src(list(texts))


def encode_sources(
    tokenizer: Tokenizer, texts: Sequence[str], *, max_src_tokens: int | None, warn: bool = True
) -> list[list[int]]:
    """Source ids (pieces + EOS) of each text; one longer than ``max_src_tokens`` is cut, keeping its EOS.

    ``warn=False`` for a second pass over texts that were already decoded (and warned about) once. The ids
    start with the target-language tag of a multilingual tokenizer, which is kept when a source is cut.

    Raises:
        ValueError: ``tokenizer`` is a multilingual one without a target language (see ``source_ids``).
    """
    ids = [pieces + [EOS_ID] for pieces in source_ids(tokenizer, texts)]
    if max_src_tokens is None:
        return ids
    too_long = sum(len(x) > max_src_tokens for x in ids)
    if not too_long:
        return ids
    if warn:
        logger.warning(
            "%d of %d input sentences are longer than %d tokens (EOS included) and were truncated",
            too_long, len(ids), max_src_tokens,
        )
    return [x if len(x) <= max_src_tokens else x[: max_src_tokens - 1] + [EOS_ID] for x in ids]


def nonblank(texts: Sequence[str]) -> list[int]:
    """Indices of the texts that are decoded (the others get no hypothesis)."""
    return [i for i, text in enumerate(texts) if text.strip()]


def best_tokens(nbest: Sequence[Sequence[Hypothesis]]) -> list[list[int]]:
    """The best hypothesis' ids of each sentence ([] for a blank one)."""
    return [hyps[0].tokens if hyps else [] for hyps in nbest]


def best_texts(tokenizer: Tokenizer, nbest: Sequence[Sequence[Hypothesis]]) -> list[str]:
    """The best hypothesis of each sentence, detokenized ("" for a blank one)."""
    return tokenizer.decode_tgt(best_tokens(nbest)) if nbest else []


def translate_texts(
    translator: Translator,
    texts: Sequence[str],
    cfg: DecodeConfig,
    *,
    max_src_tokens: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[str]:
    """Detokenized best translation of each text ("" for a blank one), in input order, with any engine."""
    nbest = translator.translate(texts, cfg, max_src_tokens=max_src_tokens, progress=progress)
    return best_texts(translator.tokenizer, nbest)


def forced_log_probs(translator: Translator, sources: Sequence[str], targets: Sequence[str]) -> list[list[float]]:
    """The log-probability of each target piece and of the final EOS given the source text, with any engine.

    Teacher forcing, as in training: no search and no decoding rule, so both engines agree to float precision.

    Raises:
        ValueError: the two lists differ in length, or see ``source_ids``.
    """
    if len(sources) != len(targets):
        raise ValueError(f"{len(sources)} sources but {len(targets)} targets")
    tokenizer = translator.tokenizer
    return translator.forced_log_probs(source_ids(tokenizer, sources), tokenizer.encode_tgt(list(targets)))
