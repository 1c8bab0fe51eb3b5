"""``transformer train``: config + overrides -> ``training_run`` (run folder, data, vocabulary, model) -> ``fit()``.

Exit status: 0 when the run finished; 128 + the signal's number when SIGTERM (143) or SIGINT (130) stopped it
after saving ``last.pt`` (continue with ``--resume``); 2 for a user's mistake, a run folder in use or owned by
another run, settings that cannot change on ``--resume``, or a diverged run.
"""

from __future__ import annotations

import argparse
import signal
from pathlib import Path

import torch
import yaml

from transformer.config import load_config
from transformer.training.build import training_run
from transformer.training.distributed import setup, teardown

EXAMPLES = """\
examples:
  transformer train --config configs/sample.yaml
  transformer train --config configs/multi30k_en_de.yaml          # reads data/multi30k (see: transformer download)
  transformer train --config configs/multi30k_en_de.yaml --data-dir /data/multi30k train.lr=1e-3 model.dropout=0.3
  transformer train --config configs/sample.yaml --resume         # continue RUN_DIR/checkpoints/last.pt
  transformer train --config configs/sample.yaml --resume train.max_epochs=40 train.lr=1e-3
  transformer train --config configs/sample.yaml --overwrite      # delete the run in RUN_DIR and start again

exit status: 0 finished; 143 (SIGTERM) or 130 (SIGINT) stopped early with last.pt saved; 2 a mistake, a
run folder in use or holding another run, a setting that cannot change on --resume, or a diverged run.
  torchrun --standalone --nproc_per_node 2 -m transformer train --config configs/sample.yaml
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "train", help="train a model from a config",
        description="Train an encoder-decoder Transformer for translation from a YAML config and key=value overrides.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", "-c", type=Path, help="YAML config (see configs/)")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. train.lr=5e-4")
    start = parser.add_mutually_exclusive_group()
    start.add_argument(
        "--resume", action="store_true",
        help="continue from RUN_DIR/checkpoints/last.pt; the model, vocabulary, batching and seed must not change",
    )
    start.add_argument(
        "--overwrite", action="store_true",
        help="delete the run already in RUN_DIR (its checkpoints, metrics, config and vocabulary) and start again",
    )
    parser.add_argument("--data-dir", help="shortcut for data.data_dir=... (the corpus folder)")
    parser.add_argument("--run-dir", help="shortcut for train.run_dir=...")
    parser.add_argument("--device", help="shortcut for train.device=... (auto, cpu, cuda)")
    parser.set_defaults(run=run, accepts_overrides=True)
    return parser


def run(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    for key, value in (("data.data_dir", args.data_dir), ("train.run_dir", args.run_dir), ("train.device", args.device)):
        if value is not None:
            overrides.append(f"{key}={value}")
    context, finished = None, False
    try:
        config = load_config(args.config, overrides)
        if config.train.threads > 0:
            torch.set_num_threads(config.train.threads)
        context = setup(config.train.device)
        with training_run(config, context, resume=args.resume, overwrite=args.overwrite) as trainer:
            if context.is_main:
                print(yaml.safe_dump(config.to_dict(), sort_keys=False), flush=True)  # the resolved config
            metrics = trainer.fit()
        finished = True
    finally:
        if context is not None:
            teardown(context, finished=finished)
    if trainer.stop_signal is not None:  # a scheduler must see that the run stopped early
        if context.is_main:
            name = signal.Signals(trainer.stop_signal).name
            print(f"stopped by {name} at step {trainer.step}; saved {trainer.checkpoints.last}; "
                  "continue with --resume")
        return 128 + trainer.stop_signal
    if context.is_main:
        print(f"done at step {trainer.step}; last validation: {metrics}")
        print(f"checkpoints: {trainer.checkpoints.folder}")
    return 0
