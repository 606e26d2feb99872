"""The grid spec: one YAML describes an experiment, checked whole before anything runs.

``infosft compare --config GRID.yaml`` runs a grid spec; ``infosft demo`` runs one shipped with
the package (``infosft demo --print-spec`` shows it). Paths are relative to the YAML's directory::

    model: smollm2-135m-instruct        # name, checkpoint directory or hub id
    model_init_kwargs: null             # how to load it, e.g. {dtype: bfloat16}; float32 default
    tasks:                              # the new tasks; every cell trains on one of them
      - arith_chain                     # a built-in generated task (arith_chain, word_problems)
      - {name: word_problems, n_train: 96, n_test: 100, about: "strong prior"}
      - name: my_task                   # your own: training data and its evaluation
        data: train.jsonl               # one file or a list, in a TRL format (as infosft train)
        data_format: null               # optional formatter for raw public datasets
        eval: my_eval.yaml              # one or a list: task YAML, registered task, lm_eval:NAME
        n_rows: null                    # its training rows, for `compare --plan` (hub data)
      - name: my_task-noisy             # a regime of a task's demonstrations (either key):
        data: train.jsonl               #   noise: a share of answers made wrong, per seed
        eval: my_eval.yaml              #   (kind: answer = final number slipped, swap = another
        noise: {share: 0.25, kind: answer}  # row's answer); near_policy: the model's own
      - name: words-own                 #   answers that agree with the demonstration's
        generator: word_problems        #   (samples, temperature, max_new_tokens, batch_size,
        near_policy: {samples: 4, scorer: math}  # scorer: math | choice | exact)
      - {name: words-few, generator: word_problems, n_train: 32,
         epochs: [1, 4, 16]}            # its own training lengths, in place of grid.epochs
    prior_tasks: [probes]               # retention items: the built-in probes, task YAMLs,
                                        # registered tasks, lm_eval:NAME (lm-evaluation-harness)
    lm_eval: {include_path: null, num_fewshot: null, apply_chat_template: false, batch_size: 8}
    general_prompts: null               # file: KL(base || tuned) on base samples (built-in default)
    heldout_text: null                  # file: general-text NLL (built-in default)
    grid:
      methods:                          # a scheme name, or a variant with its own settings
        - nll
        - infosft
        - {name: infosft-p0.8, method: infosft, p_bar: 0.8}
        - {name: sft-then-infosft, method: infosft,
           loss_schedule: [{method: nll, until_epoch: 0.25}, {method: infosft}]}
        - {name: asft, method: dft, kl_to_base: 0.1}
      learning_rates: [3.0e-5, 1.0e-4, 3.0e-4]
      epochs: [1]                       # or leave out and set training.max_steps
      seeds: [0]
    training: {per_device_train_batch_size: 8, max_length: 256}   # other InfoSFTConfig fields
    lora: null                          # or {rank: 16, alpha: 32, dropout: 0.05}
    eval_limit: null                    # measure only the first N items of each task
    eval_batch_size: null               # prompts per generate call (default: each task's own)
    keep_checkpoints: false             # true: train each cell on disk, resumable mid-cell

A cell is (task, method variant, learning rate, epochs, seed). :func:`read_grid` parses and
checks the whole file (keys, types, every variant's scheme settings, training options, LoRA,
tasks, data files) and raises one ValueError naming the file (and line, for YAML syntax) before
any model is loaded.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, Literal

from infosft.checks import Number, check_keys, check_value
from infosft.experiments.fronts import exact_number
from infosft.files import read_yaml
from infosft.models import DEFAULT_MODEL, check_model_name, is_default_model, is_hub_repo_id

PROBES = "probes"
LM_EVAL_PREFIX = "lm_eval:"
TOP_KEYS = (
    "model",
    "model_init_kwargs",
    "tasks",
    "prior_tasks",
    "lm_eval",
    "general_prompts",
    "heldout_text",
    "grid",
    "training",
    "lora",
    "eval_limit",
    "eval_batch_size",
    "keep_checkpoints",
)
GRID_KEYS = ("methods", "learning_rates", "epochs", "seeds")
# What a task may turn its demonstrations into (infosft.experiments.demonstrations).
REGIME_KEYS = ("noise", "near_policy")
# "epochs": a task's own training lengths, in place of grid.epochs for its cells.
BUILTIN_TASK_KEYS = ("name", "generator", "n_train", "n_test", "about", "epochs", *REGIME_KEYS)
DATA_TASK_KEYS = ("name", "data", "data_format", "eval", "about", "n_rows", "epochs", *REGIME_KEYS)
NOISE_KEYS = ("share", "kind")
NEAR_POLICY_KEYS = ("samples", "temperature", "max_new_tokens", "scorer", "batch_size")
NEAR_POLICY_DEFAULTS = {"samples": 4, "temperature": 0.7, "max_new_tokens": 256, "batch_size": 32}
LM_EVAL_KEYS = ("include_path", "num_fewshot", "apply_chat_template", "batch_size")
DEFAULT_N_TRAIN = 128
DEFAULT_N_TEST = 100
# Training options a cell sets itself, and where in the grid each one belongs instead.
CELL_OPTIONS = {
    "learning_rate": "grid.learning_rates",
    "num_train_epochs": "grid.epochs",
    "seed": "grid.seeds",
    "method": "grid.methods",
    "p_bar": "a method entry: {name: ..., method: infosft, p_bar: 0.9}",
    "method_args": "a method entry: {name: ..., method: eaft, method_args: {...}}",
    "kl_to_base": "a method entry: {name: ..., method: nll, kl_to_base: 0.1}",
    "loss_schedule": "a method entry: {name: ..., loss_schedule: [...]}",
    "output_dir": "the --output-dir of the command",
    "resume_from_checkpoint": "the grid itself (a rerun resumes)",
    "model": "the top-level model key",
    "data": "a task's data key",
}
# Options of every cell's training run unless the grid's training block sets them. In memory
# the engine prints its own progress and keeps every step's log; on disk the Trainer prints.
TRAINING_DEFAULTS = {"report_to": "none"}
IN_MEMORY_DEFAULTS = {"logging_steps": 1, "disable_tqdm": True, "save_strategy": "no"}
ON_DISK_DEFAULTS = {"logging_steps": 10}
POSITIVE = Number(low=0, low_open=True)
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
SPECS_DIR = Path(__file__).parent / "specs"


def demo_spec_path(full: bool = False) -> Path:
    """The grid spec ``infosft demo`` runs (``--full``: the complete protocol)."""
    return SPECS_DIR / ("demo_full.yaml" if full else "demo.yaml")


@dataclasses.dataclass(frozen=True)
class Variant:
    """A method entry: a named curve of the fronts, with its scheme settings.

    ``method`` is the scheme recorded for the cell; with a ``loss_schedule`` the schedule
    decides the weighting at each step (its last entry by default for ``method``).
    """

    name: str
    method: str
    p_bar: float | None = None
    method_args: dict[str, Any] | None = None
    kl_to_base: float = 0.0
    loss_schedule: list[dict[str, Any]] | None = None

    def training_values(self) -> dict[str, Any]:
        """The InfoSFTConfig fields of this variant (those unset left at their defaults)."""
        values = {key: getattr(self, key) for key in METHOD_OPTIONS}
        return {key: value for key, value in values.items() if value is not None}


# The training options a method entry sets (the rest of a cell's options are the grid's).
METHOD_OPTIONS = tuple(field.name for field in dataclasses.fields(Variant) if field.name != "name")
VARIANT_KEYS = ("name", *METHOD_OPTIONS)


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """A new task of the grid: a built-in generated task (``data`` None) or your own data with
    one or more evaluation tasks."""

    name: str
    data: tuple[str, ...] | None = None
    data_format: str | None = None
    evals: tuple[str, ...] = ()
    n_train: int = DEFAULT_N_TRAIN
    n_test: int = DEFAULT_N_TEST
    about: str = ""
    generator: str | None = None
    """The built-in task that draws a built-in task's problems; None: the one named ``name``."""
    noise: dict[str, Any] | None = None
    """``{"share", "kind"}``: a share of the training answers made wrong (each seed its own)."""
    near_policy: dict[str, Any] | None = None
    """``{"samples", "temperature", "max_new_tokens", "scorer", "batch_size"}``: the base
    model's own accepted answers replace the demonstrations."""
    epochs: tuple[float, ...] | None = None
    """The task's own training lengths; None: the grid's ``epochs``."""

    @property
    def builtin(self) -> bool:
        return self.data is None

    @property
    def problems(self) -> str:
        """The built-in task whose problems a built-in task draws."""
        return self.generator or self.name


