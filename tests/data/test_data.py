"""Data pipeline: every source kind, bad input, encoding layout, token-budget batching, shuffling,
sharding and mid-epoch resume."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before `datasets` is imported anywhere: never touch the network
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import functools
import gzip
import http.server
import json
import logging
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from transformer.cli import main as cli_main
from transformer.config import ConfigError, DataConfig
from transformer.data.batching import Batch, BatchIterator, ParallelDataset, SubwordSampler, collate, pad_ids
from transformer.data.corpus import DataError, load_split
from transformer.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, Tokenizer, load_or_train_tokenizer

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "data" / "sample"

EN = ["A man is reading.", "Two dogs are running.", "A girl is singing.", "The child is sleeping."]
DE = ["Ein Mann liest.", "Zwei Hunde laufen.", "Ein Mädchen singt.", "Das Kind schläft."]


def write(path: Path, lines: list[str], *, gz: bool = False) -> Path:
    data = "".join(line + "\n" for line in lines).encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


def load_script(name: str) -> SimpleNamespace:
    """The subcommand ``name`` of the ``transformer`` command, called in-process as ``.main(argv)``."""
    return SimpleNamespace(main=lambda argv: cli_main([name, *argv]))


@pytest.fixture(scope="module")
def sample() -> tuple[list[str], list[str]]:
    return load_split(DataConfig(data_dir=str(SAMPLE)), "train")


@pytest.fixture(scope="module")
def tokenizer(sample, tmp_path_factory) -> Tokenizer:
    return Tokenizer.train(*sample, tmp_path_factory.mktemp("tok"), vocab_size=200)


@pytest.fixture(scope="module")
def dataset(sample, tokenizer) -> ParallelDataset:
    return ParallelDataset.from_texts(*sample, tokenizer, DataConfig())


def epoch(iterator: BatchIterator) -> list[list[int]]:
    """One epoch of batches as lists of dataset positions."""
    return [batch.indices.tolist() for batch in iterator]


# ---- sources -----------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
def test_multi30k_folder_plain_and_gzip(tmp_path, gz):
    write(tmp_path / ("train.en.gz" if gz else "train.en"), EN, gz=gz)
    write(tmp_path / ("train.de.gz" if gz else "train.de"), DE, gz=gz)
    assert load_split(DataConfig(data_dir=str(tmp_path)), "train") == (EN, DE)


def test_multi30k_roles_map_to_split_names_and_lowercase(tmp_path):
    write(tmp_path / "dev.en", EN[:2])
    write(tmp_path / "dev.de", DE[:2])
    cfg = DataConfig(data_dir=str(tmp_path), valid_split="dev", lowercase=True)
    assert load_split(cfg, "valid") == ([s.lower() for s in EN[:2]], [s.lower() for s in DE[:2]])
    with pytest.raises(ValueError, match="role"):
        load_split(cfg, "dev")


def test_multi30k_folder_from_env_then_default(tmp_path, monkeypatch):
    env_dir, repo = tmp_path / "elsewhere", tmp_path / "repo"
    write(env_dir / "train.en", EN[:1])
    write(env_dir / "train.de", DE[:1])
    write(repo / "data" / "multi30k" / "train.en", EN[1:3])  # the default: data/multi30k of the working folder
    write(repo / "data" / "multi30k" / "train.de", DE[1:3])
    monkeypatch.chdir(repo)
    monkeypatch.setenv("MULTI30K_DIR", str(env_dir))
    assert load_split(DataConfig(), "train") == (EN[:1], DE[:1])
    monkeypatch.delenv("MULTI30K_DIR")
    assert load_split(DataConfig(), "train") == (EN[1:3], DE[1:3])


def test_files_source_fills_in_each_language(tmp_path):
    write(tmp_path / "en" / "corpus.en", EN)  # {lang} twice: the folder and the extension
    write(tmp_path / "de" / "corpus.de", DE)
    write(tmp_path / "dev.en.gz", EN[2:], gz=True)
    write(tmp_path / "dev.de.gz", DE[2:], gz=True)
    files = {"train": str(tmp_path / "{lang}" / "corpus.{lang}"), "valid": str(tmp_path / "dev.{lang}.gz")}
    cfg = DataConfig(source="files", files=files)
    assert load_split(cfg, "train") == (EN, DE)
    assert load_split(cfg, "valid") == (EN[2:], DE[2:])
    with pytest.raises(DataError, match=r"data.source=files reads the test split from data.files, which has no "
                                        r"test path; add one, e.g. test: \"corpus/test.\{lang\}\""):
        load_split(cfg, "test")


def test_tsv_source(tmp_path):
    path = write(tmp_path / "train.tsv", [f"{e}\t{d}" for e, d in zip(EN, DE)] + [""])
    src, tgt = load_split(DataConfig(source="tsv", files={"train": str(path)}), "train")
    assert (src, tgt) == (EN + [""], DE + [""])  # the blank line is kept here, dropped (counted) when encoding
    bad = write(tmp_path / "bad.tsv", [f"{EN[0]}\t{DE[0]}", "no tab here"])
    with pytest.raises(DataError, match=rf"{bad}:2: expected source<TAB>target"):
        load_split(DataConfig(source="tsv", files={"train": str(bad)}), "train")
    with pytest.raises(DataError, match="data.source=tsv reads the valid split from data.files, which has no valid "
                                        "path; add one, e.g. valid: corpus/valid.tsv"):
        load_split(DataConfig(source="tsv", files={"train": str(path)}), "valid")


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """Keep the `datasets` cache of local json/csv files inside the test's folder."""
    import datasets.config

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    return tmp_path


