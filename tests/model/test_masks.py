"""Masks: boolean, True = "may attend", broadcastable to (B, H, T_query, T_key)."""

from __future__ import annotations

import pytest
import torch

from transformer.model.masks import causal_mask, padding_mask, target_mask

PAD = 0


def test_padding_mask_shape_and_values() -> None:
    tokens = torch.tensor([[5, 6, 7, PAD], [8, PAD, PAD, PAD]])
    mask = padding_mask(tokens, PAD)
    assert mask.shape == (2, 1, 1, 4) and mask.dtype == torch.bool
    expected = torch.tensor([[True, True, True, False], [True, False, False, False]])
    assert torch.equal(mask[:, 0, 0], expected)


def test_padding_mask_uses_the_given_pad_id() -> None:
    tokens = torch.tensor([[0, 3, 1]])
    assert torch.equal(padding_mask(tokens, 3)[0, 0, 0], torch.tensor([True, False, True]))


@pytest.mark.parametrize("size", [1, 2, 5])
def test_causal_mask_is_lower_triangular(size: int) -> None:
    mask = causal_mask(size)
    assert mask.dtype == torch.bool and mask.shape == (size, size)
    assert torch.equal(mask, torch.tril(torch.ones(size, size)).bool())
    for i in range(size):
        for j in range(size):
            assert bool(mask[i, j]) == (j <= i)


@pytest.mark.parametrize(("size", "offset"), [(1, 4), (3, 2), (2, 0)])
def test_causal_mask_with_offset(size: int, offset: int) -> None:
    """``size`` new queries after ``offset`` cached positions: the last rows of the full mask."""
    mask = causal_mask(size, offset=offset)
    assert mask.shape == (size, offset + size)
    full = causal_mask(offset + size)
    assert torch.equal(mask, full[offset:])
    for i in range(size):
        for j in range(offset + size):
            assert bool(mask[i, j]) == (j <= offset + i)


def test_causal_mask_device() -> None:
    assert causal_mask(3, torch.device("cpu")).device.type == "cpu"


def test_target_mask_combines_causal_and_padding() -> None:
    tgt = torch.tensor([[4, 5, 6, PAD, PAD], [7, 8, 9, 10, 11]])
    mask = target_mask(tgt, PAD)
    assert mask.shape == (2, 1, 5, 5) and mask.dtype == torch.bool
    for b in range(2):
        for i in range(5):
            for j in range(5):
                assert bool(mask[b, 0, i, j]) == (j <= i and int(tgt[b, j]) != PAD)
    # No padding: exactly the causal mask.
    assert torch.equal(mask[1, 0], causal_mask(5))
