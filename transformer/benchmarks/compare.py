"""Training and decoding speed of this project's Transformer against a stock ``torch.nn.Transformer``.

    transformer benchmark compare --presets small --no-decode --steps 20 --repeats 5 --json train.json
    transformer benchmark compare --presets small base --device cuda --json bench.json
    transformer benchmark compare --no-train --checkpoint runs/x/checkpoints/best.pt   # decode a trained model

One process measures both implementations on the same batches (the stock baseline is
``transformer/benchmarks/stock.py``: same sizes, embeddings, positions, tied output, loss and optimizer):

1. Training, per preset: ``Trainer.train_step`` (our real hot path) against the stock step (the same Adam,
   schedule, autocast and loss: label-smoothed cross-entropy summed and divided by the update's target
   tokens), after ``--warmup`` steps, over ``--repeats`` interleaved rounds of ``--steps`` batches (best and
   median reported, and the share of its threads' CPU time the process got: other processes may share
   the machine, and a warning says when they did). Throughput counts non-pad tokens. Batches are
   the Multi30k training split through ``ParallelDataset``/``BatchIterator`` (``--max-tokens``), or
   synthetic ones with Multi30k-like lengths when the corpus is absent (said in the output). On the CPU the
   presets bigger than "small" run a third of the steps. Both losses on a fixed batch, with the same
   weights, are printed; every loss must be finite.
2. Peak training memory, one subprocess per implementation (the same batches): peak RSS on the CPU
   (VmHWM of /proc/self/status on Linux, else ``getrusage``; the peak before the model is built, mostly
   torch itself, is reported too), ``torch.cuda.max_memory_allocated`` on CUDA.
3. On CUDA, achieved TFLOP/s and MFU against ``--peak-tflops`` (detected for A100/H100/H200). The FLOPs of
   a step are counted by ``torch.utils.flop_counter.FlopCounterMode`` over one forward and backward pass of
   our model on each timed batch (matrix products and attention on the padded shapes; causal attention is
   not halved; elementwise work, norms and softmax are not counted). Both models are credited the same FLOPs.
4. Decoding of ``test_2016_flickr`` (1,000 sentences; skipped with a message if the corpus is absent):
   sentences/s and generated tokens/s (EOS included), greedy and beam ``--beam-size``, in batches of
   ``--decode-batch-size`` sorted by length, for our cached search (``decode_batch``), our uncached path,
   and the stock uncached decoders. Our cached and uncached outputs must be identical. Without
   ``--checkpoint`` the model is an UNTRAINED "small" one with a vocabulary trained on the training split:
   its outputs run to the maximum length (a worst case). The stock model gets our model's weights, so the
   agreement of their outputs is reported too.

Exit status: 0 when every check passes, 1 when one fails (non-finite loss, cached != uncached), 2 for
unusable arguments or data. ``--json PATH`` writes every figure with the machine, versions and settings.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from transformer.benchmarks.stock import StockTransformer, stock_beam_search, stock_greedy
from transformer.config import Config, DataConfig, DecodeConfig, ModelConfig, TrainConfig
from transformer.data.batching import Batch, BatchIterator, ParallelDataset, collate
from transformer.data.corpus import DataError, corpus_folder, load_split
from transformer.data.tokenizer import EOS_ID, PAD_ID, Tokenizer
from transformer.decoding.search import decode_batch
from transformer.model.transformer import Transformer, count_parameters
from transformer.training.checkpoint import CheckpointError, load_for_inference
from transformer.training.distributed import DistributedContext, resolve_device
from transformer.training.loss import label_smoothed_nll_loss
from transformer.training.schedule import build_scheduler
from transformer.training.trainer import Trainer, autocast_context, build_optimizer

# Dense peak TFLOP/s by (name fragment, precision); fp32 without TF32 (PyTorch's default for matmuls).
PEAK_TFLOPS = {
    "H100 PCIe": {"bf16": 756.0, "fp16": 756.0, "fp32": 51.0},
    "H100": {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0},
    "H200": {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0},
    "A100": {"bf16": 312.0, "fp16": 312.0, "fp32": 19.5},
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--presets", nargs="+", default=["small", "base"], help="model presets to train")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps per round")
    parser.add_argument("--warmup", type=int, default=3, help="untimed training steps first")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of each timed measurement")
    parser.add_argument("--max-tokens", type=int, default=4096, help="token budget of a training batch")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"), help="training autocast")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave the default)")
    parser.add_argument("--data-dir", default="", help="Multi30k folder (default: $MULTI30K_DIR, else data/multi30k)")
    parser.add_argument("--train-split", default="train")
    parser.add_argument("--test-split", default="test_2016_flickr")
    parser.add_argument("--src-lang", default="en")
    parser.add_argument("--tgt-lang", default="de")
    parser.add_argument("--vocab-size", type=int, default=8000, help="joint SentencePiece vocabulary")
    parser.add_argument("--checkpoint", type=Path, help="decode this trained model (else an untrained small one)")
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
    parser.set_defaults(run=run)


def check_arguments(args: argparse.Namespace) -> str | None:
    """What is wrong with ``args``, or None."""
    for name in ("steps", "repeats", "max_tokens", "beam_size", "decode_batch_size", "vocab_size"):
        if getattr(args, name) < 1:
            return f"--{name.replace('_', '-')} must be >= 1"
    if min(args.warmup, args.threads, args.decode_sentences) < 0:
        return "--warmup, --threads and --decode-sentences must be >= 0"
    return None


# ---------------------------------------------------------------------------------------------- data
def training_data(args: argparse.Namespace, device: torch.device) -> tuple[Tokenizer, BatchIterator, str]:
    """Tokenizer and training batches: Multi30k's training split, else synthetic pairs (and which)."""
    cfg = DataConfig(data_dir=args.data_dir, src_lang=args.src_lang, tgt_lang=args.tgt_lang,
                     train_split=args.train_split, test_split=args.test_split, vocab_size=args.vocab_size)
    try:
        src, tgt = load_split(cfg, "train")
        source = f"{corpus_folder(cfg)} ({args.train_split}, {len(src)} pairs)"
    except DataError as err:
        print(f"note: no training corpus ({err}); using SYNTHETIC batches with Multi30k-like lengths")
        src, tgt = synthetic_corpus(args.seed)
        source = "synthetic (random words, Multi30k-like lengths)"
    with tempfile.TemporaryDirectory() as folder:
        tokenizer = Tokenizer.train(src, tgt, folder, vocab_size=args.vocab_size)
    dataset = ParallelDataset.from_texts(src, tgt, tokenizer, cfg)
    multiple = 8 if device.type == "cuda" else 1  # DataConfig's advice: 8 on GPUs, 1 on CPUs
    batches = BatchIterator(dataset, args.max_tokens, shuffle=True, seed=args.seed, pad_to_multiple=multiple)
    return tokenizer, batches, source


