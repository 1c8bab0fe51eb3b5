"""``transformer plot``: each picture is a valid PNG of the expected pixel size (from a tiny untrained model),
and each mistake (no matplotlib, a missing run, a layer the model lacks) is one error line."""

from __future__ import annotations

import dataclasses
import json
import struct
import sys
from pathlib import Path

import pytest
import torch

from transformer.checkpoint import load_for_inference, save_checkpoint
from transformer.cli import main as cli_main
from transformer.config import Config, ModelConfig
from transformer.data.tokenizer import Tokenizer
from transformer.inference import load_translator, translator_for
from transformer.inference.alignment import pair_attention, translate_with_attention
from transformer.model.transformer import Transformer
from transformer.plotting import attention_figure, attention_figure_size, read_metrics

pytest.importorskip("matplotlib")
pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one intra-op thread for tiny tensors

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SOURCE, TARGET = "two dogs play in the park", "zwei hunde spielen im park"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny untrained model (2 + 2 layers, 4 heads) with a small joint vocabulary, saved as a checkpoint."""
    folder = tmp_path_factory.mktemp("plot")
    texts = ["a man rides a bike", SOURCE, "a woman reads a book", TARGET, "ein mann liest"] * 4
    tokenizer = Tokenizer.train(texts, texts, folder / "spm", vocab_size=60, joint=True)
    config = Config(model=ModelConfig.preset("tiny", src_vocab_size=tokenizer.src_vocab_size,
                                             tgt_vocab_size=tokenizer.tgt_vocab_size))
    torch.manual_seed(0)
    model = Transformer(config.model)
    state = {"config": config.to_dict(), "model": model.state_dict(), "tokenizer": tokenizer.to_state(), "step": 0}
    save_checkpoint(state, folder / "tiny.pt")
    return folder / "tiny.pt"


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's header, after checking its signature."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def run_command(capsys, *args: str) -> tuple[int, str, str]:
    code = cli_main(["plot", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def assert_one_error_line(code: int, err: str, *needles: str) -> None:
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    assert all(n in lines[0] for n in needles), lines[0]


# ---- attention ----------------------------------------------------------------------------------------


def expected_size(weights: torch.Tensor, dpi: int) -> tuple[int, int]:
    """Pixels of the attention picture of (L, H, T, S) weights: one row per layer, heads + their mean."""
    n_layers, n_heads, n_queries, n_keys = weights.shape
    width, height = attention_figure_size(n_layers, n_heads + 1, n_queries, n_keys)
    return round(width * dpi), round(height * dpi)


def test_attention_png_has_the_expected_size(checkpoint, tmp_path, capsys):
    out = tmp_path / "cross.png"
    code, stdout, _ = run_command(capsys, "attention", "--checkpoint", str(checkpoint), "--target", TARGET, SOURCE,
                                  "-o", str(out), "--dpi", "60")
    assert code == 0
    model, tokenizer, _ = load_for_inference(checkpoint)
    weights = pair_attention(model, tokenizer, [SOURCE], [TARGET], device="cpu")[0].cross  # (L, H, T, S)
    assert weights.shape[:2] == (2, 4)
    width, height = expected_size(weights, 60)
    assert png_size(out) == (width, height)
    assert stdout.splitlines() == [TARGET, f"wrote {out} ({width} x {height} pixels)"]


def test_decoder_self_attention_of_the_models_own_translation_one_layer(checkpoint, tmp_path, capsys):
    out = tmp_path / "decoder.png"
    code, stdout, _ = run_command(capsys, "attention", "--checkpoint", str(checkpoint), "--beam-size", "1",
                                  "--kind", "self-decoder", "--layer", "-1", SOURCE, "-o", str(out), "--dpi", "60")
    assert code == 0
    model, tokenizer, config = load_for_inference(checkpoint)
    greedy = dataclasses.replace(config.decode, beam_size=1)
    translation, attention = translate_with_attention(model, tokenizer, [SOURCE], greedy, device="cpu")[0]
    assert stdout.splitlines()[0] == translation
    assert png_size(out) == expected_size(attention.decoder[-1:], 60)


def test_attention_figure_has_a_panel_per_layer_and_head_plus_their_mean():
    weights = torch.softmax(torch.randn(3, 2, 4, 6), dim=-1)
    figure = attention_figure(weights, list("abcd"), list("uvwxyz"), title="t")
    panels = [ax for ax in figure.axes if ax.get_label() != "<colorbar>"]
    assert len(panels) == 3 * (2 + 1)
    assert [ax.get_title() for ax in panels[:3]] == ["layer 1, head 1", "layer 1, head 2", "layer 1, mean of heads"]
    assert [t.get_text() for t in panels[-1].get_xticklabels()] == list("uvwxyz")
    torch.testing.assert_close(torch.as_tensor(panels[2].images[0].get_array()), weights[0].mean(0))
    with pytest.raises(ValueError, match="labels"):
        attention_figure(weights, list("abc"), list("uvwxyz"), title="t")


def test_a_long_sentence_stays_within_the_largest_picture():
    width, height = attention_figure_size(6, 9, 120, 120)
    assert width <= 26 and height <= 26


def test_attention_mistakes_are_one_error_line(checkpoint, tmp_path, capsys):
    ckpt = str(checkpoint)
    assert_one_error_line(*run_command(capsys, "attention", "--checkpoint", ckpt, "--layer", "3", SOURCE,
                                       "-o", str(tmp_path / "x.png"))[::2], "--layer", "1..2")
    assert_one_error_line(*run_command(capsys, "attention", "--checkpoint", ckpt, " ")[::2], "empty")
    assert_one_error_line(*run_command(capsys, "attention", "--checkpoint", str(tmp_path / "no.pt"), SOURCE)[::2],
                          "no.pt")
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert_one_error_line(*run_command(capsys, "attention", "--checkpoint", ckpt, "--target", TARGET, SOURCE,
                                       "-o", str(blocker / "x.png"))[::2], "cannot write the picture")
    assert not list(tmp_path.glob("*.png"))


def test_attention_of_a_multilingual_model_is_that_of_the_chosen_direction_its_source_tagged(
    multilingual_checkpoint, tmp_path, capsys
):
    ckpt, text = str(multilingual_checkpoint), "Ein Hund rennt am Strand."
    out = tmp_path / "de-en.png"
    code, stdout, _ = run_command(capsys, "attention", "--checkpoint", ckpt, "--target-lang", "en", "--beam-size", "1",
                                  text, "-o", str(out), "--dpi", "40")
    assert code == 0
    translator, config = load_translator("torch", checkpoints=[multilingual_checkpoint])
    tagged = translator_for(translator, config.data, ("de", "en"))
    greedy = config.decode.updated(beam_size=1)
    translation, attention = translate_with_attention(tagged.model, tagged.tokenizer, [text], greedy, device="cpu")[0]
    assert attention.src_pieces[0] == "<2en>"  # the model reads the target's tag first, as `translate` gives it
    assert stdout.splitlines() == [translation, f"wrote {out} ({' x '.join(map(str, png_size(out)))} pixels)"]
    assert png_size(out) == expected_size(attention.cross, 40)
    code, stdout, err = run_command(capsys, "attention", "--checkpoint", ckpt, text, "-o", str(tmp_path / "no.png"))
    assert_one_error_line(code, err, "--target-lang", "en-de, de-en")
    assert stdout == "" and not (tmp_path / "no.png").exists()


# ---- positions ----------------------------------------------------------------------------------------


def test_positions_png_has_the_expected_size(tmp_path, capsys):
    out = tmp_path / "p.png"
    code, stdout, _ = run_command(capsys, "positions", "--d-model", "64", "--length", "30", "-o", str(out), "--dpi", "50")
    assert code == 0 and png_size(out) == (800, 240)  # 16 x 4.8 inches
    assert stdout == f"wrote {out} (800 x 240 pixels)\n"


def test_positions_of_a_checkpoint_use_its_width(checkpoint, tmp_path, capsys):
    out = tmp_path / "p.png"
    code, _, _ = run_command(capsys, "positions", "--checkpoint", str(checkpoint), "-o", str(out), "--dpi", "20")
    assert code == 0 and png_size(out) == (320, 96)
    assert_one_error_line(*run_command(capsys, "positions", "--d-model", "7")[::2], "--d-model 7")


# ---- runs ---------------------------------------------------------------------------------------------


def write_run(folder: Path, lr_scale: float, *, partial_last_line: bool = False) -> Path:
    """A metrics.jsonl in the trainer's format: train records every 10 updates, valid ones every 20."""
    folder.mkdir(parents=True)
    lines = []
    for step in range(10, 101, 10):
        lines.append({"split": "train", "step": step, "epoch": 0, "time": step * 0.5, "lr": lr_scale * step,
                      "loss": 6 - step / 25, "nll": 5.0, "ppl": 150.0, "tgt_tokens_per_s": 900.0})
        if step % 20 == 0:
            lines.append({"split": "valid", "step": step, "epoch": 0, "time": step * 0.5 + 1,
                          "loss": 6.2 - step / 25, "nll": 5.0, "ppl": 150.0, "bleu": step / 5})
    text = "".join(json.dumps(r) + "\n" for r in lines)
    if partial_last_line:
        text += '{"split": "train", "st'  # the trainer is writing this one
    (folder / "metrics.jsonl").write_text(text)
    return folder


