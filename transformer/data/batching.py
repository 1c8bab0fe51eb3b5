"""Encoded sentence pairs and the token-budget batches made of them.

``ParallelDataset`` encodes and filters pairs; ``BatchIterator`` groups them into batches of at most
``max_tokens`` tokens (padding included), similar lengths together, resumable and shardable. Teacher
forcing layout of one pair::

    src     = x + [EOS]
    tgt_in  = [BOS] + y
    tgt_out = y + [EOS]
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from transformer.config import DataConfig
from transformer.data.tokenizer import Tokenizer
from transformer.errors import ConfigError, DataError
from transformer.tokens import BOS_ID, EOS_ID, PAD_ID

logger = logging.getLogger(__name__)

# ---- encoded pairs -----------------------------------------------------------------------------


class ParallelDataset:
    """Encoded sentence pairs in flat arrays (no BOS/EOS stored; ``collate`` adds them).

    Args:
        src_ids: subword ids of each source sentence (no specials), each non-empty.
        tgt_ids: subword ids of each target sentence (no specials), each non-empty.
        src_texts: the raw source sentences, aligned with ``src_ids`` (optional).
        tgt_texts: the raw target sentences: the references for BLEU (optional).
        input_index: position of each pair in the lists it was read from (defaults to 0..N-1).

    Attributes:
        src_lengths: (N,) int64, source length as fed to the model (pieces + EOS).
        tgt_lengths: (N,) int64, length of ``tgt_in`` and ``tgt_out`` (pieces + 1).
    """

    def __init__(
        self,
        src_ids: Sequence[Sequence[int]],
        tgt_ids: Sequence[Sequence[int]],
        *,
        src_texts: Sequence[str] | None = None,
        tgt_texts: Sequence[str] | None = None,
        input_index: np.ndarray | None = None,
    ):
        if len(src_ids) != len(tgt_ids):
            raise ValueError(f"{len(src_ids)} source but {len(tgt_ids)} target sequences")
        self._src_flat, self._src_offsets = flatten(src_ids)
        self._tgt_flat, self._tgt_offsets = flatten(tgt_ids)
        self.src_lengths = np.diff(self._src_offsets) + 1
        self.tgt_lengths = np.diff(self._tgt_offsets) + 1
        self.src_texts = list(src_texts) if src_texts is not None else []
        self.tgt_texts = list(tgt_texts) if tgt_texts is not None else []
        self.input_index = np.arange(len(src_ids)) if input_index is None else np.asarray(input_index)

    @classmethod
    def from_texts(
        cls,
        src_texts: Sequence[str],
        tgt_texts: Sequence[str],
        tokenizer: Tokenizer,
        cfg: DataConfig,
        *,
        filter_lengths: bool = True,
    ) -> ParallelDataset:
        """Encode pairs and drop the unusable ones, with one counted warning.

        Dropped: empty pairs (either side); and, if ``filter_lengths``, pairs whose source is longer than
        ``cfg.max_src_tokens`` or target longer than ``cfg.max_tgt_tokens`` (lengths as fed to the
        model: pieces + 1), or whose length ratio exceeds ``cfg.max_length_ratio`` (0 disables it).

        Args:
            src_texts: source sentences; tgt_texts: their translations (same length).
            tokenizer: encodes each side (no BOS/EOS added here).
            cfg: the length limits.
            filter_lengths: False keeps over-long pairs (e.g. to score every test sentence).

        Returns:
            The kept pairs; ``input_index`` maps each back to its position in the input lists.

        Raises:
            DataError: the lists differ in length, or no pair is left.
        """
        if len(src_texts) != len(tgt_texts):
            raise DataError(f"{len(src_texts)} source sentences but {len(tgt_texts)} target sentences")
        start = time.perf_counter()
        src_ids, tgt_ids = tokenizer.encode_src(list(src_texts)), tokenizer.encode_tgt(list(tgt_texts))
        src_len = np.fromiter(map(len, src_ids), dtype=np.int64, count=len(src_ids)) + 1
        tgt_len = np.fromiter(map(len, tgt_ids), dtype=np.int64, count=len(tgt_ids)) + 1
        drops = length_filter(src_len, tgt_len, cfg, filter_lengths=filter_lengths)
        keep = np.flatnonzero(~drops.any)
        if len(keep) == 0:
            raise DataError(
                f"no sentence pair left out of {len(src_texts)} after filtering: {drops.reasons(cfg)}; raise those "
                "data.* limits or check the corpus files"
            )
        n_dropped = len(src_texts) - len(keep)
        if n_dropped:
            first = np.flatnonzero(drops.any)[:5] + 1
            logger.warning(
                "dropped %d of %d sentence pairs: %s (first at lines %s)",
                n_dropped, len(src_texts), drops.reasons(cfg), ", ".join(map(str, first)),
            )
        dataset = cls(
            [src_ids[i] for i in keep],
            [tgt_ids[i] for i in keep],
            src_texts=[src_texts[i] for i in keep],
            tgt_texts=[tgt_texts[i] for i in keep],
            input_index=keep,
        )
        logger.info("encoded %d sentence pairs in %.2fs", len(dataset), time.perf_counter() - start)
        return dataset

    @classmethod
    def from_arrays(
        cls,
        src_flat: np.ndarray,
        src_offsets: np.ndarray,
        tgt_flat: np.ndarray,
        tgt_offsets: np.ndarray,
        input_index: np.ndarray,
    ) -> ParallelDataset:
        """Pairs already encoded into flat arrays (e.g. memory-mapped by ``transformer.data.prepare``).

        The arrays are used as they are, not copied: a memory map stays a memory map, shared with every other
        process that maps the same files. There are no raw texts (``src_texts``/``tgt_texts`` are empty).

        Args:
            src_flat, tgt_flat: the ids of all sentences one after another (no specials).
            src_offsets, tgt_offsets: (N+1,) start of each sentence in the flat arrays, and the end.
            input_index: (N,) line of each pair in the corpus (0-based).
        """
        dataset = cls.__new__(cls)
        dataset._src_flat, dataset._src_offsets = src_flat, src_offsets
        dataset._tgt_flat, dataset._tgt_offsets = tgt_flat, tgt_offsets
        dataset.src_lengths = np.diff(src_offsets) + 1
        dataset.tgt_lengths = np.diff(tgt_offsets) + 1
        if len(dataset.src_lengths) != len(dataset.tgt_lengths) or len(input_index) != len(dataset.src_lengths):
            raise ValueError(
                f"{len(dataset.src_lengths)} source, {len(dataset.tgt_lengths)} target and {len(input_index)} index "
                "entries"
            )
        dataset.src_texts, dataset.tgt_texts = [], []
        dataset.input_index = input_index
        return dataset

    def __len__(self) -> int:
        return len(self.src_lengths)

    def src_ids(self, i: int) -> np.ndarray:
        """Source subword ids of pair ``i`` (no EOS), a view into the flat array."""
        return self._src_flat[self._src_offsets[i] : self._src_offsets[i + 1]]

    def tgt_ids(self, i: int) -> np.ndarray:
        """Target subword ids of pair ``i`` (no BOS/EOS), a view into the flat array."""
        return self._tgt_flat[self._tgt_offsets[i] : self._tgt_offsets[i + 1]]


@dataclass(frozen=True)
class Drops:
    """Which pairs a length filter drops, and why (boolean arrays, one entry per pair)."""

    empty: np.ndarray
    too_long: np.ndarray
    bad_ratio: np.ndarray

    @property
    def any(self) -> np.ndarray:
        return self.empty | self.too_long | self.bad_ratio

    def reasons(self, cfg: DataConfig) -> str:
        return (
            f"{int(self.empty.sum())} empty, {int(self.too_long.sum())} longer than max_src_tokens="
            f"{cfg.max_src_tokens} or max_tgt_tokens={cfg.max_tgt_tokens}, {int(self.bad_ratio.sum())} with a "
            f"length ratio over max_length_ratio={cfg.max_length_ratio}"
        )


def length_filter(src_len: np.ndarray, tgt_len: np.ndarray, cfg: DataConfig, *, filter_lengths: bool = True) -> Drops:
    """The pairs to drop, given their lengths as fed to the model (pieces + 1).

    Empty pairs (either side) always; with ``filter_lengths``, also pairs over ``cfg.max_src_tokens`` or
    ``cfg.max_tgt_tokens``, and pairs whose length ratio exceeds ``cfg.max_length_ratio`` (0 disables it).
    """
    empty = (src_len == 1) | (tgt_len == 1)
    too_long = np.zeros_like(empty)
    bad_ratio = np.zeros_like(empty)
    if filter_lengths:
        too_long = ~empty & ((src_len > cfg.max_src_tokens) | (tgt_len > cfg.max_tgt_tokens))
        if cfg.max_length_ratio > 0:
            ratio = np.maximum(src_len, tgt_len) / np.minimum(src_len, tgt_len)
            bad_ratio = ~empty & ~too_long & (ratio > cfg.max_length_ratio)
    return Drops(empty, too_long, bad_ratio)


def flatten(seqs: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Ragged id lists -> (flat int32 ids, (N+1,) int64 offsets)."""
    lengths = np.fromiter(map(len, seqs), dtype=np.int64, count=len(seqs))
    offsets = np.zeros(len(seqs) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.fromiter(itertools.chain.from_iterable(seqs), dtype=np.int32, count=int(offsets[-1]))
    return flat, offsets


class SubwordSampler:
    """A fresh sampled segmentation of the training pairs for each epoch (subword regularisation).

    Calling it with an epoch returns a ``ParallelDataset`` of the same pairs, in the same order, with
    each side whose alpha is positive encoded by ``Tokenizer.encode_src/encode_tgt(sample_alpha=alpha)``
    (BPE-dropout for a BPE vocabulary); a side with alpha 0 keeps its deterministic pieces. The
    segmentation depends only on ``(seed, epoch)``, so a resumed run and every rank of a distributed one
    see the same pieces as an uninterrupted single process. A pair whose sampled form is longer than
    ``max_src_tokens``/``max_tgt_tokens`` keeps its deterministic form: the limits hold.

    Args:
        dataset: the deterministically encoded, filtered pairs (with their texts).
        tokenizer: the vocabulary they were encoded with.
        src_alpha, tgt_alpha: the sampling parameter of each side (BPE merge-dropout probability), in
            [0, 1), at least one positive.
        seed: seeds the sampling together with the epoch (>= 0).
        max_src_tokens, max_tgt_tokens: the length limits, as for ``ParallelDataset.from_texts``.

    Raises:
        ValueError: an alpha or the seed is out of range, or the dataset carries no texts.
    """

    def __init__(
        self,
        dataset: ParallelDataset,
        tokenizer: Tokenizer,
        src_alpha: float,
        tgt_alpha: float,
        *,
        seed: int = 0,
        max_src_tokens: int = 256,
        max_tgt_tokens: int = 256,
    ):
        if not (0.0 <= src_alpha < 1.0 and 0.0 <= tgt_alpha < 1.0 and src_alpha + tgt_alpha > 0) or seed < 0:
            raise ValueError(
                f"need alphas in [0, 1), one of them positive, and seed >= 0; got src_alpha={src_alpha}, "
                f"tgt_alpha={tgt_alpha}, seed={seed}"
            )
        if len(dataset.src_texts) != len(dataset) or len(dataset.tgt_texts) != len(dataset):
            raise ValueError("subword sampling needs a dataset built with its texts (ParallelDataset.from_texts)")
        self.dataset = dataset
        self.tokenizer = tokenizer
        self.src_alpha = src_alpha
        self.tgt_alpha = tgt_alpha
        self.seed = seed
        self.max_src_tokens = max_src_tokens
        self.max_tgt_tokens = max_tgt_tokens

    def __call__(self, epoch: int) -> ParallelDataset:
        d = self.dataset
        src_seed, tgt_seed = np.random.SeedSequence([self.seed, epoch]).generate_state(2).tolist()
        src = self.tokenizer.encode_src(d.src_texts, sample_alpha=self.src_alpha, seed=src_seed)
        tgt = self.tokenizer.encode_tgt(d.tgt_texts, sample_alpha=self.tgt_alpha, seed=tgt_seed)
        for i in range(len(d)):
            if len(src[i]) + 1 > self.max_src_tokens or len(tgt[i]) + 1 > self.max_tgt_tokens:
                src[i], tgt[i] = d.src_ids(i).tolist(), d.tgt_ids(i).tolist()
        return ParallelDataset(src, tgt, src_texts=d.src_texts, tgt_texts=d.tgt_texts, input_index=d.input_index)


# ---- batches -----------------------------------------------------------------------------------


@dataclass
class Batch:
    """A padded batch (PAD_ID fills; lengths rounded up to a multiple of ``pad_to_multiple``).

    Attributes:
        src: (B, S) long, source ids + EOS.
        tgt_in: (B, T) long, BOS + target ids (decoder input).
        tgt_out: (B, T) long, target ids + EOS (labels).
        indices: (B,) long, positions of the pairs in the dataset (to restore the original order).
        n_src_tokens: non-pad source tokens, a host int (no device sync needed).
        n_tgt_tokens: non-pad target tokens (of ``tgt_out``), a host int.
    """

    src: torch.Tensor
    tgt_in: torch.Tensor
    tgt_out: torch.Tensor
    indices: torch.Tensor
    n_src_tokens: int
    n_tgt_tokens: int

    def __len__(self) -> int:
        return self.src.size(0)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """A copy with ``src``, ``tgt_in`` and ``tgt_out`` on ``device``; ``indices`` stays on the host."""
        return replace(
            self,
            src=self.src.to(device, non_blocking=non_blocking),
            tgt_in=self.tgt_in.to(device, non_blocking=non_blocking),
            tgt_out=self.tgt_out.to(device, non_blocking=non_blocking),
        )

    def pin_memory(self) -> Batch:
        """A copy in pinned host memory, for asynchronous copies; unchanged when there is no CUDA."""
        if not torch.cuda.is_available():
            return self
        return replace(
            self, src=self.src.pin_memory(), tgt_in=self.tgt_in.pin_memory(), tgt_out=self.tgt_out.pin_memory()
        )


def collate(dataset: ParallelDataset, indices: np.ndarray, pad_to_multiple: int = 1) -> Batch:
    """Build the padded tensors of the pairs at ``indices`` (see the module docstring for the layout).

    Args:
        dataset: the encoded pairs.
        indices: (B,) positions in ``dataset``.
        pad_to_multiple: round S and T up to a multiple of this.

    Returns:
        The batch; ``src`` is (B, S), ``tgt_in``/``tgt_out`` are (B, T).
    """
    indices = np.asarray(indices, dtype=np.int64)
    src_len, tgt_len = dataset.src_lengths[indices], dataset.tgt_lengths[indices]
    S, T = _round_up(int(src_len.max()), pad_to_multiple), _round_up(int(tgt_len.max()), pad_to_multiple)
    src = np.full((len(indices), S), PAD_ID, dtype=np.int64)
    tgt_in = np.full((len(indices), T), PAD_ID, dtype=np.int64)
    tgt_out = np.full((len(indices), T), PAD_ID, dtype=np.int64)
    for row, i in enumerate(indices):
        x, y = dataset.src_ids(i), dataset.tgt_ids(i)
        src[row, : len(x)] = x
        src[row, len(x)] = EOS_ID
        tgt_in[row, 0] = BOS_ID
        tgt_in[row, 1 : len(y) + 1] = y
        tgt_out[row, : len(y)] = y
        tgt_out[row, len(y)] = EOS_ID
    return Batch(
        src=torch.from_numpy(src),
        tgt_in=torch.from_numpy(tgt_in),
        tgt_out=torch.from_numpy(tgt_out),
        indices=torch.from_numpy(indices.copy()),
        n_src_tokens=int(src_len.sum()),
        n_tgt_tokens=int(tgt_len.sum()),
    )


def pad_ids(rows: Sequence[Sequence[int]], device: torch.device | str) -> torch.Tensor:
    """Right-pad id lists with PAD_ID into one tensor (for sentences to translate, which have no pairs).

    Args:
        rows: B id lists (lists, tuples or 1-d arrays), of any lengths.
        device: where the tensor is made.

    Returns:
        (B, S) long tensor, S the longest row's length; (0, 0) for no rows.
    """
    width = max(map(len, rows), default=0)
    padded = [[int(i) for i in row] + [PAD_ID] * (width - len(row)) for row in rows]
    return torch.tensor(padded, dtype=torch.long, device=device).reshape(len(rows), width)


def _round_up(n: int | np.ndarray, multiple: int) -> int | np.ndarray:
    return (n + multiple - 1) // multiple * multiple


def token_batches(
    order: np.ndarray, src_lengths: np.ndarray, tgt_lengths: np.ndarray, max_tokens: int, pad_to_multiple: int
) -> list[np.ndarray]:
    """Cut ``order`` greedily into consecutive batches of at most ``max_tokens`` tokens.

    A batch of B pairs costs ``B * max(S, T)`` with S and T the padded lengths, so neither the
    source nor the target tensor holds more than ``max_tokens`` ids. A single pair over the budget
    gets a batch of its own.

    Args:
        order: (N,) dataset positions, usually sorted by length.
        src_lengths: (N_dataset,) source lengths; tgt_lengths: the same for the target.
        max_tokens: the token budget per batch.
        pad_to_multiple: padding granularity.

    Returns:
        Arrays of dataset positions, one per batch, in the order of ``order``.
    """
    width = np.maximum(_round_up(src_lengths[order], pad_to_multiple), _round_up(tgt_lengths[order], pad_to_multiple))
    batches, start, batch_width = [], 0, 0
    for k, w in enumerate(width.tolist()):
        batch_width = max(batch_width, w)
        if k > start and (k - start + 1) * batch_width > max_tokens:
            batches.append(order[start:k])
            start, batch_width = k, w
    if len(order):
        batches.append(order[start:])
    return batches


class BatchIterator:
    """Token-budget batches of a dataset, one epoch per iteration; shardable and resumable.

    Training mode (``shuffle=True``): each epoch, pairs are sorted by length (see ``_order``) with
    ties broken randomly, cut into batches (``token_batches``) and the batches are shuffled, all from
    a generator seeded by ``(seed, epoch)``: the same seed and epoch always give the same batches.
    Rank ``r`` of ``world_size`` takes batches ``r, r + world_size, ...`` of the first
    ``world_size * (n // world_size)`` batches: disjoint, equal counts, the remainder dropped.

    Evaluation mode (``shuffle=False``): pairs sorted by (source, target) length, the same batches
    every epoch, none dropped (ranks may get one batch more than others); put the hypotheses back in
    dataset order with ``Batch.indices``.

    Iterating to the end of an epoch moves to the next epoch. ``state_dict()`` gives
    ``{"epoch", "position"}`` (batches of this rank already yielded in that epoch); after
    ``load_state_dict`` the iteration continues with exactly the batches an uninterrupted run would
    have yielded. ``set_epoch(e)`` with a new epoch starts it from its first batch.

    With ``resample`` (training mode; e.g. a ``SubwordSampler``), epoch ``e`` batches and collates the
    pairs of ``resample(e)`` instead of ``dataset``: the lengths, and so the batch count, may differ from
    one epoch to the next. ``len()`` is then the count of the current epoch.

    Args:
        dataset: the encoded pairs.
        max_tokens: token budget per batch, padding included (see ``token_batches``).
        shuffle: training mode (True) or evaluation mode (False).
        seed: seeds the shuffling together with the epoch (>= 0).
        rank: this process's rank; world_size: the number of processes.
        pad_to_multiple: pad S and T to a multiple of this.
        resample: the dataset of each epoch (a function of the epoch), or None for ``dataset`` throughout.

    Raises:
        ValueError: an argument is out of range, or there are fewer batches than ranks in training mode.
    """

    def __init__(
        self,
        dataset: ParallelDataset,
        max_tokens: int,
        *,
        shuffle: bool,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        pad_to_multiple: int = 8,
        resample: Callable[[int], ParallelDataset] | None = None,
    ):
        if resample is not None and not shuffle:
            raise ValueError("resample is for training mode (shuffle=True) only")
        if max_tokens <= 0 or pad_to_multiple <= 0 or seed < 0:
            raise ValueError(
                f"need max_tokens > 0, pad_to_multiple > 0, seed >= 0; got {max_tokens}, {pad_to_multiple}, {seed}"
            )
        if not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        self.dataset = dataset
        self.max_tokens = max_tokens
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.pad_to_multiple = pad_to_multiple
        self.resample = resample
        self.epoch = 0
        self.position = 0
        # The epoch in hand, its pairs and their batches in untied length order (see ``_epoch``).
        self._cached: tuple[int, ParallelDataset, list[np.ndarray]] | None = None
        dataset, batches = self._epoch(0)
        if shuffle and len(batches) < world_size:
            raise ConfigError(
                f"only {len(batches)} batches of data.max_tokens={max_tokens} tokens for {world_size} processes: "
                "each needs one; lower data.max_tokens or use fewer processes"
            )
        n_over = sum(1 for b in batches if len(b) == 1 and self._cost(dataset, b) > max_tokens)
        if n_over:
            logger.warning("%d sentence pairs exceed max_tokens=%d alone; each gets its own batch", n_over, max_tokens)

    def __len__(self) -> int:
        """Batches of the current epoch for this rank."""
        return self._n_batches(self.epoch)

    def _n_batches(self, epoch: int) -> int:
        n_total = len(self._epoch(epoch)[1])
        if self.shuffle:
            return n_total // self.world_size
        return len(range(self.rank, n_total, self.world_size))

    def __iter__(self) -> Iterator[Batch]:
        batches = self.epoch_batches(self.epoch)
        dataset = self.epoch_dataset(self.epoch)
        while self.position < len(batches):
            indices = batches[self.position]
            self.position += 1
            yield collate(dataset, indices, self.pad_to_multiple)
        self.epoch, self.position = self.epoch + 1, 0

    def epoch_dataset(self, epoch: int) -> ParallelDataset:
        """The pairs that ``epoch`` batches: ``dataset``, or ``resample(epoch)`` (made once per epoch)."""
        return self._epoch(epoch)[0]

    def _epoch(self, epoch: int) -> tuple[ParallelDataset, list[np.ndarray]]:
        """``epoch``'s pairs and their batches in untied length order (evaluation's batches; in training,
        random tie-breaking keeps the sorted lengths, so the same count). Kept for one epoch at a time."""
        if self._cached is None or self._cached[0] != epoch:
            dataset = self.dataset if self.resample is None else self.resample(epoch)
            self._cached = (epoch, dataset, self._batches(dataset, self._order(dataset, None)))
        return self._cached[1], self._cached[2]

    def epoch_batches(self, epoch: int) -> list[np.ndarray]:
        """This rank's batches of ``epoch``, as arrays of dataset positions (no tensors built)."""
        dataset, batches = self._epoch(epoch)
        if not self.shuffle:
            return batches[self.rank :: self.world_size]
        rng = np.random.default_rng([self.seed, epoch])
        batches = self._batches(dataset, self._order(dataset, rng))
        batches = [batches[i] for i in rng.permutation(len(batches))]
        usable = len(batches) // self.world_size * self.world_size
        return batches[self.rank : usable : self.world_size]

    def set_epoch(self, epoch: int) -> None:
        """Move to ``epoch``; a different epoch than the current one starts at its first batch."""
        if epoch != self.epoch:
            self.epoch, self.position = epoch, 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore ``state_dict()``; the next iteration resumes right after the last yielded batch.

        Raises:
            ValueError: the state is malformed or its position is past the end of the epoch.
        """
        if set(state) != {"epoch", "position"}:
            raise ValueError(f"expected a state with keys epoch and position, got {sorted(state)}")
        epoch, position = int(state["epoch"]), int(state["position"])
        n_batches = self._n_batches(epoch)
        if not 0 <= position <= n_batches:
            raise ValueError(f"position {position} is outside epoch {epoch}'s {n_batches} batches")
        self.epoch, self.position = epoch, position

    def _order(self, dataset: ParallelDataset, rng: np.random.Generator | None) -> np.ndarray:
        """Dataset positions sorted by length; ``rng`` breaks ties (training), else position does.

        Training sorts by padded width max(S, T) first (it sets a batch's cost), then by the padded
        target and source lengths, then the exact ones: neighbours share padded shapes, so little
        padding. Evaluation sorts by source length (it drives decoding), then target length.
        """
        src_len, tgt_len = dataset.src_lengths, dataset.tgt_lengths
        ties = rng.permutation(len(src_len)) if rng is not None else np.arange(len(src_len))
        if not self.shuffle:
            return np.lexsort((ties, tgt_len, src_len))  # the last key is the primary one
        src_pad, tgt_pad = _round_up(src_len, self.pad_to_multiple), _round_up(tgt_len, self.pad_to_multiple)
        return np.lexsort((ties, src_len, tgt_len, src_pad, tgt_pad, np.maximum(src_pad, tgt_pad)))

    def _batches(self, dataset: ParallelDataset, order: np.ndarray) -> list[np.ndarray]:
        return token_batches(order, dataset.src_lengths, dataset.tgt_lengths, self.max_tokens, self.pad_to_multiple)

    def _cost(self, dataset: ParallelDataset, indices: np.ndarray) -> int:
        """Tokens of a batch, padding included: B * max(S, T)."""
        m = self.pad_to_multiple
        S = _round_up(int(dataset.src_lengths[indices].max()), m)
        T = _round_up(int(dataset.tgt_lengths[indices].max()), m)
        return len(indices) * max(S, T)
