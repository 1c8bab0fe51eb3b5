"""Command-line options that several commands share, written once: the engine, decoding, device and language options.

Not a command: the command modules import this, never each other.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from transformer.config import DataConfig
from transformer.inference import ENGINES, Translator, choose_direction, translator_for


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1, ...")


def add_engine_arguments(parser: argparse.ArgumentParser, *, checkpoint_help: str) -> None:
    """``--engine``, ``--checkpoint`` (repeatable: an ensemble), ``--model`` and CTranslate2's thread counts."""
    parser.add_argument(
        "--engine", choices=ENGINES, default="torch",
        help="torch: our decoder on --checkpoint; ctranslate2: a folder written by `transformer export` (--model)",
    )
    parser.add_argument("--checkpoint", action="append", type=Path, metavar="CKPT", help=checkpoint_help)
    parser.add_argument("--model", type=Path, metavar="DIR", help="a CTranslate2 model folder (--engine ctranslate2)")
    parser.add_argument(
        "--inter-threads", type=int, metavar="N", help="CTranslate2 translators working in parallel (default 1)"
    )
    parser.add_argument(
        "--intra-threads", type=int, metavar="N", help="threads of each CTranslate2 translator (default: its own)"
    )


def add_decode_arguments(parser: argparse.ArgumentParser, *, n_best: bool = False) -> None:
    """The search settings a command may change; each defaults to the checkpoint's ``decode`` section."""
    parser.add_argument("--beam-size", type=int, help="1 = greedy (default: the checkpoint's decode.beam_size)")
    if n_best:
        parser.add_argument("--n-best", type=int, help="print the N best translations with their scores")
    parser.add_argument("--length-penalty", type=float, help="GNMT alpha, 0 = none (default: the checkpoint's)")
    parser.add_argument("--batch-size", type=int, help="sentences per decoding batch (speed only)")


def add_direction_arguments(parser: argparse.ArgumentParser, *, corpus: bool = False) -> None:
    """``--source-lang`` and ``--target-lang`` (old spellings ``--src-lang``, ``--tgt-lang``): the direction of a
    multilingual model, and with ``corpus`` the files of the corpus read (see ``direction_and_corpus``)."""
    files = "; also the corpus files read (default: the checkpoint's data.{})" if corpus else ""
    parser.add_argument(
        "--source-lang", "--src-lang", dest="source_lang", metavar="LANG",
        help="the language of the input: with --target-lang, picks one direction of a multilingual model"
             + files.format("src_lang"),
    )
    parser.add_argument(
        "--target-lang", "--tgt-lang", dest="target_lang", metavar="LANG",
        help="the language to translate into: a multilingual model needs it" + files.format("tgt_lang"),
    )
    parser.add_argument(
        "--zero-shot", action="store_true",
        help="a multilingual model: translate --source-lang into --target-lang though it never trained that "
             "direction (both languages among its own)",
    )


def direction_and_corpus(
    translator: Translator,
    data: DataConfig,
    source_lang: str | None,
    target_lang: str | None,
    *,
    zero_shot: bool = False,
) -> tuple[Translator, DataConfig]:
    """The translator of the direction the languages choose, and the data settings of that direction's corpus.

    For a bilingual model the languages name the corpus files, as they always did (the model translates its one
    direction whatever they say); for a multilingual one they choose the direction (``choose_direction``), whose
    corpus is then read.

    Raises:
        DirectionError: a multilingual model and languages that are none of its directions.
    """
    if not data.multilingual and not zero_shot:
        return translator, data.for_direction(source_lang or data.src_lang, target_lang or data.tgt_lang)
    direction = choose_direction(data, source_lang, target_lang, zero_shot=zero_shot)
    return translator_for(translator, data, direction), data.for_direction(*direction)


def direction_translator(
    translator: Translator,
    data: DataConfig,
    source_lang: str | None,
    target_lang: str | None,
    *,
    zero_shot: bool = False,
) -> Translator:
    """The translator of the direction ``--source-lang``/``--target-lang`` choose (``choose_direction``).

    Raises:
        DirectionError: languages that are none of the model's directions (a bilingual model's included).
    """
    return translator_for(translator, data, choose_direction(data, source_lang, target_lang, zero_shot=zero_shot))
