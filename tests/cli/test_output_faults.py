"""Faults at the outputs of `export`, `average` and `train`, and bad model files given to the readers.

Each case runs the real command in-process (``transformer.cli.main``) on a run of one update of the tiny model
on the sample corpus: a user's mistake or a fault of the machine is one ``error: ...`` line and exit status 2,
and no file the user had is lost. The full-disk cases mount a small tmpfs (root only; skipped otherwise).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from transformer.checkpoint import load_checkpoint
from transformer.cli import main

ROOT = Path(__file__).resolve().parents[2]
# One update of the tiny model on the sample corpus; short decoding so that exports and translations are quick.
TRAIN = (
    "train", "--config", str(ROOT / "configs" / "sample.yaml"), f"data.data_dir={ROOT / 'data' / 'sample'}",
    "model.preset=tiny", "data.vocab_size=100", "train.eval_bleu=false", "train.device=cpu", "train.threads=1",
    "decode.max_len_a=0", "decode.max_len_b=3",
)  # fmt: skip

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A run folder after one update: config.json, metrics.jsonl, tokenizer/, checkpoints/{last,best,step_1}.pt."""
    run = tmp_path_factory.mktemp("output_faults") / "run"
    assert main([*TRAIN, "train.max_steps=1", f"train.run_dir={run}"]) == 0
    return run


@pytest.fixture
def run(trained, tmp_path) -> Path:
    """A copy of the trained run that a test may damage."""
    return Path(shutil.copytree(trained, tmp_path / "run"))


def error_line(capsys, argv: list[str]) -> str:
    """Run the command; it must fail with status 2 and exactly one ``error: ...`` line on stderr."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path -> bytes)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@contextlib.contextmanager
def small_disk(path: Path, size: int) -> Iterator[Path]:
    """A tmpfs of ``size`` bytes mounted at ``path`` for the block (root only), unmounted after it."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    path.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


# ---- export --force replaces a previous export only ---------------------------------------------------------


def export(checkpoint: Path, output: Path, *extra: str) -> list[str]:
    return ["export", "--checkpoint", str(checkpoint), "--format", "ctranslate2", "--output", str(output), *extra]


def test_export_force_refuses_a_run_folder_and_deletes_nothing(run, capsys):
    pytest.importorskip("ctranslate2")
    before = snapshot(run)
    line = error_line(capsys, export(run / "checkpoints" / "best.pt", run, "--force"))
    assert str(run) in line and "training run" in line and "checkpoints" in line and "metrics.jsonl" in line
    assert snapshot(run) == before


def test_export_force_refuses_a_folder_that_is_no_export_and_the_folder_of_its_checkpoint(run, tmp_path, capsys):
    pytest.importorskip("ctranslate2")
    mine = tmp_path / "mine"
    (mine / "sub").mkdir(parents=True)
    (mine / "notes.txt").write_text("my notes")
    (mine / "sub" / "data.txt").write_text("my data")
    line = error_line(capsys, export(run / "checkpoints" / "last.pt", mine, "--force"))
    assert str(mine) in line and "not a CTranslate2 export" in line and "transformer.json" in line
    assert snapshot(mine) == {"notes.txt": b"my notes", "sub/data.txt": b"my data"}

    exported = tmp_path / "ct2"
    assert main(export(run / "checkpoints" / "last.pt", exported)) == 0
    shutil.copy(run / "checkpoints" / "last.pt", exported / "last.pt")  # the checkpoint being read is inside
    before = snapshot(exported)
    line = error_line(capsys, export(exported / "last.pt", exported, "--force"))
    assert str(exported / "last.pt") in line and "holds the checkpoint" in line
    assert snapshot(exported) == before


def test_export_force_replaces_only_the_files_of_a_previous_export_and_logs_them(run, tmp_path, capsys, caplog):
    pytest.importorskip("ctranslate2")
    exported = tmp_path / "ct2"
    assert main(export(run / "checkpoints" / "last.pt", exported)) == 0
    written = sorted(p.name for p in exported.iterdir())
    (exported / "README.txt").write_text("served since Monday")
    (exported / "logs").mkdir()
    (exported / "logs" / "requests.log").write_text("GET /translate")
    (exported / "model.bin").write_bytes(b"an old model")
    with caplog.at_level(logging.INFO):
        assert main(export(run / "checkpoints" / "best.pt", exported, "--force", "--quantization", "int8")) == 0
    assert (exported / "README.txt").read_text() == "served since Monday"
    assert (exported / "logs" / "requests.log").read_text() == "GET /translate"
    assert sorted(p.name for p in exported.iterdir()) == sorted([*written, "README.txt", "logs"])
    assert (exported / "model.bin").read_bytes() != b"an old model"
    assert '"quantization": "int8"' in (exported / "transformer.json").read_text()
    removed = " ".join(r.getMessage() for r in caplog.records if "removed" in r.getMessage())
    for name in written:
        assert str(exported / name) in removed
    kept = " ".join(r.getMessage() for r in caplog.records if "kept" in r.getMessage())
    assert "README.txt" in kept and "logs" in kept and "README.txt" not in removed


# ---- average --output -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["last.pt", "best.pt", "step_00000001.pt"])
def test_average_refuses_to_overwrite_a_checkpoint_of_a_run(run, capsys, name):
    target = run / "checkpoints" / name
    before = target.read_bytes()
    inputs = [str(run / "checkpoints" / "step_00000001.pt"), str(run / "checkpoints" / "last.pt")]
    line = error_line(capsys, ["average", "--inputs", *inputs, "--output", str(target)])
    assert str(target) in line and "--overwrite-checkpoint" in line
    assert target.read_bytes() == before and "optimizer" in load_checkpoint(target)


