"""Training and decoding speed of this project's Transformer against a stock ``torch.nn.Transformer``.

    transformer benchmark compare --presets small --no-decode --steps 20 --repeats 5 --json train.json
    transformer benchmark compare --presets small base --device cuda --json bench.json
    transformer benchmark compare --no-train --checkpoint runs/x/checkpoints/best.pt   # decode a trained model

One process measures both implementations on the same batches (the stock baseline is
``transformer/benchmarks/stock.py``: same sizes, embeddings, positions, tied output, loss and optimizer):

1. Training, per preset: our update (``UpdateStep`` with the fused ``Seq2SeqLoss`` and the default optimizer:
   what the ``Trainer`` runs) against the stock step (the same Adam, schedule, autocast and loss: label-smoothed
   cross-entropy summed and divided by the update's target tokens; ``steps.py``), after ``--warmup`` steps, over
   ``--repeats`` interleaved rounds of ``--steps`` batches (best and median reported, and the share of its
   threads' CPU time the process got: other processes may share the machine, and a warning says when they
   did). Throughput counts non-pad tokens. Batches are the Multi30k training split through
   ``ParallelDataset``/``BatchIterator`` (``--max-tokens``), or synthetic ones with Multi30k-like lengths when
   the corpus is absent (said in the output; ``train_batches.py``). On the CPU the presets bigger than "small"
   run a third of the steps. Both losses on a fixed batch, with the same weights, are printed; every loss
   must be finite.
2. Peak training memory, one subprocess per implementation (the same batches): peak RSS on the CPU (the peak
   before the model is built, mostly torch itself, is reported too), ``torch.cuda.max_memory_allocated`` on
   CUDA (``memory.py``).
3. On CUDA, achieved TFLOP/s and MFU against ``--peak-tflops`` (detected for A100/H100/H200), from FLOPs
   counted by ``FlopCounterMode`` over our model's forward and backward pass, credited to both (``flops.py``).
4. Decoding of ``test_2016_flickr``: sentences/s and tokens/s, greedy and beam ``--beam-size``, for our cached
   search, our uncached path and the stock uncached decoders, whose outputs are compared; without
   ``--checkpoint`` an UNTRAINED "small" model, whose outputs run to the maximum length; a multilingual
   checkpoint decodes in its first direction (``compare_decode.py``).

Exit status: 0 when every check passes, 1 when one fails (non-finite loss, cached != uncached), 2 for
unusable arguments or data. ``--json PATH`` writes every figure with the machine, versions and settings.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from transformer.benchmarks.common import below_minimum, json_settings, machine_info, model_config, synchronize
from transformer.benchmarks.compare_decode import benchmark_decoding, decoding_model, test_sources
from transformer.benchmarks.flops import peak_tflops, training_flops
from transformer.benchmarks.memory import memory_in_subprocess, memory_probe
from transformer.benchmarks.steps import (
    StepFn,
    StockStep,
    build_pair,
    on_one_batch,
    our_update,
    time_rounds,
    train_config,
)
from transformer.benchmarks.stock import StockTransformer
from transformer.benchmarks.train_batches import add_corpus_arguments, first_batches, training_data
from transformer.config import DataConfig, ModelConfig
from transformer.data.batching import Batch, BatchIterator
from transformer.data.tokenizer import Tokenizer
from transformer.device import resolve_device
from transformer.errors import DataError, UserError
from transformer.model.transformer import Transformer, count_parameters
from transformer.tokens import PAD_ID
from transformer.training.loss import label_smoothed_nll_loss


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--presets", nargs="+", default=["small", "base"], help="model presets to train")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps per round")
    parser.add_argument("--warmup", type=int, default=3, help="untimed training steps first")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of each timed measurement")
    parser.add_argument("--max-tokens", type=int, default=4096, help="token budget of a training batch")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"), help="training autocast")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave the default)")
    add_corpus_arguments(parser)
    parser.add_argument("--checkpoint", type=Path, help="decode this trained model (a multilingual one: its first "
                        "direction); else an untrained small one")
    parser.add_argument("--decode-preset", default="small", help="size of the untrained model (no --checkpoint)")
    parser.add_argument("--beam-size", type=int, default=5)
    parser.add_argument("--decode-batch-size", type=int, default=128, help="sentences per decoding batch")
    parser.add_argument("--decode-sentences", type=int, default=0, help="decode only the first N (0: all)")
    parser.add_argument("--no-train", action="store_true", help="skip training and memory")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    parser.add_argument("--no-decode", action="store_true", help="skip decoding")
    parser.add_argument("--compile", action="store_true", help="torch.compile both models for training")
    parser.add_argument("--profile", type=Path, help="write a torch.profiler table of our training step here")
    parser.add_argument("--peak-tflops", type=float, help="the accelerator's dense peak for --precision")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write all figures here")
    parser.add_argument("--memory-probe", type=Path, help=argparse.SUPPRESS)  # internal: one child process


@dataclass(frozen=True)
class TrainingSettings:
    """The options of the training measurement (see the module docstring)."""

    steps: int
    warmup: int
    repeats: int
    precision: str
    seed: int
    compile: bool = False
    memory: bool = True
    profile: Path | None = None
    peak_tflops: float | None = None


def fresh_step(name: str, config: ModelConfig, precision: str, seed: int, device: torch.device) -> StepFn:
    """The update of "ours" or "stock" on a new model (the memory subprocess's)."""
    torch.manual_seed(seed)
    if name == "ours":
        return on_one_batch(our_update(Transformer(config).to(device), train_config(precision), device))
    return StockStep(StockTransformer(config).to(device), train_config(precision), device)


def profile_training(step: StepFn, batches: list[Batch], device: torch.device, path: Path) -> None:
    """Where a training step's time goes: the operators of a few steps, sorted by device (else CPU) time."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for batch in batches:
            step(batch)
        synchronize(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    path.write_text(prof.key_averages().table(sort_by=key, row_limit=30) + "\n", encoding="utf-8")
    print(f"profile of {len(batches)} steps written to {path}")


@torch.no_grad()
def fixed_batch_losses(
    ours: Transformer, stock: StockTransformer, batch: Batch, device: torch.device
) -> dict[str, float]:
    """Per-token label-smoothed losses (smoothing 0.1) of both models on one batch, in eval mode."""
    batch = batch.to(device)
    ours.eval()
    stock.eval()
    loss, _ = label_smoothed_nll_loss(ours(batch.src, batch.tgt_in), batch.tgt_out, smoothing=0.1, ignore_index=PAD_ID)
    logits = stock(batch.src, batch.tgt_in)
    stock_loss = F.cross_entropy(logits.flatten(0, 1).float(), batch.tgt_out.flatten(), ignore_index=PAD_ID,
                                 label_smoothing=0.1, reduction="sum")
    ours.train()
    stock.train()
    n = batch.n_tgt_tokens
    return {"ours": loss.item() / n, "stock": stock_loss.item() / n}


def benchmark_training(
    preset: str, tokenizer: Tokenizer, batches: BatchIterator, device: torch.device, s: TrainingSettings
) -> tuple[dict[str, Any], bool]:
    """Throughput, losses and (in subprocesses) peak memory of both implementations for one preset."""
    config = model_config(preset, tokenizer)
    steps, warmup = s.steps, s.warmup
    if device.type == "cpu" and preset not in ("tiny", "small"):
        steps, warmup = max(1, steps // 3), min(warmup, 1)
    chosen = first_batches(batches, warmup + steps)
    warm, timed = chosen[:warmup], chosen[warmup:]
    ours, stock = build_pair(config, s.seed, device)
    result: dict[str, Any] = {
        "parameters": {"ours": count_parameters(ours), "stock": count_parameters(stock)},
        "steps": steps, "warmup": warmup, "repeats": s.repeats,
        "tgt_tokens_per_step": sum(b.n_tgt_tokens for b in timed) / steps,
        "src_tokens_per_step": sum(b.n_src_tokens for b in timed) / steps,
        "fixed_batch_loss": fixed_batch_losses(ours, stock, chosen[0], device),
    }
    train = train_config(s.precision, compile=s.compile)
    steps_of = {"ours": on_one_batch(our_update(ours, train, device)), "stock": StockStep(stock, train, device)}
    rounds = time_rounds(steps_of, warm, timed, s.repeats, device)
    if s.profile is not None:
        profile_training(steps_of["ours"], timed[:5], device, s.profile.with_name(f"{s.profile.stem}_{preset}.txt"))
    n_tgt = sum(b.n_tgt_tokens for b in timed)
    n_all = n_tgt + sum(b.n_src_tokens for b in timed)
    flops = sum(training_flops(ours, b.to(device)) for b in timed) if device.type == "cuda" else 0.0
    peak, peak_source = peak_tflops(device, s.precision, s.peak_tflops)
    for name in ("ours", "stock"):
        seconds = rounds.seconds[name]
        best, median = min(seconds), statistics.median(seconds)
        row = {
            "seconds_per_round": [round(x, 4) for x in seconds],
            "cpu_share_per_round": [round(x, 3) for x in rounds.cpu_share[name]],
            "tgt_tokens_per_s_best": n_tgt / best, "tgt_tokens_per_s_median": n_tgt / median,
            "tokens_per_s_best": n_all / best, "tokens_per_s_median": n_all / median,
            "losses_finite": all(math.isfinite(x) for x in rounds.losses[name]),
            "last_loss_per_token": rounds.losses[name][-1],
        }
        if device.type == "cuda":
            row["tflops_best"] = flops / best / 1e12
            row["mfu_best"] = row["tflops_best"] / peak if peak else None
        result[name] = row
    result["peak_tflops"], result["peak_tflops_source"] = peak, peak_source
    result["ratio_tgt_tokens_per_s"] = {
        k: result["ours"][f"tgt_tokens_per_s_{k}"] / result["stock"][f"tgt_tokens_per_s_{k}"]
        for k in ("best", "median")
    }
    ok = result["ours"]["losses_finite"] and result["stock"]["losses_finite"]
    ok &= all(math.isfinite(v) for v in result["fixed_batch_loss"].values())
    if s.memory:
        result["memory"] = {
            name: memory_in_subprocess("compare", name, config, chosen, precision=s.precision, seed=s.seed,
                                       device=device)
            for name in ("ours", "stock")
        }
        result["memory"]["ratio_peak"] = result["memory"]["ours"]["peak_mib"] / result["memory"]["stock"]["peak_mib"]
    return result, ok


def print_training(preset: str, r: dict[str, Any], device: torch.device) -> None:
    print(f"\ntraining, preset {preset}: {r['parameters']['ours']:,} parameters, {r['steps']} timed steps x "
          f"{r['repeats']} rounds after {r['warmup']} warm-up; {r['tgt_tokens_per_step']:.0f} target + "
          f"{r['src_tokens_per_step']:.0f} source non-pad tokens per step")
    for name in ("ours", "stock"):
        row = r[name]
        extra = ""
        if "tflops_best" in row:
            mfu = f", MFU {row['mfu_best']:.1%}" if row["mfu_best"] else ""
            extra = f", {row['tflops_best']:.1f} TFLOP/s{mfu}"
        print(f"  {name:>5}: {row['tgt_tokens_per_s_best']:8.0f} tgt tok/s best, "
              f"{row['tgt_tokens_per_s_median']:8.0f} median; "
              f"{row['tokens_per_s_best']:8.0f} src+tgt tok/s best{extra}")
    if device.type == "cpu" and min(min(r[name]["cpu_share_per_round"]) for name in ("ours", "stock")) < 0.8:
        print("  WARNING: this process got under 80% of its threads' time in some rounds: other processes "
              "were using the CPU, so these figures are noisy (see cpu_share_per_round)")
    ratio = r["ratio_tgt_tokens_per_s"]
    print(f"  ours/stock: {ratio['best']:.2f}x (best), {ratio['median']:.2f}x (median)")
    loss = r["fixed_batch_loss"]
    print(f"  loss per token on a fixed batch, same weights: ours {loss['ours']:.5f}, stock {loss['stock']:.5f}")
    if "memory" in r:
        m = r["memory"]
        unit = "peak CUDA memory allocated" if device.type == "cuda" else "peak RSS"
        print(f"  {unit}: ours {m['ours']['peak_mib']:.0f} MiB, stock {m['stock']['peak_mib']:.0f} MiB "
              f"(ours/stock {m['ratio_peak']:.2f})")


def run(args: argparse.Namespace) -> int:
    problem = below_minimum({"--steps": args.steps, "--repeats": args.repeats, "--max-tokens": args.max_tokens,
                             "--beam-size": args.beam_size, "--decode-batch-size": args.decode_batch_size,
                             "--vocab-size": args.vocab_size}, 1)
    problem = problem or below_minimum(
        {"--warmup": args.warmup, "--threads": args.threads, "--decode-sentences": args.decode_sentences}, 0
    )
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    # The stock tutorial recipe (float causal mask, boolean padding masks) makes torch warn; say it once here.
    warnings.filterwarnings("ignore", message="Support for mismatched key_padding_mask and attn_mask")
    warnings.filterwarnings("ignore", message="The PyTorch API of nested tensors is in prototype stage")
    warnings.filterwarnings("ignore", message="enable_nested_tensor is True, but self.use_nested_tensor is False")
    if args.memory_probe is not None:
        return memory_probe(args.memory_probe, fresh_step)
    if args.threads:
        torch.set_num_threads(args.threads)
    data_cfg = DataConfig(data_dir=args.data_dir, src_lang=args.src_lang, tgt_lang=args.tgt_lang,
                          train_split=args.train_split, test_split=args.test_split, vocab_size=args.vocab_size)
    settings = TrainingSettings(steps=args.steps, warmup=args.warmup, repeats=args.repeats, precision=args.precision,
                                seed=args.seed, compile=args.compile, memory=not args.no_memory,
                                profile=args.profile, peak_tflops=args.peak_tflops)
    ok, tokenizer = True, None
    try:
        device = resolve_device(args.device)
        report: dict[str, Any] = {"machine": machine_info(device), "settings": json_settings(vars(args))}
        print(f"device {device} ({report['machine']['device_name']}), {torch.get_num_threads()} threads, "
              f"torch {torch.__version__}, training precision {args.precision}")
        if not args.no_train:
            tokenizer, batches, source = training_data(data_cfg, max_tokens=args.max_tokens, seed=args.seed,
                                                       device=device)
            report["training_data"] = {"source": source, "max_tokens": args.max_tokens,
                                       "pad_to_multiple": batches.pad_to_multiple, "batches_per_epoch": len(batches)}
            print(f"training batches: {source}, max_tokens {args.max_tokens}")
            report["training"] = {}
            for preset in args.presets:
                result, good = benchmark_training(preset, tokenizer, batches, device, settings)
                report["training"][preset] = result
                print_training(preset, result, device)
                ok &= good
        if not args.no_decode:
            try:
                texts = test_sources(data_cfg, args.decode_sentences)
            except DataError as err:
                print(f"\ndecoding skipped: {err}")
                report["decoding"] = {"skipped": str(err)}
            else:
                if args.checkpoint is None and tokenizer is None:  # a checkpoint brings its own vocabulary
                    tokenizer, _, _ = training_data(data_cfg, max_tokens=args.max_tokens, seed=args.seed,
                                                    device=device)
                model, tokenizer, base, what = decoding_model(args.checkpoint, args.decode_preset, tokenizer,
                                                              args.seed, device)
                report["decoding"], good = benchmark_decoding(
                    model, tokenizer, base, what, texts, split=args.test_split, beam_size=args.beam_size,
                    batch_size=args.decode_batch_size, repeats=args.repeats, device=device,
                )
                ok &= good
    except (UserError, ValueError) as err:  # ValueError: e.g. a checkpoint the stock baseline cannot copy
        print(f"error: {err}", file=sys.stderr)
        return 2
    report["checks_passed"] = ok
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"\nwrote {args.json}")
    if not ok:
        print("CHECK FAILED: a non-finite loss, or cached and uncached decoding differ", file=sys.stderr)
    return 0 if ok else 1
