"""scripts/benchmark.py: a tiny end-to-end run, and its FLOPs formula against torch's own count."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from transformer.config import ModelConfig
from transformer.data.batching import Batch
from transformer.model.transformer import Transformer
from transformer.training.loss import label_smoothed_nll_loss

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import benchmark  # noqa: E402  (benchmarks/ is not a package)
from stock_baseline import StockTransformer, stock_greedy  # noqa: E402


def test_tiny_run_writes_every_figure_and_passes_its_checks(tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "benchmark.py"), "--presets", "tiny", "--steps", "2", "--warmup", "1",
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
        ours_greedy = benchmark.decode_batch(ours, src, benchmark.DecodeConfig(beam_size=1, max_len_b=4))
        greedy = stock_greedy(stock, src, max_len_a=1.2, max_len_b=4)
    assert greedy == [h[0].tokens for h in ours_greedy]


def test_flops_formula_agrees_with_torch_flop_counter():
    config = ModelConfig.preset("small", src_vocab_size=1000, tgt_vocab_size=1000)
    torch.manual_seed(0)
    model = Transformer(config)
    src, tgt = torch.randint(1, 1000, (4, 13)), torch.randint(1, 1000, (4, 11))
    batch = Batch(src=src, tgt_in=tgt, tgt_out=tgt, indices=torch.arange(4), n_src_tokens=52, n_tgt_tokens=44)
    with FlopCounterMode(display=False) as counter:
        loss, _ = label_smoothed_nll_loss(model(src, tgt), tgt, smoothing=0.1, ignore_index=0)
        loss.backward()
    assert benchmark.training_flops(config, batch) == pytest.approx(counter.get_total_flops(), rel=0.05)


def test_synthetic_corpus_has_multi30k_like_lengths():
    src, tgt = benchmark.synthetic_corpus(seed=0, n=2000)
    assert len(src) == len(tgt) == 2000
    words = [len(s.split()) for s in src]
    assert 3 <= min(words) and max(words) <= 40 and 10 <= sum(words) / len(words) <= 14
