"""A multilingual checkpoint for the inference tests: a tiny random model of two directions, en-de and de-en, over
one vocabulary with the target-language tags <2de> and <2en>, saved in the format ``transformer train`` writes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from transformer.checkpoint import save_checkpoint
from transformer.config import Config, DataConfig, DecodeConfig, ModelConfig
from transformer.data.tokenizer import Tokenizer
from transformer.model.transformer import Transformer

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "sample"


@pytest.fixture(scope="session")
def multilingual_checkpoint(tmp_path_factory) -> Path:
    """The checkpoint; its decoding is short (at most 8 tokens) and its data settings read data/sample's files.

    Random weights, the output layer untied and scaled (as conftest's ``tiny_model``), so that outputs vary: the
    tag changes the translation of about a third of data/sample's test sentences.
    """
    folder = tmp_path_factory.mktemp("multilingual")
    en, de = ((SAMPLE / f"train.{lang}").read_text(encoding="utf-8").splitlines() for lang in ("en", "de"))
    tokenizer = Tokenizer.train(en, de, folder / "tokenizer", vocab_size=150, tags=["de", "en"])
    config = Config(
        model=ModelConfig.preset("tiny", src_vocab_size=tokenizer.src_vocab_size,
                                 tgt_vocab_size=tokenizer.tgt_vocab_size, share_embeddings=True, tie_output=False),
        data=DataConfig(directions=["en-de", "de-en"], data_dir=str(SAMPLE), test_split="test", vocab_size=150),
        decode=DecodeConfig(beam_size=2, max_len_a=0.0, max_len_b=8, batch_size=16),
    )
    torch.manual_seed(0)
    model = Transformer(config.model)
    torch.nn.init.normal_(model.output.weight, std=0.4)
    state = {"config": config.to_dict(), "model": model.state_dict(), "tokenizer": tokenizer.to_state(), "step": 0}
    save_checkpoint(state, folder / "multi.pt")
    return folder / "multi.pt"


@pytest.fixture(scope="session")
def multilingual_export(multilingual_checkpoint, tmp_path_factory) -> Path:
    """The float32 CTranslate2 export of ``multilingual_checkpoint`` (skips without ctranslate2)."""
    pytest.importorskip("ctranslate2")
    from transformer.inference import export_ctranslate2

    return export_ctranslate2(multilingual_checkpoint, tmp_path_factory.mktemp("multilingual_ct2") / "ct2")
