"""sacreBLEU scoring, text-level translation, and the evaluate/translate scripts on a tiny checkpoint."""

from __future__ import annotations

import io
import logging
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import sentencepiece as spm
import torch
from sacrebleu.metrics import BLEU
from torch import nn

from transformer.checkpoint import save_checkpoint
from transformer.cli import main as cli_main
from transformer.config import Config, DataConfig, DecodeConfig, ModelConfig
from transformer.data.tokenizer import Tokenizer
from transformer.decoding.ensemble import Ensemble
from transformer.errors import DataError, UserError
from transformer.evaluation import corpus_scores, evaluate_model, moses_tokenize, tokenized_bleu
from transformer.inference import TorchTranslator, translate_texts
from transformer.model.transformer import Transformer

ROOT = Path(__file__).resolve().parents[1]
SUBJECTS = ["A man", "Two women", "A little girl", "The old dog", "Three children", "A young boy"]
ACTIONS = ["rides a red bike", "is playing in the park", "walks down the street", "eats an apple", "sits on a bench"]
SRC = [f"{s} {a}." for s in SUBJECTS for a in ACTIONS]
TGT = [f"{s.upper()} ({a})" for s in SUBJECTS for a in ACTIONS]  # any text will do; only the pipeline is tested
SPECIALS = ("▁", "<s>", "</s>", "<pad>", "<unk>")


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one intra-op thread for tiny tensors


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Tokenizer:
    return Tokenizer.train(SRC, TGT, tmp_path_factory.mktemp("tok"), vocab_size=80)


def make_model(tokenizer: Tokenizer, seed: int = 0) -> Transformer:
    """Untrained tiny model, untied output scaled so that outputs vary and end early."""
    torch.manual_seed(seed)
    config = ModelConfig.preset(
        "tiny", src_vocab_size=tokenizer.src_vocab_size, tgt_vocab_size=tokenizer.tgt_vocab_size, tie_output=False
    )
    model = Transformer(config)
    nn.init.normal_(model.output.weight, std=0.4)
    return model.eval()


def translator(model: nn.Module, tokenizer: Tokenizer) -> TorchTranslator:
    """The PyTorch engine of a model or an ensemble, on the CPU."""
    return TorchTranslator(model, tokenizer, device="cpu")


def load_script(name: str) -> SimpleNamespace:
    """The subcommand ``name`` of the ``transformer`` command, called in-process as ``.main(argv)``."""
    return SimpleNamespace(main=lambda argv: cli_main([name, *argv]))


# ------------------------------------------------------------------------------------------- scoring
def test_references_against_themselves_score_100():
    scores = corpus_scores(TGT, TGT)
    assert scores["bleu"] == pytest.approx(100.0) and scores["chrf"] == pytest.approx(100.0)
    assert "nrefs:1" in scores["bleu_signature"] and "case:mixed" in scores["bleu_signature"]
    assert scores["chrf_signature"].startswith("nrefs:1")
    assert "case:lc" in corpus_scores(TGT, TGT, lowercase=True)["bleu_signature"]
    assert corpus_scores(TGT[1:] + TGT[:1], TGT)["bleu"] < 50  # shifted by one line: must be low


def test_lowercase_bleu_ignores_case():
    hyps = [t.lower() for t in TGT]
    assert corpus_scores(hyps, TGT)["bleu"] < 100
    assert corpus_scores(hyps, TGT, lowercase=True)["bleu"] == pytest.approx(100.0)


def test_count_mismatch_and_empty_input_raise():
    with pytest.raises(ValueError, match="2 hypotheses but 3 references"):
        corpus_scores(["a", "b"], ["a", "b", "c"])
    with pytest.raises(ValueError, match="no sentences"):
        corpus_scores([], [])


# ---------------------------------------------------------------------------- text in, text out
def test_translations_are_plain_text_in_input_order(tokenizer):
    model = make_model(tokenizer)
    texts = ["", SRC[3], SRC[10] + " " + SRC[11], "   ", SRC[0]]
    cfg = DecodeConfig(beam_size=3, max_len_a=0.2, max_len_b=4, batch_size=2)
    out = translate_texts(translator(model, tokenizer), texts, cfg)
    assert len(out) == len(texts) and out[0] == "" and out[3] == ""
    for i in (1, 2, 4):
        assert out[i] == translate_texts(translator(model, tokenizer), [texts[i]], cfg)[0]
    assert all(s not in text for text in out for s in SPECIALS)
    # Not vacuous: the hypotheses' raw pieces do carry the word marker that decoding must remove.
    sp = spm.SentencePieceProcessor(model_proto=tokenizer.to_state()["src_model"])
    pieces = [sp.id_to_piece(i) for hyps in translator(model, tokenizer).translate(texts, cfg) for h in hyps
              for i in h.tokens]
    assert any(p.startswith("▁") for p in pieces)


