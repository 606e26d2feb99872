"""The experiment engine: run (or resume) a grid of fine-tunes and measure each against its base.

:func:`run_grid` is what ``infosft demo`` and ``infosft compare`` run. Top to bottom it

1. loads everything the grid names and fingerprints it per part (:meth:`Plan.cell_fingerprint`),
   and stops with one line naming what changed if the output directory holds finished cells, or
   models kept on disk, made with other settings;
2. loads the base model once and measures it once (``base.json``; measured again when its
   fingerprint changed);
3. for each cell not finished before: fine-tunes a copy of the base model through
   :func:`infosft.training.build_trainer` (in memory; with ``keep_checkpoints`` through
   :func:`infosft.training.train` on disk, resumable mid-cell), measures it
   (:mod:`infosft.experiments.measure`) and writes ``cells/<cell>.json`` atomically at once;
4. summarises over seeds, draws each task's fronts with bootstrap intervals and writes
   ``results.json``, the plots and ``report.md`` / ``report.html``.

Progress is one line per event: each cell's start and result with the time left (estimated
from the cells finished in this run), and a training-step line at most every
``STEP_LINE_SECONDS``. Ctrl-C leaves every finished cell in place; the same command resumes.

Several jobs may run one grid into one output directory at once (a SLURM array, machines
sharing a filesystem, one process per GPU): each claims a cell, the base or the report before
making it (:mod:`infosft.experiments.claims`); the others skip that cell, or wait for the base
or report and use what the claiming job wrote.

A job may itself span several processes (``accelerate launch ... -m infosft compare``, any of
the launch configs ``train`` uses: DDP, FSDP2, ZeRO-2/3). Its main process claims, decides
and writes; every process trains the cell it took, data-parallel, and measures it
(:mod:`infosft.distributed`); the others follow its commands (:func:`_follow`), writing nothing.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transformers import PrinterCallback, TrainerCallback

from infosft import distributed
from infosft.evaluation.forgetting import KLReference
from infosft.experiments import summary as summarize
from infosft.experiments.claims import STALE_AFTER_SECONDS, Claims, default_job_id
from infosft.experiments.demonstrations import agrees_with_demonstration, corrupt, near_policy
from infosft.experiments.grid import Cell, GridSpec
from infosft.experiments.measure import (
    Suite,
    build_suite,
    measure_base,
    measure_tuned,
    text_digest,
    value_digest,
)
from infosft.files import environment, files_digest, read_json, to_json, write_json_atomic
from infosft.objectives import DEFAULT_P_BAR

# Bump when what a cell file holds, or how it is measured, changes: old cells are not reused.
RESULTS_FORMAT = 2
STEP_LINE_SECONDS = 20.0
# Beside a cell's model on disk: the training fingerprint it was (or is being) trained with.
TRAINED_WITH = "trained_with.json"
# Model files up to this size are hashed whole for a grid's fingerprints (about 1 s per GB).
MODEL_FILE_READ_WHOLE = 4 * 1024**3
# Near-policy sets shipped with the package (the demo's and the full protocol's), each named
# "<task>,seed<seed>,<recipe>.json": used where a run's recipe matches.
SHIPPED_DEMONSTRATIONS = Path(__file__).parent / "specs" / "demonstrations"
CURVE_KEYS = (
    "step",
    "epoch",
    "method",
    "loss",
    "nll",
    "mean_q",
    "mean_weight",
    "entropy",
    "grad_norm",
)


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def model_identity(name: str) -> str:
    """What identifies a model: for a directory, each of its files' name and content (a file
    over :data:`MODEL_FILE_READ_WHOLE` bytes by its size and evenly spaced chunks: see
    :func:`infosft.files.files_digest`), so that the same weights on another machine, copied or
    converted again, are the same model; for a hub id, the id."""
    from infosft.models import resolve_model_path

    path = Path(resolve_model_path(name))
    if not path.is_dir():
        return name
    files = sorted(p for p in path.iterdir() if p.is_file())
    return json.dumps({p.name: files_digest([p], whole_up_to=MODEL_FILE_READ_WHOLE) for p in files})


class StepProgress(TrainerCallback):
    """Prints a cell's training step at most every ``STEP_LINE_SECONDS``."""

    def __init__(self, log: Callable[[str], None], prefix: str):
        self.log, self.prefix = log, prefix

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = self.last = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        now = time.perf_counter()
        if now - self.last < STEP_LINE_SECONDS or state.global_step >= state.max_steps:
            return
        self.last = now
        rate = (now - self.start) / state.global_step
        left = rate * (state.max_steps - state.global_step)
        self.log(
            f"{self.prefix} step {state.global_step}/{state.max_steps} ({rate:.1f} s/step, "
            f"{_duration(left)} of training left)"
        )


