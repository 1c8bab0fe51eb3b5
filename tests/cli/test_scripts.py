"""The command-line tools, end to end: train -> translate -> evaluate -> average, and their user errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from transformer.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def run(command: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "transformer", command, *args],
        cwd=ROOT, env=ENV, input=stdin, capture_output=True, text=True, timeout=900,
    )


def test_train_rejects_an_unknown_key_and_lists_the_valid_ones():
    result = run("train", "--config", "configs/sample.yaml", "train.learning_rate=1e-3")
    assert result.returncode == 2
    assert "unknown key(s) ['learning_rate']" in result.stderr and "warmup_steps" in result.stderr
    assert "Traceback" not in result.stderr


def test_train_reports_a_missing_corpus_folder(tmp_path):
    result = run("train", "--config", "configs/sample.yaml", f"train.run_dir={tmp_path}/run",
                 "--data-dir", str(tmp_path / "nowhere"))
    assert result.returncode == 2
    assert "nowhere" in result.stderr and "Traceback" not in result.stderr


def test_train_reports_a_missing_config_file(tmp_path):
    result = run("train", "--config", str(tmp_path / "missing.yaml"))
    assert result.returncode == 2 and "config file not found" in result.stderr


@pytest.mark.slow
def test_sample_quickstart_trains_translates_and_evaluates(tmp_path):
    run_dir = tmp_path / "sample"
    trained = run("train", "--config", "configs/sample.yaml", f"train.run_dir={run_dir}", "train.max_epochs=12",
                  "train.eval_every=0", "train.keep_last=3")
    assert trained.returncode == 0, trained.stderr[-3000:]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    valid = [r for r in records if r["split"] == "valid"]
    assert len(valid) == 12
    assert valid[-1]["loss"] < valid[0]["loss"] - 1.0  # it learns
    assert valid[-1]["bleu"] > valid[0]["bleu"] + 10
    best = run_dir / "checkpoints" / "best.pt"
    assert best.is_file() and (run_dir / "checkpoints" / "last.pt").is_file()
    assert len(list((run_dir / "checkpoints").glob("step_*.pt"))) == 3

    # Resuming a finished run does nothing more and exits cleanly.
    again = run("train", "--config", "configs/sample.yaml", f"train.run_dir={run_dir}", "train.max_epochs=12",
                "train.eval_every=0", "train.keep_last=3", "--resume")
    assert again.returncode == 0, again.stderr[-2000:]

    translated = run("translate", "--checkpoint", str(best), "--beam-size", "3",
                     stdin="A dog is running on the beach.\n\nA man is reading a newspaper.\n")
    assert translated.returncode == 0, translated.stderr[-2000:]
    lines = translated.stdout.split("\n")
    assert len(lines) == 4 and lines[1] == "" and lines[3] == ""  # line count kept; empty in -> empty out
    assert lines[0] and lines[2] and "▁" not in translated.stdout and "<" not in translated.stdout

    hyp = tmp_path / "hyp.de"
    evaluated = run("evaluate", "--checkpoint", str(best), "--split", "test", "--output", str(hyp))
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:" in evaluated.stdout
    assert len(hyp.read_text().splitlines()) == 40

    rescored = run("evaluate", "--hypotheses", str(hyp), "--references", "data/sample/test.de")
    assert rescored.returncode == 0
    bleu_line = [line for line in evaluated.stdout.splitlines() if line.startswith("BLEU")][0]
    assert bleu_line in rescored.stdout  # the same score from the file as from the model

    averaged = run("average", "--run-dir", str(run_dir), "--last", "3", "--output", str(tmp_path / "avg.pt"))
    assert averaged.returncode == 0, averaged.stderr
    assert run("translate", "--checkpoint", str(tmp_path / "avg.pt"), "A dog.").returncode == 0


@pytest.mark.slow
def test_torchrun_two_cpu_processes_train_and_stop_on_the_same_update(tmp_path):
    # gloo on CPU; both ranks must stop after the same update (a mismatch would hang the collective and hit the
    # timeout).
    run_dir = tmp_path / "ddp"
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "transformer", "train", "--config", "configs/sample.yaml", "--run-dir", str(run_dir),
         "train.max_steps=4", "train.log_every=4", "train.threads=1"],
        cwd=ROOT, env={**ENV, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "done at step 4;" in result.stdout
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["step"] == 4
