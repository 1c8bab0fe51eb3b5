import pytest
import torch
import torch.nn.functional as F

from transformer.data.batching import Batch
from transformer.training.loss import Seq2SeqLoss, label_smoothed_nll_loss, linear_label_smoothed_nll_loss

PAD = 0


def test_matches_torch_cross_entropy_with_label_smoothing():
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 11)
    target = torch.randint(1, 11, (3, 5))
    target[0, 3:] = PAD
    target[2, 1:] = PAD
    loss, nll = label_smoothed_nll_loss(logits, target, smoothing=0.1, ignore_index=PAD)
    ref = F.cross_entropy(logits.view(-1, 11), target.view(-1), ignore_index=PAD, label_smoothing=0.1, reduction="sum")
    ref_nll = F.cross_entropy(logits.view(-1, 11), target.view(-1), ignore_index=PAD, reduction="sum")
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    assert nll.item() == pytest.approx(ref_nll.item(), rel=1e-5)


def test_padding_positions_do_not_count():
    torch.manual_seed(0)
    logits = torch.randn(1, 4, 7)
    target = torch.tensor([[3, 4, PAD, PAD]])
    loss, _ = label_smoothed_nll_loss(logits, target, smoothing=0.1, ignore_index=PAD)
    changed = logits.clone()
    changed[0, 2:] = torch.randn(2, 7) * 100  # pad positions: any logits
    loss2, _ = label_smoothed_nll_loss(changed, target, smoothing=0.1, ignore_index=PAD)
    assert loss.item() == pytest.approx(loss2.item())


def test_all_pad_target_gives_zero_not_nan():
    logits = torch.randn(2, 3, 5, requires_grad=True)
    target = torch.full((2, 3), PAD)
    loss, nll = label_smoothed_nll_loss(logits, target, smoothing=0.1, ignore_index=PAD)
    loss.backward()
    assert loss.item() == 0.0 and nll.item() == 0.0
    assert torch.isfinite(logits.grad).all()


def test_confident_correct_prediction_beats_wrong_one_and_smoothing_penalises_overconfidence():
    target = torch.tensor([[2]])
    right = torch.full((1, 1, 5), -10.0)
    right[0, 0, 2] = 10.0
    wrong = torch.full((1, 1, 5), -10.0)
    wrong[0, 0, 3] = 10.0
    l_right, _ = label_smoothed_nll_loss(right, target, smoothing=0.1, ignore_index=PAD)
    l_wrong, _ = label_smoothed_nll_loss(wrong, target, smoothing=0.1, ignore_index=PAD)
    assert l_right < l_wrong
    l_plain, _ = label_smoothed_nll_loss(right, target, smoothing=0.0, ignore_index=PAD)
    assert l_right > l_plain  # with smoothing, a one-hot-confident output is penalised


def test_bf16_logits_are_scored_in_float32():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 9)
    target = torch.randint(1, 9, (2, 3))
    loss32, _ = label_smoothed_nll_loss(logits, target, smoothing=0.1, ignore_index=PAD)
    loss16, _ = label_smoothed_nll_loss(logits.bfloat16(), target, smoothing=0.1, ignore_index=PAD)
    assert loss16.dtype == torch.float32
    assert loss16.item() == pytest.approx(loss32.item(), rel=2e-2)


def test_equals_the_formula_of_the_module_and_only_the_loss_has_a_gradient():
    """loss = (1 - eps) * nll + eps * (logsumexp - mean), summed over non-pad positions."""
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 7, requires_grad=True)
    target = torch.tensor([[1, 2, 3, PAD], [4, 5, PAD, PAD]])
    loss, nll = label_smoothed_nll_loss(logits, target, smoothing=0.2, ignore_index=PAD)
    keep = target != PAD
    lse = logits.logsumexp(-1)
    by_hand_nll = (lse - logits.gather(-1, target.unsqueeze(-1)).squeeze(-1))[keep].sum()
    by_hand = (0.8 * (lse - logits.gather(-1, target.unsqueeze(-1)).squeeze(-1)) + 0.2 * (lse - logits.mean(-1)))[keep].sum()
    torch.testing.assert_close(loss, by_hand)
    torch.testing.assert_close(nll, by_hand_nll.detach())
    assert loss.requires_grad and not nll.requires_grad


def test_bf16_logits_get_bf16_gradients():
    logits = torch.randn(2, 3, 9).bfloat16().requires_grad_()
    loss, _ = label_smoothed_nll_loss(logits, torch.randint(1, 9, (2, 3)), smoothing=0.1, ignore_index=PAD)
    loss.backward()
    assert logits.grad.dtype == torch.bfloat16 and torch.isfinite(logits.grad.float()).all()


