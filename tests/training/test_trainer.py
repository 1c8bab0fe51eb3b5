"""The training loop and its update step: learning, exact resume, signals, gradient accumulation, faults,
atomic checkpoints."""

from __future__ import annotations

import json
import os
import signal
import sys
import types
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from transformer.checkpoint import load_checkpoint
from transformer.config import Config, DataConfig, DecodeConfig, ModelConfig, TrainConfig
from transformer.data.batching import Batch, BatchIterator, ParallelDataset, SubwordSampler, collate
from transformer.data.tokenizer import Tokenizer
from transformer.decoding.search import greedy_decode
from transformer.errors import DivergenceError
from transformer.model.transformer import Transformer
from transformer.training.loss import Seq2SeqLoss
from transformer.training.optim import build_optimizer
from transformer.training.resume import resume_trainer
from transformer.training.trainer import Trainer, ValidationData
from transformer.training.update import UpdateStep

# 20 pairs: English number words -> German number words (a deterministic mapping a tiny model can learn).
EN = "one two three four five six seven eight nine ten".split()
DE = "eins zwei drei vier fünf sechs sieben acht neun zehn".split()
PAIRS = [(f"{EN[i]} {EN[j]}", f"{DE[i]} {DE[j]}") for i, j in
         [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9), (1, 0), (3, 2), (5, 4), (7, 6), (9, 8),
          (0, 9), (2, 7), (4, 1), (6, 3), (8, 5), (1, 6), (3, 8), (5, 0), (7, 2), (9, 4)]]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Tokenizer:
    src, tgt = zip(*PAIRS)
    return Tokenizer.train(list(src), list(tgt), tmp_path_factory.mktemp("spm"), vocab_size=60, joint=True)


def make_config(tmp_path: Path, tokenizer: Tokenizer, **train) -> Config:
    model = ModelConfig.preset(
        "tiny", src_vocab_size=tokenizer.src_vocab_size, tgt_vocab_size=tokenizer.tgt_vocab_size, dropout=0.1
    )
    defaults = dict(run_dir=str(tmp_path / "run"), lr=3e-3, warmup_steps=5, max_steps=6, log_every=2,
                    eval_bleu=False, keep_last=10, schedule="inverse_sqrt")
    return Config(model=model, data=DataConfig(max_tokens=48, pad_to_multiple=1), train=TrainConfig(**{**defaults, **train}))


def make_trainer(config: Config, tokenizer: Tokenizer, *, validation: bool = False) -> Trainer:
    torch.manual_seed(config.train.seed)
    src, tgt = zip(*PAIRS)
    dataset = ParallelDataset.from_texts(list(src), list(tgt), tokenizer, config.data)
    alphas = config.data.src_subword_sampling, config.data.tgt_subword_sampling
    resample = SubwordSampler(dataset, tokenizer, *alphas, seed=config.train.seed) if any(alphas) else None
    batches = BatchIterator(
        dataset, config.data.max_tokens, shuffle=True, seed=config.train.seed, pad_to_multiple=1, resample=resample
    )
    valid = None
    if validation:
        valid_batches = BatchIterator(dataset, 512, shuffle=False, pad_to_multiple=1)
        valid = ValidationData(valid_batches, list(src), list(tgt))
    return Trainer(config, Transformer(config.model), tokenizer, batches, valid)


