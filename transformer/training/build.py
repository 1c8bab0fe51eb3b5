"""From a config to a ready ``Trainer``: corpus, vocabulary, datasets, batch iterators and model.

What ``transformer train`` does before ``Trainer.fit()``, for use from Python::

    config = load_config("configs/sample.yaml", ["train.max_epochs=2"])
    context = setup(config.train.device)
    trainer = build_trainer(config, context)
    trainer.fit()
    teardown(context)
"""

from __future__ import annotations

import dataclasses
import logging
import random
from pathlib import Path

import torch

from transformer.config import Config
from transformer.data.batching import BatchIterator, ParallelDataset, SubwordSampler
from transformer.data.corpus import load_split
from transformer.data.tokenizer import PAD_ID, Tokenizer, load_or_train_tokenizer
from transformer.model.transformer import Transformer, count_parameters
from transformer.training.distributed import DistributedContext
from transformer.training.trainer import Trainer, ValidationData

logger = logging.getLogger(__name__)


def build_trainer(config: Config, context: DistributedContext) -> Trainer:
    """Read the corpus, train or reuse the vocabulary, build the model and the batch iterators.

    Seeds ``torch`` and ``random`` with ``train.seed + rank`` first, so that one config gives one model.
    ``config.model`` is updated in place with the vocabulary sizes, which is what checkpoints record.

    Raises:
        DataError: the corpus cannot be read, or nothing is left after filtering.
    """
    torch.manual_seed(config.train.seed + context.rank)
    random.seed(config.train.seed + context.rank)
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