def synthetic_corpus(seed: int, n: int = 29000) -> tuple[list[str], list[str]]:
    """Random sentence pairs over a 5,000-word lexicon, word counts as in Multi30k: a source of about 12
    words (3 to 40), a target of about the same length (within about 15%)."""
    rng = np.random.default_rng(seed)
    lexicon = ["".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), rng.integers(2, 9))) for _ in range(5000)]
    src_len = rng.lognormal(2.45, 0.35, size=n)
    tgt_len = src_len * rng.lognormal(0.0, 0.15, size=n)

    def sentence(k: float) -> str:
        words = rng.zipf(1.3, size=int(np.clip(k, 3, 40))) % len(lexicon)
        return " ".join(lexicon[i] for i in words)

    return [sentence(k) for k in src_len], [sentence(k) for k in tgt_len]


# -------------------------------------------------------------------------------------------- models
def model_config(preset: str, tokenizer: Tokenizer) -> ModelConfig:
    return ModelConfig.preset(preset, src_vocab_size=tokenizer.src_vocab_size, tgt_vocab_size=tokenizer.tgt_vocab_size,
                              share_embeddings=tokenizer.joint, tie_output=True, pad_id=PAD_ID)


def build_pair(config: ModelConfig, seed: int, device: torch.device) -> tuple[Transformer, StockTransformer]:
    """Our model and the stock one, holding the same weights."""
    torch.manual_seed(seed)
    ours = Transformer(config)
    stock = StockTransformer(config)
    stock.copy_weights_from(ours)
    return ours.to(device), stock.to(device)


