#!/usr/bin/env python
"""Average the weights of the last N step checkpoints of a run into one checkpoint for evaluation.

    python scripts/average_checkpoints.py --run-dir runs/multi30k_en_de --last 10 --output runs/multi30k_en_de/checkpoints/avg10.pt
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from transformer.checkpoint import CheckpointError, average_checkpoints, save_checkpoint


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", type=Path, help="take the newest step_*.pt of RUN_DIR/checkpoints")
    parser.add_argument("--last", type=int, default=5, help="how many of the newest step checkpoints (default 5)")
    parser.add_argument("--inputs", nargs="+", type=Path, help="explicit checkpoint files instead of --run-dir")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.inputs:
        paths = args.inputs
    elif args.run_dir:
        paths = sorted((args.run_dir / "checkpoints").glob("step_*.pt"))[-args.last :]
        if len(paths) < args.last:
            print(f"note: only {len(paths)} step checkpoints in {args.run_dir / 'checkpoints'}", file=sys.stderr)
    else:
        parser.error("give --run-dir or --inputs")
    try:
        state = average_checkpoints(paths)
        save_checkpoint(state, args.output)
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"averaged {len(paths)} checkpoints ({paths[0].name} .. {paths[-1].name}) -> {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
