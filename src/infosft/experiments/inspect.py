"""What each weighting would do to a dataset, before training: q of every target token.

``infosft inspect`` reads the data through the trainer's own dataset preparation
(:func:`infosft.training.preparation.prepare_rows`: the same tokenization, chat template,
assistant-only or completion-only masking and truncation as ``infosft train`` with the same run
options), so the tokens it scores are exactly the ones training would weight. One forward pass
of the model per micro-batch gives each target token's log q and, through the fused engine's
scorer (:func:`infosft.losses.score_targets`), the real weight of every scheme that reads more
than q (eaft's top-K entropy, talr's micro-batch statistic). From them:

- the distribution of q (shares per q bin, quantiles);
- the share of total weight each scheme puts on each q bin, and its mean weight;
- where the data sits among the demo's regimes (:data:`REGIMES_REFERENCE`), and which one it is
  closest to in q statistics (a verdict only as far as the stored test supports it);
- the lowest-q tokens shown in context (what plain SFT would push hardest on);
- how InfoSFT's weight mass moves between q ranges as p_bar changes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from infosft.losses import IGNORE_INDEX
from infosft.models import eval_mode
from infosft.objectives import DEFAULT_P_BAR, Scheme, get_scheme, token_weights
from infosft.training.data import pad_tokenized

if TYPE_CHECKING:
    from infosft.training.config import InfoSFTConfig
    from infosft.training.spec import RunSpec

Q_BIN_EDGES = (0.0, 0.01, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99, 1.0)
COARSE_BIN_EDGES = (0.0, 0.1, 0.5, 0.9, 1.0)
P_BAR_SWEEP = (0.6, 0.7, 0.8, 0.9, 0.93, 0.95, 0.99)
LOW_Q = 0.05
"""Below this q a target token is nearly unpredictable for the model (its weight under InfoSFT
is below 0.09, under DFT below 0.05)."""
REGIMES_REFERENCE = Path(__file__).parent / "specs" / "regimes_reference.json"
"""What the demo's tasks look like to its model, written by benchmarks/regimes_reference.py."""


@dataclass
class ScoredExample:
    """One tokenized example with log q of its target tokens.

    ``log_probs[t]`` is log p(input_ids[t] | input_ids[:t]) where ``is_target[t]``, else 0;
    ``weights[method][t]`` likewise the weight of each scheme that reads more than q.
    """

    input_ids: list[int]
    is_target: list[bool]
    log_probs: list[float]
    weights: dict[str, list[float]] = field(default_factory=dict)


def resolve_schemes(args: InfoSFTConfig, methods: Sequence[str]) -> list[Scheme]:
    """The schemes of ``methods`` with the run's ``p_bar`` (and its ``method_args`` for the
    run's own ``method``); ValueError for an unknown name or a bad argument."""
    return [
        get_scheme(m, p_bar=args.p_bar, method_args=args.method_args if m == args.method else None)
        for m in methods
    ]


def prepare_examples(spec: RunSpec, model: Any, tokenizer: Any, limit: int | None = None) -> Any:
    """The first ``limit`` examples of ``spec.data`` as the trainer prepares them
    (:func:`infosft.training.preparation.prepare_rows` with ``spec.args``): a Dataset of
    ``input_ids`` and ``labels`` (IGNORE_INDEX where no loss applies). Tokenized data is
    checked against ``model``'s vocabulary."""
    from infosft.training.data import load_data
    from infosft.training.preparation import prepare_rows

    vocab_size = model.get_input_embeddings().num_embeddings
    dataset = load_data(spec.data, spec.data_format, vocab_size)
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    return prepare_rows(dataset, tokenizer, spec.args)


