"""Batches of several translation directions in one stream: each batch holds one direction, drawn at random.

Every direction keeps its own ``BatchIterator`` (token-budget batches of its own pairs, its own shuffling and
epochs). ``MixedBatches`` decides which direction gives the next batch: direction ``d`` with probability
proportional to ``n_d ** (1 / temperature)``, ``n_d`` its training pairs (Arivazhagan et al., 2019): temperature 1
samples in proportion to the sizes, a higher one flattens towards uniform, so a small direction is seen more
often than its share. One epoch is as many batches as the directions have together; a direction drawn more
often than it has batches starts its own next epoch.

The draws of an epoch come from a generator seeded by ``(seed, epoch)``: every rank of a distributed run draws
the same directions (and takes its own shard of each), and a run resumed from ``state_dict()`` continues with
exactly the batches an uninterrupted one would have seen.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from transformer.data.batching import Batch, BatchIterator


def direction_weights(n_pairs: Sequence[int], temperature: float) -> np.ndarray:
    """The probability of each direction: ``n ** (1 / temperature)``, normalised.

    Raises:
        ValueError: no direction, a direction without pairs, or a temperature that is not positive.
    """
    if not n_pairs or min(n_pairs) <= 0 or not temperature > 0:
        raise ValueError(f"need directions with pairs and a positive temperature; got {list(n_pairs)}, {temperature}")
    sizes = np.asarray(n_pairs, dtype=np.float64)
    weights = (sizes / sizes.max()) ** (1.0 / temperature)  # scaled first: no overflow at temperatures near 0
    return weights / weights.sum()


def direction_seed(seed: int, index: int) -> int:
    """The shuffling seed of direction ``index`` of a run seeded ``seed``: directions that share a text (en-de and
    en-fr) then never share its shuffling or its subword sampling."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


class MixedBatches:
    """One stream of the batches of several directions (see the module docstring); the interface of
    ``BatchIterator`` that the trainer uses.

    ``state_dict()`` is ``{"epoch", "position", "directions": {name: that direction's state}}``; ``position``
    counts the batches already yielded in ``epoch``. ``set_epoch(e)`` with a new epoch starts its draws from
    the first, the directions going on from where they are.

    Args:
        directions: each direction's training batches, keyed by name (``"en-de"``), all with the same ranks.
        temperature: see ``direction_weights``.
        seed: seeds the draws together with the epoch (>= 0).

    Raises:
        ValueError: no direction, a seed below 0, or see ``direction_weights``.
    """

    def __init__(self, directions: dict[str, BatchIterator], *, temperature: float = 1.0, seed: int = 0) -> None:
        if seed < 0:
            raise ValueError(f"need seed >= 0, got {seed}")
        self.directions = directions
        self.names = list(directions)
        self.seed = seed
        self.pairs = {name: len(batches.dataset) for name, batches in directions.items()}
        self.weights = direction_weights(list(self.pairs.values()), temperature)
        # Their first epochs' counts: fixed, even when subword sampling changes a direction's count each epoch.
        self.batches_per_epoch = sum(len(batches) for batches in directions.values())
        self.epoch = 0
        self.position = 0
        self._streams: dict[str, Iterator[Batch]] = {}  # each direction's batches being taken, rebuilt on a load
        self._draws: tuple[int, np.ndarray] | None = None  # the epoch in hand and its draws

    def __len__(self) -> int:
        """Batches of an epoch for this rank: the directions' together."""
        return self.batches_per_epoch

    def draws(self, epoch: int) -> np.ndarray:
        """(batches_per_epoch,) the index in ``names`` of the direction of each batch of ``epoch``."""
        if self._draws is None or self._draws[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._draws = (epoch, rng.choice(len(self.names), size=self.batches_per_epoch, p=self.weights))
        return self._draws[1]

    def __iter__(self) -> Iterator[Batch]:
        draws = self.draws(self.epoch)
        while self.position < len(draws):
            batch = self._next_of(self.names[draws[self.position]])
            self.position += 1
            yield batch
        self.epoch, self.position = self.epoch + 1, 0

    def _next_of(self, name: str) -> Batch:
        """The next batch of direction ``name``; at the end of its epoch, the first of its next one."""
        for _ in range(3):  # a stream at its end; then a fresh one, whose epoch may be used up (a loaded state)
            batch = next(self._streams[name], None) if name in self._streams else None
            if batch is not None:
                return batch
            self._streams[name] = iter(self.directions[name])  # iterating past an epoch's end moved to the next
        raise RuntimeError(f"direction {name} has an epoch without batches")

    def set_epoch(self, epoch: int) -> None:
        """Move to ``epoch``; a different epoch than the current one starts at its first draw."""
        if epoch != self.epoch:
            self.epoch, self.position = epoch, 0

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "position": self.position,
            "directions": {name: batches.state_dict() for name, batches in self.directions.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``state_dict()``; the next iteration resumes right after the last yielded batch.

        Raises:
            ValueError: the state is malformed, names other directions, or a position is out of range.
        """
        if set(state) != {"epoch", "position", "directions"}:
            raise ValueError(f"expected a state with keys epoch, position and directions, got {sorted(state)}")
        if set(state["directions"]) != set(self.names):
            raise ValueError(f"the state is of directions {sorted(state['directions'])}, not {sorted(self.names)}")
        epoch, position = int(state["epoch"]), int(state["position"])
        if not 0 <= position <= self.batches_per_epoch:
            raise ValueError(f"position {position} is outside epoch {epoch}'s {self.batches_per_epoch} batches")
        for name, batches in self.directions.items():
            batches.load_state_dict(state["directions"][name])
        self.epoch, self.position = epoch, position
        self._streams = {}  # their positions changed under them


def pair_counts(batches: BatchIterator | MixedBatches) -> int | dict[str, int]:
    """The training pairs after filtering (per direction for several): what a resumed run checks is unchanged."""
    return dict(batches.pairs) if isinstance(batches, MixedBatches) else len(batches.dataset)
