"""SentencePiece vocabulary: fixed special ids, training, folder round trip, checkpoint state, decoding."""

from __future__ import annotations

import io
import logging
import random
from pathlib import Path

import pytest
import sentencepiece as spm
import torch

from transformer import tokens
from transformer.data.tokenizer import (
    BOS_ID,
    EOS_ID,
    JOINT_MODEL,
    META_FILE,
    PAD_ID,
    SRC_MODEL,
    TGT_MODEL,
    UNK_ID,
    Tokenizer,
)
from transformer.errors import ConfigError, DataError, OutputError

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "sample"
SPECIAL_TEXT = ("<pad>", "<unk>", "<s>", "</s>", "▁")


def read(name: str) -> list[str]:
    return (SAMPLE / name).read_text(encoding="utf-8").splitlines()


@pytest.fixture(scope="module")
def corpus() -> tuple[list[str], list[str]]:
    return read("train.en"), read("train.de")


@pytest.fixture(scope="module")
def joint(corpus, tmp_path_factory) -> Tokenizer:
    src, tgt = corpus
    return Tokenizer.train(src, tgt, tmp_path_factory.mktemp("joint"), vocab_size=200)


def test_special_id_constants_are_fixed_and_come_from_the_tokens_module():
    assert (PAD_ID, UNK_ID, BOS_ID, EOS_ID) == (0, 1, 2, 3)
    assert (PAD_ID, UNK_ID, BOS_ID, EOS_ID) == (tokens.PAD_ID, tokens.UNK_ID, tokens.BOS_ID, tokens.EOS_ID)


@pytest.mark.parametrize("model_type", ["bpe", "unigram"])
@pytest.mark.parametrize("joint_vocab", [True, False])
def test_trained_models_use_the_fixed_special_ids(corpus, tmp_path, model_type, joint_vocab):
    src, tgt = corpus
    Tokenizer.train(src, tgt, tmp_path, vocab_size=150, model_type=model_type, joint=joint_vocab)
    files = [JOINT_MODEL] if joint_vocab else [SRC_MODEL, TGT_MODEL]
    for name in files:
        sp = spm.SentencePieceProcessor(model_file=str(tmp_path / name))
        assert (sp.pad_id(), sp.unk_id(), sp.bos_id(), sp.eos_id()) == (PAD_ID, UNK_ID, BOS_ID, EOS_ID)
        assert [sp.id_to_piece(i) for i in range(4)] == ["<pad>", "<unk>", "<s>", "</s>"]
        assert sp.get_piece_size() == 150
    assert (tmp_path / META_FILE).is_file()


def test_encode_adds_no_specials_and_round_trips(joint, corpus):
    src, tgt = corpus
    for texts, ids in ((src[:50], joint.encode_src(src[:50])), (tgt[:50], joint.encode_tgt(tgt[:50]))):
        assert all(ids_ and not {PAD_ID, BOS_ID, EOS_ID} & set(ids_) for ids_ in ids)
        assert joint.decode_tgt(ids) == texts


@pytest.mark.parametrize("model_type", ["bpe", "unigram"])
def test_sampled_segmentations_are_seeded_and_round_trip(corpus, tmp_path, model_type):
    src, tgt = corpus
    tok = Tokenizer.train(src, tgt, tmp_path, vocab_size=200, model_type=model_type)
    best = tok.encode_tgt(tgt)
    sampled = tok.encode_tgt(tgt, sample_alpha=0.3, seed=11)
    tok.encode_src(src, sample_alpha=0.3, seed=12)  # a draw in between changes nothing for seed 11
    assert tok.encode_tgt(tgt, sample_alpha=0.3, seed=11) == sampled
    assert tok.encode_tgt(tgt, sample_alpha=0.3, seed=13) != sampled
    assert sampled != best and tok.decode_tgt(sampled) == tok.decode_tgt(best) == tgt
    assert tok.encode_tgt(tgt) == best  # sampling leaves the deterministic path as it was


