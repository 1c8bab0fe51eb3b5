"""Average the weights of the last N step checkpoints of a run into one checkpoint for evaluation.

examples:
  transformer average --run-dir runs/multi30k_en_de --last 10 --output runs/multi30k_en_de/checkpoints/avg10.pt
  transformer average --inputs a.pt b.pt c.pt --output abc.pt
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from transformer.training.checkpoint import average_checkpoints, save_checkpoint


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "average", help="average the last N checkpoints of a run",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--run-dir", type=Path, help="take the newest step_*.pt of RUN_DIR/checkpoints")
    parser.add_argument("--last", type=int, default=5, help="how many of the newest step checkpoints (default 5)")
    parser.add_argument("--inputs", nargs="+", type=Path, help="explicit checkpoint files instead of --run-dir")
    parser.add_argument("--output", type=Path, required=True)
    parser.set_defaults(run=run, parser=parser)
    return parser


def run(args: argparse.Namespace) -> int:
    if args.inputs:
        paths = args.inputs
    elif args.run_dir:
        paths = sorted((args.run_dir / "checkpoints").glob("step_*.pt"))[-args.last :]
        if len(paths) < args.last:
            print(f"note: only {len(paths)} step checkpoints in {args.run_dir / 'checkpoints'}", file=sys.stderr)
    else:
        args.parser.error("give --run-dir or --inputs")
    state = average_checkpoints(paths)
    save_checkpoint(state, args.output)
    print(f"averaged {len(paths)} checkpoints ({paths[0].name} .. {paths[-1].name}) -> {args.output}")
    return 0

