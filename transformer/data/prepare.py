"""Prepare a corpus once: the vocabulary, then the training pairs as flat token arrays that every run maps.

Without it, each start of each run (and each process of a torchrun job) would train SentencePiece on every
sentence and encode the whole corpus into Python lists. ``prepare`` does that work once per corpus and settings:

1. the vocabulary is trained on a seeded random sample of at most ``data.vocab_sample_size`` sentences per side,
   drawn from the training split read as a stream (several ``data.directions``: per language, each language's
   text counted once however many directions read it, plus a target-language tag per target language);
2. the training split is read again as a stream, in chunks, encoded by ``data.prepare_workers`` processes,
   filtered by the length limits (the rules of ``ParallelDataset.from_texts``) and appended to flat files;
3. each result is written into a temporary folder and renamed into place when complete, so a killed
   preparation never leaves half a cache, and two runs preparing at once both end with one good copy.

A multilingual run prepares the pairs of each direction on its own (``prepare_directions``), each source
starting with its target-language tag.

Cache layout (``data.cache_dir``, else ``$TRANSFORMER_CACHE_DIR``, else ``data/cache``)::

    vocab-<key>/   a Tokenizer folder; key: the corpus files' fingerprints, the vocabulary settings, the sample
                   (and, for several directions, the directions and their tags)
    train-<key>/   src.bin tgt.bin (int32 ids, no specials), src_offsets.npy tgt_offsets.npy index.npy and
                   prepared.json; key: the fingerprints, the tokenizer's model bytes, lowercase, the length filters
                   (and the ids put before each source: a target-language tag)

A fingerprint is a file's resolved path, size, modification time and a hash of its ends (for the hub, the
dataset's own fingerprint): an edited corpus gets a new cache, and deciding that reads at most 2 MiB a file.

A ``train-<key>`` folder checks itself whenever it is opened (``verify_prepared``): ``prepared.json`` records each
file's size and CRC-32, the largest id of each side (computed while writing) and a CRC-32 of 64 blocks of 16 KiB
spread over each token array. Opening compares the sizes, the CRCs of the per-pair arrays (offsets and index, 24
bytes a pair), that the sizes agree with the offsets and the index, that the largest ids are below the vocabulary
sizes, and the CRCs of the sampled blocks; ``transformer prepare`` also checks the CRC of all of each token array.
A damaged folder is prepared again with a warning (``prepare_pairs``), or refused (``find_prepared_pairs``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import random
import shutil
import socket
import time
import zlib
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from transformer.config import DataConfig
from transformer.data.batching import ParallelDataset, flatten, length_filter
from transformer.data.corpus import (
    corpus_folder,
    direction_configs,
    find_split_file,
    iter_split,
    load_hub_dataset,
    role_path,
    split_name,
)
from transformer.data.tokenizer import META_FILE, Tokenizer
from transformer.errors import DataError, write_error
from transformer.files import process_alive

logger = logging.getLogger(__name__)

DEFAULT_CACHE_DIR = Path("data/cache")  # relative to the working directory, like data/multi30k
FORMAT_VERSION = 1  # part of every key: a change of the file layout gives new folders
PREPARED_FILE = "prepared.json"  # written last: a train-<key> folder is complete when it has this file
CHUNK_PAIRS = 50_000  # pairs per encoding task: big enough to amortise the hand-over, small for memory
FINGERPRINT_BYTES = 1 << 20  # hashed at each end of a corpus file
SAMPLE_SEED = 0  # the vocabulary sample depends on the corpus and settings only, never on train.seed
TOKEN_FILES = ("src.bin", "tgt.bin")  # int32 ids
ARRAY_FILES = ("src_offsets.npy", "tgt_offsets.npy", "index.npy")  # int64, one entry a pair (offsets: one more)
CHECK_BLOCKS = 64  # blocks of each token array whose CRC (and ids) every opening checks
CHECK_BLOCK_BYTES = 1 << 14
REBUILD = "remove that folder and run `transformer prepare` (or `transformer train`) with the same config again"


class DamagedCacheError(DataError):
    """A prepared ``train-<key>`` folder does not match what ``prepared.json`` says of it."""

    def __init__(self, folder: Path, reason: str) -> None:
        super().__init__(f"the prepared training pairs in {folder} are damaged: {reason}; {REBUILD}")
        self.folder, self.reason = folder, reason


@dataclasses.dataclass(frozen=True)
class PreparedPairs:
    """A complete ``train-<key>`` folder and what ``prepared.json`` says of it."""

    path: Path
    info: dict[str, Any]

    def load(self) -> ParallelDataset:
        """The pairs, memory-mapped read-only (pages are shared by every process that maps them).

        Raises:
            DamagedCacheError: a file is missing or cannot be mapped (``find_prepared_pairs`` checks them first).
        """
        try:
            return ParallelDataset.from_arrays(
                np.memmap(self.path / "src.bin", dtype=np.int32, mode="r"),
                np.load(self.path / "src_offsets.npy", mmap_mode="r"),
                np.memmap(self.path / "tgt.bin", dtype=np.int32, mode="r"),
                np.load(self.path / "tgt_offsets.npy", mmap_mode="r"),
                np.load(self.path / "index.npy", mmap_mode="r"),
            )
        except (OSError, ValueError) as err:
            raise DamagedCacheError(self.path, str(err)) from None


def cache_root(cfg: DataConfig) -> Path:
    """``data.cache_dir``, else ``$TRANSFORMER_CACHE_DIR``, else ``data/cache``."""
    return Path(cfg.cache_dir or os.environ.get("TRANSFORMER_CACHE_DIR") or DEFAULT_CACHE_DIR).expanduser()


# ---- keys --------------------------------------------------------------------------------------


def corpus_fingerprint(cfg: DataConfig) -> dict[str, Any]:
    """What identifies the training split's text: its files (path, size, mtime), or the hub dataset's fingerprint;
    for several directions, ``{"directions": {"en-de": that of en-de, ...}}``.

    Raises:
        DataError: a file is missing (the same message as reading it would give).
    """
    if cfg.multilingual:
        return {"directions": {name: _pair_fingerprint(one) for name, one in direction_configs(cfg)}}
    return _pair_fingerprint(cfg)


def direction_fingerprint(fingerprint: dict[str, Any], name: str) -> dict[str, Any]:
    """The part of ``corpus_fingerprint`` that covers direction ``name`` (all of it for a bilingual run)."""
    return fingerprint["directions"][name] if "directions" in fingerprint else fingerprint


def _pair_fingerprint(cfg: DataConfig) -> dict[str, Any]:
    """``corpus_fingerprint`` of one language pair."""
    split = split_name(cfg, "train")
    if cfg.source == "hub":
        dataset, _ = load_hub_dataset(cfg, split)
        return {"hub": cfg.hub_name, "config": cfg.hub_config, "split": split, "fingerprint": dataset._fingerprint,
                "files": [_file_stat(Path(p)) for p in cfg.hub_data_files.values()]}
    if cfg.source == "folder":
        folder = corpus_folder(cfg)
        paths = [find_split_file(folder, split, cfg.src_lang), find_split_file(folder, split, cfg.tgt_lang)]
    elif cfg.source == "files":
        paths = [role_path(cfg, "train", cfg.src_lang), role_path(cfg, "train", cfg.tgt_lang)]
    else:
        paths = [role_path(cfg, "train")]
    return {"source": cfg.source, "langs": [cfg.src_lang, cfg.tgt_lang], "files": [_file_stat(p) for p in paths]}


def _file_stat(path: Path) -> dict[str, Any]:
    """Path, size, modification time and a hash of the first and last MiB (all of a small file): cheap for
    a corpus of gigabytes, and an edit that keeps the size within one clock tick still changes the key."""
    try:
        stat = path.stat()
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            digest.update(f.read(FINGERPRINT_BYTES))
            if stat.st_size > FINGERPRINT_BYTES:
                f.seek(max(FINGERPRINT_BYTES, stat.st_size - FINGERPRINT_BYTES))
                digest.update(f.read())
    except OSError as err:
        raise DataError(f"{path}: cannot read it: {err.strerror or err}") from None
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
            "ends_sha256": digest.hexdigest()}


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode("utf-8")).hexdigest()[:16]


def vocab_key(cfg: DataConfig, fingerprint: dict[str, Any]) -> dict[str, Any]:
    return {
        "format": FORMAT_VERSION, "corpus": fingerprint, "lowercase": cfg.lowercase, "vocab_size": cfg.vocab_size,
        "model_type": cfg.spm_model_type, "joint": cfg.joint_vocab, "character_coverage": cfg.spm_character_coverage,
        "sample_size": cfg.vocab_sample_size, "sample_seed": SAMPLE_SEED,
        # Only with several directions, so that a bilingual run keeps the keys (and the caches) it had.
        **({"directions": cfg.directions, "tags": cfg.target_langs} if cfg.multilingual else {}),
    }


def pairs_key(cfg: DataConfig, fingerprint: dict[str, Any], tokenizer: Tokenizer) -> dict[str, Any]:
    state = tokenizer.to_state()
    models = hashlib.sha256()
    for name in sorted(k for k, v in state.items() if isinstance(v, bytes)):
        models.update(state[name])
    return {
        "format": FORMAT_VERSION, "corpus": fingerprint, "lowercase": cfg.lowercase, "tokenizer": models.hexdigest(),
        "max_src_tokens": cfg.max_src_tokens, "max_tgt_tokens": cfg.max_tgt_tokens,
        "max_length_ratio": cfg.max_length_ratio,
        # A multilingual source starts with its tag: tagged and untagged pairs of one corpus never share a folder.
        **({"source_prefix": tokenizer.source_prefix} if tokenizer.source_prefix else {}),
    }


# ---- the vocabulary ----------------------------------------------------------------------------


class Reservoir:
    """A uniform random sample of at most ``k`` of the items added, one pass (Algorithm R); ``k == 0``: all.

    Until more than ``k`` items have been added it holds all of them in their order, so a small corpus gives
    exactly the vocabulary that training on every sentence gives.
    """

    def __init__(self, k: int, seed: int) -> None:
        self.k = k
        self.items: list[str] = []
        self.seen = 0
        self._rng = random.Random(seed)

    def add(self, item: str) -> None:
        self.seen += 1
        if self.k == 0 or len(self.items) < self.k:
            self.items.append(item)
        elif (j := self._rng.randrange(self.seen)) < self.k:
            self.items[j] = item


def sample_sentences(cfg: DataConfig) -> tuple[list[str], list[str]]:
    """At most ``cfg.vocab_sample_size`` non-empty training sentences per side: a seeded sample, read as a stream."""
    src, tgt = Reservoir(cfg.vocab_sample_size, SAMPLE_SEED), Reservoir(cfg.vocab_sample_size, SAMPLE_SEED + 1)
    for src_chunk, tgt_chunk in iter_split(cfg, "train"):
        for text in src_chunk:
            if text:
                src.add(text)
        for text in tgt_chunk:
            if text:
                tgt.add(text)
    if len(src.items) < src.seen or len(tgt.items) < tgt.seen:
        logger.info("vocabulary sample: %d of %d source and %d of %d target sentences",
                    len(src.items), src.seen, len(tgt.items), tgt.seen)
    return src.items, tgt.items


def sample_languages(cfg: DataConfig) -> list[tuple[str, list[str]]]:
    """``(language, sentences)`` for each language text of a multilingual run's training split: at most
    ``cfg.vocab_sample_size`` non-empty sentences of each, a seeded sample read as a stream.

    A text that several directions read is sampled once (Multi30k's train.en serves en-de, de-en, en-fr, ...):
    counted once per direction, English would outweigh every other language in the vocabulary.
    """
    reservoirs: dict[tuple[str, str], Reservoir] = {}
    reads: list[tuple[DataConfig, list[Reservoir | None]]] = []  # each direction with a side not sampled yet
    for _, one in direction_configs(cfg):
        sides: list[Reservoir | None] = []
        for lang in (one.src_lang, one.tgt_lang):
            key = (lang, _text_source(one, lang))
            if key in reservoirs:
                sides.append(None)
                continue
            reservoirs[key] = Reservoir(cfg.vocab_sample_size, SAMPLE_SEED + len(reservoirs))
            sides.append(reservoirs[key])
        if any(side is not None for side in sides):
            reads.append((one, sides))
    for one, sides in reads:
        for chunks in iter_split(one, "train"):
            for reservoir, texts in zip(sides, chunks):
                if reservoir is not None:
                    for text in texts:
                        if text:
                            reservoir.add(text)
    for (lang, where), reservoir in reservoirs.items():
        logger.info("vocabulary sample: %d of %d %s sentences (%s)", len(reservoir.items), reservoir.seen, lang, where)
    return [(lang, reservoir.items) for (lang, _), reservoir in reservoirs.items()]


def _text_source(cfg: DataConfig, lang: str) -> str:
    """Where language ``lang`` of the pair ``cfg`` is read from: its own file for the "folder" and "files" sources
    (which other directions may read too), else the pair's dataset."""
    split = split_name(cfg, "train")
    if cfg.source == "folder":
        return str(find_split_file(corpus_folder(cfg), split, lang).resolve())
    if cfg.source == "files":
        return str(role_path(cfg, "train", lang).resolve())
    if cfg.source == "tsv":
        return str(role_path(cfg, "train").resolve())
    return f"{cfg.hub_name} {cfg.hub_config} {split} {sorted(cfg.hub_data_files.items())}"


def _vocabulary_texts(cfg: DataConfig) -> tuple[list[str], list[str]]:
    """What the vocabulary is trained on: the sample of each side, or of each language for several directions
    (all passed as the source side: a multilingual vocabulary is joint)."""
    if not cfg.multilingual:
        return sample_sentences(cfg)
    return [text for _, texts in sample_languages(cfg) for text in texts], []


def _tags(cfg: DataConfig) -> list[str]:
    """The target-language tags the vocabulary reserves: one per target language of a multilingual run."""
    return cfg.target_langs if cfg.multilingual else []


def prepare_vocabulary(cfg: DataConfig, fingerprint: dict[str, Any] | None = None) -> Tokenizer:
    """The cached vocabulary of this corpus and these settings; trained on a sample (and cached) if missing.

    Raises:
        DataError, ConfigError: see ``Tokenizer.train``; OutputError: the cache cannot be written.
    """
    fingerprint = fingerprint or corpus_fingerprint(cfg)
    key = vocab_key(cfg, fingerprint)
    final = cache_root(cfg) / f"vocab-{_digest(key)}"
    if (final / META_FILE).is_file():
        logger.info("reusing the vocabulary in %s", final)
        return Tokenizer.load(final)
    start = time.perf_counter()
    src, tgt = _vocabulary_texts(cfg)
    with _building(final) as tmp:
        Tokenizer.train(
            src, tgt, tmp, vocab_size=cfg.vocab_size, model_type=cfg.spm_model_type, joint=cfg.joint_vocab,
            character_coverage=cfg.spm_character_coverage, tags=_tags(cfg),
        )
        _write_json(tmp / "key.json", key)
    logger.info("vocabulary ready in %s (%.1fs)", final, time.perf_counter() - start)
    return Tokenizer.load(final)


def tokenizer_for_run(cfg: DataConfig, run_tokenizer_dir: Path, fingerprint: dict[str, Any] | None = None) -> Tokenizer:
    """The run folder's tokenizer (checked against ``cfg``); for a new run, the cached one copied there.

    Call it on one process only (rank 0), then ``Tokenizer.load(run_tokenizer_dir)`` on the others.

    Raises:
        ConfigError: the run folder's tokenizer was trained with other settings; see also ``prepare_vocabulary``.
    """
    if (run_tokenizer_dir / META_FILE).is_file():  # a resumed run keeps its vocabulary, whatever the cache holds
        return Tokenizer.load_or_train(
            run_tokenizer_dir, [], [], vocab_size=cfg.vocab_size, model_type=cfg.spm_model_type,
            joint=cfg.joint_vocab, character_coverage=cfg.spm_character_coverage, tags=_tags(cfg),
        )
    tokenizer = prepare_vocabulary(cfg, fingerprint)
    tokenizer.save(run_tokenizer_dir)
    return tokenizer


# ---- the encoded training pairs ----------------------------------------------------------------


def find_prepared_pairs(
    cfg: DataConfig, tokenizer: Tokenizer, fingerprint: dict[str, Any] | None = None, *, full_check: bool = False
) -> PreparedPairs | None:
    """The complete cache of the training pairs for this corpus, tokenizer and filters, checked; or None.

    Args:
        full_check: check the CRC of all of each token array, not only of the sampled blocks.

    Raises:
        DamagedCacheError: the folder is there but damaged (see ``verify_prepared``); the message says how to
            prepare it again.
    """
    fingerprint = fingerprint or corpus_fingerprint(cfg)
    key = pairs_key(cfg, fingerprint, tokenizer)
    path = cache_root(cfg) / f"train-{_digest(key)}"
    if not path.is_dir():
        return None
    return PreparedPairs(path, verify_prepared(path, key, tokenizer, full_check=full_check))


def prepare_pairs(
    cfg: DataConfig, tokenizer: Tokenizer, fingerprint: dict[str, Any] | None = None, *, full_check: bool = False
) -> PreparedPairs:
    """Encode and filter the training split into the cache (unless it is there already, undamaged).

    Peak memory is a few chunks of text plus the output's per-pair arrays (lengths, offsets, index), whatever
    the corpus size: the ids themselves go straight to disk. A damaged cache folder is prepared again, with a
    warning that says what was wrong.

    Args:
        full_check: when reusing the cache, check the CRC of all of each token array (``transformer prepare``).

    Raises:
        DataError: the corpus cannot be read, or no pair is left after filtering; OutputError: the cache
            cannot be written.
    """
    fingerprint = fingerprint or corpus_fingerprint(cfg)
    key = pairs_key(cfg, fingerprint, tokenizer)
    final = cache_root(cfg) / f"train-{_digest(key)}"
    try:
        found = find_prepared_pairs(cfg, tokenizer, fingerprint, full_check=full_check)
    except DamagedCacheError as err:
        logger.warning("the prepared training pairs in %s are damaged: %s; preparing them again", err.folder, err.reason)
        _discard(final)
        found = None
    if found is not None:
        logger.info("reusing the prepared training pairs in %s (%d pairs)", found.path, found.info["pairs"])
        return found
    workers = cfg.prepare_workers or os.cpu_count() or 1
    start = time.perf_counter()
    with _building(final) as tmp:
        info = _encode_to(tmp, cfg, tokenizer, workers)
        info.update(key=key, seconds=round(time.perf_counter() - start, 2), workers=workers)
        _write_json(tmp / PREPARED_FILE, info)
    logger.info(
        "prepared %d of %d training pairs (%d source and %d target tokens) in %.1fs with %d worker(s): %s",
        info["pairs"], info["lines"], info["src_tokens"], info["tgt_tokens"], info["seconds"], workers, final,
    )
    return PreparedPairs(final, info)


def prepare_directions(
    cfg: DataConfig, tokenizer: Tokenizer, fingerprint: dict[str, Any] | None = None, *, full_check: bool = False
) -> dict[str, PreparedPairs]:
    """``prepare_pairs`` of each direction of the run (``direction_configs``), keyed ``"en-de"``: one for a
    bilingual run; with several, each direction's sources start with the tag of its target language.

    Raises:
        See ``prepare_pairs``.
    """
    fingerprint = fingerprint or corpus_fingerprint(cfg)
    return {
        name: prepare_pairs(one, tokenizer.for_target(one.tgt_lang), direction_fingerprint(fingerprint, name),
                            full_check=full_check)
        for name, one in direction_configs(cfg)
    }


def find_prepared_directions(cfg: DataConfig, tokenizer: Tokenizer) -> dict[str, PreparedPairs] | None:
    """``find_prepared_pairs`` of each direction (as ``prepare_directions`` keys them), or None if one is missing.

    Raises:
        DamagedCacheError: see ``find_prepared_pairs``.
    """
    found = {}
    for name, one in direction_configs(cfg):
        prepared = find_prepared_pairs(one, tokenizer.for_target(one.tgt_lang))
        if prepared is None:
            return None
        found[name] = prepared
    return found


def encode_chunk(
    tokenizer_state: dict[str, Any], cfg: DataConfig, src: list[str], tgt: list[str], source_prefix: Sequence[int] = ()
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, int]]:
    """Encode and filter one chunk: (src ids, src lengths, tgt ids, tgt lengths, kept positions, drop counts).

    A plain function of plain values, so that worker processes can run it. ``source_prefix``: the tokenizer's
    (a target-language tag), which its state does not carry.
    """
    tokenizer = Tokenizer.from_state(tokenizer_state)
    tokenizer.source_prefix = list(source_prefix)
    src_ids, tgt_ids = tokenizer.encode_src(src), tokenizer.encode_tgt(tgt)
    src_len = np.fromiter(map(len, src_ids), dtype=np.int64, count=len(src_ids))
    tgt_len = np.fromiter(map(len, tgt_ids), dtype=np.int64, count=len(tgt_ids))
    drops = length_filter(src_len + 1, tgt_len + 1, cfg)
    keep = np.flatnonzero(~drops.any)
    counts = {"empty": int(drops.empty.sum()), "too_long": int(drops.too_long.sum()),
              "bad_ratio": int(drops.bad_ratio.sum())}
    kept = keep.tolist()
    return (
        flatten([src_ids[i] for i in kept])[0], src_len[keep].astype(np.int32),
        flatten([tgt_ids[i] for i in kept])[0], tgt_len[keep].astype(np.int32),
        keep, counts,
    )


