"""The model-level scorer: a causal LM run with its LM head intercepted."""

import math

import pytest
import torch

from conftest import build_tiny_llama
from infosft.losses import IGNORE_INDEX, target_log_probs
from infosft.losses.lm_head import causal_lm_loss

VOCAB = 300


def batch():
    """Right-padded input_ids [2, 9], attention mask, and labels with a prompt and padding."""
    gen = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, VOCAB, (2, 9), generator=gen)
    attention_mask = torch.ones(2, 9, dtype=torch.long)
    attention_mask[1, 6:] = 0
    labels = input_ids.clone()
    labels[:, :3] = IGNORE_INDEX
    labels[attention_mask == 0] = IGNORE_INDEX
    return input_ids, attention_mask, labels


def log_q_from_full_logits(model, input_ids, attention_mask, labels):
    """float64 log-softmax of the model's own logits, moved onto the label each one scores."""
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits.double()
    log_p = logits[:, :-1].log_softmax(-1)
    picked = log_p.gather(-1, labels[:, 1:].clamp(min=0).unsqueeze(-1)).squeeze(-1)
    expected = torch.zeros(labels.shape, dtype=torch.float64)
    expected[:, 1:] = torch.where(labels[:, 1:] != IGNORE_INDEX, picked, 0.0)
    return expected


def test_target_log_probs_match_the_models_full_logits_and_are_zero_elsewhere():
    model = build_tiny_llama(VOCAB).eval()
    input_ids, attention_mask, labels = batch()
    got = target_log_probs(model, input_ids, attention_mask, labels)
    expected = log_q_from_full_logits(model, input_ids, attention_mask, labels)
    assert got.dtype == torch.float32 and got.shape == labels.shape
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)
    assert not got[labels == IGNORE_INDEX].any()


def test_target_log_probs_see_through_a_peft_wrapper():
    from peft import LoraConfig, get_peft_model

    model = build_tiny_llama(VOCAB)
    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    wrapped = get_peft_model(model, config).eval()
    input_ids, attention_mask, labels = batch()
    got = target_log_probs(wrapped, input_ids, attention_mask, labels)
    expected = log_q_from_full_logits(wrapped, input_ids, attention_mask, labels)
    with wrapped.disable_adapter():
        without_lora = log_q_from_full_logits(wrapped, input_ids, attention_mask, labels)
    assert not torch.allclose(expected, without_lora, atol=1e-4)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)


def test_a_model_that_transforms_its_logits_is_refused():
    model = build_tiny_llama(VOCAB).eval()

    def soft_cap(module, args, output):
        output.logits = 30.0 * torch.tanh(output.logits / 30.0)
        return output

    model.register_forward_hook(soft_cap)
    with pytest.raises(ValueError, match="transforms its LM head output"):
        target_log_probs(model, *batch())


def infosft_loss_from_full_logits(model, input_ids, attention_mask, labels, num_items, p_bar):
    """The InfoSFT loss written out in float64 from the model's full logits:
    sum_t w(q_t) * -log q_t / num_items, w(q) = q * max(0, 1 - logit(q) / logit(p_bar)),
    w detached; returns the loss and the gradient of every parameter."""
    model.zero_grad()
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits.double()
    log_q = logits[:, :-1].log_softmax(-1).gather(-1, labels[:, 1:].clamp(min=0)[..., None])[..., 0]
    mask = labels[:, 1:] != IGNORE_INDEX
    q = log_q.detach().exp()
    logit_q = torch.log(q) - torch.log1p(-q)
    c = math.log(p_bar / (1 - p_bar))
    w = q * torch.clamp(1 - logit_q / c, min=0)
    loss = -(w * log_q)[mask].sum() / num_items
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_causal_lm_loss_equals_the_float64_objective_on_full_logits_with_its_gradients():
    model = build_tiny_llama(VOCAB).double()
    input_ids, attention_mask, labels = batch()
    num_items = 17  # as if other accumulation micro-batches held more targets
    expected, expected_grads = infosft_loss_from_full_logits(
        model, input_ids, attention_mask, labels, num_items, 0.9
    )
    model.zero_grad()
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
    loss, stats = causal_lm_loss(
        model, inputs, method="infosft", p_bar=0.9, num_items_in_batch=num_items
    )
    loss.backward()
    # The weights are computed in float32 from log q (by design), hence 1e-6, not 1e-12.
    torch.testing.assert_close(loss.double(), expected, rtol=1e-6, atol=1e-9)
    assert int(stats.num_tokens) == int((labels[:, 1:] != IGNORE_INDEX).sum())
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, expected_grads[name], rtol=1e-5, atol=1e-9)
