"""The batches the training benchmarks (compare, ablate) train on.

The Multi30k training split through the real pipeline (``ParallelDataset``, ``BatchIterator`` at a token
budget), or synthetic pairs with Multi30k-like lengths when the corpus is absent (said in the output).
"""

from __future__ import annotations

import argparse
import tempfile

import numpy as np
import torch

from transformer.config import DataConfig
from transformer.data.batching import Batch, BatchIterator, ParallelDataset, collate
from transformer.data.corpus import DataError, corpus_folder, load_split
from transformer.data.tokenizer import Tokenizer


def add_corpus_arguments(parser: argparse.ArgumentParser) -> None:
    """The corpus options of the training benchmarks: the ``DataConfig`` fields of the same names."""
    parser.add_argument("--data-dir", default="", help="Multi30k folder (default: $MULTI30K_DIR, else data/multi30k)")
    parser.add_argument("--train-split", default="train")
    parser.add_argument("--test-split", default="test_2016_flickr")
    parser.add_argument("--src-lang", default="en")
    parser.add_argument("--tgt-lang", default="de")
    parser.add_argument("--vocab-size", type=int, default=8000, help="joint SentencePiece vocabulary")


def training_data(
    cfg: DataConfig, *, max_tokens: int, seed: int, device: torch.device
) -> tuple[Tokenizer, BatchIterator, str]:
    """Tokenizer (trained on the pairs, ``cfg.vocab_size``) and shuffled training batches of ``cfg``'s training
    split, else of synthetic pairs; and which of the two, in words."""
    try:
        src, tgt = load_split(cfg, "train")
        source = f"{corpus_folder(cfg)} ({cfg.train_split}, {len(src)} pairs)"
    except DataError as err:
        print(f"note: no training corpus ({err}); using SYNTHETIC batches with Multi30k-like lengths")
        src, tgt = synthetic_corpus(seed)
        source = "synthetic (random words, Multi30k-like lengths)"
    with tempfile.TemporaryDirectory() as folder:
        tokenizer = Tokenizer.train(src, tgt, folder, vocab_size=cfg.vocab_size)
    dataset = ParallelDataset.from_texts(src, tgt, tokenizer, cfg)
    multiple = 8 if device.type == "cuda" else 1  # DataConfig's advice: 8 on GPUs, 1 on CPUs
    batches = BatchIterator(dataset, max_tokens, shuffle=True, seed=seed, pad_to_multiple=multiple)
    return tokenizer, batches, source


def first_batches(batches: BatchIterator, n: int) -> list[Batch]:
    """The first ``n`` batches of epoch 0, in order, starting again from its first when it has fewer."""
    indices = batches.epoch_batches(0)[:n]
    epoch = [collate(batches.epoch_dataset(0), idx, batches.pad_to_multiple) for idx in indices]
    return [epoch[i % len(epoch)] for i in range(n)]


def synthetic_corpus(seed: int, n: int = 29000) -> tuple[list[str], list[str]]:
    """Random sentence pairs over a 5,000-word lexicon, word counts as in Multi30k: a source of about 12
    words (3 to 40), a target of about the same length (within about 15%)."""
    rng = np.random.default_rng(seed)
    lexicon = ["".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), rng.integers(2, 9))) for _ in range(5000)]
    src_len = rng.lognormal(2.45, 0.35, size=n)
    tgt_len = src_len * rng.lognormal(0.0, 0.15, size=n)

    def sentence(k: float) -> str:
        words = rng.zipf(1.3, size=int(np.clip(k, 3, 40))) % len(lexicon)
        return " ".join(lexicon[i] for i in words)

    return [sentence(k) for k in src_len], [sentence(k) for k in tgt_len]