def _encode_to(folder: Path, cfg: DataConfig, tokenizer: Tokenizer, workers: int) -> dict[str, Any]:
    """Stream the training split through ``encode_chunk`` into the files of ``folder``; returns the counts."""
    state = tokenizer.to_state()
    prefix = list(tokenizer.source_prefix)
    src_lengths: list[np.ndarray] = []
    tgt_lengths: list[np.ndarray] = []
    kept: list[np.ndarray] = []
    drops = {"empty": 0, "too_long": 0, "bad_ratio": 0}
    lines = 0
    crc = {"src.bin": 0, "tgt.bin": 0}
    max_id = {"src": -1, "tgt": -1}
    chunks = iter_split(cfg, "train", chunk_size=CHUNK_PAIRS)
    try:
        with open(folder / "src.bin", "wb") as src_out, open(folder / "tgt.bin", "wb") as tgt_out:
            results = _in_order(state, prefix, cfg, chunks, workers)
            for offset, (src_ids, src_len, tgt_ids, tgt_len, keep, counts) in results:
                for side, ids, out in (("src", src_ids, src_out), ("tgt", tgt_ids, tgt_out)):
                    data = ids.astype(np.int32, copy=False).tobytes()
                    out.write(data)
                    crc[f"{side}.bin"] = zlib.crc32(data, crc[f"{side}.bin"])
                    max_id[side] = max(max_id[side], int(ids.max(initial=-1)))
                src_lengths.append(src_len)
                tgt_lengths.append(tgt_len)
                kept.append(keep + offset)
                lines = offset + counts.pop("lines")
                for name, n in counts.items():
                    drops[name] += n
        index = np.concatenate(kept) if kept else np.zeros(0, dtype=np.int64)
        if len(index) == 0:
            raise DataError(
                f"no sentence pair left out of {lines} training pairs after filtering: {drops['empty']} empty, "
                f"{drops['too_long']} longer than max_src_tokens={cfg.max_src_tokens} or "
                f"max_tgt_tokens={cfg.max_tgt_tokens}, {drops['bad_ratio']} with a length ratio over "
                f"max_length_ratio={cfg.max_length_ratio}; raise those data.* limits or check the corpus files"
            )
        offsets = {}
        for side, lengths in (("src", src_lengths), ("tgt", tgt_lengths)):
            offsets[side] = np.zeros(len(index) + 1, dtype=np.int64)
            np.cumsum(np.concatenate(lengths), out=offsets[side][1:])
            np.save(folder / f"{side}_offsets.npy", offsets[side])
        np.save(folder / "index.npy", index.astype(np.int64))
        checks = _file_checks(folder, crc)
    except OSError as err:
        raise write_error(folder, err, what="prepared data folder") from None
    if sum(drops.values()):
        logger.warning("dropped %d of %d training pairs: %s", sum(drops.values()), lines,
                       ", ".join(f"{n} {name.replace('_', ' ')}" for name, n in drops.items()))
    return {"pairs": len(index), "lines": lines, "dropped": drops,
            "src_tokens": int(offsets["src"][-1]), "tgt_tokens": int(offsets["tgt"][-1]),
            "max_src_id": max_id["src"], "max_tgt_id": max_id["tgt"], "checks": checks}


