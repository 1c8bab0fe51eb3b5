"""Export a checkpoint for serving: a CTranslate2 model folder that `translate`/`evaluate --engine ctranslate2` read.

The folder holds CTranslate2's model files, the SentencePiece model(s) and the checkpoint's config, and is checked
before it is written: its token log-probabilities must match the checkpoint's. A model CTranslate2 cannot express
exactly is refused with the reason. A multilingual model keeps every direction (its target-language tags are pieces
of the vocabulary): the folder translates each, chosen with --target-lang. Needs the optional extra:
pip install -e ".[ctranslate2]".
"""

from __future__ import annotations

import argparse
from pathlib import Path

from transformer.inference import QUANTIZATIONS, export_ctranslate2, format_directions

EXAMPLES = """\
examples:
  transformer export --checkpoint runs/sample/checkpoints/best.pt --format ctranslate2 --output runs/sample/ct2
  transformer export --checkpoint avg10.pt --format ctranslate2 --output ct2-int8 --quantization int8
  transformer translate --engine ctranslate2 --model runs/sample/ct2 "A dog is running on the beach."
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "export", help="write a checkpoint as a CTranslate2 model folder",
        description=__doc__.split("\n\n")[0], epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--checkpoint", required=True, type=Path, metavar="CKPT", help="a .pt file written by `transformer train`"
    )
    parser.add_argument("--format", choices=("ctranslate2",), default="ctranslate2", help="the serving format")
    parser.add_argument("--output", required=True, type=Path, metavar="DIR", help="the model folder to write")
    parser.add_argument(
        "--quantization", choices=QUANTIZATIONS, help="weight type (default float32; int8: smaller, faster on CPUs)"
    )
    parser.add_argument(
        "--force", action="store_true",
        help="replace a previous export in DIR (only the files an export writes; never a run folder)",
    )
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    output = export_ctranslate2(args.checkpoint, args.output, quantization=args.quantization, force=args.force)
    files = ", ".join(sorted(p.name for p in output.iterdir()))
    print(f"wrote {output} ({args.quantization or 'float32'}): {files}")
    from transformer.inference.ct2_engine import read_export  # ctranslate2 is installed: the export needed it

    data = read_export(output)[0].data
    direction = ""
    if data.multilingual:
        print(f"it translates {format_directions(data.direction_pairs)}, each chosen with --target-lang")
        direction = f" --target-lang {data.direction_pairs[0][1]}"
    print(f'translate with: transformer translate --engine ctranslate2 --model {output}{direction} "A sentence."')
    return 0
