"""``transformer train``: config + overrides -> ``build_trainer`` (data, vocabulary, model) -> ``Trainer.fit()``."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import yaml

from transformer.config import load_config
from transformer.training.build import build_trainer
from transformer.training.distributed import setup, teardown

EXAMPLES = """\
examples:
  transformer train --config configs/sample.yaml
  transformer train --config configs/multi30k_en_de.yaml          # reads data/multi30k (see: transformer download)
  transformer train --config configs/multi30k_en_de.yaml --data-dir /data/multi30k train.lr=1e-3 model.dropout=0.3
  transformer train --config configs/sample.yaml --resume         # continue RUN_DIR/checkpoints/last.pt
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
    parser.add_argument("--resume", action="store_true", help="continue from RUN_DIR/checkpoints/last.pt")
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
    context = None
    try:
        config = load_config(args.config, overrides)
        if config.train.threads > 0:
            torch.set_num_threads(config.train.threads)
        context = setup(config.train.device)
        trainer = build_trainer(config, context)
        if context.is_main:
            print(yaml.safe_dump(config.to_dict(), sort_keys=False), flush=True)  # the resolved config
        if args.resume:
            trainer.resume()
        metrics = trainer.fit()
    finally:
        if context is not None:
            teardown(context)
    if context.is_main:
        print(f"done at step {trainer.step}; last validation: {metrics}")
        print(f"checkpoints: {trainer.checkpoint_dir}")
    return 0