def test_hub_layout_translation_column_through_local_json(hub_cache):
    rows = [{"translation": {"de": d, "en": e, "fr": "x"}} for e, d in zip(EN, DE)]
    path = write(hub_cache / "train.jsonl", [json.dumps(row, ensure_ascii=False) for row in rows])
    cfg = DataConfig(source="hub", hub_name="json", hub_data_files={"train": str(path)})
    assert load_split(cfg, "train") == (EN, DE)
    with pytest.raises(DataError, match="no split 'val'"):
        load_split(cfg, "valid")
    cs = DataConfig(source="hub", hub_name="json", hub_data_files={"train": str(path)}, tgt_lang="cs")
    with pytest.raises(DataError, match=r"translation column has languages \['de', 'en', 'fr'\], not \['cs'\]"):
        load_split(cs, "train")


def test_hub_layout_columns_per_language_through_local_csv(hub_cache):
    path = hub_cache / "val.csv"
    path.write_text("en,de\n" + "".join(f'"{e}","{d}"\n' for e, d in zip(EN, DE)), encoding="utf-8")
    cfg = DataConfig(source="hub", hub_name="csv", hub_data_files={"val": str(path)}, lowercase=True)
    assert load_split(cfg, "valid") == ([s.lower() for s in EN], [s.lower() for s in DE])
    fr = DataConfig(source="hub", hub_name="csv", hub_data_files={"val": str(path)}, tgt_lang="fr")
    with pytest.raises(DataError, match=r"has columns \['en', 'de'\]"):
        load_split(fr, "valid")
    gone = DataConfig(source="hub", hub_name="csv", hub_data_files={"val": str(hub_cache / "gone.csv")})
    with pytest.raises(DataError, match="cannot load data.hub_data_files.*gone.csv"):
        load_split(gone, "valid")


def test_unreachable_hub_dataset_says_how_to_use_a_local_folder(hub_cache):
    cfg = DataConfig(source="hub", hub_name="bentrevett/multi30k")
    with pytest.raises(DataError, match="cannot load hub dataset 'bentrevett/multi30k'") as info:
        load_split(cfg, "train")
    assert "data.source=folder data.data_dir=" in str(info.value)


def test_hub_config_needs_a_name_and_local_files():
    with pytest.raises(ConfigError, match="data.hub_name"):
        DataConfig(source="hub")
    with pytest.raises(ConfigError, match="data.hub_data_files"):
        DataConfig(source="hub", hub_name="json")


# ---- bad input ---------------------------------------------------------------------------------


def test_parallel_files_of_different_lengths(tmp_path):
    src, tgt = write(tmp_path / "train.en", EN), write(tmp_path / "train.de", DE[:3])
    with pytest.raises(DataError, match=rf"{src} has 4 lines but {tgt} has 3"):
        load_split(DataConfig(data_dir=str(tmp_path)), "train")