def test_overlong_input_is_truncated_with_a_warning(tokenizer, caplog):
    model = make_model(tokenizer)
    long_text = " ".join(SRC)  # hundreds of pieces
    cfg = DecodeConfig(beam_size=2, max_len_a=0.0, max_len_b=5)
    with caplog.at_level(logging.WARNING, logger="transformer.inference"):
        out = translate_texts(translator(model, tokenizer), [long_text, "A dog."], cfg, max_src_tokens=8)
    assert len(out) == 2 and "1 of 2 input sentences are longer than 8 tokens" in caplog.text
    # Truncation keeps EOS: the result is the translation of the first 7 pieces + EOS.
    first_pieces = tokenizer.decode_src([tokenizer.encode_src([long_text])[0][:7]])[0]
    assert out[0] == translate_texts(translator(model, tokenizer), [first_pieces], cfg)[0]


def test_evaluate_model_scores_and_restores_train_mode(tokenizer):
    model = make_model(tokenizer).train()
    cfg = DecodeConfig(beam_size=1, max_len_a=0.2, max_len_b=3)
    scores, hyps = evaluate_model(translator(model, tokenizer), SRC[:6], TGT[:6], cfg, max_sentences=4)
    assert len(hyps) == 4 and scores["sentences"] == 4
    assert 0.0 <= scores["bleu"] < 100.0 and "nrefs:1" in scores["bleu_signature"]
    assert model.training  # the trainer's mode is given back
    model.eval()
    again, _ = evaluate_model(translator(model, tokenizer), SRC[:4], TGT[:4], cfg)
    assert again["bleu"] == scores["bleu"]  # dropout was off during the first call too
    with pytest.raises(ValueError, match="6 source sentences but 5 references"):
        evaluate_model(translator(model, tokenizer), SRC[:6], TGT[:5], cfg)


# ---------------------------------------------------------------------------------------- scripts
@pytest.fixture(scope="module")
def run(tmp_path_factory, tokenizer) -> Path:
    """A run folder with a checkpoint of the tiny model and a TSV corpus (valid and test)."""
    folder = tmp_path_factory.mktemp("run")
    (folder / "valid.tsv").write_text("".join(f"{s}\t{t}\n" for s, t in zip(SRC[:5], TGT[:5])), encoding="utf-8")
    (folder / "test.tsv").write_text("".join(f"{s}\t{t}\n" for s, t in zip(SRC[5:12], TGT[5:12])), encoding="utf-8")
    model = make_model(tokenizer)
    config = Config(
        model=model.config,
        data=DataConfig(source="tsv", files={"valid": str(folder / "valid.tsv"), "test": str(folder / "test.tsv")}),
        decode=DecodeConfig(beam_size=2, max_len_a=0.2, max_len_b=3),
    )
    state = {"model": model.state_dict(), "config": config.to_dict(), "tokenizer": tokenizer.to_state()}
    save_checkpoint(state, folder / "model.pt")
    save_checkpoint({**state, "model": make_model(tokenizer, seed=1).state_dict()}, folder / "model1.pt")
    del state["tokenizer"]
    save_checkpoint(state, folder / "no_vocab.pt")
    (folder / "garbage.pt").write_bytes(b"not a checkpoint")
    return folder


