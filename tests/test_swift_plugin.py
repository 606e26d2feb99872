"""The ms-swift plugin: ``swift sft --external_plugins <file> --loss_type infosft``.

The framework tests run ms-swift's own CLI from ``.venv-swift`` (``make venv-swift``) on a tiny
local Llama; they skip without that environment unless INFOSFT_REQUIRE_FRAMEWORKS=1.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from conftest import build_tiny_llama, build_tokenizer
from infosft.integrations import swift as plugin

SWIFT = Path(__file__).resolve().parents[1] / ".venv-swift" / "bin" / "swift"
P_BAR = 0.9
ROWS = [
    ("What is 12 + 7?", "12 + 7 = 19. The answer is 19."),
    ("The capital of France?", "Paris."),
    ("Which is larger, 3 or 5?", "5 is larger than 3. The answer is 5."),
    ("Write add.", "def add(a, b):\n    return a + b"),
]
# ms-swift's own encoding of the rows (its chatml template), printed as JSON.
ENCODE = """
import json, sys
from swift.model import get_processor
from swift.template import get_template
template = get_template(get_processor(sys.argv[1], model_type="llama"), template_type="chatml")
template.set_mode("train")
rows = [template.encode(json.loads(line)) for line in open(sys.argv[2])]
print(json.dumps([{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows]))
"""


def require_swift():
    if SWIFT.exists():
        return
    if os.environ.get("INFOSFT_REQUIRE_FRAMEWORKS") == "1":
        pytest.fail(f"{SWIFT} is missing; build it with `make venv-swift`")
    pytest.skip(f"ms-swift environment missing ({SWIFT}); build it with `make venv-swift`")


def swift_sft(tmp_path, model_dir, data, env_options, *extra):
    """Run ``swift sft`` (one SGD step, lr 1, 4 rows, 2 x 2 accumulation) with the plugin."""
    command = [
        str(SWIFT), "sft",
        "--model", str(model_dir), "--model_type", "llama", "--template", "chatml",
        "--dataset", str(data), "--split_dataset_ratio", "0",
        "--tuner_type", "full", "--torch_dtype", "float32",
        "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "2",
        "--max_steps", "1", "--learning_rate", "1", "--lr_scheduler_type", "constant",
        "--warmup_ratio", "0", "--optim", "sgd", "--weight_decay", "0", "--max_grad_norm", "0",
        "--output_dir", str(tmp_path / "out"), "--add_version", "false",
        "--save_strategy", "steps", "--save_steps", "1", "--save_only_model", "true",
        "--logging_steps", "1", "--report_to", "none", "--check_model", "false",
        "--dataloader_num_workers", "0",
        "--external_plugins", plugin.__file__, "--loss_type", "infosft",
        *extra,
    ]  # fmt: skip
    env = {**os.environ, **env_options, "HF_HUB_OFFLINE": "1", "MODELSCOPE_OFFLINE": "1"}
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


def infosft_step(model_dir, rows):
    """float64 gradient of sum_t w(q_t) * -log q_t / N over all rows (N: their targets),
    w(q) = q * max(0, 1 - logit(q) / logit(p_bar)) detached, from full logits, row by row."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float64)
    total = sum(sum(label != -100 for label in row["labels"][1:]) for row in rows)
    for row in rows:
        input_ids = torch.tensor([row["input_ids"]])
        labels = torch.tensor(row["labels"][1:])
        logits = model(input_ids=input_ids).logits[0, :-1]
        mask = labels != -100
        log_q = logits.log_softmax(-1)[mask].gather(-1, labels[mask, None])[:, 0]
        q = log_q.detach().exp()
        logit_q = torch.log(q) - torch.log1p(-q)
        w = q * torch.clamp(1 - logit_q / math.log(P_BAR / (1 - P_BAR)), min=0)
        (-(w * log_q).sum() / total).backward()
    return {name: param.grad for name, param in model.named_parameters()}


@pytest.fixture
def model_and_data(tmp_path):
    tokenizer = build_tokenizer()
    model = build_tiny_llama(len(tokenizer))
    model_dir = tmp_path / "model"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    data = tmp_path / "data.jsonl"
    lines = [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
        for q, a in ROWS
    ]
    data.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return model_dir, data


@pytest.mark.framework
def test_swift_sft_with_the_plugin_takes_the_exact_infosft_step(tmp_path, model_and_data):
    require_swift()
    model_dir, data = model_and_data
    python = SWIFT.parent / "python"
    encoded = subprocess.run(
        [str(python), "-c", ENCODE, str(model_dir), str(data)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    rows = json.loads(encoded.stdout.strip().splitlines()[-1])
    done = swift_sft(tmp_path, model_dir, data, {"INFOSFT_P_BAR": str(P_BAR)})
    assert done.returncode == 0, done.stderr[-3000:]

    from safetensors.torch import load_file

    before = load_file(model_dir / "model.safetensors")
    after = load_file(tmp_path / "out" / "checkpoint-1" / "model.safetensors")
    expected = infosft_step(model_dir, rows)
    for name, gradient in expected.items():
        step = (before[name] - after[name]).double()
        torch.testing.assert_close(
            step, gradient, rtol=1e-4, atol=1e-6, msg=lambda text, name=name: f"{name}: {text}"
        )
    logs = [json.loads(line) for line in (tmp_path / "out" / "logging.jsonl").open()]
    logged = next(entry for entry in logs if "infosft/mean_q" in entry)
    assert 0 < float(logged["infosft/mean_q"]) < 1


@pytest.mark.framework
def test_swift_sft_refuses_a_bad_option_before_loading_the_model(tmp_path, model_and_data):
    require_swift()
    model_dir, data = model_and_data
    done = swift_sft(tmp_path, model_dir, data, {"INFOSFT_P_BAR": "1.5"})
    assert done.returncode != 0
    assert "p_bar" in done.stderr.splitlines()[-1]
    assert "model_parameter_info" not in done.stderr + done.stdout


def test_the_module_prints_its_own_path_for_external_plugins():
    done = subprocess.run(
        [sys.executable, "-m", "infosft.integrations.swift"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert Path(done.stdout.strip()) == Path(plugin.__file__).resolve()


def test_options_come_from_the_infosft_environment_variables():
    options = plugin.options_from_env(
        {
            "INFOSFT_METHOD": "eaft",
            "INFOSFT_P_BAR": "0.9",
            "INFOSFT_METHOD_ARGS": '{"top_k": 10}',
            "INFOSFT_KL_TO_BASE": "0.1",
        }
    )
    assert options == {
        "method": "eaft",
        "p_bar": 0.9,
        "method_args": {"top_k": 10},
        "kl_to_base": 0.1,
    }


def test_without_variables_the_options_are_infosft_at_its_default_p_bar():
    assert plugin.options_from_env({}) == {
        "method": "infosft",
        "p_bar": None,
        "method_args": None,
        "kl_to_base": 0.0,
    }


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"INFOSFT_P_BAR": "high"}, "INFOSFT_P_BAR"),
        ({"INFOSFT_P_BAR": "1.5"}, "p_bar"),
        ({"INFOSFT_METHOD": "no_such_method"}, "no_such_method"),
        ({"INFOSFT_METHOD_ARGS": "{top_k: 20}"}, "INFOSFT_METHOD_ARGS"),
        ({"INFOSFT_METHOD_ARGS": "[20]"}, "INFOSFT_METHOD_ARGS"),
        ({"INFOSFT_METHOD": "eaft", "INFOSFT_METHOD_ARGS": '{"top_q": 20}'}, "top_q"),
        ({"INFOSFT_KL_TO_BASE": "-1"}, "INFOSFT_KL_TO_BASE"),
        ({"INFOSFT_KL_TO_BASE": "nan"}, "INFOSFT_KL_TO_BASE"),
    ],
)
def test_a_bad_option_is_refused_in_one_line_naming_it(environ, named):
    with pytest.raises(ValueError, match=named) as error:
        plugin.options_from_env(environ)
    assert "\n" not in str(error.value)


class Template:
    """Stands in for ms-swift's Template (the attributes the plugin reads)."""

    task_type = "causal_lm"
    is_encoder_decoder = False
    padding_free = False
    sequence_parallel_size = 1
    is_binary_loss_scale = None
    loss_scale = SimpleNamespace(is_binary_loss_scale=True)

    def compute_sft_loss(self, model, inputs, num_items_in_batch=None, trainer=None):
        return model(**inputs)


def swift_setup(args=None, template=None):
    trainer = SimpleNamespace(template=template or Template(), model_info=None, train=None)
    return SimpleNamespace(**(args or {})), trainer


def test_a_plain_causal_lm_setup_is_accepted():
    plugin.check_supported(*swift_setup())


class OwnLossTemplate(Template):
    def compute_sft_loss(self, model, inputs, num_items_in_batch=None, trainer=None):
        return model(**inputs)


def with_template(**attributes):
    return swift_setup(template=type("T", (Template,), attributes)())


@pytest.mark.parametrize(
    ("setup", "named"),
    [
        (swift_setup({"use_liger_kernel": True}), "--use_liger_kernel"),
        (swift_setup({"enable_channel_loss": True}), "--enable_channel_loss"),
        (swift_setup({"enable_dft_loss": True}), "INFOSFT_METHOD=dft"),
        (swift_setup({"label_smoothing_factor": 0.1}), "--label_smoothing_factor"),
        (with_template(padding_free=True), "--packing"),
        (with_template(sequence_parallel_size=2), "--sequence_parallel_size"),
        (with_template(is_binary_loss_scale=False), "--loss_scale"),
        (with_template(task_type="seq_cls"), "--task_type seq_cls"),
        (swift_setup(template=OwnLossTemplate()), "OwnLossTemplate"),
    ],
)
def test_a_setting_the_fused_loss_cannot_honour_is_refused_in_one_line(setup, named):
    with pytest.raises(ValueError, match=named) as error:
        plugin.check_supported(*setup)
    assert "\n" not in str(error.value)


def test_a_moe_router_loss_is_refused_unless_its_coefficient_is_zero():
    args, trainer = swift_setup({"router_aux_loss_coef": 0.001})
    trainer.model_info = SimpleNamespace(is_moe_model=True)
    with pytest.raises(ValueError, match="--router_aux_loss_coef 0"):
        plugin.check_supported(args, trainer)
    args.router_aux_loss_coef = 0.0
    plugin.check_supported(args, trainer)
