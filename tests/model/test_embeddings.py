"""Token embeddings (scaled by sqrt(d_model)) and positional encodings."""

from __future__ import annotations

import math

import pytest
import torch

from transformer.model.embeddings import (
    LearnedPositionalEmbedding,
    SinusoidalPositionalEncoding,
    TokenEmbedding,
    sinusoidal_table,
)
from transformer.tokens import PAD_ID


def reference_pe(pos: int, j: int, d_model: int) -> float:
    """The paper's formula, written out: column 2i is sin, column 2i+1 is cos, of pos / 10000^(2i/d)."""
    i = j // 2
    angle = pos / 10000 ** (2 * i / d_model)
    return math.sin(angle) if j % 2 == 0 else math.cos(angle)


@pytest.mark.parametrize("d_model", [8, 16, 7])  # 7: odd widths (allowed with n_heads=1) end on a sine column
def test_sinusoidal_table_matches_the_formula(d_model: int) -> None:
    positions = [0, 1, 2, 5, 17, 100]
    table = sinusoidal_table(max(positions) + 1, d_model)
    assert table.shape == (max(positions) + 1, d_model) and table.dtype == torch.float32
    for pos in positions:
        for j in range(d_model):
            assert table[pos, j].item() == pytest.approx(reference_pe(pos, j, d_model), abs=1e-5), (pos, j)


def test_sinusoidal_table_offset_is_a_slice_of_the_full_table() -> None:
    full = sinusoidal_table(20, 12)
    for offset in (0, 3, 11):
        torch.testing.assert_close(sinusoidal_table(5, 12, offset=offset), full[offset : offset + 5])


def test_sinusoidal_encoding_adds_the_table_at_an_offset() -> None:
    module = SinusoidalPositionalEncoding(12, max_len=32)
    x = torch.randn(2, 6, 12)
    torch.testing.assert_close(module(x), x + sinusoidal_table(6, 12))
    torch.testing.assert_close(module(x, offset=4), x + sinusoidal_table(10, 12)[4:])


def test_sinusoidal_encoding_past_its_buffer() -> None:
    """Inputs longer than the precomputed table must work (no crash on long sentences)."""
    module = SinusoidalPositionalEncoding(10, max_len=4)
    x = torch.zeros(1, 9, 10)
    torch.testing.assert_close(module(x)[0], sinusoidal_table(9, 10))
    torch.testing.assert_close(module(x[:, :3], offset=3)[0], sinusoidal_table(9, 10)[3:6])  # straddles the end
    torch.testing.assert_close(module(x[:, :1], offset=50)[0, 0], torch.tensor([reference_pe(50, j, 10) for j in range(10)]))


def test_sinusoidal_table_is_a_buffer_not_a_parameter() -> None:
    module = SinusoidalPositionalEncoding(8, max_len=16)
    assert list(module.parameters()) == []
    assert "table" not in module.state_dict()  # a function of d_model: checkpoints need not carry it


def test_sinusoidal_encoding_keeps_the_input_dtype() -> None:
    module = SinusoidalPositionalEncoding(8, max_len=16)
    assert module(torch.zeros(1, 3, 8, dtype=torch.bfloat16)).dtype == torch.bfloat16


def test_token_embedding_is_scaled_by_sqrt_d_model() -> None:
    torch.manual_seed(0)
    d_model = 16
    module = TokenEmbedding(11, d_model)
    tokens = torch.tensor([[1, 4, PAD_ID], [10, 2, 2]])
    out = module(tokens)
    assert out.shape == (2, 3, d_model)
    torch.testing.assert_close(out, module.weight[tokens] * math.sqrt(d_model))
    assert torch.all(out[0, 2] == 0)  # the pad row starts at zero
    assert module.weight is module.embedding.weight


def test_token_embedding_pad_row_gets_no_gradient() -> None:
    module = TokenEmbedding(7, 8)
    assert module.embedding.padding_idx == PAD_ID
    module(torch.tensor([[PAD_ID, 1, 2]])).sum().backward()
    assert torch.all(module.weight.grad[PAD_ID] == 0) and torch.any(module.weight.grad[1] != 0)


def test_learned_positions_add_one_row_per_position() -> None:
    module = LearnedPositionalEmbedding(8, max_positions=10)
    x = torch.randn(2, 4, 8)
    torch.testing.assert_close(module(x), x + module.embedding.weight[:4])
    torch.testing.assert_close(module(x, offset=6), x + module.embedding.weight[6:10])


def test_learned_positions_error_past_max_positions() -> None:
    module = LearnedPositionalEmbedding(8, max_positions=5)
    module(torch.zeros(1, 5, 8))  # exactly full is fine
    with pytest.raises(ValueError, match=r"position 5 .*max_positions=5"):
        module(torch.zeros(1, 6, 8))
    with pytest.raises(ValueError, match="max_positions=5"):
        module(torch.zeros(1, 3, 8), offset=3)