@dataclasses.dataclass(frozen=True)
class Cell:
    """One fine-tune of the grid; ``epochs`` is None when ``training.max_steps`` sets the length."""

    task: str
    variant: str
    learning_rate: float
    epochs: float | None
    seed: int

    @property
    def name(self) -> str:
        """The cell's file name (without suffix), e.g. ``arith_chain,infosft,lr0.0001,ep1,seed0``:
        its identity, parts joined by a comma (which task and method names cannot hold) and
        numbers written exactly, so two different cells never share a name."""
        length = [] if self.epochs is None else [f"ep{exact_number(self.epochs)}"]
        parts = [self.task, self.variant, f"lr{exact_number(self.learning_rate)}", *length]
        return ",".join([*parts, f"seed{self.seed}"])

    def describe(self) -> str:
        """Short human-readable form for progress lines."""
        length = "" if self.epochs is None else f" {exact_number(self.epochs)} ep"
        lr = exact_number(self.learning_rate)
        return f"{self.task} {self.variant} lr={lr}{length} seed {self.seed}"


@dataclasses.dataclass
class GridSpec:
    """A parsed and checked grid YAML (format in this module's docstring)."""

    source: str
    model: str
    tasks: list[TaskSpec]
    variants: list[Variant]
    learning_rates: list[float]
    epochs: list[float | None]
    seeds: list[int]
    prior_tasks: list[str] = dataclasses.field(default_factory=lambda: [PROBES])
    model_init_kwargs: dict[str, Any] | None = None
    lm_eval: dict[str, Any] = dataclasses.field(default_factory=dict)
    general_prompts: str | None = None
    heldout_text: str | None = None
    training: dict[str, Any] = dataclasses.field(default_factory=dict)
    lora: dict[str, Any] | None = None
    eval_limit: int | None = None
    eval_batch_size: int | None = None
    keep_checkpoints: bool = False
    # Training rows per data task as the YAML states them: a hint for ``compare --plan`` when
    # the data is on the hub; kept out of TaskSpec so that it never changes a cell's identity.
    n_rows: dict[str, int] = dataclasses.field(default_factory=dict)

    def cells(self) -> list[Cell]:
        """Every cell: seeds outermost (a finished seed has whole fronts), then tasks, methods,
        learning rates and epochs (the task's own, else the grid's)."""
        return [
            Cell(task.name, variant.name, lr, epochs, seed)
            for seed in self.seeds
            for task in self.tasks
            for variant in self.variants
            for lr in self.learning_rates
            for epochs in self.task_epochs(task)
        ]

    def task_epochs(self, task: TaskSpec) -> list[float | None]:
        """The training lengths of ``task``'s cells: its own ``epochs``, else the grid's."""
        return list(task.epochs) if task.epochs is not None else self.epochs

    def size(self) -> str:
        """How many cells, and what multiplies to that many, e.g. ``"36 = 2 task(s) x 1
        length(s) x 2 method(s) x 3 learning rate(s) x 3 seed(s)"``; with tasks of their own
        lengths, the (task, length) pairs take the place of tasks x lengths."""
        pairs = sum(len(self.task_epochs(task)) for task in self.tasks)
        if all(task.epochs is None for task in self.tasks):
            lengths = f"{len(self.tasks)} task(s) x {len(self.epochs)} length(s)"
        else:
            lengths = f"{pairs} (task, length) pair(s) of {len(self.tasks)} task(s)"
        count = pairs * len(self.variants) * len(self.learning_rates) * len(self.seeds)
        return (
            f"{count} = {lengths} x {len(self.variants)} method(s) x "
            f"{len(self.learning_rates)} learning rate(s) x {len(self.seeds)} seed(s)"
        )

    def task(self, name: str) -> TaskSpec:
        return next(t for t in self.tasks if t.name == name)

    def variant(self, name: str) -> Variant:
        return next(v for v in self.variants if v.name == name)

    def training_values(self, cell: Cell) -> dict[str, Any]:
        """The run-spec mapping of a cell but for ``data`` and ``output_dir``."""
        mode = ON_DISK_DEFAULTS if self.keep_checkpoints else IN_MEMORY_DEFAULTS
        values = {**TRAINING_DEFAULTS, **mode, **self.training}
        values.update(self.variant(cell.variant).training_values())
        values.update(learning_rate=cell.learning_rate, seed=cell.seed, lora=self.lora)
        if cell.epochs is not None:
            values["num_train_epochs"] = cell.epochs
        if self.model_init_kwargs is not None:
            values["model_init_kwargs"] = self.model_init_kwargs
        return values

    def to_dict(self) -> dict[str, Any]:
        """The spec as plain values (for results.json and the report)."""
        return dataclasses.asdict(self)