def train_config(precision: str, run_dir: str, compile: bool = False) -> Config:
    train = TrainConfig(run_dir=run_dir, precision=precision, max_steps=10**6, warmup_steps=4000, compile=compile)
    return Config(train=train)


class StockTrainer:
    """The stock training step: the same optimizer, schedule, autocast and loss as ``Trainer.train_step``."""

    def __init__(self, model: StockTransformer, config: Config, device: torch.device) -> None:
        t = config.train
        self.model, self.device, self.smoothing = model.train(), device, t.label_smoothing
        self.optimizer = build_optimizer(model, config)
        self.scheduler = build_scheduler(self.optimizer, t, d_model=model.config.d_model, total_steps=t.max_steps)
        self.scaler = torch.amp.GradScaler(device.type, enabled=t.precision == "fp16")
        self.autocast = autocast_context(t.precision, device)
        self.forward = torch.compile(model) if t.compile else model  # the same treatment as the Trainer's

    def step(self, batch: Batch) -> torch.Tensor:
        batch = batch.to(self.device, non_blocking=True)
        with self.autocast:  # the AMP recipe: forward and loss under autocast
            logits = self.forward(batch.src, batch.tgt_in)
            loss = F.cross_entropy(logits.flatten(0, 1), batch.tgt_out.flatten(), ignore_index=PAD_ID,
                                   label_smoothing=self.smoothing, reduction="sum")
        self.scaler.scale(loss / max(1, batch.n_tgt_tokens)).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()


def training_steps(
    ours: Transformer, stock: StockTransformer, config: Config, tokenizer: Tokenizer | None, batches: Any,
    device: torch.device,
) -> dict[str, Callable[[Batch], torch.Tensor]]:
    """One training step of each implementation: ours is the ``Trainer``'s own update."""
    trainer = Trainer(config, ours, tokenizer, batches, context=DistributedContext(device=device))
    stock_trainer = StockTrainer(stock, config, device)
    return {"ours": lambda b: trainer.train_step([b])[0], "stock": stock_trainer.step}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_training(
    steps: dict[str, Callable[[Batch], torch.Tensor]], warm: list[Batch], timed: list[Batch], repeats: int,
    device: torch.device,
) -> tuple[dict[str, list[float]], dict[str, list[float]], dict[str, list[float]]]:
    """For each implementation, rounds interleaved: wall seconds per round of ``timed`` batches, the share of
    the threads' time this process got (below about 0.8 on the CPU: other processes took some), the losses."""
    losses: dict[str, list[float]] = {name: [] for name in steps}
    for name, step in steps.items():
        for batch in warm:
            losses[name].append(step(batch).item() / batch.n_tgt_tokens)
    seconds: dict[str, list[float]] = {name: [] for name in steps}
    cpu_share: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            synchronize(device)
            start, cpu_start = time.perf_counter(), time.process_time()
            round_losses = [step(batch) for batch in timed]
            synchronize(device)
            seconds[name].append(time.perf_counter() - start)
            cpu_share[name].append((time.process_time() - cpu_start) / seconds[name][-1] / torch.get_num_threads())
            losses[name].extend(loss.item() / b.n_tgt_tokens for loss, b in zip(round_losses, timed))
    return seconds, cpu_share, losses


def profile_training(step: Callable[[Batch], torch.Tensor], batches: list[Batch], device: torch.device,
                     path: Path) -> None:
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