def test_missing_split_or_language_lists_the_folder(tmp_path):
    write(tmp_path / "train.en", EN)
    write(tmp_path / "train.de.gz", DE, gz=True)
    with pytest.raises(DataError, match=rf"missing {tmp_path / 'val.en'} .*contains: train.de.gz, train.en"):
        load_split(DataConfig(data_dir=str(tmp_path)), "valid")
    with pytest.raises(DataError, match=rf"missing {tmp_path / 'train.fr'} .*no 'fr' file"):
        load_split(DataConfig(data_dir=str(tmp_path), tgt_lang="fr"), "train")


def test_missing_folder_says_how_to_get_the_corpus(tmp_path):
    with pytest.raises(DataError, match="transformer download multi30k") as info:
        load_split(DataConfig(data_dir=str(tmp_path / "nope")), "train")
    assert str(tmp_path / "nope") in str(info.value)


@pytest.mark.parametrize("gz", [False, True])
def test_file_that_is_not_utf8_names_file_and_line(tmp_path, gz):
    raw = "Ein Mann.\nZwei Hunde.\nDrei M\xe4nner.\n".encode("latin-1")
    path = tmp_path / ("train.de.gz" if gz else "train.de")
    path.write_bytes(gzip.compress(raw) if gz else raw)
    write(tmp_path / "train.en", EN[:3])
    with pytest.raises(DataError, match=rf"{path}:3: not valid UTF-8"):
        load_split(DataConfig(data_dir=str(tmp_path)), "train")