def test_translate_script_arguments_and_stdin(run, capsys, monkeypatch):
    translate = load_script("translate")
    ckpt = str(run / "model.pt")
    assert translate.main(["--checkpoint", ckpt, SRC[0], "", SRC[1]]) == 0
    lines = capsys.readouterr().out.split("\n")
    assert len(lines) == 4 and lines[1] == "" and lines[3] == ""  # 3 outputs, the empty input kept
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(f"{SRC[2]}\n\n{SRC[3]}\n".encode())))  # bytes, as a pipe
    assert translate.main(["--checkpoint", ckpt, "--beam-size", "1"]) == 0
    assert capsys.readouterr().out.count("\n") == 3
    assert translate.main(["--checkpoint", ckpt, "--beam-size", "3", "--n-best", "3", SRC[4]]) == 0
    rows = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 3 and all(r[0] == "0" for r in rows)
    # Three different hypotheses of the beam, best first: three distinct translations, strictly falling scores.
    scores = [float(r[1]) for r in rows]
    assert scores[0] > scores[1] > scores[2] and len({r[2] for r in rows}) == 3
    assert translate.main(["--checkpoint", ckpt, "--beam-size", "3", SRC[4]]) == 0
    assert capsys.readouterr().out == rows[0][2] + "\n"  # the first of the n-best is the translation


