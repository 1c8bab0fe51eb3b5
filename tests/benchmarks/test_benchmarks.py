"""transformer benchmark: tiny end-to-end runs of compare and ablate (slow: CI runs them), decode of a multilingual
checkpoint, the stock baseline, the FLOP count, the shared timing and batches."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from transformer.benchmarks.ablation import VARIANTS
from transformer.benchmarks.common import below_minimum
from transformer.benchmarks.flops import training_flops
from transformer.benchmarks.steps import our_update, time_rounds, train_config
from transformer.benchmarks.stock import StockTransformer, stock_greedy
from transformer.benchmarks.train_batches import first_batches, synthetic_corpus
from transformer.cli import build_parser
from transformer.cli.benchmark import MODES
from transformer.config import DataConfig, DecodeConfig, ModelConfig
from transformer.data.batching import Batch, BatchIterator, ParallelDataset
from transformer.data.tokenizer import Tokenizer
from transformer.decoding.search import decode_batch
from transformer.model.transformer import Transformer

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: the stock tests took 8 s on 2 busy cores, 0.6 s on 1

ROOT = Path(__file__).resolve().parents[2]


def benchmark(*args: str) -> subprocess.CompletedProcess:
    """``transformer benchmark ARGS`` on the sample corpus, one thread, as the user runs it."""
    command = [sys.executable, "-m", "transformer", "benchmark", *args, "--data-dir", "data/sample", "--vocab-size",
               "300", "--threads", "1"]
    return subprocess.run(command, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.slow  # 10-17 s: training, two memory subprocesses and three decoders
def test_tiny_compare_writes_every_figure_and_passes_its_checks(tmp_path):
    out = tmp_path / "bench.json"
    result = benchmark("compare", "--presets", "tiny", "--steps", "2", "--warmup", "1", "--repeats", "1",
                       "--test-split", "test", "--decode-preset", "tiny", "--decode-sentences", "12", "--beam-size",
                       "3", "--device", "cpu", "--json", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["checks_passed"] is True
    assert {"cpu_count", "device", "device_name", "versions", "torch_threads"} <= set(report["machine"])

    tiny = report["training"]["tiny"]
    for name in ("ours", "stock"):
        assert tiny[name]["tgt_tokens_per_s_best"] > 0 and tiny[name]["tokens_per_s_best"] > 0
        assert tiny[name]["losses_finite"] and math.isfinite(tiny[name]["last_loss_per_token"])
        memory = tiny["memory"][name]  # from its own subprocess: torch alone, then with the model trained
        assert memory["peak_mib"] > memory["rss_before_model_mib"] > 0
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




@pytest.mark.slow  # 10-17 s: a memory subprocess per variant
def test_tiny_ablation_times_and_measures_every_variant(tmp_path):
    out = tmp_path / "ablation.json"
    result = benchmark("ablate", "--preset", "tiny", "--steps", "1", "--rounds", "2", "--warmup", "0",
                       "--memory-steps", "1", "--json", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(out.read_text())["variants"]
    assert list(rows) == list(VARIANTS)
    assert rows["reference"]["ratio_to_reference_median"] == 1.0
    for row in rows.values():
        assert len(row["seconds_per_round"]) == 2 and row["median_seconds_per_update"] > 0
        assert row["peak_rss_mib"] > 0
    assert "round 2: reference" in result.stdout  # each round's line, in the order of --variants


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
    counted = training_flops(ours, batch)
    assert counted == pytest.approx(expected, rel=0.05)
    assert training_flops(stock, batch) == pytest.approx(counted, rel=0.01)
    assert all(p.grad is None for p in ours.parameters())  # the count leaves no gradients behind


def test_decode_of_a_multilingual_checkpoint_measures_its_first_direction_and_says_so(multilingual_checkpoint):
    command = [sys.executable, "-m", "transformer", "benchmark", "decode", "--checkpoint", str(multilingual_checkpoint),
               "--data-dir", "data/sample", "--split", "test", "--max-sentences", "4", "--beam-size", "2",
               "--threads", "1"]
    result = subprocess.run(command, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "4 sentences of test (en-de, the first direction of en-de, de-en)" in result.stdout.splitlines()[0]
    assert "beam2: cached and uncached outputs identical" in result.stdout


def test_benchmark_command_lists_its_modes_and_parses_each():
    parser = build_parser()
    for name, module, _ in MODES:
        required = ["--checkpoint", "x.pt"] if name == "engines" else []
        args = parser.parse_args(["benchmark", name, *required])
        assert args.command == "benchmark" and args.mode == name and args.benchmark is module.run
    with pytest.raises(SystemExit):
        parser.parse_args(["benchmark"])  # a mode is required


def test_ablation_switches_give_the_same_update_without_dropout():
    """Every switch of the ablation takes its plain path and computes the same update (dropout off: no masks)."""
    config = ModelConfig.preset("tiny", src_vocab_size=50, tgt_vocab_size=50, dropout=0.0)
    src, tgt = torch.randint(1, 50, (3, 7)), torch.randint(1, 50, (3, 6))
    batch = Batch(src=src, tgt_in=tgt, tgt_out=tgt, indices=torch.arange(3), n_src_tokens=21, n_tgt_tokens=18)
    device, train = torch.device("cpu"), train_config("fp32")
    models, losses = {}, {}
    for name, variant in VARIANTS.items():
        torch.manual_seed(0)
        models[name] = Transformer(config)
        update = our_update(models[name], train, device, fused_loss=variant.fused_loss, fused_adam=variant.fused_adam)
        assert update.loss_fn.fused is variant.fused_loss
        assert bool(update.optimizer.defaults["fused"]) is (variant.fused_adam is not False)  # None: fused on CPU
        losses[name] = update([batch])[0].item()
    for name in VARIANTS:
        assert losses[name] == pytest.approx(losses["reference"], rel=1e-5), name
        for a, b in zip(models[name].parameters(), models["reference"].parameters()):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=name)


def test_time_rounds_interleaves_and_rotates_the_steps():
    calls = []

    def step(name):
        def run(batch):
            calls.append(name)
            return torch.tensor(2.0 * batch.n_tgt_tokens)  # a summed loss of 2 per token
        return run

    batch = Batch(src=torch.ones(1, 2), tgt_in=torch.ones(1, 3), tgt_out=torch.ones(1, 3), indices=torch.arange(1),
                  n_src_tokens=2, n_tgt_tokens=3)
    rounds = time_rounds({"a": step("a"), "b": step("b")}, [batch], [batch, batch], 3, torch.device("cpu"),
                         rotate=True)
    assert calls == ["a", "b"] + ["a", "a", "b", "b"] + ["b", "b", "a", "a"] + ["a", "a", "b", "b"]
    for name in ("a", "b"):
        assert len(rounds.seconds[name]) == len(rounds.cpu_share[name]) == 3
        assert rounds.losses[name] == [2.0] * 7  # the warm-up update, then 2 per round


def test_first_batches_start_again_when_the_epoch_is_short(tmp_path):
    src, tgt = synthetic_corpus(seed=0, n=40)
    cfg = DataConfig(vocab_size=200)
    tokenizer = Tokenizer.train(src, tgt, tmp_path, vocab_size=200)
    batches = BatchIterator(ParallelDataset.from_texts(src, tgt, tokenizer, cfg), 300, shuffle=True, seed=0)
    n = len(batches.epoch_batches(0))
    chosen = first_batches(batches, n + 2)
    assert len(chosen) == n + 2 and n >= 2
    assert chosen[n] is chosen[0] and chosen[n + 1] is chosen[1]
    assert sum(len(b) for b in chosen[:n]) == len(batches.dataset)  # the whole epoch, each pair once


def test_below_minimum_names_the_first_option_too_small():
    assert below_minimum({"--steps": 1, "--repeats": 3}, 1) is None
    assert below_minimum({"--steps": 0, "--repeats": -1}, 1) == "--steps must be at least 1, got 0"


def test_synthetic_corpus_has_multi30k_like_lengths():
    src, tgt = synthetic_corpus(seed=0, n=2000)
    assert len(src) == len(tgt) == 2000
    words = [len(s.split()) for s in src]
    assert 3 <= min(words) and max(words) <= 40 and 10 <= sum(words) / len(words) <= 14