class Plan:
    """A grid ready to run: its suite, training data and fingerprints (no model loaded)."""

    def __init__(self, spec: GridSpec):
        from infosft.training.data import load_data

        self.spec = spec
        self.suite: Suite = build_suite(spec)
        self._data = {}
        self._data_digest = {}
        self._own_answers: dict[tuple[str, int], list[dict[str, Any]]] = {}
        for task in spec.tasks:
            if not task.builtin:
                self._data[task.name] = load_data(list(task.data), task.data_format)
                local = [d for d in task.data if Path(d).exists()]
                remote = [d for d in task.data if not Path(d).exists()]
                self._data_digest[task.name] = json.dumps(
                    [files_digest(local), remote, task.data_format]
                )
        self.model_id = model_identity(spec.model)

    def data(self, task_name: str, seed: int) -> Any:
        """The training rows of a task's cells of ``seed``: built-in tasks draw theirs from the
        seed; a task's noise or near_policy regime turns them into that regime's rows."""
        from datasets import Dataset

        task = self.spec.task(task_name)
        if not task.builtin and task.noise is None and task.near_policy is None:
            return self._data[task.name]
        return Dataset.from_list(self._training_rows(task, seed))

    def _source_rows(self, task: Any, seed: int) -> list[dict[str, Any]]:
        """The task's demonstrations, before any regime."""
        from infosft.experiments import GENERATED_TASKS

        if not task.builtin:
            return self._data[task.name].to_list()
        generated = GENERATED_TASKS[task.problems]
        train, _ = generated.split(task.n_train, task.n_test, seed=seed, test_seed=0)
        return [generated.sft_example(p) for p in train]

    def _training_rows(self, task: Any, seed: int) -> list[dict[str, Any]]:
        if task.near_policy is not None:
            if (task.name, seed) not in self._own_answers:
                raise RuntimeError("make_own_answers() makes near-policy rows once a model loads")
            return self._own_answers[task.name, seed]
        rows = self._source_rows(task, seed)
        if task.noise is not None:
            rows, _ = corrupt(rows, share=task.noise["share"], seed=seed, how=task.noise["kind"])
        return rows

    def make_own_answers(
        self, model: Any, tokenizer: Any, directory: Path, log: Callable[[str], None]
    ) -> dict[tuple[str, int], list[dict[str, Any]]]:
        """The near-policy tasks' rows, per (task, seed): ``model``'s own accepted answers to the
        task's prompts (:func:`infosft.experiments.demonstrations.near_policy`). Each set is
        kept in ``directory`` under its recipe's digest and reused while the recipe holds; a
        set shipped in ``SHIPPED_DEMONSTRATIONS`` with the same recipe (the same source rows,
        sampling options, model name and seed: the demo's and the full protocol's) is used
        instead of sampling."""
        from infosft.evaluation import SamplingSettings, generate

        for task in self.spec.tasks:
            options = task.near_policy
            if options is None:
                continue
            for seed in self.spec.seeds:
                recipe = self._rows_digest(task, seed)
                path = directory / f"{task.name},seed{seed}.json"
                stored = read_json(path)
                shipped = read_json(SHIPPED_DEMONSTRATIONS / f"{path.stem},{recipe}.json")
                if (stored is None or stored.get("recipe") != recipe) and shipped is not None:
                    log(f"{task.name}, seed {seed}: the model's own answers shipped with infosft")
                    stored = shipped
                    write_json_atomic(path, stored)
                if stored is None or stored.get("recipe") != recipe:
                    settings = SamplingSettings(
                        max_new_tokens=options["max_new_tokens"],
                        temperature=options["temperature"],
                        n=options["samples"],
                        batch_size=options["batch_size"],
                        seed=seed,
                    )

                    def sample(prompts: list[Any], settings: SamplingSettings = settings):
                        keys = [f"row-{i}" for i in range(len(prompts))]
                        return generate(
                            model, tokenizer, prompts, settings, progress=False, sample_keys=keys
                        )

                    log(f"{task.name}, seed {seed}: sampling the model's own answers")
                    rows, counts = near_policy(
                        self._source_rows(task, seed),
                        sample,
                        agrees_with_demonstration(options["scorer"]),
                    )
                    stored = {"recipe": recipe, "counts": counts, "rows": rows}
                    write_json_atomic(path, stored)
                counts = stored["counts"]
                if not counts["kept"]:
                    raise ValueError(
                        f"task {task.name}: none of the model's {counts['samples']} samples for "
                        f"its {counts['rows']} prompts (seed {seed}) agreed with a "
                        "demonstration, so near_policy has no rows to train on; raise "
                        "near_policy.samples or max_new_tokens, or check near_policy.scorer"
                    )
                log(
                    f"{task.name}, seed {seed}: {counts['kept']} of {counts['rows']} prompts kept "
                    f"with the model's own answer ({counts['accepted']} of {counts['samples']} "
                    "samples accepted)"
                )
                self._own_answers[task.name, seed] = stored["rows"]
        return self._own_answers

    def _model_parts(self) -> dict[str, Any]:
        return {
            "format": RESULTS_FORMAT,
            "model": text_digest(self.model_id),
            "model_init_kwargs": value_digest(self.spec.model_init_kwargs),
        }

    def _rows_digest(self, task: Any, seed: int) -> str:
        if task.near_policy is not None:
            # The recipe, not the rows (they exist only once the model has answered): the
            # source rows, the sampling options, the model that answers and the seed.
            source = dataclasses.replace(task, near_policy=None)
            return value_digest(
                [self._rows_digest(source, seed), task.near_policy, self._model_parts(), seed]
            )
        if task.builtin or task.noise is not None:
            return text_digest(json.dumps(self._training_rows(task, seed)))
        return text_digest(self._data_digest[task.name])

    def base_fingerprint(self) -> dict[str, Any]:
        """Per part, like :meth:`cell_fingerprint`: the model, the whole suite, and what
        ``q_under_base`` scores (each task's first seed's training rows, prepared as for
        training)."""
        parts = {**self._model_parts(), **self.suite.fingerprint()}
        for task in self.spec.tasks:
            rows = self._rows_digest(task, self.spec.seeds[0])
            parts[f"training rows of {task.name}"] = value_digest([rows, self.spec.training])
        return parts

    def training_fingerprint(self, cell: Cell) -> dict[str, Any]:
        """Per part: everything that decides the model a cell trains (the model, its task, its
        training data, its training options)."""
        task = dataclasses.asdict(self.spec.task(cell.task))
        return {
            # Its identity: a file copied or renamed to another cell's name is not that cell.
            "cell": cell.name,
            **self._model_parts(),
            # The description is a label; data and evaluation files count by their content;
            # the task's own epochs are the cell's length, counted in its training settings.
            "task settings": value_digest(
                {k: v for k, v in task.items() if k not in ("about", "data", "evals", "epochs")}
            ),
            "training data": self._rows_digest(self.spec.task(cell.task), cell.seed),
            "training settings": value_digest(
                [self.spec.training_values(cell), self.spec.keep_checkpoints]
            ),
        }

    def cell_fingerprint(self, cell: Cell) -> dict[str, Any]:
        """Per part, so that a mismatch can say what changed: everything that decides the
        cell's training and measurement (the suite's parts that measure it)."""
        return {**self.training_fingerprint(cell), **self.suite.fingerprint(cell.task)}


