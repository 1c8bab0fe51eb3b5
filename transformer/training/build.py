"""From a config to a ready ``Trainer``: corpus, vocabulary, datasets, batch iterators and model.

What ``transformer train`` does around ``Trainer.fit()``, for use from Python::

    config = load_config("configs/sample.yaml", ["train.max_epochs=2"])
    context = setup(config.train.device)
    with training_run(config, context, resume=False) as trainer:  # the run folder is locked and checked
        trainer.fit()
    teardown(context)

``build_trainer`` alone builds without claiming the run folder (no lock, no ownership check).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import random
from collections.abc import Iterator
from pathlib import Path

import torch

from transformer.config import Config
from transformer.data.batching import BatchIterator, ParallelDataset, SubwordSampler
from transformer.data.corpus import load_split
from transformer.data.prepare import corpus_fingerprint, find_prepared_pairs, prepare_pairs, tokenizer_for_run
from transformer.data.tokenizer import Tokenizer
from transformer.errors import RunDirError, UserError
from transformer.model.transformer import Transformer, count_parameters
from transformer.training.distributed import DistributedContext
from transformer.training.precision import autocast_context
from transformer.training.resume import resume_trainer
from transformer.training.run_dir import RunFolder
from transformer.training.trainer import Trainer, ValidationData

logger = logging.getLogger(__name__)


def build_trainer(config: Config, context: DistributedContext) -> Trainer:
    """Prepare (or reuse) the vocabulary and the encoded training pairs, build the model and the batch iterators.

    Seeds ``torch`` and ``random`` with ``train.seed + rank`` first, so that one config gives one model.
    ``config.model`` is updated in place with the vocabulary sizes, which is what checkpoints record.

    Raises:
        ConfigError: train.precision is not available on the device (checked first).
        DataError: the corpus cannot be read, or nothing is left after filtering.
    """
    autocast_context(config.train.precision, context.device)  # e.g. fp16 on a CPU: said before any data work
    torch.manual_seed(config.train.seed + context.rank)
    random.seed(config.train.seed + context.rank)
    d = config.data
    valid_src, valid_tgt = load_split(d, "valid")  # small, and read first: a missing file is reported at once
    sampling = d.src_subword_sampling > 0 or d.tgt_subword_sampling > 0
    # Rank 0 finds (or makes) the vocabulary and the encoded training pairs in the data cache, and copies the
    # vocabulary into the run folder; the others wait, then map the same files: one copy in the page cache.
    tokenizer_dir = Path(config.train.run_dir) / "tokenizer"
    if context.is_main:
        fingerprint = corpus_fingerprint(d)
        tokenizer = tokenizer_for_run(d, tokenizer_dir, fingerprint)
        if not sampling:
            prepare_pairs(d, tokenizer, fingerprint)
    context.barrier()
    if not context.is_main:
        tokenizer = Tokenizer.load(tokenizer_dir)
    # The vocabulary decides the embedding sizes; the resolved sizes are what checkpoints record.
    config.model = dataclasses.replace(
        config.model, src_vocab_size=tokenizer.src_vocab_size, tgt_vocab_size=tokenizer.tgt_vocab_size
    )
    if sampling:  # a fresh segmentation of the raw text every epoch: the sentences stay in memory
        train_src, train_tgt = load_split(d, "train")
        train_set = ParallelDataset.from_texts(train_src, train_tgt, tokenizer, d)
    else:
        train_set = find_prepared_pairs(d, tokenizer).load()
    valid_set = ParallelDataset.from_texts(valid_src, valid_tgt, tokenizer, d)
    resample = None
    if sampling:
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


@contextlib.contextmanager
def training_run(
    config: Config, context: DistributedContext, *, resume: bool = False, overwrite: bool = False
) -> Iterator[Trainer]:
    """``build_trainer`` in a run folder that this run owns for as long as the ``with`` block lasts.

    The main process locks the folder first (``overwrite`` then removes, and logs, what an earlier run wrote
    there). After the build (which reuses the folder's vocabulary or makes one), it checks that it holds no run
    (or, with ``resume``, that there is a ``last.pt``) and sweeps temporary files of killed writes; then, with
    ``resume``, the trainer continues from ``last.pt``. The lock is released when the block ends.

    Raises:
        RunDirError: the folder is in use by another process, holds a run that ``resume`` was not asked to
            continue, or has nothing to resume. See ``build_trainer`` and ``resume_trainer`` for the others.
    """
    folder = RunFolder(config.train.run_dir) if context.is_main else None
    try:
        if folder is not None:  # before the vocabulary is written into the folder
            folder.clear() if overwrite else folder.lock_if_possible()
        trainer = build_trainer(config, context)
        error: UserError | None = None
        if folder is not None:
            try:
                folder.claim(resume=resume)
            except UserError as err:
                error = err
        if not context.all_ok(error is None):  # every rank stops, not only the one that found the problem
            raise error or RunDirError(f"the main process cannot train into {config.train.run_dir}; see its error")
        if resume:
            resume_trainer(trainer)
        yield trainer
    finally:
        if folder is not None:
            folder.release()
