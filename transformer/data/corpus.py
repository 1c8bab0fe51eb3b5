"""Parallel text in, padded token-budget batches out.

Sources (``DataConfig.source``), one loader for all of them (``load_split``):

- ``"folder"``: a folder of raw parallel files ``{split}.{lang}`` or ``{split}.{lang}.gz`` (the Multi30k layout);
- ``"files"``: a path per role in ``files``, with ``{lang}`` for the language (``corpus/train.{lang}``);
- ``"tsv"``: a file per role in ``files``, ``source<TAB>target`` on each line;
- ``"hub"``: ``datasets.load_dataset(hub_name, hub_config)``, or a local json/csv/parquet file through
  the same call (``hub_name="json"`` and ``hub_data_files={split: path}``); either one column per
  language or a ``translation`` column of ``{lang: text}`` dicts.

Roles ``train``/``valid``/``test`` map to split names through ``DataConfig``. ``ParallelDataset``
encodes and filters pairs; ``BatchIterator`` groups them into batches of at most ``max_tokens``
tokens (padding included), similar lengths together. Teacher forcing layout of one pair::

    src     = x + [EOS]
    tgt_in  = [BOS] + y
    tgt_out = y + [EOS]
"""

from __future__ import annotations

import gzip
import itertools
import logging
import os
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from transformer.config import LANG, DataConfig
from transformer.errors import ConfigError, DataError, os_reason

logger = logging.getLogger(__name__)

ROLES = ("train", "valid", "test")
LOCAL_HUB_FORMATS = ("json", "csv", "parquet")
DEFAULT_MULTI30K_DIR = Path("data/multi30k")  # relative to the current directory; `transformer download` fills it



# ---- reading raw text --------------------------------------------------------------------------


def load_split(cfg: DataConfig, role: str) -> tuple[list[str], list[str]]:
    """Source and target sentences of one role, as configured by ``cfg`` (all of them, in memory).

    Lines are stripped of surrounding whitespace (and lowercased if ``cfg.lowercase``); empty and
    over-long pairs are kept here and dropped, with a count, by ``ParallelDataset.from_texts``.
    ``iter_split`` reads the same pairs in chunks, for corpora too large to hold as Python strings.

    Args:
        cfg: the data section of the config.
        role: "train", "valid" or "test" (mapped to ``cfg.train_split`` etc.).

    Returns:
        ``(src_texts, tgt_texts)``, two lists of the same length.

    Raises:
        DataError: a file or split is missing, not UTF-8, misaligned or malformed, has no sentence pair at all,
            or the hub is unreachable.
    """
    src: list[str] = []
    tgt: list[str] = []
    for src_chunk, tgt_chunk in iter_split(cfg, role):
        src += src_chunk
        tgt += tgt_chunk
    return src, tgt


def iter_split(cfg: DataConfig, role: str, *, chunk_size: int = 100_000) -> Iterator[tuple[list[str], list[str]]]:
    """The pairs of ``load_split`` in chunks of at most ``chunk_size``, read as a stream.

    Memory stays at one chunk whatever the corpus size. The checks that need the whole split (equal line
    counts, at least one pair with text on both sides) raise when the stream reaches the end.

    Raises:
        DataError: see ``load_split``.
    """
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    split = split_name(cfg, role)
    if cfg.source == "folder":
        folder = corpus_folder(cfg)
        src_path, tgt_path = find_split_file(folder, split, cfg.src_lang), find_split_file(folder, split, cfg.tgt_lang)
        chunks, where = iter_parallel(src_path, tgt_path, chunk_size), f"{src_path} and {tgt_path}"
    elif cfg.source == "files":
        src_path, tgt_path = role_path(cfg, role, cfg.src_lang), role_path(cfg, role, cfg.tgt_lang)
        chunks, where = iter_parallel(src_path, tgt_path, chunk_size), f"{src_path} and {tgt_path}"
    elif cfg.source == "tsv":
        path = role_path(cfg, role)
        chunks, where = iter_tsv(path, chunk_size), str(path)
    else:
        chunks, where = iter_hub_split(cfg, split, chunk_size), f"dataset {cfg.hub_name} ({split})"
    n_lines, n_pairs = 0, 0
    for src, tgt in chunks:
        n_lines += len(src)
        n_pairs += sum(1 for s, t in zip(src, tgt) if s and t)
        if cfg.lowercase:
            src, tgt = [s.lower() for s in src], [t.lower() for t in tgt]
        yield src, tgt
    if not n_pairs:
        state = "no lines" if not n_lines else f"{n_lines} lines, none with text on both sides"
        raise DataError(
            f"no sentence pairs for the {role} split in {where} ({state}); it needs lines with text in both "
            "languages, line i of one side translating line i of the other"
        )
    logger.info("read %d %s pairs (%s-%s) from %s", n_lines, role, cfg.src_lang, cfg.tgt_lang, where)