def changed_parts(stored: Any, expected: dict[str, Any]) -> list[str]:
    """The parts of a fingerprint whose digest differs from a stored one (or that only one of
    them has)."""
    stored = stored if isinstance(stored, dict) else {}
    return [k for k in dict.fromkeys([*expected, *stored]) if stored.get(k) != expected.get(k)]


def _listing(parts: list[str], shown: int = 3) -> str:
    more = f" and {len(parts) - shown} more" if len(parts) > shown else ""
    return ", ".join(parts[:shown]) + more


def _stale_cells(plan: Plan, cells_dir: Path, cells: list[Cell]) -> dict[str, dict[str, Any]]:
    """Those of ``cells`` that are finished; ValueError when any was made with other settings
    (a finished cell is a result: it is never overwritten, nor reported for settings it was not
    made with)."""
    done, stale = {}, {}
    for cell in cells:
        stored = read_json(cells_dir / f"{cell.name}.json")
        if stored is None:
            continue
        changed = changed_parts(stored.get("fingerprint"), plan.cell_fingerprint(cell))
        if changed:
            stale[cell.name] = changed
        else:
            done[cell.name] = stored
    if stale:
        what = sorted({part for parts in stale.values() for part in parts})
        example = next(iter(stale))
        raise ValueError(
            f"{cells_dir} holds {len(stale)} finished cell(s) made with another "
            f"{_listing(what)} (e.g. {example}); they would be reported as results of this "
            f"grid. Use another --output-dir, or delete {cells_dir} to start over"
        )
    return done