def reference_sums(logits: torch.Tensor, target: torch.Tensor, smoothing: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """torch's own summed smoothed loss and NLL, both with gradients."""
    flat, gold = logits.reshape(-1, logits.size(-1)), target.reshape(-1)
    loss = F.cross_entropy(flat, gold, ignore_index=PAD, label_smoothing=smoothing, reduction="sum")
    return loss, F.cross_entropy(flat, gold, ignore_index=PAD, reduction="sum")


@pytest.mark.parametrize("chunk_rows", [1, 4, 0])
@pytest.mark.parametrize(("on_loss", "on_nll"), [(1.0, 0.0), (0.3, 0.7), (0.0, 1.0)])
def test_fused_projection_equals_logits_then_loss(chunk_rows, on_loss, on_nll):
    """Sums and both gradients (hidden and weight) equal the two-step path, for any mix of d loss and d nll."""
    torch.manual_seed(0)
    hidden = torch.randn(3, 5, 8, requires_grad=True)
    weight = torch.randn(11, 8, requires_grad=True)
    target = torch.randint(1, 11, (3, 5))
    target[0, 3:] = PAD
    target[2, 1:] = PAD
    target[1, :] = 4  # one token many times: its weight row gathers several gradients
    fused = linear_label_smoothed_nll_loss(hidden, weight, target, smoothing=0.1, ignore_index=PAD, chunk_rows=chunk_rows)
    fused_grads = torch.autograd.grad(on_loss * fused[0] + on_nll * fused[1], (hidden, weight))
    plain = reference_sums(hidden @ weight.T, target)  # both sums with gradients
    plain_grads = torch.autograd.grad(on_loss * plain[0] + on_nll * plain[1], (hidden, weight))
    for got, want in zip(fused + fused_grads, plain + plain_grads):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_fused_projection_without_gradients_and_all_pad():
    torch.manual_seed(0)
    hidden, weight = torch.randn(2, 3, 8), torch.randn(11, 8)
    target = torch.tensor([[3, 4, PAD], [PAD, PAD, PAD]])
    with torch.no_grad():
        loss, nll = linear_label_smoothed_nll_loss(hidden, weight, target, smoothing=0.1, ignore_index=PAD)
    ref_loss, ref_nll = label_smoothed_nll_loss(hidden @ weight.T, target, smoothing=0.1, ignore_index=PAD)
    torch.testing.assert_close((loss, nll), (ref_loss, ref_nll))
    pad_only = torch.full((2, 3), PAD)
    assert linear_label_smoothed_nll_loss(hidden, weight, pad_only, smoothing=0.1, ignore_index=PAD)[0].item() == 0.0


def test_fused_projection_with_bf16_products_matches_bf16_logits():
    """``matmul_dtype=bfloat16`` (the CPU bf16 path): the sums equal scoring bf16 logits in float32, and the
    gradients agree with the float32 ones to bf16 precision, each in its input's dtype."""
    torch.manual_seed(0)
    hidden = torch.randn(4, 6, 16).bfloat16().requires_grad_()  # what the decoder gives under bf16 autocast
    weight = torch.randn(37, 16, requires_grad=True)  # the float32 parameter
    target = torch.randint(1, 37, (4, 6))
    target[1, 2:] = PAD
    fused = linear_label_smoothed_nll_loss(
        hidden, weight, target, smoothing=0.1, ignore_index=PAD, chunk_rows=5, matmul_dtype=torch.bfloat16
    )
    grads = torch.autograd.grad(fused[0], (hidden, weight))
    logits = hidden.detach() @ weight.detach().bfloat16().T  # bf16 logits, as autocast would make them
    torch.testing.assert_close(fused, label_smoothed_nll_loss(logits, target, smoothing=0.1, ignore_index=PAD))
    hidden32 = hidden.detach().float().requires_grad_()
    weight32 = weight.detach().clone().requires_grad_()
    plain = label_smoothed_nll_loss(hidden32 @ weight32.T, target, smoothing=0.1, ignore_index=PAD)
    want = torch.autograd.grad(plain[0], (hidden32, weight32))
    assert grads[0].dtype == torch.bfloat16 and grads[1].dtype == torch.float32
    for got, ref in zip(grads, want):
        torch.testing.assert_close(got.float(), ref, atol=0.05, rtol=0.05)


def test_seq2seq_loss_fused_equals_full_logits_and_runs_the_given_module(make_model, tokens):
    """The trainer's loss (output projection fused in) against ``fused=False`` (full logits, then the plain
    loss): the same sums and the same gradients, within float tolerance."""
    model = make_model(dropout=0.0)
    tgt = tokens(3, 6)
    tgt[1, 4:] = PAD
    tgt_out = torch.cat([tgt[:, 1:], torch.full((3, 1), PAD)], dim=1)
    batch = Batch(src=tokens(3, 5), tgt_in=tgt, tgt_out=tgt_out, indices=torch.arange(3), n_src_tokens=15,
                  n_tgt_tokens=int((tgt_out != PAD).sum()))
    results = []
    for fused in (True, False):
        loss_fn = Seq2SeqLoss(model, smoothing=0.1, precision="fp32", device=torch.device("cpu"), fused=fused)
        loss, nll = loss_fn(batch)
        grads = torch.autograd.grad(loss, list(model.parameters()))
        results.append((loss, nll, *grads))
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)

    calls = []

    class Wrapper(torch.nn.Module):  # stands for the DDP or compiled wrapper the trainer runs through
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, *args, **kwargs):
            calls.append(kwargs)
            return self.inner(*args, **kwargs)

    loss, _ = Seq2SeqLoss(model, smoothing=0.1, precision="fp32", device=torch.device("cpu"))(batch, Wrapper())
    assert calls == [{"return_hidden": True}] and torch.equal(loss.detach(), results[0][0].detach())
