"""Decoding engines side by side: our PyTorch decoder and CTranslate2 (float32 and int8) on one split.

    transformer benchmark engines --checkpoint runs/multi30k_en_de/checkpoints/avg10.pt --json engines.json

The checkpoint is exported to CTranslate2 twice, float32 and int8 (``transformer.inference.export_ctranslate2``,
into a temporary folder). Each engine translates the split (default: the checkpoint's test split, e.g.
Multi30k test_2016_flickr) greedily and with beam ``--beam-size``, each at its best use of ``--threads`` cores:
our decoder on 1 to ``threads`` PyTorch threads; CTranslate2 with every split of the threads into ``inter_threads``
translators of ``intra_threads`` threads each (1x2 and 2x1 for 2); the fastest setting is reported.
Both engines get the same decoding settings (the checkpoint's, ``--length-penalty`` and ``--batch-size`` on
top) and batches of ``--batch-size`` sentences sorted by length. A multilingual checkpoint is measured in its
first direction (said in the header).

Each row: sentences/s and target tokens/s (generated tokens, EOS included, as ``benchmark decode``) from the
median of ``--repeats`` timed runs after a warm-up, sacreBLEU (cased, 13a, as ``evaluate``), how many outputs
are identical to our decoder's with the same search, and the speed against our decoder with the same search.
Exit status 1 when a check fails: CTranslate2 float32 greedy must give our greedy output on at least 99% of
the sentences, and int8 must stay within 0.3 BLEU of float32 for each search.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from transformer.benchmarks.common import below_minimum, measured_direction
from transformer.config import ConfigError, DecodeConfig
from transformer.data.corpus import load_split
from transformer.data.tokenizer import Tokenizer
from transformer.decoding.search import Hypothesis
from transformer.evaluation import corpus_scores
from transformer.inference import export_ctranslate2, load_translator, translator_for
from transformer.inference.translator import best_tokens

ROLES = ("train", "valid", "test")
MIN_GREEDY_AGREEMENT = 0.99  # share of sentences where CTranslate2 float32 greedy = our greedy
MAX_INT8_BLEU_LOSS = 0.3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, type=Path,
                        help="a trained checkpoint (a multilingual one: its first direction)")
    parser.add_argument("--split", default="test", help="train, valid, test, or a split name (default: test)")
    parser.add_argument("--data-dir", help="corpus folder (default: the checkpoint's data.data_dir)")
    parser.add_argument("--max-sentences", type=int, default=0, help="first N sentences only (0 = all)")
    parser.add_argument("--beam-size", type=int, default=5, help="the beam setting measured besides greedy")
    parser.add_argument("--length-penalty", type=float, help="GNMT alpha (default: the checkpoint's)")
    parser.add_argument("--batch-size", type=int, help="sentences per batch (default: the checkpoint's)")
    parser.add_argument("--threads", type=int, default=2, help="cores each engine may use (default 2)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per row; the median is reported")
    parser.add_argument("--json", type=Path, help="also write every figure here")


def thread_splits(threads: int) -> list[tuple[int, int]]:
    """Every (inter_threads, intra_threads) with inter * intra = threads, fewest translators first."""
    return [(inter, threads // inter) for inter in range(1, threads + 1) if threads % inter == 0]


def measure(
    engine: str, weights: str, search: str, threads: str, decode: Callable[[], list[list[Hypothesis]]], repeats: int,
    tokenizer: Tokenizer, references: list[str],
) -> dict[str, Any]:
    """One row of the table, from the median of ``repeats`` timed runs of ``decode`` after a warm-up run (the
    comparisons with our decoder are added by ``run``); its line is printed as tried."""
    tokens = best_tokens(decode())
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        decode()
        seconds.append(time.perf_counter() - start)
    median = statistics.median(seconds)
    n_tokens = sum(len(t) + 1 for t in tokens)  # + EOS
    row = {
        "engine": engine, "weights": weights, "search": search, "threads": threads,
        "seconds": [round(s, 3) for s in seconds], "seconds_median": round(median, 3),
        "sentences_per_s": round(len(tokens) / median, 1), "tokens_per_s": round(n_tokens / median, 1),
        "bleu": round(corpus_scores(tokenizer.decode_tgt(tokens), references)["bleu"], 2), "tokens": tokens,
    }  # fmt: skip
    print("   tried " + _line(row), flush=True)
    return row


def fastest(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The row of the fastest thread setting, printed."""
    best = min(rows, key=lambda row: row["seconds_median"])
    print(_line(best), flush=True)
    return best


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s: %(message)s")
    problem = below_minimum({"--max-sentences": args.max_sentences}, 0) or below_minimum(
        {"--repeats": args.repeats, "--threads": args.threads, "--beam-size": args.beam_size}, 1
    )
    if problem is not None:
        raise ConfigError(problem)
    translator, config = load_translator("torch", checkpoints=[args.checkpoint], device="cpu")
    direction, measured = measured_direction(config.data)
    translator = translator_for(translator, config.data, direction)
    tokenizer = translator.tokenizer
    changes = {"data_dir": args.data_dir} if args.data_dir else {}
    role = args.split
    if role not in ROLES:  # a split name of the corpus, read in the test role
        changes["test_split"], role = args.split, "test"
    data_cfg = dataclasses.replace(config.data.for_direction(*direction), **changes)
    src, refs = load_split(data_cfg, role)
    if args.max_sentences:
        src, refs = src[: args.max_sentences], refs[: args.max_sentences]
    given = {"length_penalty": args.length_penalty, "batch_size": args.batch_size}
    base = config.decode.updated(n_best=1, **given)
    searches: list[tuple[str, DecodeConfig]] = [("greedy", base.updated(beam_size=1))]
    if args.beam_size > 1:
        searches.append((f"beam{args.beam_size}", base.updated(beam_size=args.beam_size)))
    split_name = {"train": data_cfg.train_split, "valid": data_cfg.valid_split, "test": data_cfg.test_split}[role]
    print(
        f"{args.checkpoint}: {len(src)} sentences of {split_name} "
        f"({data_cfg.src_lang}-{data_cfg.tgt_lang}{measured}); "
        f"{args.threads} threads of {os.cpu_count()} cores; length penalty {base.length_penalty}, batches of "
        f"{base.batch_size}, max length {base.max_len_a} * src_len + {base.max_len_b}; median of {args.repeats} runs"
    )

    rows, threads_before = [], torch.get_num_threads()
    for search, cfg in searches:
        tried = []
        for threads in range(1, args.threads + 1):  # a small model may decode faster on fewer threads
            torch.set_num_threads(threads)
            decode = functools.partial(translator.translate, src, cfg)
            tried.append(measure("torch", "float32", search, f"{threads} intra-op", decode, args.repeats,
                                 tokenizer, refs))
        rows.append(fastest(tried))
    torch.set_num_threads(threads_before)
    with tempfile.TemporaryDirectory(prefix="engines-") as tmp:
        for weights in ("float32", "int8"):
            folder = export_ctranslate2(args.checkpoint, Path(tmp) / weights, quantization=weights)
            for search, cfg in searches:
                tried = []
                for inter, intra in thread_splits(args.threads):
                    ct2, _ = load_translator("ctranslate2", model_dir=folder, inter_threads=inter, intra_threads=intra)
                    ct2 = translator_for(ct2, config.data, direction)
                    decode = functools.partial(ct2.translate, src, cfg)
                    tried.append(measure("ctranslate2", weights, search, f"{inter}x{intra}", decode, args.repeats,
                                         tokenizer, refs))
                rows.append(fastest(tried))

    ours = {row["search"]: row for row in rows if row["engine"] == "torch"}
    for row in rows:
        reference = ours[row["search"]]
        row["same_as_torch"] = sum(a == b for a, b in zip(row["tokens"], reference["tokens"]))
        row["speedup_vs_torch"] = round(reference["seconds_median"] / row["seconds_median"], 2)
    checks = _checks(rows, len(src))
    print()
    print(markdown_table(rows, len(src)))
    for name, passed in checks.items():
        print(f"{'ok  ' if passed else 'FAIL'} {name}")
    if args.json is not None:
        summary = {
            "checkpoint": str(args.checkpoint), "split": split_name, "sentences": len(src), "threads": args.threads,
            "cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine(),
            "decode": dataclasses.asdict(base), "repeats": args.repeats, "checks": checks,
            "rows": [{k: v for k, v in row.items() if k != "tokens"} for row in rows],
        }  # fmt: skip
        args.json.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return 0 if all(checks.values()) else 1


