"""Translate sentences with a trained checkpoint (or several, as an ensemble), or its CTranslate2 export.

Input: the sentences given as arguments; else stdin, one sentence per line (with a progress bar on stderr
when that is a terminal); else, with a terminal on stdin, a prompt. Output: one line per input line (an
empty line gives an empty line). With ``--n-best N > 1``, N lines per input,
``index<TAB>score<TAB>translation`` (index counts inputs from 0; score is length-normalised).
``--checkpoint`` may be repeated: the checkpoints decode as an ensemble (their probabilities averaged) and
must share one vocabulary. Decoding settings default to those saved in the (first) checkpoint. Mistakes
(a bad checkpoint, a bad option) end with one line on stderr and exit status 2. ``--alignment`` appends
``<TAB>`` and the source-target word alignment (``i-j`` pairs, 0-based) to each output line.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from tqdm import tqdm

from transformer.cli.export import add_engine_arguments
from transformer.config import ConfigError, DecodeConfig
from transformer.data.tokenizer import Tokenizer
from transformer.decoding.alignment import ALIGNMENT_LAYER, align_hypotheses, format_alignment, layer_index
from transformer.decoding.ensemble import Ensemble
from transformer.errors import DataError
from transformer.model.transformer import Transformer
from transformer.serving import decode_texts, load_model
from transformer.training.distributed import resolve_device

LINES_PER_CHUNK = 10_000  # stdin is translated in chunks this big (sorted by length within a chunk)


EXAMPLES = """\
examples:
  transformer translate --checkpoint runs/sample/checkpoints/best.pt "A man rides a bike." "Two dogs play."
  transformer translate --checkpoint best.pt < input.en > output.de          # one sentence per line
  transformer translate --checkpoint best.pt --beam-size 5 --n-best 3 "A dog runs."
  transformer translate --checkpoint a/avg10.pt --checkpoint b/avg10.pt < input.en   # an ensemble
  transformer translate --engine ctranslate2 --model ct2 < input.en          # a `transformer export` folder
  transformer translate --checkpoint best.pt --alignment "Two dogs play."     # translation<TAB>0-0 1-1 ...
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "translate", help="translate sentences (arguments, stdin, or a prompt)",
        description=__doc__.split("\n\n")[0], epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("text", nargs="*", help="sentences to translate; none: read stdin (one per line) or prompt")
    parser.add_argument(
        "--checkpoint", action="append", type=Path, metavar="CKPT",
        help="a .pt file written by training; repeat it to decode several models as an ensemble",
    )
    parser.add_argument("--beam-size", type=int, help="1 = greedy (default: the checkpoint's decode.beam_size)")
    parser.add_argument("--n-best", type=int, help="print the N best translations with their scores")
    parser.add_argument("--length-penalty", type=float, help="GNMT alpha (0 = none)")
    parser.add_argument("--batch-size", type=int, help="sentences per decoding batch")
    parser.add_argument("--max-src-tokens", type=int, help="truncate longer inputs, with a warning")
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1, ...")
    add_engine_arguments(parser)
    parser.add_argument(
        "--alignment", action="store_true",
        help="append <TAB> and the word alignment, source-target 'i-j' pairs from the cross-attention",
    )
    parser.add_argument(
        "--alignment-layer", type=int, default=ALIGNMENT_LAYER, metavar="N",
        help=f"decoder layer whose head-averaged cross-attention aligns (1 = first, -1 = last; default {ALIGNMENT_LAYER})",
    )
    parser.set_defaults(run=run)
    return parser


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
    device: torch.device, first_index: int = 0, *, progress: Callable[[int], None] | None = None,
) -> list[str]:
    """Output lines for ``lines``: translations, or ``index<TAB>score<TAB>text`` n-best lines (with
    ``--alignment``, each followed by ``<TAB>`` and its alignment)."""
    nbest = decode_texts(
        model, tokenizer, lines, cfg, device=device, max_src_tokens=args.max_src_tokens, progress=progress
    )
    links = None
    if args.alignment:
        links = align_hypotheses(
            model, tokenizer, lines, nbest, layer=args.alignment_layer, device=device,
            max_src_tokens=args.max_src_tokens, batch_size=cfg.batch_size,
        )
    if cfg.n_best == 1:
        texts = tokenizer.decode_tgt([hyps[0].tokens if hyps else [] for hyps in nbest])
        if links is None:
            return texts
        return [f"{text}\t{format_alignment(found[0] if found else [])}" for text, found in zip(texts, links)]
    out = []
    for i, hyps in enumerate(nbest, start=first_index):
        if not hyps:
            out.append(f"{i}\t\t" + ("\t" if links is not None else ""))
            continue
        for k, (hyp, text) in enumerate(zip(hyps, tokenizer.decode_tgt([h.tokens for h in hyps]))):
            line = f"{i}\t{hyp.score:.4f}\t{text}"
            out.append(line if links is None else f"{line}\t{format_alignment(links[i - first_index][k])}")
    return out