def training_flops(model: nn.Module, batch: Batch) -> float:
    """FLOPs of one forward and backward pass of ``model`` on ``batch``, counted by ``FlopCounterMode``.

    The loss is plain cross-entropy on the logits (any loss does the same products); the gradients it leaves
    are cleared. Counted: matrix products and attention; not counted: elementwise work, norms, softmax.
    """
    with FlopCounterMode(display=False) as counter:
        logits = model(batch.src, batch.tgt_in)
        F.cross_entropy(logits.flatten(0, 1), batch.tgt_out.flatten(), ignore_index=PAD_ID, reduction="sum").backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def peak_tflops(device: torch.device, precision: str, override: float | None) -> tuple[float | None, str]:
    if override is not None:
        return override, "--peak-tflops"
    if device.type != "cuda":
        return None, "not applicable on the CPU"
    name = torch.cuda.get_device_name(device)
    for fragment, peaks in PEAK_TFLOPS.items():
        if fragment in name:
            return peaks[precision], f"detected from the device name {name!r} (dense {precision})"
    return None, f"unknown for {name!r}: pass --peak-tflops"


def benchmark_training(
    args: argparse.Namespace, preset: str, tokenizer: Tokenizer, batches: BatchIterator, device: torch.device
) -> tuple[dict[str, Any], bool]:
    """Throughput, losses and (in subprocesses) peak memory of both implementations for one preset."""
    config = model_config(preset, tokenizer)
    steps, warmup = args.steps, args.warmup
    if device.type == "cpu" and preset not in ("tiny", "small"):
        steps, warmup = max(1, steps // 3), min(warmup, 1)
    epoch = [collate(batches.dataset, idx, batches.pad_to_multiple) for idx in batches.epoch_batches(0)]
    chosen = [epoch[i % len(epoch)] for i in range(warmup + steps)]
    warm, timed = chosen[:warmup], chosen[warmup:]
    ours, stock = build_pair(config, args.seed, device)
    result: dict[str, Any] = {
        "parameters": {"ours": count_parameters(ours), "stock": count_parameters(stock)},
        "steps": steps, "warmup": warmup, "repeats": args.repeats,
        "tgt_tokens_per_step": sum(b.n_tgt_tokens for b in timed) / steps,
        "src_tokens_per_step": sum(b.n_src_tokens for b in timed) / steps,
        "fixed_batch_loss": fixed_batch_losses(ours, stock, chosen[0], device),
    }
    with tempfile.TemporaryDirectory() as run_dir:
        cfg = train_config(args.precision, run_dir, args.compile)
        steps_of = training_steps(ours, stock, cfg, tokenizer, batches, device)
        seconds, cpu_share, losses = time_training(steps_of, warm, timed, args.repeats, device)
        if args.profile is not None:
            profile_training(steps_of["ours"], timed[:5], device, args.profile.with_name(f"{args.profile.stem}_{preset}.txt"))
    n_tgt = sum(b.n_tgt_tokens for b in timed)
    n_all = n_tgt + sum(b.n_src_tokens for b in timed)
    flops = sum(training_flops(ours, b.to(device)) for b in timed) if device.type == "cuda" else 0.0
    peak, peak_source = peak_tflops(device, args.precision, args.peak_tflops)
    for name in ("ours", "stock"):
        best, median = min(seconds[name]), statistics.median(seconds[name])
        row = {
            "seconds_per_round": [round(x, 4) for x in seconds[name]],
            "cpu_share_per_round": [round(x, 3) for x in cpu_share[name]],
            "tgt_tokens_per_s_best": n_tgt / best, "tgt_tokens_per_s_median": n_tgt / median,
            "tokens_per_s_best": n_all / best, "tokens_per_s_median": n_all / median,
            "losses_finite": all(math.isfinite(x) for x in losses[name]),
            "last_loss_per_token": losses[name][-1],
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
    if not args.no_memory:
        result["memory"] = {
            name: memory_in_subprocess(args, name, config, chosen, device) for name in ("ours", "stock")
        }
        result["memory"]["ratio_peak"] = result["memory"]["ours"]["peak_mib"] / result["memory"]["stock"]["peak_mib"]
    del ours, stock
    return result, ok


# ---------------------------------------------------------------------------------------------- memory
def memory_in_subprocess(
    args: argparse.Namespace, which: str, config: ModelConfig, batches: list[Batch], device: torch.device
) -> dict[str, float]:
    """Peak memory of training ``which`` on ``batches`` in a fresh process (peak RSS is process-wide)."""
    with tempfile.TemporaryDirectory() as folder:
        probe = Path(folder) / "probe.pt"
        torch.save({"which": which, "config": dataclasses.asdict(config), "precision": args.precision,
                    "device": str(device), "threads": torch.get_num_threads(), "seed": args.seed,
                    "batches": [dataclasses.asdict(b) for b in batches]}, probe)
        command = [sys.executable, "-m", "transformer.benchmarks.compare", "--memory-probe", str(probe)]
        out = subprocess.run(command, capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"memory probe of {which} failed:\n{out.stderr[-2000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])


def peak_rss_mib() -> float:
    """Peak resident memory of this process. Linux: VmHWM, since ru_maxrss also counts the parent's memory
    that a child held between fork and exec."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is in bytes on macOS, KiB elsewhere
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def memory_probe(path: Path) -> int:
    """Child process: build one model, train it on the given batches, print its peak memory as JSON."""
    spec = torch.load(path, weights_only=False)
    torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    batches = [Batch(**b) for b in spec["batches"]]
    config = ModelConfig(**spec["config"])
    before = peak_rss_mib()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    torch.manual_seed(spec["seed"])
    with tempfile.TemporaryDirectory() as run_dir:
        cfg = train_config(spec["precision"], run_dir)
        if spec["which"] == "ours":
            # Before fit() the Trainer reads only len() of its batches: the list will do.
            model = Transformer(config).to(device)
            context = DistributedContext(device=device)
            trainer = Trainer(cfg, model, None, batches, context=context)  # type: ignore[arg-type]
            step = lambda b: trainer.train_step([b])[0]  # noqa: E731
        else:
            step = StockTrainer(StockTransformer(config).to(device), cfg, device).step
        for batch in batches:
            step(batch).item()
    result = {"peak_mib": peak_rss_mib(), "rss_before_model_mib": before}
    if device.type == "cuda":
        result = {"peak_mib": torch.cuda.max_memory_allocated(device) / 2**20, "peak_rss_mib": result["peak_mib"]}
    print(json.dumps(result))
    return 0


# -------------------------------------------------------------------------------------------- decoding
def decoding_model(
    args: argparse.Namespace, tokenizer: Tokenizer | None, device: torch.device
) -> tuple[Transformer, Tokenizer, DecodeConfig, str]:
    if args.checkpoint is not None:
        model, tokenizer, config = load_for_inference(args.checkpoint, device)
        return model, tokenizer, config.decode, f"the trained checkpoint {args.checkpoint}"
    if tokenizer is None:
        tokenizer, _, _ = training_data(args, device)
    torch.manual_seed(args.seed)
    model = Transformer(model_config(args.decode_preset, tokenizer)).to(device).eval()
    what = f"an UNTRAINED {args.decode_preset} model (outputs run to the maximum length: a worst case; speed only)"
    return model, tokenizer, DecodeConfig(), what


def source_batches(tokenizer: Tokenizer, texts: list[str], batch_size: int, device: torch.device) -> list[torch.Tensor]:
    """Padded (B, S) source batches, longest sentences first (as ``decode_texts`` does)."""
    ids = [pieces + [EOS_ID] for pieces in tokenizer.encode_src(texts)]
    ids.sort(key=len, reverse=True)
    batches = []
    for start in range(0, len(ids), batch_size):
        rows = ids[start : start + batch_size]
        width = max(map(len, rows))
        batches.append(torch.tensor([r + [PAD_ID] * (width - len(r)) for r in rows], device=device))
    return batches


def timed_decode(fn: Callable[[torch.Tensor], list[list[int]]], batches: list[torch.Tensor], device: torch.device):
    synchronize(device)
    start = time.perf_counter()
    outputs = [tokens for src in batches for tokens in fn(src)]
    synchronize(device)
    return outputs, time.perf_counter() - start


def decoders(
    model: Transformer, stock: StockTransformer, cfg: DecodeConfig
) -> dict[str, Callable[[torch.Tensor], list[list[int]]]]:
    """The three decoders compared, (B, S) source -> best token lists: greedy when ``cfg.beam_size`` is 1."""
    lengths = dict(max_len_a=cfg.max_len_a, max_len_b=cfg.max_len_b, min_len=cfg.min_len)

    def ours(use_cache: bool) -> Callable[[torch.Tensor], list[list[int]]]:
        return lambda src: [h[0].tokens for h in decode_batch(model, src, cfg, use_cache=use_cache)]

    if cfg.beam_size == 1:
        theirs = functools.partial(stock_greedy, stock, **lengths)
    else:
        theirs = functools.partial(
            stock_beam_search, stock, beam_size=cfg.beam_size, length_penalty=cfg.length_penalty, **lengths
        )
    return {"ours_cached": ours(True), "ours_uncached": ours(False), "stock_uncached": theirs}


def benchmark_decoding(
    args: argparse.Namespace, tokenizer: Tokenizer | None, device: torch.device
) -> tuple[dict[str, Any], bool]:
    """Greedy and beam decoding speed: ours with the cache, ours without, the stock decoders; and the checks."""
    data_cfg = DataConfig(data_dir=args.data_dir, src_lang=args.src_lang, tgt_lang=args.tgt_lang,
                          test_split=args.test_split)
    src_texts, _ = load_split(data_cfg, "test")
    src_texts = [s for s in src_texts if s.strip()]
    if args.decode_sentences:
        src_texts = src_texts[: args.decode_sentences]
    model, tokenizer, base, what = decoding_model(args, tokenizer, device)
    base = dataclasses.replace(base, n_best=1, no_repeat_ngram_size=0)  # the stock decoders have no n-gram ban
    stock = StockTransformer(model.config).to(device).eval()
    stock.copy_weights_from(model)
    batches = source_batches(tokenizer, src_texts, args.decode_batch_size, device)
    n = len(src_texts)
    result: dict[str, Any] = {
        "model": what, "sentences": n, "split": args.test_split, "batch_size": args.decode_batch_size,
        "max_len": f"{base.max_len_a} * src_len + {base.max_len_b}", "length_penalty": base.length_penalty,
        "parameters": count_parameters(model),
    }
    print(f"\ndecoding {n} sentences of {args.test_split} with {what}; {count_parameters(model):,} parameters, "
          f"batches of {args.decode_batch_size}, max length {result['max_len']}")
    identical = True
    for name, k in (("greedy", 1), (f"beam{args.beam_size}", args.beam_size)):
        fns = decoders(model, stock, dataclasses.replace(base, beam_size=k))
        timed_decode(fns["ours_cached"], batches[-1:], device)  # warm-up on the shortest batch
        runs = {label: [timed_decode(fn, batches, device) for _ in range(args.repeats if label == "ours_cached" else 1)]
                for label, fn in fns.items()}  # the uncached decoders are slow: one run each
        setting: dict[str, Any] = {}
        for label, label_runs in runs.items():
            seconds = [s for _, s in label_runs]
            tokens = sum(len(t) + 1 for t in label_runs[0][0])  # + EOS
            best, median = min(seconds), statistics.median(seconds)
            setting[label] = {"seconds": [round(s, 3) for s in seconds], "sentences_per_s_best": n / best,
                              "sentences_per_s_median": n / median, "tokens_per_s_best": tokens / best,
                              "tokens_per_s_median": tokens / median, "mean_output_tokens": tokens / n}
        ours_out, uncached_out, stock_out = (runs[label][0][0] for label in fns)
        same = sum(a == b for a, b in zip(ours_out, uncached_out))
        setting["cached_equals_uncached"] = same == n
        setting["agreement_with_stock"] = sum(a == b for a, b in zip(ours_out, stock_out)) / n
        setting["ratio_vs_stock_median"] = (
            setting["ours_cached"]["sentences_per_s_median"] / setting["stock_uncached"]["sentences_per_s_median"]
        )
        identical &= same == n
        result[name] = setting
        print_decoding(name, setting, n - same)
    return result, identical


# ---------------------------------------------------------------------------------------------- output
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


def print_decoding(name: str, s: dict[str, Any], differ: int) -> None:
    for label in ("ours_cached", "ours_uncached", "stock_uncached"):
        row = s[label]
        print(f"  {name:>7} {label:>14}: {row['sentences_per_s_median']:7.1f} sentences/s median "
              f"({row['sentences_per_s_best']:.1f} best), {row['tokens_per_s_median']:8.0f} tokens/s, "
              f"{row['mean_output_tokens']:.1f} tokens/sentence")
    verdict = "identical" if differ == 0 else f"DIFFER in {differ} sentences"
    print(f"  {name:>7}: ours/stock {s['ratio_vs_stock_median']:.1f}x; our cached and uncached outputs {verdict}; "
          f"{s['agreement_with_stock']:.1%} of sentences equal to stock's")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def machine_info(device: torch.device) -> dict[str, Any]:
    import sacrebleu
    import sentencepiece

    info = {"platform": platform.platform(), "processor": platform.processor(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "device": str(device), "python": platform.python_version(),
            "versions": {"torch": torch.__version__, "numpy": np.__version__,
                         "sentencepiece": sentencepiece.__version__, "sacrebleu": sacrebleu.__version__}}
    info["device_name"] = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    try:
        info["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                            cwd=Path(__file__).parent).stdout.strip()
    except OSError:
        pass
    return info


def run(args: argparse.Namespace) -> int:
    problem = check_arguments(args)
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    # The stock tutorial recipe (float causal mask, boolean padding masks) makes torch warn; say it once here.
    warnings.filterwarnings("ignore", message="Support for mismatched key_padding_mask and attn_mask")
    warnings.filterwarnings("ignore", message="The PyTorch API of nested tensors is in prototype stage")
    warnings.filterwarnings("ignore", message="enable_nested_tensor is True, but self.use_nested_tensor is False")
    if args.memory_probe is not None:
        return memory_probe(args.memory_probe)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        device = resolve_device(args.device)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    report: dict[str, Any] = {"machine": machine_info(device), "settings": {k: str(v) if isinstance(v, Path) else v
                                                                           for k, v in vars(args).items() if not callable(v)}}
    print(f"device {device} ({report['machine']['device_name']}), {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, training precision {args.precision}")
    ok, tokenizer = True, None
    try:
        if not args.no_train:
            tokenizer, batches, source = training_data(args, device)
            report["training_data"] = {"source": source, "max_tokens": args.max_tokens,
                                       "pad_to_multiple": batches.pad_to_multiple, "batches_per_epoch": len(batches)}
            print(f"training batches: {source}, max_tokens {args.max_tokens}")
            report["training"] = {}
            for preset in args.presets:
                result, good = benchmark_training(args, preset, tokenizer, batches, device)
                report["training"][preset] = result
                print_training(preset, result, device)
                ok &= good
        if not args.no_decode:
            try:
                vocabulary = tokenizer if args.checkpoint is None else None  # a checkpoint brings its own
                report["decoding"], good = benchmark_decoding(args, vocabulary, device)
                ok &= good
            except DataError as err:
                print(f"\ndecoding skipped: {err}")
                report["decoding"] = {"skipped": str(err)}
    except (CheckpointError, DataError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    report["checks_passed"] = ok
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"\nwrote {args.json}")
    if not ok:
        print("CHECK FAILED: a non-finite loss, or cached and uncached decoding differ", file=sys.stderr)
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="transformer benchmark compare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
