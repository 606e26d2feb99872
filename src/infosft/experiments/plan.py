"""What a grid will run, before it runs: ``infosft compare --config GRID.yaml --plan``.

Lists every cell (by its :attr:`Cell.name`, the name of its file in ``cells/``), what each task
loads, the optimizer steps of each cell and, from a step time the user measured, the GPU-hours
of training. No model or data set is loaded: row counts come from local files (counted), the
task's ``n_rows`` hint in the grid (hub data), or the built-in task's ``n_train``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from infosft.experiments.fronts import exact_number
from infosft.experiments.grid import LM_EVAL_PREFIX, METHOD_OPTIONS, GridSpec, TaskSpec, Variant
from infosft.files import read_text

# Where run_grid writes a finished cell: OUTPUT_DIR/cells/<cell name>.json.
CELLS_DIR = "cells"


def optimizer_steps(
    rows: int, batch_size: int, accumulation: int, epochs: float, processes: int = 1
) -> int:
    """Optimizer steps of a run over ``rows`` rows, as transformers' Trainer counts them:
    ceil(rows / batch) micro-batches per epoch, dealt to ``processes`` data-parallel processes
    (ceil of the share each: accelerate evens the last), the last accumulation group short,
    and ceil(epochs x steps per epoch) in all."""
    micro_batches = math.ceil(math.ceil(rows / batch_size) / processes)
    per_epoch = max(math.ceil(micro_batches / accumulation), 1)
    return math.ceil(epochs * per_epoch)


def count_rows(path: str | Path) -> int:
    """Rows of a local .jsonl (non-empty lines), .json (list items) or .parquet (metadata) file,
    without building a Dataset."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    text = read_text(path)
    if suffix == ".json":
        try:
            rows = json.loads(text)
        except ValueError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from None
        return len(rows) if isinstance(rows, list) else 1
    return sum(1 for line in text.splitlines() if line.strip())


def task_rows(spec: GridSpec, task: TaskSpec) -> tuple[int | None, str]:
    """The training rows of a task and where that number comes from (or, when None, how to
    give it)."""
    from infosft.training.formats import get_row_filter

    if task.builtin:
        return task.n_train, "n_train of the built-in task"
    # A formatter with a row filter trains on fewer rows than the source holds.
    filtered = (
        f", before the row filter of {task.data_format}: fewer train"
        if task.data_format and get_row_filter(task.data_format)
        else ""
    )
    local = [d for d in task.data if Path(d).suffix.lower() in (".jsonl", ".json", ".parquet")]
    present = [d for d in local if Path(d).is_file()]
    if local and len(present) == len(task.data):
        source = f"counted in {', '.join(present)}{filtered}"
        return sum(count_rows(d) for d in present), source
    if task.name in spec.n_rows:
        missing = [d for d in local if d not in present]
        why = f"; {', '.join(missing)} not there yet" if missing else ""
        return spec.n_rows[task.name], f"n_rows in the grid{why}{filtered}"
    return None, (
        f"unknown without loading {', '.join(task.data)}: give the task n_rows: N in the grid"
    )


def _variant_line(variant: Variant) -> str:
    settings = {k: v for k, v in variant.training_values().items() if k != "kl_to_base"}
    if variant.kl_to_base:
        settings["kl_to_base"] = variant.kl_to_base
    shown = ", ".join(f"{k}={json.dumps(v)}" for k, v in settings.items())
    return f"  {variant.name}: {shown}"