def _stale_models(plan: Plan, runs_dir: Path, done: dict[str, Any]) -> None:
    """ValueError when a cell still to measure has a model or checkpoints on disk (from
    ``keep_checkpoints``) trained with other settings: it would be measured, or resumed, as
    this grid's cell."""
    for cell in plan.spec.cells():
        cell_dir = runs_dir / cell.name
        model_dir = cell_dir / "model"
        if cell.name in done or not model_dir.is_dir() or not any(model_dir.iterdir()):
            continue
        stored = read_json(cell_dir / TRAINED_WITH)
        changed = changed_parts(stored, plan.training_fingerprint(cell))
        if changed:
            raise ValueError(
                f"{model_dir} holds a model trained with another {_listing(changed)}; it would "
                f"be measured as cell {cell.name} of this grid. Delete {cell_dir} to train it "
                "again, or use another --output-dir"
            )


def train_cell(
    plan: Plan, cell: Cell, base_model: Any, tokenizer: Any, cell_dir: Path, log: Callable
) -> tuple[Any, float | None, list[dict[str, Any]]]:
    """Fine-tune one cell; returns the tuned model (eval mode), the training seconds (None when
    a saved model was reused) and the logged training curve."""
    from infosft.models import load_model_and_tokenizer
    from infosft.training import RunSpec, build_trainer, train
    from infosft.training.outputs import METRICS_FILE, checkpoints, final_model_saved

    spec = plan.spec
    values = {
        **spec.training_values(cell),
        "data": plan.data(cell.task, cell.seed),
        "data_format": None,
    }
    if spec.keep_checkpoints:
        cell_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(cell_dir / TRAINED_WITH, plan.training_fingerprint(cell))
        model_dir = cell_dir / "model"
        seconds = None
        if final_model_saved(model_dir):
            log(f"    {cell.describe()}: trained before, measuring the saved model")
        else:
            run = RunSpec.from_dict(
                {**values, "model": spec.model, "output_dir": str(model_dir)}, f"cell {cell.name}"
            )
            seconds = train(run, resume=bool(checkpoints(model_dir))).train_seconds
        model, _ = load_model_and_tokenizer(str(model_dir), **_load_options(spec))
        metrics = (model_dir / METRICS_FILE).read_text().splitlines()
        rows = [json.loads(line) for line in metrics if line.strip()]
        return model.eval(), seconds, _curve(rows)
    run = RunSpec.from_dict({**values, "output_dir": str(cell_dir)}, f"cell {cell.name}")
    progress = StepProgress(log, f"    {cell.describe()}:")
    model = copy.deepcopy(base_model).train()
    trainer = build_trainer(run, model=model, tokenizer=tokenizer, callbacks=[progress])
    trainer.remove_callback(PrinterCallback)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    tuned = distributed.whole_model(trainer.model, base_model)
    if hasattr(tuned, "merge_and_unload"):
        tuned = tuned.merge_and_unload()
    return tuned.eval(), seconds, _curve(trainer.state.log_history)


def _curve(log_history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {k: row[k] for k in CURVE_KEYS if k in row}
        for row in log_history
        if "loss" in row and "train_runtime" not in row
    ]


def _load_options(spec: GridSpec) -> dict[str, Any]:
    import torch

    options = dict(spec.model_init_kwargs or {"dtype": "float32"})
    if torch.cuda.is_available():
        # Under a launch, each process's own GPU.
        multi = distributed.rank_and_world()[1] > 1
        options.setdefault("device", str(distributed.device()) if multi else "cuda")
    return options