@torch.no_grad()
def score_prepared(
    model: Any, prepared: Any, batch_size: int = 8, schemes: Sequence[Scheme] = ()
) -> list[ScoredExample]:
    """log q of every target token of tokenized rows (``input_ids``, ``labels``) under
    ``model``, one forward pass per ``batch_size`` consecutive rows; log-softmax in float32.

    Each scheme of ``schemes`` that is not a function of q alone gets its per-token weights
    from the fused engine's scorer, on these micro-batches (talr's tau is a statistic of the
    micro-batch: pass the training's ``per_device_train_batch_size`` to get the batches
    training would see, though not in training's shuffled order).
    """
    from infosft.losses import score_targets
    from infosft.losses.lm_head import forward_inputs, lm_head_inputs

    device = next(model.parameters()).device
    richer = [scheme for scheme in schemes if not scheme.q_only]
    rows = list(prepared.select_columns(["input_ids", "labels"]))
    scored: list[ScoredExample] = []
    with eval_mode(model):
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            input_ids, attention, labels = pad_tokenized(chunk)
            inputs = {"input_ids": input_ids.to(device), "attention_mask": attention.to(device)}
            hidden, weight, bias = lm_head_inputs(model, forward_inputs(inputs))
            labels = labels.to(hidden.device)
            # Every pass over the LM head also yields log q: one pass per richer scheme, and
            # a plain one only when there is none.
            scores = {
                scheme.method: score_targets(
                    hidden, weight, labels, lm_head_bias=bias, method=scheme
                )
                for scheme in richer
            }
            first = next(iter(scores.values()), None)
            if first is None:
                first = score_targets(hidden, weight, labels, lm_head_bias=bias)
            log_probs = first.log_probs.cpu()
            weights = {method: result.weights.cpu() for method, result in scores.items()}
            for row, example in enumerate(chunk):
                n = len(example["input_ids"])
                # The first token has no prefix, so it is never a target (the causal shift).
                is_target = [
                    t > 0 and label != IGNORE_INDEX for t, label in enumerate(example["labels"])
                ]
                scored.append(
                    ScoredExample(
                        example["input_ids"],
                        is_target,
                        log_probs[row, :n].tolist(),
                        {method: w[row, :n].tolist() for method, w in weights.items()},
                    )
                )
    return scored


def score_rows(
    model: Any, tokenizer: Any, rows: Sequence[Mapping[str, Any]], *, max_length: int = 1024
) -> list[ScoredExample]:
    """log q of the target tokens of SFT rows (any TRL format) under ``model``, prepared as
    ``infosft train`` would with default options and ``max_length``."""
    from datasets import Dataset

    from infosft.training.data import load_data
    from infosft.training.preparation import prepare_rows
    from infosft.training.spec import training_config

    vocab_size = model.get_input_embeddings().num_embeddings
    dataset = load_data(Dataset.from_list(list(rows)), vocab_size=vocab_size)
    prepared = prepare_rows(dataset, tokenizer, training_config({"max_length": max_length}))
    return score_prepared(model, prepared)


def scored_log_probs(examples: Sequence[ScoredExample]) -> Tensor:
    """log q of all target tokens of all examples, flattened: [N] float32."""
    return _targets(examples, lambda example: example.log_probs)


def scheme_weights(
    examples: Sequence[ScoredExample], schemes: Sequence[Scheme]
) -> dict[str, Tensor]:
    """Each scheme's weight of every target token of ``examples`` ([N] float32, in the order
    of :func:`scored_log_probs`): w(q) for a function of q alone, else the scored weights."""
    log_probs = scored_log_probs(examples)
    return {
        scheme.method: token_weights(log_probs, scheme)
        if scheme.q_only
        else _targets(examples, lambda example, name=scheme.method: example.weights[name])
        for scheme in schemes
    }


def _targets(examples: Sequence[ScoredExample], values: Any) -> Tensor:
    """``values(example)`` at the target positions of all examples, flattened: [N] float32."""
    picked = [
        value
        for example in examples
        for value, is_target in zip(values(example), example.is_target, strict=True)
        if is_target
    ]
    return torch.tensor(picked, dtype=torch.float32)


