"""Checkpoint files: atomic writes, weights_only loading, clear mismatch errors, averaging."""

from __future__ import annotations

import datetime
import errno
import io
import os
import pickle
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from transformer.checkpoint import (
    CheckpointError,
    average_checkpoints,
    load_checkpoint,
    load_for_inference,
    load_model_state,
    save_checkpoint,
)
from transformer.config import Config, ModelConfig
from transformer.data.tokenizer import Tokenizer
from transformer.model.transformer import Transformer

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Tokenizer:
    texts = ["a man rides a bike", "two dogs play in the park", "a woman reads a book"] * 5
    return Tokenizer.train(texts, texts, tmp_path_factory.mktemp("spm"), vocab_size=40, joint=True)


def make_state(tokenizer: Tokenizer, seed: int = 0) -> tuple[dict, Transformer]:
    config = Config(model=ModelConfig.preset("tiny", src_vocab_size=tokenizer.src_vocab_size,
                                             tgt_vocab_size=tokenizer.tgt_vocab_size))
    torch.manual_seed(seed)
    model = Transformer(config.model)
    return {"config": config.to_dict(), "model": model.state_dict(), "tokenizer": tokenizer.to_state(), "step": seed}, model


def test_round_trip_rebuilds_the_same_model_from_the_file_alone(tmp_path, tokenizer):
    state, model = make_state(tokenizer)
    save_checkpoint(state, tmp_path / "c.pt")
    loaded, loaded_tokenizer, config = load_for_inference(tmp_path / "c.pt")
    assert not loaded.training
    src = torch.tensor([[5, 6, 7, 3]])
    tgt = torch.tensor([[2, 8, 9]])
    torch.testing.assert_close(loaded(src, tgt), model.eval()(src, tgt), rtol=0, atol=0)
    assert loaded_tokenizer.encode_src(["a man"]) == tokenizer.encode_src(["a man"])
    assert config.model == Config.from_dict(state["config"]).model


def test_loading_never_unpickles_arbitrary_objects(tmp_path, tokenizer):
    state, _ = make_state(tokenizer)
    state["payload"] = datetime.datetime(2020, 1, 1)  # an object that is not plain data: needs unpickling
    path = tmp_path / "evil.pt"
    torch.save(state, path, pickle_module=pickle)
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_checkpoint(path)


def test_missing_truncated_and_foreign_files_are_clear_errors(tmp_path, tokenizer):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")
    state, _ = make_state(tokenizer)
    save_checkpoint(state, tmp_path / "c.pt")
    data = (tmp_path / "c.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut.pt"):
        load_checkpoint(tmp_path / "cut.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a checkpoint of this project"):
        load_checkpoint(tmp_path / "other.pt")


class FailingFile(io.FileIO):
    """A file whose writes fail with ``code`` after its first ``limit`` bytes, as on a full disk: the real
    ``torch.save`` then raises its own RuntimeError ("enforce fail at inline_container.cc ... unexpected pos"),
    with this OSError in its context."""

    def __init__(self, path: Path, mode: str, code: int, limit: int = 1000) -> None:
        super().__init__(path, mode)
        self.code, self.left = code, limit

    def write(self, data) -> int:
        size = memoryview(data).nbytes
        if size > self.left:
            raise OSError(self.code, os.strerror(self.code))
        self.left -= size
        return super().write(data)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EACCES, errno.EROFS])
def test_a_failed_write_keeps_the_previous_file_and_names_path_and_reason(tmp_path, tokenizer, monkeypatch, code):
    state, _ = make_state(tokenizer)
    path = tmp_path / "last.pt"
    save_checkpoint(state, path)
    before = path.read_bytes()
    monkeypatch.setattr("transformer.files.open", lambda p, mode: FailingFile(p, mode, code), raising=False)
    with pytest.raises(CheckpointError) as info:
        save_checkpoint(state, path)
    assert isinstance(info.value, OSError)  # code that catches OSError around a save still does
    message = str(info.value)
    assert message.startswith(f"cannot write checkpoint {path} (the previous file is unchanged): {os.strerror(code)}")
    assert errno.errorcode[code] in message and "RuntimeError" not in message and ".tmp" not in message
    if code == errno.ENOSPC:  # how much the file needs (within 20% of its real size) and how much is free
        found = re.search(r"\(it needs about ([\d.]+) (bytes|kB|MB); [\d.]+ (bytes|kB|MB|GB) is free in (.*)\)$", message)
        assert found and found[4] == str(tmp_path), message
        needed = float(found[1]) * {"bytes": 1, "kB": 1e3, "MB": 1e6}[found[2]]
        assert 0.8 * len(before) < needed < 1.2 * len(before)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # the temporary file is gone