def check_output_dir(output_dir: str | Path) -> Path:
    """``output_dir`` as a Path, if a grid may write there: a new or empty directory, or one an
    earlier grid run wrote (it holds ``cells/``, or ``base.json`` once stale cells were deleted
    as advised). Anything else is refused before any work: the results, report and plots would
    overwrite files of the same name (``--output-dir ""``, an unset shell variable, would write
    into the working directory)."""
    if not str(output_dir).strip():
        raise ValueError("--output-dir is empty; name a directory for the results")
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise NotADirectoryError(f"--output-dir {output_dir} is a file; name a directory")
    earlier_run = (output_dir / "cells").is_dir() or (output_dir / "base.json").is_file()
    if output_dir.is_dir() and not earlier_run:
        held = sorted(path.name for path in output_dir.iterdir())
        if held:
            shown = ", ".join(held[:5]) + (", ..." if len(held) > 5 else "")
            raise ValueError(
                f"--output-dir {output_dir} is not empty and holds no earlier grid run (it holds "
                f"{shown}); choose a new or empty directory"
            )
    return output_dir


def run_grid(
    spec: GridSpec,
    output_dir: str | Path,
    *,
    title: str = "InfoSFT grid",
    log: Callable[[str], None] = _stderr,
    job_id: str | None = None,
    stale_after: float = STALE_AFTER_SECONDS,
    report_only: bool = False,
) -> dict[str, Any]:
    """Run or resume ``spec`` into ``output_dir``; returns the results written to results.json.

    Several jobs may run the same grid into one ``output_dir`` at once (module docstring):
    ``job_id`` names this one in claims and cell files (default ``<host>-<pid>``), and a claim
    whose heartbeat is ``stale_after`` seconds old is taken over. ``report_only`` writes the
    results and report from the cells finished so far, without loading the model.
    """
    from infosft.experiments.report import write_grid_report
    from infosft.models import load_model_and_tokenizer

    start = time.perf_counter()
    if not (math.isfinite(stale_after) and stale_after > 0):
        raise ValueError(f"--stale-after {stale_after} is not a positive number of seconds")
    leads = distributed.is_main()
    if not leads:
        log = _quiet
    output_dir = Path(distributed.from_main(lambda: check_output_dir(output_dir)))
    plan = Plan(spec)
    cells_dir = output_dir / "cells"
    cells = spec.cells()
    done = distributed.from_main(lambda: _stale_cells(plan, cells_dir, cells))
    claims = Claims(output_dir / "claims", job_id or default_job_id(), stale_after)
    results_stamp = _stamp(output_dir / "results.json")

    def report(base: dict[str, Any], run_seconds: list[float]) -> dict[str, Any]:
        log(f"writing results.json and the report (job {claims.job})")
        finished = _stale_cells(plan, cells_dir, cells)
        results = _results(spec, title, base, cells, finished, start, run_seconds)
        write_grid_report(results, output_dir)
        write_json_atomic(output_dir / "results.json", results)
        # As results.json holds them (NaN as null): the same whichever job wrote them.
        return json.loads(to_json(results))

    def report_only_results() -> dict[str, Any]:
        base = _measured_base(plan, output_dir / "base.json")
        if base is None or not done:
            what = "base measurement (base.json)" if base is None else "finished cell"
            raise ValueError(
                f"{output_dir} holds no {what} of this grid yet, so there is nothing to report; "
                "run the grid without --report-only first"
            )
        results = _once(claims, "report", lambda: None, lambda: report(base, []), log)
        log(f"report of {len(done)} of {len(cells)} cells: {output_dir / 'report.md'}")
        return results

    if report_only:
        return distributed.from_main(report_only_results)
    if spec.keep_checkpoints:
        distributed.from_main(lambda: _stale_models(plan, output_dir / "runs", done))
    log(
        f"{title}: cells {spec.size()}; {len(done)} finished before; results in {output_dir} "
        f"(job {claims.job})"
    )
    if leads:
        cells_dir.mkdir(parents=True, exist_ok=True)
    log(f"loading {spec.model}")
    base_model, tokenizer = load_model_and_tokenizer(spec.model, **_load_options(spec))
    base_model.eval()

    # Made once by the main process (sampling is keyed per prompt: the rows do not depend on
    # how many processes there are).
    plan._own_answers = distributed.from_main(
        lambda: plan.make_own_answers(base_model, tokenizer, output_dir / "demonstrations", log)
    )
    if not leads:
        return _follow(plan, base_model, tokenizer, output_dir)
    try:
        base, run_seconds = _lead_cells(plan, base_model, tokenizer, output_dir, claims, done, log)
        results = _once(
            claims,
            "report",
            lambda: _complete_results(output_dir / "results.json", results_stamp, len(cells)),
            lambda: report(base, run_seconds),
            log,
        )
        log(
            f"done in {_duration(time.perf_counter() - start)} (all {len(cells)} cells: "
            f"{_duration(results['timing']['compute_seconds'])} of training and measuring): "
            f"{output_dir / 'report.md'}"
        )
        _lead("results", results)
    except Exception as err:
        _lead("error", f"{type(err).__name__}: {err}")
        raise
    return results


