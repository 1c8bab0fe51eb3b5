"""Parallel text in, padded token-budget batches out.

Sources (``DataConfig.source``), one loader for all of them (``load_split``):

- ``"folder"``: a folder of raw parallel files ``{split}.{lang}`` or ``{split}.{lang}.gz`` (the Multi30k layout;
  ``"multi30k"``, its old name, is still read);
- ``"files"``: an explicit source and target path per role;
- ``"tsv"``: one file per role, ``source<TAB>target`` on each line;
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
import logging
import os
import zlib
from pathlib import Path

from transformer.config import DataConfig
from transformer.errors import DataError, os_reason

logger = logging.getLogger(__name__)

ROLES = ("train", "valid", "test")
LOCAL_HUB_FORMATS = ("json", "csv", "parquet")
DEFAULT_MULTI30K_DIR = Path("data/multi30k")  # relative to the current directory; `transformer download` fills it



# ---- reading raw text --------------------------------------------------------------------------


def load_split(cfg: DataConfig, role: str) -> tuple[list[str], list[str]]:
    """Source and target sentences of one role, as configured by ``cfg``.

    Lines are stripped of surrounding whitespace (and lowercased if ``cfg.lowercase``); empty and
    over-long pairs are kept here and dropped, with a count, by ``ParallelDataset.from_texts``.

    Args:
        cfg: the data section of the config.
        role: "train", "valid" or "test" (mapped to ``cfg.train_split`` etc.).

    Returns:
        ``(src_texts, tgt_texts)``, two lists of the same length.

    Raises:
        DataError: a file or split is missing, not UTF-8, misaligned or malformed, has no sentence pair at all,
            or the hub is unreachable.
    """
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    split = {"train": cfg.train_split, "valid": cfg.valid_split, "test": cfg.test_split}[role]
    if cfg.source == "folder":
        folder = corpus_folder(cfg)
        src_path, tgt_path = find_split_file(folder, split, cfg.src_lang), find_split_file(folder, split, cfg.tgt_lang)
        src, tgt = read_parallel(src_path, tgt_path)
        where = f"{src_path} and {tgt_path}"
    elif cfg.source == "files":
        src_path, tgt_path = {
            "train": (cfg.train_src, cfg.train_tgt),
            "valid": (cfg.valid_src, cfg.valid_tgt),
            "test": (cfg.test_src, cfg.test_tgt),
        }[role]
        if not src_path or not tgt_path:
            raise DataError(f"data.source=files needs data.{role}_src and data.{role}_tgt for the {role} split")
        src, tgt = read_parallel(Path(src_path), Path(tgt_path))
        where = f"{src_path} and {tgt_path}"
    elif cfg.source == "tsv":
        path = {"train": cfg.train_tsv, "valid": cfg.valid_tsv, "test": cfg.test_tsv}[role]
        if not path:
            raise DataError(f"data.source=tsv needs data.{role}_tsv for the {role} split")
        src, tgt = read_tsv(Path(path))
        where = path
    else:
        src, tgt = load_hub_split(cfg, split)
        where = f"dataset {cfg.hub_name} ({split})"
    if not any(s and t for s, t in zip(src, tgt)):
        state = "no lines" if not src else f"{len(src)} lines, none with text on both sides"
        raise DataError(
            f"no sentence pairs for the {role} split in {where} ({state}); it needs lines with text in both "
            "languages, line i of one side translating line i of the other"
        )
    if cfg.lowercase:
        src, tgt = [s.lower() for s in src], [t.lower() for t in tgt]
    logger.info("read %d %s pairs (%s-%s) from %s", len(src), role, cfg.src_lang, cfg.tgt_lang, where)
    return src, tgt


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
            f"the {{split}}.{{lang}} files (e.g. data.data_dir={folder.parent}), or use data.source=files "
            "with data.train_src=... data.train_tgt=..."
        )
    if not folder.is_dir():
        raise DataError(
            f"data folder {folder} ({origin}) does not exist; download Multi30k with "
            "`transformer download multi30k` (or --out DIR and set data.data_dir=DIR or MULTI30K_DIR=DIR), "
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


def read_lines(path: Path) -> list[str]:
    """Lines of a UTF-8 text file (gzip-compressed if the name ends in ``.gz``), without line ends.

    Raises:
        DataError: the file is missing or unreadable, not valid gzip (corrupt or truncated), or not UTF-8
            (with the line number).
    """
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path} is a folder; give a text file with one sentence per line")
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
            raw = f.read()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (gzip.BadGzipFile, EOFError, zlib.error) as err:
        raise DataError(
            f"{path}: not a valid gzip file, or cut short ({err}); download or copy it again "
            f"(or decompress it and drop the .gz)"
        ) from None
    except OSError as err:
        raise DataError(f"{path}: cannot read it: {os_reason(err, path)}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        column = err.start - (raw.rfind(b"\n", 0, err.start) + 1) + 1
        raise DataError(f"{path}:{line}: not valid UTF-8 (byte {raw[err.start]:#x} at column {column})") from None
    lines = text.removeprefix("\ufeff").split("\n")  # not splitlines(): it also splits on U+2028 etc.
    if lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def read_parallel(src_path: Path, tgt_path: Path) -> tuple[list[str], list[str]]:
    """Two line-aligned files, each line stripped.

    Raises:
        DataError: the files have different line counts (both counts and paths in the message), or see ``read_lines``.
    """
    src, tgt = read_lines(src_path), read_lines(tgt_path)
    if len(src) != len(tgt):
        raise DataError(
            f"parallel files differ in length: {src_path} has {len(src)} lines but {tgt_path} has {len(tgt)}"
        )
    return [s.strip() for s in src], [t.strip() for t in tgt]


def read_tsv(path: Path) -> tuple[list[str], list[str]]:
    """``source<TAB>target`` per line; a blank line becomes an empty pair (dropped later, counted).

    Raises:
        DataError: a non-blank line has no tab or more than one (file and line in the message).
    """
    src, tgt = [], []
    for number, line in enumerate(read_lines(path), start=1):
        if not line.strip():
            src.append("")
            tgt.append("")
            continue
        fields = line.split("\t")
        if len(fields) != 2:
            raise DataError(f"{path}:{number}: expected source<TAB>target, found {len(fields)} tab-separated fields")
        src.append(fields[0].strip())
        tgt.append(fields[1].strip())
    return src, tgt


def load_hub_split(cfg: DataConfig, split: str) -> tuple[list[str], list[str]]:
    """One split through ``datasets.load_dataset`` (the hub, or a local json/csv/parquet file).

    Both layouts are read: one column per language (``en``, ``de``), or a ``translation`` column of
    ``{lang: text}`` dicts (wmt14, iwslt2017).

    Raises:
        DataError: the dataset cannot be loaded (unreachable hub: the message says how to use a local
            folder instead), the split does not exist, or a language is missing.
    """
    import datasets  # slow to import; only this source needs it

    local = cfg.hub_name in LOCAL_HUB_FORMATS
    name = f"{cfg.hub_name} {cfg.hub_data_files}" if local else repr(cfg.hub_name)
    try:
        files = dict(cfg.hub_data_files) or None
        ds = datasets.load_dataset(cfg.hub_name, cfg.hub_config or None, data_files=files, split=split)
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
        src, tgt = list(ds[f"translation.{cfg.src_lang}"]), list(ds[f"translation.{cfg.tgt_lang}"])
    elif all(lang in columns for lang in langs):
        src, tgt = list(ds[cfg.src_lang]), list(ds[cfg.tgt_lang])
    else:
        raise DataError(
            f"dataset {name} split {split!r} has columns {columns}; expected a 'translation' column of "
            f"{{language: text}} dicts or one column per language ({cfg.src_lang!r}, {cfg.tgt_lang!r})"
        )
    return [(s or "").strip() for s in src], [(t or "").strip() for t in tgt]


def _split_key(cfg: DataConfig, split: str) -> str:
    """The config key that names ``split`` (for error messages)."""
    for key in ("train_split", "valid_split", "test_split"):
        if getattr(cfg, key) == split:
            return f"{key}={split}"
    return f"split={split}"