def test_a_path_through_a_regular_file_is_one_clear_error(tmp_path, tokenizer):
    (tmp_path / "file").write_text("")
    with pytest.raises(CheckpointError) as info:
        save_checkpoint(make_state(tokenizer)[0], tmp_path / "file" / "c.pt")
    assert str(info.value).startswith(f"cannot write checkpoint {tmp_path / 'file' / 'c.pt'}: ")
    assert f"File exists: {tmp_path / 'file'} [EEXIST]" in str(info.value)  # the file that is in the way


def test_a_checkpoint_written_over_a_folder_names_the_folder(tmp_path, tokenizer):
    (tmp_path / "out").mkdir()
    with pytest.raises(CheckpointError) as info:
        save_checkpoint(make_state(tokenizer)[0], tmp_path / "out")
    assert str(info.value) == (
        f"cannot write checkpoint {tmp_path / 'out'}: Is a directory [EISDIR]; that path is a folder; give a file name"
    )
    assert list(tmp_path.rglob("*")) == [tmp_path / "out"]


def test_weights_that_are_not_finite_are_refused_at_load_naming_the_first(tmp_path, tokenizer):
    state, _ = make_state(tokenizer)
    names = [k for k, v in state["model"].items() if v.is_floating_point()][:5]
    for name in names:
        state["model"][name] = state["model"][name].clone().fill_(float("nan"))
    save_checkpoint(state, tmp_path / "nan.pt")
    with pytest.raises(CheckpointError) as info:
        load_for_inference(tmp_path / "nan.pt")
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'nan.pt'} has weights that are not finite (NaN or inf): ")
    assert ", ".join(names[:3]) + " ... (" in message and names[3] not in message and "another checkpoint" in message


def test_unreadable_files_never_advise_weights_only_false(tmp_path, tokenizer):
    state, _ = make_state(tokenizer)
    save_checkpoint(state, tmp_path / "real.pt")
    (tmp_path / "random.pt").write_bytes(random.Random(0).randbytes(1000))
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "real.pt").read_bytes()[:5000])
    torch.save(state | {"payload": datetime.date(2020, 1, 1)}, tmp_path / "pickled.pt", pickle_module=pickle)
    cases = {
        "random.pt": "not a checkpoint of this project, or it is truncated or corrupt",
        "empty.pt": "the file is empty",
        "cut.pt": "not a checkpoint of this project, or it is truncated or corrupt",
        "pickled.pt": "not a checkpoint of this project, or it is truncated or corrupt",
        "missing.pt": "does not exist",
        ".": "is a folder, not a file",
    }
    for name, says in cases.items():
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(tmp_path / name)
        message = str(info.value)
        assert says in message and str(tmp_path / name) in message
        assert "weights_only" not in message and "transformer train" in message  # what to give instead
    save_checkpoint(state, tmp_path / "run" / "checkpoints" / "best.pt")
    with pytest.raises(CheckpointError, match=f"e.g. {tmp_path / 'run' / 'checkpoints' / 'best.pt'}"):
        load_checkpoint(tmp_path / "run")


def test_a_damaged_vocabulary_in_a_checkpoint_is_a_checkpoint_error(tmp_path, tokenizer):
    state, _ = make_state(tokenizer)
    state["tokenizer"] = {**state["tokenizer"], "src_model": b"not a sentencepiece model"}
    save_checkpoint(state, tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match=f"the vocabulary stored in {tmp_path / 'c.pt'} cannot be read"):
        load_for_inference(tmp_path / "c.pt")