def test_decode_strips_specials_and_cuts_at_first_eos(joint):
    pieces = joint.encode_tgt(["Ein Mann liest ein Buch."])[0]
    noisy = [BOS_ID, *pieces[:2], PAD_ID, *pieces[2:], EOS_ID, *pieces, PAD_ID, PAD_ID]
    assert joint.decode_tgt([noisy]) == ["Ein Mann liest ein Buch."]
    assert joint.decode_tgt([[EOS_ID, *pieces]]) == [""]
    assert joint.decode_tgt(torch.tensor([[BOS_ID, *pieces, EOS_ID]])) == ["Ein Mann liest ein Buch."]
    assert joint.decode_tgt([]) == []


def test_decode_never_emits_word_marker_or_special_text(joint):
    rng = random.Random(0)
    batch = [[rng.randrange(joint.tgt_vocab_size) for _ in range(rng.randrange(1, 30))] for _ in range(300)]
    for text in joint.decode_tgt(batch):
        assert not any(marker in text for marker in SPECIAL_TEXT), text


def test_decode_rejects_ids_outside_the_vocabulary(joint):
    with pytest.raises(ValueError, match="outside the vocabulary"):
        joint.decode_tgt([[5, joint.tgt_vocab_size]])


def test_joint_and_separate_vocabularies(corpus, tmp_path):
    src, tgt = corpus
    separate = Tokenizer.train(src, tgt, tmp_path / "sep", vocab_size=120, joint=False)
    assert not separate.joint and separate.src_vocab_size == separate.tgt_vocab_size == 120
    assert sorted(p.name for p in (tmp_path / "sep").iterdir()) == sorted([META_FILE, SRC_MODEL, TGT_MODEL])
    # A German-only target model segments German with fewer pieces than the English source model.
    german = tgt[:100]
    assert sum(map(len, separate.encode_tgt(german))) < sum(map(len, separate.encode_src(german)))
    assert separate.decode_tgt(separate.encode_tgt(german)) == german


def test_vocab_size_too_large_for_a_tiny_corpus_is_reduced_with_a_warning(corpus, tmp_path, caplog):
    src, tgt = corpus[0][:20], corpus[1][:20]
    with caplog.at_level(logging.WARNING, logger="transformer.tokenizer"):
        tok = Tokenizer.train(src, tgt, tmp_path / "u", vocab_size=200, model_type="unigram")
    assert tok.src_vocab_size < 200
    assert "too large" in caplog.text
    bpe = Tokenizer.train(src, tgt, tmp_path / "b", vocab_size=2000, model_type="bpe")
    assert 4 < bpe.src_vocab_size < 2000
    assert bpe.decode_tgt(bpe.encode_tgt(tgt)) == tgt


def test_vocab_size_below_the_alphabet_is_a_clear_error(corpus, tmp_path):
    # The sample corpus has 47 characters: with the 4 special pieces, 51 ids at least.
    with pytest.raises(ConfigError, match=r"data\.vocab_size=10 is too small.*set data\.vocab_size=51 or more"):
        Tokenizer.train(corpus[0], corpus[1], tmp_path, vocab_size=10)
    assert Tokenizer.train(corpus[0], corpus[1], tmp_path, vocab_size=51).src_vocab_size == 51


def test_any_other_sentencepiece_refusal_is_a_config_error(corpus, tmp_path):
    with pytest.raises(ConfigError, match=r"SentencePiece cannot train .* data\.vocab_size=1\b") as info:
        Tokenizer.train(corpus[0], corpus[1], tmp_path, vocab_size=1)  # below what DataConfig allows
    assert "trainer_interface.cc" not in str(info.value)


def test_no_text_to_train_on_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="no joint text"):
        Tokenizer.train(["", ""], ["", ""], tmp_path, vocab_size=100)


