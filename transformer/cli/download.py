"""Download a corpus into a local folder: Multi30k task 1 into data/multi30k, where training looks by default.

Files are stored as they come, gzip-compressed (OUTPUT/{split}.{lang}.gz); existing files are kept (--force
fetches them again). Each language gets every split asked for that Multi30k publishes in it (Czech has no
2017 test sets: they are left out, with a note). The work is done by
``transformer.data.download.download_multi30k``. A file that cannot be fetched (no network, a mirror without it) ends with one line on stderr that names --base-url, and
exit status 2; nothing is written then. ``--out`` is the old name of ``--output`` (still accepted, not shown).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from transformer.data.corpus import DEFAULT_MULTI30K_DIR
from transformer.data.download import (
    DEFAULT_SPLITS,
    MULTI30K_LANGS,
    MULTI30K_SPLITS,
    MULTI30K_URL,
    download_multi30k,
    multi30k_files,
    unpublished_files,
)

EXAMPLES = """\
examples:
  transformer download multi30k                              # en and de into data/multi30k
  transformer train --config configs/multi30k_en_de.yaml     # which then finds data/multi30k
  transformer download multi30k --langs en de fr cs                # four languages: for multilingual runs
  transformer download multi30k --output /data/multi30k --langs en de fr cs --splits train val test_2016_flickr
  transformer download multi30k --base-url http://mirror.example/multi30k   # a mirror of {split}.{lang}.gz
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "download", help="fetch a corpus (Multi30k) into data/multi30k",
        description=__doc__.split("\n\n")[0], epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("corpus", choices=["multi30k"], help="the corpus to fetch")
    parser.add_argument(
        "--output", type=Path, default=DEFAULT_MULTI30K_DIR, metavar="DIR",
        help=f"folder to fill, created (default: {DEFAULT_MULTI30K_DIR}, relative to the current folder)",
    )
    parser.add_argument("--out", type=Path, dest="output", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    parser.add_argument("--langs", nargs="+", default=["en", "de"], choices=MULTI30K_LANGS, help="default: en de")
    parser.add_argument(
        "--splits", nargs="+", default=list(DEFAULT_SPLITS), choices=MULTI30K_SPLITS,
        help=f"default: {' '.join(DEFAULT_SPLITS)}",
    )
    parser.add_argument("--base-url", default=MULTI30K_URL, help="where {split}.{lang}.gz live (default: GitHub)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per request (default 30)")
    parser.add_argument("--force", action="store_true", help="download files that are already there")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    files = multi30k_files(args.splits, args.langs)
    with logging_redirect_tqdm(), tqdm(
        total=len(files), unit="file", desc="multi30k", file=sys.stderr, disable=not sys.stderr.isatty()
    ) as bar:
        paths = download_multi30k(
            args.output, langs=args.langs, splits=args.splits, base_url=args.base_url, timeout=args.timeout,
            force=args.force, progress=bar.update,
        )
    out = args.output
    missing = unpublished_files(args.splits, args.langs)
    if missing:
        print(f"not published by Multi30k, so not fetched: {', '.join(missing)}")
    if out.resolve() == DEFAULT_MULTI30K_DIR.resolve():
        print(f"{len(paths)} files in {out}, where `transformer train` looks by default")
    else:
        print(f"{len(paths)} files in {out}: train with --data-dir {out} (or MULTI30K_DIR={out})")
    return 0
