"""One model, several translation directions: a run on the sample corpus validates each direction, a resumed run
equals an uninterrupted one, best.pt follows train.best_direction, and one direction is the bilingual run, bitwise."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from transformer.checkpoint import load_checkpoint
from transformer.cli import main
from transformer.config import Config, DataConfig, ModelConfig, TrainConfig, load_config
from transformer.data.batching import BatchIterator, ParallelDataset
from transformer.data.mixing import MixedBatches, direction_seed
from transformer.data.tokenizer import Tokenizer
from transformer.model.transformer import Transformer
from transformer.training.build import build_trainer
from transformer.training.distributed import DistributedContext
from transformer.training.resume import resume_trainer
from transformer.training.trainer import Trainer, ValidationData

ROOT = Path(__file__).resolve().parents[2]
ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
# A tiny model on the sample corpus, in both directions: about 0.05 s an update on one thread.
TINY = (
    "--config", "configs/sample_multilingual.yaml", "model.preset=tiny", "data.vocab_size=120", "data.max_tokens=512",
    "train.device=cpu", "train.threads=1", "train.log_every=5", "train.warmup_steps=20",
)  # fmt: skip

EN = "one two three four five six seven eight nine ten".split()
DE = "eins zwei drei vier fünf sechs sieben acht neun zehn".split()
PAIRS = [(f"{EN[i]} {EN[j]}", f"{DE[i]} {DE[j]}") for i in range(0, 10, 2) for j in range(1, 10, 3)]  # 20 pairs

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def without_timings(run: Path) -> list[dict]:
    timings = ("time", "tgt_tokens_per_s", "tokens_per_s")
    return [{k: v for k, v in r.items() if k not in timings} for r in records(run)]


# ---- through the command, on the sample corpus ------------------------------------------------------------


def test_a_two_direction_run_validates_each_direction_and_keeps_the_tags(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    run = tmp_path / "run"
    assert main(["train", *TINY, f"train.run_dir={run}", "train.max_steps=24", "train.eval_every=12",
                 "train.eval_max_sentences=4"]) == 0
    out = capsys.readouterr().out
    assert "data: 2 directions (en-de, de-en) from data/sample: 1,040 training pairs (en-de 520, de-en 520" in out
    valid = [r for r in records(run) if r["split"] == "valid"]
    assert [r["step"] for r in valid] == [12, 24]
    for record in valid:
        for key in ("loss", "nll", "bleu"):  # the mean over the directions, and each one's
            assert record[key] == pytest.approx((record[f"en-de/{key}"] + record[f"de-en/{key}"]) / 2)
        assert record["ppl"] == pytest.approx(math.exp(record["nll"]))  # of the mean NLL, as for one direction
        assert record["en-de/loss"] != record["de-en/loss"]
    assert valid[1]["loss"] < valid[0]["loss"]
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert Tokenizer.from_state(state["tokenizer"]).tags == ["de", "en"]
    assert state["train_pairs"] == {"en-de": 520, "de-en": 520}
    assert set(state["data"]["directions"]) == {"en-de", "de-en"}
    best = max(valid, key=lambda r: r["bleu"])["step"]  # best.pt by the mean BLEU
    assert load_checkpoint(run / "checkpoints" / "best.pt")["step"] == best


def test_one_direction_trains_the_bilingual_model_bitwise(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    common = ["--config", "configs/sample.yaml", "model.preset=tiny", "data.vocab_size=120", "train.device=cpu",
              "train.threads=1", "train.max_steps=4", "train.eval_every=2", "train.eval_max_sentences=4",
              "train.log_every=2"]
    runs = {}
    for name, extra in (("plain", []), ("one_direction", ["data.directions=[en-de]"])):
        runs[name] = tmp_path / name
        # Caches of their own: each run trains its vocabulary and prepares its pairs.
        assert main(["train", *common, *extra, f"train.run_dir={runs[name]}",
                     f"data.cache_dir={tmp_path / name / 'cache'}"]) == 0
    a, b = (load_checkpoint(run / "checkpoints" / "last.pt") for run in runs.values())
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][key], b["model"][key]) for key in a["model"])
    assert a["tokenizer"] == b["tokenizer"] and a["data"] == b["data"] and a["train_pairs"] == b["train_pairs"] == 520
    assert without_timings(runs["plain"]) == without_timings(runs["one_direction"])
    assert b["config"]["data"]["directions"] == ["en-de"]


# ---- the trainer, on twenty pairs both ways ----------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Tokenizer:
    src, tgt = zip(*PAIRS)
    return Tokenizer.train(list(src), list(tgt), tmp_path_factory.mktemp("spm"), vocab_size=60, tags=["de", "en"])


def make_trainer(tmp_path: Path, tokenizer: Tokenizer, *, validation: bool = False, **train) -> Trainer:
    data = DataConfig(directions=["en-de", "de-en"], max_tokens=20, pad_to_multiple=1)
    model = ModelConfig.preset("tiny", src_vocab_size=tokenizer.src_vocab_size, tgt_vocab_size=tokenizer.tgt_vocab_size)
    defaults = dict(run_dir=str(tmp_path / "run"), lr=3e-3, warmup_steps=5, log_every=2, eval_bleu=False, keep_last=10,
                    schedule="inverse_sqrt")
    config = Config(model=model, data=data, train=TrainConfig(**{**defaults, **train}))
    torch.manual_seed(config.train.seed)
    en, de = (list(side) for side in zip(*PAIRS))
    texts = {"en-de": (en, de, "de"), "de-en": (de, en, "en")}
    batches, valid = {}, {}
    for index, (name, (src, tgt, lang)) in enumerate(texts.items()):
        pairs = ParallelDataset.from_texts(src, tgt, tokenizer.for_target(lang), data)
        batches[name] = BatchIterator(pairs, 20, shuffle=True, seed=direction_seed(config.train.seed, index),
                                      pad_to_multiple=1)
        valid[name] = ValidationData(BatchIterator(pairs, 512, shuffle=False, pad_to_multiple=1), src, tgt)
    mixed = MixedBatches(batches, seed=config.train.seed)
    return Trainer(config, Transformer(config.model), tokenizer, mixed, valid if validation else None)


def params(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def test_resume_of_mixed_batches_equals_an_uninterrupted_run_bitwise(tmp_path, tokenizer):
    full = make_trainer(tmp_path / "a", tokenizer, max_steps=22)
    assert 5 < len(full.train_batches) < 11  # the run crosses two epochs; the interruption is mid-epoch
    full.fit()
    first = make_trainer(tmp_path / "b", tokenizer, max_steps=len(full.train_batches) + 3)
    first.fit()
    resumed = make_trainer(tmp_path / "b", tokenizer, max_steps=22)
    resume_trainer(resumed)
    assert resumed.train_batches.state_dict() == first.train_batches.state_dict()
    resumed.fit()
    assert resumed.step == 22 and resumed.train_batches.state_dict() == full.train_batches.state_dict()
    a, b = params(full), params(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_validation_scores_each_direction_with_its_tag(tmp_path, tokenizer):
    trainer = make_trainer(tmp_path, tokenizer, validation=True, eval_bleu=True)
    metrics = trainer.validate()
    assert set(metrics) == {f"{p}{k}" for p in ("", "en-de/", "de-en/") for k in ("loss", "nll", "ppl", "bleu")}
    assert metrics["loss"] == pytest.approx((metrics["en-de/loss"] + metrics["de-en/loss"]) / 2)
    assert trainer.model.training


@pytest.mark.parametrize("best_direction, expected", [("", 4), ("de-en", 6)])
def test_best_pt_follows_the_mean_or_the_named_direction(tmp_path, tokenizer, monkeypatch, best_direction, expected):
    trainer = make_trainer(tmp_path, tokenizer, validation=True, max_steps=6, eval_every=2, best_metric="loss",
                           best_direction=best_direction)
    losses = iter([(3.0, 3.0), (1.0, 2.5), (3.0, 2.4)])  # (en-de, de-en): the mean is lowest at step 4, de-en at 6

    def validate() -> dict[str, float]:
        en_de, de_en = next(losses)
        return {"loss": (en_de + de_en) / 2, "en-de/loss": en_de, "de-en/loss": de_en}

    monkeypatch.setattr(trainer, "validate", validate)
    trainer.fit()
    assert load_checkpoint(Path(trainer.config.train.run_dir) / "checkpoints" / "best.pt")["step"] == expected


def test_subword_sampling_works_per_direction_and_keeps_the_tag_first(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    config = load_config(ROOT / "configs" / "sample_multilingual.yaml", [
        f"train.run_dir={tmp_path / 'run'}", "model.preset=tiny", "data.vocab_size=120",
        "data.src_subword_sampling=0.1", "data.tgt_subword_sampling=0.1",
    ])
    trainer = build_trainer(config, DistributedContext())
    tags = {name: trainer.tokenizer.tag_id(name[-2:]) for name in ("en-de", "de-en")}
    for name, batches in trainer.train_batches.directions.items():
        assert batches.resample is not None
        first = next(iter(batches))
        assert set(first.src[:, 0].tolist()) == {tags[name]}


# ---- SIGKILL, then --resume ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_sigkill_then_resume_equals_an_uninterrupted_multilingual_run(tmp_path):
    args = ("train.max_steps=60", "train.eval_every=10", "train.eval_bleu=false")

    def launch(run: Path, *more: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "transformer", "train", *TINY, f"train.run_dir={run}", *args,
                                 *more], cwd=ROOT, env={**os.environ, **ENV}, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    reference = launch(tmp_path / "reference")
    assert reference.wait(timeout=600) == 0, reference.communicate()[1][-3000:]
    killed = tmp_path / "killed"
    process = launch(killed)
    deadline = time.monotonic() + 300
    while not any(r["split"] == "valid" and r["step"] >= 20 for r in (records(killed) if (killed / "metrics.jsonl")
                                                                        .is_file() else [])):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()[1][-3000:]
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)  # mid-epoch, maybe in the middle of writing a checkpoint
    process.wait()
    assert 10 <= load_checkpoint(killed / "checkpoints" / "last.pt")["step"] < 60
    resumed = launch(killed, "--resume")
    assert resumed.wait(timeout=600) == 0, resumed.communicate()[1][-3000:]
    a, b = (load_checkpoint(run / "checkpoints" / "last.pt") for run in (tmp_path / "reference", killed))
    assert a["step"] == b["step"] == 60 and a["data"] == b["data"]
    assert all(torch.equal(a["model"][key], b["model"][key]) for key in a["model"])
    assert without_timings(tmp_path / "reference") == without_timings(killed)