def test_average_refuses_to_overwrite_one_of_its_inputs_unless_asked(run, tmp_path, capsys):
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    shutil.copy(run / "checkpoints" / "last.pt", a)
    shutil.copy(run / "checkpoints" / "step_00000001.pt", b)
    before = a.read_bytes()
    line = error_line(capsys, ["average", "--inputs", str(a), str(b), "--output", str(a)])
    assert str(a) in line and "one of the inputs" in line and "--overwrite-checkpoint" in line
    assert a.read_bytes() == before
    assert main(["average", "--inputs", str(a), str(b), "--output", str(a), "--overwrite-checkpoint"]) == 0
    assert "optimizer" not in load_checkpoint(a) and "averaged_from" in load_checkpoint(a)


def test_average_into_a_folder_names_the_folder(run, tmp_path, capsys):
    folder = tmp_path / "averages"
    folder.mkdir()
    line = error_line(capsys, ["average", "--run-dir", str(run), "--last", "1", "--output", str(folder)])
    assert f"{folder}:" in line or f"{folder} " in line
    assert "folder" in line and ".tmp" not in line
    assert list(folder.iterdir()) == []


# ---- a full disk ------------------------------------------------------------------------------------------


def check_full_disk_line(line: str, path: Path) -> None:
    assert str(path) in line and "No space left on device [ENOSPC]" in line, line
    assert "needs about" in line and "free" in line, line


def test_a_full_disk_during_a_training_checkpoint_is_one_error_line_and_keeps_last_pt(trained, tmp_path, capsys):
    size = sum(-(-p.stat().st_size // 4096) * 4096 for p in trained.rglob("*") if p.is_file()) + (1 << 20)
    with small_disk(tmp_path / "disk", size) as disk:
        run = Path(shutil.copytree(trained, disk / "run"))
        last = run / "checkpoints" / "last.pt"
        before = last.read_bytes()
        assert main([*TRAIN, "train.max_steps=2", f"train.run_dir={run}", "--resume"]) == 2
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert "Traceback" not in err and len(lines) == 1 and lines[0].startswith("error: "), err
        check_full_disk_line(lines[0], last)
        assert last.read_bytes() == before
        assert not list(run.rglob(".*.tmp")) and not (run / "train.lock").exists()


def test_a_full_disk_during_average_is_one_error_line(trained, tmp_path, capsys):
    with small_disk(tmp_path / "disk", 512 * 1024) as disk:
        (disk / "old.pt").write_bytes(b"x" * 1000)  # a file of that name: kept as it was
        inputs = [str(trained / "checkpoints" / "step_00000001.pt"), str(trained / "checkpoints" / "last.pt")]
        line = error_line(capsys, ["average", "--inputs", *inputs, "--output", str(disk / "old.pt")])
        check_full_disk_line(line, disk / "old.pt")
        assert [p.name for p in disk.iterdir()] == ["old.pt"] and (disk / "old.pt").read_bytes() == b"x" * 1000


# ---- bad model files given to the readers -----------------------------------------------------------------


def test_a_file_given_as_the_ctranslate2_model_folder_says_it_is_a_file(trained, tmp_path, capsys):
    pytest.importorskip("ctranslate2")
    checkpoint = trained / "checkpoints" / "last.pt"
    translate = ["translate", "--engine", "ctranslate2", "--device", "cpu", "--model"]
    line = error_line(capsys, [*translate, str(checkpoint), "A dog runs."])
    assert f"--model {checkpoint} is a file, not a folder" in line and "--checkpoint" in line
    exported = tmp_path / "ct2"
    assert main(export(checkpoint, exported)) == 0
    line = error_line(capsys, [*translate, str(exported / "model.bin"), "A dog runs."])
    assert "is a file, not a folder" in line and f"--model {exported}" in line


@pytest.fixture
def not_finite(trained, tmp_path) -> Path:
    """The run's last.pt with a NaN in one weight and an inf in another."""
    state = torch.load(trained / "checkpoints" / "last.pt", weights_only=True)
    state["model"]["encoder.layers.0.self_attn.q_proj.weight"][0, 0] = float("nan")
    state["model"]["decoder.layers.1.feed_forward.linear2.bias"][1] = float("inf")
    torch.save(state, tmp_path / "nan.pt")
    return tmp_path / "nan.pt"


@pytest.mark.parametrize("command", ["translate", "evaluate", "export"])
def test_a_checkpoint_with_weights_that_are_not_finite_is_refused(not_finite, tmp_path, capsys, command):
    if command == "export":
        pytest.importorskip("ctranslate2")
    argv = {
        "translate": ["translate", "--checkpoint", str(not_finite), "--device", "cpu", "A dog runs."],
        "evaluate": ["evaluate", "--checkpoint", str(not_finite), "--device", "cpu", "--split", "test"],
        "export": export(not_finite, tmp_path / "ct2"),
    }[command]
    line = error_line(capsys, argv)
    assert str(not_finite) in line and "not finite" in line
    assert "encoder.layers.0.self_attn.q_proj.weight" in line and "decoder.layers.1.feed_forward.linear2.bias" in line
    assert not (tmp_path / "ct2").exists() and capsys.readouterr().out == ""
