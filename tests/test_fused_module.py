"""FusedWeightedNLLLoss: the fused loss as an nn.Module, called as Liger's is."""

import math

import pytest
import torch

from infosft import FusedWeightedNLLLoss

P_BAR = 0.9


def infosft_loss_float64(hidden, weight, bias, labels):
    """sum_t -sg(w(q_t)) log q_t / N, w(q) = q * max(0, 1 - logit(q) / logit(p_bar)), over the
    targets labels[:, 1:] predicted from positions :-1, N their count; float64 throughout."""
    logits = (hidden @ weight.T + bias)[:, :-1]
    targets = labels[:, 1:]
    mask = targets != -100
    log_q = torch.log_softmax(logits, -1).gather(-1, targets.clamp(min=0)[..., None])[..., 0]
    q = log_q.detach().exp()
    w = q * (1 - torch.log(q / (1 - q)) / math.log(P_BAR / (1 - P_BAR))).clamp(min=0)
    return -(w * log_q)[mask].sum() / mask.sum()


def test_module_equals_the_float64_formula_with_its_gradients():
    gen = torch.Generator().manual_seed(3)
    hidden = torch.randn(3, 6, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(17, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(17, generator=gen, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 17, (3, 6), generator=gen)
    labels[1, :4] = -100

    loss = FusedWeightedNLLLoss("infosft", p_bar=P_BAR)(weight, hidden, labels, bias)
    grads = torch.autograd.grad(loss, (hidden, weight, bias))
    expected = infosft_loss_float64(hidden, weight, bias, labels)
    expected_grads = torch.autograd.grad(expected, (hidden, weight, bias))

    # The weights w(q) are computed in float32, also for float64 inputs.
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-9)
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-9)


def test_a_bad_setting_fails_when_the_module_is_built():
    with pytest.raises(ValueError, match="p_bar"):
        FusedWeightedNLLLoss("infosft", p_bar=1.5)
