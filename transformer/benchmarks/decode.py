"""Decoding speed on Multi30k test_2016_flickr: greedy and beam search, with and without the KV cache.

    transformer benchmark decode --checkpoint runs/x/checkpoints/best.pt [--json bench.json]
    transformer benchmark decode                     # an UNTRAINED "small" model: speed only

Prints sentences/s and generated tokens/s (EOS included) per setting, and checks that cached and uncached
decoding give identical outputs (exit status 1 if they do not). Runs on ``--threads`` CPU threads (default
2) or on the GPU with ``--device cuda``. Without a checkpoint the model is untrained, so its outputs
usually run to the maximum length: the numbers measure speed per generated token, not a real workload. A
multilingual checkpoint is measured in its first direction (said in the header).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

import torch

from transformer.benchmarks.common import measured_direction, timed, untrained_model
from transformer.checkpoint import load_for_inference
from transformer.config import ConfigError, DataConfig, DecodeConfig
from transformer.data.corpus import DataError, load_split
from transformer.data.tokenizer import Tokenizer
from transformer.errors import CheckpointError
from transformer.inference import TorchTranslator
from transformer.inference.translator import best_tokens
from transformer.model.transformer import Transformer, count_parameters


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint", type=Path,
        help="trained checkpoint (a multilingual one: its first direction); none: an untrained small model",
    )
    parser.add_argument("--data-dir", default="", help="Multi30k folder (default: $MULTI30K_DIR, else data/multi30k)")
    parser.add_argument("--split", default="test_2016_flickr")
    parser.add_argument("--src-lang", help="default: the checkpoint's (en without a checkpoint)")
    parser.add_argument("--tgt-lang", help="default: the checkpoint's (de without a checkpoint)")
    parser.add_argument("--max-sentences", type=int, default=0, help="first N sentences only (0 = all)")
    parser.add_argument("--beam-size", type=int, default=5, help="the beam setting measured besides greedy")
    parser.add_argument("--batch-size", type=int, default=128, help="sentences per decoding batch")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-uncached", action="store_true", help="skip the (slow) uncached runs")
    parser.add_argument("--json", type=Path, help="also write the results here")


def timed_decode(
    model: Transformer, tokenizer: Tokenizer, texts: list[str], cfg: DecodeConfig, device: torch.device, use_cache: bool
) -> tuple[list[list[int]], float]:
    """Best hypothesis tokens of every text, and the wall time of decoding them."""
    translator = TorchTranslator(model, tokenizer, device=device, use_cache=use_cache)
    nbest, seconds, _ = timed(lambda: translator.translate(texts, cfg), device)
    return best_tokens(nbest), seconds


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s: %(message)s")
    torch.set_num_threads(args.threads)
    try:
        device = torch.device(args.device)
        measured = ""
        if args.checkpoint is not None:
            model, tokenizer, config = load_for_inference(args.checkpoint, device)
            direction, measured = measured_direction(config.data)
            tokenizer = tokenizer.for_target(direction[1])  # a multilingual model's sources: the target's tag first
            data_cfg, base = config.data.for_direction(*direction), config.decode
        else:
            data_cfg = DataConfig()
        data_cfg = data_cfg.updated(
            source="folder", data_dir=args.data_dir, test_split=args.split, src_lang=args.src_lang,
            tgt_lang=args.tgt_lang,
        )
        src, tgt = load_split(data_cfg, "test")
        if args.max_sentences:
            src, tgt = src[: args.max_sentences], tgt[: args.max_sentences]
        if args.checkpoint is None:  # a vocabulary trained on the benchmark text itself
            with tempfile.TemporaryDirectory() as folder:
                tokenizer = Tokenizer.train(src, tgt, folder, vocab_size=8000)
            model, base = untrained_model("small", tokenizer, 0, device), DecodeConfig()
        settings = [("greedy", base.updated(beam_size=1, n_best=1, batch_size=args.batch_size))]
        if args.beam_size > 1:
            settings.append((f"beam{args.beam_size}", base.updated(beam_size=args.beam_size, n_best=1,
                                                                    batch_size=args.batch_size)))
    except (CheckpointError, ConfigError, DataError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    what = f"checkpoint {args.checkpoint}" if args.checkpoint else "UNTRAINED small model (speed only, outputs are noise)"
    print(f"{what}: {count_parameters(model):,} parameters; {len(src)} sentences of {args.split} "
          f"({data_cfg.src_lang}-{data_cfg.tgt_lang}{measured}); device {device}, {torch.get_num_threads()} "
          f"threads; max length {base.max_len_a} * src_len + {base.max_len_b}, length penalty {base.length_penalty}")
    timed_decode(model, tokenizer, src[:16], settings[0][1], device, use_cache=True)  # warm-up
    results, identical = [], True
    for name, cfg in settings:
        outputs = {}
        for use_cache in (True, False) if not args.no_uncached else (True,):
            tokens, seconds = timed_decode(model, tokenizer, src, cfg, device, use_cache)
            n_tokens = sum(len(t) + 1 for t in tokens)  # + EOS
            outputs[use_cache] = tokens
            row = {
                "search": name, "cached": use_cache, "seconds": round(seconds, 3),
                "sentences_per_s": round(len(src) / seconds, 2), "tokens_per_s": round(n_tokens / seconds, 1),
                "mean_output_tokens": round(n_tokens / max(1, len(src)), 2),
            }
            results.append(row)
            print(f"{name:>8} {'cached' if use_cache else 'uncached':>8}: {row['sentences_per_s']:8.1f} sentences/s "
                  f"{row['tokens_per_s']:9.1f} tokens/s  ({seconds:.2f} s, {row['mean_output_tokens']} tokens/sentence)")
        if False in outputs:
            differ = sum(a != b for a, b in zip(outputs[True], outputs[False]))
            identical &= differ == 0
            print(f"{name:>8}: cached and uncached outputs {'identical' if differ == 0 else f'DIFFER in {differ} sentences'}")
    if args.json is not None:
        summary = {"model": what, "device": str(device), "threads": torch.get_num_threads(), "sentences": len(src),
                   "identical": identical, "results": results}
        args.json.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return 0 if identical else 1

