"""``transformer train``: config + overrides -> ``training_run`` (run folder, data, vocabulary, model) -> ``fit()``.

Exit status: 0 when the run finished; 128 + the signal's number when SIGTERM (143) or SIGINT (130) stopped it
after saving ``last.pt`` (continue with ``--resume``), or during start-up with nothing saved (run it again); 2
for a user's mistake, a run folder in use or owned by another run, settings that cannot change on
``--resume``, or a diverged run (also one whose weights were not finite when it stopped: nothing is saved).

The command prints a short summary of the run (the whole resolved config goes to ``RUN_DIR/config.json``).
"""

from __future__ import annotations

import argparse
import math
import signal
from pathlib import Path

import torch

from transformer.config import load_config
from transformer.data.corpus import corpus_folder
from transformer.data.mixing import pair_counts
from transformer.model.transformer import count_parameters
from transformer.training.build import StartupInterrupted, training_run
from transformer.training.distributed import setup, teardown
from transformer.training.trainer import Trainer

EXAMPLES = """\
examples:
  transformer train --config configs/sample.yaml
  transformer train --config configs/multi30k_en_de.yaml          # reads data/multi30k (see: transformer download)
  transformer train --config configs/multi30k_en_de.yaml --data-dir /data/multi30k train.lr=1e-3 model.dropout=0.3
  transformer train --config configs/sample.yaml --resume         # continue RUN_DIR/checkpoints/last.pt
  transformer train --config configs/sample.yaml --resume train.max_epochs=40 train.lr=1e-3
  transformer train --config configs/sample.yaml --overwrite      # delete the run in RUN_DIR and start again
  transformer train --config configs/sample_multilingual.yaml     # one model, en-de and de-en (target tags)

exit status: 0 finished; 143 (SIGTERM) or 130 (SIGINT) stopped early with last.pt saved (or during start-up,
with nothing saved); 2 a mistake, a run folder in use or holding another run, a setting that cannot change on
--resume, or a diverged run.
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
                print(summary(trainer), flush=True)
            metrics = trainer.fit()
        finished = True
    except StartupInterrupted as stop:
        if context is None or context.is_main:
            print(f"stopped by {signal.Signals(stop.signum).name} during start-up, before the first update; nothing "
                  "was trained or saved, and no vocabulary of this command is left in the run folder: run the "
                  "command again", flush=True)
        return 128 + stop.signum
    finally:
        if context is not None:
            teardown(context, finished=finished)
    if trainer.stop_signal is not None:  # a scheduler must see that the run stopped early
        if context.is_main:
            name = signal.Signals(trainer.stop_signal).name
            if trainer.checkpoints.saved_step is None:
                print(f"stopped by {name} before the first update; nothing was trained or saved: run the command "
                      "again")
            else:
                print(f"stopped by {name} at step {trainer.step}; saved {trainer.checkpoints.last}; "
                      "continue with --resume")
        return 128 + trainer.stop_signal
    if context.is_main:
        print(f"done at step {trainer.step}; last validation: {metrics}")
        print(f"checkpoints: {trainer.checkpoints.folder}")
    return 0


def summary(trainer: Trainer) -> str:
    """A few lines on what this run does; the whole resolved config goes to ``RUN_DIR/config.json``."""
    t, d, m = trainer.config.train, trainer.config.data, trainer.config.model
    where = {"folder": lambda: str(corpus_folder(d)), "hub": lambda: f"{d.hub_name} (Hugging Face datasets)"}
    corpus = where.get(d.source, lambda: d.files.get("train", ""))()
    directions, pairs = _directions(trainer)
    valid = f", {_validation_pairs(trainer):,} validation pairs" if trainer.validation is not None else ""
    per_epoch = max(1, math.ceil(len(trainer.train_batches) / t.grad_accum_steps))
    start = f"from step {trainer.step + 1} " if trainer.step else ""
    processes = f", {trainer.context.world_size} processes" if trainer.context.enabled else ""
    validation = f"every {t.eval_every} updates" if t.eval_every > 0 else "after each epoch"
    return "\n".join([
        f"run folder: {trainer.run_dir} (the full config: {trainer.run_dir / 'config.json'})",
        f"data: {directions} from {corpus}: {pairs}{valid}; vocabulary {m.src_vocab_size:,} / "
        f"{m.tgt_vocab_size:,} pieces",
        f"model: {count_parameters(trainer.model):,} parameters (d_model={m.d_model}, {m.n_encoder_layers} encoder + "
        f"{m.n_decoder_layers} decoder layers)",
        f"training: {trainer.total_steps:,} updates {start}({per_epoch:,} an epoch), validation {validation}, on "
        f"{trainer.device} ({t.precision}{processes})",
    ])


def _directions(trainer: Trainer) -> tuple[str, str]:
    """``("en -> de", "520 training pairs")``; for several directions, their names and each one's pairs."""
    d, pairs = trainer.config.data, pair_counts(trainer.train_batches)
    if not isinstance(pairs, dict):
        return f"{d.src_lang} -> {d.tgt_lang}", f"{pairs:,} training pairs"
    each = ", ".join(f"{name} {n:,}" for name, n in pairs.items())
    return (f"{len(pairs)} directions ({', '.join(pairs)})",
            f"{sum(pairs.values()):,} training pairs ({each}; one direction a batch, drawn at temperature "
            f"{d.direction_temperature:g})")


def _validation_pairs(trainer: Trainer) -> int:
    validation = trainer.validation
    every = validation.values() if isinstance(validation, dict) else [validation]
    return sum(len(v.src_texts) for v in every if v is not None)