def plan_text(
    spec: GridSpec,
    output_dir: str | Path | None = None,
    step_seconds: float | None = None,
    measure_seconds: float | None = None,
    processes: int = 1,
) -> str:
    """The plan of a grid as text: cells, what they load, optimizer steps, finished cells in
    ``output_dir`` and, with ``step_seconds`` (seconds per optimizer step), GPU-hours, each cell
    trained data-parallel on ``processes`` GPUs (``accelerate launch --num_processes``); with
    ``measure_seconds`` too (seconds to measure one tuned cell), the whole run's time."""
    from infosft.training.spec import training_config

    if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
        raise ValueError(
            f"--num-processes must be the number of GPUs that train each cell (1 or more), got "
            f"{processes}"
        )
    for value, flag, what in (
        (step_seconds, "--step-seconds", "one optimizer step takes"),
        (measure_seconds, "--measure-seconds", "measuring one cell takes"),
    ):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ValueError(f"{flag} must be the positive seconds {what}, got {value}")
    if measure_seconds is not None and step_seconds is None:
        raise ValueError("--measure-seconds needs --step-seconds: the run's time is both")
    cells = spec.cells()
    # The InfoSFTConfig the cells train with, defaults filled in as the run fills them.
    values = {k: v for k, v in spec.training_values(cells[0]).items() if k not in METHOD_OPTIONS}
    args = training_config({**values, "method": "nll"})
    batch, accumulation = args.per_device_train_batch_size, args.gradient_accumulation_steps
    lines = [f"plan of {spec.source} (nothing loaded; steps and hours are estimates)", ""]
    lines.append(f"model: {spec.model} (loaded once per run, copied for each cell)")
    tuning = f"LoRA {json.dumps(spec.lora)}" if spec.lora else "full fine-tuning"
    lines.append(
        f"training: {tuning}; {batch} rows x {accumulation} accumulation = "
        f"{batch * accumulation * processes} rows per optimizer step ({processes} "
        f"process{'es' if processes > 1 else ''}), max_length "
        f"{args.max_length}, bf16 {args.bf16}"
    )
    rows = {}
    evals = [e for task in spec.tasks for e in task.evals]
    for task in spec.tasks:
        rows[task.name], where = task_rows(spec, task)
        lines.append(f"task {task.name}:")
        if task.builtin:
            lines.append(f"  data: built-in generated task, {task.n_test} test problems")
        else:
            data_format = f" (formatter {task.data_format})" if task.data_format else ""
            lines.append(f"  data: {', '.join(task.data)}{data_format}")
            lines.append(f"  eval: {', '.join(task.evals)}")
        count = "?" if rows[task.name] is None else rows[task.name]
        lines.append(f"  training rows: {count} ({where})")
        if task.near_policy is not None:
            lines.append(
                "  near_policy: trains on the prompts with an accepted sample of the model's "
                "own, fewer rows than these (steps below are an upper bound)"
            )
        if task.noise is not None:
            lines.append(f"  noise: {task.noise['share']:g} of the answers made wrong, per seed")
        if task.epochs is not None:
            lines.append(f"  epochs: {', '.join(map(exact_number, task.epochs))} (its own)")
    lines.append(f"prior tasks: {', '.join(spec.prior_tasks)}")
    if any(t.startswith(LM_EVAL_PREFIX) for t in [*spec.prior_tasks, *evals]):
        options = json.dumps(spec.lm_eval) if spec.lm_eval else "lm-eval's defaults"
        lines.append(f"lm-eval: {options}; its built-in tasks download their data on first use")
    lines.append("methods:")
    lines += [_variant_line(v) for v in spec.variants]
    if args.packing:
        lines.append("steps: unknown, packing: true packs rows by their token lengths")

    cells_dir = Path(output_dir) / CELLS_DIR if output_dir is not None else None
    lines += ["", f"cells: {spec.size()}", f"  {'cell':<50} {'steps':>8}  status"]
    to_run, steps_to_run, unknown = 0, 0, []
    for cell in cells:
        if cell.epochs is None:
            steps = args.max_steps
        elif rows[cell.task] is None or args.packing:
            steps = None
        else:
            steps = optimizer_steps(rows[cell.task], batch, accumulation, cell.epochs, processes)
        finished = cells_dir is not None and (cells_dir / f"{cell.name}.json").is_file()
        if not finished:
            to_run += 1
            if steps is None:
                unknown.append(cell.task)
            else:
                steps_to_run += steps
        shown = "?" if steps is None else str(steps)
        lines.append(f"  {cell.name:<50} {shown:>8}  {'finished' if finished else 'to run'}")

    if cells_dir is None:
        where, note = "", "give --output-dir to see finished cells"
    else:
        where = f" in {cells_dir}"
        note = "a finished cell's settings are checked when the grid runs"
    lines += ["", f"{len(cells) - to_run} finished{where}, {to_run} to run ({note})"]
    if unknown:
        lines.append(
            f"optimizer steps to run: unknown for {len(unknown)} cell(s) of "
            f"{', '.join(dict.fromkeys(unknown))} (see the task's training rows above)"
        )
        return "\n".join(lines)
    lines.append(f"optimizer steps to run: {steps_to_run}")
    if step_seconds is None:
        lines.append(
            "GPU-hours: give --step-seconds S, the seconds one optimizer step takes on your GPU "
            f"({batch} x {accumulation} rows of up to {args.max_length} tokens): the s/step of "
            "a compare progress line, or `python benchmarks/train_bench.py --model MODEL "
            f"--batch-size {batch} --seq-len {args.max_length} --bf16`'s step time x "
            f"{accumulation}"
        )
        return "\n".join(lines)
    hours = steps_to_run * step_seconds * processes / 3600
    if measure_seconds is not None:
        total = hours + to_run * measure_seconds / 3600
        lines.append(
            f"time to run (estimate): {steps_to_run} steps x {step_seconds:g} s/step "
            f"(--step-seconds) = {hours:.3g} h of training + {to_run} cells x "
            f"{measure_seconds:g} s of measuring (--measure-seconds) = {total:.2f} h in one job; "
            "sampling near-policy answers and measuring the base come on top"
        )
        return "\n".join(lines)
    gpus = "one GPU" if processes == 1 else f"{processes} GPUs"
    lines.append(
        f"GPU-hours (estimate): {steps_to_run} steps x {step_seconds:g} s/step (--step-seconds) "
        f"x {processes} GPU(s) / 3600 = {hours:.3g} (each cell on {gpus}); training only: model "
        "loading and the evaluation of each cell come on top"
    )
    return "\n".join(lines)
