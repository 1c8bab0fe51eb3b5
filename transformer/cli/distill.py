"""Translate a corpus's training sources with a teacher model into a new corpus folder (sequence-level distillation).

The teacher is one checkpoint, or several as an ensemble (``--checkpoint`` repeated; one vocabulary), or its
CTranslate2 export (``--engine ctranslate2 --model DIR``: 2.6 to 4.2 times as fast on a CPU; a float32 export gives
the same translations with greedy search, while its beam search picks another hypothesis for some sentences, see
docs/PERFORMANCE.md). ``--data-dir`` is a folder of ``{split}.{lang}[.gz]`` files; ``--output`` becomes one too: the
split's sources with the teacher's translations, the other splits copied, and ``distill.json`` (the checkpoints'
SHA-256s, the teacher's config and the settings). A config trains on it with ``data.data_dir=OUT_DIR``.
``--with-original`` keeps the original pairs beside the distilled ones (twice the pairs). Interrupted, the same
command continues where it stopped; another teacher or other settings are refused. The search settings default to
the (first) checkpoint's ``decode`` section; the languages to its ``data`` section. A multilingual teacher
translates one direction, ``--target-lang`` (and ``--source-lang``), and that direction's files are read; for a
bilingual one these options name the corpus files, as ``--src-lang``/``--tgt-lang`` did. A progress bar on stderr
when it is a terminal. Mistakes end with one line on stderr and exit status 2.
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
from transformer.device import resolve_device
from transformer.distillation import prepare_distillation, run_distillation
from transformer.inference import load_translator

EXAMPLES = """\
examples:
  transformer distill --checkpoint runs/multi30k_en_de_full/checkpoints/avg10.pt --data-dir data/multi30k \\
      --output data/multi30k_distill_en_de --length-penalty 1.5
  transformer distill --checkpoint a/avg10.pt --checkpoint b/avg10.pt --data-dir data/multi30k \\
      --output data/multi30k_distill_en_de                       # an ensemble teacher
  transformer distill --checkpoint best.pt --data-dir data/multi30k --output data/m30k_both --with-original
  transformer distill --engine ctranslate2 --model ct2_en_de --data-dir data/multi30k --output data/m30k_ct2
  transformer distill --checkpoint multi.pt --source-lang de --target-lang en --data-dir data/multi30k \
      --output data/multi30k_distill_de_en                       # one direction of a multilingual teacher
  transformer train --config configs/multi30k_en_de_distilled.yaml   # a student on data/multi30k_distill_en_de
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "distill", help="translate a corpus's training sources with a teacher into a new corpus folder",
        description=__doc__.split("\n\n")[0], epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_engine_arguments(
        parser,
        checkpoint_help="the teacher, a .pt file written by training; repeat it to decode several models as an ensemble",
    )
    parser.add_argument("--data-dir", type=Path, required=True, help="the corpus folder ({split}.{lang}[.gz] files)")
    parser.add_argument("--output", type=Path, required=True, metavar="OUT_DIR", help="the new corpus folder")
    parser.add_argument("--split", default="train", help="the split to translate (default: train)")
    add_direction_arguments(parser, corpus=True)
    add_decode_arguments(parser)
    parser.add_argument(
        "--with-original", action="store_true",
        help="write the original pairs and the distilled ones together (train on both)",
    )
    add_device_argument(parser)
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    translator, config = load_translator(
        args.engine, checkpoints=args.checkpoint or (), model_dir=args.model, device=resolve_device(args.device),
        inter_threads=args.inter_threads, intra_threads=args.intra_threads,
    )
    translator, direction_data = direction_and_corpus(
        translator, config.data, args.source_lang, args.target_lang, zero_shot=args.zero_shot
    )
    decode = config.decode.updated(
        beam_size=args.beam_size, length_penalty=args.length_penalty, batch_size=args.batch_size, n_best=1
    )
    # The teacher's files, hashed into distill.json: the checkpoints, or the export's weights.
    teacher_files = args.checkpoint or [args.model / "model.bin"]
    data = direction_data.updated(data_dir=str(args.data_dir))
    job = prepare_distillation(
        teacher_files, config.to_dict(), data, decode, args.output, split=args.split,
        with_original=args.with_original,
    )
    s = job.settings
    if job.complete:
        print(f"{args.output} is already complete ({s.lines} sentences); train with data.data_dir={args.output}")
        return 0
    if job.done:
        print(f"continuing {args.output} after {job.done} of {s.lines} sentences", file=sys.stderr)
    total, initial = job.sentences(), job.sentences(0, job.done)
    with tqdm(
        total=total, initial=initial, unit="sent", desc="distill", file=sys.stderr, disable=not sys.stderr.isatty()
    ) as bar:
        run_distillation(job, translator, batch_size=decode.batch_size, progress=bar.update)
    pairs = 2 * s.lines if s.with_original else s.lines
    print(
        f"{' + '.join(map(str, args.checkpoint or [args.model]))}: {s.src_lang}-{s.tgt_lang} {s.split} split of {job.corpus}, "
        f"{s.lines} sentences, beam {s.beam_size}, length penalty {s.length_penalty}, "
        f"{job.record['seconds']:.0f} s of decoding"
    )
    print(
        f"wrote {args.output}: {s.split}.{s.src_lang} and {s.split}.{s.tgt_lang} ({pairs} pairs"
        f"{', the original ones first' if s.with_original else ''}), the other splits, and distill.json; "
        f"train with data.data_dir={args.output}"
    )
    return 0