def test_run_png_overlays_several_runs(tmp_path, capsys):
    a = write_run(tmp_path / "recipe_a", 1e-5)
    b = write_run(tmp_path / "recipe_b", 2e-5, partial_last_line=True)
    assert len(read_metrics(b)) == 15 and read_metrics(b / "metrics.jsonl") == read_metrics(b)  # partial line skipped
    out = tmp_path / "run.png"
    code, stdout, _ = run_command(capsys, "run", str(a), str(b), "-o", str(out))
    assert code == 0 and png_size(out) == (1700, 750)  # 17 x 7.5 inches at 100 dpi


def test_run_figure_has_every_curve_of_every_run(tmp_path):
    from transformer.plotting import run_figure

    records = read_metrics(write_run(tmp_path / "a", 1e-5))
    figure = run_figure([("a", records), ("b", records)])
    assert len(figure.axes) == 8  # 4 metrics x (updates, wall time)
    for ax in figure.axes:
        assert [line.get_label() for line in ax.get_lines()] == ["a", "b"]
    minutes = figure.axes[4].get_lines()[0].get_xdata()  # training loss against wall time
    assert list(minutes) == pytest.approx([step * 0.5 / 60 for step in range(10, 101, 10)])
    assert [t.get_text() for t in figure.axes[0].get_legend().get_texts()] == ["a", "b"]


