"""A damaged prepared cache is found when it is opened, and prepared again with a warning (or refused in one line).

Each damage is done to a copy of a clean cache of the sample corpus, then ``transformer prepare`` (and, for the
two that reached training before, ``transformer train``) runs on it through the real command.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

import transformer.data.prepare as prepare
from transformer.cli import main as cli_main
from transformer.config import load_config
from transformer.data.prepare import DamagedCacheError, PreparedPairs, find_prepared_pairs, prepare_vocabulary

ROOT = Path(__file__).resolve().parents[2]
SAMPLE_YAML = str(ROOT / "configs" / "sample.yaml")
FILES = ("src.bin", "tgt.bin", "src_offsets.npy", "tgt_offsets.npy", "index.npy", "prepared.json")


def overrides(cache: Path) -> list[str]:
    return [f"data.data_dir={ROOT / 'data' / 'sample'}", f"data.cache_dir={cache}", "data.prepare_workers=1"]


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Path:
    """A cache folder (vocabulary and pairs) of the sample corpus, prepared once and never changed."""
    cache = tmp_path_factory.mktemp("clean") / "cache"
    assert cli_main(["prepare", "--config", SAMPLE_YAML, *overrides(cache)]) == 0
    return cache


def pairs_folder(cache: Path) -> Path:
    (folder,) = cache.glob("train-*")
    return folder


def truncate(path: Path, size: int) -> None:
    with open(path, "r+b") as f:
        f.truncate(size)


def overwrite_ids(path: Path, ids: np.ndarray) -> None:
    path.write_bytes(ids.astype(np.int32).tobytes())


def npy_ids(path: Path) -> np.ndarray:
    return np.fromfile(path, dtype=np.int32)


DAMAGE: dict[str, Callable[[Path], None]] = {
    "src.bin cut to half (whole ids)": lambda f: truncate(f / "src.bin", (f / "src.bin").stat().st_size // 8 * 4),
    "src.bin cut to an odd length": lambda f: truncate(f / "src.bin", (f / "src.bin").stat().st_size - 3),
    "src.bin of random bytes": lambda f: (f / "src.bin").write_bytes(
        np.random.default_rng(0).bytes((f / "src.bin").stat().st_size)),
    "src.bin zeroed": lambda f: overwrite_ids(f / "src.bin", np.zeros_like(npy_ids(f / "src.bin"))),
    "tgt.bin of random ids": lambda f: overwrite_ids(
        f / "tgt.bin", np.random.default_rng(1).integers(4, 5000, len(npy_ids(f / "tgt.bin")))),
    "tgt.bin ids shuffled": lambda f: overwrite_ids(
        f / "tgt.bin", np.random.default_rng(2).permutation(npy_ids(f / "tgt.bin"))),  # every id in range
    "index.npy cut to half": lambda f: truncate(f / "index.npy", (f / "index.npy").stat().st_size // 2),
    "index.npy reordered": lambda f: np.save(f / "index.npy", np.load(f / "index.npy")[::-1].copy()),
    "src_offsets.npy cut to half": lambda f: truncate(f / "src_offsets.npy", (f / "src_offsets.npy").stat().st_size // 2),
    "src.bin missing": lambda f: (f / "src.bin").unlink(),
    "prepared.json not JSON": lambda f: (f / "prepared.json").write_text("{not json", encoding="utf-8"),
    "prepared.json an empty mapping": lambda f: (f / "prepared.json").write_text("{}", encoding="utf-8"),
    "prepared.json with another pair count": lambda f: (f / "prepared.json").write_text(
        json.dumps(dict(json.loads((f / "prepared.json").read_text()), pairs=300)), encoding="utf-8"),
    "prepared.json with an id beyond the vocabulary": lambda f: (f / "prepared.json").write_text(
        json.dumps(dict(json.loads((f / "prepared.json").read_text()), max_src_id=400)), encoding="utf-8"),
    "prepared.json deleted": lambda f: (f / "prepared.json").unlink(),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_prepare_finds_a_damaged_cache_and_prepares_it_again(damage, clean, tmp_path, capsys, caplog):
    cache = tmp_path / "cache"
    shutil.copytree(clean, cache)
    folder = pairs_folder(cache)
    DAMAGE[damage](folder)
    caplog.set_level(logging.INFO, logger="transformer.data.prepare")
    assert cli_main(["prepare", "--config", SAMPLE_YAML, *overrides(cache)]) == 0, capsys.readouterr().err
    assert "training pairs: 520 of 520 lines" in capsys.readouterr().out
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and f"the prepared training pairs in {folder} are damaged" in warnings[0], warnings
    assert "preparing them again" in warnings[0]
    assert pairs_folder(cache) == folder  # the same key: the rebuilt copy took the damaged one's place
    for name in FILES[:-1]:
        assert (folder / name).read_bytes() == (pairs_folder(clean) / name).read_bytes(), name
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]  # no temporary or discarded folder left

    caplog.clear()  # and the next start reuses it, quietly
    assert cli_main(["prepare", "--config", SAMPLE_YAML, *overrides(cache)]) == 0
    assert "reusing the prepared training pairs" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def train_argv(cache: Path, run: Path) -> list[str]:
    return ["train", "--config", SAMPLE_YAML, *overrides(cache), f"train.run_dir={run}", "model.preset=tiny",
            "model.d_model=32", "model.d_ff=64", "train.max_steps=2", "train.eval_bleu=false", "train.device=cpu",
            "train.threads=1"]


def trained_weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]


@pytest.mark.parametrize("damage", ["src.bin cut to half (whole ids)", "prepared.json deleted"])
def test_train_prepares_a_damaged_cache_again_and_trains_on_the_right_pairs(damage, clean, tmp_path, caplog):
    """Before: a halved src.bin trained silently on wrong pairs; a deleted prepared.json failed every run after."""
    cache = tmp_path / "cache"
    shutil.copytree(clean, cache)
    assert cli_main(train_argv(cache, tmp_path / "clean_run")) == 0
    DAMAGE[damage](pairs_folder(cache))
    for run in ("run1", "run2"):  # the second run reuses the rebuilt cache
        caplog.clear()
        assert cli_main(train_argv(cache, tmp_path / run)) == 0
        assert ("are damaged" in caplog.text) == (run == "run1")
        for name, weight in trained_weights(tmp_path / run).items():
            assert torch.equal(weight, trained_weights(tmp_path / "clean_run")[name]), name


def test_opening_a_damaged_cache_without_preparing_is_refused_with_how_to_rebuild(clean, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(clean, cache)
    cfg = load_config(SAMPLE_YAML, overrides(cache)).data
    tokenizer = prepare_vocabulary(cfg)
    prepared = find_prepared_pairs(cfg, tokenizer)
    assert prepared is not None and len(prepared.load()) == 520
    folder = pairs_folder(cache)
    truncate(folder / "tgt_offsets.npy", 100)
    with pytest.raises(DamagedCacheError) as info:
        find_prepared_pairs(cfg, tokenizer)
    message = str(info.value)
    assert message.startswith(f"the prepared training pairs in {folder} are damaged: tgt_offsets.npy has 100 bytes")
    assert "transformer prepare" in message and "\n" not in message
    with pytest.raises(DamagedCacheError, match="transformer prepare"):  # mapping it anyway: no numpy traceback
        PreparedPairs(folder, prepared.info).load()


def test_opening_checks_sampled_blocks_and_the_prepare_command_checks_every_byte(tmp_path, monkeypatch, caplog):
    """The limit of the cheap check, and the full one: an id changed between the sampled blocks of a token array
    is not seen when training opens the cache, and is by `transformer prepare`."""
    monkeypatch.setattr(prepare, "CHECK_BLOCKS", 2)  # the first and the last 64 bytes of each token array
    monkeypatch.setattr(prepare, "CHECK_BLOCK_BYTES", 64)
    cache = tmp_path / "cache"
    assert cli_main(["prepare", "--config", SAMPLE_YAML, *overrides(cache)]) == 0
    folder = pairs_folder(cache)
    clean_ids = npy_ids(folder / "src.bin")
    ids = clean_ids.copy()
    ids[len(ids) // 2] = ids[len(ids) // 2 + 1]  # a valid id in a wrong place
    overwrite_ids(folder / "src.bin", ids)
    cfg = load_config(SAMPLE_YAML, overrides(cache)).data
    assert find_prepared_pairs(cfg, prepare_vocabulary(cfg)) is not None  # not seen: documented in data/README.md
    caplog.set_level(logging.INFO, logger="transformer.data.prepare")
    assert cli_main(["prepare", "--config", SAMPLE_YAML, *overrides(cache)]) == 0
    assert f"{folder} are damaged: src.bin does not match its checksum; preparing them again" in caplog.text
    np.testing.assert_array_equal(npy_ids(folder / "src.bin"), clean_ids)