def weight_mass_table(
    log_probs: Tensor, weights: Mapping[str, Tensor], edges: Sequence[float] = Q_BIN_EDGES
) -> dict[str, Any]:
    """Per q bin: the share of target tokens and each method's share of the total weight.

    Args:
        log_probs: [N] log q of target tokens.
        weights: each method's [N] weights of the same tokens (see :func:`scheme_weights`).
        edges: increasing bin edges from 0 to 1 (bins [e_i, e_{i+1}), the last one closed).

    Returns:
        ``{"edges", "token_share": [n_bins], "mass_share": {method: [n_bins]},
        "mean_weight": {method: float}, "zero_weight_share": {method: float}}``.
        A method whose weights are all 0 gets a mass share of 0 in every bin.
    """
    inner = torch.tensor(list(edges[1:-1]), dtype=torch.float64)
    bins = torch.bucketize(log_probs.double().exp(), inner, right=True)
    n_bins = len(edges) - 1
    count = max(len(log_probs), 1)
    token_share = torch.bincount(bins, minlength=n_bins).double() / count
    mass_share, mean_weight, zero_share = {}, {}, {}
    for method, values in weights.items():
        values = values.double()
        total = float(values.sum())
        per_bin = torch.bincount(bins, weights=values, minlength=n_bins)
        mass_share[method] = (per_bin / total if total > 0 else per_bin * 0).tolist()
        mean_weight[method] = total / count
        zero_share[method] = float((values == 0).double().sum()) / count
    return {
        "edges": list(edges),
        "token_share": token_share.tolist(),
        "mass_share": mass_share,
        "mean_weight": mean_weight,
        "zero_weight_share": zero_share,
    }


def infosft_mass_vs_p_bar(
    log_probs: Tensor,
    p_bars: Sequence[float] = P_BAR_SWEEP,
    edges: Sequence[float] = COARSE_BIN_EDGES,
) -> dict[str, Any]:
    """InfoSFT's share of total weight per q range at each p_bar (rows: p_bar, columns: bins)."""
    tables = [
        weight_mass_table(log_probs, {"infosft": token_weights(log_probs, "infosft", p)}, edges)
        for p in p_bars
    ]
    return {
        "p_bars": list(p_bars),
        "edges": list(edges),
        "mass_share": [t["mass_share"]["infosft"] for t in tables],
        "mean_weight": [t["mean_weight"]["infosft"] for t in tables],
        "zero_weight_share": [t["zero_weight_share"]["infosft"] for t in tables],
    }


def q_summary(log_probs: Tensor, p_bar: float = DEFAULT_P_BAR) -> dict[str, Any]:
    """Where target tokens sit between weak and strong prior: their count, median q, and the
    shares with q >= p_bar (InfoSFT's weight 0) and with q < :data:`LOW_Q` (NaN without
    tokens).

    Args:
        log_probs: log q of target tokens, any shape, float.
    """
    q = log_probs.reshape(-1).double().exp()
    empty = q.numel() == 0
    return {
        "num_target_tokens": q.numel(),
        "median_q": math.nan if empty else float(q.median()),
        "share_q_ge_p_bar": math.nan if empty else float((q >= p_bar).double().mean()),
        "share_q_lt_low": math.nan if empty else float((q < LOW_Q).double().mean()),
    }


def regime_numbers(
    log_probs: Tensor, weights: Mapping[str, Tensor], p_bar: float = DEFAULT_P_BAR
) -> dict[str, Any]:
    """The numbers that describe data between weak and strong prior, as inspect prints them:
    :func:`q_summary` and each method's mean weight."""
    return {
        **q_summary(log_probs, p_bar),
        "mean_weight": {method: float(w.double().mean()) for method, w in weights.items()},
    }


# The q statistics that place data among the measured regimes (the README's table), each a
# share or mean in [0, 1], read from regime_numbers' output.
REGIME_STATISTICS = ("share_q_ge_p_bar", "share_q_lt_low", "mean_infosft_weight")


def regime_statistics(numbers: Mapping[str, Any]) -> dict[str, float]:
    """:data:`REGIME_STATISTICS` of :func:`regime_numbers` output (or a reference task's)."""
    return {
        "share_q_ge_p_bar": float(numbers["share_q_ge_p_bar"]),
        "share_q_lt_low": float(numbers["share_q_lt_low"]),
        "mean_infosft_weight": float(numbers["mean_weight"]["infosft"]),
    }


