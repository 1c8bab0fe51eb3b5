"""The ``transformer`` command: one parser with a subcommand per task.

Each subcommand lives in its own module with ``add_parser(subparsers)``, which registers its options and
sets ``run(args) -> int``. This layer parses, builds and calls; the work is done by the library.

Errors: a ``UserError`` (a mistake the user can fix) is printed as one ``error: ...`` line on stderr with
exit status 2; Ctrl-C exits with 130. Anything else is a bug in this package and keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from importlib.metadata import PackageNotFoundError, version
from types import ModuleType

from transformer.errors import UserError


def subcommands() -> tuple[ModuleType, ...]:
    """The command modules, in the order of ``--help``.

    Imported when the parser is built, not when this package is: they import PyTorch, which takes seconds, and a
    Ctrl-C in those seconds is then answered by ``main`` like any other (one line, exit 130, no traceback).
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


def _build_parser_deferring_ctrl_c() -> argparse.ArgumentParser | None:
    """``build_parser`` with a Ctrl-C held until PyTorch has loaded; None when one came meanwhile.

    A KeyboardInterrupt raised inside the imports of NumPy and PyTorch is not safe to catch: torch's C extension
    swallows one from its NumPy import (NumPy is then left half-imported), and one that leaves an ``exec`` of
    source text (dataclasses make their methods so) marks the Ctrl-C "unhandled", after which ``python -m
    transformer`` ends by SIGINT (status -2, not 130) whatever ``main`` returned. So the signal is only recorded
    here and answered once the imports are done (they take a second or two).
    """
    received: list[int] = []
    try:
        previous = signal.getsignal(signal.SIGINT)
        if previous is signal.SIG_IGN or previous is None:  # ignored (a background job) or not Python's to set
            return build_parser()
        signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    except ValueError:  # not in the main thread, where signals cannot be handled: leave them alone
        return build_parser()
    try:
        parser = build_parser()
    finally:
        signal.signal(signal.SIGINT, previous)
    return None if received else parser


def main(argv: list[str] | None = None) -> int:
    parser = _build_parser_deferring_ctrl_c()
    if parser is None:
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
