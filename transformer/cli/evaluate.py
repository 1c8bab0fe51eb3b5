"""Score a checkpoint (or several, as an ensemble) on a split of its dataset with sacreBLEU, or score a file.

``--split`` is a role (train, valid, test) or a split name of the corpus (evaluated in the test role).
The data settings (source, languages, folder) come from the (first) checkpoint; the options override them. A
multilingual checkpoint is evaluated on one direction, ``--target-lang`` (and ``--source-lang``), whose corpus
files are read (``--zero-shot``: a direction it never trained, de-fr from de-en and en-fr); for a bilingual one
these options name the corpus files, as ``--src-lang``/``--tgt-lang`` did.
``--checkpoint`` may be repeated: the checkpoints decode as an ensemble (their probabilities averaged) and
must share one vocabulary. Decoding uses ``transformer.evaluation.evaluate_model``, the function the
trainer's validation BLEU uses, so the two numbers agree. Prints BLEU, chrF and their signatures; a progress
bar on stderr when it is a terminal. ``--tokenize moses`` adds the tokenized lowercased BLEU of the Multi30k
papers (``transformer.evaluation.tokenized_bleu``; needs the ``moses`` extra). Mistakes end with one line on
stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from transformer.cli.options import (
    add_decode_arguments,
    add_device_argument,
    add_direction_arguments,
    add_engine_arguments,
    direction_and_corpus,
)
from transformer.config import ConfigError, DataConfig
from transformer.data.corpus import DataError, load_split
from transformer.device import resolve_device
from transformer.evaluation import corpus_scores, evaluate_model, require_moses, tokenized_bleu
from transformer.inference import load_translator

ROLES = ("train", "valid", "test")


EXAMPLES = """\
examples:
  transformer evaluate --checkpoint runs/x/checkpoints/best.pt                  # the test split
  transformer evaluate --checkpoint best.pt --split valid --beam-size 1 --output hyp.de
  transformer evaluate --checkpoint best.pt --split test_2017_flickr --data-dir data/multi30k
  transformer evaluate --checkpoint a/avg10.pt --checkpoint b/avg10.pt --split valid   # an ensemble
  transformer evaluate --engine ctranslate2 --model ct2 --split test        # a `transformer export` folder
  transformer evaluate --checkpoint multi.pt --source-lang de --target-lang en   # one direction of several
  transformer evaluate --checkpoint multi.pt --source-lang de --target-lang fr --zero-shot   # never trained
  transformer evaluate --hypotheses hyp.de --references ref.de                  # score a file
  transformer evaluate --hypotheses hyp.de --references ref.de --target-lang de --tokenize moses  # papers' BLEU
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "evaluate", help="BLEU/chrF of a checkpoint on a split, or of a file",
        description=__doc__.split("\n\n")[0], epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_engine_arguments(
        parser, checkpoint_help="a .pt file written by training; repeat it to decode several models as an ensemble"
    )
    parser.add_argument("--split", default="test", help="train, valid, test, or a split name (default: test)")
    parser.add_argument("--data-dir", help="corpus folder (default: the checkpoint's data.data_dir)")
    add_direction_arguments(parser, corpus=True)
    add_decode_arguments(parser)
    parser.add_argument("--max-sentences", type=int, default=0, help="score only the first N sentences (0 = all)")
    add_device_argument(parser)
    parser.add_argument("--output", type=Path, help="write the hypotheses here, one per line")
    parser.add_argument("--lowercase", action="store_true", help="report case-insensitive BLEU first")
    parser.add_argument(
        "--tokenize", choices=("13a", "moses"), default="13a",
        help="13a: sacreBLEU only (default); moses: also the Multi30k papers' tokenized BLEU (lowercased, Moses "
             "punctuation normalisation and tokenization with escaping, both sides; needs --target-lang for files)",
    )
    parser.add_argument("--hypotheses", type=Path, help="score this file instead of decoding (needs --references)")
    parser.add_argument("--references", type=Path, help="reference file for --hypotheses")
    parser.set_defaults(run=run, parser=parser)
    return parser


def data_settings(data: DataConfig, split: str, *, data_dir: str | None) -> tuple[DataConfig, str]:
    """The data config of one direction with the command line's folder, and the role to load."""
    role, test_split = (split, None) if split in ROLES else ("test", split)  # a split name: read in the test role
    return data.updated(data_dir=data_dir, test_split=test_split), role


