"""``transformer train``: config + overrides -> data, vocabulary, model -> ``Trainer.fit()``."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import random
from pathlib import Path

import torch
import yaml

from transformer.config import Config, load_config
from transformer.data.batching import BatchIterator, ParallelDataset, SubwordSampler
from transformer.data.corpus import load_split
from transformer.data.tokenizer import PAD_ID, Tokenizer, load_or_train_tokenizer
from transformer.model.transformer import Transformer, count_parameters
from transformer.training.distributed import DistributedContext, setup, teardown
from transformer.training.trainer import Trainer, ValidationData

logger = logging.getLogger("transformer")


def build_trainer(config: Config, context: DistributedContext) -> Trainer:
    """Read the corpus, train or reuse the vocabulary, build the model and the batch iterators."""
    d = config.data
    train_src, train_tgt = load_split(d, "train")
    valid_src, valid_tgt = load_split(d, "valid")
    # Rank 0 trains (or checks) the vocabulary; the others wait and read its files, so that no two processes
    # write the same files at once.
    tokenizer_dir = Path(config.train.run_dir) / "tokenizer"
    if context.is_main:
        tokenizer = load_or_train_tokenizer(d, tokenizer_dir, train_src, train_tgt)
    context.barrier()
    if not context.is_main:
        tokenizer = Tokenizer.load(tokenizer_dir)
    # The vocabulary decides the embedding sizes; the resolved sizes are what checkpoints record.
    config.model = dataclasses.replace(
        config.model, src_vocab_size=tokenizer.src_vocab_size, tgt_vocab_size=tokenizer.tgt_vocab_size, pad_id=PAD_ID
    )
    train_set = ParallelDataset.from_texts(train_src, train_tgt, tokenizer, d)
    valid_set = ParallelDataset.from_texts(valid_src, valid_tgt, tokenizer, d)
    resample = None
    if d.src_subword_sampling > 0 or d.tgt_subword_sampling > 0:
        resample = SubwordSampler(
            train_set, tokenizer, d.src_subword_sampling, d.tgt_subword_sampling, seed=config.train.seed,
            max_src_tokens=d.max_src_tokens, max_tgt_tokens=d.max_tgt_tokens,
        )
    train_batches = BatchIterator(
        train_set,
        d.max_tokens,
        shuffle=True,
        seed=config.train.seed,
        rank=context.rank,
        world_size=context.world_size,
        pad_to_multiple=d.pad_to_multiple,
        resample=resample,
    )
    valid_batches = BatchIterator(valid_set, d.max_tokens, shuffle=False, pad_to_multiple=d.pad_to_multiple)
    model = Transformer(config.model)
    logger.info("model: %s parameters", f"{count_parameters(model):,}")
    validation = ValidationData(valid_batches, valid_src, valid_tgt)
    return Trainer(config, model, tokenizer, train_batches, validation, context=context)


EXAMPLES = """\
examples:
  transformer train --config configs/sample.yaml
  transformer train --config configs/multi30k_en_de.yaml train.lr=1e-3 model.dropout=0.3
  transformer train --config configs/sample.yaml --resume          # continue RUN_DIR/checkpoints/last.pt
  torchrun --standalone --nproc_per_node 2 -m transformer train --config configs/sample.yaml
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "train", help="train a model from a config", description="Train an encoder-decoder Transformer for translation.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", "-c", type=Path, help="YAML config (see configs/)")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. train.lr=5e-4")
    parser.add_argument("--resume", action="store_true", help="continue from RUN_DIR/checkpoints/last.pt")
    parser.add_argument("--data-dir", help="shortcut for data.data_dir=... (the corpus folder)")
    parser.add_argument("--run-dir", help="shortcut for train.run_dir=...")
    parser.add_argument("--device", help="shortcut for train.device=... (auto, cpu, cuda)")
    parser.set_defaults(run=run, accepts_overrides=True)
    return parser


def run(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    for key, value in (("data.data_dir", args.data_dir), ("train.run_dir", args.run_dir), ("train.device", args.device)):
        if value is not None:
            overrides.append(f"{key}={value}")
    context = None
    try:
        config = load_config(args.config, overrides)
        if config.train.threads > 0:
            torch.set_num_threads(config.train.threads)
        context = setup(config.train.device)
        torch.manual_seed(config.train.seed + context.rank)
        random.seed(config.train.seed + context.rank)
        trainer = build_trainer(config, context)
        if context.is_main:
            print(yaml.safe_dump(config.to_dict(), sort_keys=False), flush=True)  # the resolved config
        if args.resume:
            trainer.resume()
        metrics = trainer.fit()
    finally:
        if context is not None:
            teardown(context)
    if context.is_main:
        print(f"done at step {trainer.step}; last validation: {metrics}")
        print(f"checkpoints: {trainer.checkpoint_dir}")
    return 0
