"""Average the weights of several checkpoints (by default the newest step checkpoints of a run) into one.

The result keeps the config and vocabulary of the newest checkpoint and no optimizer state: it is for
``translate`` and ``evaluate``, not for resuming. The work is done by
``transformer.checkpoint.average_checkpoints``. Checkpoints of different models end with one line
on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import fnmatch
import sys
from pathlib import Path

from tqdm import tqdm

from transformer.checkpoint import average_checkpoints, save_checkpoint
from transformer.errors import CheckpointError, CheckpointWriteError, ConfigError
from transformer.training.run_dir import CHECKPOINT_PATTERNS

EXAMPLES = """\
examples:
  transformer average --run-dir runs/multi30k_en_de --last 10 --output runs/multi30k_en_de/checkpoints/avg10.pt
  transformer average --inputs a.pt b.pt c.pt --output abc.pt
  transformer evaluate --checkpoint runs/multi30k_en_de/checkpoints/avg10.pt   # then score it
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "average", help="average the last N checkpoints of a run into one",
        description=__doc__.split("\n\n")[0], epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--run-dir", type=Path, help="take the newest step_*.pt of RUN_DIR/checkpoints")
    parser.add_argument("--last", type=int, default=5, help="how many of the newest step checkpoints (default 5)")
    parser.add_argument("--inputs", nargs="+", type=Path, metavar="CKPT", help="these checkpoints instead of --run-dir")
    parser.add_argument("--output", type=Path, required=True, help="the averaged checkpoint to write")
    parser.add_argument(
        "--overwrite-checkpoint", action="store_true",
        help="allow --output to be one of the inputs or a run's own checkpoint (last.pt, best.pt, step_*.pt)",
    )
    parser.set_defaults(run=run, parser=parser)
    return parser


def run(args: argparse.Namespace) -> int:
    if args.last < 1:
        raise ConfigError(f"--last must be at least 1, got {args.last}")
    if args.inputs:
        paths = args.inputs
    elif args.run_dir:
        paths = sorted((args.run_dir / "checkpoints").glob("step_*.pt"))[-args.last :]
        if len(paths) < args.last:
            print(f"note: only {len(paths)} step checkpoints in {args.run_dir / 'checkpoints'}", file=sys.stderr)
    else:
        args.parser.error("give --run-dir or --inputs")
    check_output(args.output, paths, overwrite=args.overwrite_checkpoint)
    with tqdm(total=len(paths), unit="ckpt", desc="average", file=sys.stderr, disable=not sys.stderr.isatty()) as bar:
        state = average_checkpoints(paths, progress=bar.update)
    save_checkpoint(state, args.output)
    print(f"averaged {len(paths)} checkpoints ({paths[0].name} .. {paths[-1].name}) -> {args.output}")
    return 0


def check_output(output: Path, inputs: list[Path], *, overwrite: bool) -> None:
    """Refuse, before any work, an ``--output`` that is a folder, or (without ``overwrite``) one of the inputs or
    a checkpoint of a run: an average holds no optimizer state, so a run could no longer resume from it.

    Raises:
        CheckpointWriteError: ``output`` is a folder. CheckpointError: ``output`` must not be replaced.
    """
    if output.is_dir():
        raise CheckpointWriteError(
            f"cannot write checkpoint {output}: --output is a folder; give a file name, e.g. {output / 'avg.pt'}"
        )
    if overwrite:
        return
    if output.exists() and any(p.exists() and output.samefile(p) for p in inputs):
        what = "one of the inputs: the average would replace a checkpoint it is made of"
    elif any(fnmatch.fnmatch(output.name, pattern) for pattern in CHECKPOINT_PATTERNS) and (
        output.exists() or output.parent.name == "checkpoints"
    ):
        what = "a checkpoint of a training run: an average holds the weights only, and the run could not resume"
    else:
        return
    raise CheckpointError(
        f"--output {output} is {what}; choose another name, e.g. {output.with_name('avg.pt')}, or add "
        "--overwrite-checkpoint to write over it"
    )
