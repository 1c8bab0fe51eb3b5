"""`transformer distill`: a teacher's translations written as a corpus folder, resumable, refusing a changed teacher."""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

import transformer.distillation as distillation
from transformer.checkpoint import save_checkpoint
from transformer.cli import main as cli_main
from transformer.config import Config, DataConfig, DecodeConfig, ModelConfig
from transformer.data.corpus import load_split
from transformer.data.tokenizer import Tokenizer
from transformer.decoding.ensemble import Ensemble
from transformer.inference import TorchTranslator, translate_texts
from transformer.model.transformer import Transformer

ROOT = Path(__file__).resolve().parents[1]
LINES = 40  # training pairs of the test corpus: 5 chunks of 8
DECODE = DecodeConfig(beam_size=2, max_len_a=0.5, max_len_b=4, batch_size=16)

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one intra-op thread for tiny tensors


def sample(split: str, lang: str) -> list[str]:
    return (ROOT / "data" / "sample" / f"{split}.{lang}").read_text(encoding="utf-8").splitlines()


def make_model(tokenizer: Tokenizer, seed: int) -> Transformer:
    """An untrained tiny model whose output layer is scaled so that translations vary and end early."""
    torch.manual_seed(seed)
    config = ModelConfig.preset(
        "tiny", src_vocab_size=tokenizer.src_vocab_size, tgt_vocab_size=tokenizer.tgt_vocab_size, tie_output=False
    )
    model = Transformer(config)
    nn.init.normal_(model.output.weight, std=0.4)
    return model.eval()


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    """A corpus folder (train with a gzipped target, val, test, a file of another language) and two checkpoints."""
    root = tmp_path_factory.mktemp("distill")
    corpus = root / "corpus"
    corpus.mkdir()
    (corpus / "train.en").write_text("".join(s + "\n" for s in sample("train", "en")[:LINES]), encoding="utf-8")
    german = "".join(s + "\n" for s in sample("train", "de")[:LINES])
    (corpus / "train.de.gz").write_bytes(gzip.compress(german.encode()))
    for split in ("val", "test"):
        for lang in ("en", "de"):
            shutil.copyfile(ROOT / "data" / "sample" / f"{split}.{lang}", corpus / f"{split}.{lang}")
    (corpus / "val.fr").write_text("pas copié\n", encoding="utf-8")  # another language: not copied
    src, tgt = sample("train", "en"), sample("train", "de")
    tokenizer = Tokenizer.train(src, tgt, root / "tok", vocab_size=120)
    models = [make_model(tokenizer, seed) for seed in (0, 1)]
    paths = [root / f"teacher{i}.pt" for i in range(2)]
    for model, path in zip(models, paths):
        config = Config(model=model.config, data=DataConfig(data_dir=str(corpus)), decode=DECODE)
        state = {"model": model.state_dict(), "config": config.to_dict(), "tokenizer": tokenizer.to_state()}
        save_checkpoint(state, path)
    return {"root": root, "corpus": corpus, "tokenizer": tokenizer, "models": models, "paths": paths}


def distill(setup: dict, out: Path, *extra: str, teachers: tuple[int, ...] = (0,)) -> int:
    args = ["distill", "--data-dir", str(setup["corpus"]), "--output", str(out), *extra]
    for i in teachers:
        args += ["--checkpoint", str(setup["paths"][i])]
    return cli_main(args)


def folder_files(folder: Path) -> dict[str, bytes]:
    """Every file of ``folder`` by name, distill.json without its decoding time."""
    files = {p.name: p.read_bytes() for p in folder.iterdir()}
    record = json.loads(files.pop("distill.json"))
    record.pop("seconds")
    files["distill.json"] = json.dumps(record, sort_keys=True).encode()
    return files


