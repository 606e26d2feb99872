"""RunSpec: one training run as data, mapping 1:1 to a run YAML.

A run YAML (``infosft train --config FILE``) holds

- what to train: ``model`` (the embedded default ``smollm2-135m-instruct``, a checkpoint
  directory or a hub id), ``model_init_kwargs`` (how to load it, e.g. ``{dtype: bfloat16}``),
  ``data`` and ``eval_data`` (files or hub datasets, one or a list), ``data_format`` (a
  formatter for raw public datasets) and ``lora`` (``{rank, alpha, dropout, target_modules}``,
  ``true`` for the defaults, absent or ``null`` for full fine-tuning);
- how to train it: every :class:`~infosft.training.InfoSFTConfig` field (``method``, ``p_bar``,
  ``learning_rate``, ``max_steps``, ``output_dir``, ...). ``activation_checkpointing`` and
  ``gradient_checkpointing`` (and their ``_kwargs``) are one setting under two names:
  transformers 5.23 renamed the field, and either name is set on whichever field the installed
  version has (see :data:`CHECKPOINTING_NAMES`).

:func:`resolve_spec` merges the defaults, the file, ``--set KEY=VALUE`` assignments and the
command-line flags, in that order of precedence (a flag wins over ``--set``, which wins over
the file), and builds the spec; every key and value is checked there, once.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from typing import TYPE_CHECKING, Any

from infosft.checks import Number, check_keys, check_value
from infosft.models import DEFAULT_MODEL, check_model_name

if TYPE_CHECKING:
    from datasets import Dataset

    from infosft.training.config import InfoSFTConfig

RUN_KEYS = ("model", "model_init_kwargs", "data", "eval_data", "data_format", "lora")
"""Keys of a run YAML that are not InfoSFTConfig fields."""
LORA_KEYS = ("rank", "alpha", "dropout", "target_modules")
LORA_VALUES = {
    "rank": Number(whole=True, low=1),
    "alpha": float,
    "dropout": Number(low=0, high=1, high_open=True),
}
"""What the numeric LoRA settings may be (see :func:`infosft.checks.check_value`)."""
CHECKPOINTING_NAMES = (
    ("activation_checkpointing", "gradient_checkpointing"),
    ("activation_checkpointing_kwargs", "gradient_checkpointing_kwargs"),
)
"""(name since transformers 5.23, name before it): either sets the field the installed
transformers has, the new one where both exist (5.23 keeps the old as a deprecated alias)."""

OPTIONAL_PACKAGES = (
    (
        "optim",
        ("*bnb*", "adamw_8bit", "*ademamix*", "*lion_*", "paged_*"),
        ("bitsandbytes",),
        "bitsandbytes",
    ),
    ("optim", ("galore_*",), ("galore_torch",), "galore-torch"),
    ("optim", ("apollo_*",), ("apollo_torch",), "apollo-torch"),
    ("optim", ("adamw_torch_4bit", "adamw_torch_8bit"), ("torchao",), "torchao"),
    ("optim", ("lomo", "adalomo"), ("lomo_optim",), "lomo-optim"),
    ("optim", ("grokadamw",), ("grokadamw",), "grokadamw"),
    ("optim", ("schedule_free_*",), ("schedulefree",), "schedulefree"),
    ("optim", ("stable_adamw",), ("optimi",), "torch-optimi"),
    ("optim", ("adamw_anyprecision",), ("torchdistx",), "torchdistx"),
    ("optim", ("adamw_torch_xla",), ("torch_xla",), "torch_xla"),
    ("report_to", ("wandb",), ("wandb",), "wandb"),
    ("report_to", ("mlflow",), ("mlflow",), "mlflow"),
    ("report_to", ("comet_ml",), ("comet_ml",), "comet-ml"),
    ("report_to", ("tensorboard",), ("tensorboard", "tensorboardX"), "tensorboard"),
    ("report_to", ("neptune",), ("neptune",), "neptune"),
    ("report_to", ("trackio",), ("trackio",), "trackio"),
    ("report_to", ("codecarbon",), ("codecarbon",), "codecarbon"),
    ("report_to", ("clearml",), ("clearml",), "clearml"),
    ("report_to", ("dagshub",), ("dagshub",), "dagshub"),
    ("report_to", ("flyte",), ("flytekit",), "flytekit"),
    ("report_to", ("dvclive",), ("dvclive",), "dvclive"),
    ("report_to", ("swanlab",), ("swanlab",), "swanlab"),
    ("report_to", ("azure_ml",), ("azureml",), "azureml-core"),
    ("deepspeed", ("*",), ("deepspeed",), "deepspeed"),
    ("use_liger_kernel", ("true",), ("liger_kernel",), "liger-kernel"),
    (
        "model_init_kwargs.attn_implementation",
        ("flash_attention_2",),
        ("flash_attn",),
        "flash-attn",
    ),
    (
        "model_init_kwargs.attn_implementation",
        ("flash_attention_3",),
        ("flash_attn_interface",),
        "flash-attn-3 (built from flash-attention's hopper/ directory)",
    ),
    ("model_init_kwargs.attn_implementation", ("*/*",), ("kernels",), "kernels"),
    ("model_init_kwargs.load_in_8bit", ("true",), ("bitsandbytes",), "bitsandbytes"),
    ("model_init_kwargs.load_in_4bit", ("true",), ("bitsandbytes",), "bitsandbytes"),
)
"""(setting, value patterns, modules, pip package): a setting whose value matches a pattern
needs one of the modules importable. Checked when the run options are read, so that a missing
package is named before any model loads instead of failing inside transformers."""


def check_optional_packages(values: dict[str, Any]) -> None:
    """ValueError naming the first setting in ``values`` (a run YAML's mapping) that needs a
    package which is not installed, and the pip command that installs it (see
    :data:`OPTIONAL_PACKAGES`)."""
    import fnmatch
    import importlib.util

    for key, patterns, modules, package in OPTIONAL_PACKAGES:
        for value in _setting_values(values, key):
            matches = any(fnmatch.fnmatchcase(value, pattern) for pattern in patterns)
            if matches and not any(importlib.util.find_spec(module) for module in modules):
                raise ValueError(
                    f"{key}: {value} needs the package {package}, which is not installed; "
                    f"install it (pip install {package.split()[0]}) or choose another {key}"
                )


def _setting_values(values: dict[str, Any], key: str) -> list[str]:
    """The value(s) of the (dotted) setting ``key`` in ``values`` as strings; true as "true",
    [] when it is unset, null or false."""
    for part in key.split("."):
        values = values.get(part) if isinstance(values, dict) else None
    if values is None or values is False:
        return []
    if values is True:
        return ["true"]
    items = values if isinstance(values, (list, tuple)) else [values]
    return [item if isinstance(item, str) else repr(item) for item in items]


@dataclasses.dataclass(frozen=True)
class LoraSpec:
    """LoRA adapters on the base model (the paper's code run: rank 32, alpha 64, dropout 0.05
    on all projections). ``target_modules="all-linear"`` is every linear layer but the LM head."""

    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.05
    target_modules: str | tuple[str, ...] = "all-linear"

    @classmethod
    def from_value(cls, value: Any, where: str = "lora") -> LoraSpec | None:
        """The YAML value of ``lora``: a mapping of LORA_KEYS, true (defaults), false/null."""
        if value is None or value is False:
            return None
        if value is True:
            return cls()
        if isinstance(value, LoraSpec):
            return value
        if not isinstance(value, dict):
            raise ValueError(
                f"{where} must be a mapping such as {{rank: 32, alpha: 64}}, true or null, "
                f"got {value!r}"
            )
        check_keys(list(value), where, list(LORA_KEYS))
        options = dict(value)
        for key, expected in LORA_VALUES.items():
            if key in options:
                options[key] = check_value(options[key], expected, f"{where}.{key}")
        target = options.get("target_modules")
        if isinstance(target, list) and all(isinstance(t, str) for t in target):
            options["target_modules"] = tuple(target)
        elif target is not None and not isinstance(target, str):
            raise ValueError(
                f"{where}.target_modules must be 'all-linear' or a list of module names, "
                f"got {target!r}"
            )
        return cls(**options)

    def peft_config(self) -> Any:
        """The ``peft.LoraConfig`` of this spec, for a causal LM."""
        from peft import LoraConfig

        target = self.target_modules
        return LoraConfig(
            r=self.rank,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=target if isinstance(target, str) else list(target),
            task_type="CAUSAL_LM",
        )


@dataclasses.dataclass
class RunSpec:
    """One training run: what to train (``model``, ``data``, ``lora``, ...) and how (``args``).

    Build it from a YAML-like mapping with :meth:`from_dict` (checked key by key, with the
    machine's defaults such as ``use_cpu``) or from a command line with :func:`resolve_spec`::

        RunSpec.from_dict({"data": "train.jsonl", "output_dir": "out", "method": "infosft"})

    ``data`` and ``eval_data`` are local .jsonl/.json/.parquet files, hub dataset names
    ``NAME[@CONFIG][:SPLIT]`` or ``datasets.Dataset`` objects (one or a list).
    """

    args: InfoSFTConfig
    data: str | Dataset | list[str | Dataset] | None = None
    model: str = DEFAULT_MODEL
    model_init_kwargs: dict[str, Any] | None = None
    eval_data: str | Dataset | list[str | Dataset] | None = None
    data_format: str | None = None
    lora: LoraSpec | None = None

    def __post_init__(self) -> None:
        from infosft.training.config import InfoSFTConfig

        if not isinstance(self.args, InfoSFTConfig):
            raise TypeError(f"RunSpec.args must be an InfoSFTConfig, got {type(self.args)}")
        check_model_name(self.model)
        if self.data is None:
            raise ValueError("no training data; pass --data FILE [FILE ...] (or data: in --config)")
        self.data = _sources(self.data, "data")
        if self.eval_data is not None:
            self.eval_data = _sources(self.eval_data, "eval_data")
        if self.data_format is not None:
            from infosft.training.formats import get_formatter

            get_formatter(check_value(self.data_format, str, "data_format"))
        check_value(self.model_init_kwargs, dict, "model_init_kwargs", null=True)
        if self.args.model_init_kwargs is not None:
            raise ValueError(
                "set model_init_kwargs on the RunSpec (it says how to load `model`), not on "
                "InfoSFTConfig: the model is loaded before the trainer is built"
            )
        self.lora = LoraSpec.from_value(self.lora)

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = "the run options") -> RunSpec:
        """The spec of a run YAML's mapping (see this module's docstring), every key and value
        checked; machine-dependent defaults (CPU, bf16) fill the keys not given."""
        from infosft.training.config import InfoSFTConfig

        run, options = _checked_run_values(values, where)
        if not (options.get("output_dir") or "").strip():
            raise ValueError(
                f"no output directory in {where} (an empty one is often an unset shell "
                "variable); pass --output-dir DIR (or output_dir: in the config file)"
            )
        options["output_dir"] = os.path.expanduser(options["output_dir"])
        args = InfoSFTConfig(**{**device_defaults(options), **options})
        return cls(args=args, **run)

    def to_dict(self) -> dict[str, Any]:
        """The run keys of the spec as plain values, for run_config.json (``args`` apart)."""
        return {
            "model": self.model,
            "model_init_kwargs": self.model_init_kwargs,
            "data": _describe(self.data),
            "eval_data": _describe(self.eval_data),
            "data_format": self.data_format,
            "lora": None if self.lora is None else dataclasses.asdict(self.lora),
        }


def resolve_spec(
    config_file: str | os.PathLike | None = None,
    assignments: list[str] | tuple[str, ...] = (),
    flags: dict[str, Any] | None = None,
) -> RunSpec:
    """The run spec of a command line: defaults < ``config_file`` < ``assignments`` < ``flags``.

    Args:
        config_file: a run YAML (see this module's docstring), or None.
        assignments: ``--set`` values ``"KEY=VALUE"``, each VALUE read as YAML 1.2.
        flags: values of the command-line flags by YAML key (``{"method": "dft",
            "lora": {"rank": 8}}``); None values are flags not given.

    A ``lora`` mapping merges key by key across the layers (``--lora-alpha 16`` keeps the
    file's rank); ``lora: true`` (``--lora``) keeps the mapping already set.
    """
    from infosft.files import read_yaml

    layers = []
    if config_file is not None:
        values = read_yaml(config_file)
        values = {} if values is None else values
        if not isinstance(values, dict):
            raise ValueError(f"config file {config_file} must hold a mapping of keys to values")
        layers.append(values)
    layers.append(parse_assignments(assignments))
    layers.append({key: value for key, value in (flags or {}).items() if value is not None})
    merged: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            merged[key] = _merge_lora(merged.get(key), value) if key == "lora" else value
    where = f"config file {config_file} and flags" if config_file is not None else "the options"
    return RunSpec.from_dict(merged, where)


def parse_assignments(assignments: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``["max_steps=5", "bf16=false"]`` -> ``{"max_steps": 5, "bf16": False}`` (values as YAML)."""
    from infosft.files import load_yaml

    values = {}
    for assignment in assignments:
        key, sep, text = assignment.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"--set expects KEY=VALUE, got {assignment!r}")
        values[key] = load_yaml(text, f"--set {key}")
    return values


def _merge_lora(old: Any, new: Any) -> Any:
    if new is True and isinstance(old, dict):
        return old
    if isinstance(new, dict) and isinstance(old, dict):
        return {**old, **new}
    return new


def _installed_checkpointing_names(
    values: dict[str, Any], fields: dict[str, Any], where: str
) -> dict[str, Any]:
    """``values`` with each checkpointing setting (either name of CHECKPOINTING_NAMES) under
    the name the installed transformers has; ValueError when both names disagree."""
    values = dict(values)
    for names in CHECKPOINTING_NAMES:
        given = {name: values.pop(name) for name in names if name in values}
        if len({repr(value) for value in given.values()}) > 1:
            raise ValueError(
                f"{where} sets {' and '.join(given)}, one setting under two names, to different "
                "values; keep one"
            )
        if given:
            values[next(name for name in names if name in fields)] = next(iter(given.values()))
    return values


def checkpointing_field() -> str:
    """The installed transformers' name of the activation checkpointing switch."""
    new, old = CHECKPOINTING_NAMES[0]
    return new if new in config_fields() else old


def config_fields() -> dict[str, Any]:
    """Every InfoSFTConfig field a run YAML may set, with its type annotation."""
    from infosft.training.config import InfoSFTConfig

    hints = typing.get_type_hints(InfoSFTConfig)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(InfoSFTConfig) if f.init}


def device_defaults(values: dict[str, Any]) -> dict[str, Any]:
    """Defaults that depend on the machine, for keys the user did not set in ``values``.

    Without a GPU: ``use_cpu`` (TRL otherwise stops with "Your setup doesn't support
    bf16/gpu"), no activation checkpointing (memory is not the limit on CPU, and it costs a
    recomputation). ``bf16`` only where the GPU supports it.
    """
    import torch

    cuda = torch.cuda.is_available()
    defaults: dict[str, Any] = {}
    if not cuda and not torch.backends.mps.is_available():
        defaults["use_cpu"] = True
    if "bf16" not in values and "fp16" not in values:
        defaults["bf16"] = cuda and torch.cuda.is_bf16_supported()
    if not cuda and not set(CHECKPOINTING_NAMES[0]) & set(values):
        defaults[checkpointing_field()] = False
    return {key: value for key, value in defaults.items() if key not in values}


def _sources(value: Any, key: str) -> list[Any]:
    """A data option (one source or a list of them) as a non-empty list."""
    from datasets import Dataset

    items = value if isinstance(value, (list, tuple)) else [value]
    if not items or not all(isinstance(item, (str, os.PathLike, Dataset)) for item in items):
        raise ValueError(
            f"{key} must be a file, a hub dataset name or a list of them, got {value!r}"
        )
    return [os.fspath(item) if isinstance(item, os.PathLike) else item for item in items]


def _describe(data: Any) -> Any:
    """How a data option is recorded in run_config.json."""
    if data is None or isinstance(data, str):
        return data
    if isinstance(data, (list, tuple)):
        return [_describe(item) for item in data]
    return f"<in-memory {type(data).__name__} of {len(data)} rows>"


def training_config(values: dict[str, Any], where: str = "the run options") -> InfoSFTConfig:
    """The InfoSFTConfig of a run mapping's training options, checked key by key as
    :meth:`RunSpec.from_dict` checks them, for work that reads the options but neither loads
    the run's data nor writes its outputs (checking a grid, preparing rows outside a run):
    ``data`` and ``output_dir`` may be left out. The other run keys are checked as well."""
    from infosft.training.config import InfoSFTConfig

    run, options = _checked_run_values(values, where)
    model_init_kwargs = run.get("model_init_kwargs")
    if model_init_kwargs is not None and not isinstance(model_init_kwargs, dict):
        raise ValueError(f"model_init_kwargs must be a mapping, got {model_init_kwargs!r}")
    LoraSpec.from_value(run.get("lora"))
    return InfoSFTConfig(**{**device_defaults(options), **options})


def _checked_run_values(values: Any, where: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A run mapping split into its run keys and its config options, every key known and every
    option checked against the config field's type (shared by :meth:`RunSpec.from_dict` and
    :func:`training_config`)."""
    if not isinstance(values, dict):
        raise ValueError(f"{where} must be a mapping of keys to values, got {values!r}")
    fields = config_fields()
    legacy = sorted(k for k in values if k.startswith("lora_"))
    if legacy:
        raise ValueError(
            f"{where}: {', '.join(legacy)} are written as one mapping now: "
            "lora: {rank: 32, alpha: 64, dropout: 0.05, target_modules: all-linear}"
        )
    values = _installed_checkpointing_names(values, fields, where)
    check_keys(list(values), where, [*fields, *RUN_KEYS])
    run = {key: values[key] for key in RUN_KEYS if key in values}
    options = {
        key: check_value(v, fields[key], key) for key, v in values.items() if key not in RUN_KEYS
    }
    check_optional_packages({**options, **run})
    return run, options