def _lead_cells(
    plan: Plan,
    base_model: Any,
    tokenizer: Any,
    output_dir: Path,
    claims: Claims,
    done: dict[str, dict[str, Any]],
    log: Callable[[str], None],
) -> tuple[dict[str, Any], list[float]]:
    """The base measurement and the grid's cells, from the main process (the only one outside
    a launch); returns the base and the seconds of each cell run here."""
    spec, cells, cells_dir = plan.spec, plan.spec.cells(), output_dir / "cells"
    base = _once(
        claims,
        "base",
        lambda: _measured_base(plan, output_dir / "base.json"),
        lambda: _measure_base(plan, base_model, tokenizer, output_dir / "base.json", log),
        log,
    )
    log(
        "base: "
        + ", ".join(f"{t} accuracy {v['accuracy']:.3f}" for t, v in base["new_tasks"].items())
        + f"; retention items (prior items the base gets right): {base['retention_items']}"
    )

    _lead("base", base)
    with distributed.splitting():
        kl_reference = KLReference(
            base_model, tokenizer, plan.suite.general_prompts, base["general_samples"]
        )
    run_seconds = []
    waiting = False
    try:
        while len(done) < len(cells):
            took = False
            for index, cell in enumerate(cells, start=1):
                if cell.name in done:
                    continue
                done.update(_stale_cells(plan, cells_dir, [cell]))
                claim = None if cell.name in done else claims.take(cell.name)
                if claim is None:
                    continue
                took, waiting = True, False
                head = f"[{index}/{len(cells)}] {cell.describe()}"
                with claim:
                    # Another job may have finished it between the look above and the claim.
                    done.update(_stale_cells(plan, cells_dir, [cell]))
                    if cell.name in done:
                        continue
                    log(f"{head}: training")
                    began = time.perf_counter()
                    _lead("cell", cell.name)
                    model, seconds, curve = train_cell(
                        plan, cell, base_model, tokenizer, output_dir / "runs" / cell.name, log
                    )
                    trained = time.perf_counter()
                    with distributed.splitting():
                        measured = measure_tuned(
                            model, tokenizer, plan.suite, cell.task, base, kl_reference
                        )
                    del model
                    _release_memory()
                    record = _cell_record(spec, cell, measured, seconds, curve)
                    record["measure_seconds"] = time.perf_counter() - trained
                    record["job"] = claims.job
                    record["fingerprint"] = plan.cell_fingerprint(cell)
                    if not claim.held():
                        log(
                            f"{head}: another job took this cell over while it trained (this job "
                            f"missed {claims.stale_after:g} s of heartbeats); that job writes it"
                        )
                        continue
                    write_json_atomic(cells_dir / f"{cell.name}.json", record)
                done[cell.name] = record
                run_seconds.append(time.perf_counter() - began)
                left = len(cells) - len(done)
                per_cell = sum(run_seconds) / len(run_seconds)
                eta = f"; {left} cell(s) left, about {_duration(left * per_cell)} in one job"
                log(
                    f"{head}: accuracy {_fmt(record['accuracy'])}, retention "
                    f"{_fmt(record['retention'])}, KL {_fmt(record['kl_base_tuned'], 4)} "
                    f"({_duration(trained - began)} training, "
                    f"{_duration(record['measure_seconds'])} measuring){eta if left else ''}"
                )
            if not took and len(done) < len(cells):
                if not waiting:
                    log(
                        f"{len(cells) - len(done)} cell(s) left, all claimed by other jobs; "
                        "waiting for them to finish (or to go stale)"
                    )
                waiting = True
                _lead("wait")
                time.sleep(claims.heartbeat)
    except KeyboardInterrupt:
        log(
            f"interrupted: {len(done)} of {len(cells)} cells are saved in {cells_dir}; run the "
            "same command again to finish the others"
        )
        raise
    return base, run_seconds