def read_grid(path: str | Path, require_data: bool = True) -> GridSpec:
    """Parse and check a grid YAML; every problem is a ValueError (or FileNotFoundError) whose
    message names the file, raised before any model is loaded or trained. ``require_data``
    False accepts local training data files that do not exist yet (to plan a grid)."""
    path = Path(path)
    values = read_yaml(path)
    if not isinstance(values, dict):
        raise ValueError(f"{path} must hold a mapping of keys to values, got {values!r}")
    try:
        return parse_grid(values, path.parent, str(path), require_data)
    except (ValueError, OSError) as err:
        message = str(err)
        if message.startswith(str(path)):
            raise
        raise type(err)(f"{path}: {message}") from None


def parse_grid(values: dict[str, Any], base_dir: Path, source: str, require_data: bool) -> GridSpec:
    """The :class:`GridSpec` of a grid mapping whose relative paths are relative to
    ``base_dir``; ValueError (without the file name) for the first problem."""
    from infosft.training.config import EPOCHS

    if "p_bar" in values or "method" in values:
        raise ValueError("p_bar and method belong to a method entry of grid.methods")
    _check_keys(values, TOP_KEYS, "the grid")
    for key in ("tasks", "grid"):
        if key not in values:
            raise ValueError(f"missing required key {key!r}")
    grid = values["grid"]
    if not isinstance(grid, dict):
        raise ValueError(f"grid must be a mapping with keys {', '.join(GRID_KEYS)}, got {grid!r}")
    _check_keys(grid, GRID_KEYS, "grid")
    if "methods" not in grid or "learning_rates" not in grid:
        raise ValueError("grid needs methods and learning_rates")
    training = values.get("training") or {}
    if not isinstance(training, dict):
        raise ValueError(f"training must be a mapping of InfoSFTConfig fields, got {training!r}")
    for key in training:
        if key in CELL_OPTIONS:
            raise ValueError(f"training.{key} is set per cell; set it in {CELL_OPTIONS[key]}")
    if "max_steps" in training and training["max_steps"] not in (None, -1):
        if "epochs" in grid:
            raise ValueError(
                "training.max_steps and grid.epochs both set how long each cell trains; keep one "
                "(max_steps would silently override the epochs)"
            )
        epochs: list[float | None] = [None]
    else:
        epochs = _numbers(grid.get("epochs", [1]), "epochs", EPOCHS)
    tasks, n_rows = _tasks(values["tasks"], base_dir, require_data)
    own_lengths = [t.name for t in tasks if t.epochs is not None]
    if own_lengths and epochs == [None]:
        raise ValueError(
            f"training.max_steps sets every cell's length, and task(s) {', '.join(own_lengths)} "
            "set their own epochs; keep one (max_steps would silently override the epochs)"
        )
    spec = GridSpec(
        source=source,
        model=_resolve_model(values.get("model", DEFAULT_MODEL), base_dir),
        tasks=tasks,
        variants=_variants(grid["methods"]),
        learning_rates=_numbers(grid["learning_rates"], "learning_rates", POSITIVE),
        epochs=epochs,
        seeds=_numbers(grid.get("seeds", [0]), "seeds", Number(whole=True, low=0)),
        prior_tasks=[
            _resolve_task(t, base_dir, "prior_tasks", allow_probes=True)
            for t in _list(values.get("prior_tasks", [PROBES]), "prior_tasks", top=True)
        ],
        model_init_kwargs=check_value(
            values.get("model_init_kwargs"), dict, "model_init_kwargs", null=True
        ),
        lm_eval=_lm_eval_options(values.get("lm_eval"), base_dir),
        general_prompts=_resolve_file(values.get("general_prompts"), base_dir, "general_prompts"),
        heldout_text=_resolve_file(values.get("heldout_text"), base_dir, "heldout_text"),
        training=dict(training),
        lora=values.get("lora"),
        eval_limit=check_value(
            values.get("eval_limit"), _counts("items"), "eval_limit", null="for all"
        ),
        eval_batch_size=check_value(
            values.get("eval_batch_size"), _counts("prompts"), "eval_batch_size", null="for all"
        ),
        keep_checkpoints=check_value(
            values.get("keep_checkpoints", False), bool, "keep_checkpoints"
        ),
        n_rows=n_rows,
    )
    for name, kind, alike in (
        ("learning_rates", "learning rate", "1.0e-4 and 1e-4"),
        ("epochs", "length", "1 and 1.0"),
        ("seeds", "seed", "0 and 0.0"),
    ):
        items = getattr(spec, name)
        twice = next((v for v in items if items.count(v) > 1), None)
        if twice is not None:
            raise ValueError(
                f"grid.{name} lists the {kind} {exact_number(twice)} twice (as numbers: "
                f"{', '.join(map(exact_number, items))}); equal numbers such as {alike} are the "
                "same cells, so list each once"
            )
    check_run_options(spec)
    return spec


