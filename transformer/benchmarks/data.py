"""Time the data pipeline on the Multi30k training split (29,000 English-German pairs).

Prints: SentencePiece training time (joint BPE), encoding time of all training pairs, iterator
speed (batches/s over whole epochs), and the share of non-pad tokens in an epoch at the given token
budget, for the configured padding multiple and for no padding multiple.

    transformer benchmark data [--data-dir DIR] [--vocab-size 8000] [--max-tokens 4096]

The corpus folder defaults to the data config's: $MULTI30K_DIR, else data/multi30k.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from transformer.config import DataConfig
from transformer.data.batching import BatchIterator, ParallelDataset
from transformer.data.corpus import DataError, corpus_folder, load_split
from transformer.data.tokenizer import Tokenizer


def non_pad_share(iterator: BatchIterator) -> tuple[float, int]:
    """(non-pad tokens / all tokens over both sides, number of batches) for one epoch."""
    real = total = n = 0
    for batch in iterator:
        real += batch.n_src_tokens + batch.n_tgt_tokens
        total += batch.src.numel() + batch.tgt_out.numel()
        n += 1
    return real / total, n


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", default="", help="Multi30k folder (default: $MULTI30K_DIR, else data/multi30k)")
    parser.add_argument("--src-lang", default="en")
    parser.add_argument("--tgt-lang", default="de")
    parser.add_argument("--vocab-size", type=int, default=8000)
    parser.add_argument("--max-tokens", type=int, default=4096)
    parser.add_argument("--pad-to-multiple", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=3, help="epochs to time the iterator over")


def run(args: argparse.Namespace) -> int:
    cfg = DataConfig(data_dir=args.data_dir, src_lang=args.src_lang, tgt_lang=args.tgt_lang, vocab_size=args.vocab_size)
    try:
        corpus_folder(cfg)
    except DataError as err:
        print(f"error: no Multi30k folder: {err}", file=sys.stderr)
        return 2
    try:
        start = time.perf_counter()
        src, tgt = load_split(cfg, "train")
        read_s = time.perf_counter() - start
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"read {len(src)} training pairs ({args.src_lang}-{args.tgt_lang}) in {read_s:.2f}s")

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        tokenizer = Tokenizer.train(src, tgt, Path(tmp), vocab_size=args.vocab_size, model_type="bpe", joint=True)
        elapsed = time.perf_counter() - start
        print(f"SentencePiece training (joint BPE, {tokenizer.src_vocab_size} pieces): {elapsed:.2f}s")

    start = time.perf_counter()
    dataset = ParallelDataset.from_texts(src, tgt, tokenizer, cfg)
    print(f"encode + filter {len(src)} pairs: {time.perf_counter() - start:.2f}s ({len(dataset)} kept)")

    iterator = BatchIterator(dataset, args.max_tokens, shuffle=True, seed=1, pad_to_multiple=args.pad_to_multiple)
    start = time.perf_counter()
    n_batches = sum(1 for _ in range(args.epochs) for _ in iterator)
    elapsed = time.perf_counter() - start
    print(f"iterator: {n_batches} batches in {elapsed:.2f}s = {n_batches / elapsed:.0f} batches/s "
          f"({len(iterator)} batches per epoch at max_tokens={args.max_tokens})")

    for multiple in sorted({args.pad_to_multiple, 1}, reverse=True):
        iterator = BatchIterator(dataset, args.max_tokens, shuffle=True, seed=1, pad_to_multiple=multiple)
        share, n = non_pad_share(iterator)
        # Even one sentence per batch pads each length up to the multiple: the best share possible.
        lengths = np.concatenate([dataset.src_lengths, dataset.tgt_lengths])
        bound = lengths.sum() / ((lengths + multiple - 1) // multiple * multiple).sum()
        print(f"non-pad share at max_tokens={args.max_tokens}, pad_to_multiple={multiple}: {share:.3f} "
              f"({n} batches; rounding lengths up to the multiple alone allows at most {bound:.3f})")
    return 0

