"""Word alignments from cross-attention: pieces to words, the EOS left out, the ``i-j`` format, ``translate
--alignment``; and, on a model trained for a minute on the sample corpus, names and numbers linked correctly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from transformer.checkpoint import load_for_inference, save_checkpoint
from transformer.cli import main as cli_main
from transformer.config import Config, DecodeConfig, ModelConfig
from transformer.data.tokenizer import Tokenizer
from transformer.inference import TorchTranslator
from transformer.inference.alignment import (
    SentenceAttention,
    align_hypotheses,
    align_pairs,
    format_alignment,
    layer_index,
    sentence_alignment,
    translate_with_attention,
    word_alignment,
    word_ids,
)
from transformer.model.transformer import Transformer

ROOT = Path(__file__).resolve().parents[2]
W = "\u2581"  # SentencePiece's word start

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one intra-op thread for tiny tensors


# ---- pieces to words ----------------------------------------------------------------------------------


def test_word_ids_start_a_word_at_each_marker():
    assert word_ids([f"{W}Three", f"{W}d", "o", "g", "s", f"{W}are", "."]) == [0, 1, 1, 1, 1, 2, 2]
    assert word_ids(["s", f"{W}x", f"{W}", "4"]) == [0, 1, 2, 2]  # a first piece without the marker is word 0
    assert word_ids([f"{W}a", f"{W}", f"{W}b"]) == [0, 1, 1]  # a bare marker is no word of its own
    assert word_ids([]) == []


def test_word_alignment_sums_a_source_words_pieces_and_averages_a_target_words():
    src = [f"{W}a", f"{W}bi", "g", f"{W}c"]  # words: a, big, c
    tgt = [f"{W}x", f"{W}y", "y"]  # words: x, yy
    cross = torch.tensor([
        [0.40, 0.30, 0.30, 0.00],  # x: piece argmax is "a", but the word "big" holds 0.6
        [0.10, 0.00, 0.00, 0.90],  # first piece of yy: c
        [0.50, 0.00, 0.00, 0.20],  # second piece of yy: a; the mean over yy's pieces still favours c (0.55 > 0.3)
    ])
    assert word_alignment(cross, src, tgt) == [(1, 0), (2, 1)]
    assert format_alignment(word_alignment(cross, src, tgt)) == "1-0 2-1"
    assert word_alignment(torch.zeros(0, 4), src, []) == []
    with pytest.raises(ValueError, match="shape"):
        word_alignment(cross, src, tgt[:2])


def test_sentence_alignment_never_links_the_source_eos_or_the_target_eos():
    cross = torch.tensor([[0.2, 0.1, 0.7], [0.6, 0.3, 0.1], [0.0, 0.0, 1.0]])  # rows: x, y, </s>; keys: a, b, </s>
    layer = torch.stack([cross, cross])[None]  # (L=1, H=2, T=3, S=3)
    attention = SentenceAttention(
        src_pieces=[f"{W}a", f"{W}b", "</s>"], tgt_pieces=[f"{W}x", f"{W}y", "</s>"],
        decoder_input=["<s>", f"{W}x", f"{W}y"], encoder=torch.zeros(1, 2, 3, 3), decoder=torch.zeros(1, 2, 3, 3),
        cross=layer,
    )
    assert sentence_alignment(attention, layer=1) == [(0, 0), (0, 1)]
    assert sentence_alignment(attention, layer=-1) == [(0, 0), (0, 1)]


def test_layers_count_from_one_or_from_the_end():
    assert [layer_index(n, 4) for n in (1, 4, -1, -4)] == [0, 3, 3, 0]
    for bad in (0, 5, -5):
        with pytest.raises(ValueError, match="layers 1..4"):
            layer_index(bad, 4)


# ---- a tiny untrained model ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny untrained model (2 + 2 layers) with a small joint vocabulary, saved as a checkpoint."""
    folder = tmp_path_factory.mktemp("align")
    texts = ["a man rides a bike", "two dogs play in the park", "zwei hunde spielen im park", "ein mann liest"] * 4
    tokenizer = Tokenizer.train(texts, texts, folder / "spm", vocab_size=50, joint=True)
    config = Config(model=ModelConfig.preset("tiny", src_vocab_size=tokenizer.src_vocab_size,
                                             tgt_vocab_size=tokenizer.tgt_vocab_size),
                    decode=DecodeConfig(beam_size=2, max_len_a=1.0, max_len_b=3))
    torch.manual_seed(0)
    state = {"config": config.to_dict(), "model": Transformer(config.model).state_dict(),
             "tokenizer": tokenizer.to_state(), "step": 0}
    save_checkpoint(state, folder / "tiny.pt")
    return folder / "tiny.pt"


