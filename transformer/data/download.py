"""Fetch the Multi30k task 1 raw files into a local folder, the layout ``data.data_dir`` reads.

Files come from the multi30k/dataset GitHub repository (``data/task1/raw/{split}.{lang}.gz``) and are
stored as they are, gzip-compressed: ``OUTPUT/{split}.{lang}.gz``. The default folder is ``data/multi30k``,
which training finds without ``data.data_dir`` or ``$MULTI30K_DIR``. Each language gets every split asked for that
Multi30k publishes in it (Czech has no 2017 test sets): enough for a multilingual run over several directions.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import logging
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

from transformer.data.corpus import DEFAULT_MULTI30K_DIR
from transformer.errors import DataError, write_error
from transformer.files import atomic_write_bytes

logger = logging.getLogger(__name__)

MULTI30K_URL = "https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw"
MULTI30K_SPLITS = ("train", "val", "test_2016_flickr", "test_2017_flickr", "test_2017_mscoco", "test_2018_flickr")
MULTI30K_LANGS = ("en", "de", "fr", "cs")
DEFAULT_SPLITS = ("train", "val", "test_2016_flickr", "test_2017_flickr")
UNPUBLISHED = {("test_2017_flickr", "cs"), ("test_2017_mscoco", "cs")}  # combinations Multi30k does not publish


class DownloadError(DataError):
    """A file could not be fetched: no network, or the server does not have it."""


def multi30k_files(splits: Sequence[str], langs: Sequence[str]) -> list[str]:
    """The published file names ``{split}.{lang}.gz`` of these splits and languages, in download order."""
    return [f"{split}.{lang}.gz" for split in splits for lang in langs if (split, lang) not in UNPUBLISHED]


def unpublished_files(splits: Sequence[str], langs: Sequence[str]) -> list[str]:
    """The names ``{split}.{lang}`` of these splits and languages that Multi30k does not publish (not fetched)."""
    return [f"{split}.{lang}" for split in splits for lang in langs if (split, lang) in UNPUBLISHED]


MIRROR_HINT = "or fetch the files {split}.{lang}.gz from a mirror: transformer download multi30k --base-url URL"


def fetch_gzip_text(url: str, *, timeout: float) -> tuple[bytes, int]:
    """Fetch ``url`` and check it is gzip-compressed UTF-8 text: (its bytes, its line count). Writes nothing.

    Raises:
        DownloadError: the server cannot be reached, answers with an error, or sends something else than
            gzip-compressed UTF-8 text; the message names the URL and ``--base-url``.
    """
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            data = response.read()
    except urllib.error.HTTPError as err:
        raise DownloadError(f"{url}: HTTP {err.code} {err.reason}; {MIRROR_HINT}") from None
    except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
        raise DownloadError(
            f"cannot reach {url} ({getattr(err, 'reason', err)}). No network? Copy an existing Multi30k folder "
            f"instead and point data.data_dir (or MULTI30K_DIR) at it, {MIRROR_HINT}"
        ) from None
    try:
        with gzip.open(io.BytesIO(data), "rt", encoding="utf-8") as f:
            n_lines = sum(1 for _ in f)
    except (OSError, EOFError, UnicodeDecodeError) as err:
        raise DownloadError(f"{url} is not gzip-compressed UTF-8 text: {err}; {MIRROR_HINT}") from None
    return data, n_lines


def download_multi30k(
    out: str | Path = DEFAULT_MULTI30K_DIR,
    *,
    langs: Sequence[str] = ("en", "de"),
    splits: Sequence[str] = DEFAULT_SPLITS,
    base_url: str = MULTI30K_URL,
    timeout: float = 30.0,
    force: bool = False,
    progress: Callable[[int], None] | None = None,
) -> list[Path]:
    """Download the Multi30k files of ``splits`` x ``langs`` into ``out`` (created); keep existing ones.

    All or nothing: every file is fetched and checked in memory first (the largest is under 1 MB), then written
    (each atomically). If anything fails, the files and folders this call created are removed again.

    Args:
        out: the folder to fill (default ``data/multi30k``, relative to the current directory).
        base_url: where ``{split}.{lang}.gz`` live (the multi30k/dataset repository, or a mirror).
        timeout: seconds per request.
        force: fetch files that are already there.
        progress: called with 1 after each file is fetched or kept.

    Returns:
        The paths of the files, all present.

    Raises:
        DataError: Multi30k publishes none of these splits in these languages.
        DownloadError: a file cannot be fetched (no network, not on the server): nothing was written.
        OutputError: a file cannot be written; what this call wrote before it is removed.
    """
    out = Path(out)
    names = multi30k_files(splits, langs)
    if not names:
        raise DataError(
            f"Multi30k publishes no {' '.join(splits)} in {' '.join(langs)} ({', '.join(unpublished_files(splits, langs))} "
            "do not exist); choose other --splits or --langs"
        )
    fetched: dict[Path, bytes] = {}
    paths = []
    for name in names:
        path = out / name
        if path.exists() and not force:
            logger.info("keep %s (exists)", path)
        else:
            fetched[path], n_lines = fetch_gzip_text(f"{base_url.rstrip('/')}/{name}", timeout=timeout)
            logger.info("fetched %s (%d lines)", name, n_lines)
        paths.append(path)
        if progress is not None:
            progress(1)
    _write_all(out, fetched)
    return paths


def _write_all(out: Path, files: dict[Path, bytes]) -> None:
    """Create ``out`` and write ``files`` into it; on a failure remove the new files and the new folders."""
    created = [folder for folder in (out, *out.parents) if not folder.exists()]
    new = [path for path in files if not path.exists()]
    try:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise write_error(out, err, what="download folder") from None
        for path, data in files.items():
            atomic_write_bytes(path, data, what="downloaded file")
            logger.info("wrote %s", path)
    except BaseException:
        for path in new:
            path.unlink(missing_ok=True)
        for folder in created:  # deepest first; only if nothing else was put there meanwhile
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