def nearest_regime(mine: Mapping[str, float], regimes: Mapping[str, Mapping[str, float]]) -> str:
    """The regime whose :func:`regime_statistics` are nearest to ``mine`` (Euclidean; the
    statistics share one [0, 1] scale, so none is rescaled); the first of equals."""
    if not regimes:
        raise ValueError("no measured regime to compare with")

    def distance(theirs: Mapping[str, float]) -> float:
        return sum((mine[k] - theirs[k]) ** 2 for k in REGIME_STATISTICS) ** 0.5

    return min(regimes, key=lambda name: distance(regimes[name]))


def closest_regime_line(reference: Mapping[str, Any], mine: Mapping[str, Any]) -> str | None:
    """Which measured regime the data is closest to in q statistics, and whether the stored test
    (``reference["when_to_use"]``, benchmarks/when_to_use.py) supports reading the verdict off
    that: only when its ``supported`` is true does the line carry that regime's verdict."""
    tasks = {
        name: regime_statistics(task)
        for name, task in reference.get("tasks", {}).items()
        if "infosft" in task.get("mean_weight", {})
    }
    if not tasks or "infosft" not in mine.get("mean_weight", {}):
        return None
    closest = nearest_regime(regime_statistics(mine), tasks)
    test = reference.get("when_to_use") or {}
    if test.get("supported") is not True:
        return (
            f"closest to {closest} in q statistics; the measured regimes do not support "
            "predicting the verdict from q statistics (see README, When to use InfoSFT), so "
            "this is no prediction: measure it on your data (infosft compare)"
        )
    verdict = test.get("regimes", {}).get(closest, {}).get("label", NOT_MEASURED)
    return (
        f"closest to {closest} in q statistics, where the measured verdict was: {verdict} "
        f"({test.get('summary', 'see README, When to use InfoSFT')})"
    )


def lowest_q_tokens(
    examples: Sequence[ScoredExample], tokenizer: Any, k: int = 10, context: int = 12
) -> list[dict[str, Any]]:
    """The ``k`` target tokens with the lowest q, each with up to ``context`` tokens before it."""
    candidates = [
        (lp, e, t, ex.input_ids)
        for e, ex in enumerate(examples)
        for t, (lp, is_target) in enumerate(zip(ex.log_probs, ex.is_target, strict=True))
        if is_target
    ]
    return [
        {
            "example": e,
            "position": t,
            "q": float(torch.tensor(lp).exp()),
            "context": tokenizer.decode(ids[max(0, t - context) : t]),
            "token": tokenizer.decode([ids[t]]),
        }
        for lp, e, t, ids in sorted(candidates, key=lambda c: c[0])[:k]
    ]


def quantiles(log_probs: Tensor, levels: Sequence[float] = (0.1, 0.25, 0.5, 0.75, 0.9)) -> dict:
    """Quantiles of q at ``levels`` (keys like "q10")."""
    if len(log_probs) == 0:
        return {}
    values = torch.quantile(
        log_probs.double().exp(), torch.tensor(list(levels), dtype=torch.float64)
    )
    return {f"q{round(level * 100)}": float(v) for level, v in zip(levels, values, strict=True)}


def bin_labels(edges: Sequence[float]) -> list[str]:
    """Readable names of the bins [e_i, e_{i+1})."""
    return [f"{edges[i]:g}-{edges[i + 1]:g}" for i in range(len(edges) - 1)]


def read_regimes_reference(path: str | Path = REGIMES_REFERENCE) -> dict[str, Any] | None:
    """The packaged regime reference (see benchmarks/regimes_reference.py), or None if absent."""
    path = Path(path)
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def inspect_summary(
    examples: Sequence[ScoredExample],
    tokenizer: Any,
    schemes: Sequence[Scheme],
    p_bar: float = DEFAULT_P_BAR,
    k_lowest: int = 10,
) -> dict[str, Any]:
    """Everything ``infosft inspect`` reports, as plain JSON-able values."""
    log_probs = scored_log_probs(examples)
    if len(log_probs) == 0:
        raise ValueError("the data has no target tokens; check its format (see infosft train -h)")
    weights = scheme_weights(examples, schemes)
    return {
        "num_examples": len(examples),
        "num_target_tokens": len(log_probs),
        "p_bar": p_bar,
        "mean_q": float(log_probs.double().exp().mean()),
        "quantiles": quantiles(log_probs),
        "bins": weight_mass_table(log_probs, weights),
        "p_bar_sweep": infosft_mass_vs_p_bar(log_probs),
        "regime": regime_numbers(log_probs, weights, p_bar),
        "regimes_reference": read_regimes_reference(),
        "lowest_q": lowest_q_tokens(examples, tokenizer, k_lowest),
        "curves": [scheme.method for scheme in schemes if scheme.q_only],
    }


