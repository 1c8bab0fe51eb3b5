"""Ablation of the training step: each speed-only code path switched off, against all of them on.

    transformer benchmark ablate --steps 3 --rounds 10 --json ablation.json

Every variant is the same model (``--preset``, same initial weights) with its own update (so its own Adam
state): the ``Trainer``'s update (``steps.our_update``: ``UpdateStep``, the fused ``Seq2SeqLoss``, the default
optimizer) on the same batches of the Multi30k training split (the batches of ``transformer benchmark
compare``). A variant switches one path to the plain PyTorch operation through the public builders
(``Seq2SeqLoss(fused=False)``, ``build_optimizer(fused=False)``: benchmark-only switches, not config keys). The
rounds are interleaved: in every round each variant runs the same ``--steps`` batches, in an order rotated from
round to round. For each variant the script reports the median seconds per round, the median and range of the
per-round ratios ``seconds(variant) / seconds(reference)`` (above 1: the path it switches off makes the update
faster), the share of its threads' CPU time the process got, and the peak RSS of a subprocess that trains that
variant alone on the same batches (``--no-memory`` skips these).
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from transformer.benchmarks.common import json_settings, model_config
from transformer.benchmarks.memory import memory_in_subprocess, memory_probe
from transformer.benchmarks.steps import Rounds, StepFn, on_one_batch, our_update, time_rounds, train_config
from transformer.benchmarks.train_batches import add_corpus_arguments, first_batches, training_data
from transformer.config import DataConfig, ModelConfig
from transformer.model.transformer import Transformer


# One switch per speed-only path still in the code; docs/PERFORMANCE.md also lists the paths that were measured
# with this script and then removed (dropout masks, in-place ReLU, concatenated Q/K/V, the hand-written loss
# backward, the bf16 attention cast), with their figures.
@dataclass(frozen=True)
class Variant:
    """The speed-only paths an update uses (``steps.our_update``'s switches)."""

    fused_loss: bool = True  # False: full logits + F.cross_entropy (label_smoothed_nll_loss)
    fused_adam: bool | None = None  # False: the default (per-tensor loop on the CPU) Adam; None: build_optimizer's


VARIANTS = {"reference": Variant(), "unfused_adam": Variant(fused_adam=False), "plain_loss": Variant(fused_loss=False)}


def build_step(name: str, config: ModelConfig, precision: str, seed: int, device: torch.device) -> StepFn:
    """Variant ``name``'s update of a new model (the same initial weights for the same ``seed``)."""
    torch.manual_seed(seed)
    variant = VARIANTS[name]
    update = our_update(Transformer(config).to(device), train_config(precision), device,
                        fused_loss=variant.fused_loss, fused_adam=variant.fused_adam)
    return on_one_batch(update)


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
    add_corpus_arguments(parser)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("--memory-probe", type=Path, help=argparse.SUPPRESS)  # internal: one child process


def run(args: argparse.Namespace) -> int:
    if args.memory_probe is not None:
        return memory_probe(args.memory_probe, build_step)
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    data_cfg = DataConfig(data_dir=args.data_dir, src_lang=args.src_lang, tgt_lang=args.tgt_lang,
                          train_split=args.train_split, test_split=args.test_split, vocab_size=args.vocab_size)
    tokenizer, batch_iter, source = training_data(data_cfg, max_tokens=args.max_tokens, seed=args.seed, device=device)
    config = model_config(args.preset, tokenizer)
    chosen = first_batches(batch_iter, args.warmup + args.steps)
    warm, timed = chosen[: args.warmup], chosen[args.warmup :]
    print(f"{source}; preset {args.preset}, {args.precision}, {torch.get_num_threads()} threads; "
          f"{sum(b.n_tgt_tokens for b in timed) / len(timed):.0f} target tokens per update; "
          f"{args.rounds} rounds x {args.steps} updates per variant")
    rows: dict[str, Any] = {v: {} for v in args.variants}
    if not args.memory_only:
        steps = {v: build_step(v, config, args.precision, args.seed, device) for v in args.variants}

        def show(r: int, rounds: Rounds) -> None:
            times = ", ".join(f"{v} {rounds.seconds[v][-1]:.2f}s" for v in args.variants)
            print(f"round {r + 1}: {times}", flush=True)

        rounds = time_rounds(steps, warm, timed, args.rounds, device, rotate=True, on_round=show)
        rows = timing_rows(rounds, args.variants[0], args.steps)
    if not args.no_memory:
        repeated = [chosen[i % len(chosen)] for i in range(args.memory_steps)]
        for variant in args.variants:
            peak = memory_in_subprocess("ablate", variant, config, repeated, precision=args.precision, seed=args.seed,
                                        device=device)
            rows[variant]["peak_rss_mib"] = peak["peak_mib"]
    print_table(rows, args.variants[0])
    if args.json is not None:
        report = {"settings": json_settings(vars(args)), "source": source, "torch": torch.__version__,
                  "variants": rows}
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    return 0


def timing_rows(rounds: Rounds, reference: str, steps: int) -> dict[str, Any]:
    """Per variant: seconds per round, median seconds per update, per-round ratios to ``reference``, CPU share."""
    rows: dict[str, Any] = {}
    for variant, seconds in rounds.seconds.items():
        ratios = [a / b for a, b in zip(seconds, rounds.seconds[reference])]
        rows[variant] = {
            "seconds_per_round": [round(s, 3) for s in seconds],
            "median_seconds_per_update": statistics.median(seconds) / steps,
            "ratio_to_reference_median": statistics.median(ratios),
            "ratio_to_reference_min": min(ratios), "ratio_to_reference_max": max(ratios),
            "cpu_share_per_round": [round(s, 3) for s in rounds.cpu_share[variant]],
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