def check_run_options(spec: GridSpec) -> None:
    """Check the training options of the grid's first cell with each method variant (and the
    training options alone), so that a bad p_bar, method_args, kl_to_base, loss schedule,
    training key or type, or LoRA key fails now, naming where it is, not when its cell is
    reached."""
    from infosft.training.config import check_schedule_fits

    first = spec.cells()[0]
    plain = {k: v for k, v in spec.training_values(first).items() if k not in METHOD_OPTIONS}
    _training_config({**plain, "method": "nll"}, "training")
    # A switch at or after the end of a run never happens: the cell would be labelled with a
    # schedule it did not train with.
    lengths = [e for task in spec.tasks for e in spec.task_epochs(task) if e is not None]
    shortest = min(lengths, default=None)
    for index, variant in enumerate(spec.variants):
        where = f"grid.methods[{index}] ({variant.name})"
        cell = dataclasses.replace(first, variant=variant.name)
        args = _training_config(spec.training_values(cell), where)
        # The config checks kl_to_base (a number >= 0) and holds it as a float.
        spec.variants[index] = dataclasses.replace(variant, kl_to_base=args.kl_to_base)
        try:
            check_schedule_fits(args.schedule, epochs=shortest, trained="cells train")
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None


def _training_config(values: dict[str, Any], where: str) -> Any:
    from infosft.training.spec import training_config

    try:
        return training_config(values)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None