def format_summary(summary: Mapping[str, Any]) -> str:
    """The summary as plain-text tables for the terminal (and markdown code blocks)."""
    bins, p_bar = summary["bins"], summary["p_bar"]
    methods = list(bins["mass_share"])
    lines = [
        f"{summary['num_target_tokens']} target tokens in {summary['num_examples']} examples; "
        f"mean q = {summary['mean_q']:.3f}; "
        + ", ".join(f"{k} = {v:.3g}" for k, v in summary["quantiles"].items()),
        "",
        "share of tokens and of each method's total weight, per q bin:",
        "q bin".ljust(12) + "tokens".rjust(9) + "".join(m.rjust(10) for m in methods),
    ]
    for i, label in enumerate(bin_labels(bins["edges"])):
        row = label.ljust(12) + f"{bins['token_share'][i]:9.3f}"
        lines.append(row + "".join(f"{bins['mass_share'][m][i]:10.3f}" for m in methods))
    for label, key in (("mean w", "mean_weight"), ("w = 0 share", "zero_weight_share")):
        lines.append(label.ljust(21) + "".join(f"{bins[key][m]:10.3f}" for m in methods))
    lines += ["", *format_regimes(summary["regimes_reference"], p_bar, summary["regime"])]
    sweep = summary["p_bar_sweep"]
    lines += [
        "",
        "InfoSFT's share of total weight per q range, by p_bar:",
        "p_bar".ljust(8)
        + "".join(label.rjust(10) for label in bin_labels(sweep["edges"]))
        + "mean w".rjust(10)
        + "w=0".rjust(8),
    ]
    columns = ("p_bars", "mass_share", "mean_weight", "zero_weight_share")
    for p, shares, mean, zero in zip(*(sweep[key] for key in columns), strict=True):
        lines.append(
            f"{p:<8g}" + "".join(f"{s:10.3f}" for s in shares) + f"{mean:10.3f}{zero:8.3f}"
        )
    lines += ["", "lowest-q target tokens ([token] after its context):"]
    for row in summary["lowest_q"]:
        context = row["context"].replace("\n", "\\n")[-60:]
        token = row["token"].replace("\n", "\\n")
        lines.append(f"  q={row['q']:.2e}  ...{context}[{token}]")
    return "\n".join(lines)


NOT_MEASURED = "not measured yet"


