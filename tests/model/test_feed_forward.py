"""Position-wise feed-forward network."""

from __future__ import annotations

import pytest
import torch

from transformer.model.feed_forward import FeedForward


@pytest.mark.parametrize(("activation", "fn"), [("relu", lambda h: h.clamp(min=0)), ("gelu", lambda h: 0.5 * h * (1 + torch.erf(h / 2**0.5)))])
def test_equals_two_linear_maps_with_activation(activation: str, fn) -> None:
    torch.manual_seed(0)
    ff = FeedForward(8, 32, activation=activation).eval()
    x = torch.randn(2, 5, 8)
    h = x @ ff.linear1.weight.T + ff.linear1.bias
    expected = fn(h) @ ff.linear2.weight.T + ff.linear2.bias
    out = ff(x)
    assert out.shape == (2, 5, 8) and ff.linear1.out_features == 32
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_gradients_match_a_by_hand_reference(activation: str) -> None:
    torch.manual_seed(0)
    ff = FeedForward(8, 32, activation=activation)
    x = torch.randn(2, 5, 8, requires_grad=True)
    ff(x).square().sum().backward()
    act = torch.relu if activation == "relu" else torch.nn.functional.gelu
    x_ref = x.detach().clone().requires_grad_()
    params = (ff.linear1.weight, ff.linear1.bias, ff.linear2.weight, ff.linear2.bias)
    refs = [p.detach().clone().requires_grad_() for p in params]
    w1, b1, w2, b2 = refs
    (act(x_ref @ w1.T + b1) @ w2.T + b2).square().sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad)
    for p, ref in zip(params, refs):
        torch.testing.assert_close(p.grad, ref.grad)


def test_relu_and_gelu_differ() -> None:
    torch.manual_seed(0)
    relu = FeedForward(8, 16, activation="relu")
    torch.manual_seed(0)
    gelu = FeedForward(8, 16, activation="gelu")
    x = torch.randn(1, 3, 8)
    assert not torch.allclose(relu(x), gelu(x))


def test_each_position_is_independent() -> None:
    torch.manual_seed(0)
    ff = FeedForward(8, 16).eval()
    x = torch.randn(1, 4, 8)
    y = x.clone()
    y[0, 2] += 1.0
    out_x, out_y = ff(x), ff(y)
    torch.testing.assert_close(out_x[0, [0, 1, 3]], out_y[0, [0, 1, 3]])
    assert not torch.allclose(out_x[0, 2], out_y[0, 2])
    torch.testing.assert_close(ff(x[:, 1:2]), out_x[:, 1:2])


def test_dropout_only_in_training() -> None:
    torch.manual_seed(0)
    ff = FeedForward(8, 64, dropout=0.5)
    x = torch.randn(2, 3, 8)
    ff.eval()
    torch.testing.assert_close(ff(x), ff(x))
    ff.train()
    assert not torch.allclose(ff(x), ff(x))


def test_unknown_activation_is_an_error() -> None:
    with pytest.raises(ValueError, match="swish"):
        FeedForward(8, 16, activation="swish")
