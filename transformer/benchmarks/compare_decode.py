"""The decoding half of ``transformer benchmark compare``: our searches against the stock uncached decoders.

Decodes ``test_2016_flickr`` (1,000 sentences; skipped with a message if the corpus is absent) and reports
sentences/s and generated tokens/s (EOS included), greedy and beam ``--beam-size``, in batches of
``--decode-batch-size`` sorted by length, for our cached search (``decode_batch``), our uncached path, and the
stock uncached decoders (``stock.py``). Our cached and uncached outputs must be identical. Without
``--checkpoint`` the model is an UNTRAINED "small" one with a vocabulary trained on the training split: its
outputs run to the maximum length (a worst case). A multilingual checkpoint decodes in its first direction, its
sources led by that target's tag (said in the report). The stock model gets our model's weights, so the agreement
of their outputs is reported too.
"""

from __future__ import annotations

import dataclasses
import functools
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from transformer.benchmarks.common import measured_direction, timed, untrained_model
from transformer.benchmarks.stock import StockTransformer, stock_beam_search, stock_greedy
from transformer.checkpoint import load_for_inference
from transformer.config import DataConfig, DecodeConfig
from transformer.data.batching import pad_ids
from transformer.data.corpus import load_split
from transformer.data.tokenizer import Tokenizer
from transformer.decoding.search import decode_batch
from transformer.inference import encode_sources
from transformer.model.transformer import Transformer, count_parameters

Decoder = Callable[[torch.Tensor], list[list[int]]]  # (B, S) source -> the best token list of each row


def test_sources(cfg: DataConfig, limit: int) -> list[str]:
    """The non-blank source sentences of ``cfg``'s test split, the first ``limit`` (0: all).

    Raises:
        DataError: the split cannot be read.
    """
    texts = [s for s in load_split(cfg, "test")[0] if s.strip()]
    return texts[:limit] if limit else texts


def decoding_model(
    checkpoint: Path | None, preset: str, tokenizer: Tokenizer | None, seed: int, device: torch.device
) -> tuple[Transformer, Tokenizer, DecodeConfig, str]:
    """The model to decode with, its vocabulary, decoding settings and description: the checkpoint's, else an
    untrained ``preset`` model for ``tokenizer``.

    Raises:
        CheckpointError: the checkpoint cannot be read.
    """
    if checkpoint is not None:
        model, tokenizer, config = load_for_inference(checkpoint, device)
        (src_lang, tgt_lang), measured = measured_direction(config.data)
        what = f"the trained checkpoint {checkpoint} ({src_lang}-{tgt_lang}{measured})"
        return model, tokenizer.for_target(tgt_lang), config.decode, what
    if tokenizer is None:
        raise ValueError("an untrained model needs a tokenizer")
    what = f"an UNTRAINED {preset} model (outputs run to the maximum length: a worst case; speed only)"
    return untrained_model(preset, tokenizer, seed, device), tokenizer, DecodeConfig(), what


def source_batches(tokenizer: Tokenizer, texts: list[str], batch_size: int, device: torch.device) -> list[torch.Tensor]:
    """Padded (B, S) source batches, longest sentences first (as ``TorchTranslator`` makes them)."""
    ids = sorted(encode_sources(tokenizer, texts, max_src_tokens=None), key=len, reverse=True)
    return [pad_ids(ids[start : start + batch_size], device) for start in range(0, len(ids), batch_size)]


def decoders(model: Transformer, stock: StockTransformer, cfg: DecodeConfig) -> dict[str, Decoder]:
    """The three decoders compared: greedy when ``cfg.beam_size`` is 1."""
    lengths = dict(max_len_a=cfg.max_len_a, max_len_b=cfg.max_len_b, min_len=cfg.min_len)

    def ours(use_cache: bool) -> Decoder:
        return lambda src: [h[0].tokens for h in decode_batch(model, src, cfg, use_cache=use_cache)]

    if cfg.beam_size == 1:
        theirs = functools.partial(stock_greedy, stock, **lengths)
    else:
        theirs = functools.partial(
            stock_beam_search, stock, beam_size=cfg.beam_size, length_penalty=cfg.length_penalty, **lengths
        )
    return {"ours_cached": ours(True), "ours_uncached": ours(False), "stock_uncached": theirs}


