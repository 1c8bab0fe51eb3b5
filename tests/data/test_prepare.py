"""Prepared training data: the cache equals encoding in memory, is reused, keyed, crash-safe and memory-mapped."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import transformer.data.prepare as prepare
from transformer.cli import main as cli_main
from transformer.config import ConfigError, DataConfig, load_config
from transformer.data.batching import ParallelDataset
from transformer.data.corpus import load_split
from transformer.data.prepare import (
    Reservoir,
    find_prepared_pairs,
    prepare_pairs,
    prepare_vocabulary,
    sample_sentences,
    tokenizer_for_run,
)
from transformer.data.tokenizer import Tokenizer
from transformer.training.build import build_trainer
from transformer.training.distributed import DistributedContext

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "data" / "sample"


@pytest.fixture
def corpus(tmp_path) -> Path:
    """A copy of the sample corpus, free to edit."""
    folder = tmp_path / "corpus"
    shutil.copytree(SAMPLE, folder)
    return folder


def data_config(corpus: Path, cache: Path, **changes) -> DataConfig:
    # max_src_tokens=20 drops about a quarter of the sample's pairs, so the filter is exercised too.
    return replace(DataConfig(data_dir=str(corpus), vocab_size=300, max_src_tokens=20, cache_dir=str(cache)), **changes)


def assert_same_pairs(a: ParallelDataset, b: ParallelDataset) -> None:
    assert len(a) == len(b)
    np.testing.assert_array_equal(a.input_index, b.input_index)
    for i in range(len(a)):
        np.testing.assert_array_equal(a.src_ids(i), b.src_ids(i))
        np.testing.assert_array_equal(a.tgt_ids(i), b.tgt_ids(i))


def test_prepared_pairs_equal_encoding_in_memory_with_one_or_two_workers(corpus, tmp_path):
    cfg = data_config(corpus, tmp_path / "cache", prepare_workers=1)
    tokenizer = prepare_vocabulary(cfg)
    src, tgt = load_split(cfg, "train")
    in_memory = ParallelDataset.from_texts(src, tgt, tokenizer, cfg)
    assert 0 < len(in_memory) < len(src)  # some pairs were filtered
    one = prepare_pairs(cfg, tokenizer)
    loaded = one.load()
    assert isinstance(loaded._src_flat, np.memmap)
    assert_same_pairs(loaded, in_memory)
    assert one.info["pairs"] == len(in_memory) and one.info["lines"] == len(src)
    assert one.info["dropped"]["too_long"] == len(src) - len(in_memory)

    two_cfg = replace(cfg, prepare_workers=2, cache_dir=str(tmp_path / "cache2"))
    monkey_chunk = 97  # several chunks, the last one short: the order of results must not depend on the workers
    original = prepare.CHUNK_PAIRS
    prepare.CHUNK_PAIRS = monkey_chunk
    try:
        two = prepare_pairs(two_cfg, tokenizer)
    finally:
        prepare.CHUNK_PAIRS = original
    for name in ("src.bin", "tgt.bin", "src_offsets.npy", "tgt_offsets.npy", "index.npy"):
        assert (one.path / name).read_bytes() == (two.path / name).read_bytes(), name


def test_vocabulary_of_a_small_corpus_is_the_vocabulary_of_all_its_sentences(corpus, tmp_path):
    cfg = data_config(corpus, tmp_path / "cache")
    src, tgt = load_split(cfg, "train")
    full = Tokenizer.train(src, tgt, tmp_path / "full", vocab_size=300)
    assert prepare_vocabulary(cfg).pieces() == full.pieces()


def test_vocabulary_is_trained_on_a_bounded_seeded_sample(corpus, tmp_path):
    cfg = data_config(corpus, tmp_path / "cache", vocab_sample_size=50)
    src, tgt = sample_sentences(cfg)
    all_src, all_tgt = load_split(cfg, "train")
    assert len(src) == len(tgt) == 50
    assert set(src) <= set(all_src) and set(tgt) <= set(all_tgt)
    assert (src, tgt) == sample_sentences(cfg)  # the same sample every time
    assert src != all_src[:50]  # a sample of the whole split, not its head


def test_reservoir_keeps_order_when_small_and_samples_uniformly_when_large():
    small = Reservoir(10, seed=0)
    for word in "abc":
        small.add(word)
    assert small.items == ["a", "b", "c"]
    unbounded = Reservoir(0, seed=0)
    for i in range(1000):
        unbounded.add(str(i))
    assert len(unbounded.items) == 1000
    counts = np.zeros(1000)
    for seed in range(200):
        r = Reservoir(100, seed=seed)
        for i in range(1000):
            r.add(str(i))
        assert len(r.items) == len(set(r.items)) == 100
        counts[[int(x) for x in r.items]] += 1
    # each item is kept with probability 0.1: 20 times in 200 draws on average, for early and late items alike
    assert 15 < counts[:500].mean() < 25 and 15 < counts[500:].mean() < 25
    assert counts.min() >= 3 and counts.max() <= 45


def test_cache_is_reused_and_keyed_by_corpus_vocabulary_and_filters(corpus, tmp_path, caplog):
    cfg = data_config(corpus, tmp_path / "cache")
    tokenizer = prepare_vocabulary(cfg)
    first = prepare_pairs(cfg, tokenizer)
    stamp = (first.path / "src.bin").stat().st_mtime_ns
    caplog.set_level("INFO", logger="transformer.data.prepare")
    assert prepare_pairs(cfg, tokenizer).path == first.path
    assert "reusing the prepared training pairs" in caplog.text
    assert (first.path / "src.bin").stat().st_mtime_ns == stamp  # not written again

    other_filter = prepare_pairs(replace(cfg, max_src_tokens=30), tokenizer)
    assert other_filter.path != first.path
    assert prepare_vocabulary(replace(cfg, max_src_tokens=30)).pieces() == tokenizer.pieces()  # same vocab folder
    assert len(list((tmp_path / "cache").glob("vocab-*"))) == 1
    prepare_vocabulary(replace(cfg, vocab_size=250))
    assert len(list((tmp_path / "cache").glob("vocab-*"))) == 2

    # An edit that keeps the file's size and lands within the same clock tick still changes the key.
    path = corpus / "train.en"
    text = path.read_bytes()
    stat = path.stat()
    path.write_bytes(text.replace(b"dog", b"cat", 1))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size
    assert find_prepared_pairs(cfg, tokenizer) is None
    assert prepare_pairs(cfg, tokenizer).path != first.path


def test_a_failed_preparation_leaves_no_cache_and_stale_folders_are_swept(corpus, tmp_path, monkeypatch):
    cfg = data_config(corpus, tmp_path / "cache", prepare_workers=1)
    tokenizer = prepare_vocabulary(cfg)
    calls = []

    def encode_then_die(*args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # as Ctrl-C in the middle of the corpus
        return original(*args)

    original = prepare.encode_chunk
    monkeypatch.setattr(prepare, "CHUNK_PAIRS", 100)
    monkeypatch.setattr(prepare, "encode_chunk", encode_then_die)
    with pytest.raises(KeyboardInterrupt):
        prepare_pairs(cfg, tokenizer)
    assert find_prepared_pairs(cfg, tokenizer) is None
    assert not list((tmp_path / "cache").glob("train-*")) and not list((tmp_path / "cache").glob(".train-*"))

    # A folder left by a process that was killed outright (SIGKILL) is swept by the next preparation.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / "cache" / f".train-0123.tmp-{os.uname().nodename}-{int(dead.stdout)}"
    stale.mkdir()
    monkeypatch.setattr(prepare, "encode_chunk", original)
    prepared = prepare_pairs(cfg, tokenizer)
    assert not stale.exists()
    assert (prepared.path / "prepared.json").is_file()


def test_hub_source_from_arrow_batches_equals_the_folder(corpus, tmp_path, monkeypatch):
    import datasets.config

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    folder_cfg = data_config(corpus, tmp_path / "cache")
    src, tgt = load_split(folder_cfg, "train")
    rows = [json.dumps({"translation": {"en": s, "de": t}}, ensure_ascii=False) for s, t in zip(src, tgt)]
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    hub_cfg = replace(folder_cfg, source="hub", hub_name="json", hub_data_files={"train": str(path)})
    tokenizer = prepare_vocabulary(folder_cfg)
    monkeypatch.setattr(prepare, "CHUNK_PAIRS", 128)  # several Arrow batches
    assert_same_pairs(prepare_pairs(hub_cfg, tokenizer).load(), prepare_pairs(folder_cfg, tokenizer).load())


def test_files_and_tsv_sources_prepare_the_pairs_of_the_folder(corpus, tmp_path):
    folder_cfg = data_config(corpus, tmp_path / "cache", prepare_workers=1)
    files_cfg = replace(folder_cfg, source="files", files={"train": str(corpus / "train.{lang}")})
    src, tgt = load_split(folder_cfg, "train")
    tsv = tmp_path / "train.tsv"
    tsv.write_text("".join(f"{s}\t{t}\n" for s, t in zip(src, tgt)), encoding="utf-8")
    tsv_cfg = replace(folder_cfg, source="tsv", files={"train": str(tsv)})
    # The key names the files read: both languages of the {lang} path, or the one TSV file.
    stat = prepare.corpus_fingerprint(files_cfg)
    assert [f["path"] for f in stat["files"]] == [str((corpus / name).resolve()) for name in ("train.en", "train.de")]
    assert [f["path"] for f in prepare.corpus_fingerprint(tsv_cfg)["files"]] == [str(tsv.resolve())]
    tokenizer = prepare_vocabulary(folder_cfg)
    expected = prepare_pairs(folder_cfg, tokenizer).load()
    assert_same_pairs(prepare_pairs(files_cfg, tokenizer).load(), expected)
    assert_same_pairs(prepare_pairs(tsv_cfg, tokenizer).load(), expected)


def test_a_run_keeps_its_own_tokenizer_and_training_maps_the_cache(corpus, tmp_path):
    config = load_config(ROOT / "configs" / "sample.yaml", [
        f"data.data_dir={corpus}", f"data.cache_dir={tmp_path / 'cache'}", f"train.run_dir={tmp_path / 'run'}",
        "model.preset=tiny", "train.max_steps=1",
    ])
    trainer = build_trainer(config, DistributedContext())
    assert isinstance(trainer.train_batches.dataset._src_flat, np.memmap)
    run_tokenizer = tmp_path / "run" / "tokenizer"
    assert Tokenizer.load(run_tokenizer).pieces() == prepare_vocabulary(config.data).pieces()

    # A run folder trained before (its own vocabulary) keeps it, whatever the cache holds for these settings.
    other = Tokenizer.train(*load_split(config.data, "train"), tmp_path / "other", vocab_size=250)
    shutil.rmtree(run_tokenizer)
    other.save(run_tokenizer)
    changed = replace(config.data, vocab_size=250)
    assert tokenizer_for_run(changed, run_tokenizer).pieces() == other.pieces()


def test_prepare_command_prints_the_cache_and_errors_in_one_line(corpus, tmp_path, capsys):
    argv = ["prepare", "--config", str(ROOT / "configs" / "sample.yaml"), "--data-dir", str(corpus),
            f"data.cache_dir={tmp_path / 'cache'}"]
    assert cli_main(argv) == 0
    out = capsys.readouterr().out
    assert "training pairs: 520 of 520 lines" in out
    cache_line = [line for line in out.splitlines() if line.startswith("cache: ")][0]
    assert (Path(cache_line.removeprefix("cache: ")) / "prepared.json").is_file()

    (corpus / "train.de").write_text("Ein Satz.\n", encoding="utf-8")
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: parallel files differ in length") and err.count("\n") == 1


@pytest.mark.slow
def test_prepare_command_in_a_subprocess(corpus, tmp_path):
    command = [sys.executable, "-m", "transformer", "prepare", "--config", str(ROOT / "configs" / "sample.yaml"),
               "--data-dir", str(corpus), f"data.cache_dir={tmp_path / 'cache'}"]
    done = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert done.returncode == 0, done.stderr
    assert "training pairs: 520 of 520 lines" in done.stdout
    (corpus / "train.en").unlink()
    failed = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert failed.returncode == 2 and "Traceback" not in failed.stderr
    assert failed.stderr.strip().splitlines()[-1].startswith(f"error: missing {corpus / 'train.en'}")


@pytest.mark.slow
def test_the_wmt14_recipe_trains_on_a_small_local_slice(tmp_path, monkeypatch, capsys):
    """configs/wmt14_en_de_base.yaml as it is (the base model, bf16 autocast, noam), its hub source pointed at a
    local slice in the wmt14 layout (a `translation` column): prepare, then one update and a saved checkpoint."""
    import datasets.config

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    cfg = DataConfig(data_dir=str(SAMPLE))
    files = {}
    for role, split in (("train", "train"), ("valid", "validation")):
        src, tgt = load_split(cfg, role)
        rows = [json.dumps({"translation": {"de": t, "en": s}}, ensure_ascii=False) for s, t in zip(src, tgt)]
        files[split] = tmp_path / f"{split}.jsonl"
        files[split].write_text("\n".join(rows) + "\n", encoding="utf-8")
    overrides = [
        "data.hub_name=json", "data.hub_config=", f"data.cache_dir={tmp_path / 'cache'}",
        f"data.hub_data_files={{train: {files['train']}, validation: {files['validation']}}}",
        f"train.run_dir={tmp_path / 'run'}", "train.max_steps=1", "train.eval_bleu=false", "train.device=cpu",
    ]
    config_path = str(ROOT / "configs" / "wmt14_en_de_base.yaml")
    assert cli_main(["prepare", "--config", config_path, *overrides]) == 0
    assert "training pairs: 520 of 520 lines" in capsys.readouterr().out
    assert cli_main(["train", "--config", config_path, *overrides]) == 0
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert state["step"] == 1 and state["config"]["model"]["d_model"] == 512
    assert state["config"]["train"]["schedule"] == "noam"


# ---- several directions ------------------------------------------------------------------------


def with_french(corpus: Path) -> Path:
    """The sample corpus with a third language: ``train.fr`` (the German side, reversed word by word)."""
    lines = (corpus / "train.de").read_text(encoding="utf-8").splitlines()
    (corpus / "train.fr").write_text("".join(" ".join(line.split()[::-1]) + "\n" for line in lines), encoding="utf-8")
    return corpus


def test_a_multilingual_vocabulary_samples_each_language_once_and_reserves_the_tags(corpus, tmp_path, monkeypatch):
    cfg = data_config(with_french(corpus), tmp_path / "cache", directions=["en-de", "de-en", "en-fr"])
    reads = []
    original = prepare.iter_split

    def spy(one, role, **kwargs):
        reads.append(f"{one.src_lang}-{one.tgt_lang}")
        return original(one, role, **kwargs)

    monkeypatch.setattr(prepare, "iter_split", spy)
    languages = prepare.sample_languages(cfg)
    # train.en serves en-de and en-fr and train.de en-de and de-en: each is read once, its sentences counted once.
    assert [(lang, len(texts)) for lang, texts in languages] == [("en", 520), ("de", 520), ("fr", 520)]
    assert reads == ["en-de", "en-fr"]
    assert dict(languages)["en"] == load_split(cfg.for_direction("en", "de"), "train")[0]

    tokenizer = prepare_vocabulary(cfg)
    assert tokenizer.tags == ["de", "en", "fr"]
    assert [tokenizer.pieces()[0][tokenizer.tag_id(lang)] for lang in tokenizer.tags] == ["<2de>", "<2en>", "<2fr>"]
    bilingual = prepare_vocabulary(replace(cfg, directions=[]))
    assert bilingual.tags == [] and bilingual.pieces() != tokenizer.pieces()  # never the same cached folder
    one_direction, bilingual_key = replace(cfg, directions=["en-de"]), prepare.vocab_key(replace(cfg, directions=[]), {})
    assert prepare.vocab_key(one_direction, {}) == bilingual_key  # one direction is a bilingual run


def test_each_direction_is_prepared_with_its_tag_first_in_a_cache_of_its_own(corpus, tmp_path):
    cfg = data_config(corpus, tmp_path / "cache", directions=["en-de", "de-en"], prepare_workers=2)
    tokenizer = prepare_vocabulary(cfg)
    prepared = prepare.prepare_directions(cfg, tokenizer)
    assert list(prepared) == ["en-de", "de-en"]
    for name, tgt in (("en-de", "de"), ("de-en", "en")):
        one = cfg.for_direction(*name.split("-"))
        view = tokenizer.for_target(tgt)
        loaded = prepared[name].load()
        assert_same_pairs(loaded, ParallelDataset.from_texts(*load_split(one, "train"), view, one))
        assert {int(loaded.src_ids(i)[0]) for i in range(len(loaded))} == {tokenizer.tag_id(tgt)}
    # The same pairs untagged (as a bilingual run over this vocabulary would read them) are another folder.
    untagged = prepare_pairs(cfg.for_direction("en", "de"), tokenizer)
    assert untagged.path != prepared["en-de"].path and untagged.load().src_ids(0)[0] != tokenizer.tag_id("de")
    found = prepare.find_prepared_directions(cfg, tokenizer)
    assert {name: p.path for name, p in found.items()} == {name: p.path for name, p in prepared.items()}


def test_a_multilingual_run_folder_keeps_its_tags_and_refuses_a_bilingual_config(corpus, tmp_path):
    cfg = data_config(corpus, tmp_path / "cache", directions=["en-de", "de-en"])
    run_tokenizer = tmp_path / "run" / "tokenizer"
    first = tokenizer_for_run(cfg, run_tokenizer)
    assert tokenizer_for_run(cfg, run_tokenizer).to_state() == first.to_state()  # what a resumed run does
    with pytest.raises(ConfigError, match=r"data\.directions"):
        tokenizer_for_run(replace(cfg, directions=[]), run_tokenizer)


def test_the_prepare_command_prepares_each_direction(corpus, tmp_path, capsys):
    argv = ["prepare", "--config", str(ROOT / "configs" / "sample_multilingual.yaml"), "--data-dir", str(corpus),
            f"data.cache_dir={tmp_path / 'cache'}"]
    assert cli_main(argv) == 0
    out = capsys.readouterr().out
    assert "(target-language tags: de, en)" in out
    for name in ("en-de", "de-en"):
        assert f"training pairs {name}: 520 of 520 lines" in out
        assert (Path(out.split(f"cache {name}: ")[1].split("\n")[0]) / "prepared.json").is_file()


def test_a_tsv_file_cannot_hold_several_directions(tmp_path):
    cfg = DataConfig(source="tsv", files={"train": str(tmp_path / "train.tsv")}, directions=["en-de", "de-en"])
    with pytest.raises(ConfigError, match=r"data\.directions.*tsv"):
        prepare.corpus_fingerprint(cfg)