def write_multilingual_run(folder: Path) -> Path:
    """A metrics.jsonl of a run of two directions: its valid records hold their mean and each one's values."""
    write_run(folder, 1e-5)
    lines = []
    for record in read_metrics(folder):
        if record["split"] == "valid":
            each = {"en-de": record["loss"] + 0.2, "de-en": record["loss"] - 0.2}
            record.update({f"{name}/{key}": value for name, loss in each.items()
                           for key, value in (("loss", loss), ("bleu", 30 - loss))})
        lines.append(json.dumps(record) + "\n")
    (folder / "metrics.jsonl").write_text("".join(lines))
    return folder


def test_a_multilingual_run_has_a_validation_curve_per_direction_beside_their_mean(tmp_path, capsys):
    from transformer.plotting import directions_of, run_figure

    records = read_metrics(write_multilingual_run(tmp_path / "multi"))
    assert directions_of(records) == ["en-de", "de-en"]
    assert directions_of(read_metrics(write_run(tmp_path / "bi", 1e-5))) == []
    figure = run_figure([("multi", records), ("bi", read_metrics(tmp_path / "bi"))])
    train_loss, valid_loss, valid_bleu, lr = figure.axes[:4]
    for ax in (valid_loss, valid_bleu):
        assert [line.get_label() for line in ax.get_lines()] == ["multi", "bi", "multi en-de", "multi de-en"]
    assert [line.get_label() for line in train_loss.get_lines()] == ["multi", "bi"]
    en_de = valid_loss.get_lines()[2]
    assert list(en_de.get_ydata()) == pytest.approx([6.2 - step / 25 + 0.2 for step in range(20, 101, 20)])
    assert en_de.get_linestyle() == "--" and valid_loss.get_lines()[0].get_linestyle() == "-"
    assert len({str(line.get_color()) for line in valid_loss.get_lines()}) == 4  # a colour each
    assert [t.get_text() for t in figure.axes[0].get_legend().get_texts()] == ["multi", "bi", "multi en-de",
                                                                                "multi de-en"]
    out = tmp_path / "run.png"
    code, _, _ = run_command(capsys, "run", str(tmp_path / "multi"), "-o", str(out))
    assert code == 0 and png_size(out) == (1700, 750)


def test_run_mistakes_are_one_error_line(tmp_path, capsys):
    assert_one_error_line(*run_command(capsys, "run", str(tmp_path / "nowhere"))[::2], "metrics.jsonl not found")
    bad = write_run(tmp_path / "bad", 1e-5)
    with open(bad / "metrics.jsonl", "a") as f:
        f.write("not json\n{}\n")
    assert_one_error_line(*run_command(capsys, "run", str(bad))[::2], "line 16 is not a JSON record")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "metrics.jsonl").write_text("")
    assert_one_error_line(*run_command(capsys, "run", str(empty))[::2], "no metrics yet")


# ---- matplotlib missing -------------------------------------------------------------------------------


@pytest.mark.parametrize("args", [["positions"], ["run", "."], ["attention", "--checkpoint", "CKPT", "a dog"]])
def test_without_matplotlib_every_plot_is_one_error_line(args, checkpoint, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` fails, as when it is not installed
    write_run(tmp_path / "run", 1e-5)
    monkeypatch.chdir(tmp_path / "run")
    args = [str(checkpoint) if a == "CKPT" else a for a in args]
    assert_one_error_line(*run_command(capsys, *args)[::2], 'pip install -e ".[plot]"', "matplotlib")
    assert not list((tmp_path / "run").glob("*.png"))
