"""The error contract of the ``transformer`` command: a user's mistake is one ``error: ...`` line, exit status 2.

Every mistake below runs twice: through ``transformer.cli.main`` in-process (fast: no interpreter and torch
start-up), and through the real command in a subprocess. The subprocess runs of three of them are in the fast
suite (a device mistake, stdin, a foreign checkpoint); the others are marked slow, because each start-up
costs seconds of CPU, and a training step in a fresh process several more (run them with ``-m slow``).
"""

from __future__ import annotations

import gzip
import io
import os
import random
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from transformer.cli import main

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "data" / "sample"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
# One update of the tiny model on the sample corpus; short decoding so that evaluate and translate are quick.
TRAIN = (
    "train", "--config", "configs/sample.yaml", "model.preset=tiny", "data.vocab_size=100", "train.max_steps=1",
    "train.eval_bleu=false", "train.device=cpu", "decode.max_len_a=0", "decode.max_len_b=3",
)  # fmt: skip
STDIN = b"A dog runs.\nTwo men sing.\n\xff\xfe bad\nA cat.\n"  # line 3 is not UTF-8


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A trained run (one update) and the broken inputs of the cases below."""
    tmp = tmp_path_factory.mktemp("errors")
    run = tmp / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(ROOT)
        assert main([*TRAIN, f"train.run_dir={run}"]) == 0
    paths = {"tmp": tmp, "run": run, "checkpoint": run / "checkpoints" / "last.pt"}
    gz = paths["gz"] = tmp / "gz"  # train.en.gz cut in half
    gz.mkdir()
    for name in ("train.en", "train.de", "val.en", "val.de"):
        (gz / f"{name}.gz").write_bytes(gzip.compress((SAMPLE / name).read_bytes()))
    data = (gz / "train.en.gz").read_bytes()
    (gz / "train.en.gz").write_bytes(data[: len(data) // 2])
    empty = paths["empty"] = tmp / "empty"  # train.en and train.de have blank lines only
    empty.mkdir()
    for lang in ("en", "de"):
        (empty / f"train.{lang}").write_text("\n  \n\n", encoding="utf-8")
        shutil.copy(SAMPLE / f"val.{lang}", empty / f"val.{lang}")
    paths["random"] = tmp / "x.pt"
    paths["random"].write_bytes(random.Random(0).randbytes(1000))
    state = torch.load(paths["checkpoint"], weights_only=True)
    state["config"]["data"]["source"] = "multi30k"  # as checkpoints written before the rename say
    state["config"]["model"]["pad_id"] = 0  # and before the padding id became a constant
    paths["old"] = tmp / "old.pt"
    torch.save(state, paths["old"])
    return paths


def blocked_run(files: dict[str, Path], name: str) -> Path:
    """A fresh run folder with the vocabulary of the trained run and a file where checkpoints/ goes."""
    run = files["tmp"] / name
    shutil.copytree(files["run"] / "tokenizer", run / "tokenizer")
    (run / "checkpoints").write_text("not a folder")
    return run


@dataclass(frozen=True)
class Case:
    """A mistake: the command line (from the fixture's files), what the error line names, the stdin."""

    args: Callable[[dict[str, Path]], tuple[str, ...]]
    names: Callable[[dict[str, Path]], tuple[str, ...]]
    stdin: bytes = b""
    fast: bool = False  # run through the subprocess in the fast suite too


NO_CUDA = not torch.cuda.is_available()
MISSING_GPU = "cuda" if NO_CUDA else "cuda:99"  # with a GPU, a device number it does not have
CASES = {
    # 1.
    "cuda_device": Case(
        lambda f: (*TRAIN, f"train.run_dir={f['tmp'] / 'r1'}", f"train.device={MISSING_GPU}"),
        lambda f: ("train.device=cuda", "train.device=cpu") if NO_CUDA else ("train.device=cuda:99",),
        fast=True,
    ),
    "unknown_device": Case(
        lambda f: (*TRAIN, f"train.run_dir={f['tmp'] / 'r1'}", "train.device=gpu0"),
        lambda f: ("train.device=gpu0 is not a device", "cpu"),
    ),
    # 2.
    "fp16_on_cpu": Case(
        lambda f: (*TRAIN, f"train.run_dir={f['tmp'] / 'r2'}", "train.precision=fp16"),
        lambda f: ("train.precision=fp16", "bf16"),
    ),
    # 3. The trained run has data.vocab_size=100.
    "vocab_changed": Case(
        lambda f: (*TRAIN, f"train.run_dir={f['run']}", "data.vocab_size=120"),
        lambda f: ("data.vocab_size=120", "data.vocab_size=100", "train.run_dir", str(f["run"] / "tokenizer")),
    ),
    # 4. The sample corpus's characters and the 4 special pieces need 51 ids.
    "vocab_too_small": Case(
        lambda f: (*TRAIN, f"train.run_dir={f['tmp'] / 'r4'}", "data.vocab_size=5"),
        lambda f: ("data.vocab_size=5", "data.vocab_size=51 or more"),
    ),
    # 5.
    "noam_without_warmup": Case(
        lambda f: (*TRAIN, f"train.run_dir={f['tmp'] / 'r5'}", "train.schedule=noam", "train.warmup_steps=0"),
        lambda f: ("train.warmup_steps", "train.schedule=noam"),
    ),
    "negative_keep_last": Case(lambda f: (*TRAIN, "train.keep_last=-1"), lambda f: ("train.keep_last must be >= 0",)),
    # 6.
    "truncated_gz": Case(
        lambda f: (*TRAIN, f"train.run_dir={f['tmp'] / 'r6'}", f"data.data_dir={f['gz']}"),
        lambda f: (str(f["gz"] / "train.en.gz"), "gzip"),
    ),
    # 7.
    "blank_training_files": Case(
        lambda f: (*TRAIN, f"train.run_dir={f['tmp'] / 'r7'}", f"data.data_dir={f['empty']}"),
        lambda f: (str(f["empty"] / "train.en"), str(f["empty"] / "train.de"), "no sentence pairs"),
    ),
    # 8. The checkpoint (after one update), and the tokenizer in a run folder under a regular file.
    "checkpoint_not_writable": Case(
        lambda f: (*TRAIN, f"train.run_dir={blocked_run(f, 'r8-' + os.urandom(4).hex())}"),
        lambda f: ("cannot write checkpoint", "last.pt", "File exists"),
    ),
    "tokenizer_not_writable": Case(
        lambda f: (*TRAIN, f"train.run_dir={f['random'] / 'run'}"),
        lambda f: (str(f["random"] / "run" / "tokenizer"), "Not a directory"),
    ),
    # 9. The translations of lines 1 and 2 are printed (checked in the tests).
    "stdin_not_utf8": Case(
        lambda f: ("translate", "--checkpoint", str(f["checkpoint"])), lambda f: ("stdin line 3", "UTF-8"), STDIN,
        fast=True,
    ),
    # 10.
    "random_checkpoint": Case(
        lambda f: ("translate", "--checkpoint", str(f["random"]), "hi"),
        lambda f: (str(f["random"]), "not a checkpoint of this project", "corrupt"),
        fast=True,
    ),
    "folder_as_checkpoint": Case(
        lambda f: ("translate", "--checkpoint", str(f["run"]), "hi"), lambda f: (str(f["run"]), "is a folder")
    ),
    "missing_checkpoint": Case(
        lambda f: ("translate", "--checkpoint", str(f["tmp"] / "no.pt"), "hi"), lambda f: ("no.pt", "does not exist")
    ),
    # 11.
    "missing_config": Case(
        lambda f: ("train", "--config", str(f["tmp"] / "none.yaml")), lambda f: ("none.yaml", "not found")
    ),
    "data_dir_is_a_file": Case(
        lambda f: (*TRAIN, f"train.run_dir={f['tmp'] / 'r11'}", f"data.data_dir={SAMPLE / 'train.en'}"),
        lambda f: ("data.data_dir", str(SAMPLE / "train.en"), "is a file"),
    ),
    "translate_on_a_missing_gpu": Case(
        lambda f: ("translate", "--device", MISSING_GPU, "--checkpoint", str(f["checkpoint"]), "hi"),
        lambda f: ("--device=cuda",),
    ),
}


def check_error_line(stderr: str, names: tuple[str, ...]) -> None:
    """``stderr`` ends with one ``error:`` line naming each of ``names``, and has no traceback."""
    assert "Traceback" not in stderr, stderr
    last = [line for line in stderr.splitlines() if line.strip()][-1]
    assert last.startswith("error: "), stderr
    for name in names:
        assert name in last, last


@pytest.mark.parametrize("name", CASES)
def test_mistake_in_process(name, files, capsys, monkeypatch):
    case = CASES[name]
    monkeypatch.chdir(ROOT)  # configs/sample.yaml names data/sample relative to it
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(case.stdin)))
    assert main(list(case.args(files))) == 2
    out, err = capsys.readouterr()
    check_error_line(err, case.names(files))
    if case.stdin:
        assert len(out.splitlines()) == 2
    assert not list(files["tmp"].glob("**/*.tmp")), "a failed write left its temporary file"