def _check_keys(values: dict[str, Any], allowed: tuple[str, ...], where: str) -> None:
    check_keys(list(values), where, list(allowed), list_allowed=True)


def _list(value: Any, key: str, top: bool = False) -> list[Any]:
    where = key if top else f"grid.{key}"
    values = value if isinstance(value, list) else [value]
    if not values or value is None:
        raise ValueError(f"{where} must list at least one value")
    return values


def _numbers(value: Any, key: str, expected: Number) -> list[Any]:
    """The entries of the grid's list ``key``, each checked against ``expected``."""
    return [check_value(v, expected, f"grid.{key}[{i}]") for i, v in enumerate(_list(value, key))]


def _counts(unit: str) -> Number:
    """A positive whole number of ``unit`` ("rows", "items", ...)."""
    return Number(whole=True, low=1, unit=unit)


def _safe_name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _SAFE_NAME.match(value):
        raise ValueError(
            f"{where} must be a name of letters, digits and . _ + - (it names files), got {value!r}"
        )
    return value


def _variants(methods: Any) -> list[Variant]:
    variants = []
    for index, entry in enumerate(_list(methods, "methods")):
        where = f"grid.methods[{index}]"
        if isinstance(entry, str):
            variants.append(Variant(name=_safe_name(entry, where), method=entry))
            continue
        if not isinstance(entry, dict):
            raise ValueError(f"{where} must be a scheme name or a mapping, got {entry!r}")
        _check_keys(entry, VARIANT_KEYS, where)
        schedule = entry.get("loss_schedule")
        method = entry.get("method")
        if method is None and isinstance(schedule, list) and schedule:
            last = schedule[-1]
            method = last.get("method") if isinstance(last, dict) else None
        if not isinstance(method, str):
            raise ValueError(f"{where} needs a method (a scheme name), got {method!r}")
        extra = set(entry) - {"name", "method"}
        if "name" not in entry and extra:
            raise ValueError(f"{where} sets {', '.join(sorted(extra))}: give it a name of its own")
        variants.append(
            Variant(
                name=_safe_name(entry.get("name", method), f"{where}.name"),
                method=method,
                p_bar=entry.get("p_bar"),
                method_args=entry.get("method_args"),
                kl_to_base=entry.get("kl_to_base", 0.0),
                loss_schedule=schedule,
            )
        )
    _distinct_names([v.name for v in variants], "grid.methods", "give each entry its own name")
    return variants


