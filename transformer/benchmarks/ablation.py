"""Ablation of the training step: each speed-only code path switched off, against all of them on.

    transformer benchmark ablate --steps 3 --rounds 10 --json ablation.json

Every variant is the same model (``--preset``, same initial weights) with its own ``Trainer`` (so its own Adam
state), trained with ``Trainer.train_step`` on the same batches of the Multi30k training split (the batches of
``transformer benchmark compare``). A variant switches one path to the plain PyTorch operation by swapping an
object of that trainer (a benchmark-only switch: nothing here is a config key). The rounds are interleaved: in every round each variant runs the same ``--steps`` batches, in an order
rotated from round to round. For each variant the script reports the median seconds per round, the median
and range of the per-round ratios ``seconds(variant) / seconds(reference)`` (above 1: the path it switches off
makes the update faster), the share of its threads' CPU time the process got, and the peak RSS of a
subprocess that trains that variant alone on the same batches (``--no-memory`` skips these).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from transformer.benchmarks.compare import model_config, peak_rss_mib, train_config, training_data
from transformer.config import ModelConfig
from transformer.data.batching import Batch, collate
from transformer.data.tokenizer import PAD_ID
from transformer.model.transformer import Transformer
from transformer.training.distributed import DistributedContext
from transformer.training.loss import label_smoothed_nll_loss
from transformer.training.schedule import build_scheduler
from transformer.training.trainer import Trainer


# ------------------------------------------------------------------------------- plain replacements
# One switch per speed-only path still in the code; docs/PERFORMANCE.md also lists the paths that were measured
# with this script and then removed (dropout masks, in-place ReLU, concatenated Q/K/V, the hand-written loss
# backward, the bf16 attention cast), with their figures.
def unfused_adam(trainer: Trainer) -> None:
    """Fused Adam -> the default (per-tensor loop on the CPU) Adam, with a fresh schedule."""
    old, t = trainer.optimizer, trainer.config.train
    groups = [{"params": g["params"], "weight_decay": g["weight_decay"]} for g in old.param_groups]
    trainer.optimizer = type(old)(groups, lr=t.lr, betas=t.betas, eps=t.eps)
    trainer.scheduler = build_scheduler(trainer.optimizer, t, d_model=trainer.config.model.d_model,
                                        total_steps=trainer.total_steps)


def plain_loss(trainer: Trainer) -> None:
    """The fused output projection + loss -> ``F.cross_entropy`` (``label_smoothed_nll_loss``) on full logits."""

    def loss(model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        with trainer.autocast:
            logits = model(batch.src, batch.tgt_in)  # (B, T, V)
        return label_smoothed_nll_loss(
            logits, batch.tgt_out, smoothing=trainer.config.train.label_smoothing, ignore_index=PAD_ID
        )

    trainer.loss = loss  # type: ignore[method-assign]


# name -> the switch applied to a fresh trainer
VARIANTS: dict[str, Callable[[Trainer], None]] = {
    "reference": lambda trainer: None,
    "unfused_adam": unfused_adam,
    "plain_loss": plain_loss,
}


def build_trainer(variant: str, config: ModelConfig, precision: str, seed: int, run_dir: str,
                  device: torch.device) -> Trainer:
    torch.manual_seed(seed)
    model = Transformer(config)
    # Before fit() the Trainer reads only len() of its batches: an empty list will do.
    trainer = Trainer(train_config(precision, run_dir), model, None, [], context=DistributedContext(device=device))  # type: ignore[arg-type]
    VARIANTS[variant](trainer)
    trainer.train_model.train()
    return trainer


def run_steps(trainer: Trainer, batches: list[Batch]) -> None:
    for batch in batches:
        trainer.train_step([batch])[0].item()


# ------------------------------------------------------------------------------------------ command
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=sorted(VARIANTS),
                        help="the first is the reference of the ratios (default: all)")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--steps", type=int, default=3, help="updates per variant per round")
    parser.add_argument("--rounds", type=int, default=10, help="interleaved rounds")
    parser.add_argument("--warmup", type=int, default=2, help="untimed updates per variant first")
    parser.add_argument("--memory-steps", type=int, default=6, help="updates of each memory subprocess")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-RSS subprocesses")
    parser.add_argument("--memory-only", action="store_true", help="only the peak-RSS subprocesses, no timing")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--max-tokens", type=int, default=4096, help="token budget of a batch")
    parser.add_argument("--data-dir", default="", help="Multi30k folder (default: $MULTI30K_DIR, else data/multi30k)")
    parser.add_argument("--train-split", default="train")
    parser.add_argument("--test-split", default="test_2016_flickr")
    parser.add_argument("--src-lang", default="en")
    parser.add_argument("--tgt-lang", default="de")
    parser.add_argument("--vocab-size", type=int, default=8000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("--memory-probe", type=Path, help=argparse.SUPPRESS)  # internal: one child process
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.memory_probe is not None:
        return memory_probe(args.memory_probe)
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    tokenizer, batch_iter, source = training_data(args, device)
    config = model_config(args.preset, tokenizer)
    epoch = [collate(batch_iter.dataset, idx, batch_iter.pad_to_multiple) for idx in batch_iter.epoch_batches(0)]
    warm, timed = epoch[: args.warmup], epoch[args.warmup : args.warmup + args.steps]
    print(f"{source}; preset {args.preset}, {args.precision}, {torch.get_num_threads()} threads; "
          f"{sum(b.n_tgt_tokens for b in timed) / len(timed):.0f} target tokens per update; "
          f"{args.rounds} rounds x {args.steps} updates per variant")
    rows: dict[str, Any] = {v: {} for v in args.variants} if args.memory_only else time_variants(args, config, warm, timed)
    if not args.no_memory:
        batches = warm + timed
        for variant in args.variants:
            rows[variant]["peak_rss_mib"] = memory_in_subprocess(args, variant, config, batches)
    print_table(rows, args.variants[0])
    if args.json is not None:
        report = {"settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if not callable(v)},
                  "source": source, "torch": torch.__version__, "variants": rows}
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    return 0


def time_variants(args: argparse.Namespace, config: ModelConfig, warm: list[Batch], timed: list[Batch]) -> dict[str, Any]:
    """Interleaved rounds: seconds per round, per-round ratios to the first variant, CPU share."""
    device = torch.device("cpu")
    seconds: dict[str, list[float]] = {v: [] for v in args.variants}
    share: dict[str, list[float]] = {v: [] for v in args.variants}
    with tempfile.TemporaryDirectory() as run_dir:
        trainers = {v: build_trainer(v, config, args.precision, args.seed, run_dir, device) for v in args.variants}
        for variant, trainer in trainers.items():
            run_steps(trainer, warm)
        for r in range(args.rounds):
            order = args.variants[r % len(args.variants):] + args.variants[: r % len(args.variants)]
            for variant in order:
                start, cpu = time.perf_counter(), time.process_time()
                run_steps(trainers[variant], timed)
                seconds[variant].append(time.perf_counter() - start)
                share[variant].append((time.process_time() - cpu) / seconds[variant][-1] / torch.get_num_threads())
            print(f"round {r + 1}: " + ", ".join(f"{v} {seconds[v][-1]:.2f}s" for v in args.variants), flush=True)
    reference = args.variants[0]
    rows: dict[str, Any] = {}
    for variant in args.variants:
        ratios = [a / b for a, b in zip(seconds[variant], seconds[reference])]
        rows[variant] = {
            "seconds_per_round": [round(s, 3) for s in seconds[variant]],
            "median_seconds_per_update": statistics.median(seconds[variant]) / args.steps,
            "ratio_to_reference_median": statistics.median(ratios),
            "ratio_to_reference_min": min(ratios), "ratio_to_reference_max": max(ratios),
            "cpu_share_per_round": [round(s, 3) for s in share[variant]],
        }
    return rows


def print_table(rows: dict[str, Any], reference: str) -> None:
    print(f"\n{'variant':>20} {'s/update':>9} {'ratio to ' + reference:>20} {'range':>13} {'cpu share':>10} {'peak RSS':>10}")
    for variant, row in rows.items():
        if "median_seconds_per_update" not in row:
            print(f"{variant:>20} {'-':>9} {'-':>20} {'-':>13} {'-':>10} {row.get('peak_rss_mib', 0):>6.0f} MiB")
            continue
        rss = f"{row['peak_rss_mib']:.0f} MiB" if "peak_rss_mib" in row else "-"
        print(f"{variant:>20} {row['median_seconds_per_update']:9.3f} {row['ratio_to_reference_median']:20.3f} "
              f"{row['ratio_to_reference_min']:6.2f}-{row['ratio_to_reference_max']:<6.2f} "
              f"{min(row['cpu_share_per_round']):10.2f} {rss:>10}")
    if min((min(r["cpu_share_per_round"]) for r in rows.values() if "cpu_share_per_round" in r), default=1.0) < 0.8:
        print("WARNING: in some rounds this process got under 80% of its threads' CPU time (other processes)")


def memory_in_subprocess(args: argparse.Namespace, variant: str, config: ModelConfig, batches: list[Batch]) -> float:
    """Peak RSS (MiB) of a fresh process that trains ``variant`` on ``batches``."""
    with tempfile.TemporaryDirectory() as folder:
        probe = Path(folder) / "probe.pt"
        repeated = [batches[i % len(batches)] for i in range(args.memory_steps)]
        torch.save({"variant": variant, "config": dataclasses.asdict(config), "precision": args.precision,
                    "threads": torch.get_num_threads(), "seed": args.seed,
                    "batches": [dataclasses.asdict(b) for b in repeated]}, probe)
        out = subprocess.run([sys.executable, "-m", "transformer.benchmarks.ablation", "--memory-probe", str(probe)],
                             capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"memory probe of {variant} failed:\n{out.stderr[-2000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"]


def memory_probe(path: Path) -> int:
    spec = torch.load(path, weights_only=False)
    torch.set_num_threads(spec["threads"])
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = build_trainer(spec["variant"], ModelConfig(**spec["config"]), spec["precision"], spec["seed"],
                                run_dir, torch.device("cpu"))
        run_steps(trainer, [Batch(**b) for b in spec["batches"]])
    print(json.dumps({"peak_mib": peak_rss_mib()}))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="transformer benchmark ablate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
