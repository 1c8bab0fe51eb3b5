"""The ``transformer`` command: one parser with a subcommand per task.

Each subcommand lives in its own module with ``add_parser(subparsers)``, which registers its options and
sets ``run(args) -> int``. This layer parses, builds and calls; the work is done by the library.

Errors: a ``UserError`` (a mistake the user can fix) is printed as one ``error: ...`` line on stderr with
exit status 2; Ctrl-C exits with 130. Anything else is a bug in this package and keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from importlib.metadata import PackageNotFoundError, version
from types import ModuleType

from transformer.errors import UserError


def subcommands() -> tuple[ModuleType, ...]:
    """The command modules, in the order of ``--help``.

    Imported when the parser is built, not when this package is: they import PyTorch, which takes seconds, and a
    Ctrl-C in those seconds is then caught by ``main`` like any other (one line, exit 130, no traceback).
    """
    from transformer.cli import (
        average,
        benchmark,
        distill,
        download,
        evaluate,
        export,
        plot,
        prepare,
        serve,
        train,
        translate,
    )

    return (train, translate, evaluate, average, distill, download, prepare, export, benchmark, plot, serve)

EPILOG = """\
examples:
  transformer train --config configs/sample.yaml             # the bundled sample corpus: a minute on a CPU
  transformer translate --checkpoint runs/sample/checkpoints/best.pt "A dog is running on the beach."
  transformer evaluate --checkpoint runs/sample/checkpoints/best.pt --split test
  transformer download multi30k                              # into data/multi30k, where train looks
  transformer train --config configs/multi30k_en_de.yaml
  transformer COMMAND --help                                 # the options of one command
"""


def package_version() -> str:
    try:
        return version("transformer")
    except PackageNotFoundError:  # run from a source tree that was not installed
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="transformer",
        description="Train, evaluate and use encoder-decoder Transformers for machine translation.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"transformer {package_version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in subcommands():
        module.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        # NumPy before PyTorch: torch's C extension imports NumPy itself and swallows whatever that import raises,
        # a Ctrl-C included, which left NumPy half-imported (AttributeErrors much later) and the Ctrl-C unseen.
        import numpy  # noqa: F401

        parser = build_parser()
    except KeyboardInterrupt:  # while PyTorch loads
        print("interrupted", file=sys.stderr)
        return 130
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not getattr(args, "accepts_overrides", False):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = list(args.overrides) + extra  # `--train.lr=5e-4` as well as `train.lr=5e-4`
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        return args.run(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
