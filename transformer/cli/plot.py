"""Draw a model's attention, the positional encoding, or the training curves of runs as PNG pictures.

``plot attention`` translates one sentence (or forces ``--target``) and draws the attention of every layer
and head and their mean (a multilingual model's in the direction ``--target-lang`` chooses, its source led by
the target-language tag the model reads); ``plot positions`` draws the sinusoidal encoding (or a checkpoint's
learned one); ``plot run`` draws the loss, BLEU and learning-rate curves of one or more run folders (a
multilingual run's validation curves: each direction's and their mean). Needs matplotlib
(``pip install -e ".[plot]"``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from transformer.checkpoint import load_for_inference
from transformer.cli.options import add_direction_arguments, direction_translator
from transformer.config import ConfigError
from transformer.device import resolve_device
from transformer.errors import DataError
from transformer.inference import TorchTranslator
from transformer.inference.alignment import layer_index, pair_attention, translate_with_attention
from transformer.plotting import DPI, attention_figure, positions_figure, read_metrics, run_figure, save_png

EXAMPLES = """\
examples:
  transformer plot attention --checkpoint runs/sample/checkpoints/best.pt "A dog is running on the beach."
  transformer plot attention --checkpoint best.pt --kind self-decoder --layer 2 "A dog runs." -o dec.png
  transformer plot attention --checkpoint best.pt --target "Ein Hund läuft." "A dog runs."   # a given translation
  transformer plot attention --checkpoint best.pt --target-lang en "Ein Hund läuft."   # a multilingual model
  transformer plot positions --d-model 128 --length 60 -o positions.png
  transformer plot run runs/multi30k_en_de runs/multi30k_de_en -o curves.png       # two runs overlaid
  transformer plot run runs/sample_multilingual -o curves.png         # a validation curve per direction, and the mean