def direction_configs(cfg: DataConfig) -> list[tuple[str, DataConfig]]:
    """``("en-de", bilingual config)`` of each translation direction of the run, in ``data.directions`` order.

    A bilingual run (no or one direction) is its own one direction, ``cfg`` itself: what it reads stays exactly
    what it read before directions existed.
    """
    if not cfg.multilingual:
        return [(f"{cfg.src_lang}-{cfg.tgt_lang}", cfg)]
    if cfg.source == "tsv":  # one file, source<TAB>target: it cannot say which language each column is
        raise ConfigError(
            "data.directions: a data.source=tsv file holds one direction; give several directions a folder of "
            "{split}.{lang} files (data.source=folder) or a path per language (data.source=files)"
        )
    return [(f"{src}-{tgt}", cfg.for_direction(src, tgt)) for src, tgt in cfg.direction_pairs]


def split_name(cfg: DataConfig, role: str) -> str:
    """The corpus's name of the split that plays ``role`` ("train", "valid", "test")."""
    return {"train": cfg.train_split, "valid": cfg.valid_split, "test": cfg.test_split}[role]


def role_path(cfg: DataConfig, role: str, lang: str | None = None) -> Path:
    """The ``cfg.files`` path of ``role``: of language ``lang`` for source "files", the TSV file (``lang=None``).

    Raises:
        DataError: ``cfg.files`` has no path for ``role`` (the message shows how to add one).
    """
    path = cfg.files.get(role)
    if not path:
        example = f'"corpus/{role}.{LANG}"' if cfg.source == "files" else f"corpus/{role}.tsv"
        raise DataError(
            f"data.source={cfg.source} reads the {role} split from data.files, which has no {role} path; "
            f"add one, e.g. {role}: {example}"
        )
    return Path(path if lang is None else path.replace(LANG, lang))


def corpus_folder(cfg: DataConfig) -> Path:
    """The corpus folder: ``cfg.data_dir``, else ``$MULTI30K_DIR``, else ``data/multi30k``.

    Raises:
        DataError: the folder does not exist, or is a file (the message says how to get a folder).
    """
    folder = Path(cfg.data_dir or os.environ.get("MULTI30K_DIR") or DEFAULT_MULTI30K_DIR).expanduser()
    origin = "data.data_dir" if cfg.data_dir else ("$MULTI30K_DIR" if os.environ.get("MULTI30K_DIR") else "default")
    if folder.exists() and not folder.is_dir():
        raise DataError(
            f"data folder {folder} ({origin}) is a file, not a folder; point {origin} at the folder that holds "
            f"the {{split}}.{{lang}} files (e.g. data.data_dir={folder.parent}), or set data.source=files "
            'and data.files to a path per role (e.g. train: "corpus/train.{lang}")'
        )
    if not folder.is_dir():
        raise DataError(
            f"data folder {folder} ({origin}) does not exist; download Multi30k with "
            "`transformer download multi30k` (or --output DIR and set data.data_dir=DIR or MULTI30K_DIR=DIR), "
            "or use the sample corpus: data.data_dir=data/sample data.test_split=test"
        )
    return folder