def test_distill_writes_a_corpus_folder_that_a_config_reads(setup, tmp_path, capsys):
    out = tmp_path / "out"
    assert distill(setup, out, "--beam-size", "2") == 0
    assert f"train with data.data_dir={out}" in capsys.readouterr().out
    src = sample("train", "en")[:LINES]
    expected = translate_texts(TorchTranslator(setup["models"][0], setup["tokenizer"]), src, DECODE)
    cfg = DataConfig(data_dir=str(out), test_split="test")
    assert load_split(cfg, "train") == (src, expected)  # the teacher's translations, line by line
    assert sorted(p.name for p in out.iterdir()) == [
        "distill.json", "test.de", "test.en", "train.de", "train.en", "val.de", "val.en"
    ]
    for name in ("val.en", "val.de", "test.en", "test.de"):
        assert (out / name).read_bytes() == (setup["corpus"] / name).read_bytes()  # real references kept
    assert load_split(cfg, "valid")[1] == sample("val", "de")
    record = json.loads((out / "distill.json").read_text())
    sha = hashlib.sha256(setup["paths"][0].read_bytes()).hexdigest()
    assert record["complete"] is True and record["teacher"] == [{"path": str(setup["paths"][0]), "sha256": sha}]
    assert record["settings"]["beam_size"] == 2 and record["settings"]["lines"] == LINES
    assert record["teacher_config"]["model"]["d_model"] == 32
    assert distill(setup, out, "--beam-size", "2") == 0  # a complete folder: nothing to do
    assert "already complete" in capsys.readouterr().out


def test_an_ensemble_teacher_and_the_original_pairs_too(setup, tmp_path):
    out = tmp_path / "out"
    assert distill(setup, out, "--with-original", teachers=(0, 1)) == 0
    src, tgt = sample("train", "en")[:LINES], sample("train", "de")[:LINES]
    ensemble = Ensemble(setup["models"])
    expected = translate_texts(TorchTranslator(ensemble, setup["tokenizer"]), src, DECODE)
    assert expected != translate_texts(TorchTranslator(setup["models"][0], setup["tokenizer"]), src, DECODE)
    assert load_split(DataConfig(data_dir=str(out)), "train") == (src + src, tgt + expected)
    record = json.loads((out / "distill.json").read_text())
    assert [t["path"] for t in record["teacher"]] == [str(p) for p in setup["paths"]]
    assert record["settings"]["with_original"] is True


