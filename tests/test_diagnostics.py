"""Training diagnostics: gradient mass per q bin from q alone, and the per-step update record."""

import math

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer

from infosft.experiments import diagnostics
from infosft.training import RunSpec, build_trainer

P_BAR = 0.93


def reference_weights(q: torch.Tensor, method: str) -> torch.Tensor:
    """w(q) in float64 from the paper's formula (arXiv 2605.14967)."""
    if method == "nll":
        return torch.ones_like(q)
    if method == "dft":
        return q
    logit = torch.log(q) - torch.log1p(-q)
    return q * (1 - logit / math.log(P_BAR / (1 - P_BAR))).clamp(min=0)


@pytest.mark.parametrize("method", ["nll", "dft", "infosft"])
def test_gradient_mass_is_the_l1_norm_of_the_weighted_loss_gradient_on_the_logits(method):
    torch.manual_seed(0)
    logits = (3 * torch.randn(6, 50, dtype=torch.float64)).requires_grad_()
    targets = torch.randint(0, 50, (6,))
    log_q = logits.log_softmax(-1).gather(-1, targets[:, None]).squeeze(-1)
    weights = reference_weights(log_q.detach().exp(), method)
    (-(weights * log_q)).sum().backward()
    expected = logits.grad.abs().sum(-1)
    got = diagnostics.logit_gradient_mass(log_q.detach(), method, P_BAR)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)


def test_mass_shares_split_tokens_and_each_methods_mass_over_q_bins():
    q = torch.tensor([0.01, 0.3, 0.6, 0.95], dtype=torch.float64)
    shares = diagnostics.mass_shares(q.log(), ["nll", "infosft"], P_BAR)
    labels = ["q<0.05", "0.05<=q<0.5", "0.5<=q<0.93", "q>=0.93"]
    assert list(shares["tokens"]) == labels
    assert list(shares["tokens"].values()) == [0.25] * 4
    nll_mass = 2 * (1 - q)  # w = 1
    for label, mass in zip(labels, nll_mass / nll_mass.sum(), strict=True):
        assert shares["nll"][label] == pytest.approx(float(mass))
    assert shares["infosft"]["q>=0.93"] == 0.0  # clipped: weight 0 above p_bar
    assert shares["mean_weight"]["nll"] == 1.0
    assert shares["total_mass"]["nll"] == pytest.approx(float(nll_mass.mean()))


def test_parameters_are_grouped_by_name():
    assert diagnostics.parameter_group("model.embed_tokens.weight") == "embeddings"
    assert diagnostics.parameter_group("model.layers.0.self_attn.q_proj.weight") == "attention"
    assert diagnostics.parameter_group("model.layers.0.mlp.up_proj.weight") == "mlp"
    assert diagnostics.parameter_group("model.layers.0.input_layernorm.weight") == "norms"
    assert diagnostics.parameter_group("score.bias") == "other"


def test_callback_records_sgd_steps_as_learning_rate_times_gradient_norm(tiny_model_dir, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    rows = [{"prompt": "What is 2 + 3?", "completion": f" It is {i} or 5."} for i in range(8)]
    spec = RunSpec.from_dict(
        {
            "use_cpu": True,
            "bf16": False,
            "optim": "sgd",
            "learning_rate": 0.05,
            "lr_scheduler_type": "constant",
            "weight_decay": 0.0,
            "max_grad_norm": 0.0,
            "max_steps": 2,
            "per_device_train_batch_size": 4,
            "save_strategy": "no",
            "report_to": [],
            "disable_tqdm": True,
            "method": "infosft",
            "output_dir": str(tmp_path),
            "data": Dataset.from_list(rows),
        }
    )
    callback = diagnostics.TrainingDiagnostics(score_every=1)
    trainer = build_trainer(spec, model=model, tokenizer=tokenizer, callbacks=[callback])
    start = {n: p.detach().clone().double() for n, p in model.named_parameters()}
    trainer.train()
    first, second = callback.records
    # Plain SGD without clipping: theta_t - theta_{t-1} = -lr * g, so |d theta| = lr * |g|.
    for record in (first, second):
        assert record["update_norm"] == pytest.approx(0.05 * record["grad_norm"], rel=1e-4)
    assert first["distance_from_start"] == pytest.approx(first["update_norm"], rel=1e-5)
    moved = sum(
        float((p.detach().double() - start[n]).pow(2).sum()) for n, p in model.named_parameters()
    )
    assert second["distance_from_start"] == pytest.approx(math.sqrt(moved), rel=1e-5)
    groups = [k for k in first if k.startswith("update_norm/")]
    assert sum(first[k] ** 2 for k in groups) == pytest.approx(first["update_norm"] ** 2)
    assert callback.mass_records == []  # no probe batch given: nothing scored


def test_callback_scores_the_probe_batch_at_the_start_and_every_few_steps(tiny_model_dir, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    rows = [{"prompt": "What is 2 + 3?", "completion": f" It is {i} or 5."} for i in range(6)]
    spec = RunSpec.from_dict(
        {
            "use_cpu": True,
            "max_steps": 3,
            "per_device_train_batch_size": 2,
            "save_strategy": "no",
            "report_to": [],
            "disable_tqdm": True,
            "output_dir": str(tmp_path),
            "data": Dataset.from_list(rows),
        }
    )
    callback = diagnostics.TrainingDiagnostics(score_every=2)
    trainer = build_trainer(spec, model=model, tokenizer=tokenizer, callbacks=[callback])
    callback.probe_batch = diagnostics.probe_batch(trainer.train_dataset, rows=4)
    trainer.train()
    assert [r["step"] for r in callback.mass_records] == [0, 2]
    for record in callback.mass_records:
        assert sum(record["shares"]["tokens"].values()) == pytest.approx(1.0)
        assert sum(record["shares"]["infosft"].values()) == pytest.approx(1.0)
        # " It is i or 5." after the prompt: every completion token and the end of turn.
        assert record["q"]["num_target_tokens"] > 4 * 5