def test_unwritable_folder_is_one_clear_error(joint, tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(OutputError, match=f"{tmp_path / 'file' / 'tok'}: Not a directory"):
        joint.save(tmp_path / "file" / "tok")
    (tmp_path / "tok" / META_FILE).mkdir(parents=True)  # a folder where tokenizer.json goes
    with pytest.raises(OutputError, match=str(tmp_path / "tok" / META_FILE)):
        joint.save(tmp_path / "tok")
    assert sorted(p.name for p in (tmp_path / "tok").iterdir()) == [JOINT_MODEL, META_FILE]  # no temporary file left


def test_training_is_quiet(corpus, tmp_path, capfd):
    Tokenizer.train(corpus[0][:100], corpus[1][:100], tmp_path, vocab_size=100)
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_load_round_trip_and_missing_files(joint, corpus, tmp_path):
    joint.save(tmp_path / "tok")
    loaded = Tokenizer.load(tmp_path / "tok")
    assert loaded.encode_src(corpus[0][:20]) == joint.encode_src(corpus[0][:20])
    with pytest.raises(DataError, match=str(tmp_path / "nothing" / META_FILE)):
        Tokenizer.load(tmp_path / "nothing")
    (tmp_path / "tok" / JOINT_MODEL).write_bytes(b"not a model")
    with pytest.raises(DataError, match=f"tokenizer in {tmp_path / 'tok'} is damaged"):
        Tokenizer.load(tmp_path / "tok")
    (tmp_path / "tok" / JOINT_MODEL).unlink()
    with pytest.raises(DataError, match=f"{JOINT_MODEL} is missing; delete"):
        Tokenizer.load(tmp_path / "tok")


def test_load_or_train_reuses_the_folder_and_checks_settings(corpus, tmp_path, monkeypatch):
    src, tgt = corpus
    first = Tokenizer.load_or_train(tmp_path, src, tgt, vocab_size=150)

    def no_training(*args, **kwargs):
        raise AssertionError("retrained although the folder exists")

    monkeypatch.setattr(Tokenizer, "train", no_training)
    again = Tokenizer.load_or_train(tmp_path, src, tgt, vocab_size=150)
    assert again.encode_tgt(tgt[:20]) == first.encode_tgt(tgt[:20])
    with pytest.raises(ConfigError) as info:
        Tokenizer.load_or_train(tmp_path, src, tgt, vocab_size=300, joint=False)
    message = str(info.value)
    assert message.startswith("data.vocab_size=300, data.joint_vocab=false differs from the vocabulary already in")
    assert "trained with data.vocab_size=150, data.joint_vocab=true; use a new train.run_dir" in message


@pytest.mark.parametrize("joint_vocab", [True, False])
def test_state_survives_torch_load_weights_only(corpus, tmp_path, joint_vocab):
    src, tgt = corpus
    tok = Tokenizer.train(src, tgt, tmp_path, vocab_size=120, joint=joint_vocab)
    buffer = io.BytesIO()
    torch.save({"tokenizer": tok.to_state()}, buffer)
    buffer.seek(0)
    restored = Tokenizer.from_state(torch.load(buffer, weights_only=True)["tokenizer"])
    assert restored.joint == joint_vocab
    assert restored.encode_src(src[:30]) == tok.encode_src(src[:30])
    assert restored.encode_tgt(tgt[:30]) == tok.encode_tgt(tgt[:30])
    assert restored.settings == tok.settings
    with pytest.raises(ValueError, match="missing key"):
        Tokenizer.from_state({"joint": True})


def test_model_with_other_special_ids_is_rejected(corpus):
    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus[0]), model_writer=buffer, vocab_size=100, minloglevel=2
    )  # SentencePiece's defaults: unk=0, bos=1, eos=2, no pad
    with pytest.raises(ValueError, match="pad/unk/bos/eos ids"):
        Tokenizer(buffer.getvalue())
