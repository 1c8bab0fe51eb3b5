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
import os
import random
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from transformer.config import Config, DataConfig
from transformer.data.batching import BatchIterator, ParallelDataset, SubwordSampler
from transformer.data.corpus import direction_configs, load_split
from transformer.data.mixing import MixedBatches, direction_seed
from transformer.data.prepare import corpus_fingerprint, find_prepared_directions, prepare_directions, tokenizer_for_run
from transformer.data.tokenizer import Tokenizer
from transformer.errors import DataError, RunDirError, UserError
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
    ``config.model`` is updated in place with the vocabulary sizes, which is what checkpoints record. With several
    ``data.directions``, each direction gets its own pairs (sources tagged with the target language), batches and
    validation data, and the trainer mixes their batches (``MixedBatches``).

    Raises:
        ConfigError: train.precision is not available on the device (checked first).
        DataError: the corpus cannot be read, or nothing is left after filtering.
    """
    autocast_context(config.train.precision, context.device)  # e.g. fp16 on a CPU: said before any data work
    torch.manual_seed(config.train.seed + context.rank)
    random.seed(config.train.seed + context.rank)
    d = config.data
    directions = direction_configs(d)  # a bilingual run: its own config, its one direction
    # Small, and read first: a missing file is reported at once.
    valid_texts = {name: load_split(one, "valid") for name, one in directions}
    # Subword sampling works per direction as for one: each direction's own text is segmented afresh at each of
    # its own epochs (``_train_batches``); a tag is an id put before the pieces, so no sampling ever splits it.
    sampling = d.src_subword_sampling > 0 or d.tgt_subword_sampling > 0
    # Rank 0 finds (or makes) the vocabulary and the encoded training pairs in the data cache, and copies the
    # vocabulary into the run folder; the others wait, then map the same files: one copy in the page cache.
    tokenizer_dir = Path(config.train.run_dir) / "tokenizer"
    prepared = None
    if context.is_main:
        fingerprint = corpus_fingerprint(d)
        tokenizer = tokenizer_for_run(d, tokenizer_dir, fingerprint)
        if not sampling:
            prepared = prepare_directions(d, tokenizer, fingerprint)
    context.barrier()
    if not context.is_main:
        tokenizer = Tokenizer.load(tokenizer_dir)
        if context.is_local_main and not sampling:  # the first process of another machine: its own data cache
            prepared = prepare_directions(d, tokenizer)  # (on a cache shared with rank 0, it finds rank 0's files)
    context.barrier()
    # The vocabulary decides the embedding sizes; the resolved sizes are what checkpoints record.
    config.model = dataclasses.replace(
        config.model, src_vocab_size=tokenizer.src_vocab_size, tgt_vocab_size=tokenizer.tgt_vocab_size
    )
    if not sampling:
        prepared = prepared or find_prepared_directions(d, tokenizer)
        if prepared is None:  # a process whose machine's first process prepared nothing: only a bug gets here
            raise DataError(f"rank {context.rank}: no prepared training pairs in the data cache of this machine")
    train_batches: dict[str, BatchIterator] = {}
    validation: dict[str, ValidationData] = {}
    for index, (name, one) in enumerate(directions):
        # A bilingual tokenizer is its own view; a multilingual one puts this direction's tag first.
        view = tokenizer.for_target(one.tgt_lang)
        # A bilingual run keeps train.seed; directions get seeds of their own (en-de and en-fr share en's text).
        seed = direction_seed(config.train.seed, index) if d.multilingual else config.train.seed
        train_set = prepared[name].load() if prepared is not None else None
        train_batches[name] = _train_batches(config, context, one, view, train_set, seed)
        valid_set = ParallelDataset.from_texts(*valid_texts[name], view, one)
        valid_batches = BatchIterator(valid_set, d.max_tokens, shuffle=False, pad_to_multiple=d.pad_to_multiple)
        validation[name] = ValidationData(valid_batches, *valid_texts[name])
    model = Transformer(config.model)
    logger.info("model: %s parameters", f"{count_parameters(model):,}")
    if not d.multilingual:
        (name,) = train_batches
        return Trainer(config, model, tokenizer, train_batches[name], validation[name], context=context)
    mixed = MixedBatches(train_batches, temperature=d.direction_temperature, seed=config.train.seed)
    logger.info("directions: %s", ", ".join(
        f"{name} {n:,} pairs ({p:.0%} of the batches)" for (name, n), p in zip(mixed.pairs.items(), mixed.weights)
    ))
    return Trainer(config, model, tokenizer, mixed, validation, context=context)


def _train_batches(
    config: Config, context: DistributedContext, data: DataConfig, tokenizer: Tokenizer,
    prepared: ParallelDataset | None, seed: int,
) -> BatchIterator:
    """The training batches of one direction: of its prepared pairs, or, with subword sampling, of its raw text
    (in memory), segmented afresh every epoch by ``tokenizer`` (which puts a multilingual run's tag first)."""
    resample = None
    if prepared is None:
        train_src, train_tgt = load_split(data, "train")
        prepared = ParallelDataset.from_texts(train_src, train_tgt, tokenizer, data)
        resample = SubwordSampler(
            prepared, tokenizer, data.src_subword_sampling, data.tgt_subword_sampling, seed=seed,
            max_src_tokens=data.max_src_tokens, max_tgt_tokens=data.max_tgt_tokens,
        )
    return BatchIterator(
        prepared,
        data.max_tokens,
        shuffle=True,
        seed=seed,
        rank=context.rank,
        world_size=context.world_size,
        pad_to_multiple=data.pad_to_multiple,
        resample=resample,
    )


class StartupInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM came during start-up, before the first update (``signum`` says which)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def _signals_stop_start_up() -> Iterator[None]:
    """SIGINT and SIGTERM raise ``StartupInterrupted`` in this process while the block runs (once: a second
    Ctrl-C does not cut the clean-up short). The processes it forks meanwhile (the corpus encoders) inherit the
    handler and ignore them: this process stops them, instead of each printing a ``KeyboardInterrupt``."""
    main_pid = os.getpid()
    raised = False

    def handler(signum: int, frame: Any) -> None:
        nonlocal raised
        if os.getpid() == main_pid and not raised:
            raised = True
            raise StartupInterrupted(signum)

    previous = {}
    with contextlib.suppress(ValueError):  # not in the main thread: leave signals alone
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextlib.contextmanager
def training_run(
    config: Config, context: DistributedContext, *, resume: bool = False, overwrite: bool = False
) -> Iterator[Trainer]:
    """``build_trainer`` in a run folder that this run owns for as long as the ``with`` block lasts.

    The main process locks the folder first (``overwrite`` then removes, and logs, what an earlier run wrote
    there; ``resume`` checks that there is a ``last.pt``), before it writes anything. After the build (which
    reuses the folder's vocabulary or makes one: a vocabulary mismatch is named first) it checks that the folder
    holds no run that ``resume`` was not asked to continue, and sweeps temporary files of killed writes; then,
    with ``resume``, the trainer continues from ``last.pt``. The lock is released when the block ends.

    A start-up that fails or is stopped by SIGINT/SIGTERM (``StartupInterrupted``) leaves the folder as it
    found it: the vocabulary this command wrote goes again, and so does the folder if this command made it and
    nothing else is in it. A run that stops or fails before its first checkpoint removes its vocabulary too (no
    checkpoint uses it, and it would refuse a fresh start with other vocabulary settings).

    Raises:
        RunDirError: the folder is in use by another process, holds a run that ``resume`` was not asked to
            continue, or has nothing to resume. See ``build_trainer`` and ``resume_trainer`` for the others.
        StartupInterrupted: SIGINT or SIGTERM before the ``with`` block's body runs.
    """
    folder = RunFolder(config.train.run_dir) if context.is_main else None
    made_folder = folder is not None and not folder.path.exists()
    wrote_vocabulary = started = completed = False
    try:
        with _signals_stop_start_up():
            _all_or_none(context, folder, lambda f: f.take(overwrite=overwrite, resume=resume))
            wrote_vocabulary = folder is not None and not folder.has_vocabulary()
            trainer = build_trainer(config, context)  # a held folder's own vocabulary: its mismatch is named first
            _all_or_none(context, folder, lambda f: f.claim(resume=resume))
            if resume:
                resume_trainer(trainer)
        started = True
        yield trainer
        completed = trainer.stop_signal is None
    finally:
        if folder is not None:
            # No checkpoint uses the vocabulary this command wrote, and it would clash with other settings.
            if wrote_vocabulary and (not started or (not completed and not folder.checkpoints())):
                folder.remove_vocabulary()
            folder.release()
            if made_folder:
                folder.remove_if_empty()


def _all_or_none(context: DistributedContext, folder: RunFolder | None, step: Callable[[RunFolder], None]) -> None:
    """``step(folder)`` on the main process (the others have no folder); when it raises, every rank stops."""
    error: UserError | None = None
    try:
        if folder is not None:
            step(folder)
    except UserError as err:
        error = err
    if not context.all_ok(error is None):  # every rank stops, not only the one that found the problem
        raise error or RunDirError("the main process cannot train into this run folder; see its error")
