"""``transformer prepare``: the vocabulary and the encoded training pairs of a config, cached once for every run."""

from __future__ import annotations

import argparse
from pathlib import Path

from transformer.config import load_config
from transformer.data.prepare import corpus_fingerprint, prepare_directions, prepare_vocabulary

EXAMPLES = """\
examples:
  transformer prepare --config configs/multi30k_en_de.yaml        # into data/cache; train then starts in seconds
  transformer prepare --config configs/wmt14_en_de_base.yaml data.prepare_workers=8 data.cache_dir=/fast/cache
  transformer prepare --config configs/multi30k_multilingual.yaml # one vocabulary, the pairs of each direction
`transformer train` prepares what is missing by itself; run this first to do it once, before a torchrun job or a
sweep of runs that share the corpus and the vocabulary settings. A cache that is there already is checked in full
(every byte against its checksum; `train` checks sizes, the index and samples) and prepared again if damaged.
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "prepare", help="train the vocabulary and encode the training split once (a memory-mapped cache)",
        description="Train the vocabulary on a sample and encode the training pairs into token arrays that every "
        "run memory-maps (data.cache_dir, default data/cache).",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", "-c", type=Path, help="YAML config (see configs/)")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. data.vocab_size=16000")
    parser.add_argument("--data-dir", help="shortcut for data.data_dir=... (the corpus folder)")
    parser.set_defaults(run=run, accepts_overrides=True)
    return parser


def run(args: argparse.Namespace) -> int:
    overrides = list(args.overrides) + ([f"data.data_dir={args.data_dir}"] if args.data_dir is not None else [])
    data = load_config(args.config, overrides).data
    fingerprint = corpus_fingerprint(data)
    tokenizer = prepare_vocabulary(data, fingerprint)
    prepared = prepare_directions(data, tokenizer, fingerprint, full_check=True)  # train checks sampled blocks only
    tags = f" (target-language tags: {', '.join(tokenizer.tags)})" if tokenizer.tags else ""
    print(f"vocabulary: {tokenizer.src_vocab_size} source / {tokenizer.tgt_vocab_size} target pieces{tags}")
    for name, pairs in prepared.items():
        info, which = pairs.info, f" {name}" if data.multilingual else ""
        print(f"training pairs{which}: {info['pairs']:,} of {info['lines']:,} lines ({info['src_tokens']:,} source "
              f"and {info['tgt_tokens']:,} target tokens)")
        print(f"cache{which}: {pairs.path}")
    return 0
