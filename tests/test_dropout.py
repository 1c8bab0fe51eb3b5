import pytest
import torch

from transformer.model.dropout import Dropout


def test_identity_in_eval_mode_and_at_zero():
    x = torch.randn(4, 5)
    assert Dropout(0.5).eval()(x) is x
    assert Dropout(0.0).train()(x) is x


def test_drop_rate_and_scale_in_training():
    torch.manual_seed(0)
    y = Dropout(0.1).train()(torch.ones(1000, 1000))
    dropped = (y == 0).float().mean().item()
    assert dropped == pytest.approx(0.1, abs=2e-3)
    kept = y[y != 0]
    torch.testing.assert_close(kept, torch.full_like(kept, 2**16 / (2**16 - round(0.1 * 2**16))))
    assert y.mean().item() == pytest.approx(1.0, abs=5e-3)  # unbiased


def test_gradient_follows_the_mask():
    torch.manual_seed(1)
    x = torch.ones(64, 33, requires_grad=True)  # 33: numel not a multiple of 4
    y = Dropout(0.3).train()(x)
    y.sum().backward()
    torch.testing.assert_close(x.grad, y.detach())


def test_seeded_masks_repeat_and_keep_the_dtype():
    d = Dropout(0.2).train()
    torch.manual_seed(5)
    a = d(torch.ones(7, 9, dtype=torch.bfloat16))
    torch.manual_seed(5)
    b = d(torch.ones(7, 9, dtype=torch.bfloat16))
    assert a.dtype == torch.bfloat16 and torch.equal(a, b)


def test_probability_must_be_in_range():
    with pytest.raises(ValueError):
        Dropout(1.0)