@pytest.mark.parametrize(
    "name", [name if case.fast else pytest.param(name, marks=pytest.mark.slow) for name, case in CASES.items()]
)
def test_mistake_through_the_command(name, files):
    case = CASES[name]
    result = subprocess.run(
        [sys.executable, "-m", "transformer", *case.args(files)],
        input=case.stdin, capture_output=True, cwd=ROOT, env=ENV, timeout=300,
    )  # fmt: skip
    stderr = result.stderr.decode("utf-8", "replace")
    assert result.returncode == 2, stderr
    check_error_line(stderr, case.names(files))
    if case.stdin:
        assert len(result.stdout.decode().splitlines()) == 2


def test_checkpoint_with_the_old_source_name_still_evaluates(files, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    args = ["evaluate", "--checkpoint", str(files["old"]), "--split", "valid", "--max-sentences", "1"]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "1 sentences" in captured.out and "BLEU = " in captured.out and "error" not in captured.err


def test_a_precision_the_device_lacks_is_reported_before_any_data_is_read(tmp_path, capsys):
    code = main([*TRAIN, f"train.run_dir={tmp_path / 'run'}", f"data.data_dir={tmp_path / 'no such folder'}",
                 "train.precision=fp16", "train.device=cpu"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: train.precision=fp16 needs a CUDA device") and err.count("\n") == 1
