"""`transformer export` and the engine options of `translate`/`evaluate`: each mistake is one error line, exit 2.

Through ``transformer.cli.main`` in-process (fast), and one case through the real command in a subprocess.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from transformer.checkpoint import save_checkpoint
from transformer.cli import main
from transformer.config import Config, DecodeConfig, ModelConfig
from transformer.data.tokenizer import Tokenizer
from transformer.model.transformer import Transformer

pytest.importorskip("ctranslate2")
from transformer.inference import ct2_export  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "data" / "sample"
INSTALL = 'pip install -e ".[ctranslate2]"'


def checkpoint(folder: Path, tokenizer: Tokenizer, **saved_model_config) -> Path:
    """A tiny untrained checkpoint of this project (model, config and vocabulary); ``saved_model_config`` is
    written into its config's model section as it is (as an older version's checkpoint may have it)."""
    torch.manual_seed(0)
    sizes = dict(src_vocab_size=tokenizer.src_vocab_size, tgt_vocab_size=tokenizer.tgt_vocab_size)
    config = ModelConfig.preset("tiny", **sizes)
    saved = Config(model=config, decode=DecodeConfig(max_len_a=0, max_len_b=3)).to_dict()
    saved["model"].update(saved_model_config)
    state = {"model": Transformer(config).state_dict(), "config": saved, "tokenizer": tokenizer.to_state()}
    save_checkpoint(state, folder / "model.pt")
    return folder / "model.pt"


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("export")
    read = lambda name: (SAMPLE / name).read_text(encoding="utf-8").splitlines()  # noqa: E731
    tokenizer = Tokenizer.train(read("train.en"), read("train.de"), tmp / "vocab", vocab_size=100)
    (tmp / "ok").mkdir()
    (tmp / "pad").mkdir()
    paths = {"tmp": tmp, "checkpoint": checkpoint(tmp / "ok", tokenizer)}
    paths["pad4"] = checkpoint(tmp / "pad", tokenizer, pad_id=4)
    assert main(["export", "--checkpoint", str(paths["checkpoint"]), "--output", str(tmp / "ct2")]) == 0
    paths["model"] = tmp / "ct2"
    paths["damaged"] = tmp / "damaged"
    paths["damaged"].mkdir()
    for name in ("model.bin", "config.json", "shared_vocabulary.json", "spm.model", "tokenizer.json"):
        (paths["damaged"] / name).write_bytes((paths["model"] / name).read_bytes())
    (paths["damaged"] / "transformer.json").write_text("{not json", encoding="utf-8")
    return paths


def error_line(capsys, argv: list[str]) -> str:
    """Run the command; it must fail with status 2 and exactly one ``error: ...`` line on stderr."""
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert "Traceback" not in captured.err
    return lines[0]


def test_export_writes_the_folder_and_refuses_to_overwrite_it(capsys, files):
    argv = ["export", "--checkpoint", str(files["checkpoint"]), "--format", "ctranslate2"]
    argv += ["--output", str(files["model"])]
    line = error_line(capsys, argv)
    assert str(files["model"]) in line and "already exists" in line and "--force" in line
    assert main([*argv, "--force"]) == 0
    assert f"wrote {files['model']}" in capsys.readouterr().out and (files["model"] / "model.bin").is_file()


def test_export_refuses_a_model_ctranslate2_cannot_express(capsys, files, monkeypatch):
    """Every option of today's models is expressible: the exporter is told here that ReLU is not."""
    monkeypatch.setitem(ct2_export.SUPPORTED, "activation", ("gelu",))
    argv = ["export", "--checkpoint", str(files["checkpoint"]), "--output", str(files["tmp"] / "relu")]
    line = error_line(capsys, argv)
    assert "cannot export to CTranslate2 exactly: model.activation='relu': CTranslate2 supports gelu" in line
    assert not (files["tmp"] / "relu").exists()


def test_export_refuses_an_old_checkpoint_padded_with_another_id(capsys, files):
    line = error_line(capsys, ["export", "--checkpoint", str(files["pad4"]), "--output", str(files["tmp"] / "pad-ct2")])
    assert str(files["pad4"]) in line and "model.pad_id=4" in line and "pads with id 0 only" in line
    assert not (files["tmp"] / "pad-ct2").exists()


def test_export_of_a_missing_checkpoint(capsys, files):
    argv = ["export", "--checkpoint", str(files["tmp"] / "nope.pt"), "--output", str(files["tmp"] / "x")]
    line = error_line(capsys, argv)
    assert "nope.pt" in line and "not found" in line


@pytest.mark.parametrize("command", ["export", "translate"])
def test_without_ctranslate2_the_error_says_how_to_install_it(command, capsys, files, monkeypatch):
    monkeypatch.setitem(sys.modules, "ctranslate2", None)  # `import ctranslate2` raises ImportError
    argv = {
        "export": ["export", "--checkpoint", str(files["checkpoint"]), "--output", str(files["tmp"] / "y")],
        "translate": ["translate", "--engine", "ctranslate2", "--model", str(files["model"]), "A dog."],
    }[command]
    assert INSTALL in error_line(capsys, argv)


CT2 = ["--engine", "ctranslate2"]
ENGINE_MISTAKES = {  # translate options -> what the error line names
    "no model folder": (CT2, ("--engine ctranslate2 needs --model DIR", "transformer export")),
    "checkpoint to ctranslate2": ([*CT2, "--model", "{model}", "--checkpoint", "{checkpoint}"], ("not --checkpoint",)),
    "a model folder for torch": (["--checkpoint", "{checkpoint}", "--model", "{model}"], ("--model", "ctranslate2")),
    "threads for torch": (["--checkpoint", "{checkpoint}", "--inter-threads", "2"], ("--inter-threads", "torch")),
    "no translators": ([*CT2, "--model", "{model}", "--inter-threads", "0"], ("--inter-threads must",)),
    "a folder that is no export": ([*CT2, "--model", "{tmp}/ok"], ("is not a CTranslate2 export",)),
    "a missing folder": ([*CT2, "--model", "{tmp}/none"], ("not found", "none")),
    "a file as the folder": ([*CT2, "--model", "{checkpoint}"], ("is a file, not a folder", "--engine torch --checkpoint")),
    "a damaged export": ([*CT2, "--model", "{damaged}"], ("transformer.json", "export the checkpoint again")),
    "alignment of ctranslate2": ([*CT2, "--model", "{model}", "--alignment"], ("--alignment", "--engine torch")),
}


@pytest.mark.parametrize("mistake", ENGINE_MISTAKES)
def test_engine_option_mistakes_of_translate(mistake, capsys, files):
    options, names = ENGINE_MISTAKES[mistake]
    options = [o.format(**{k: str(v) for k, v in files.items()}) for o in options]
    line = error_line(capsys, ["translate", "--device", "cpu", *options, "A dog runs."])
    for name in names:
        assert name in line, line


def test_engine_option_mistake_of_evaluate(capsys, files):
    line = error_line(capsys, ["evaluate", *CT2, "--model", str(files["tmp"] / "ok"), "--split", "test"])
    assert "is not a CTranslate2 export" in line


def test_the_real_command_prints_one_error_line(files):
    result = subprocess.run(
        [sys.executable, "-m", "transformer", "translate", "--engine", "ctranslate2", "A dog runs."],
        cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        "error: --engine ctranslate2 needs --model DIR, a folder written by "
        "`transformer export --checkpoint CKPT --format ctranslate2 --output DIR`"
    ]