def _distinct_names(names: list[str], where: str, fix: str) -> None:
    """Names become cell file names: equal ones, or ones that differ only in letter case (one
    file on macOS and Windows), would share files."""
    for name in names:
        same = [n for n in names if n.casefold() == name.casefold()]
        if len(same) > 1:
            spelled = "" if len(set(same)) == 1 else f" ({', '.join(same)} differ only in case)"
            raise ValueError(f"{where} names {name} twice{spelled}; {fix}")


def _tasks(value: Any, base_dir: Path, require_data: bool) -> tuple[list[TaskSpec], dict[str, int]]:
    """The tasks, and the ``n_rows`` hint of each data task that gives one."""
    from infosft.experiments import GENERATED_TASKS
    from infosft.training.formats import get_formatter

    tasks, n_rows = [], {}
    for index, entry in enumerate(_list(value, "tasks", top=True)):
        where = f"tasks[{index}]"
        if isinstance(entry, str):
            entry = {"name": entry}
        if not isinstance(entry, dict):
            raise ValueError(f"{where} must be a built-in task name or a mapping, got {entry!r}")
        name = _safe_name(entry.get("name"), f"{where}.name")
        about = check_value(entry.get("about", ""), str, f"{where}.about")
        if "data" not in entry:
            generator = entry.get("generator", name)
            if generator not in GENERATED_TASKS:
                key = "generator" if "generator" in entry else "name"
                raise ValueError(
                    f"{where}.{key}: {generator!r} is not a built-in task "
                    f"({', '.join(GENERATED_TASKS)}); for your own task give data: and eval:"
                )
            _check_keys(entry, BUILTIN_TASK_KEYS, f"{where} (built-in {generator})")
            tasks.append(
                TaskSpec(
                    name=name,
                    n_train=check_value(
                        entry.get("n_train", DEFAULT_N_TRAIN), _counts("rows"), f"{where}.n_train"
                    ),
                    n_test=check_value(
                        entry.get("n_test", DEFAULT_N_TEST), _counts("problems"), f"{where}.n_test"
                    ),
                    about=about,
                    generator=None if generator == name else generator,
                    **_regime(entry, where, builtin=True),
                    epochs=_task_epochs(entry, where),
                )
            )
            continue
        _check_keys(entry, DATA_TASK_KEYS, where)
        if "eval" not in entry:
            raise ValueError(f"{where} ({name}) needs eval: the task(s) that measure it")
        data = [
            _resolve_data(d, base_dir, f"{where}.data", require_data)
            for d in _list(entry["data"], f"{where}.data", top=True)
        ]
        data_format = check_value(entry.get("data_format"), str, f"{where}.data_format", null=True)
        if data_format is not None:
            try:
                get_formatter(data_format)
            except ValueError as err:
                raise ValueError(f"{where}.data_format: {err}") from None
        if entry.get("n_rows") is not None:
            n_rows[name] = check_value(entry["n_rows"], _counts("training rows"), f"{where}.n_rows")
        evals = [
            _resolve_task(e, base_dir, f"{where}.eval", allow_probes=False)
            for e in _list(entry["eval"], f"{where}.eval", top=True)
        ]
        tasks.append(
            TaskSpec(
                name,
                tuple(data),
                data_format,
                tuple(dict.fromkeys(evals)),
                about=about,
                **_regime(entry, where, builtin=False),
                epochs=_task_epochs(entry, where),
            )
        )
    _distinct_names([t.name for t in tasks], "tasks", "give each task its own name")
    return tasks, n_rows