def _release_memory() -> None:
    """Hand the memory of a finished cell (its model, optimizer, activations) back to the
    system. glibc's malloc keeps freed heap for reuse, and a fresh copy of the model per cell
    does not fit the holes the last one left, so without the trim a long grid's process grows
    cell by cell."""
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def _quiet(message: str) -> None:
    """The log of a process other than the main one: the main process reports progress."""


def _lead(command: str, value: Any = None) -> None:
    """On the main process of a launch: have the other processes run ``command`` with it
    (:func:`_follow`); nothing in one process."""
    if distributed.rank_and_world()[1] > 1:
        distributed.send((command, value))


def _follow(plan: Plan, base_model: Any, tokenizer: Any, output_dir: Path) -> dict[str, Any]:
    """A process other than the main one: join each training and measurement the main
    process runs (they are collective), until it sends the results. ``wait`` commands, sent
    while the main process waits for other jobs, keep each wait here short of the
    collectives' timeout."""
    base, kl_reference = None, None
    cells = {cell.name: cell for cell in plan.spec.cells()}
    while True:
        command, value = distributed.send()
        if command == "measure base":
            _q_under_base(plan, base_model, tokenizer)
            with distributed.splitting():
                measure_base(base_model, tokenizer, plan.suite)
        elif command == "base":
            base = value
            with distributed.splitting():
                kl_reference = KLReference(
                    base_model, tokenizer, plan.suite.general_prompts, base["general_samples"]
                )
        elif command == "cell":
            cell = cells[value]
            model, _, _ = train_cell(
                plan, cell, base_model, tokenizer, output_dir / "runs" / cell.name, _quiet
            )
            with distributed.splitting():
                measure_tuned(model, tokenizer, plan.suite, cell.task, base, kl_reference)
            del model
            _release_memory()
        elif command == "results":
            return value
        elif command == "error":
            raise RuntimeError(f"the main process stopped: {value}")


def _measured_base(plan: Plan, base_path: Path) -> dict[str, Any] | None:
    """base.json, if it was measured with this grid's base fingerprint."""
    base = read_json(base_path)
    if base is None or changed_parts(base.get("fingerprint"), plan.base_fingerprint()):
        return None
    return base


def _measure_base(
    plan: Plan, base_model: Any, tokenizer: Any, base_path: Path, log: Callable[[str], None]
) -> dict[str, Any]:
    """Measure the base model once for every cell and write base.json."""
    stored = read_json(base_path)
    # The base is remeasured, not refused, when it changed: every finished cell matched, so
    # what changed (a task without finished cells, the seed order) alters no result.
    changed = changed_parts(stored and stored.get("fingerprint"), plan.base_fingerprint())
    why = "" if stored is None else f"; its {_listing(changed)} changed"
    log(f"measuring the base model (once for every cell{why})")
    measured = time.perf_counter()
    # First: it also prepares each task's training rows, so bad data or a max_length that
    # leaves no target fails before the longer measurements. On every process: preparing the
    # rows builds a trainer, whose data preparation waits for the other processes.
    _lead("measure base")
    q_under_base = _q_under_base(plan, base_model, tokenizer)
    with distributed.splitting():
        measured_base = measure_base(base_model, tokenizer, plan.suite)
    base = {
        "fingerprint": plan.base_fingerprint(),
        **measured_base,
        "q_under_base": q_under_base,
        "measure_seconds": time.perf_counter() - measured,
    }
    write_json_atomic(base_path, base)
    return base


