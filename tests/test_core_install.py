"""The core (objectives, losses) installs and runs with torch and numpy alone; the trainer, the
CLI commands, evaluation and experiments come with extras.

"Alone" is checked in a subprocess whose imports are limited to the standard library and
what the core's requirements install (torch, numpy and their dependencies): every other module
(transformers, TRL, yaml, ...) raises ModuleNotFoundError as if it were not installed.
"""

import importlib.metadata
import importlib.util
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from infosft import extras
from infosft.cli import COMMAND_EXTRAS, command_modules, main

tomllib = pytest.importorskip("tomllib")

ROOT = Path(__file__).resolve().parents[1]
HF_TRAINING_STACK = {"transformers", "trl", "datasets", "peft", "accelerate"}
P_BAR = 0.93
# The losses compute the weights w(q) in float32, also for float64 inputs.
TOLERANCE = {"rtol": 1e-6, "atol": 1e-9}


def requirement_name(requirement: str) -> str:
    """The normalised distribution name of a requirement string (``"lm-eval[ifeval]>=0.4"``)."""
    return re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9_.-]+", requirement).group(0)).lower()


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def extra_requirements(extra: str) -> list[str]:
    """What ``pip install 'infosft[extra]'`` asks for beyond the core, with the requirements of
    the extras it includes."""
    requirements = []
    for requirement in pyproject()["optional-dependencies"][extra]:
        if requirement_name(requirement) == "infosft":
            for included in re.search(r"\[(.*)\]", requirement).group(1).split(","):
                requirements += extra_requirements(included.strip())
        else:
            requirements.append(requirement)
    return requirements


def extra_distributions(extra: str) -> set[str]:
    return {requirement_name(r) for r in extra_requirements(extra)}


def installed_modules(requirements: list[str]) -> set[str]:
    """Top-level modules that installing ``requirements`` brings, with their own requirements."""
    wanted, todo = set(), list(requirements)
    while todo:
        name = requirement_name(todo.pop())
        if name in wanted:
            continue
        wanted.add(name)
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        todo += [r for r in requires if "extra ==" not in r]
    return {
        module
        for module, dists in importlib.metadata.packages_distributions().items()
        if any(requirement_name(d) in wanted for d in dists)
    }


# Run first in the subprocess: the finder of installed modules, made blind to every module
# outside the standard library, ALLOWED and infosft (find_spec gives None and import raises
# ModuleNotFoundError, as when they are not installed).
BLOCKER = """
import importlib.machinery, sys
ALLOWED = {allowed!r}
class Only(importlib.machinery.PathFinder):
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        top = name.partition(".")[0]
        # sysconfig's data module is named after the platform, so stdlib_module_names lacks it.
        if top in ALLOWED or top in sys.stdlib_module_names or top.startswith("_sysconfigdata"):
            return super().find_spec(name, path, target)
        return None
sys.meta_path[:] = [
    Only if finder is importlib.machinery.PathFinder else finder for finder in sys.meta_path
]
"""