def _regime(entry: dict[str, Any], where: str, builtin: bool) -> dict[str, Any]:
    """A task's ``noise`` and ``near_policy`` options, checked and with their defaults."""
    from infosft.evaluation.scorers import SCORERS
    from infosft.experiments.demonstrations import CORRUPTIONS

    noise = check_value(entry.get("noise"), dict, f"{where}.noise", null=True)
    near = check_value(entry.get("near_policy"), dict, f"{where}.near_policy", null=True)
    if noise is not None and near is not None:
        raise ValueError(
            f"{where} sets both noise and near_policy; make them two tasks (each is one regime)"
        )
    if noise is not None:
        _check_keys(noise, NOISE_KEYS, f"{where}.noise")
        share = check_value(
            noise.get("share"),
            Number(low=0, low_open=True, high=1),
            f"{where}.noise.share",
            why="the share of answers to corrupt",
        )
        kind = check_value(
            noise.get("kind", "answer"), Literal[tuple(CORRUPTIONS)], f"{where}.noise.kind"
        )
        noise = {"share": share, "kind": kind}
    if near is not None:
        _check_keys(near, NEAR_POLICY_KEYS, f"{where}.near_policy")
        scorer = check_value(
            near.get("scorer", "math" if builtin else None),
            Literal[tuple(sorted(SCORERS))],
            f"{where}.near_policy.scorer",
            why="how a sample is checked against the demonstration's answer",
        )
        near = {**NEAR_POLICY_DEFAULTS, **near, "scorer": scorer}
        for key, unit in (
            ("samples", "samples"),
            ("max_new_tokens", "tokens"),
            ("batch_size", "prompts"),
        ):
            near[key] = check_value(near[key], _counts(unit), f"{where}.near_policy.{key}")
        near["temperature"] = check_value(
            near["temperature"],
            Number(low=0, low_open=True, high=5),
            f"{where}.near_policy.temperature",
            why="samples, not greedy",
        )
    return {"noise": noise, "near_policy": near}


