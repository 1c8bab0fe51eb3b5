#!/usr/bin/env python
"""Translate text with a trained checkpoint.

    python scripts/translate.py --checkpoint runs/x/checkpoints/best.pt "A man rides a bike." "Two dogs play."
    python scripts/translate.py --checkpoint best.pt < input.en > output.de     # one sentence per line
    python scripts/translate.py --checkpoint best.pt                            # interactive prompt (a TTY)
    python scripts/translate.py --checkpoint best.pt --beam-size 5 --n-best 3 "A dog runs."
    python scripts/translate.py --checkpoint a/avg10.pt b/avg10.pt < input.en   # an ensemble of two models

Output: one line per input line (an empty line gives an empty line). With ``--n-best N > 1``, N lines per
input, ``index<TAB>score<TAB>translation`` (index counts inputs from 0; score is length-normalised).
Several checkpoints decode as an ensemble (their probabilities averaged); they must share one vocabulary.
The checkpoints after the first must end in ``.pt``: the first value that does not starts the sentences.
Decoding settings default to those saved in the (first) checkpoint. Mistakes (a bad checkpoint, a bad
option) end with one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import logging
import sys
from collections.abc import Iterable
from pathlib import Path

import torch

from transformer.checkpoint import CheckpointError, load_ensemble_for_inference
from transformer.config import ConfigError, DecodeConfig
from transformer.decoding import decode_texts
from transformer.distributed import resolve_device
from transformer.ensemble import Ensemble
from transformer.model import Transformer
from transformer.tokenizer import Tokenizer

LINES_PER_CHUNK = 10_000  # stdin is translated in chunks this big (sorted by length within a chunk)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="translate", description="Translate sentences with a trained checkpoint.")
    parser.add_argument("text", nargs="*", help="sentences to translate; none: read stdin (one per line) or prompt")
    parser.add_argument(
        "--checkpoint", required=True, nargs="+", metavar="CHECKPOINT",
        help="a .pt file written by training; several (each after the first ending in .pt) decode as an ensemble",
    )
    parser.add_argument("--beam-size", type=int, help="1 = greedy (default: the checkpoint's decode.beam_size)")
    parser.add_argument("--n-best", type=int, help="print the N best translations with their scores")
    parser.add_argument("--length-penalty", type=float, help="GNMT alpha (0 = none)")
    parser.add_argument("--batch-size", type=int, help="sentences per decoding batch")
    parser.add_argument("--max-src-tokens", type=int, help="truncate longer inputs, with a warning")
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1, ...")
    args = parser.parse_args(argv)
    # "--checkpoint best.pt 'A dog.'" gives argparse's nargs="+" both values: the checkpoints are the first
    # value and those after it that end in .pt, the sentences start at the first value that does not.
    paths = args.checkpoint
    n = 1
    while n < len(paths) and paths[n].lower().endswith(".pt"):
        n += 1
    args.checkpoint, args.text = [Path(p) for p in paths[:n]], args.text + paths[n:]
    return args


def decode_settings(saved: DecodeConfig, args: argparse.Namespace) -> DecodeConfig:
    """The checkpoint's decoding settings with the options given on the command line on top."""
    given = {
        "beam_size": args.beam_size,
        "n_best": args.n_best,
        "length_penalty": args.length_penalty,
        "batch_size": args.batch_size,
    }
    changes = {k: v for k, v in given.items() if v is not None}
    if args.n_best is None:
        changes["n_best"] = 1
    return dataclasses.replace(saved, **changes)  # validated by DecodeConfig.__post_init__


def translate_lines(
    model: Transformer | Ensemble, tokenizer: Tokenizer, lines: list[str], cfg: DecodeConfig, args: argparse.Namespace,
    device: torch.device, first_index: int = 0,
) -> list[str]:
    """Output lines for ``lines``: translations, or ``index<TAB>score<TAB>text`` n-best lines."""
    nbest = decode_texts(model, tokenizer, lines, cfg, device=device, max_src_tokens=args.max_src_tokens)
    if cfg.n_best == 1:
        return tokenizer.decode_tgt([hyps[0].tokens if hyps else [] for hyps in nbest])
    out = []
    for i, hyps in enumerate(nbest, start=first_index):
        if not hyps:
            out.append(f"{i}\t\t")
            continue
        for hyp, text in zip(hyps, tokenizer.decode_tgt([h.tokens for h in hyps])):
            out.append(f"{i}\t{hyp.score:.4f}\t{text}")
    return out


def chunks(lines: Iterable[str], size: int) -> Iterable[list[str]]:
    iterator = iter(lines)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s: %(message)s")
    try:
        if args.max_src_tokens is not None and args.max_src_tokens < 2:
            raise ValueError("--max-src-tokens must be at least 2 (one token and EOS)")
        device = resolve_device(args.device)
        model, tokenizer, config = load_ensemble_for_inference(args.checkpoint, device)
        cfg = decode_settings(config.decode, args)
    except (CheckpointError, ConfigError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    if args.text:
        for line in translate_lines(model, tokenizer, args.text, cfg, args, device):
            print(line)
    elif sys.stdin.isatty():
        print("Type a sentence and press Enter (Ctrl-D to quit).", file=sys.stderr)
        index = 0
        try:
            while True:
                print("> ", end="", file=sys.stderr, flush=True)
                line = sys.stdin.readline()
                if not line:
                    break
                for out in translate_lines(model, tokenizer, [line.rstrip("\n")], cfg, args, device, index):
                    print(out, flush=True)
                index += 1
        except KeyboardInterrupt:
            print(file=sys.stderr)
    else:
        index = 0
        for chunk in chunks((line.rstrip("\r\n") for line in sys.stdin), LINES_PER_CHUNK):
            for out in translate_lines(model, tokenizer, chunk, cfg, args, device, index):
                print(out)
            sys.stdout.flush()
            index += len(chunk)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