def _once(
    claims: Claims,
    name: str,
    finished: Callable[[], dict[str, Any] | None],
    make: Callable[[], dict[str, Any]],
    log: Callable[[str], None],
) -> dict[str, Any]:
    """``finished()`` once it is not None; made by ``make()`` in the one job that claims
    ``name`` meanwhile, the others waiting for it."""
    waiting = False
    while True:
        result = finished()
        if result is not None:
            return result
        claim = claims.take(name)
        if claim is not None:
            with claim:
                return finished() or make()
        if not waiting:
            holder = claims.holder(name).get("job", "another job")
            log(f"waiting for job {holder}, which holds the {name} (or for its claim to go stale)")
        waiting = True
        _lead("wait")
        time.sleep(claims.heartbeat)


def _stamp(path: Path) -> tuple[int, int, int] | None:
    """Which version of a file this is (inode, mtime, size); None when there is none."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_mtime_ns, stat.st_size


def _complete_results(
    path: Path, stamp_at_start: tuple[int, int, int] | None, cell_count: int
) -> dict[str, Any] | None:
    """results.json if another job wrote it, complete, after this job started: the report is
    then written already (a rerun of a finished grid writes it again)."""
    results = None if _stamp(path) == stamp_at_start else read_json(path)
    if results is None or results.get("missing_cells") or len(results["cells"]) != cell_count:
        return None
    return results


def _results(
    spec: GridSpec,
    title: str,
    base: dict[str, Any],
    cells: list[Cell],
    finished: dict[str, dict[str, Any]],
    start: float,
    run_seconds: list[float],
) -> dict[str, Any]:
    """results.json of the finished cells (in grid order); ``missing_cells`` names the rest."""
    records = [finished[c.name] for c in cells if c.name in finished]
    results = {
        "format": RESULTS_FORMAT,
        "title": title,
        "spec": spec.to_dict(),
        "environment": environment(),
        "base": {k: v for k, v in base.items() if k != "fingerprint"},
        "cells": [{k: v for k, v in r.items() if k != "fingerprint"} for r in records],
        "missing_cells": [c.name for c in cells if c.name not in finished],
    }
    results["summary"] = summarize.setting_rows(results["cells"])
    results["fronts"] = summarize.task_fronts(results["cells"], base["probe_correct"], spec)
    results["timing"] = {
        "total_seconds": time.perf_counter() - start,
        "cells_run": len(run_seconds),
        "cells_reused": len(records) - len(run_seconds),
        # What the whole grid cost, also when it was finished over several invocations or jobs
        # (total_seconds counts only this one): training and measuring summed over every cell,
        # plus measuring the base once. A cell measured from a model already on disk has no
        # training time (None) and adds only its measuring.
        "compute_seconds": base.get("measure_seconds", 0.0)
        + sum((r["train_seconds"] or 0.0) + r["measure_seconds"] for r in records),
    }
    return results


def _cell_record(
    spec: GridSpec, cell: Cell, measured: dict[str, Any], seconds: float | None, curve: list
) -> dict[str, Any]:
    variant = spec.variant(cell.variant)
    training = spec.training_values(cell)
    return {
        "task": cell.task,
        "curve": variant.name,
        "method": variant.method,
        "learning_rate": cell.learning_rate,
        "epochs": cell.epochs,
        "max_steps": training.get("max_steps"),
        "seed": cell.seed,
        "p_bar": training.get("p_bar", DEFAULT_P_BAR),
        "method_args": variant.method_args,
        "kl_to_base": variant.kl_to_base,
        "loss_schedule": variant.loss_schedule,
        "lora": spec.lora,
        "train_seconds": seconds,
        **measured,
        "curve_log": curve,
    }


def _q_under_base(plan: Plan, model: Any, tokenizer: Any, rows: int = 32) -> dict[str, Any]:
    """Per task, q of the first training rows' target tokens under the base model, as the
    trainer prepares them: where the task sits between weak and strong prior."""
    from infosft.experiments.inspect import q_summary, score_prepared, scored_log_probs
    from infosft.training.data import load_data
    from infosft.training.preparation import prepare_rows
    from infosft.training.spec import training_config

    # The grid's training options are every cell's options that decide the preparation.
    args = training_config(plan.spec.training)
    summary = {}
    for task in plan.spec.tasks:
        data = load_data(plan.data(task.name, plan.spec.seeds[0]))
        data = data.select(range(min(rows, len(data))))
        prepared = prepare_rows(data, tokenizer, args)
        log_q = scored_log_probs(score_prepared(model, prepared))
        summary[task.name] = q_summary(log_q, DEFAULT_P_BAR)
    return summary


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}"