def test_an_interrupted_distillation_continues_to_the_same_files(setup, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(distillation, "CHUNK_SIZE", 8)
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    assert distill(setup, whole) == 0

    calls = []
    translate = distillation.translate_texts

    def interrupted(*args, **kwargs):  # Ctrl-C in the third chunk
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return translate(*args, **kwargs)

    monkeypatch.setattr(distillation, "translate_texts", interrupted)
    assert distill(setup, resumed) == 130
    partial = resumed / "train.de.partial"
    assert partial.read_text(encoding="utf-8").count("\n") == 16 and not (resumed / "train.de").exists()
    with open(partial, "a", encoding="utf-8") as f:
        f.write("a line cut off in wri")  # as if the process had died while appending the third chunk
    monkeypatch.setattr(distillation, "translate_texts", translate)
    capsys.readouterr()
    assert distill(setup, resumed) == 0
    assert "continuing" in capsys.readouterr().err
    assert folder_files(resumed) == folder_files(whole)


def test_another_teacher_or_other_settings_are_refused(setup, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(distillation, "CHUNK_SIZE", 8)
    out = tmp_path / "out"
    translate = distillation.translate_texts
    monkeypatch.setattr(distillation, "translate_texts", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    assert distill(setup, out) == 130
    monkeypatch.setattr(distillation, "translate_texts", translate)
    capsys.readouterr()
    for extra, teachers, what in [
        ((), (1,), "the teacher (checkpoint SHA-256)"),
        ((), (0, 1), "the teacher (checkpoint SHA-256)"),
        (("--beam-size", "3"), (0,), "beam_size 2 -> 3"),
        (("--with-original",), (0,), "with_original False -> True"),
    ]:
        assert distill(setup, out, *extra, teachers=teachers) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
        assert str(out / "distill.json") in err and what in err and "another --output" in err
    assert distill(setup, out, "--batch-size", "3") == 0  # the batch size changes no translation


@pytest.mark.parametrize("where", ["corpus", "files"])
def test_an_output_folder_that_is_not_a_distillation_is_refused(setup, tmp_path, capsys, where):
    if where == "corpus":
        out, message = setup["corpus"], "is the corpus folder itself"
    else:
        out, message = tmp_path / "mine", "has files but no distill.json"
        out.mkdir()
        (out / "notes.txt").write_text("keep me")
    assert distill(setup, out) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["notes.txt"] if where == "files" else [p.name for p in setup["corpus"].iterdir()]
    )


def test_an_output_path_through_a_file_is_one_error_line(setup, tmp_path, capsys):
    (tmp_path / "file").write_text("a file, not a folder")
    assert distill(setup, tmp_path / "file" / "out") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot write the output folder") and err.count("\n") == 1


# ---- the CTranslate2 export of a teacher ------------------------------------------------------------------


def test_a_ctranslate2_teacher_writes_the_same_corpus_as_its_checkpoint(sample_checkpoint, sample_export, tmp_path):
    """The sample corpus distilled by a model trained for seconds (conftest) and by its float32 export, with greedy
    search: there both engines pick the same token at every step (ct2_engine's docstring). (Beam search with length
    penalty 0 can differ where two beams are nearly tied: CTranslate2 renormalises each step over the allowed
    tokens, which shifts each beam's score by its own small amount.)"""
    search = ["--data-dir", str(ROOT / "data" / "sample"), "--beam-size", "1", "--device", "cpu"]
    ours, theirs = tmp_path / "torch", tmp_path / "ct2"
    assert cli_main(["distill", "--checkpoint", str(sample_checkpoint), "--output", str(ours), *search]) == 0
    ct2 = ["--engine", "ctranslate2", "--model", str(sample_export), "--intra-threads", "1"]
    assert cli_main(["distill", *ct2, "--output", str(theirs), *search]) == 0
    our_files, their_files = folder_files(ours), folder_files(theirs)
    our_record, their_record = (json.loads(files.pop("distill.json")) for files in (our_files, their_files))
    assert our_files == their_files  # train.en, train.de and the copied splits, byte for byte
    assert sorted(our_files) == ["test.de", "test.en", "train.de", "train.en", "val.de", "val.en"]
    distilled = our_files["train.de"].decode().splitlines()
    assert len(distilled) == 520 and distilled != sample("train", "de") and len(set(distilled)) > 100  # not vacuous
    # The records differ only in the teacher: the checkpoint's SHA-256, or that of the export's weights.
    weights = sample_export / "model.bin"
    sha = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert their_record["teacher"] == [{"path": str(weights), "sha256": sha}]
    for record in (our_record, their_record):
        record.pop("teacher")
        record["settings"].pop("teacher_sha256")
    assert our_record == their_record
    assert our_record["settings"]["beam_size"] == 1 and our_record["complete"] is True


ENGINE_MISTAKES = {  # distill options -> what the one error line says
    "a checkpoint for ctranslate2": (["--engine", "ctranslate2", "--checkpoint", "{ckpt}"], "not --checkpoint"),
    "ctranslate2 without a model": (["--engine", "ctranslate2"], "--engine ctranslate2 needs --model DIR"),
    "a model folder for torch": (["--checkpoint", "{ckpt}", "--model", "{tmp}/ct2"], "--model (a CTranslate2 folder)"),
    "threads for torch": (["--checkpoint", "{ckpt}", "--intra-threads", "2"], "--inter-threads and --intra-threads"),
}


@pytest.mark.parametrize("mistake", ENGINE_MISTAKES)
def test_an_engine_option_mistake_is_one_error_line(mistake, setup, tmp_path, capsys):
    options, message = ENGINE_MISTAKES[mistake]
    options = [o.format(ckpt=setup["paths"][0], tmp=tmp_path) for o in options]
    out = tmp_path / "out"
    assert cli_main(["distill", *options, "--data-dir", str(setup["corpus"]), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err and "Traceback" not in err
    assert not out.exists()  # refused before anything is written
