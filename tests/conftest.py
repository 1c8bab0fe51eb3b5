"""Shared fixtures: a seeded tiny model config, a model factory, a token generator and the Multi30k folder."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from transformer.config import ModelConfig
from transformer.model.transformer import Transformer

VOCAB = 23  # small, and not a multiple of anything in the tiny preset
PAD = 0


@pytest.fixture
def tiny_config() -> ModelConfig:
    """The tiny preset (d_model=32, 4 heads, 2 + 2 layers) with a small vocabulary."""
    return ModelConfig.preset("tiny", src_vocab_size=VOCAB, tgt_vocab_size=VOCAB, pad_id=PAD)


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