def _in_order(
    state: dict[str, Any], prefix: list[int], cfg: DataConfig, chunks: Iterator[tuple[list[str], list[str]]],
    workers: int,
) -> Iterator[tuple[int, tuple]]:
    """``(line offset, encode_chunk(...) with counts["lines"])`` for each chunk, in corpus order.

    With several workers, at most two chunks per worker are in flight, so the text read ahead stays bounded.
    """
    offset = 0
    if workers == 1:
        for src, tgt in chunks:
            *arrays, counts = encode_chunk(state, cfg, src, tgt, prefix)
            yield offset, (*arrays, dict(counts, lines=len(src)))
            offset += len(src)
        return
    pending: deque[tuple[int, int, Future]] = deque()
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for src, tgt in chunks:
            pending.append((offset, len(src), pool.submit(encode_chunk, state, cfg, src, tgt, prefix)))
            offset += len(src)
            while len(pending) >= 2 * workers:
                yield _result(pending.popleft())
        while pending:
            yield _result(pending.popleft())


def _result(entry: tuple[int, int, Future]) -> tuple[int, tuple]:
    offset, n_lines, future = entry
    *arrays, counts = future.result()
    return offset, (*arrays, dict(counts, lines=n_lines))


# ---- checking a prepared folder -----------------------------------------------------------------