def _checks(rows: list[dict[str, Any]], sentences: int) -> dict[str, bool]:
    by_key = {(r["engine"], r["weights"], r["search"]): r for r in rows}
    checks = {
        f"ctranslate2 float32 greedy = ours on >= {MIN_GREEDY_AGREEMENT:.0%} of sentences":
            by_key["ctranslate2", "float32", "greedy"]["same_as_torch"] >= MIN_GREEDY_AGREEMENT * sentences,
    }  # fmt: skip
    for (engine, weights, search), row in by_key.items():
        if weights == "int8":
            float32 = by_key[engine, "float32", search]["bleu"]
            name = f"int8 {search} BLEU ({row['bleu']:.2f}) at most {MAX_INT8_BLEU_LOSS} below float32 ({float32:.2f})"
            checks[name] = float32 - row["bleu"] <= MAX_INT8_BLEU_LOSS
    return checks


def _line(row: dict[str, Any]) -> str:
    return (
        f"{row['engine']:>11} {row['weights']:>7} {row['search']:>6} {row['threads']:>11}: "
        f"{row['sentences_per_s']:8.1f} sentences/s {row['tokens_per_s']:9.1f} tokens/s  BLEU {row['bleu']:5.2f}  "
        f"({row['seconds_median']:.2f} s)"
    )


def markdown_table(rows: list[dict[str, Any]], sentences: int) -> str:
    """The rows as the Markdown table of docs/PERFORMANCE.md."""
    lines = [
        "| engine | weights | search | threads | sentences/s | target tokens/s | BLEU | same output as ours "
        "| speed vs ours |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['engine']} | {r['weights']} | {r['search']} | {r['threads']} | {r['sentences_per_s']:,.1f} | "
            f"{r['tokens_per_s']:,.0f} | {r['bleu']:.2f} | {r['same_as_torch']:,} of {sentences:,} | "
            f"{r['speedup_vs_torch']:.2f}x |"
        )
    return "\n".join(lines)
