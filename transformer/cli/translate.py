"""Translate sentences with a trained checkpoint (or several, as an ensemble), or its CTranslate2 export.

Input: the sentences given as arguments; else stdin, one sentence per line (with a progress bar on stderr
when that is a terminal); else, with a terminal on stdin, a prompt. Output: one line per input line (an
empty line gives an empty line). With ``--n-best N > 1``, N lines per input,
``index<TAB>score<TAB>translation`` (index counts inputs from 0; score is length-normalised).
``--checkpoint`` may be repeated: the checkpoints decode as an ensemble (their probabilities averaged) and
must share one vocabulary. Decoding settings default to those saved in the (first) checkpoint. Mistakes
(a bad checkpoint, a bad option) end with one line on stderr and exit status 2. ``--alignment`` appends
``<TAB>`` and the source-target word alignment (``i-j`` pairs, 0-based) to each output line. A multilingual
model translates into ``--target-lang`` (``--source-lang`` picks among directions into the same language;
with ``--zero-shot``, a direction it never trained); a bilingual model needs neither, and refuses a language it
does not translate.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections.abc import Callable, Iterable

from tqdm import tqdm

from transformer.cli.options import (
    add_decode_arguments,
    add_device_argument,
    add_direction_arguments,
    add_engine_arguments,
    direction_translator,
)
from transformer.config import ConfigError, DecodeConfig
from transformer.device import resolve_device
from transformer.errors import DataError
from transformer.inference import TorchTranslator, Translator, best_texts, load_translator
from transformer.inference.alignment import ALIGNMENT_LAYER, align_hypotheses, format_alignment, layer_index
from transformer.model.transformer import Transformer

LINES_PER_CHUNK = 10_000  # stdin is translated in chunks this big (sorted by length within a chunk)


EXAMPLES = """\
examples:
  transformer translate --checkpoint runs/sample/checkpoints/best.pt "A man rides a bike." "Two dogs play."
  transformer translate --checkpoint best.pt < input.en > output.de          # one sentence per line
  transformer translate --checkpoint best.pt --beam-size 5 --n-best 3 "A dog runs."
  transformer translate --checkpoint a/avg10.pt --checkpoint b/avg10.pt < input.en   # an ensemble
  transformer translate --engine ctranslate2 --model ct2 < input.en          # a `transformer export` folder
  transformer translate --checkpoint best.pt --alignment "Two dogs play."     # translation<TAB>0-0 1-1 ...
  transformer translate --checkpoint multi.pt --target-lang en "Ein Hund rennt."   # a multilingual model
  transformer translate --checkpoint multi.pt --source-lang de --target-lang fr --zero-shot "Ein Hund rennt."
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "translate", help="translate sentences (arguments, stdin, or a prompt)",
        description=__doc__.split("\n\n")[0], epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("text", nargs="*", help="sentences to translate; none: read stdin (one per line) or prompt")
    add_engine_arguments(
        parser, checkpoint_help="a .pt file written by training; repeat it to decode several models as an ensemble"
    )
    add_direction_arguments(parser)
    add_decode_arguments(parser, n_best=True)
    parser.add_argument("--max-src-tokens", type=int, help="truncate longer inputs, with a warning")
    add_device_argument(parser)
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


def translate_lines(
    translator: Translator,
    lines: list[str],
    cfg: DecodeConfig,
    *,
    max_src_tokens: int | None = None,
    alignment_layer: int | None = None,
    first_index: int = 0,
    progress: Callable[[int], None] | None = None,
) -> list[str]:
    """Output lines for ``lines``: translations, or ``index<TAB>score<TAB>text`` n-best lines; with an
    ``alignment_layer``, each followed by ``<TAB>`` and its word alignment."""
    nbest = translator.translate(lines, cfg, max_src_tokens=max_src_tokens, progress=progress)
    links = None
    if alignment_layer is not None:
        assert isinstance(translator, TorchTranslator)  # checked by check_alignment_options
        links = align_hypotheses(
            translator.model, translator.tokenizer, lines, nbest, layer=alignment_layer, device=translator.device,
            max_src_tokens=max_src_tokens, batch_size=cfg.batch_size,
        )
    tokenizer = translator.tokenizer
    if cfg.n_best == 1:
        texts = best_texts(tokenizer, nbest)
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


def check_alignment_options(translator: Translator, layer: int) -> None:
    """``--alignment`` reads one model's cross-attention: our engine, a single checkpoint, a layer it has."""
    if not isinstance(translator, TorchTranslator):
        raise ConfigError("--alignment reads the cross-attention of our decoder: use it with --engine torch")
    if not isinstance(translator.model, Transformer):
        raise ConfigError("--alignment needs a single --checkpoint: an ensemble has no one cross-attention to read")
    try:
        layer_index(layer, translator.model.config.n_decoder_layers)
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
    translator, config = load_translator(
        args.engine, checkpoints=args.checkpoint or (), model_dir=args.model, device=resolve_device(args.device),
        inter_threads=args.inter_threads, intra_threads=args.intra_threads,
    )
    translator = direction_translator(
        translator, config.data, args.source_lang, args.target_lang, zero_shot=args.zero_shot
    )
    cfg = config.decode.updated(
        beam_size=args.beam_size, length_penalty=args.length_penalty, batch_size=args.batch_size,
        n_best=1 if args.n_best is None else args.n_best,
    )
    if args.alignment:
        check_alignment_options(translator, args.alignment_layer)

    def lines_of(texts: list[str], first_index: int = 0, progress: Callable[[int], None] | None = None) -> list[str]:
        return translate_lines(
            translator, texts, cfg, max_src_tokens=args.max_src_tokens, first_index=first_index, progress=progress,
            alignment_layer=args.alignment_layer if args.alignment else None,
        )

    if args.text:
        for line in lines_of(args.text):
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
                for out in lines_of([line.rstrip("\r\n")], index):
                    print(out, flush=True)
                index += 1
        except KeyboardInterrupt:
            print(file=sys.stderr)
    else:
        bar = tqdm(unit="sent", desc="translate", file=sys.stderr, disable=not sys.stderr.isatty())
        index = 0
        lines = StdinLines(sys.stdin.buffer)
        for chunk in chunks(lines, LINES_PER_CHUNK):
            for out in lines_of(chunk, index, bar.update):
                print(out)
            sys.stdout.flush()
            index += len(chunk)
        bar.close()
        if lines.error is not None:
            raise lines.error
    return 0