def test_every_hypothesis_gets_one_link_per_target_word(checkpoint):
    model, tokenizer, config = load_for_inference(checkpoint)
    texts = ["two dogs play in the park", "", "a man rides a bike"]
    cfg = DecodeConfig(beam_size=3, n_best=3, max_len_a=1.0, max_len_b=3)
    nbest = TorchTranslator(model, tokenizer, device="cpu").translate(texts, cfg)
    links = align_hypotheses(model, tokenizer, texts, nbest, layer=2, device="cpu", batch_size=2)
    assert [len(x) for x in links] == [len(h) for h in nbest] == [3, 0, 3]
    for text, hyps, aligned in zip(texts, nbest, links):
        for hyp, pairs in zip(hyps, aligned):
            words = tokenizer.decode_tgt([hyp.tokens])[0].split()
            assert [j for _, j in pairs] == list(range(len(words)))
            assert all(0 <= i < len(text.split()) for i, _ in pairs)
    # Batched with padding or alone: the same links.
    alone = align_hypotheses(model, tokenizer, texts[2:], nbest[2:], layer=2, device="cpu", batch_size=1)
    assert alone == links[2:]
    with pytest.raises(ValueError, match="layer 3"):
        align_pairs(model, tokenizer, texts[:1], ["zwei hunde"], layer=3, device="cpu")


# The links of a fixed case, computed by the module before it moved from transformer.decoding.alignment to
# transformer.inference.alignment (each link's word-level attention margin is 0.004 or more: no near-ties).
FIXED_PAIRS = [
    ("two dogs play in the park", "zwei hunde spielen im park"),
    ("a man rides a bike", "ein mann liest"),
    ("ein mann", "a man rides a bike"),
]
FIXED_LINKS = {
    1: [[(1, 0), (2, 1), (2, 2), (1, 3), (2, 4)], [(2, 0), (2, 1), (2, 2)], [(0, 0), (0, 1), (0, 2), (0, 3), (0, 4)]],
    2: [[(3, 0), (2, 1), (3, 2), (3, 3), (1, 4)], [(2, 0), (2, 1), (2, 2)], [(0, 0), (0, 1), (0, 2), (0, 3), (0, 4)]],
}


@pytest.mark.parametrize("layer", FIXED_LINKS)
def test_the_alignments_of_a_fixed_case_are_those_of_the_module_before_the_move(checkpoint, layer):
    model, tokenizer, _ = load_for_inference(checkpoint)
    sources, targets = zip(*FIXED_PAIRS)
    assert align_pairs(model, tokenizer, sources, targets, layer=layer, device="cpu") == FIXED_LINKS[layer]
    assert align_pairs(model, tokenizer, sources, targets, layer=layer - 3, device="cpu") == FIXED_LINKS[layer]


def test_translate_alignment_appends_the_links_to_each_line(checkpoint, capsys):
    texts = ["two dogs play in the park", "", "a man rides a bike"]
    assert cli_main(["translate", "--checkpoint", str(checkpoint), *texts]) == 0
    plain = capsys.readouterr().out.split("\n")[:-1]
    assert cli_main(["translate", "--checkpoint", str(checkpoint), "--alignment", *texts]) == 0
    lines = capsys.readouterr().out.split("\n")[:-1]
    assert len(lines) == 3 and lines[1] == "\t"  # an empty input keeps its line
    for source, line, translation in zip(texts, lines, plain):
        text, links = line.split("\t")
        assert text == translation
        pairs = [tuple(map(int, p.split("-"))) for p in links.split()]
        assert [j for _, j in pairs] == list(range(len(text.split())))
        assert all(0 <= i < len(source.split()) for i, _ in pairs)
    assert cli_main(["translate", "--checkpoint", str(checkpoint), "--alignment", "--n-best", "2", texts[0]]) == 0
    rows = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    assert [r[0] for r in rows] == ["0", "0"] and all(len(r) == 4 for r in rows)


def test_an_over_long_input_is_warned_about_once_with_alignment(checkpoint, caplog):
    model, tokenizer, config = load_for_inference(checkpoint)
    texts = ["two dogs play in the park " * 4, "a man"]
    with caplog.at_level("WARNING"):
        pairs = translate_with_attention(model, tokenizer, texts, config.decode, device="cpu", max_src_tokens=5)
    assert len(pairs) == 2 and pairs[0][1].cross.size(-1) == 5  # the truncated source, EOS included
    warnings = [r.getMessage() for r in caplog.records if "truncated" in r.getMessage()]
    assert warnings == ["1 of 2 input sentences are longer than 5 tokens (EOS included) and were truncated"]