def run_with_only(requirements: list[str], code: str, *args: str) -> subprocess.CompletedProcess:
    """``python -c code *args`` able to import only what ``requirements`` install."""
    allowed = sorted(installed_modules(requirements) | {"infosft"})
    return subprocess.run(
        [sys.executable, "-c", BLOCKER.format(allowed=allowed) + code, *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )


def run_with_core_alone(code: str, *args: str) -> subprocess.CompletedProcess:
    return run_with_only(pyproject()["dependencies"], code, *args)


CLI = "from infosft.cli import main; sys.exit(main(sys.argv[1:]))"


# Losses computed in the subprocess on small random inputs, saved with their inputs.
CORE_RUN = """
import torch, infosft
from infosft.objectives import available_schemes, register_scheme
torch.manual_seed(0)
hidden = torch.randn(2, 7, 5, dtype=torch.float64, requires_grad=True)
weight = torch.randn(11, 5, dtype=torch.float64, requires_grad=True)
labels = torch.randint(0, 11, (2, 7))
labels[0, :3] = -100
saved = {"hidden": hidden.detach(), "weight": weight.detach(), "labels": labels}

loss = infosft.fused_weighted_nll_loss(hidden, weight, labels, method="infosft", p_bar=0.93)
saved["fused"] = [loss.detach(), *torch.autograd.grad(loss, (hidden, weight))]
module = infosft.FusedWeightedNLLLoss("infosft", p_bar=0.93)
loss = module(weight, hidden, labels, num_items_in_batch=20)
saved["module"] = [loss.detach(), *torch.autograd.grad(loss, (hidden, weight))]
logits = hidden.detach() @ weight.detach().T
saved["weighted_nll_loss"] = infosft.weighted_nll_loss(logits, labels, method="dft")
loss_fn = infosft.compute_loss_func("infosft", p_bar=0.93)
saved["compute_loss_func"] = loss_fn({"logits": logits}, labels, num_items_in_batch=20)
register_scheme("half", lambda tokens, p_bar: torch.full_like(tokens.log_probs, 0.5))
saved["registered"] = "half" in available_schemes()
saved["half"] = infosft.weighted_nll_loss(logits, labels, method="half")
try:
    import transformers
    saved["transformers_blocked"] = False
except ModuleNotFoundError:
    saved["transformers_blocked"] = True
try:
    infosft.InfoSFTTrainer
except ImportError as err:
    saved["trainer_error"] = str(err)
try:
    from infosft.training import InfoSFTConfig
except ImportError as err:
    saved["config_error"] = str(err)
torch.save(saved, sys.argv[1])
"""


@pytest.fixture(scope="module")
def core_run(tmp_path_factory):
    path = tmp_path_factory.mktemp("core") / "saved.pt"
    done = run_with_core_alone(CORE_RUN, str(path))
    assert done.returncode == 0, done.stderr
    return torch.load(path)


def float64_loss(hidden, weight, labels, method, num_items=None):
    """sum_t -sg(w(q_t)) log q_t / N over the shifted targets, from the full float64 logits.

    w(q) = q (dft), q * max(0, 1 - logit(q) / logit(p_bar)) (infosft), 0.5 (half).
    """
    logits = (hidden @ weight.T)[:, :-1]
    targets = labels[:, 1:]
    mask = targets != -100
    log_q = torch.log_softmax(logits, -1).gather(-1, targets.clamp(min=0)[..., None])[..., 0]
    q = log_q.detach().exp()
    weights = {
        "dft": q,
        "infosft": q * (1 - torch.log(q / (1 - q)) / math.log(P_BAR / (1 - P_BAR))).clamp(min=0),
        "half": torch.full_like(q, 0.5),
    }[method]
    return -(weights * log_q)[mask].sum() / (mask.sum() if num_items is None else num_items)


def float64_loss_and_grads(saved, num_items=None):
    hidden = saved["hidden"].clone().requires_grad_()
    weight = saved["weight"].clone().requires_grad_()
    loss = float64_loss(hidden, weight, saved["labels"], "infosft", num_items)
    return [loss.detach(), *torch.autograd.grad(loss, (hidden, weight))]


def test_core_requires_torch_and_numpy_alone():
    assert {requirement_name(r) for r in pyproject()["dependencies"]} == {"torch", "numpy"}


@pytest.mark.parametrize("extra", ["train", "eval", "experiments", "all"])
def test_extras_that_train_bring_the_hf_training_stack(extra):
    assert extra_distributions(extra) >= HF_TRAINING_STACK


def test_all_extra_holds_what_every_command_needs():
    for extra in set(COMMAND_EXTRAS.values()):
        assert extra_distributions("all") >= extra_distributions(extra)


def test_commands_given_an_extra_exist():
    assert set(COMMAND_EXTRAS) <= set(command_modules())


def test_dev_extra_installs_all():
    assert extra_distributions("dev") >= extra_distributions("all")


@pytest.mark.parametrize("extra", list(extras.EXTRAS))
def test_extras_table_lists_what_pyproject_installs(extra):
    assert set(extras.EXTRAS[extra]) == extra_distributions(extra)


def test_the_subprocess_cannot_import_transformers(core_run):
    assert core_run["transformers_blocked"]


def test_fused_loss_runs_on_the_core_alone(core_run):
    for got, expected in zip(core_run["fused"], float64_loss_and_grads(core_run), strict=True):
        torch.testing.assert_close(got, expected, **TOLERANCE)


def test_fused_loss_module_runs_on_the_core_alone(core_run):
    expected = float64_loss_and_grads(core_run, num_items=20)
    for got, want in zip(core_run["module"], expected, strict=True):
        torch.testing.assert_close(got, want, **TOLERANCE)


def test_weighted_nll_loss_runs_on_the_core_alone(core_run):
    expected = float64_loss(core_run["hidden"], core_run["weight"], core_run["labels"], "dft")
    torch.testing.assert_close(core_run["weighted_nll_loss"], expected, **TOLERANCE)


def test_compute_loss_func_runs_on_the_core_alone(core_run):
    saved = core_run
    expected = float64_loss(saved["hidden"], saved["weight"], saved["labels"], "infosft", 20)
    torch.testing.assert_close(saved["compute_loss_func"], expected, **TOLERANCE)


def test_register_scheme_runs_on_the_core_alone(core_run):
    assert core_run["registered"]
    expected = float64_loss(core_run["hidden"], core_run["weight"], core_run["labels"], "half")
    torch.testing.assert_close(core_run["half"], expected, **TOLERANCE)


def test_trainer_attribute_names_the_train_extra_on_the_core_alone(core_run):
    assert core_run["trainer_error"].startswith("infosft.InfoSFTTrainer needs the 'train' extra")
    assert "pip install 'infosft[train]'" in core_run["trainer_error"]


def test_training_attributes_name_the_train_extra_on_the_core_alone(core_run):
    assert core_run["config_error"].startswith(
        "infosft.training.InfoSFTConfig needs the 'train' extra"
    )


def test_train_command_names_its_extra_on_the_core_alone(tmp_path):
    done = run_with_core_alone(
        CLI,
        *["train", "--data", str(tmp_path / "d.jsonl"), "--output-dir", str(tmp_path / "out")],
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1
    assert "pip install 'infosft[train]'" in done.stderr
    assert not (tmp_path / "out").exists()


def test_weights_command_runs_on_the_core_alone():
    done = run_with_core_alone(
        CLI,
        *["weights", "--methods", "dft", "--q", "0.25"],
    )
    assert done.returncode == 0, done.stderr
    assert "0.25" in done.stdout


def test_a_command_checks_its_extra_before_it_runs(monkeypatch, capsys):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "matplotlib" else find_spec(name),
    )
    assert main(["demo", "--print-spec"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1
    assert "'experiments' extra" in err and "'matplotlib'" in err


def test_a_module_of_an_extra_missing_while_running_names_the_extra(monkeypatch, capsys):
    def run(args):
        raise ModuleNotFoundError("No module named 'math_verify'", name="math_verify")

    monkeypatch.setattr("infosft.cli.weights.run", run)
    assert main(["weights"]) == 2
    assert "pip install 'infosft[eval]'" in capsys.readouterr().err


def test_a_missing_module_no_extra_installs_keeps_its_traceback(monkeypatch):
    def run(args):
        raise ModuleNotFoundError("No module named 'not_a_dependency'", name="not_a_dependency")

    monkeypatch.setattr("infosft.cli.weights.run", run)
    with pytest.raises(ModuleNotFoundError, match="not_a_dependency"):
        main(["weights"])


def test_train_command_runs_with_the_train_extra_alone(tiny_model_dir, tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text(
        "".join(f'{{"prompt": "{i} + 7?", "completion": " {i + 7}."}}\n' for i in range(8))
    )
    settings = {"max_steps": 1, "max_length": 32, "report_to": "none", "save_strategy": "no"}
    done = run_with_only(
        [*pyproject()["dependencies"], *extra_requirements("train")],
        CLI,
        *["train", "--model", str(tiny_model_dir), "--data", str(data)],
        *["--output-dir", str(tmp_path / "out")],
        *[arg for key, value in settings.items() for arg in ("--set", f"{key}={value}")],
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_eval_command_runs_with_the_eval_extra_alone(tmp_path):
    samples = tmp_path / "samples.jsonl"
    samples.write_text('{"task_id": "HumanEval/0", "completion": "    return None\\n"}\n')
    out = tmp_path / "out.json"
    done = run_with_only(
        [*pyproject()["dependencies"], *extra_requirements("eval")],
        CLI,
        *["eval", "--task", "humaneval", "--samples", str(samples), "--output", str(out)],
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert [s["passed"] for s in json.loads(out.read_text())["samples"]] == [False]


def test_a_submodule_missing_from_an_installed_package_keeps_its_traceback(monkeypatch):
    def run(args):
        raise ModuleNotFoundError("No module named 'transformers.gone'", name="transformers.gone")

    monkeypatch.setattr("infosft.cli.weights.run", run)
    with pytest.raises(ModuleNotFoundError, match=r"transformers\.gone"):
        main(["weights"])
