"""transformer benchmark: a tiny end-to-end run of each mode, the stock baseline, and the FLOP count."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from transformer.benchmarks import ablation, compare
from transformer.benchmarks.stock import StockTransformer, stock_greedy
from transformer.cli import build_parser
from transformer.config import DecodeConfig, ModelConfig
from transformer.data.batching import Batch
from transformer.decoding.search import decode_batch
from transformer.model.transformer import Transformer

ROOT = Path(__file__).resolve().parents[1]


def test_tiny_run_writes_every_figure_and_passes_its_checks(tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "-m", "transformer", "benchmark", "compare", "--presets", "tiny", "--steps", "2", "--warmup", "1",
         "--repeats", "1", "--data-dir", "data/sample", "--test-split", "test", "--vocab-size", "300",
         "--decode-preset", "tiny", "--decode-sentences", "12", "--beam-size", "3", "--device", "cpu",
         "--threads", "1", "--json", str(out)],
        cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["checks_passed"] is True
    assert {"cpu_count", "device", "device_name", "versions", "torch_threads"} <= set(report["machine"])

    tiny = report["training"]["tiny"]
    for name in ("ours", "stock"):
        assert tiny[name]["tgt_tokens_per_s_best"] > 0 and tiny[name]["tokens_per_s_best"] > 0
        assert tiny[name]["losses_finite"] and math.isfinite(tiny[name]["last_loss_per_token"])
        assert tiny["memory"][name]["peak_mib"] > 0
    losses = tiny["fixed_batch_loss"]
    assert losses["ours"] == pytest.approx(losses["stock"], rel=1e-3)  # same weights: the same model
    assert tiny["ratio_tgt_tokens_per_s"]["median"] > 0

    decoding = report["decoding"]
    assert decoding["sentences"] == 12 and "UNTRAINED" in decoding["model"]
    for setting in ("greedy", "beam3"):
        assert decoding[setting]["cached_equals_uncached"] is True
        for row in ("ours_cached", "ours_uncached", "stock_uncached"):
            assert decoding[setting][row]["sentences_per_s_median"] > 0
            assert decoding[setting][row]["mean_output_tokens"] >= 1


@pytest.mark.filterwarnings("ignore::UserWarning")  # nn.Transformer's own warnings about its masks and fast path
@pytest.mark.parametrize("norm_first", [False, True])
def test_stock_baseline_with_our_weights_computes_the_same_function(norm_first):
    config = ModelConfig.preset("tiny", src_vocab_size=23, tgt_vocab_size=23, norm_first=norm_first)
    torch.manual_seed(0)
    ours = Transformer(config).eval()
    stock = StockTransformer(config).eval()
    stock.copy_weights_from(ours)
    src, tgt = torch.randint(1, 23, (3, 7)), torch.randint(1, 23, (3, 5))
    src[0, 5:] = 0  # padding
    with torch.no_grad():
        torch.testing.assert_close(stock(src, tgt), ours(src, tgt), atol=1e-4, rtol=1e-4)
        ours_greedy = decode_batch(ours, src, DecodeConfig(beam_size=1, max_len_b=4))
        greedy = stock_greedy(stock, src, max_len_a=1.2, max_len_b=4)
    assert greedy == [h[0].tokens for h in ours_greedy]


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_flop_count_is_the_dense_formula_and_equal_for_the_stock_model():
    """FlopCounterMode's count of a forward and backward pass: 6 * parameters * tokens for the dense layers plus
    the attention products (within a few %: biases and norms are not counted), and the same for nn.Transformer."""
    config = ModelConfig.preset("small", src_vocab_size=1000, tgt_vocab_size=1000)
    torch.manual_seed(0)
    ours = Transformer(config)
    stock = StockTransformer(config)
    src, tgt = torch.randint(1, 1000, (4, 13)), torch.randint(1, 1000, (4, 11))
    batch = Batch(src=src, tgt_in=tgt, tgt_out=tgt, indices=torch.arange(4), n_src_tokens=52, n_tgt_tokens=44)
    d, f, vocab, layers = config.d_model, config.d_ff, config.tgt_vocab_size, config.n_encoder_layers
    S, T, s, t = src.numel(), tgt.numel(), src.size(1), tgt.size(1)
    encoder = layers * (4 * d * d + 2 * d * f) * S  # Q/K/V/O and the feed-forward, per source token
    decoder = layers * (6 * d * d + 2 * d * f) * T + layers * 2 * d * d * S + d * vocab * T  # + cross K/V, output
    attention = 2 * d * layers * (S * s + T * t + T * s)  # QK^T and AV (causal not halved)
    expected = 3 * (2 * (encoder + decoder) + 2 * attention)  # forward 2 FLOPs per multiply-add; backward twice that
    counted = compare.training_flops(ours, batch)
    assert counted == pytest.approx(expected, rel=0.05)
    assert compare.training_flops(stock, batch) == pytest.approx(counted, rel=0.01)
    assert all(p.grad is None for p in ours.parameters())  # the count leaves no gradients behind


def test_benchmark_command_lists_its_modes_and_parses_each():
    parser = build_parser()
    for mode in ("compare", "ablate", "decode", "data"):
        args = parser.parse_args(["benchmark", mode])
        assert args.command == "benchmark" and args.mode == mode and callable(args.benchmark)
    with pytest.raises(SystemExit):
        parser.parse_args(["benchmark"])  # a mode is required


def test_ablation_switches_give_the_same_update_without_dropout(tmp_path):
    """Every switch of the ablation computes the same update (dropout off, so no random masks)."""
    config = ModelConfig.preset("tiny", src_vocab_size=50, tgt_vocab_size=50, dropout=0.0)
    src, tgt = torch.randint(1, 50, (3, 7)), torch.randint(1, 50, (3, 6))
    batch = Batch(src=src, tgt_in=tgt, tgt_out=tgt, indices=torch.arange(3), n_src_tokens=21, n_tgt_tokens=18)
    device = torch.device("cpu")
    reference = ablation.build_trainer("reference", config, "fp32", 0, str(tmp_path), device)
    expected = reference.train_step([batch])[0].item()
    for variant in sorted(ablation.VARIANTS):
        trainer = ablation.build_trainer(variant, config, "fp32", 0, str(tmp_path), device)
        loss = trainer.train_step([batch])[0].item()
        assert loss == pytest.approx(expected, rel=1e-5), variant
        for a, b in zip(trainer.model.parameters(), reference.model.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=variant)


def test_synthetic_corpus_has_multi30k_like_lengths():
    src, tgt = compare.synthetic_corpus(seed=0, n=2000)
    assert len(src) == len(tgt) == 2000
    words = [len(s.split()) for s in src]
    assert 3 <= min(words) and max(words) <= 40 and 10 <= sum(words) / len(words) <= 14