@pytest.mark.parametrize(
    "args, message",
    [
        (["--checkpoint", "missing.pt", "hi"], "checkpoint not found"),
        (["--checkpoint", "{run}/garbage.pt", "hi"], "cannot read checkpoint"),
        (["--checkpoint", "{run}/no_vocab.pt", "hi"], "no vocabulary"),
        (["--checkpoint", "{run}/model.pt", "--beam-size", "2", "--n-best", "3", "hi"], "n_best"),
        (["--checkpoint", "{run}/model.pt", "--beam-size", "0", "hi"], "beam_size"),
        (["--checkpoint", "{run}/model.pt", "--max-src-tokens", "1", "hi"], "max-src-tokens"),
    ],
)
def test_translate_script_errors(run, capsys, args, message):
    translate = load_script("translate")
    assert translate.main([a.format(run=run) for a in args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err and "Traceback" not in err


def test_scripts_usage_errors_exit_nonzero(capsys):
    assert load_script("translate").main(["hello"]) == 2  # no --checkpoint (nor --engine ctranslate2 --model DIR)
    assert "needs --checkpoint" in capsys.readouterr().err
    evaluate = load_script("evaluate")
    for args in ([], ["--hypotheses", "h.txt"], ["--checkpoint", "x.pt", "--hypotheses", "h", "--references", "r"]):
        with pytest.raises(SystemExit) as exit_info:
            evaluate.main(args)
        assert exit_info.value.code == 2 and "error:" in capsys.readouterr().err


def test_evaluate_script_scores_files(tmp_path, capsys):
    evaluate = load_script("evaluate")
    (tmp_path / "ref.txt").write_text("".join(t + "\n" for t in TGT), encoding="utf-8")
    (tmp_path / "short.txt").write_text("".join(t + "\n" for t in TGT[:-1]), encoding="utf-8")
    ref = str(tmp_path / "ref.txt")
    assert evaluate.main(["--hypotheses", ref, "--references", ref]) == 0
    out = capsys.readouterr().out
    assert "BLEU = 100.00" in out and "signature: nrefs:1|case:mixed" in out and "chrF2 = 100.00" in out
    assert evaluate.main(["--hypotheses", str(tmp_path / "short.txt"), "--references", ref]) == 2
    assert f"{len(TGT) - 1} hypotheses but {len(TGT)} references" in capsys.readouterr().err
    assert evaluate.main(["--hypotheses", str(tmp_path / "none.txt"), "--references", ref]) == 2
    assert "file not found" in capsys.readouterr().err


def test_evaluate_script_decodes_a_split(run, tmp_path, capsys, tokenizer):
    evaluate = load_script("evaluate")
    hyp_path = tmp_path / "out" / "hyp.txt"
    assert evaluate.main(["--checkpoint", str(run / "model.pt"), "--output", str(hyp_path)]) == 0
    out = capsys.readouterr().out
    assert "7 sentences" in out and "BLEU = " in out and "chrF2 = " in out and "BLEU (lowercased)" in out
    hyps = hyp_path.read_text(encoding="utf-8").splitlines()
    assert len(hyps) == 7
    # The same numbers as evaluate_model with the checkpoint's settings (what the trainer reports).
    model = make_model(tokenizer)
    cfg = DecodeConfig(beam_size=2, max_len_a=0.2, max_len_b=3)
    expected, _ = evaluate_model(translator(model, tokenizer), SRC[5:12], TGT[5:12], cfg)
    assert expected["bleu_text"] in out
    assert evaluate.main(["--checkpoint", str(run / "model.pt"), "--split", "valid", "--beam-size", "1"]) == 0
    assert "5 sentences" in capsys.readouterr().out
    assert evaluate.main(["--checkpoint", str(run / "model.pt"), "--split", "train"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "data.files, which has no train path" in err


# ------------------------------------------------------------------------------------------ ensembles
def test_translate_script_decodes_several_checkpoints_as_an_ensemble(run, capsys, tokenizer, tmp_path):
    translate = load_script("translate")
    texts = [SRC[0], SRC[7], SRC[13]]
    # --checkpoint repeated: the models decode as an ensemble.
    assert translate.main(["--checkpoint", str(run / "model.pt"), "--checkpoint", str(run / "model1.pt"), *texts]) == 0
    out = capsys.readouterr().out.splitlines()
    ensemble = Ensemble([make_model(tokenizer), make_model(tokenizer, seed=1)])
    cfg = DecodeConfig(beam_size=2, max_len_a=0.2, max_len_b=3)  # the checkpoint's settings
    assert out == translate_texts(translator(ensemble, tokenizer), texts, cfg)
    assert out != translate_texts(translator(make_model(tokenizer), tokenizer), texts, cfg)  # not model.pt alone
    # A checkpoint of another vocabulary: one line on stderr, exit status 2.
    other = Tokenizer.train([s.lower() for s in SRC], [t.lower() for t in TGT], tmp_path / "tok", vocab_size=80)
    config = Config(model=ModelConfig.preset("tiny", src_vocab_size=other.src_vocab_size,
                                             tgt_vocab_size=other.tgt_vocab_size))
    model = Transformer(config.model)
    save_checkpoint({"model": model.state_dict(), "config": config.to_dict(), "tokenizer": other.to_state()},
                    tmp_path / "other.pt")
    assert translate.main(["--checkpoint", str(run / "model.pt"), "--checkpoint", str(tmp_path / "other.pt"), "hi"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "other.pt" in err and err.count("\n") == 1 and "Traceback" not in err


def test_evaluate_script_scores_an_ensemble(run, tmp_path, capsys, tokenizer):
    evaluate = load_script("evaluate")
    hyp_path = tmp_path / "hyp.txt"
    paths = [str(run / "model.pt"), str(run / "model1.pt")]
    assert evaluate.main(["--checkpoint", paths[0], "--checkpoint", paths[1], "--output", str(hyp_path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{paths[0]} + {paths[1]}: ") and "7 sentences" in out
    ensemble = Ensemble([make_model(tokenizer), make_model(tokenizer, seed=1)])
    cfg = DecodeConfig(beam_size=2, max_len_a=0.2, max_len_b=3)
    expected, hyps = evaluate_model(translator(ensemble, tokenizer), SRC[5:12], TGT[5:12], cfg)
    assert hyp_path.read_text(encoding="utf-8").splitlines() == hyps
    assert expected["bleu_text"] in out
    _, alone = evaluate_model(translator(make_model(tokenizer), tokenizer), SRC[5:12], TGT[5:12], cfg)
    assert hyps != alone  # the second checkpoint changed the translations
    assert evaluate.main(["--checkpoint", paths[0], "--checkpoint", str(tmp_path / "missing.pt")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


# ------------------------------------------------------------------------- tokenized BLEU (Moses), as the papers
# Raw lines of Multi30k and their lines in the official data/task1/tok/*.lc.norm.tok.* files.
MOSES_CASES = [
    ("en", 'A man & a woman <3 [sic] | x.', "a man &amp; a woman &lt; 3 &#91; sic &#93; &#124; x ."),
    ("en", 'The dog\'s "big" ball, isn\'t it?', "the dog &apos;s &quot; big &quot; ball , isn &apos;t it ?"),
    # val.de line 745: the German quote rule sees the line end, as the Perl script did
    ("de", "Ein Mann in einem blauen Hemd hält ein Schild, auf dem steht: "
           "„Come on now ... what's gayer than tea.“",
     "ein mann in einem blauen hemd hält ein schild , auf dem steht : &quot; come on now ... what &apos; s gayer "
     "than tea &quot; ."),
    # train.de: a lone right single quote is a double quote in the Moses of the official files
    ("de", "Ein Mann mit gelber Krawatte und Hemd macht das „Hook ’em Horns“-Zeichen. ",
     "ein mann mit gelber krawatte und hemd macht das &quot; hook &quot; em horns &quot; -zeichen ."),
]


@pytest.mark.parametrize("lang, raw, tokenized", MOSES_CASES)
def test_moses_tokenize_lowercases_normalises_and_escapes(lang, raw, tokenized):
    assert moses_tokenize([raw], lang) == [tokenized]


def test_tokenized_bleu_scores_the_moses_tokens_as_they_are():
    hyps = ["A man & a woman <3 [sic] | y!", "The dog's ball isn't big."]
    refs = ["A man & a woman <3 [sic] | x.", "The dog's ball is not big at all."]
    scores = tokenized_bleu(hyps, refs, lang="en")
    # BLEU of the tokens with no further tokenization (13a would split "&amp;" again): multi-bleu.perl's count
    expected = BLEU(tokenize="none").corpus_score(moses_tokenize(hyps, "en"), [moses_tokenize(refs, "en")])
    assert scores["bleu"] == pytest.approx(expected.score) and scores["bleu"] != pytest.approx(
        corpus_scores(hyps, refs, lowercase=True)["bleu"]
    )
    assert tokenized_bleu([r.upper() for r in refs], refs, lang="en")["bleu"] == pytest.approx(100.0)  # lowercased
    signature = scores["bleu_signature"]
    assert signature.startswith("nrefs:1|case:lc|eff:no|tok:moses-norm-esc-en|smooth:exp|sacremoses:")
    with pytest.raises(DataError, match="1 hypotheses but 2 references"):
        tokenized_bleu(hyps[:1], refs, lang="en")


def test_evaluate_prints_the_tokenized_bleu_with_its_signature(tmp_path, capsys):
    evaluate = load_script("evaluate")
    (tmp_path / "hyp.de").write_text("".join(text + "\n" for _, text, _ in MOSES_CASES[2:]), encoding="utf-8")
    (tmp_path / "ref.de").write_text("".join(text.upper() + "\n" for _, text, _ in MOSES_CASES[2:]), encoding="utf-8")
    files = ["--hypotheses", str(tmp_path / "hyp.de"), "--references", str(tmp_path / "ref.de")]
    assert evaluate.main([*files, "--tokenize", "moses", "--tgt-lang", "de"]) == 0
    out = capsys.readouterr().out
    assert "BLEU = 100.00" in out and "(tokenized, lowercased: Moses normalisation and tokenization, escaped)" in out
    assert "signature: nrefs:1|case:lc|eff:no|tok:moses-norm-esc-de|smooth:exp|sacremoses:" in out
    assert evaluate.main(files) == 0 and "tokenized" not in capsys.readouterr().out  # 13a alone by default
    assert evaluate.main([*files, "--tokenize", "moses"]) == 2  # a file's language is not guessed
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "--tgt-lang" in err


def test_tokenized_bleu_without_sacremoses_is_one_error_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "sacremoses", None)  # import sacremoses now raises ImportError
    (tmp_path / "hyp.de").write_text("ein hund\n", encoding="utf-8")
    files = ["--hypotheses", str(tmp_path / "hyp.de"), "--references", str(tmp_path / "hyp.de"), "--tgt-lang", "de"]
    assert load_script("evaluate").main([*files, "--tokenize", "moses"]) == 2
    err = capsys.readouterr().err
    assert err == 'error: tokenized BLEU (--tokenize moses) needs sacremoses, which is not installed: ' \
                  'pip install -e ".[moses]"\n'
    with pytest.raises(UserError, match=r"pip install -e \"\.\[moses\]\""):
        moses_tokenize(["ein hund"], "de")


def test_evaluate_a_checkpoint_with_the_tokenized_bleu_of_its_target_language(run, capsys):
    evaluate = load_script("evaluate")
    assert evaluate.main(["--checkpoint", str(run / "model.pt"), "--tokenize", "moses"]) == 0
    out = capsys.readouterr().out
    assert "7 sentences" in out and "chrF2 = " in out  # the sacreBLEU report, then the tokenized BLEU
    assert "(tokenized, lowercased: Moses normalisation and tokenization, escaped)" in out
    assert "signature: nrefs:1|case:lc|eff:no|tok:moses-norm-esc-de|" in out  # data.tgt_lang of the checkpoint
