"""Command-line options that several commands share, written once: the engine, decoding and device options.

Not a command: the command modules import this, never each other.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from transformer.inference import ENGINES


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1, ...")


def add_engine_arguments(parser: argparse.ArgumentParser, *, checkpoint_help: str) -> None:
    """``--engine``, ``--checkpoint`` (repeatable: an ensemble), ``--model`` and CTranslate2's thread counts."""
    parser.add_argument(
        "--engine", choices=ENGINES, default="torch",
        help="torch: our decoder on --checkpoint; ctranslate2: a folder written by `transformer export` (--model)",
    )
    parser.add_argument("--checkpoint", action="append", type=Path, metavar="CKPT", help=checkpoint_help)
    parser.add_argument("--model", type=Path, metavar="DIR", help="a CTranslate2 model folder (--engine ctranslate2)")
    parser.add_argument(
        "--inter-threads", type=int, metavar="N", help="CTranslate2 translators working in parallel (default 1)"
    )
    parser.add_argument(
        "--intra-threads", type=int, metavar="N", help="threads of each CTranslate2 translator (default: its own)"
    )


def add_decode_arguments(parser: argparse.ArgumentParser, *, n_best: bool = False) -> None:
    """The search settings a command may change; each defaults to the checkpoint's ``decode`` section."""
    parser.add_argument("--beam-size", type=int, help="1 = greedy (default: the checkpoint's decode.beam_size)")
    if n_best:
        parser.add_argument("--n-best", type=int, help="print the N best translations with their scores")
    parser.add_argument("--length-penalty", type=float, help="GNMT alpha, 0 = none (default: the checkpoint's)")
    parser.add_argument("--batch-size", type=int, help="sentences per decoding batch (speed only)")