def check_alignment_options(model: Transformer | Ensemble, layer: int) -> None:
    """``--alignment`` reads one model's cross-attention: a single checkpoint, and a layer it has."""
    if isinstance(model, Ensemble):
        raise ConfigError("--alignment needs a single --checkpoint: an ensemble has no one cross-attention to read")
    try:
        layer_index(layer, model.config.n_decoder_layers)
    except ValueError as err:
        raise ConfigError(f"--alignment-layer: {err}") from None


class StdinLines:
    """The lines of a binary stream, each decoded as UTF-8 on its own, without line ends.

    Iteration stops before the first line that is not UTF-8 and keeps its error in ``error``, so that the
    lines before it can still be translated and printed.
    """

    def __init__(self, stream: Iterable[bytes]) -> None:
        self.stream = stream
        self.error: DataError | None = None

    def __iter__(self) -> Iterable[str]:
        for number, raw in enumerate(self.stream, start=1):
            try:
                yield raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as err:
                self.error = DataError(
                    f"stdin line {number}: not valid UTF-8 (byte {raw[err.start]:#x} at column {err.start + 1}); "
                    f"the {number - 1} lines before it were translated. Convert the input to UTF-8, "
                    "e.g. with iconv -f latin1 -t utf-8"
                )
                return


def chunks(lines: Iterable[str], size: int) -> Iterable[list[str]]:
    iterator = iter(lines)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def run(args: argparse.Namespace) -> int:
    if args.max_src_tokens is not None and args.max_src_tokens < 2:
        raise ConfigError("--max-src-tokens must be at least 2 (one token and EOS)")
    if args.alignment and args.engine != "torch":
        raise ConfigError("--alignment reads the cross-attention of our decoder: use it with --engine torch")
    device = resolve_device(args.device)
    model, tokenizer, config = load_model(
        args.engine, checkpoints=args.checkpoint or (), model_dir=args.model, device=device,
        inter_threads=args.inter_threads, intra_threads=args.intra_threads,
    )
    cfg = decode_settings(config.decode, args)
    if args.alignment:
        check_alignment_options(model, args.alignment_layer)

    if args.text:
        for line in translate_lines(model, tokenizer, args.text, cfg, args, device):
            print(line)
    elif sys.stdin.isatty():
        print("Type a sentence and press Enter (Ctrl-D to quit).", file=sys.stderr)
        index = 0
        try:
            while True:
                print("> ", end="", file=sys.stderr, flush=True)
                raw = sys.stdin.buffer.readline()
                if not raw:
                    break
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError:
                    print("not valid UTF-8: check the terminal's encoding", file=sys.stderr)
                    continue
                for out in translate_lines(model, tokenizer, [line.rstrip("\r\n")], cfg, args, device, index):
                    print(out, flush=True)
                index += 1
        except KeyboardInterrupt:
            print(file=sys.stderr)
    else:
        bar = tqdm(unit="sent", desc="translate", file=sys.stderr, disable=not sys.stderr.isatty())
        index = 0
        lines = StdinLines(sys.stdin.buffer)
        for chunk in chunks(lines, LINES_PER_CHUNK):
            for out in translate_lines(model, tokenizer, chunk, cfg, args, device, index, progress=bar.update):
                print(out)
            sys.stdout.flush()
            index += len(chunk)
        bar.close()
        if lines.error is not None:
            raise lines.error
    return 0

