"""weighted_nll_loss and compute_loss_func against independent float64 computations."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers.modeling_outputs import CausalLMOutputWithPast

import infosft

C = math.log(0.93 / 0.07)


def make_batch(b=2, t=7, v=11, dtype=torch.float64, ignore_first=2):
    logits = (3 * torch.randn(b, t, v, dtype=torch.float64)).to(dtype).requires_grad_()
    labels = torch.randint(0, v, (b, t))
    labels[:, :ignore_first] = -100
    return logits, labels


def test_nll_equals_torch_cross_entropy():
    logits, labels = make_batch()
    ours = infosft.weighted_nll_loss(logits, labels, method="nll")
    expected = F.cross_entropy(
        logits[:, :-1].reshape(-1, 11), labels[:, 1:].reshape(-1), ignore_index=-100
    )
    torch.testing.assert_close(ours, expected, rtol=1e-6, atol=1e-7)


def test_infosft_loss_is_the_weighted_mean_of_token_nll():
    logits, labels = make_batch()
    ours = infosft.weighted_nll_loss(logits, labels)
    lp = logits[:, :-1].log_softmax(-1).gather(-1, labels[:, 1:].clamp(min=0).unsqueeze(-1))
    lp = lp.squeeze(-1)[labels[:, 1:] != -100].detach()
    q = lp.exp()
    w = q * (1 - (lp - torch.log1p(-q)) / C).clamp(min=0)
    expected = -(w * lp).sum() / lp.numel()
    assert ours.item() == pytest.approx(expected.item(), rel=1e-6)


def test_infosft_gradient_is_minus_clipped_factor_times_grad_q():
    z = (2 * torch.randn(1, 2, 6, dtype=torch.float64)).requires_grad_()
    labels = torch.tensor([[-100, 3]])
    infosft.weighted_nll_loss(z, labels).backward()
    ours = z.grad[0, 0].clone()

    z2 = z.detach().clone().requires_grad_()
    q = z2[0, 0].softmax(-1)[3]
    q.backward()
    qv = q.item()
    factor = max(0.0, 1 - math.log(qv / (1 - qv)) / C)
    torch.testing.assert_close(ours, -factor * z2.grad[0, 0], rtol=1e-6, atol=1e-9)


def test_dft_gradient_is_minus_grad_q():
    z = torch.randn(1, 2, 6, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([[-100, 2]])
    infosft.weighted_nll_loss(z, labels, method="dft").backward()
    z2 = z.detach().clone().requires_grad_()
    z2[0, 0].softmax(-1)[2].backward()
    torch.testing.assert_close(z.grad[0, 0], -z2.grad[0, 0], rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("method", ["nll", "dft", "infosft"])
def test_gradient_accumulation_with_shared_token_count_matches_one_batch(method):
    v = 9
    a_logits = torch.randn(2, 5, v, dtype=torch.float64, requires_grad=True)
    b_logits = torch.randn(3, 8, v, dtype=torch.float64, requires_grad=True)
    a_labels = torch.randint(0, v, (2, 5))
    b_labels = torch.randint(0, v, (3, 8))
    a_labels[0, :3] = -100
    b_labels[1, 4:] = -100
    n = int((a_labels[:, 1:] != -100).sum() + (b_labels[:, 1:] != -100).sum())
    for logits, labels in ((a_logits, a_labels), (b_logits, b_labels)):
        infosft.weighted_nll_loss(logits, labels, method=method, num_items_in_batch=n).backward()

    # One batch: pad the short sequences to length 8 with ignored positions.
    big = torch.zeros(5, 8, v, dtype=torch.float64)
    big[:2, :5] = a_logits.detach()
    big[2:] = b_logits.detach()
    big.requires_grad_()
    big_labels = torch.full((5, 8), -100)
    big_labels[:2, :5] = a_labels
    big_labels[2:] = b_labels
    infosft.weighted_nll_loss(big, big_labels, method=method).backward()
    torch.testing.assert_close(big.grad[:2, :5], a_logits.grad)
    torch.testing.assert_close(big.grad[2:], b_logits.grad)


def test_num_items_in_batch_may_be_a_tensor():
    logits, labels = make_batch()
    n = int((labels[:, 1:] != -100).sum())
    a = infosft.weighted_nll_loss(logits, labels, num_items_in_batch=torch.tensor(2 * n))
    b = infosft.weighted_nll_loss(logits, labels)
    assert a.item() == pytest.approx(b.item() / 2, rel=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("method", ["nll", "dft", "infosft"])
def test_loss_and_gradients_are_finite_for_extreme_and_masked_logits(dtype, method):
    v = 8
    logits = torch.randn(2, 4, v) * 5
    logits[0, 0, :] = torch.tensor([6e4, -6e4, 0, 1, 2, 3, 4, 5])  # fp16-sized extremes
    logits[0, 1, 5:] = -math.inf  # masked vocabulary entries
    logits[1, 2, 0] = 6e4  # a near-certain token
    logits = logits.to(dtype).requires_grad_()
    labels = torch.tensor([[0, 1, 2, 3], [0, 1, 2, 0]])
    loss = infosft.weighted_nll_loss(logits, labels, method=method)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert torch.isfinite(logits.grad.float()).all()


@pytest.mark.parametrize("method", ["dft", "infosft"])
def test_a_target_with_minus_inf_logit_contributes_zero_not_nan(method):
    logits = torch.randn(1, 3, 5)
    logits[0, 1, 4] = -math.inf
    logits.requires_grad_()
    labels = torch.tensor([[-100, 2, 4]])
    loss = infosft.weighted_nll_loss(logits, labels, method=method)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


def test_batch_without_targets_gives_zero_that_backpropagates():
    logits = torch.randn(2, 4, 6, requires_grad=True)
    labels = torch.full((2, 4), -100)
    loss = infosft.weighted_nll_loss(logits, labels)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_mismatched_shapes_are_named():
    with pytest.raises(ValueError, match=r"\(2, 5, 7\).*\(2, 4\)"):
        infosft.weighted_nll_loss(torch.randn(2, 5, 7), torch.zeros(2, 4, dtype=torch.long))


@pytest.mark.parametrize("bad", [7, -3, 1000])
def test_out_of_range_label_is_named(bad):
    labels = torch.tensor([[-100, 1, bad]])
    with pytest.raises(ValueError, match=f"label {bad} "):
        infosft.weighted_nll_loss(torch.randn(1, 3, 7), labels)


def test_compute_loss_func_plugs_into_trainer_outputs():
    logits, labels = make_batch()
    fn = infosft.compute_loss_func(method="dft", p_bar=0.9)
    out = CausalLMOutputWithPast(logits=logits)
    expected = infosft.weighted_nll_loss(logits, labels, method="dft", num_items_in_batch=10)
    assert fn(out, labels, num_items_in_batch=10).item() == pytest.approx(expected.item())
    assert fn({"logits": logits}, labels).item() == pytest.approx(
        infosft.weighted_nll_loss(logits, labels, method="dft").item()
    )


def test_compute_loss_func_validates_eagerly():
    with pytest.raises(ValueError, match="known schemes"):
        infosft.compute_loss_func(method="nope")
    with pytest.raises(ValueError, match="p_bar"):
        infosft.compute_loss_func(p_bar=1.2)


# ---- what the loss refuses, and what it computes at the edges -------------------------------


def float64_nll(logits, labels):
    """-sum(log q) over targets, in float64, and the target count."""
    targets = labels[:, 1:]
    mask = targets != -100
    log_p = logits.detach().double()[:, :-1].log_softmax(-1)
    lp = log_p.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)[mask]
    return -lp.sum().item(), int(mask.sum())


@pytest.mark.parametrize(
    "num_items",
    [
        0,
        -4,
        0.0,
        math.nan,
        math.inf,
        -math.inf,
        True,
        "12",
        [12],
        torch.tensor(0),
        torch.tensor(-4.0),
        torch.tensor(math.nan),
        torch.tensor(True),
        torch.tensor([3, 4]),
    ],
)
def test_a_num_items_in_batch_that_is_not_a_positive_count_is_refused(num_items):
    logits, labels = make_batch()
    with pytest.raises(ValueError, match="num_items_in_batch must be a finite count > 0"):
        infosft.weighted_nll_loss(logits, labels, method="nll", num_items_in_batch=num_items)


@pytest.mark.parametrize(
    "make_count",
    [int, float, np.int64, torch.tensor, lambda n: torch.tensor([n], dtype=torch.bfloat16)],
    ids=["int", "float", "numpy", "0-d tensor", "1-element bf16 tensor"],
)
def test_num_items_in_batch_may_be_any_one_positive_number(make_count):
    logits, labels = make_batch()
    total, _ = float64_nll(logits, labels)
    loss = infosft.weighted_nll_loss(
        logits, labels, method="nll", num_items_in_batch=make_count(24)
    )
    assert loss.shape == ()
    assert loss.item() == pytest.approx(total / 24, rel=1e-6)


@pytest.mark.parametrize("num_items", [None, 5, torch.tensor(5)])
@pytest.mark.parametrize("method", infosft.available_schemes())
def test_a_batch_without_targets_gives_zero_loss_and_zero_gradient_with_any_divisor(
    method, num_items
):
    logits = torch.randn(2, 4, 32, requires_grad=True)
    labels = torch.full((2, 4), -100)
    loss = infosft.weighted_nll_loss(logits, labels, method=method, num_items_in_batch=num_items)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(logits.grad, torch.zeros_like(logits))


@pytest.mark.parametrize("ignore_index", [-100.0, "-100", None, True])
def test_an_ignore_index_that_is_not_an_int_is_refused(ignore_index):
    logits, labels = make_batch()
    with pytest.raises(ValueError, match="ignore_index must be an integer label value"):
        infosft.weighted_nll_loss(logits, labels, ignore_index=ignore_index)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bool])
def test_labels_that_are_not_integers_are_refused(dtype):
    logits, labels = make_batch()
    with pytest.raises(ValueError, match="labels must be an integer tensor of token ids"):
        infosft.weighted_nll_loss(logits, labels.clamp(min=0).to(dtype))


def test_int32_labels_give_the_float64_loss():
    logits, labels = make_batch()
    total, n = float64_nll(logits, labels)
    loss = infosft.weighted_nll_loss(logits, labels.int(), method="nll")
    assert loss.item() == pytest.approx(total / n, rel=1e-6)


def test_labels_on_another_device_than_the_logits_are_refused():
    logits, labels = make_batch()
    with pytest.raises(ValueError, match="labels is on meta but logits on cpu"):
        infosft.weighted_nll_loss(logits, labels.to("meta"))


def test_integer_logits_are_refused():
    _, labels = make_batch()
    with pytest.raises(ValueError, match="logits must be a floating-point tensor"):
        infosft.weighted_nll_loss(torch.zeros(2, 7, 11, dtype=torch.long), labels)


@pytest.mark.parametrize("kl_to_base", [True, "0.5", math.nan, -1.0, math.inf])
def test_a_kl_to_base_that_is_not_a_finite_number_at_least_0_is_refused(kl_to_base):
    logits, labels = make_batch()
    with pytest.raises(ValueError, match="kl_to_base must be a finite number >= 0"):
        infosft.weighted_nll_loss(
            logits, labels, base_logits=logits.detach(), kl_to_base=kl_to_base
        )


def test_compute_loss_func_refuses_a_bad_ignore_index_when_built():
    with pytest.raises(ValueError, match="ignore_index must be an integer"):
        infosft.compute_loss_func(ignore_index=-100.5)


def test_compute_loss_func_refuses_a_zero_num_items_in_batch_when_called():
    logits, labels = make_batch()
    fn = infosft.compute_loss_func(method="nll")
    with pytest.raises(ValueError, match="num_items_in_batch must be a finite count > 0"):
        fn({"logits": logits}, labels, num_items_in_batch=torch.tensor(0))


def test_check_targets_checks_a_tensor_count_in_its_read_of_the_labels():
    # What an accelerator's num_items_in_batch meets (check_num_items_in_batch leaves its value
    # to this read); a CPU tensor takes the same path here.
    from infosft.losses.reference import check_targets

    targets = torch.tensor([[1, 2, -100]])
    assert check_targets(targets, 5, -100, torch.tensor(3)).tolist() == [[True, True, False]]
    with pytest.raises(
        ValueError, match=r"num_items_in_batch must be a finite count > 0 .*, got 0:"
    ):
        check_targets(targets, 5, -100, torch.tensor(0))
