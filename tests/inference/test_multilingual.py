"""One model, several directions: choosing the direction, the tag put first in each source, both engines and the
alignment on a two-direction checkpoint (conftest's en-de + de-en), and the commands that take --source-lang and
--target-lang (translate, evaluate, distill, export). A bilingual checkpoint needs none of them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from transformer.checkpoint import save_checkpoint
from transformer.cli import main
from transformer.config import Config, DataConfig
from transformer.data.batching import pad_ids
from transformer.decoding.search import decode_batch
from transformer.errors import CheckpointError
from transformer.inference import (
    DirectionError,
    TorchTranslator,
    choose_direction,
    forced_log_probs,
    load_translator,
    translate_texts,
    translator_for,
)
from transformer.inference.alignment import align_hypotheses, forced_attention, sentence_alignment, word_alignment
from transformer.inference.translator import encode_sources
from transformer.tokens import EOS_ID

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "data" / "sample"
TWO = DataConfig(directions=["en-de", "de-en"])
THREE = DataConfig(directions=["en-de", "fr-de", "de-en"])
ONE = DataConfig()  # en-de, bilingual


def lines(name: str) -> list[str]:
    return (SAMPLE / name).read_text(encoding="utf-8").splitlines()


# ---- choosing the direction -----------------------------------------------------------------------------------


@pytest.mark.parametrize("data, source, target, direction", [
    (TWO, None, "de", ("en", "de")),
    (TWO, None, "en", ("de", "en")),
    (TWO, "de", "en", ("de", "en")),
    (THREE, "fr", "de", ("fr", "de")),
    (THREE, None, "en", ("de", "en")),
    (ONE, None, None, ("en", "de")),
    (ONE, "en", None, ("en", "de")),
    (ONE, None, "de", ("en", "de")),
    (ONE, "en", "de", ("en", "de")),
])  # fmt: skip
def test_the_languages_choose_one_direction(data, source, target, direction):
    assert choose_direction(data, source, target) == direction


@pytest.mark.parametrize("data, source, target, words", [
    (TWO, None, None, ("this model translates en-de, de-en: choose one with --target-lang (and --source-lang)",)),
    (TWO, "en", None, ("--target-lang",)),
    (TWO, None, "fr", ("--target-lang 'fr' is not a target language of this model: it translates en-de, de-en",)),
    (TWO, "en", "en", ("--source-lang 'en' with --target-lang 'en' is not a direction", "en-de, de-en")),
    (TWO, "fr", "de", ("--source-lang 'fr' with --target-lang 'de' is not a direction", "en-de, de-en")),
    (THREE, None, "de", ("--target-lang 'de' is translated from en, fr: add --source-lang", "en-de, fr-de, de-en")),
    (ONE, "de", None, ("--source-lang 'de' is not a direction of this model: it translates en-de",)),
    (ONE, None, "fr", ("--target-lang 'fr' is not a target language of this model: it translates en-de",)),
    (ONE, "de", "en", ("--target-lang 'en' is not a target language", "it translates en-de")),
    (ONE, "de", "de", ("--source-lang 'de' with --target-lang 'de' is not a direction", "it translates en-de")),
])  # fmt: skip
def test_languages_that_are_no_direction_are_one_error_listing_the_directions(data, source, target, words):
    with pytest.raises(DirectionError) as caught:
        choose_direction(data, source, target)
    message = str(caught.value)
    assert "\n" not in message and all(w in message for w in words), message


@pytest.mark.parametrize("data, source, target, direction", [
    (THREE, "fr", "en", ("fr", "en")),  # fr only ever translated into de
    (TWO, "de", "de", ("de", "de")),
    (TWO, "en", "de", ("en", "de")),  # a trained direction stays itself
])  # fmt: skip
def test_zero_shot_takes_any_language_of_the_model_into_any_of_its_targets(data, source, target, direction):
    assert choose_direction(data, source, target, zero_shot=True) == direction


@pytest.mark.parametrize("data, source, target, words", [
    (ONE, "en", "de", "zero-shot needs a multilingual model (data.directions), and this one is bilingual"),
    (TWO, None, "de", "zero-shot needs both --source-lang and --target-lang: it translates en-de, de-en"),
    (TWO, "fr", "de", "--source-lang 'fr' is none of this model's languages (de, en): it translates en-de, de-en"),
    (THREE, "en", "fr", "--target-lang 'fr' is not a target language of this model"),
])  # fmt: skip
def test_zero_shot_refuses_what_the_model_cannot_tag_in_one_line(data, source, target, words):
    with pytest.raises(DirectionError) as caught:
        choose_direction(data, source, target, zero_shot=True)
    assert "\n" not in str(caught.value) and words in str(caught.value), caught.value


def test_an_untrained_direction_points_to_zero_shot_on_the_command_line_only():
    with pytest.raises(DirectionError, match="; --zero-shot translates it untrained$"):
        choose_direction(THREE, "fr", "en")
    with pytest.raises(DirectionError) as caught:
        choose_direction(THREE, "fr", "en", names=("source", "target"))
    assert "zero-shot" not in str(caught.value)


def test_the_error_names_the_fields_it_is_given():
    with pytest.raises(DirectionError, match="^target 'fr' is not a target language"):
        choose_direction(TWO, None, "fr", names=("source", "target"))


# ---- the translator of a direction -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def multilingual(multilingual_checkpoint) -> tuple[TorchTranslator, Config]:
    translator, config = load_translator("torch", checkpoints=[multilingual_checkpoint])
    assert isinstance(translator, TorchTranslator) and config.data.multilingual
    return translator, config


def test_each_direction_puts_its_target_tag_first_and_the_tag_changes_the_translation(multilingual):
    translator, config = multilingual
    greedy = config.decode.updated(beam_size=1)
    sources = lines("test.en")
    outputs = {}
    for direction in (("en", "de"), ("de", "en")):
        tagged = translator_for(translator, config.data, direction)
        tag = tagged.tokenizer.tag_id(direction[1])
        ids = encode_sources(tagged.tokenizer, sources, max_src_tokens=None)
        assert all(x[0] == tag and x[1:] == y + [EOS_ID] for x, y in zip(ids, translator.tokenizer.encode_src(sources)))
        nbest = tagged.translate(sources, greedy)
        by_hand = decode_batch(translator.model, pad_ids(ids, "cpu"), greedy)  # the same ids, decoded directly
        assert [h[0].tokens for h in nbest] == [h[0].tokens for h in by_hand]
        outputs[direction] = translate_texts(tagged, sources, greedy)
    different = sum(a != b for a, b in zip(outputs["en", "de"], outputs["de", "en"]))
    assert different >= 8, different  # 14 of 40 with this seed


def test_a_multilingual_model_without_a_direction_is_refused_not_decoded_untagged(multilingual):
    translator, config = multilingual
    with pytest.raises(ValueError, match="translates into one language at a time"):
        translator.translate(["A dog."], config.decode)
    with pytest.raises(ValueError, match="translates into one language at a time"):
        forced_log_probs(translator, ["A dog."], ["Ein Hund."])


def test_a_truncated_source_keeps_its_tag_and_its_eos(multilingual):
    translator, config = multilingual
    tagged = translator_for(translator, config.data, ("en", "de"))
    [ids] = encode_sources(tagged.tokenizer, ["A man in a blue shirt is standing on a ladder."], max_src_tokens=4)
    assert len(ids) == 4 and ids[0] == tagged.tokenizer.tag_id("de") and ids[-1] == EOS_ID


def test_the_alignment_links_words_of_the_text_never_the_tag(multilingual):
    translator, config = multilingual
    tagged = translator_for(translator, config.data, ("en", "de"))
    texts = lines("test.en")[:6]
    nbest = tagged.translate(texts, config.decode)
    links = align_hypotheses(tagged.model, tagged.tokenizer, texts, nbest, device="cpu")
    sources = encode_sources(tagged.tokenizer, texts, max_src_tokens=None)
    attentions = forced_attention(tagged.model, tagged.tokenizer, sources, [h[0].tokens for h in nbest], device="cpu")
    for text, found, attention in zip(texts, links, attentions):
        assert attention.src_pieces[0] == "<2de>" and attention.src_prefix == 1  # the map keeps the tag, as read
        assert found[0] == sentence_alignment(attention)
        assert {i for i, _ in found[0]} <= set(range(len(text.split())))
        cross = attention.cross[-1].mean(dim=0)
        assert found[0] == word_alignment(cross[:-1, 1:-1], attention.src_pieces[1:-1], attention.tgt_pieces[:-1])
    # Not vacuous: with the tag's column, the source word of every link would be one further on.
    assert any(i > 0 for found in links for i, _ in found[0])


def test_an_ensemble_decodes_each_direction_and_needs_members_of_the_same_directions(multilingual_checkpoint, tmp_path):
    state = torch.load(multilingual_checkpoint, weights_only=True)
    torch.manual_seed(1)
    state["model"] = {k: v + 0.05 * torch.randn_like(v) if v.is_floating_point() else v for k, v in state["model"].items()}
    save_checkpoint(state, tmp_path / "other.pt")
    ensemble, config = load_translator("torch", checkpoints=[multilingual_checkpoint, tmp_path / "other.pt"])
    for direction in config.data.direction_pairs:
        assert all(translate_texts(translator_for(ensemble, config.data, direction), ["A dog runs."], config.decode))

    state["config"]["data"]["directions"] = ["en-de", "fr-en"]  # the same tags, other directions
    save_checkpoint(state, tmp_path / "fr.pt")
    with pytest.raises(CheckpointError, match="translates en-de, fr-en, .* en-de, de-en: an ensemble needs models of"):
        load_translator("torch", checkpoints=[multilingual_checkpoint, tmp_path / "fr.pt"])


def test_a_checkpoint_whose_vocabulary_lacks_the_tags_is_refused(tokenizer, make_state, tmp_path):
    state, _ = make_state(tokenizer)  # a bilingual vocabulary
    state["config"]["data"]["directions"] = ["en-de", "de-en"]
    save_checkpoint(state, tmp_path / "bad.pt")
    translator, config = load_translator("torch", checkpoints=[tmp_path / "bad.pt"])
    with pytest.raises(CheckpointError, match="tags for none: its checkpoint or export is damaged"):
        translator_for(translator, config.data, ("en", "de"))


# ---- CTranslate2 ----------------------------------------------------------------------------------------------


def test_the_export_translates_both_directions_as_the_torch_engine(multilingual, multilingual_export):
    pytest.importorskip("ctranslate2")
    translator, config = multilingual
    exported, exported_config = load_translator("ctranslate2", model_dir=multilingual_export, intra_threads=1)
    assert exported_config == config and exported.tokenizer.tags == ["de", "en"]
    vocabulary = json.loads((multilingual_export / "shared_vocabulary.json").read_text())
    assert {"<2de>", "<2en>"} <= set(vocabulary)
    greedy = config.decode.updated(beam_size=1)
    sources = {"de": lines("test.en")[:20], "en": lines("test.de")[:20]}
    for direction in config.data.direction_pairs:
        ours, theirs = (translator_for(t, config.data, direction) for t in (translator, exported))
        texts = sources[direction[1]]
        assert [h[0].tokens for h in ours.translate(texts, greedy)] == [h[0].tokens for h in theirs.translate(texts, greedy)]
        a = forced_log_probs(ours, texts[:5], sources[direction[0]][:5])
        b = forced_log_probs(theirs, texts[:5], sources[direction[0]][:5])
        assert max(abs(x - y) for p, q in zip(a, b) for x, y in zip(p, q)) < 1e-4


# ---- the commands ---------------------------------------------------------------------------------------------


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main([*args])
    out, err = capsys.readouterr()
    return code, out, err


def error_line(err: str) -> str:
    assert "Traceback" not in err and err.count("\n") == 1 and err.startswith("error: "), err
    return err.strip()


def test_translate_takes_the_target_language_and_prints_each_directions_translation(multilingual_checkpoint, multilingual, capsys):
    translator, config = multilingual
    ckpt = ["--checkpoint", str(multilingual_checkpoint)]
    texts = ["A man is walking his dog.", "Zwei Frauen sitzen auf einer Bank."]
    for direction in config.data.direction_pairs:
        expected = translate_texts(translator_for(translator, config.data, direction), texts, config.decode)
        code, out, _ = run(capsys, "translate", *ckpt, "--target-lang", direction[1], *texts)
        assert code == 0 and out.splitlines() == expected
        code, out, _ = run(capsys, "translate", *ckpt, "--src-lang", direction[0], "--tgt-lang", direction[1], *texts)
        assert code == 0 and out.splitlines() == expected  # the old spellings, and the source, change nothing
    code, out, _ = run(capsys, "translate", *ckpt, "--target-lang", "en", "--alignment", texts[1])
    translation, links = out.rstrip("\n").split("\t")
    assert code == 0 and links and all(int(link.split("-")[0]) < 5 for link in links.split())


@pytest.mark.parametrize("args, words", [
    ((), "this model translates en-de, de-en: choose one with --target-lang"),
    (("--target-lang", "fr"), "--target-lang 'fr' is not a target language of this model: it translates en-de, de-en"),
    (("--source-lang", "fr", "--target-lang", "de"), "it translates en-de, de-en"),
])  # fmt: skip
def test_translate_without_a_direction_of_the_model_is_one_error_line(multilingual_checkpoint, capsys, args, words):
    code, out, err = run(capsys, "translate", "--checkpoint", str(multilingual_checkpoint), *args, "A dog.")
    assert code == 2 and out == "" and words in error_line(err)


TWO_WAYS = (("de", "de"), ("de", "en"))


def test_zero_shot_tags_the_source_for_an_untrained_target(multilingual_checkpoint, multilingual, capsys):
    translator, config = multilingual
    texts = ["Zwei Frauen sitzen auf einer Bank.", "Ein Hund rennt."]
    ckpt = ["--checkpoint", str(multilingual_checkpoint)]
    code, out, _ = run(capsys, "translate", *ckpt, "--source-lang", "de", "--target-lang", "de", "--zero-shot", *texts)
    de_de = translate_texts(translator_for(translator, config.data, ("de", "de")), texts, config.decode)
    assert code == 0 and out.splitlines() == de_de
    sources = lines("test.de")  # the tag, not the source language, chooses the output
    tagged = [translate_texts(translator_for(translator, config.data, d), sources, config.decode) for d in TWO_WAYS]
    assert tagged[0] != tagged[1]
    # a corpus needs two languages: evaluate reads the untrained direction's files, and de-de has none
    code, _, err = run(capsys, "evaluate", *ckpt, "--source-lang", "de", "--target-lang", "de", "--zero-shot")
    assert code == 2 and error_line(err) == "error: data.src_lang and data.tgt_lang are both 'de'"
    code, _, err = run(capsys, "translate", *ckpt, "--target-lang", "de", "--zero-shot", "A dog.")
    assert code == 2 and "zero-shot needs both --source-lang and --target-lang" in error_line(err)


def test_a_bilingual_checkpoint_needs_no_language_and_refuses_another(tokenizer, make_state, tmp_path, capsys):
    state, _ = make_state(tokenizer)
    del state["config"]["data"]["directions"], state["config"]["data"]["direction_temperature"]  # as before them
    save_checkpoint(state, tmp_path / "old.pt")
    ckpt = ["translate", "--checkpoint", str(tmp_path / "old.pt"), "--beam-size", "1", "a man rides a bike"]
    code, plain, _ = run(capsys, *ckpt)
    assert code == 0 and plain.strip()
    assert run(capsys, *ckpt, "--source-lang", "en", "--target-lang", "de")[:2] == (0, plain)
    code, _, err = run(capsys, *ckpt, "--target-lang", "fr")
    assert code == 2 and "--target-lang 'fr' is not a target language of this model: it translates en-de" in error_line(err)
    # evaluate and distill: for a bilingual model the languages name the corpus files, as --src-lang/--tgt-lang did
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for lang, name in (("eng", "test.en"), ("deu", "test.de")):
        (corpus / f"test_2016_flickr.{lang}").write_text("".join(line + "\n" for line in lines(name)[:3]), encoding="utf-8")
    code, out, err = run(capsys, "evaluate", "--checkpoint", str(tmp_path / "old.pt"), "--data-dir", str(corpus),
                       "--src-lang", "eng", "--tgt-lang", "deu", "--beam-size", "1")
    assert code == 0 and "eng-deu test split (test_2016_flickr), 3 sentences" in out, err


def test_evaluate_reads_the_corpus_of_the_chosen_direction(multilingual_checkpoint, multilingual, tmp_path, capsys):
    translator, config = multilingual
    ckpt = ["evaluate", "--checkpoint", str(multilingual_checkpoint), "--max-sentences", "5"]
    code, out, _ = run(capsys, *ckpt, "--source-lang", "de", "--target-lang", "en", "--output", str(tmp_path / "h"))
    assert code == 0 and "de-en test split (test), 5 sentences" in out.splitlines()[0]
    tagged = translator_for(translator, config.data, ("de", "en"))
    assert (tmp_path / "h").read_text().splitlines() == translate_texts(tagged, lines("test.de")[:5], config.decode)
    code, out, _ = run(capsys, *ckpt, "--tgt-lang", "de")
    assert code == 0 and "en-de test split (test), 5 sentences" in out
    code, _, err = run(capsys, *ckpt)
    assert code == 2 and "choose one with --target-lang" in error_line(err) and "en-de, de-en" in err


def test_distill_translates_the_corpus_of_the_chosen_direction(multilingual_checkpoint, multilingual, tmp_path, capsys):
    translator, config = multilingual
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name in ("train.en", "train.de", "val.en", "val.de"):
        (corpus / name).write_text("".join(line + "\n" for line in lines(name)[:6]), encoding="utf-8")
    args = ["distill", "--checkpoint", str(multilingual_checkpoint), "--data-dir", str(corpus), "--beam-size", "1"]
    code, out, _ = run(capsys, *args, "--output", str(tmp_path / "out"), "--source-lang", "de", "--target-lang", "en")
    assert code == 0 and "de-en train split" in out
    tagged = translator_for(translator, config.data, ("de", "en"))
    greedy = config.decode.updated(beam_size=1)
    assert (tmp_path / "out" / "train.en").read_text().splitlines() == translate_texts(tagged, lines("train.de")[:6], greedy)
    assert (tmp_path / "out" / "train.de").read_text().splitlines() == lines("train.de")[:6]
    code, _, err = run(capsys, *args, "--output", str(tmp_path / "no"), "--target-lang", "fr")
    assert code == 2 and "en-de, de-en" in error_line(err) and not (tmp_path / "no").exists()


def test_export_keeps_both_directions_and_translate_with_ctranslate2_prints_the_same(multilingual_checkpoint, tmp_path, capsys):
    pytest.importorskip("ctranslate2")
    code, out, _ = run(capsys, "export", "--checkpoint", str(multilingual_checkpoint), "--output", str(tmp_path / "ct2"))
    assert code == 0 and "--target-lang" in out and "en-de, de-en" in out
    texts = ["A dog is running.", "Ein Hund rennt."]
    for target in ("de", "en"):
        ours = run(capsys, "translate", "--checkpoint", str(multilingual_checkpoint), "--beam-size", "1",
                   "--target-lang", target, *texts)
        theirs = run(capsys, "translate", "--engine", "ctranslate2", "--model", str(tmp_path / "ct2"), "--beam-size",
                     "1", "--target-lang", target, "--intra-threads", "1", *texts)
        assert ours == theirs and ours[0] == 0 and len(ours[1].splitlines()) == 2
    code, _, err = run(capsys, "translate", "--engine", "ctranslate2", "--model", str(tmp_path / "ct2"), "A dog.")
    assert code == 2 and "en-de, de-en" in error_line(err)


def test_a_direction_the_model_lacks_through_the_command_is_one_error_line(multilingual_checkpoint):
    result = subprocess.run(
        [sys.executable, "-m", "transformer", "translate", "--checkpoint", str(multilingual_checkpoint),
         "--target-lang", "fr", "A dog."],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2 and result.stdout == "", result.stderr
    assert result.stderr == (
        "error: --target-lang 'fr' is not a target language of this model: it translates en-de, de-en\n"
    )


@pytest.mark.slow
@pytest.mark.parametrize("args", [
    ("translate", "A dog."),
    ("evaluate", "--source-lang", "fr", "--target-lang", "de"),
    ("distill", "--data-dir", str(SAMPLE), "--output", "{tmp}/out", "--target-lang", "cs"),
])  # fmt: skip
def test_every_command_refuses_a_direction_the_model_lacks_in_one_line(multilingual_checkpoint, tmp_path, args):
    command, *rest = args
    argv = [command, "--checkpoint", str(multilingual_checkpoint), *(a.format(tmp=tmp_path) for a in rest)]
    result = subprocess.run(
        [sys.executable, "-m", "transformer", *argv], capture_output=True, text=True, cwd=ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ") and "en-de, de-en" in result.stderr
    assert not (tmp_path / "out").exists()