def gzip_that_is_cut_short() -> bytes:
    data = gzip.compress("".join(line + "\n" for line in EN * 50).encode("utf-8"))
    return data[: len(data) // 2]


def gzip_with_damaged_data() -> bytes:
    data = bytearray(gzip.compress("".join(line + "\n" for line in EN * 50).encode("utf-8")))
    data[20:40] = bytes(20)  # inside the deflate stream: zlib.error
    return bytes(data)


@pytest.mark.parametrize(
    "content",
    [gzip_that_is_cut_short(), gzip_with_damaged_data(), bytes(range(256)) * 4],
    ids=["truncated", "damaged", "not-gzip"],
)
def test_corrupt_gzip_file_is_a_data_error_naming_it(tmp_path, content):
    path = tmp_path / "train.en.gz"
    path.write_bytes(content)
    write(tmp_path / "train.de", DE)
    with pytest.raises(DataError, match=rf"{path}: not a valid gzip file, or cut short .*download or copy it again"):
        load_split(DataConfig(data_dir=str(tmp_path)), "train")


@pytest.mark.parametrize("lines", [[], ["", "   ", ""]], ids=["empty", "blank"])
def test_training_files_without_sentences_name_both_files(tmp_path, lines):
    src, tgt = write(tmp_path / "train.en", lines), write(tmp_path / "train.de", lines)
    with pytest.raises(DataError) as info:
        load_split(DataConfig(data_dir=str(tmp_path)), "train")
    message = str(info.value)
    assert message.startswith(f"no sentence pairs for the train split in {src} and {tgt}")
    assert ("no lines" if not lines else "3 lines, none with text on both sides") in message
    write(tmp_path / "train.en", ["", "A man.", ""])  # text on one side only is no pair either
    write(tmp_path / "train.de", ["Ein Mann.", "", ""])
    with pytest.raises(DataError, match="no sentence pairs"):
        load_split(DataConfig(data_dir=str(tmp_path)), "train")


def test_data_dir_that_is_a_file_or_a_file_that_is_a_folder(tmp_path):
    path = write(tmp_path / "train.en", EN)
    with pytest.raises(DataError, match=rf"data folder {path} \(data.data_dir\) is a file, not a folder"):
        load_split(DataConfig(data_dir=str(path)), "train")
    (tmp_path / "train.de").mkdir()
    cfg = DataConfig(source="files", files={"train": str(tmp_path / "train.{lang}")})
    with pytest.raises(DataError, match=rf"{tmp_path / 'train.de'} is a folder"):
        load_split(cfg, "train")


def test_filtering_counts_each_reason(tokenizer, caplog):
    cfg = DataConfig(max_src_tokens=30, max_tgt_tokens=30, max_length_ratio=3.0)
    long_line = " ".join(["Ein Mann liest ein Buch."] * 10)
    src = EN + ["", "A man.", "A man is reading a book.", "A man is reading a book in the park on a bench."]
    tgt = DE + ["Ein Mann.", "", long_line, "Ein Mann."]
    with caplog.at_level(logging.WARNING, logger="transformer.data"):
        dataset = ParallelDataset.from_texts(src, tgt, tokenizer, cfg)
    assert len(dataset) == 4 and dataset.input_index.tolist() == [0, 1, 2, 3]
    assert dataset.tgt_texts == DE
    message = caplog.text
    assert "dropped 4 of 8 sentence pairs: 2 empty, 1 longer than max_src_tokens=30" in message
    assert "1 with a length ratio over max_length_ratio=3.0" in message
    assert "first at lines 5, 6, 7, 8" in message
    kept = ParallelDataset.from_texts(src, tgt, tokenizer, cfg, filter_lengths=False)
    assert len(kept) == 6  # empty pairs are always dropped


def test_empty_corpus_after_filtering_is_an_error(tokenizer):
    with pytest.raises(DataError, match="no sentence pair left out of 2 after filtering: 1 empty, 1 longer"):
        ParallelDataset.from_texts(["", "A man is reading a book."], ["Ein Mann.", "Ein Mann liest."], tokenizer,
                                   DataConfig(max_src_tokens=3))
    with pytest.raises(DataError, match="2 source sentences but 1 target"):
        ParallelDataset.from_texts(EN[:2], DE[:1], tokenizer, DataConfig())


def test_length_ratio_config_is_validated():
    with pytest.raises(ConfigError, match="data.max_length_ratio"):
        DataConfig(max_length_ratio=0.5)
    assert DataConfig(max_length_ratio=0).max_length_ratio == 0


# ---- encoding and collation ----------------------------------------------------------------------


def test_batch_layout_eos_bos_shift_and_padding(dataset, tokenizer):
    iterator = BatchIterator(dataset, 300, shuffle=True, seed=3, pad_to_multiple=8)
    for batch in iterator:
        assert batch.src.dtype == batch.tgt_in.dtype == batch.tgt_out.dtype == batch.indices.dtype == torch.long
        assert batch.src.shape[1] % 8 == 0 and batch.tgt_in.shape[1] % 8 == 0
        assert batch.tgt_in.shape == batch.tgt_out.shape
        assert batch.n_src_tokens == int((batch.src != PAD_ID).sum())
        assert batch.n_tgt_tokens == int((batch.tgt_out != PAD_ID).sum()) == int((batch.tgt_in != PAD_ID).sum())
        for row, i in enumerate(batch.indices.tolist()):
            x = tokenizer.encode_src([dataset.src_texts[i]])[0]
            y = tokenizer.encode_tgt([dataset.tgt_texts[i]])[0]
            assert batch.src[row].tolist() == x + [EOS_ID] + [PAD_ID] * (batch.src.shape[1] - len(x) - 1)
            padding = [PAD_ID] * (batch.tgt_in.shape[1] - len(y) - 1)
            assert batch.tgt_in[row].tolist() == [BOS_ID] + y + padding
            assert batch.tgt_out[row].tolist() == y + [EOS_ID] + padding
    assert tokenizer.decode_tgt(batch.tgt_out) == [dataset.tgt_texts[i] for i in batch.indices.tolist()]


def test_pad_ids_right_pads_with_pad_id():
    padded = pad_ids([[5, 6, 7], (8,), np.array([9, 4], dtype=np.int32)], "cpu")
    assert padded.dtype == torch.long and padded.device.type == "cpu"
    assert padded.tolist() == [[5, 6, 7], [8, PAD_ID, PAD_ID], [9, 4, PAD_ID]]
    assert pad_ids([[3], [4]], torch.device("cpu")).tolist() == [[3], [4]]  # nothing to pad
    assert pad_ids([], "cpu").shape == (0, 0)


def test_batch_to_and_pin_memory_keep_contents(dataset):
    batch = collate(dataset, np.array([3, 1, 2]), pad_to_multiple=4)
    moved = batch.to("cpu", non_blocking=True)
    assert isinstance(moved, Batch) and len(moved) == 3
    assert torch.equal(moved.src, batch.src) and torch.equal(moved.tgt_out, batch.tgt_out)
    assert moved.indices.tolist() == [3, 1, 2] and moved.n_tgt_tokens == batch.n_tgt_tokens
    pinned = batch.pin_memory()
    assert torch.equal(pinned.tgt_in, batch.tgt_in)
    if torch.cuda.is_available():
        assert pinned.src.is_pinned()


# ---- batching ----------------------------------------------------------------------------------


@pytest.mark.parametrize("max_tokens,multiple", [(64, 1), (256, 8), (1000, 3)])
def test_token_budget_is_respected_and_every_pair_appears_once(dataset, max_tokens, multiple):
    iterator = BatchIterator(dataset, max_tokens, shuffle=True, seed=0, pad_to_multiple=multiple)
    batches = list(iterator)
    assert len(batches) == len(iterator)
    for batch in batches:
        assert batch.src.numel() <= max_tokens and batch.tgt_out.numel() <= max_tokens
        assert batch.src.shape[1] % multiple == 0 and batch.tgt_out.shape[1] % multiple == 0
    seen = sorted(i for b in batches for i in b.indices.tolist())
    assert seen == list(range(len(dataset)))


def test_buckets_keep_padding_small(dataset):
    batches = list(BatchIterator(dataset, 512, shuffle=True, seed=0, pad_to_multiple=1))
    real = sum(b.n_src_tokens + b.n_tgt_tokens for b in batches)
    total = sum(b.src.numel() + b.tgt_out.numel() for b in batches)
    assert real / total > 0.9


def test_pair_over_the_budget_gets_its_own_batch(tokenizer, caplog):
    long_en = "A man in a red shirt is reading a book in the park with two dogs and three children."
    long_de = "Ein Mann in einem roten Hemd liest ein Buch im Park mit zwei Hunden und drei Kindern."
    dataset = ParallelDataset.from_texts(EN + [long_en], DE + [long_de], tokenizer, DataConfig())
    with caplog.at_level(logging.WARNING, logger="transformer.data"):
        iterator = BatchIterator(dataset, 16, shuffle=False, pad_to_multiple=1)
    assert "1 sentence pairs exceed max_tokens=16" in caplog.text
    assert [4] in epoch(iterator)


def test_shuffling_is_deterministic_per_seed_and_epoch(dataset):
    a = BatchIterator(dataset, 256, shuffle=True, seed=7)
    b = BatchIterator(dataset, 256, shuffle=True, seed=7)
    first_a, first_b = epoch(a), epoch(b)
    assert first_a == first_b
    second_a = epoch(a)  # the iterator moved on to epoch 1 by itself
    assert a.epoch == 2 and second_a != first_a
    b.set_epoch(1)
    assert epoch(b) == second_a
    other_seed = BatchIterator(dataset, 256, shuffle=True, seed=8)
    assert epoch(other_seed) != first_a
    assert len({len(x) for x in (first_a, second_a)}) == 1  # same number of batches every epoch


def test_resume_mid_epoch_equals_uninterrupted_run(dataset):
    uninterrupted = BatchIterator(dataset, 256, shuffle=True, seed=5)
    uninterrupted.set_epoch(2)
    expected = epoch(uninterrupted) + epoch(uninterrupted)  # epochs 2 and 3

    first = BatchIterator(dataset, 256, shuffle=True, seed=5)
    first.set_epoch(2)
    done = []
    for batch in first:
        done.append(batch.indices.tolist())
        if len(done) == 5:
            break
    state = first.state_dict()
    assert state == {"epoch": 2, "position": 5}

    resumed = BatchIterator(dataset, 256, shuffle=True, seed=5)
    resumed.load_state_dict(state)
    resumed.set_epoch(2)  # what a training loop does at the top of the epoch: keeps the position
    assert done + epoch(resumed) + epoch(resumed) == expected
    with pytest.raises(ValueError, match="position"):
        resumed.load_state_dict({"epoch": 0, "position": 10_000})


def test_sharding_gives_disjoint_equal_shares_of_the_epoch(dataset):
    world_size = 5
    full = BatchIterator(dataset, 200, shuffle=True, seed=2).epoch_batches(4)
    assert len(full) % world_size != 0  # so that dropping the remainder is exercised
    shards = []
    for rank in range(world_size):
        iterator = BatchIterator(dataset, 200, shuffle=True, seed=2, rank=rank, world_size=world_size)
        iterator.set_epoch(4)
        shards.append(epoch(iterator))
        assert len(shards[-1]) == len(iterator) == len(full) // world_size
    flat = [i for shard in shards for batch in shard for i in batch]
    assert len(flat) == len(set(flat))  # disjoint
    usable = full[: len(full) // world_size * world_size]  # the remainder (< world_size batches) is dropped
    assert sorted(flat) == sorted(int(i) for batch in usable for i in batch)
    assert len(usable) >= len(full) - world_size + 1


# ---- subword sampling ----------------------------------------------------------------------------


def pieces(dataset: ParallelDataset) -> list[tuple[list[int], list[int]]]:
    return [(dataset.src_ids(i).tolist(), dataset.tgt_ids(i).tolist()) for i in range(len(dataset))]


def test_subword_sampling_depends_only_on_seed_and_epoch_and_keeps_the_text(dataset, tokenizer):
    sampler = SubwordSampler(dataset, tokenizer, 0.1, 0.1, seed=3)
    epoch3 = sampler(3)
    sampler(4)  # another epoch in between must not shift the generator
    assert pieces(SubwordSampler(dataset, tokenizer, 0.1, 0.1, seed=3)(3)) == pieces(epoch3) == pieces(sampler(3))
    assert pieces(sampler(4)) != pieces(epoch3)
    assert pieces(SubwordSampler(dataset, tokenizer, 0.1, 0.1, seed=4)(3)) != pieces(epoch3)
    # Other segmentations of the same pairs, in the same order: more pieces, the same text.
    assert pieces(epoch3) != pieces(dataset)
    assert epoch3.src_lengths.sum() > dataset.src_lengths.sum() and epoch3.tgt_lengths.sum() > dataset.tgt_lengths.sum()
    assert epoch3.src_texts == dataset.src_texts and np.array_equal(epoch3.input_index, dataset.input_index)
    assert tokenizer.decode_tgt([y for _, y in pieces(epoch3)]) == tokenizer.decode_tgt([y for _, y in pieces(dataset)])
    assert tokenizer.decode_src([x for x, _ in pieces(epoch3)]) == tokenizer.decode_src([x for x, _ in pieces(dataset)])


def test_subword_sampling_of_one_side_keeps_the_other_deterministic(dataset, tokenizer):
    src_only = SubwordSampler(dataset, tokenizer, 0.1, 0.0, seed=3)(0)
    assert [y for _, y in pieces(src_only)] == [y for _, y in pieces(dataset)]
    assert [x for x, _ in pieces(src_only)] == [x for x, _ in pieces(SubwordSampler(dataset, tokenizer, 0.1, 0.1, seed=3)(0))]
    tgt_only = SubwordSampler(dataset, tokenizer, 0.0, 0.1, seed=3)(0)
    assert [x for x, _ in pieces(tgt_only)] == [x for x, _ in pieces(dataset)]
    assert [y for _, y in pieces(tgt_only)] != [y for _, y in pieces(dataset)]


def test_subword_sampling_keeps_the_length_limits(dataset, tokenizer):
    limit_src, limit_tgt = int(dataset.src_lengths.max()), int(dataset.tgt_lengths.max())
    free = SubwordSampler(dataset, tokenizer, 0.3, 0.3, seed=1)(0)
    assert free.src_lengths.max() > limit_src or free.tgt_lengths.max() > limit_tgt  # the limits matter here
    bounded = SubwordSampler(dataset, tokenizer, 0.3, 0.3, seed=1, max_src_tokens=limit_src, max_tgt_tokens=limit_tgt)(0)
    assert bounded.src_lengths.max() <= limit_src and bounded.tgt_lengths.max() <= limit_tgt
    over = (free.src_lengths > limit_src) | (free.tgt_lengths > limit_tgt)
    for i in range(len(dataset)):  # an over-long sampled pair falls back to its deterministic pieces
        expected = pieces(dataset)[i] if over[i] else pieces(free)[i]
        assert (bounded.src_ids(i).tolist(), bounded.tgt_ids(i).tolist()) == expected


def test_resampled_epochs_batch_their_own_pieces_and_resume_mid_epoch(dataset, tokenizer):
    def iterator() -> BatchIterator:
        sampler = SubwordSampler(dataset, tokenizer, 0.1, 0.1, seed=5)
        return BatchIterator(dataset, 256, shuffle=True, seed=5, pad_to_multiple=1, resample=sampler)

    uninterrupted = iterator()
    expected, counts = [], []
    for e in range(3):
        counts.append(len(uninterrupted))
        batches = list(uninterrupted)
        assert len(batches) == counts[-1]
        sampled = SubwordSampler(dataset, tokenizer, 0.1, 0.1, seed=5)(e)
        for batch in batches:  # each batch holds the epoch's sampled pieces, within the budget
            rows = batch.indices.tolist()
            assert batch.src.numel() <= 256 and batch.tgt_out.numel() <= 256
            assert batch.src[0, : sampled.src_lengths[rows[0]] - 1].tolist() == sampled.src_ids(rows[0]).tolist()
        assert sorted(i for b in batches for i in b.indices.tolist()) == list(range(len(dataset)))
        expected += [b.src for b in batches]
    assert len(set(counts)) > 1 or counts[0] != len(BatchIterator(dataset, 256, shuffle=True, seed=5))

    first = iterator()
    first.set_epoch(1)
    done = [b.src for _, b in zip(range(4), first)]
    resumed = iterator()
    resumed.load_state_dict(first.state_dict())
    got = [b.src for b in iterator()] + done + [b.src for b in resumed] + [b.src for b in resumed]
    assert len(got) == len(expected) and all(torch.equal(a, b) for a, b in zip(got, expected))


def test_subword_sampling_arguments_are_checked(dataset, tokenizer):
    with pytest.raises(ValueError, match="alpha"):
        SubwordSampler(dataset, tokenizer, 0.0, 0.0)
    with pytest.raises(ValueError, match="alpha"):
        SubwordSampler(dataset, tokenizer, 0.1, 1.0)
    with pytest.raises(ValueError, match="texts"):
        SubwordSampler(ParallelDataset([[5]], [[6]]), tokenizer, 0.1, 0.1)
    with pytest.raises(ValueError, match="training mode"):
        BatchIterator(dataset, 256, shuffle=False, resample=SubwordSampler(dataset, tokenizer, 0.1, 0.1))
    with pytest.raises(ConfigError, match="data.tgt_subword_sampling"):
        DataConfig(tgt_subword_sampling=1.0)


def test_evaluation_order_is_sorted_fixed_and_restorable(dataset, tokenizer):
    iterator = BatchIterator(dataset, 300, shuffle=False, pad_to_multiple=1)
    first, again = epoch(iterator), epoch(iterator)
    assert first == again
    order = [i for batch in first for i in batch]
    lengths = dataset.src_lengths[order]
    assert np.all(np.diff(lengths) >= 0)  # sorted by source length
    # Restore dataset order from Batch.indices, as a decoder returning hypotheses would.
    restored = [""] * len(dataset)
    for batch in BatchIterator(dataset, 300, shuffle=False):
        for i, text in zip(batch.indices.tolist(), tokenizer.decode_tgt(batch.tgt_out)):
            restored[i] = text
    assert restored == dataset.tgt_texts
    # Sharded evaluation keeps every pair.
    shards = [epoch(BatchIterator(dataset, 300, shuffle=False, rank=r, world_size=4)) for r in range(4)]
    assert sorted(i for s in shards for b in s for i in b) == list(range(len(dataset)))


def test_iterator_arguments_are_checked(dataset):
    with pytest.raises(ValueError, match="rank"):
        BatchIterator(dataset, 256, shuffle=True, rank=2, world_size=2)
    with pytest.raises(ValueError, match="max_tokens"):
        BatchIterator(dataset, 0, shuffle=True)
    with pytest.raises(ValueError, match="keys epoch and position"):
        BatchIterator(dataset, 256, shuffle=True).load_state_dict({"epoch": 1})


def test_load_or_train_tokenizer_uses_the_config(sample, tmp_path):
    cfg = DataConfig(vocab_size=150, joint_vocab=False, spm_model_type="unigram")
    tok = load_or_train_tokenizer(cfg, tmp_path, *sample)
    assert not tok.joint and tok.src_vocab_size == 150
    assert tok.settings == {"vocab_size": 150, "model_type": "unigram", "joint": False, "character_coverage": 1.0}


# ---- the sample corpus and the real Multi30k ---------------------------------------------------------


def test_sample_corpus_layout():
    sizes = {split: len(load_split(DataConfig(data_dir=str(SAMPLE), test_split="test"), role)[0])
             for split, role in (("train", "train"), ("val", "valid"), ("test", "test"))}
    assert sizes["train"] >= 300 and 30 <= sizes["val"] <= 50 and 30 <= sizes["test"] <= 50
    train = set(load_split(DataConfig(data_dir=str(SAMPLE)), "train")[0])
    test = set(load_split(DataConfig(data_dir=str(SAMPLE), test_split="test"), "test")[0])
    assert not train & test


def test_real_multi30k_splits(multi30k):
    cfg = DataConfig(data_dir=str(multi30k))
    src, tgt = load_split(cfg, "train")
    assert len(src) == len(tgt) == 29000 and src[0] and tgt[0]
    assert len(load_split(cfg, "valid")[0]) == 1014 and len(load_split(cfg, "test")[0]) == 1000
    with pytest.raises(DataError, match="test_2017_flickr.cs.*contains: .*test_2017_flickr.de.gz"):
        load_split(DataConfig(data_dir=str(multi30k), tgt_lang="cs", test_split="test_2017_flickr"), "test")


def test_real_multi30k_batches_are_dense(tmp_path, multi30k):
    cfg = DataConfig(data_dir=str(multi30k))
    src, tgt = load_split(cfg, "train")
    tokenizer = load_or_train_tokenizer(cfg, tmp_path, src, tgt)
    dataset = ParallelDataset.from_texts(src, tgt, tokenizer, cfg)
    assert len(dataset) > 28900
    iterator = BatchIterator(dataset, 4096, shuffle=True, seed=1, pad_to_multiple=1)
    real = total = 0
    for idx in iterator.epoch_batches(0):
        n, s, t = len(idx), dataset.src_lengths[idx], dataset.tgt_lengths[idx]
        assert n * max(s.max(), t.max()) <= 4096
        real, total = real + s.sum() + t.sum(), total + n * (s.max() + t.max())
    assert real / total >= 0.9


# ---- scripts -----------------------------------------------------------------------------------


def test_download_script_without_network_fails_clearly(tmp_path, capsys):
    download = load_script("download")
    code = download.main(["multi30k", "--output", str(tmp_path), "--base-url", "http://127.0.0.1:9", "--timeout", "2"])
    assert code == 2  # a UserError: one line, exit status 2
    assert "cannot reach http://127.0.0.1:9/train.en.gz" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # no partial files left


def test_download_script_from_a_local_mirror(tmp_path, capsys):
    mirror = tmp_path / "mirror"
    write(mirror / "val.en.gz", EN, gz=True)
    write(mirror / "val.de.gz", DE, gz=True)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(mirror))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        download = load_script("download")
        url = f"http://127.0.0.1:{server.server_address[1]}"
        out = tmp_path / "out"
        assert download.main(["multi30k", "--output", str(out), "--base-url", url, "--splits", "val"]) == 0
        assert load_split(DataConfig(data_dir=str(out)), "valid") == (EN, DE)
        assert sorted(p.name for p in out.iterdir()) == ["val.de.gz", "val.en.gz"]  # no temporary file left
        assert download.main(["multi30k", "--output", str(out), "--base-url", url, "--splits", "val", "--langs", "fr"]) == 2
        assert "HTTP 404" in capsys.readouterr().err
        (mirror / "test_2016_flickr.en.gz").write_text("not gzip", encoding="utf-8")
        argv = ["multi30k", "--output", str(out), "--base-url", url, "--splits", "test_2016_flickr", "--langs", "en"]
        assert download.main(argv) == 2
        assert "test_2016_flickr.en.gz is not gzip-compressed UTF-8 text" in capsys.readouterr().err
        assert sorted(p.name for p in out.iterdir()) == ["val.de.gz", "val.en.gz"]  # nothing written for it
    finally:
        server.shutdown()
        server.server_close()


def test_benchmark_data_exits_clearly_without_the_corpus(tmp_path, capsys):
    from transformer.cli import main

    assert main(["benchmark", "data", "--data-dir", str(tmp_path / "missing")]) == 2
    assert "Multi30k folder" in capsys.readouterr().err