def _task_epochs(entry: dict[str, Any], where: str) -> tuple[float, ...] | None:
    """A task's own ``epochs`` (a number or a list), checked like ``grid.epochs``."""
    values = entry.get("epochs")
    if values is None:
        return None
    key = f"{where}.epochs"
    listed = values if isinstance(values, list) else [values]
    from infosft.training.config import EPOCHS

    epochs = [float(check_value(e, EPOCHS, f"{key}[{i}]")) for i, e in enumerate(listed)]
    if not epochs:
        raise ValueError(f"{key} must list at least one number of epochs (or be left out)")
    twice = next((e for e in epochs if epochs.count(e) > 1), None)
    if twice is not None:
        raise ValueError(f"{key} lists {exact_number(twice)} twice; list each length once")
    return tuple(epochs)


def _resolve_model(value: Any, base_dir: Path) -> str:
    """A model directory relative to the YAML, else the default name or a hub id."""
    check_model_name(value)
    candidate = base_dir / Path(value).expanduser()
    if candidate.exists():
        return str(candidate)
    if is_default_model(value) or is_hub_repo_id(value):
        return value
    raise FileNotFoundError(f"model directory {candidate} does not exist")


def _resolve_file(value: Any, base_dir: Path, key: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{key} must be a file path, got {value!r}")
    path = base_dir / Path(value).expanduser()
    if path.is_dir():
        raise IsADirectoryError(f"{key}: {path} is a directory; name a file")
    if not path.is_file():
        raise FileNotFoundError(f"{key} file {path} does not exist")
    return str(path)


def _resolve_data(value: Any, base_dir: Path, where: str, require_data: bool) -> str:
    """A data file relative to the YAML (which may be missing unless ``require_data``), or a hub
    dataset name ``org/name[...]``."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where} must be a file or a hub dataset name, got {value!r}")
    path = base_dir / Path(value).expanduser()
    if path.is_dir():
        raise IsADirectoryError(f"{where}: {path} is a directory; name the data files in it")
    if path.exists() or Path(value).suffix.lower() in (".jsonl", ".json", ".parquet"):
        if not path.is_file() and require_data:
            raise FileNotFoundError(f"{where}: data file {path} does not exist")
        return str(path)
    return value


def _resolve_task(value: Any, base_dir: Path, where: str, allow_probes: bool) -> str:
    """``probes``, ``lm_eval:NAME``, a registered task name, or a task YAML relative to the
    grid YAML; unknown names are errors now."""
    from infosft.evaluation import available_tasks

    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where} entries must be task names or files, got {value!r}")
    if value == PROBES and allow_probes:
        return value
    if value.startswith(LM_EVAL_PREFIX):
        from infosft.evaluation.lm_eval_tasks import lm_eval_task_name, require_lm_eval

        lm_eval_task_name(value)
        require_lm_eval()
        return value
    if Path(value).suffix in (".yaml", ".yml"):
        path = base_dir / Path(value).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"{where}: task file {path} does not exist")
        return str(path)
    if value in available_tasks():
        return value
    known = [PROBES] if allow_probes else []
    raise ValueError(
        f"{where}: unknown task {value!r}; give a task YAML file, lm_eval:NAME or one of "
        f"{', '.join(known + available_tasks())}"
    )


def _lm_eval_options(value: Any, base_dir: Path) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"lm_eval must be a mapping of {', '.join(LM_EVAL_KEYS)}, got {value!r}")
    _check_keys(value, LM_EVAL_KEYS, "lm_eval")
    options = dict(value)
    include = options.get("include_path")
    if include is not None:
        paths = include if isinstance(include, list) else [include]
        resolved = []
        for p in paths:
            if not isinstance(p, str):
                raise ValueError(f"lm_eval.include_path must be directories, got {p!r}")
            path = base_dir / Path(p).expanduser()
            if not path.exists():
                raise FileNotFoundError(f"lm_eval.include_path {path} does not exist")
            resolved.append(str(path))
        options["include_path"] = resolved
    for key, low in (("num_fewshot", 0), ("batch_size", 1)):
        if options.get(key) is not None:
            check_value(options[key], Number(whole=True, low=low), f"lm_eval.{key}")
    if "apply_chat_template" in options:
        check_value(options["apply_chat_template"], bool, "lm_eval.apply_chat_template")
    return options
