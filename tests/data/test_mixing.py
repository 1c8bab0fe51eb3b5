"""Batches of several directions in one stream: the draws follow the temperature, every rank draws alike, a
direction that runs out starts its next epoch, and a resume continues with exactly the same batches."""

from __future__ import annotations

import numpy as np
import pytest

from transformer.data.batching import BatchIterator, ParallelDataset
from transformer.data.mixing import MixedBatches, direction_seed, direction_weights

# Ids in a range of their own per direction, so that a batch tells which direction it is of.
FIRST_ID = {"big": 10, "small": 100}


def dataset(name: str, n_pairs: int) -> ParallelDataset:
    """``n_pairs`` pairs of 3 to 5 ids a side: with ``max_tokens=7``, one pair a batch (two would cost 8)."""
    rng = np.random.default_rng(n_pairs)
    src = [[FIRST_ID[name] + i % 50] * int(n) for i, n in enumerate(rng.integers(3, 6, size=n_pairs))]
    return ParallelDataset(src, [[7] * int(n) for n in rng.integers(3, 6, size=n_pairs)])


def mixed(sizes: dict[str, int], temperature: float = 1.0, *, max_tokens: int = 7, rank: int = 0,
          world_size: int = 1) -> MixedBatches:
    directions = {
        name: BatchIterator(dataset(name, n), max_tokens, shuffle=True, seed=direction_seed(3, i), rank=rank,
                            world_size=world_size, pad_to_multiple=1)
        for i, (name, n) in enumerate(sizes.items())
    }
    return MixedBatches(directions, temperature=temperature, seed=3)


def direction_of(batch) -> str:
    return "big" if int(batch.src[0, 0]) < FIRST_ID["small"] else "small"


def shares(batches: MixedBatches, epochs: int) -> np.ndarray:
    counts = np.bincount(np.concatenate([batches.draws(e) for e in range(epochs)]), minlength=len(batches.names))
    return counts / counts.sum()


def test_direction_weights_follow_the_sizes_at_temperature_one_and_flatten_above():
    assert direction_weights([400, 100], 1.0) == pytest.approx([0.8, 0.2])
    assert direction_weights([400, 100], 2.0) == pytest.approx([2 / 3, 1 / 3])  # square roots: 20 and 10
    assert direction_weights([400, 100], 1e6) == pytest.approx([0.5, 0.5], abs=1e-5)
    with pytest.raises(ValueError, match="temperature"):
        direction_weights([400, 100], 0.0)


def test_temperature_one_draws_in_proportion_and_a_large_one_near_uniformly():
    # One pair a batch: 500 draws an epoch, 6,000 over 12 epochs,
    # so a share is known to about 0.006 (one standard deviation); the assertions allow five of them.
    proportional = mixed({"big": 400, "small": 100}, temperature=1.0)
    assert len(proportional) == 500
    assert shares(proportional, 12) == pytest.approx([0.8, 0.2], abs=0.03)
    flat = mixed({"big": 400, "small": 100}, temperature=50.0)
    assert shares(flat, 12) == pytest.approx([0.5, 0.5], abs=0.03)
    # The draws of an epoch depend on the seed and the epoch only.
    assert np.array_equal(flat.draws(5), mixed({"big": 400, "small": 100}, temperature=50.0).draws(5))
    assert not np.array_equal(flat.draws(5), flat.draws(6))


def test_an_epoch_is_the_directions_batches_and_one_that_runs_out_starts_its_next_epoch():
    stream = mixed({"big": 400, "small": 100}, temperature=50.0)  # small: 100 batches, drawn about 250 times
    batches = list(stream)
    assert len(batches) == len(stream) == 500 and stream.epoch == 1 and stream.position == 0
    names = [direction_of(b) for b in batches]
    assert names == [stream.names[i] for i in stream.draws(0)]
    small = [b.indices.tolist() for b in batches if direction_of(b) == "small"]
    assert len(small) > 200
    # Its own batches, epoch after epoch, as its own iterator gives them alone.
    alone = BatchIterator(dataset("small", 100), 7, shuffle=True, seed=direction_seed(3, 1), pad_to_multiple=1)
    own = [b.indices.tolist() for _ in range(3) for b in alone]
    assert small == own[: len(small)]
    assert stream.state_dict()["directions"]["small"]["epoch"] >= 2


def test_every_rank_draws_the_same_directions_and_takes_its_own_shard_of_each():
    sizes = {"big": 400, "small": 100}
    ranks = [mixed(sizes, world_size=2, rank=r) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == 250 and np.array_equal(ranks[0].draws(0), ranks[1].draws(0))
    firsts = []
    for rank, stream in enumerate(ranks):
        batches = list(stream)
        assert [direction_of(b) for b in batches] == [stream.names[i] for i in stream.draws(0)]
        for i, (name, n) in enumerate(sizes.items()):
            alone = BatchIterator(dataset(name, n), 7, shuffle=True, seed=direction_seed(3, i), rank=rank,
                                  world_size=2, pad_to_multiple=1)
            own = [b.indices.tolist() for _ in range(3) for b in alone]
            got = [b.indices.tolist() for b in batches if direction_of(b) == name]
            assert got == own[: len(got)]
        firsts.append(next(b for b in batches if direction_of(b) == "big").indices.tolist())
    assert not set(firsts[0]) & set(firsts[1])


def test_resume_mid_epoch_equals_an_uninterrupted_run():
    def stream() -> MixedBatches:
        return mixed({"big": 300, "small": 60}, temperature=5.0)

    uninterrupted = stream()
    expected = [b.indices.tolist() for _ in range(2) for b in uninterrupted]  # epochs 0 and 1

    # Interrupted after the small direction has crossed into its second epoch, in the middle of the first one.
    first = stream()
    done = []
    for batch in first:
        done.append(batch.indices.tolist())
        if first.state_dict()["directions"]["small"]["epoch"] == 1 and len(done) > 150:
            break
    state = first.state_dict()
    assert state["epoch"] == 0 and 0 < state["position"] < len(first)

    resumed = stream()
    resumed.load_state_dict(state)
    resumed.set_epoch(0)  # the current epoch: keeps the position
    assert done + [b.indices.tolist() for _ in range(2) for b in resumed] == expected  # the rest of 0, then 1
    with pytest.raises(ValueError, match="position"):
        resumed.load_state_dict({**state, "position": 10_000})
    with pytest.raises(ValueError, match="directions"):
        resumed.load_state_dict({"epoch": 0, "position": 0})