def find_split_file(folder: Path, split: str, lang: str) -> Path:
    """``folder/{split}.{lang}``, or its gzipped version ``folder/{split}.{lang}.gz``.

    Raises:
        DataError: neither exists; the message lists the files that are in the folder.
    """
    for name in (f"{split}.{lang}", f"{split}.{lang}.gz"):
        if (folder / name).is_file():
            return folder / name
    try:
        present = sorted(p.name for p in folder.iterdir() if p.is_file())
    except OSError:  # e.g. a folder we may not list
        present = []
    listing = ", ".join(present[:40]) + (f", ... ({len(present)} files)" if len(present) > 40 else "")
    raise DataError(
        f"missing {folder / f'{split}.{lang}'} (or .gz): no {lang!r} file for split {split!r}; "
        f"{folder} contains: {listing or 'no files'}"
    )


def iter_lines(path: Path) -> Iterator[str]:
    """Lines of a UTF-8 text file (gzip-compressed if the name ends in ``.gz``), without line ends, as a stream.

    Lines end at "\\n" only (not at U+2028 and the like, which ``str.splitlines`` would split on); a byte-order
    mark at the start is dropped.

    Raises:
        DataError: the file is missing or unreadable, not valid gzip (corrupt or truncated), or not UTF-8
            (with the line number).
    """
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path} is a folder; give a text file with one sentence per line")
    try:
        with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as f:
            for number, raw in enumerate(f, start=1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as err:
                    raise DataError(
                        f"{path}:{number}: not valid UTF-8 (byte {raw[err.start]:#x} at column {err.start + 1})"
                    ) from None
                if number == 1:
                    line = line.removeprefix("\ufeff")
                yield line.removesuffix("\n").removesuffix("\r")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (gzip.BadGzipFile, EOFError, zlib.error) as err:
        raise DataError(
            f"{path}: not a valid gzip file, or cut short ({err}); download or copy it again "
            f"(or decompress it and drop the .gz)"
        ) from None
    except OSError as err:
        raise DataError(f"{path}: cannot read it: {os_reason(err, path)}") from None


def iter_parallel(src_path: Path, tgt_path: Path, chunk_size: int) -> Iterator[tuple[list[str], list[str]]]:
    """Two line-aligned files, each line stripped, in chunks.

    Raises:
        DataError: the files have different line counts (both counts and paths in the message), or see ``iter_lines``.
    """
    sentinel = object()
    pairs = itertools.zip_longest(iter_lines(src_path), iter_lines(tgt_path), fillvalue=sentinel)
    n = 0
    while chunk := list(itertools.islice(pairs, chunk_size)):
        if chunk[-1][0] is sentinel or chunk[-1][1] is sentinel:
            rest = chunk + list(pairs)  # only the longer file's lines are left: count them for the message
            n_src = n + sum(1 for s, _ in rest if s is not sentinel)
            n_tgt = n + sum(1 for _, t in rest if t is not sentinel)
            raise DataError(f"parallel files differ in length: {src_path} has {n_src} lines but {tgt_path} has {n_tgt}")
        n += len(chunk)
        yield [s.strip() for s, _ in chunk], [t.strip() for _, t in chunk]


def iter_tsv(path: Path, chunk_size: int) -> Iterator[tuple[list[str], list[str]]]:
    """``source<TAB>target`` per line, in chunks; a blank line becomes an empty pair (dropped later, counted).

    Raises:
        DataError: a non-blank line has no tab or more than one (file and line in the message).
    """
    lines = enumerate(iter_lines(path), start=1)
    while chunk := list(itertools.islice(lines, chunk_size)):
        src, tgt = [], []
        for number, line in chunk:
            if not line.strip():
                src.append("")
                tgt.append("")
                continue
            fields = line.split("\t")
            if len(fields) != 2:
                raise DataError(f"{path}:{number}: expected source<TAB>target, found {len(fields)} tab-separated fields")
            src.append(fields[0].strip())
            tgt.append(fields[1].strip())
        yield src, tgt


def iter_hub_split(cfg: DataConfig, split: str, chunk_size: int) -> Iterator[tuple[list[str], list[str]]]:
    """One split through ``datasets.load_dataset`` (the hub, or a local json/csv/parquet file), in chunks.

    Both layouts are read: one column per language (``en``, ``de``), or a ``translation`` column of
    ``{lang: text}`` dicts (wmt14, iwslt2017). The chunks come from the dataset's Arrow table in batches: the
    split is never turned into Python lists as a whole.

    Raises:
        DataError: the dataset cannot be loaded (unreachable hub: the message says how to use a local
            folder instead), the split does not exist, or a language is missing.
    """
    ds, name = load_hub_dataset(cfg, split)
    columns = ds.column_names
    langs = (cfg.src_lang, cfg.tgt_lang)
    if "translation" in columns:
        ds = ds.select_columns(["translation"]).flatten()  # columns "translation.en", ... (Arrow, no Python dicts)
        keys = sorted(c.removeprefix("translation.") for c in ds.column_names)
        missing = [lang for lang in langs if lang not in keys]
        if missing:
            raise DataError(
                f"dataset {name} split {split!r}: the translation column has languages {keys}, not {missing}"
            )
        src_column, tgt_column = f"translation.{cfg.src_lang}", f"translation.{cfg.tgt_lang}"
    elif all(lang in columns for lang in langs):
        src_column, tgt_column = langs
    else:
        raise DataError(
            f"dataset {name} split {split!r} has columns {columns}; expected a 'translation' column of "
            f"{{language: text}} dicts or one column per language ({cfg.src_lang!r}, {cfg.tgt_lang!r})"
        )
    for batch in ds.select_columns([src_column, tgt_column]).iter(batch_size=chunk_size):
        yield [(s or "").strip() for s in batch[src_column]], [(t or "").strip() for t in batch[tgt_column]]


def load_hub_dataset(cfg: DataConfig, split: str) -> tuple[Any, str]:
    """``datasets.load_dataset`` for ``split``, and the dataset's name for messages.

    Raises:
        DataError: see ``iter_hub_split``.
    """
    import datasets  # slow to import; only this source needs it

    local = cfg.hub_name in LOCAL_HUB_FORMATS
    name = f"{cfg.hub_name} {cfg.hub_data_files}" if local else repr(cfg.hub_name)
    try:
        files = dict(cfg.hub_data_files) or None
        return datasets.load_dataset(cfg.hub_name, cfg.hub_config or None, data_files=files, split=split), name
    except ValueError as err:
        if "Unknown split" in str(err):
            raise DataError(f"dataset {name} has no split {split!r} (data.{_split_key(cfg, split)}): {err}") from err
        raise DataError(f"cannot load dataset {name}: {err}") from err
    except Exception as err:  # datasets raises many types: ConnectionError, FileNotFoundError, hub errors
        if local:
            raise DataError(f"cannot load data.hub_data_files {cfg.hub_data_files}: {err}") from err
        raise DataError(
            f"cannot load hub dataset {name} ({type(err).__name__}: {err}). If the Hugging Face hub is "
            "unreachable, use local files instead: download Multi30k with `transformer download multi30k` and set "
            "data.source=folder data.data_dir=DIR, or data.source=hub data.hub_name=json "
            "data.hub_data_files='{train: train.jsonl, ...}'"
        ) from err


def _split_key(cfg: DataConfig, split: str) -> str:
    """The config key that names ``split`` (for error messages)."""
    for key in ("train_split", "valid_split", "test_split"):
        if getattr(cfg, key) == split:
            return f"{key}={split}"
    return f"split={split}"
