"""use_fused_loss: the fused loss inside a trainer built by someone else (a plain HF Trainer)."""

import math

import pytest
import torch
from torch.utils.data import Dataset

from conftest import build_tiny_llama
from infosft.integrations import use_fused_loss
from infosft.losses import IGNORE_INDEX

VOCAB = 300
P_BAR = 0.9


class Rows(Dataset):
    """Four rows of 10 tokens, each with a prompt (no targets) of a different length."""

    def __init__(self):
        gen = torch.Generator().manual_seed(1)
        self.input_ids = torch.randint(0, VOCAB, (4, 10), generator=gen)
        self.labels = self.input_ids.clone()
        for row, prompt in enumerate((2, 3, 5, 7)):
            self.labels[row, :prompt] = IGNORE_INDEX

    def __len__(self):
        return 4

    def __getitem__(self, i):
        return {
            "input_ids": self.input_ids[i],
            "attention_mask": torch.ones(10, dtype=torch.long),
            "labels": self.labels[i],
        }


def infosft_gradients(model, rows):
    """float64 gradients of sum_t w(q_t) * -log q_t / N over all four rows (N: their targets),
    w(q) = q * max(0, 1 - logit(q) / logit(p_bar)) detached, written out from full logits; and
    the targets' mean q and mean w."""
    model = model.double()
    model.zero_grad()
    logits = model(input_ids=rows.input_ids).logits
    labels = rows.labels[:, 1:]
    log_q = logits[:, :-1].log_softmax(-1).gather(-1, labels.clamp(min=0)[..., None])[..., 0]
    mask = labels != IGNORE_INDEX
    q = log_q.detach().exp()
    w = q * torch.clamp(1 - (torch.log(q) - torch.log1p(-q)) / math.log(P_BAR / (1 - P_BAR)), min=0)
    (-(w * log_q)[mask].sum() / mask.sum()).backward()
    grads = {name: param.grad.clone() for name, param in model.named_parameters()}
    return grads, float(q[mask].mean()), float(w[mask].mean())


def test_a_plain_trainer_with_the_fused_loss_takes_the_exact_step_under_accumulation(tmp_path):
    from transformers import Trainer, TrainingArguments

    rows = Rows()
    model = build_tiny_llama(VOCAB)
    before = {name: param.detach().clone() for name, param in model.named_parameters()}
    expected, mean_q, mean_weight = infosft_gradients(build_tiny_llama(VOCAB), rows)
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        max_steps=1,
        learning_rate=1.0,
        lr_scheduler_type="constant",
        optim="sgd",
        weight_decay=0.0,
        max_grad_norm=0.0,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
    )
    trainer = Trainer(model=model, args=args, train_dataset=rows)
    use_fused_loss(trainer, method="infosft", p_bar=P_BAR)
    trainer.train()
    for name, param in model.named_parameters():
        step = (before[name] - param.detach()).double()
        torch.testing.assert_close(step, expected[name], rtol=1e-4, atol=1e-6)
    logged = next(entry for entry in trainer.state.log_history if "infosft/mean_q" in entry)
    assert logged["infosft/mean_q"] == pytest.approx(mean_q, rel=1e-4)
    assert logged["infosft/mean_weight"] == pytest.approx(mean_weight, rel=1e-4)
    assert logged["infosft/zero_weight_share"] == 0.0  # a random model gives no q near 0.9


def test_an_unknown_method_or_a_negative_anchor_is_refused_before_training(tmp_path):
    from transformers import Trainer, TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    trainer = Trainer(model=build_tiny_llama(VOCAB), args=args, train_dataset=Rows())
    with pytest.raises(ValueError, match="no_such_method"):
        use_fused_loss(trainer, method="no_such_method")
    with pytest.raises(ValueError, match="kl_to_base"):
        use_fused_loss(trainer, kl_to_base=-0.1)