def params(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def assert_bitwise_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"


def test_a_tiny_corpus_is_learned_until_greedy_decoding_reproduces_it(tmp_path, tokenizer):
    config = make_config(tmp_path, tokenizer, max_steps=150, lr=5e-3, warmup_steps=20, log_every=10, keep_last=0)
    config.model = replace(config.model, dropout=0.0, d_model=64, d_ff=128)
    config.data = replace(config.data, max_tokens=512)  # the whole corpus in one batch
    trainer = make_trainer(config, tokenizer)
    trainer.fit()
    src, tgt = zip(*PAIRS)
    ids = tokenizer.encode_src(list(src))
    width = max(map(len, ids)) + 1
    batch = torch.zeros(len(ids), width, dtype=torch.long)
    for row, x in enumerate(ids):
        batch[row, : len(x) + 1] = torch.tensor(x + [3])
    out = greedy_decode(trainer.model.eval(), batch, DecodeConfig(max_len_a=1.0, max_len_b=5))
    assert tokenizer.decode_tgt([hyps[0].tokens for hyps in out]) == list(tgt)
    lines = [json.loads(x) for x in (Path(config.train.run_dir) / "metrics.jsonl").read_text().splitlines()]
    nll = [r["nll"] for r in lines if r["split"] == "train"]
    assert nll[-1] < 0.2 and nll[0] > 10 * nll[-1]  # with smoothing 0.1 the NLL floor is about 0.1


@pytest.mark.parametrize("subword_sampling", [0.0, 0.3])
def test_resume_equals_an_uninterrupted_run_bitwise(tmp_path, tokenizer, subword_sampling):
    # Dropout on, several batches per epoch, the interruption mid-epoch and the run crossing an epoch end;
    # with subword sampling, each epoch's own segmentation too.
    def config(run: str, max_steps: int) -> Config:
        c = make_config(tmp_path / run, tokenizer, max_steps=max_steps)
        c.data = replace(c.data, src_subword_sampling=subword_sampling, tgt_subword_sampling=subword_sampling)
        return c

    full = make_trainer(config("a", 9), tokenizer)
    assert len(full.train_batches) >= 3
    full.fit()

    first = make_trainer(config("b", 4), tokenizer)
    first.fit()
    resumed = make_trainer(config("b", 9), tokenizer)
    assert not torch.equal(resumed.model.output.weight, first.model.output.weight)  # really rebuilt
    resume_trainer(resumed)
    assert resumed.step == 4
    resumed.fit()
    assert resumed.step == 9
    assert_bitwise_equal(params(full), params(resumed))
    assert full.optimizer.state_dict()["state"][0]["exp_avg"].equal(resumed.optimizer.state_dict()["state"][0]["exp_avg"])


def test_sigterm_saves_last_checkpoint_and_resume_continues_exactly(tmp_path, tokenizer, monkeypatch):
    full = make_trainer(make_config(tmp_path / "a", tokenizer, max_steps=7), tokenizer)
    full.fit()

    interrupted = make_trainer(make_config(tmp_path / "b", tokenizer, max_steps=7), tokenizer)
    original_loss, calls = interrupted.update.loss_fn, []

    def loss_then_signal(batch):
        calls.append(1)
        if len(calls) == 3:  # during the third update (one batch each)
            os.kill(os.getpid(), signal.SIGTERM)
        return original_loss(batch)

    monkeypatch.setattr(interrupted.update, "loss_fn", loss_then_signal)
    interrupted.fit()
    assert interrupted.step == 3
    saved = load_checkpoint(Path(interrupted.config.train.run_dir) / "checkpoints" / "last.pt")
    assert saved["step"] == 3
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL or callable(signal.getsignal(signal.SIGTERM))

    resumed = make_trainer(make_config(tmp_path / "b", tokenizer, max_steps=7), tokenizer)
    resume_trainer(resumed)
    resumed.fit()
    assert_bitwise_equal(params(full), params(resumed))


def test_validation_keeps_best_checkpoint_and_early_stopping_stops(tmp_path, tokenizer, monkeypatch):
    config = make_config(tmp_path, tokenizer, max_steps=50, eval_every=2, patience=2, best_metric="loss")
    trainer = make_trainer(config, tokenizer, validation=True)
    losses = iter([3.0, 2.0, 2.5, 2.6, 1.0])  # improves, improves, worse, worse -> stop after the 4th
    monkeypatch.setattr(trainer, "validate", lambda: {"loss": next(losses)})
    trainer.fit()
    assert trainer.step == 8
    ckpt = Path(config.train.run_dir) / "checkpoints"
    assert load_checkpoint(ckpt / "best.pt")["step"] == 4
    assert load_checkpoint(ckpt / "last.pt")["step"] == 8
    records = [json.loads(x) for x in (Path(config.train.run_dir) / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in records if r["split"] == "valid"] == [3.0, 2.0, 2.5, 2.6]


def test_the_clock_of_the_records_is_carried_across_resume(tmp_path, tokenizer):
    config = make_config(tmp_path, tokenizer, max_steps=2)
    make_trainer(config, tokenizer).fit()
    saved = load_checkpoint(Path(config.train.run_dir) / "checkpoints" / "last.pt")["elapsed"]
    resumed = make_trainer(replace(config, train=replace(config.train, max_steps=4)), tokenizer)
    resume_trainer(resumed)
    assert resumed.elapsed == saved > 0
    resumed.fit()
    records = [json.loads(x) for x in (Path(config.train.run_dir) / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["split"] == "train"] == [2, 4]
    assert records[-1]["time"] >= round(saved, 1)


def test_validation_computes_loss_and_bleu(tmp_path, tokenizer):
    config = make_config(tmp_path, tokenizer, eval_bleu=True)
    trainer = make_trainer(config, tokenizer, validation=True)
    metrics = trainer.validate()
    assert metrics["loss"] > 0 and metrics["ppl"] > 1 and 0 <= metrics["bleu"] <= 100
    assert trainer.model.training  # put back in training mode


def test_step_checkpoints_keep_only_the_newest(tmp_path, tokenizer):
    config = make_config(tmp_path, tokenizer, max_steps=6, save_every=1, keep_last=2)
    make_trainer(config, tokenizer).fit()
    names = sorted(p.name for p in (Path(config.train.run_dir) / "checkpoints").glob("step_*.pt"))
    assert names == ["step_00000005.pt", "step_00000006.pt"]


def test_interrupted_checkpoint_write_leaves_the_last_good_one(tmp_path, tokenizer, monkeypatch):
    config = make_config(tmp_path, tokenizer, max_steps=2)
    trainer = make_trainer(config, tokenizer)
    trainer.fit()
    last = Path(config.train.run_dir) / "checkpoints" / "last.pt"
    before = last.read_bytes()

    def crash(obj, f, *args, **kwargs):
        f.write(b"partial bytes of a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr("transformer.checkpoint.torch.save", crash)
    trainer.step += 1
    with pytest.raises(OSError, match="disk full"):
        trainer.checkpoints.save(trainer.state_dict(), trainer.model)
    assert last.read_bytes() == before
    assert load_checkpoint(last)["step"] == 2
    assert not list(last.parent.glob(".*.tmp")), "temporary file left behind"


def test_checkpoint_carries_all_state(tmp_path, tokenizer):
    config = make_config(tmp_path, tokenizer, max_steps=3)
    trainer = make_trainer(config, tokenizer)
    trainer.fit()
    state = load_checkpoint(Path(config.train.run_dir) / "checkpoints" / "last.pt")
    for key in ("model", "optimizer", "scheduler", "scaler", "step", "data", "rng", "config", "tokenizer"):
        assert key in state, key
    assert state["data"] == trainer.train_batches.state_dict()
    assert Config.from_dict(state["config"]) == config
    assert Tokenizer.from_state(state["tokenizer"]).encode_src(["one two"]) == tokenizer.encode_src(["one two"])


def test_fp16_on_cpu_is_a_clear_error(tmp_path, tokenizer):
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        make_trainer(make_config(tmp_path, tokenizer, precision="fp16"), tokenizer)


def test_bf16_autocast_trains_on_cpu(tmp_path, tokenizer):
    trainer = make_trainer(make_config(tmp_path, tokenizer, precision="bf16", max_steps=3), tokenizer)
    before = params(trainer)
    trainer.fit()
    after = params(trainer)
    assert all(torch.isfinite(v).all() for v in after.values())
    assert not torch.equal(before["output.weight"], after["output.weight"])


def test_metrics_go_to_tensorboard_when_it_is_installed(tmp_path, tokenizer, monkeypatch):
    scalars = []

    class FakeWriter:
        def __init__(self, log_dir):
            self.log_dir = log_dir

        def add_scalar(self, tag, value, step):
            scalars.append((tag, step))

        def close(self):
            scalars.append(("closed", -1))

    fake = types.ModuleType("torch.utils.tensorboard")
    fake.SummaryWriter = FakeWriter
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake)
    config = make_config(tmp_path, tokenizer, max_steps=4, log_every=2)
    make_trainer(config, tokenizer, validation=True).fit()
    assert ("train/loss", 2) in scalars and ("train/loss", 4) in scalars
    assert ("valid/loss", 4) in scalars
    assert scalars[-1] == ("closed", -1)


# ---- faults: non-finite updates, out of memory, fp16 overflow ------------------------------------------------


def test_a_non_finite_loss_skips_the_update_and_the_run_goes_on(tmp_path, tokenizer, monkeypatch, caplog):
    trainer = make_trainer(make_config(tmp_path, tokenizer, max_steps=4), tokenizer)
    original_loss, calls = trainer.update.loss_fn, []

    def nan_in_update_2(batch):
        loss, nll = original_loss(batch)
        calls.append(1)
        return (loss * float("nan"), nll) if len(calls) == 2 else (loss, nll)

    monkeypatch.setattr(trainer.update, "loss_fn", nan_in_update_2)
    stepped = []
    trainer.optimizer.register_step_post_hook(lambda *_: stepped.append(trainer.step + 1))
    trainer.fit()
    assert trainer.step == 4 and stepped == [1, 3, 4]  # update 2 never reached the optimizer
    assert trainer.update.skipped == {"nonfinite": 1, "oom": 0, "overflow": 0}
    assert trainer.update.skipped_in_a_row == 0
    assert any(r.getMessage().startswith("step 2: the loss is not finite (nan); update skipped") for r in caplog.records)
    saved = load_checkpoint(Path(trainer.config.train.run_dir) / "checkpoints" / "last.pt")
    assert saved["skipped"]["nonfinite"] == 1


def test_out_of_memory_on_one_batch_skips_it_frees_it_and_goes_on(tmp_path, tokenizer, monkeypatch, caplog):
    trainer = make_trainer(make_config(tmp_path, tokenizer, max_steps=3), tokenizer)
    original_loss, calls = trainer.update.loss_fn, []

    def oom_once(batch):
        calls.append(1)
        if len(calls) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return original_loss(batch)

    monkeypatch.setattr(trainer.update, "loss_fn", oom_once)
    before = params(trainer)
    trainer.update([next(iter(trainer.train_batches))])
    assert_bitwise_equal(before, params(trainer))  # nothing applied
    assert all(p.grad is None for p in trainer.model.parameters())  # and nothing held
    assert trainer.update.skipped["oom"] == 1 and trainer.scheduler.last_epoch == 1
    assert any(r.getMessage().startswith("step 1: out of memory") and "data.max_tokens" in r.getMessage()
               for r in caplog.records)
    trainer.fit()
    assert trainer.step == 3 and trainer.update.skipped_in_a_row == 0


def test_fp16_overflows_are_counted_apart_and_never_stop_the_run(tmp_path, tokenizer):
    trainer = make_trainer(make_config(tmp_path, tokenizer, max_steps=3, max_skipped_updates=1), tokenizer)
    # fp16's scaler (fp16 itself needs CUDA), for the update and the checkpoints
    trainer.scaler = trainer.update.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    overflow = {"left": 2}

    def overflow_twice(grad):
        if overflow["left"]:
            overflow["left"] -= 1
            return grad * float("inf")
        return grad

    trainer.model.output.weight.register_hook(overflow_twice)
    trainer.fit()
    assert trainer.step == 3 and trainer.update.skipped == {"nonfinite": 0, "oom": 0, "overflow": 2}
    assert trainer.scaler.get_scale() == 2.0**14  # halved twice


def test_a_non_finite_validation_is_never_the_best(tmp_path, tokenizer, monkeypatch):
    config = make_config(tmp_path, tokenizer, max_steps=4, eval_every=2, best_metric="loss")
    trainer = make_trainer(config, tokenizer, validation=True)
    losses = iter([float("nan"), 2.0])
    monkeypatch.setattr(trainer, "validate", lambda: {"loss": next(losses)})
    trainer.fit()
    assert load_checkpoint(Path(config.train.run_dir) / "checkpoints" / "best.pt")["step"] == 4
    assert trainer.best_score == -2.0 and trainer.bad_evals == 0


def test_non_finite_weights_are_never_saved(tmp_path, tokenizer, caplog):
    config = make_config(tmp_path, tokenizer, max_steps=2)
    trainer = make_trainer(config, tokenizer)
    trainer.fit()
    last = Path(config.train.run_dir) / "checkpoints" / "last.pt"
    before = last.read_bytes()
    with torch.no_grad():
        trainer.model.output.weight[0, 0] = float("inf")
    trainer.step += 1
    trainer.checkpoints.save(trainer.state_dict(), trainer.model, best=True)
    assert last.read_bytes() == before and not (last.parent / "step_00000003.pt").exists()
    assert any("not saving a checkpoint" in r.getMessage() for r in caplog.records)


# ---- the update step, through its public API ----------------------------------------------------------------


def update_parts(tokenizer: Tokenizer) -> tuple[Transformer, Seq2SeqLoss, ParallelDataset]:
    """A seeded tiny model without dropout, its loss and the number pairs."""
    config = make_config(Path("unused"), tokenizer)
    torch.manual_seed(0)
    model = Transformer(replace(config.model, dropout=0.0))
    loss = Seq2SeqLoss(model, smoothing=0.1, precision="fp32", device=torch.device("cpu"))
    src, tgt = zip(*PAIRS)
    return model, loss, ParallelDataset.from_texts(list(src), list(tgt), tokenizer, config.data)


def constant_schedule(optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)


def params_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_accumulating_two_micro_batches_equals_one_batch_of_both(tokenizer):
    # Micro-batches of different sizes and lengths: per-micro-batch normalisation would weight them wrongly.
    a, b = [0, 1, 2], [3, 4, 5, 6, 7, 8, 9, 10, 11, 12]
    changes = []
    for micro in (True, False):
        model, loss, dataset = update_parts(tokenizer)
        before = params_of(model)
        # Plain SGD with lr 1: the parameter change is the gradient itself (Adam's first step is sign-like).
        optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
        update = UpdateStep(model, loss, optimizer, constant_schedule(optimizer))
        batches = [collate(dataset, a), collate(dataset, b)] if micro else [collate(dataset, a + b)]
        loss_sum, nll_sum = update(batches)
        assert loss_sum.dim() == 0 and 0 < nll_sum < loss_sum
        changes.append({k: before[k] - v for k, v in params_of(model).items()})
    for name in changes[0]:
        assert torch.allclose(changes[0][name], changes[1][name], rtol=1e-4, atol=1e-7), name
    assert changes[1]["output.weight"].abs().sum() > 0


def test_a_non_finite_loss_leaves_weights_and_optimizer_state_unchanged(tokenizer, caplog):
    model, loss, dataset = update_parts(tokenizer)
    optimizer = build_optimizer(model, TrainConfig(lr=1e-3))
    scheduler = constant_schedule(optimizer)
    nan = {"on": False}

    def loss_fn(batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        loss_sum, nll_sum = loss(batch)
        return (loss_sum * float("nan"), nll_sum) if nan["on"] else (loss_sum, nll_sum)

    update = UpdateStep(model, loss_fn, optimizer, scheduler, clip_grad_norm=1.0, max_skipped_updates=2)
    batch = collate(dataset, [0, 1, 2, 3])
    update([batch])  # a good update first: the optimizer has state to keep
    weights = params_of(model)
    state = {k: v.clone() for k, v in optimizer.state_dict()["state"][0].items()}
    nan["on"] = True
    update([batch])
    assert_bitwise_equal(weights, params_of(model))
    assert all(torch.equal(v, optimizer.state_dict()["state"][0][k]) for k, v in state.items())
    assert all(p.grad is None for p in model.parameters())
    assert update.skipped == {"nonfinite": 1, "oom": 0, "overflow": 0} and update.skipped_in_a_row == 1
    assert scheduler.last_epoch == 2  # the schedule advances for a skipped update too
    assert any(r.getMessage().startswith("step 2: the loss is not finite (nan); update skipped") for r in caplog.records)
    with pytest.raises(DivergenceError, match=r"training stopped at step 3: the last 2 updates .* train.lr \(now 0.001\)"):
        update([batch])
    nan["on"] = False
    update([batch])
    assert update.skipped_in_a_row == 0 and update.skipped["nonfinite"] == 2