def _file_checks(folder: Path, token_crcs: dict[str, int]) -> dict[str, dict[str, int]]:
    """What ``prepared.json`` records of each file: its size and CRC-32 (and, for the token arrays, the CRC-32 of
    the sampled blocks that every opening reads)."""
    checks = {}
    for name in TOKEN_FILES + ARRAY_FILES:
        path = folder / name
        size = path.stat().st_size
        checks[name] = {"bytes": size, "crc32": token_crcs[name] if name in token_crcs else _crc32(path)}
        if name in TOKEN_FILES:
            checks[name]["sampled_crc32"] = zlib.crc32(_read_blocks(path, size))
    return checks


def _crc32(path: Path) -> int:
    crc = 0
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            crc = zlib.crc32(block, crc)
    return crc


def _read_blocks(path: Path, size: int) -> bytes:
    """``CHECK_BLOCKS`` blocks of ``CHECK_BLOCK_BYTES`` spread evenly over the file, the first and last included
    (all of a file of at most that many bytes), each starting at a whole int32."""
    if size <= CHECK_BLOCKS * CHECK_BLOCK_BYTES:
        return path.read_bytes()
    last = (size - CHECK_BLOCK_BYTES) // 4
    parts = []
    with open(path, "rb") as f:
        for i in range(CHECK_BLOCKS):
            f.seek(i * last // (CHECK_BLOCKS - 1) * 4)
            parts.append(f.read(CHECK_BLOCK_BYTES))
    return b"".join(parts)


def verify_prepared(
    folder: Path, key: dict[str, Any], tokenizer: Tokenizer, *, full_check: bool = False
) -> dict[str, Any]:
    """``prepared.json`` of ``folder``, once the folder agrees with it; reads the per-pair arrays and 1 MiB of
    each token array (all of them with ``full_check``).

    Raises:
        DamagedCacheError: what does not agree (a missing or unreadable ``prepared.json``, one written for
            other settings or by a version without checks, a missing file, a size, a CRC, a largest id that is
            not below the vocabulary size).
    """
    try:
        info = json.loads((folder / PREPARED_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DamagedCacheError(folder, f"{PREPARED_FILE} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DamagedCacheError(folder, f"{PREPARED_FILE} cannot be read: {err}") from None
    names = TOKEN_FILES + ARRAY_FILES
    try:
        checks = info["checks"]
        pairs, max_ids = int(info["pairs"]), (int(info["max_src_id"]), int(info["max_tgt_id"]))
        sizes = {name: int(checks[name]["bytes"]) for name in names}
        crcs = {name: int(checks[name]["crc32"]) for name in names}
        sampled = {name: int(checks[name]["sampled_crc32"]) for name in TOKEN_FILES}
    except (TypeError, KeyError, ValueError):
        raise DamagedCacheError(
            folder, f"{PREPARED_FILE} lacks the sizes and checksums of its files (damaged, or by an older version)"
        ) from None
    if info.get("key") != json.loads(json.dumps(key)):  # as JSON gives it back (lists for tuples)
        raise DamagedCacheError(folder, f"{PREPARED_FILE} was written for another corpus or other settings")
    for name in names:
        try:
            size = (folder / name).stat().st_size
        except OSError as err:
            raise DamagedCacheError(folder, f"{name} cannot be read: {err.strerror or err}") from None
        if size != sizes[name]:
            raise DamagedCacheError(folder, f"{name} has {size} bytes, {PREPARED_FILE} says {sizes[name]}")
    for name in ARRAY_FILES:
        if _crc32(folder / name) != crcs[name]:
            raise DamagedCacheError(folder, f"{name} does not match its checksum")
    try:
        arrays = {name: np.load(folder / name, mmap_mode="r") for name in ARRAY_FILES}
    except (OSError, ValueError) as err:
        raise DamagedCacheError(folder, f"cannot map the arrays: {err}") from None
    if len(arrays["index.npy"]) != pairs:
        found = len(arrays["index.npy"])
        raise DamagedCacheError(folder, f"index.npy has {found} pairs, {PREPARED_FILE} says {pairs}")
    vocab_sizes = (tokenizer.src_vocab_size, tokenizer.tgt_vocab_size)
    for side, bin_name, max_id, vocab_size in zip(("src", "tgt"), TOKEN_FILES, max_ids, vocab_sizes):
        offsets = arrays[f"{side}_offsets.npy"]
        if len(offsets) != pairs + 1 or offsets[0] != 0 or int(offsets[-1]) * 4 != sizes[bin_name]:
            raise DamagedCacheError(folder, f"{side}_offsets.npy does not agree with {bin_name} and index.npy")
        if not 0 <= max_id < vocab_size:
            raise DamagedCacheError(
                folder, f"{PREPARED_FILE} gives {max_id} as the largest id of {bin_name}, but the vocabulary has "
                f"{vocab_size} pieces"
            )
        sampled_ok = zlib.crc32(_read_blocks(folder / bin_name, sizes[bin_name])) == sampled[bin_name]
        if not sampled_ok or (full_check and _crc32(folder / bin_name) != crcs[bin_name]):
            raise DamagedCacheError(folder, f"{bin_name} does not match its checksum")
    return info


# ---- writing into place ------------------------------------------------------------------------


def _discard(folder: Path) -> None:
    """Move a damaged folder out of the way (one rename, so a process that maps its files keeps them), then
    remove it."""
    aside = folder.parent / f".{folder.name}.damaged-{socket.gethostname()}-{os.getpid()}"
    try:
        shutil.rmtree(aside, ignore_errors=True)
        os.rename(folder, aside)
    except FileNotFoundError:  # another process moved it first
        return
    except OSError as err:
        raise write_error(folder, err, what="damaged data cache folder") from None
    shutil.rmtree(aside, ignore_errors=True)



@contextlib.contextmanager
def _building(final: Path) -> Iterator[Path]:
    """A temporary folder beside ``final``, renamed to it when the block ends without an error.

    If another process finished the same folder first, its copy is kept and ours removed. Temporary folders
    of processes of this host that no longer run (killed mid-way) are swept first.
    """
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        _sweep_stale(final.parent)
        tmp = final.parent / f".{final.name}.tmp-{socket.gethostname()}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    except OSError as err:
        raise write_error(final.parent, err, what="data cache folder") from None
    try:
        yield tmp
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():
                raise
            logger.info("another process prepared %s first; using its copy", final)
    except OSError as err:
        raise write_error(final, err, what="data cache folder") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _sweep_stale(root: Path) -> None:
    host = socket.gethostname()
    for path in [*root.glob(f".*.tmp-{host}-*"), *root.glob(f".*.damaged-{host}-*")]:
        pid = path.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not process_alive(int(pid)):
            logger.info("removing %s, left by a preparation that was stopped", path)
            shutil.rmtree(path, ignore_errors=True)


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n", encoding="utf-8")
