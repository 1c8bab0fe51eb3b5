"""Download the Multi30k task 1 raw files into a local folder (the layout ``data.source=multi30k`` reads).

Files come from the multi30k/dataset GitHub repository (``data/task1/raw/{split}.{lang}.gz``) and are
stored as they are, gzip-compressed: ``OUT/{split}.{lang}.gz``. Existing files are kept (use --force
to fetch them again). Then train with ``data.data_dir=OUT`` or ``MULTI30K_DIR=OUT``.

    transformer download multi30k --out data/multi30k [--langs en de] [--splits train val test_2016_flickr]

Exit status: 0 when every requested file is present, 1 otherwise (no network, a file missing upstream).
"""

from __future__ import annotations

import argparse
import gzip
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

BASE_URL = "https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw"
SPLITS = ("train", "val", "test_2016_flickr", "test_2017_flickr", "test_2017_mscoco", "test_2018_flickr")
LANGS = ("en", "de", "fr", "cs")
# Combinations the repository does not publish.
UNPUBLISHED = {("test_2017_flickr", "cs"), ("test_2017_mscoco", "cs")}


def download(url: str, path: Path, timeout: float) -> int:
    """Fetch ``url`` to ``path`` (through a temporary file), check it is gzip text; returns its line count.

    Raises:
        urllib.error.URLError: the server cannot be reached or answers with an error.
        OSError: the download is not a valid gzip file.
    """
    tmp = path.with_name(path.name + ".part")
    with urllib.request.urlopen(url, timeout=timeout) as response:
        tmp.write_bytes(response.read())
    try:
        with gzip.open(tmp, "rt", encoding="utf-8") as f:
            n_lines = sum(1 for _ in f)
    except (OSError, EOFError, UnicodeDecodeError) as err:
        tmp.unlink()
        raise OSError(f"{url} is not gzip-compressed UTF-8 text: {err}") from None
    os.replace(tmp, path)
    return n_lines


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "download", help="fetch a corpus (Multi30k) into a local folder",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("corpus", choices=["multi30k"], help="the corpus to fetch")
    parser.add_argument("--out", type=Path, default=Path("data/multi30k"), help="folder to write (created)")
    parser.add_argument("--langs", nargs="+", default=["en", "de"], choices=LANGS)
    parser.add_argument(
        "--splits", nargs="+", default=["train", "val", "test_2016_flickr", "test_2017_flickr"], choices=SPLITS
    )
    parser.add_argument("--base-url", default=BASE_URL, help="where {split}.{lang}.gz live (a mirror)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    parser.add_argument("--force", action="store_true", help="download files that are already there")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    args.out.mkdir(parents=True, exist_ok=True)
    failed = []
    for split in args.splits:
        for lang in args.langs:
            name = f"{split}.{lang}.gz"
            if (split, lang) in UNPUBLISHED:
                print(f"skip {name}: not published by Multi30k")
                continue
            path = args.out / name
            if path.exists() and not args.force:
                print(f"keep {path} (exists)")
                continue
            url = f"{args.base_url.rstrip('/')}/{name}"
            try:
                n_lines = download(url, path, args.timeout)
            except urllib.error.HTTPError as err:
                print(f"error: {url}: HTTP {err.code} {err.reason}", file=sys.stderr)
                failed.append(name)
                continue
            except (urllib.error.URLError, TimeoutError) as err:
                reason = getattr(err, "reason", err)
                print(
                    f"error: cannot reach {url} ({reason}). No network? Copy an existing Multi30k folder "
                    "instead and point data.data_dir (or MULTI30K_DIR) at it.",
                    file=sys.stderr,
                )
                return 1
            except OSError as err:
                print(f"error: {err}", file=sys.stderr)
                failed.append(name)
                continue
            print(f"wrote {path} ({n_lines} lines)")
    if failed:
        print(f"error: {len(failed)} file(s) not downloaded: {', '.join(failed)}", file=sys.stderr)
        return 1
    print(f"done: train with data.data_dir={args.out} (or MULTI30K_DIR={args.out})")
    return 0

