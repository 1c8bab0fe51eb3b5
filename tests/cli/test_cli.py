"""The ``transformer`` command: version, help of every subcommand, download -> train from the default folder,
progress bars (off when stderr is not a terminal), and the progress callbacks behind them."""

from __future__ import annotations

import functools
import gzip
import http.server
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from transformer.checkpoint import average_checkpoints
from transformer.cli import build_parser, subcommands
from transformer.cli import main as cli_main
from transformer.config import DataConfig, load_config
from transformer.data.corpus import load_split
from transformer.data.download import DEFAULT_SPLITS, download_multi30k
from transformer.evaluation import evaluate_model
from transformer.inference import load_torch_translator
from transformer.training import Trainer, build_trainer
from transformer.training.distributed import setup

ROOT = Path(__file__).resolve().parents[2]
ENV = {k: v for k, v in os.environ.items() if k != "MULTI30K_DIR"}  # the default folder, data/multi30k, is used
ENV |= {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
NAMES = [module.__name__.rsplit(".", 1)[1] for module in subcommands()]
BAR = re.compile(r"\d+%\||it/s|s/it|\r")  # what a tqdm bar writes


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one intra-op thread for tiny tensors


def transformer(*args: str, cwd: Path = ROOT, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m transformer ARGS`` in a subprocess, stderr a pipe (not a terminal)."""
    return subprocess.run(
        [sys.executable, "-m", "transformer", *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout
    )


def serve(folder: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    """A local HTTP server of ``folder`` on 127.0.0.1 in a daemon thread, and its URL."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def fake_multi30k(folder: Path) -> None:
    """A Multi30k mirror of a few dozen lines per split: {split}.{lang}.gz, taken from the sample corpus."""
    folder.mkdir(parents=True)
    sample = {lang: (ROOT / "data" / "sample" / f"train.{lang}").read_text(encoding="utf-8").splitlines()
              for lang in ("en", "de")}
    for i, split in enumerate(DEFAULT_SPLITS):
        for lang, lines in sample.items():
            part = lines[:48] if split == "train" else lines[48 + 8 * i : 56 + 8 * i]
            (folder / f"{split}.{lang}.gz").write_bytes(gzip.compress("".join(s + "\n" for s in part).encode()))


# ---- the parser ----------------------------------------------------------------------------------


def test_version_from_python_m_and_from_the_console_script():
    result = transformer("--version")
    assert result.returncode == 0 and re.fullmatch(r"transformer \S+\n", result.stdout)
    script = shutil.which("transformer")
    if script is None:
        pytest.skip("the transformer console script is not on PATH (pip install -e .)")
    installed = subprocess.run([script, "--version"], env=ENV, capture_output=True, text=True, timeout=120)
    assert installed.returncode == 0 and installed.stdout == result.stdout


@pytest.mark.parametrize("name", NAMES)
def test_every_subcommand_has_a_description_and_examples(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([name, "--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    description = out.split("\n\n")[1]
    assert "\n" not in description.strip() and description.strip().endswith(".")  # one line
    assert "\nexamples:\n" in out and f"  transformer {name} " in out.split("examples:")[1]


def test_top_level_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0 and "examples:" in out
    assert all(re.search(rf"^    {name}\b", out, re.MULTILINE) for name in NAMES)


def test_unknown_subcommand_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["trian", "--config", "configs/sample.yaml"])
    assert exit_info.value.code == 2 and "invalid choice: 'trian'" in capsys.readouterr().err


REQUIRED = {"translate": [], "evaluate": [], "distill": ["--data-dir", "corpus", "--output", "out"]}


@pytest.mark.parametrize("name", REQUIRED)
def test_checkpoint_is_repeatable_for_an_ensemble(name, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args([name, "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert re.search(r"--checkpoint CKPT (the teacher, )?a \.pt file written by training; repeat it to decode several "
                     r"models as an ensemble", help_text)
    assert "--checkpoint a/avg10.pt --checkpoint b/avg10.pt" in help_text  # an example
    argv = [name, *REQUIRED[name], "--checkpoint", "a.pt", "--checkpoint", "b", "--checkpoint", "c.ckpt"]
    args = build_parser().parse_args(argv)
    assert [str(p) for p in args.checkpoint] == ["a.pt", "b", "c.ckpt"]  # any file name
    assert args.engine == "torch" and args.model is None  # the default engine


@pytest.mark.parametrize("name", REQUIRED)
def test_every_decoding_command_takes_the_same_engine_options(name, capsys):
    argv = [name, *REQUIRED[name], "--engine", "ctranslate2", "--model", "ct2", "--inter-threads", "2",
            "--intra-threads", "1"]
    args = build_parser().parse_args(argv)
    assert (args.engine, str(args.model), args.inter_threads, args.intra_threads) == ("ctranslate2", "ct2", 2, 1)
    with pytest.raises(SystemExit):
        build_parser().parse_args([name, "--help"])
    assert f"  transformer {name} --engine ctranslate2 --model " in capsys.readouterr().out  # an example
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([name, *REQUIRED[name], "--engine", "onnx"])
    assert exit_info.value.code == 2 and "invalid choice: 'onnx'" in capsys.readouterr().err


# ---- download, then train from the default folder ------------------------------------------------


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A working folder where `transformer download multi30k` (from a local mirror) then `transformer train
    --config configs/multi30k_en_de.yaml` (a tiny model, one update) ran, with MULTI30K_DIR unset."""
    tmp = tmp_path_factory.mktemp("cli")
    mirror, work = tmp / "mirror", tmp / "work"
    fake_multi30k(mirror)
    work.mkdir()
    server, url = serve(mirror)
    try:
        downloaded = transformer("download", "multi30k", "--base-url", url, cwd=work)
    finally:
        server.shutdown()
        server.server_close()
    assert downloaded.returncode == 0, downloaded.stderr
    assert "8 files in data/multi30k, where `transformer train` looks by default" in downloaded.stdout
    assert not BAR.search(downloaded.stderr)  # no progress bar: stderr is not a terminal
    trained = transformer(
        "train", "--config", str(ROOT / "configs" / "multi30k_en_de.yaml"),
        "model.preset=tiny", "model.d_model=32", "model.d_ff=64", "model.n_encoder_layers=1",
        "model.n_decoder_layers=1", "data.vocab_size=100", "train.max_steps=1", "train.eval_bleu=false",
        "train.warmup_steps=1", "train.threads=1", "train.run_dir=run", "decode.beam_size=1", cwd=work,
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "done at step 1;" in trained.stdout
    return work


def test_download_then_train_finds_data_multi30k(work):
    names = sorted(p.name for p in (work / "data" / "multi30k").iterdir())
    assert names == sorted(f"{split}.{lang}.gz" for split in DEFAULT_SPLITS for lang in ("en", "de"))
    assert (work / "run" / "checkpoints" / "last.pt").is_file()


def test_download_without_network_is_one_error_line(tmp_path):
    result = transformer("download", "multi30k", "--output", str(tmp_path / "m30k"), "--base-url",
                         "http://127.0.0.1:9", "--timeout", "2")
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "cannot reach http://127.0.0.1:9/train.en.gz" in errors[0]
    assert "Traceback" not in result.stderr
    assert "--base-url" in errors[0]
    assert not (tmp_path / "m30k").exists()  # nothing left behind that was not there


def test_build_trainer_is_the_library_behind_train(tmp_path):
    overrides = ["model.preset=tiny", "model.d_model=32", "model.d_ff=64", "data.vocab_size=120",
                 f"train.run_dir={tmp_path}", "train.device=cpu"]
    config = load_config(ROOT / "configs" / "sample.yaml", overrides)
    trainer = build_trainer(config, setup(config.train.device))
    assert isinstance(trainer, Trainer) and (tmp_path / "tokenizer").is_dir()
    assert config.model.src_vocab_size == trainer.tokenizer.src_vocab_size  # resolved for the checkpoints
    again = build_trainer(load_config(ROOT / "configs" / "sample.yaml", overrides), setup("cpu"))
    assert all(torch.equal(a, b) for a, b in zip(trainer.model.parameters(), again.model.parameters()))  # seeded


# ---- progress bars -------------------------------------------------------------------------------


class Terminal(io.StringIO):
    """A stderr that says it is a terminal, so that the progress bars draw."""

    def isatty(self) -> bool:
        return True


def test_evaluate_has_no_bar_when_stderr_is_not_a_terminal(work):
    result = transformer("evaluate", "--checkpoint", "run/checkpoints/last.pt", "--split", "valid", cwd=work)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "8 sentences" in result.stdout and not BAR.search(result.stderr)


def test_evaluate_average_and_translate_stdin_draw_a_bar_on_a_terminal(work, monkeypatch, capsys):
    monkeypatch.chdir(work)
    monkeypatch.delenv("MULTI30K_DIR", raising=False)
    monkeypatch.setattr(sys, "stderr", Terminal())
    assert cli_main(["evaluate", "--checkpoint", "run/checkpoints/last.pt", "--split", "valid"]) == 0
    assert "valid: 100%|" in sys.stderr.getvalue() and "8/8" in sys.stderr.getvalue()
    monkeypatch.setattr(sys, "stderr", Terminal())
    last = "run/checkpoints/last.pt"
    assert cli_main(["average", "--inputs", last, last, "--output", "run/avg.pt"]) == 0
    assert "average: 100%|" in sys.stderr.getvalue() and "2/2" in sys.stderr.getvalue()
    assert "averaged 2 checkpoints" in capsys.readouterr().out
    monkeypatch.setattr(sys, "stderr", Terminal())
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"A man is reading.\nTwo dogs run.\n\n")))
    assert cli_main(["translate", "--checkpoint", last]) == 0  # stdin: a bar, without a total
    assert "translate: 2sent" in sys.stderr.getvalue() and capsys.readouterr().out.count("\n") == 3
    monkeypatch.setattr(sys, "stderr", Terminal())
    assert cli_main(["translate", "--checkpoint", last, "A man is reading."]) == 0  # a few arguments: no bar
    assert not BAR.search(sys.stderr.getvalue()) and "sent" not in sys.stderr.getvalue()


def test_evaluate_model_reports_every_sentence_and_validation_stays_silent(work, capsys):
    translator, config = load_torch_translator([work / "run" / "checkpoints" / "last.pt"], "cpu")
    src, ref = load_split(replace(config.data, data_dir=str(work / "data" / "multi30k")), "valid")
    counts: list[int] = []
    _, hypotheses = evaluate_model(translator, src, ref, config.decode, progress=counts.append)
    assert sum(counts) == len(src) == len(hypotheses) == 8 and all(c > 0 for c in counts)
    evaluate_model(translator, src, ref, config.decode)  # as the trainer calls it
    assert capsys.readouterr().err == ""


def test_average_checkpoints_and_download_report_progress(work, tmp_path, monkeypatch):
    counts: list[int] = []
    last = work / "run" / "checkpoints" / "last.pt"
    average_checkpoints([last, last, last], progress=counts.append)
    assert counts == [1, 1, 1]
    counts.clear()
    mirror = work / "data" / "multi30k"  # serve the downloaded files again
    server, url = serve(mirror)
    try:
        paths = download_multi30k(tmp_path / "out", splits=["train", "val"], base_url=url, progress=counts.append)
        monkeypatch.setattr(sys, "stderr", Terminal())
        assert cli_main(["download", "multi30k", "--out", str(tmp_path / "cli"), "--base-url", url, "--splits", "val"]) == 0
        assert "multi30k: 100%|" in sys.stderr.getvalue() and "2/2" in sys.stderr.getvalue()
    finally:
        server.shutdown()
        server.server_close()
    assert [p.name for p in paths] == ["train.en.gz", "train.de.gz", "val.en.gz", "val.de.gz"] and counts == [1] * 4
    assert len(load_split(DataConfig(data_dir=str(tmp_path / "out")), "valid")[0]) == 8


def test_ctrl_c_while_the_parser_builds_lets_the_imports_finish_then_exits_130(monkeypatch, capsys):
    # A KeyboardInterrupt inside PyTorch's imports can leave a module half-imported or make `python -m` end by
    # SIGINT (status -2, not 130): main holds the Ctrl-C until the imports are done.
    finished = []

    def build_parser_interrupted_halfway():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)  # a Python-level handler runs at the next bytecode: any KeyboardInterrupt comes here
        finished.append(True)
        return build_parser()

    handler = signal.getsignal(signal.SIGINT)
    monkeypatch.setattr("transformer.cli.build_parser", build_parser_interrupted_halfway)
    assert cli_main(["train", "--help"]) == 130
    assert finished == [True]
    assert capsys.readouterr().err == "interrupted\n"
    assert signal.getsignal(signal.SIGINT) is handler


@pytest.mark.parametrize("delay", [0.15, 0.3, 0.8])
def test_ctrl_c_while_pytorch_loads_is_one_line_and_exit_130(tmp_path, delay):
    # The first second or so of any command imports NumPy and PyTorch; Ctrl-C there is answered like anywhere else.
    process = subprocess.Popen(
        [sys.executable, "-m", "transformer", "train", "--config", str(ROOT / "configs" / "sample.yaml"),
         "--run-dir", str(tmp_path / "run"), f"data.data_dir={ROOT / 'data' / 'sample'}", "train.threads=1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
    )
    time.sleep(delay)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    assert not (tmp_path / "run" / "checkpoints").exists()