def read_text(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DataError(f"file not found: {path}") from None
    except IsADirectoryError:
        raise DataError(f"{path} is a folder; give a text file with one sentence per line") from None
    except OSError as err:
        raise DataError(f"cannot read {path}: {err.strerror or err}") from None
    except UnicodeDecodeError as err:
        raise DataError(f"{path} is not UTF-8 text: {err}") from None


def report(hypotheses: list[str], references: list[str], *, lowercase: bool, moses_lang: str | None = None) -> None:
    """Print BLEU, chrF and their signatures, then BLEU with the other casing (and the tokenized BLEU)."""
    scores = corpus_scores(hypotheses, references, lowercase=lowercase)
    other = corpus_scores(hypotheses, references, lowercase=not lowercase)
    print(scores["bleu_text"])
    print(f"  signature: {scores['bleu_signature']}")
    print(f"chrF2 = {scores['chrf']:.2f}")
    print(f"  signature: {scores['chrf_signature']}")
    print(f"BLEU ({'cased' if lowercase else 'lowercased'}) = {other['bleu']:.2f}")
    print(f"  signature: {other['bleu_signature']}")
    if moses_lang is not None:
        tokenized = tokenized_bleu(hypotheses, references, lang=moses_lang)
        print(f"{tokenized['bleu_text']} (tokenized, lowercased: Moses normalisation and tokenization, escaped)")
        print(f"  signature: {tokenized['bleu_signature']}")


def run(args: argparse.Namespace) -> int:
    parser = args.parser
    if args.hypotheses is not None or args.references is not None:
        if args.hypotheses is None or args.references is None:
            parser.error("--hypotheses and --references go together")
        if args.checkpoint is not None or args.model is not None:
            parser.error("give either --checkpoint (or --model) or --hypotheses/--references, not both")
    elif args.checkpoint is None and args.model is None:
        parser.error("give --checkpoint (or --engine ctranslate2 --model DIR), or --hypotheses and --references")
    if args.max_sentences < 0:
        parser.error("--max-sentences must be >= 0")
    if args.tokenize == "moses":
        require_moses()
    if args.hypotheses is not None:
        if args.tokenize == "moses" and args.target_lang is None:
            raise ConfigError(
                "--tokenize moses needs the language of the references: add --target-lang (or --tgt-lang), "
                "e.g. --target-lang de"
            )
        hypotheses, references = read_text(args.hypotheses), read_text(args.references)
        if args.max_sentences:
            hypotheses, references = hypotheses[: args.max_sentences], references[: args.max_sentences]
        report(hypotheses, references, lowercase=args.lowercase, moses_lang=args.target_lang if args.tokenize == "moses" else None)
        return 0

    translator, config = load_translator(
        args.engine, checkpoints=args.checkpoint or (), model_dir=args.model, device=resolve_device(args.device),
        inter_threads=args.inter_threads, intra_threads=args.intra_threads,
    )
    translator, direction_data = direction_and_corpus(
        translator, config.data, args.source_lang, args.target_lang, zero_shot=args.zero_shot
    )
    cfg = config.decode.updated(
        beam_size=args.beam_size, length_penalty=args.length_penalty, batch_size=args.batch_size, n_best=1
    )
    data_cfg, role = data_settings(direction_data, args.split, data_dir=args.data_dir)
    src_texts, ref_texts = load_split(data_cfg, role)
    total = sum(1 for text in src_texts[: args.max_sentences or None] if text.strip())  # blank ones are not decoded
    with tqdm(total=total, unit="sent", desc=role, file=sys.stderr, disable=not sys.stderr.isatty()) as bar:
        scores, hypotheses = evaluate_model(
            translator, src_texts, ref_texts, cfg, max_sentences=args.max_sentences, progress=bar.update
        )

    references = ref_texts[: len(hypotheses)]
    split = {"train": data_cfg.train_split, "valid": data_cfg.valid_split, "test": data_cfg.test_split}[role]
    print(
        f"{' + '.join(map(str, args.checkpoint or [args.model]))}: "
        f"{data_cfg.src_lang}-{data_cfg.tgt_lang} {role} split ({split}), "
        f"{len(hypotheses)} sentences, "
        f"beam {cfg.beam_size}, length penalty {cfg.length_penalty}, "
        f"max length {cfg.max_len_a} * src_len + {cfg.max_len_b}, {scores['seconds']:.1f} s"
    )
    report(hypotheses, references, lowercase=args.lowercase, moses_lang=data_cfg.tgt_lang if args.tokenize == "moses" else None)
    if args.output is not None:
        try:
            args.output.parent.mkdir(parents=True, exist_ok=True)
            args.output.write_text("".join(h + "\n" for h in hypotheses), encoding="utf-8")
        except OSError as err:
            raise DataError(f"cannot write {args.output}: {err.strerror or err}") from None
        print(f"hypotheses written to {args.output}")
    return 0