def format_regimes(
    reference: Mapping[str, Any] | None, p_bar: float, mine: Mapping[str, Any] | None = None
) -> list[str]:
    """Your data's :func:`regime_numbers` (``mine``) beside the demo's tasks' (``reference``,
    see :data:`REGIMES_REFERENCE`), with what the demo found in each regime and how (not) to
    read the comparison."""
    tasks = dict((reference or {}).get("tasks", {}))
    columns = [*([("your data", mine)] if mine is not None else []), *tasks.items()]
    width = max(16, *(len(name) + 2 for name, _ in columns))
    mine_cell = [""] if mine is not None else []

    def row(label: str, cells: list[str]) -> str:
        return label.ljust(24) + "".join(cell.rjust(width) for cell in cells)

    def number(value: Any) -> str:
        return "-" if value is None else f"{value:.3f}"

    lines = [
        "where the data sits between the demo's regimes (q under each column's own model):",
        row("", [name for name, _ in columns]),
        row("median q", [number(c["median_q"]) for _, c in columns]),
        row(f"share q >= p_bar {p_bar:g}", [number(c["share_q_ge_p_bar"]) for _, c in columns]),
        row(f"share q < {LOW_Q:g}", [number(c["share_q_lt_low"]) for _, c in columns]),
    ]
    methods = dict.fromkeys(method for _, c in columns for method in c["mean_weight"])
    for method in methods:
        cells = [number(c["mean_weight"].get(method)) for _, c in columns]
        lines.append(row(f"mean w {method}", cells))
    if not tasks:
        return [*lines, f"(no demo reference: {REGIMES_REFERENCE.name} is not installed)"]
    accuracies = [number(task.get("base_accuracy")) for task in tasks.values()]
    lines.append(row("demo base accuracy", [*mine_cell, *accuracies]))
    lines += ["", f"the demo's regimes ({reference.get('model', '?')}) and what it found there:"]
    for name, task in tasks.items():
        lines.append(f"  {name} ({task.get('regime', '')}):")
        lines += [f"    {verdict}" for verdict in task.get("verdicts") or [NOT_MEASURED]]
    closest = closest_regime_line(reference, mine) if mine is not None else None
    lines += ["", closest] if closest else []
    lines += [
        "",
        "How to read this: q is the model's probability of each target token before training.",
        "InfoSFT gives tokens with q >= p_bar weight 0 (already predicted) and tokens with",
        f"q < {LOW_Q:g} little weight (nearly unpredictable). The demo's regimes are defined by",
        "what its base model can do on the task (its accuracy); these token shares describe q",
        "only, and the share of q >= p_bar alone does not place data on the axis (a task the",
        "base model cannot solve can still have many predictable tokens, such as a fixed answer",
        "format). The columns are measured with different models and data, and the demo's",
        "findings were measured on its tasks, not on yours.",
    ]
    return lines


def write_inspect_plots(
    summary: Mapping[str, Any], q_values: Sequence[float], output_dir: Any
) -> list[Any]:
    """The three inspect plots as PNGs in ``output_dir``; returns their paths. Weight curves
    are drawn for the methods that are functions of q (the others have none)."""
    from infosft.experiments import plots

    output_dir = Path(output_dir)
    bins, sweep = summary["bins"], summary["p_bar_sweep"]
    return [
        plots.plot_q_histogram(
            q_values,
            output_dir / "q_histogram.png",
            methods=summary["curves"],
            p_bar=summary["p_bar"],
            title="Target tokens' q under the model, with each method's weight",
        ),
        plots.plot_weight_mass(
            bins["edges"],
            bins["token_share"],
            bins["mass_share"],
            output_dir / "weight_mass.png",
            title="Share of total weight per q bin",
        ),
        plots.plot_mass_vs_p_bar(
            sweep["p_bars"],
            {
                label: [row[i] for row in sweep["mass_share"]]
                for i, label in enumerate(bin_labels(sweep["edges"]))
            },
            output_dir / "infosft_mass_vs_p_bar.png",
            title="Where InfoSFT's weight goes as p_bar changes",
        ),
    ]


def run_inspect(
    spec: RunSpec,
    output_dir: Any,
    *,
    methods: Sequence[str],
    limit: int = 256,
    k_lowest: int = 10,
) -> tuple[dict[str, Any], str]:
    """Score the first ``limit`` examples of ``spec.data`` (prepared as training would) under
    ``spec.model``; write inspect.json and plots to ``output_dir``.

    ``spec.args.p_bar`` is InfoSFT's clip point in the tables; schemes that read a micro-batch
    statistic see micro-batches of ``per_device_train_batch_size`` rows. Returns the summary
    (with ``figures``) and its text rendering.
    """
    from infosft.files import write_json_atomic
    from infosft.models import load_model_and_tokenizer

    schemes = resolve_schemes(spec.args, methods)
    model, tokenizer = load_model_and_tokenizer(spec.model, **(spec.model_init_kwargs or {}))
    prepared = prepare_examples(spec, model, tokenizer, limit)
    examples = score_prepared(model, prepared, spec.args.per_device_train_batch_size, schemes)
    summary = inspect_summary(examples, tokenizer, schemes, spec.args.p_bar, k_lowest)
    output_dir = Path(output_dir)
    q_values = scored_log_probs(examples).exp().tolist()
    figures = write_inspect_plots(summary, q_values, output_dir)
    summary["figures"] = [f.name for f in figures]
    write_json_atomic(output_dir / "inspect.json", summary)
    return summary, format_summary(summary)
