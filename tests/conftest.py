"""Shared fixtures: a seeded tiny model config, a model factory, a token generator and the Multi30k folder; tiny
models, sources and checkpoint states for decoding tests; a model trained for seconds on data/sample and its export;
a random model of two directions (en-de, de-en) and its export."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from transformer.checkpoint import save_checkpoint
from transformer.config import Config, DataConfig, DecodeConfig, ModelConfig
from transformer.data.tokenizer import Tokenizer
from transformer.model.transformer import Transformer
from transformer.tokens import EOS_ID, PAD_ID

VOCAB = 23  # small, and not a multiple of anything in the tiny preset
PAD = 0
SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample"


@pytest.fixture
def tiny_config() -> ModelConfig:
    """The tiny preset (d_model=32, 4 heads, 2 + 2 layers) with a small vocabulary."""
    return ModelConfig.preset("tiny", src_vocab_size=VOCAB, tgt_vocab_size=VOCAB)


@pytest.fixture
def make_model(tiny_config: ModelConfig) -> Callable[..., Transformer]:
    """``make_model(**overrides)``: a seeded tiny Transformer in eval mode."""

    def make(**overrides) -> Transformer:
        torch.manual_seed(0)
        return Transformer(dataclasses.replace(tiny_config, **overrides)).eval()

    return make


@pytest.fixture
def tokens() -> Callable[..., torch.Tensor]:
    """``tokens(batch, length)``: random non-pad ids from a seeded generator."""
    generator = torch.Generator().manual_seed(1234)

    def make(batch: int, length: int, vocab: int = VOCAB) -> torch.Tensor:
        return torch.randint(PAD + 1, vocab, (batch, length), generator=generator)

    return make


@pytest.fixture(scope="session")
def multi30k() -> Path:
    """The Multi30k folder ($MULTI30K_DIR, else the project's data/multi30k); skips if absent."""
    folder = Path(os.environ.get("MULTI30K_DIR") or Path(__file__).resolve().parents[1] / "data" / "multi30k")
    if not folder.is_dir():
        pytest.skip(f"Multi30k not found at {folder} (set MULTI30K_DIR)")
    return folder


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: one intra-op thread is fastest and does not stall when other jobs share the cores.

    Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session", autouse=True)
def data_cache(tmp_path_factory) -> Path:
    """Prepared training data goes to one temporary folder for the whole run (subprocesses inherit it), never
    into the project's data/cache."""
    folder = tmp_path_factory.mktemp("data_cache")
    before = os.environ.get("TRANSFORMER_CACHE_DIR")
    os.environ["TRANSFORMER_CACHE_DIR"] = str(folder)
    yield folder
    if before is None:
        os.environ.pop("TRANSFORMER_CACHE_DIR", None)
    else:
        os.environ["TRANSFORMER_CACHE_DIR"] = before


# ---- tiny models, sources and checkpoints shared by the decoding, ensemble and inference tests ------------


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory) -> Tokenizer:
    """A small joint SentencePiece vocabulary (40 pieces) of a few English sentences."""
    texts = ["a man rides a bike", "two dogs play in the park", "a woman reads a book"] * 5
    return Tokenizer.train(texts, texts, tmp_path_factory.mktemp("spm"), vocab_size=40, joint=True)


@pytest.fixture(scope="session")
def make_state() -> Callable[..., tuple[dict, Transformer]]:
    """``make_state(tokenizer, seed=0)``: the state of a checkpoint file of a seeded tiny model, and the model."""
    def make(tokenizer: Tokenizer, seed: int = 0) -> tuple[dict, Transformer]:
        config = Config(model=ModelConfig.preset("tiny", src_vocab_size=tokenizer.src_vocab_size,
                                                 tgt_vocab_size=tokenizer.tgt_vocab_size))
        torch.manual_seed(seed)
        model = Transformer(config.model)
        state = {"config": config.to_dict(), "model": model.state_dict(), "tokenizer": tokenizer.to_state(),
                 "step": seed}
        return state, model

    return make


@pytest.fixture(scope="session")
def tiny_model() -> Callable[..., Transformer]:
    """``tiny_model(vocab, seed=0, **overrides)``: an untrained tiny model in eval mode whose output layer is
    untied and scaled, so that its outputs vary and end early."""

    def make(vocab: int, seed: int = 0, **overrides) -> Transformer:
        torch.manual_seed(seed)
        config = ModelConfig.preset("tiny", src_vocab_size=vocab, tgt_vocab_size=vocab, tie_output=False)
        model = Transformer(dataclasses.replace(config, **overrides))
        torch.nn.init.normal_(model.output.weight, std=0.4)
        return model.eval()

    return make


@pytest.fixture(scope="session")
def random_src() -> Callable[..., torch.Tensor]:
    """``random_src(batch, vocab, seed=1, min_len=2, max_len=9)``: (batch, S) padded sources of random lengths,
    each ending with EOS."""
    def make(batch: int, vocab: int, seed: int = 1, min_len: int = 2, max_len: int = 9) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        lengths = torch.randint(min_len, max_len + 1, (batch,), generator=g).tolist()
        rows = [torch.randint(4, vocab, (n - 1,), generator=g).tolist() + [EOS_ID] for n in lengths]
        width = max(lengths)
        return torch.tensor([r + [PAD_ID] * (width - len(r)) for r in rows])

    return make


SAMPLE_TRAINING = (  # `transformer train` on data/sample: the sample model with d_ff=128, 150 updates (~7 s on a CPU)
    "model.d_ff=128", "data.vocab_size=200", "train.max_steps=150", "train.warmup_steps=20", "train.lr=5e-3",
    "train.eval_bleu=false", "train.device=cpu", "train.threads=1",
)


@pytest.fixture(scope="session")
def sample_checkpoint(tmp_path_factory, data_cache) -> Path:
    """last.pt of a tiny model trained for a few seconds on the sample corpus: it translates into short German
    sentences that end with EOS (unlike an untrained model), which is what the engines must agree on."""
    from transformer.cli import main  # here, not at the top: a broken command must not break every test

    root = Path(__file__).resolve().parents[1]
    run = tmp_path_factory.mktemp("sample_run") / "run"
    argv = ["train", "--config", str(root / "configs" / "sample.yaml"), f"data.data_dir={root / 'data' / 'sample'}",
            *SAMPLE_TRAINING, f"train.run_dir={run}"]
    assert main(argv) == 0
    return run / "checkpoints" / "last.pt"


@pytest.fixture(scope="session")
def sample_export(sample_checkpoint, tmp_path_factory) -> Path:
    """The float32 CTranslate2 export of ``sample_checkpoint`` (skips without ctranslate2)."""
    pytest.importorskip("ctranslate2")
    from transformer.inference import export_ctranslate2

    return export_ctranslate2(sample_checkpoint, tmp_path_factory.mktemp("sample_ct2") / "ct2")


@pytest.fixture(scope="session")
def multilingual_checkpoint(tmp_path_factory) -> Path:
    """A tiny random model of two directions, en-de and de-en (one vocabulary with the tags <2de> and <2en>),
    saved as ``transformer train`` saves it; beam 2, at most 8 tokens; its data settings read data/sample's files.

    The output layer is untied and scaled (as ``tiny_model``), so that outputs vary: the tag changes the
    translation of about a third of data/sample's test sentences.
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