def test_config_that_does_not_match_the_weights_names_the_mismatch(tokenizer):
    state, _ = make_state(tokenizer)
    bigger = Transformer(ModelConfig.preset("tiny", d_model=64, src_vocab_size=tokenizer.src_vocab_size,
                                            tgt_vocab_size=tokenizer.tgt_vocab_size))
    with pytest.raises(CheckpointError, match=r"shape of encoder\.embedding\.embedding\.weight"):
        load_model_state(bigger, state["model"], where="ckpt")
    deeper = Transformer(ModelConfig.preset("tiny", n_encoder_layers=3, src_vocab_size=tokenizer.src_vocab_size,
                                            tgt_vocab_size=tokenizer.tgt_vocab_size))
    with pytest.raises(CheckpointError, match=r"missing: encoder\.layers\.2\."):
        load_model_state(deeper, state["model"], where="ckpt")


def test_average_is_the_elementwise_mean(tmp_path, tokenizer):
    paths = []
    for seed in range(3):
        state, _ = make_state(tokenizer, seed)
        paths.append(tmp_path / f"step_{seed}.pt")
        save_checkpoint(state, paths[-1])
    averaged = average_checkpoints(paths)
    weights = [load_checkpoint(p)["model"]["decoder.layers.0.feed_forward.linear1.weight"] for p in paths]
    torch.testing.assert_close(averaged["model"]["decoder.layers.0.feed_forward.linear1.weight"], sum(weights) / 3)
    assert averaged["config"] == load_checkpoint(paths[-1])["config"]
    save_checkpoint(averaged, tmp_path / "avg.pt")
    model, _, _ = load_for_inference(tmp_path / "avg.pt")  # usable for translation
    assert torch.isfinite(next(model.parameters())).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_average_of_tied_weights_counts_each_checkpoint_once(tmp_path, tokenizer, dtype):
    # Tied weights are one tensor under several names in the saved state; in float64 ``.double()`` returns that
    # very tensor, so an in-place running sum once added it once per name.
    paths, expected = [], {}
    for seed in range(2):
        state, model = make_state(tokenizer, seed)
        assert model.output.weight is model.decoder.embedding.weight  # tied (the tiny preset's default)
        state["model"] = model.to(dtype).state_dict()
        for name, tensor in state["model"].items():
            expected[name] = expected.get(name, 0) + tensor.detach().clone().double() / 2
        paths.append(tmp_path / f"step_{seed}.pt")
        save_checkpoint(state, paths[-1])
    averaged = average_checkpoints(paths)["model"]
    for name in ("output.weight", "decoder.embedding.embedding.weight", "encoder.layers.0.self_attn.q_proj.weight"):
        assert averaged[name].dtype == dtype
        torch.testing.assert_close(averaged[name].double(), expected[name], rtol=1e-6, atol=1e-7)


def test_average_script_and_its_errors(tmp_path, tokenizer):
    run = tmp_path / "run" / "checkpoints"
    for seed in range(3):
        save_checkpoint(make_state(tokenizer, seed)[0], run / f"step_{seed:08d}.pt")
    script = [sys.executable, "-m", "transformer", "average"]
    ok = subprocess.run(script + ["--run-dir", str(tmp_path / "run"), "--last", "2", "--output", str(tmp_path / "a.pt")],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "averaged 2 checkpoints" in ok.stdout
    expected = average_checkpoints([run / "step_00000001.pt", run / "step_00000002.pt"])["model"]
    torch.testing.assert_close(load_checkpoint(tmp_path / "a.pt")["model"], expected)
    other = make_state(tokenizer)[0]
    other["model"] = {"x": torch.zeros(1)}
    save_checkpoint(other, tmp_path / "odd.pt")
    bad = subprocess.run(script + ["--inputs", str(run / "step_00000000.pt"), str(tmp_path / "odd.pt"),
                                   "--output", str(tmp_path / "b.pt")], capture_output=True, text=True)
    assert bad.returncode == 2 and "different weights" in bad.stderr