@pytest.mark.parametrize(
    ("options", "needle"),
    [(["--alignment-layer", "3"], "--alignment-layer: layer 3 does not exist"),
     (["--checkpoint", "CKPT"], "--alignment needs a single --checkpoint")],
)
def test_alignment_mistakes_are_one_error_line(checkpoint, capsys, options, needle):
    options = [str(checkpoint) if o == "CKPT" else o for o in options]
    code = cli_main(["translate", "--checkpoint", str(checkpoint), "--alignment", *options, "a man"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith(f"error: {needle}") and "Traceback" not in err


# ---- a model trained for a minute ---------------------------------------------------------------------

# Sentence pairs with names and numbers, and the gold (source word, target word) links of those. The sample
# corpus has number words (Two, Three, Four) but no names and no digits: names and digits must be followed
# by attention alone, the pieces they are spelled with being shared by the joint vocabulary.
NAMES_AND_NUMBERS = [
    ("Three dogs are swimming in the lake.", "Drei Hunde schwimmen im See.", [(0, 0)]),
    ("Four men are sitting at a table.", "Vier Männer sitzen an einem Tisch.", [(0, 0)]),
    ("Two girls are dancing in the kitchen.", "Zwei Mädchen tanzen in der Küche.", [(0, 0)]),
    ("The man is holding four cups.", "Der Mann hält vier Tassen.", [(4, 3)]),
    ("Anna is reading a book.", "Anna liest ein Buch.", [(0, 0)]),
    ("Tom is eating an apple.", "Tom isst einen Apfel.", [(0, 0)]),
    ("Maria is playing in the garden.", "Maria spielt im Garten.", [(0, 0)]),
    ("Peter is sitting on the grass with Anna.", "Peter sitzt mit Anna auf dem Rasen.", [(0, 0), (7, 3)]),
    ("Three children are waiting for Tom.", "Drei Kinder warten auf Tom.", [(0, 0), (5, 4)]),
    ("Lisa is buying 3 apples.", "Lisa kauft 3 Äpfel.", [(0, 0), (3, 2)]),
    ("Two students are reading in Berlin.", "Zwei Studentinnen lesen in Berlin.", [(0, 0), (5, 4)]),
    ("Four women are walking to Paris.", "Vier Frauen gehen nach Paris.", [(0, 0), (5, 4)]),
    ("The worker is carrying 12 boxes.", "Der Arbeiter trägt 12 Kisten.", [(4, 3)]),
    ("Anna and Tom are dancing at a party.", "Anna und Tom tanzen auf einer Party.", [(0, 0), (2, 2)]),
    ("A boy is painting 2 pictures.", "Ein Junge malt 2 Bilder.", [(4, 3)]),
]


@pytest.fixture(scope="module")
def sample_model(tmp_path_factory) -> Path:
    """best.pt of `transformer train --config configs/sample.yaml`: about a minute on a 2-core CPU."""
    run_dir = tmp_path_factory.mktemp("sample") / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "transformer", "train", "--config", "configs/sample.yaml", f"train.run_dir={run_dir}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir / "checkpoints" / "best.pt"


def linked_share(model: Transformer, tokenizer: Tokenizer, layer: int) -> float:
    sources, targets, gold = zip(*NAMES_AND_NUMBERS)
    aligned = align_pairs(model, tokenizer, sources, targets, layer=layer, device="cpu")
    hits = [link in links for links, wanted in zip(aligned, gold) for link in wanted]
    return sum(hits) / len(hits)


@pytest.mark.slow
def test_names_and_numbers_are_linked_in_most_cases(sample_model):
    model, tokenizer, _ = load_for_inference(sample_model)
    share = linked_share(model, tokenizer, layer=-1)  # the default layer: the last
    print(f"names and numbers linked correctly: {share:.0%} of 21 links")  # shown with pytest -s
    assert share > 0.5


@pytest.mark.slow
def test_translate_alignment_of_the_trained_model(sample_model):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "transformer", "translate", "--checkpoint", str(sample_model), "--alignment"],
        input="Three dogs are swimming in the lake.\n", cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    text, links = result.stdout.rstrip("\n").split("\t")
    assert text.split()[0] == "Drei" and "0-0" in links.split()