"""

KINDS = {  # --kind: (SentenceAttention field, row labels, column labels, row axis, column axis, what)
    "cross": ("cross", "tgt_pieces", "src_pieces", "target (predicted piece)", "source", "cross-attention"),
    "self-encoder": ("encoder", "src_pieces", "src_pieces", "source (query)", "source (key)", "encoder self-attention"),
    "self-decoder": (
        "decoder", "decoder_input", "decoder_input", "target input (query)", "target input (key)",
        "decoder self-attention",
    ),
}


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "plot", help="draw attention maps, positional encodings or training curves (PNG)",
        description=__doc__.split("\n\n")[0], epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    kinds = parser.add_subparsers(dest="what", metavar="WHAT", required=True)

    attention = kinds.add_parser(
        "attention", help="attention heatmaps of one sentence, per layer and head",
        description="Translate a sentence and draw its attention, per layer and head and their mean.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    attention.add_argument("text", help="the source sentence")
    attention.add_argument("--checkpoint", required=True, type=Path, metavar="CKPT", help="a .pt file written by training")
    attention.add_argument(
        "--kind", choices=sorted(KINDS), default="cross",
        help="cross (target pieces x source pieces, the default), self-encoder, or self-decoder (causal)",
    )
    attention.add_argument("--layer", type=int, help="only this layer (1 = first, -1 = last); default: every layer")
    attention.add_argument("--target", help="draw the attention of this translation instead of the model's own")
    attention.add_argument("--beam-size", type=int, help="1 = greedy (default: the checkpoint's decode.beam_size)")
    add_direction_arguments(attention)
    attention.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1, auto, ...")
    _output_options(attention, "attention.png")
    attention.set_defaults(run=run_attention)

    positions = kinds.add_parser(
        "positions", help="the sinusoidal positional encoding: heatmap, curves, dot products",
        description="Draw the positional encoding: a heatmap, a few dimensions, and the similarity of positions.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    positions.add_argument("--d-model", type=int, default=512, help="model width (default 512, the paper's)")
    positions.add_argument("--length", type=int, default=100, help="number of positions (default 100)")
    positions.add_argument(
        "--checkpoint", type=Path, metavar="CKPT",
        help="take d_model from this checkpoint; a model with learned positions shows its learned table",
    )
    _output_options(positions, "positions.png")
    positions.set_defaults(run=run_positions)

    runs = kinds.add_parser(
        "run", help="training curves of one or more runs, overlaid",
        description="Draw loss, validation BLEU and learning rate of runs against updates and wall-clock time; "
        "a run of several translation directions gets a validation curve per direction beside their mean.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    runs.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR", help="run folders (with metrics.jsonl)")
    _output_options(runs, "run.png")
    runs.set_defaults(run=run_runs)
    return parser


def _output_options(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument("-o", "--output", type=Path, default=Path(default), help=f"PNG file (default {default})")
    parser.add_argument("--dpi", type=int, default=DPI, help=f"pixels per inch (default {DPI})")


def _check_dpi(dpi: int) -> None:
    if not 10 <= dpi <= 1000:
        raise ConfigError(f"--dpi {dpi} is out of range; give 10..1000 (default {DPI})")


def _wrote(path: Path, size: tuple[int, int]) -> None:
    print(f"wrote {path} ({size[0]} x {size[1]} pixels)")


def run_attention(args: argparse.Namespace) -> int:
    _check_dpi(args.dpi)
    if not args.text.strip():
        raise ConfigError("the sentence to plot is empty; give a source sentence")
    device = resolve_device(args.device)
    model, tokenizer, config = load_for_inference(args.checkpoint, device)
    # The direction's tokenizer: a multilingual model's puts the target-language tag first in the source.
    translator = TorchTranslator(model, tokenizer, device=device)
    tokenizer = direction_translator(
        translator, config.data, args.source_lang, args.target_lang, zero_shot=args.zero_shot
    ).tokenizer
    if args.target is not None:
        translation, attention = args.target, pair_attention(model, tokenizer, [args.text], [args.target], device=device)[0]
    else:
        cfg = config.decode.updated(beam_size=args.beam_size, n_best=1)
        translation, attention = translate_with_attention(model, tokenizer, [args.text], cfg, device=device)[0]
    field, rows, cols, row_axis, col_axis, what = KINDS[args.kind]
    weights: torch.Tensor = getattr(attention, field)  # (L, H, T, S)
    layers = list(range(1, weights.size(0) + 1))
    if args.layer is not None:
        try:
            index = layer_index(args.layer, weights.size(0))
        except ValueError as err:
            raise ConfigError(f"--layer: {err}") from None
        weights, layers = weights[index : index + 1], [index + 1]
    figure = attention_figure(
        weights, getattr(attention, rows), getattr(attention, cols), layers=layers, query_axis=row_axis,
        key_axis=col_axis, title=f"{what}: {args.text}  \u2192  {translation}",
    )
    print(translation)
    _wrote(args.output, save_png(figure, args.output, dpi=args.dpi))
    return 0


def run_positions(args: argparse.Namespace) -> int:
    _check_dpi(args.dpi)
    if args.length < 2:
        raise ConfigError(f"--length {args.length} is too short; give at least 2 positions")
    table = None
    d_model = args.d_model
    if args.checkpoint is not None:
        model, _, config = load_for_inference(args.checkpoint)
        d_model = config.model.d_model
        if config.model.positional == "learned":
            if args.length > config.model.max_positions:
                raise ConfigError(f"--length {args.length} is beyond the model's {config.model.max_positions} "
                                  "learned positions; give a smaller --length")
            with torch.no_grad():  # the table the encoder adds: its encoding of zeros
                table = model.encoder.positional(torch.zeros(1, args.length, d_model))[0]
    if d_model < 2 or d_model % 2:
        raise ConfigError(f"--d-model {d_model} must be an even number of at least 2")
    figure = positions_figure(table, d_model=d_model, length=args.length)
    _wrote(args.output, save_png(figure, args.output, dpi=args.dpi))
    return 0


def run_runs(args: argparse.Namespace) -> int:
    _check_dpi(args.dpi)
    names = [(path.parent if path.suffix == ".jsonl" else path).resolve().name for path in args.run_dirs]
    if len(set(names)) < len(names):  # two runs/x folders of the same name: tell them apart by their path
        names = [str(path) for path in args.run_dirs]
    runs = [(name, read_metrics(path)) for name, path in zip(names, args.run_dirs)]
    for (name, records), path in zip(runs, args.run_dirs):
        if not records:
            raise DataError(f"{path} has no metrics yet: a run writes them after its first log or validation")
    _wrote(args.output, save_png(run_figure(runs), args.output, dpi=args.dpi))
    return 0