def decode_all(decoder: Decoder, batches: list[torch.Tensor], device: torch.device) -> tuple[list[list[int]], float]:
    """The best tokens of every sentence of ``batches``, and the wall seconds it took."""
    outputs, seconds, _ = timed(lambda: [tokens for src in batches for tokens in decoder(src)], device)
    return outputs, seconds


def benchmark_decoding(
    model: Transformer, tokenizer: Tokenizer, base: DecodeConfig, what: str, texts: list[str], *, split: str,
    beam_size: int, batch_size: int, repeats: int, device: torch.device,
) -> tuple[dict[str, Any], bool]:
    """Greedy and beam decoding speed of ``texts``: ours with the cache (``repeats`` runs), ours without and the
    stock decoders (one run each: they are slow); and whether our cached and uncached outputs are identical."""
    base = dataclasses.replace(base, n_best=1, no_repeat_ngram_size=0)  # the stock decoders have no n-gram ban
    stock = StockTransformer(model.config).to(device).eval()
    stock.copy_weights_from(model)
    batches = source_batches(tokenizer, texts, batch_size, device)
    n = len(texts)
    result: dict[str, Any] = {
        "model": what, "sentences": n, "split": split, "batch_size": batch_size,
        "max_len": f"{base.max_len_a} * src_len + {base.max_len_b}", "length_penalty": base.length_penalty,
        "parameters": count_parameters(model),
    }
    print(f"\ndecoding {n} sentences of {split} with {what}; {count_parameters(model):,} parameters, "
          f"batches of {batch_size}, max length {result['max_len']}")
    identical = True
    for name, k in (("greedy", 1), (f"beam{beam_size}", beam_size)):
        fns = decoders(model, stock, dataclasses.replace(base, beam_size=k))
        decode_all(fns["ours_cached"], batches[-1:], device)  # warm-up on the shortest batch
        runs = {label: [decode_all(fn, batches, device) for _ in range(repeats if label == "ours_cached" else 1)]
                for label, fn in fns.items()}
        setting: dict[str, Any] = {label: speed_row(label_runs, n) for label, label_runs in runs.items()}
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


def speed_row(runs: list[tuple[list[list[int]], float]], n: int) -> dict[str, Any]:
    """Sentences/s and tokens/s (EOS included), best and median, of runs decoding the same ``n`` sentences."""
    seconds = [s for _, s in runs]
    tokens = sum(len(t) + 1 for t in runs[0][0])  # + EOS
    best, median = min(seconds), statistics.median(seconds)
    return {"seconds": [round(s, 3) for s in seconds], "sentences_per_s_best": n / best,
            "sentences_per_s_median": n / median, "tokens_per_s_best": tokens / best,
            "tokens_per_s_median": tokens / median, "mean_output_tokens": tokens / n}


def print_decoding(name: str, s: dict[str, Any], differ: int) -> None:
    for label in ("ours_cached", "ours_uncached", "stock_uncached"):
        row = s[label]
        print(f"  {name:>7} {label:>14}: {row['sentences_per_s_median']:7.1f} sentences/s median "
              f"({row['sentences_per_s_best']:.1f} best), {row['tokens_per_s_median']:8.0f} tokens/s, "
              f"{row['mean_output_tokens']:.1f} tokens/sentence")
    verdict = "identical" if differ == 0 else f"DIFFER in {differ} sentences"
    print(f"  {name:>7}: ours/stock {s['ratio_vs_stock_median']:.1f}x; our cached and uncached outputs {verdict}; "
          f"{s['agreement_with_stock']:.1%} of sentences equal to stock's")
