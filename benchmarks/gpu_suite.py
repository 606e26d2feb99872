"""Check and time infosft on a CUDA GPU in one command: fused-loss correctness, LM-head loss speed
and memory against the other fused losses, a training step of a 1.5B model, DeepSpeed ZeRO-2/3.

    PYTHONPATH=src python benchmarks/gpu_suite.py          # all parts (never run yet: ~10-15 min?)
    PYTHONPATH=src python benchmarks/gpu_suite.py --parts correctness,loss --out /tmp/results

Without a CUDA device it prints one line saying so and exits with status 2. Results go to
``--out`` (default ``benchmarks/results/``) as ``gpu_suite_<date>_<card>.json`` and ``.md``,
rewritten after every part, so a run cut short keeps the parts it finished. Exit status 1 when a
correctness check failed or a part raised (its traceback is in the JSON), else 0; speed goals
that are missed are reported, not failed.

Parts (``--parts``, comma list; default all):

correctness
    For every registered scheme (``infosft.objectives.available_schemes()``, so a scheme
    added later is covered without editing this file) x float32 / bfloat16 x the chunk function
    compiled or not (``use_compile=True/False``) x without / with the KL anchor to a base model:
    loss and gradients of ``fused_weighted_nll_loss`` (hidden states, head weight, head bias)
    against ``weighted_nll_loss`` on the float64 logits of the same (rounded) inputs. The problem
    has ignored positions, a bias, peaked rows whose target is the argmax (weight 0 for infosft
    and memft: the zero-weight compaction runs), an odd vocabulary and several chunks (the last
    one short). Pass: ||got - ref|| / ||ref|| <= 1e-4 (float32) or 1e-2 (bf16: gradients are
    returned in bf16). torch.compile's recompile limit is raised so that every compiled case
    really runs compiled.
loss
    fwd+bwd time (median of CUDA-event-timed calls after warm-up) and peak memory (allocated
    during one call, above the inputs; the returned gradients are part of it) at the anchor
    shapes: H 4096, V 151936 and 128256, 8192 and 32768 target tokens, bf16. Candidates: ours
    (nll, dft, infosft), full logits (cross-entropy of the upcast logits, as transformers does,
    and infosft's weighted_nll_loss), TRL's chunked_logprob with the InfoSFT weight, Liger's
    FLCE (nll, and DFT via use_token_scaling) and its per-token NLL op
    (LigerFusedLinearScaledCrossEntropyFunction, CuTe on SM90) with the InfoSFT weight applied
    outside, cut-cross-entropy's per-token NLL with the InfoSFT weight applied outside. Each as
    a ratio to the three bare bf16 GEMMs (logits, grad of hidden, grad of W) timed in the same
    run. Goal at V 151936, 8192 tokens: infosft <= 1.3x the GEMMs, <= 55 ms, <= 6 GiB.
    A candidate whose package is missing is reported as skipped; one that runs out of memory as
    OOM.
train
    A randomly initialised Qwen2.5-1.5B-shaped model (28 layers, H 1536, V 151936, tied head),
    fp32 weights with bf16 autocast, gradient checkpointing, batch 4 x 2048 tokens, AdamW: median
    optimizer-step time, tokens/s and peak memory of InfoSFTTrainer (built by
    ``infosft.training.build_trainer``) with method infosft and nll, and of TRL's SFTTrainer with
    ``loss_type="dft"`` and ``"nll"``, each run in its own process.
deepspeed
    ``accelerate launch`` of ``infosft train`` on a tiny model with the shipped
    ``configs/accelerate/deepspeed_zero{2,3}.yaml`` (one process: one GPU) against the same run
    without DeepSpeed: the logged loss trajectories must agree (rtol 1e-3). Needs deepspeed.

On the lent device (a 'cuda' image with torch 2.11, transformers 5.17, accelerate, peft, triton;
no TRL, datasets, Liger, cut-cross-entropy, DeepSpeed, no network), bring the missing packages as
wheels, 4.8 MiB in all (trl 0.9, deepspeed 2.1, liger-kernel 0.9, datasets 0.6 and the
rest; a call may carry 64 MiB). Once, here, in the repo root::

    echo /.whl/ >> .git/info/exclude
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \\
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \\
        --platform manylinux2014_x86_64 -d .whl trl==1.16.0 datasets==5.2.0 dill==0.4.1 \\
        multiprocess==0.70.19 liger-kernel==0.8.5 cut-cross-entropy==25.1.1 hjson==3.1.0
    DS_BUILD_OPS=0 python3 -m pip wheel --no-deps -w .whl deepspeed==0.19.8   # pure Python

and run it as two calls of the ``run`` tool (each: carry ``[".whl"]``, timeout_s 600; a call is
limited to 10 minutes, and the correctness part compiles the chunk function for every variant)::

    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \\
      && export PYTHONPATH=/tmp/site:src PYTHONUNBUFFERED=1 \\
      && python3 benchmarks/gpu_suite.py --parts correctness,loss --out $OUT

    (the same with ``--parts train,deepspeed``)

datasets 5.2 needs pyarrow >= 24 and fsspec <= 2026.9.0: if the image's are off (the JSON's
environment lists them), add ``pyarrow==26.0.1`` (52.5 MiB) to the download.
A run of some parts adds them to its file names. Copy the files from the tool's ``files_at``
into benchmarks/results/ here. Liger's SM90 per-token op also needs ``nvidia-cutlass-dsl``,
which is not carried (too large); without it that one candidate is reported as skipped.

Self-check without a GPU (what tests/test_gpu_suite.py runs): ``--device cpu --tiny`` runs every
part's code on tiny shapes on the CPU (the compiled chunk function only with ``--compile on``).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PARTS = ("correctness", "loss", "train", "deepspeed")
GIB = 2**30

# Relative-error tolerances of the correctness part (see the module docstring).
TOLERANCE = {"float32": 1e-4, "bfloat16": 1e-2}
# Anchor shapes of issue 13 (H, V, target tokens) and the goal at the first one.
LOSS_SHAPES = [
    (4096, 151936, 8192),
    (4096, 151936, 32768),
    (4096, 128256, 8192),
    (4096, 128256, 32768),
]
TINY_LOSS_SHAPES = [(64, 1000, 96)]
GOAL = {"shape": (4096, 151936, 8192), "x_gemms": 1.3, "ms": 55.0, "gib": 6.0}
# Chunk heights of the fused loss timed besides the default plan on CUDA.
CHUNK_SIZES = (512, 1024, 2048, 4096)
# TRL 1.16's vocabulary tile of chunked_logprob (trl.trainer.utils._CHUNKED_LOGPROB_CHUNK_SIZE).
TRL_VOCAB_TILE = 32768


# ---- results ---------------------------------------------------------------------------------


@dataclass
class Results:
    """What the run found, written to ``<stem>.json`` and ``<stem>.md`` after every part."""

    path_stem: Path
    environment: dict[str, Any]
    parts: dict[str, Any]

    def save(self) -> None:
        from infosft.files import write_json_atomic, write_text_atomic

        payload = {"environment": self.environment, "parts": self.parts}
        write_json_atomic(self.path_stem.with_suffix(".json"), payload)
        write_text_atomic(self.path_stem.with_suffix(".md"), markdown(payload))

    def failed(self) -> bool:
        for part in self.parts.values():
            if part.get("status") == "error":
                return True
            if any(row.get("status") == "FAIL" for row in part.get("rows", [])):
                return True
        return False


def markdown(payload: dict[str, Any]) -> str:
    """The results as markdown: the environment, then one table per part."""
    env = payload["environment"]
    lines = [f"# gpu_suite on {env['device']} ({env['date']})", ""]
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items())
    lines += [f"torch {env['torch']}, CUDA {env['cuda']}; {versions}", ""]
    for name, part in payload["parts"].items():
        lines += [f"## {name}", ""]
        if part.get("status") == "error":
            lines += ["ERROR:", "", "```", part["error"].rstrip(), "```", ""]
        rows = part.get("rows", [])
        if rows:
            columns = list(dict.fromkeys(key for row in rows for key in row))
            # Measurements in a fixed order, the status last.
            order = {name: i for i, name in enumerate(COLUMN_ORDER)}
            columns.sort(key=lambda c: order.get(c, len(order) - 1))
            lines.append("| " + " | ".join(columns) + " |")
            lines.append("|" + "---|" * len(columns))
            for row in rows:
                lines.append("| " + " | ".join(_cell(row.get(c)) for c in columns) + " |")
            lines.append("")
        lines += [f"- {note}" for note in part.get("notes", [])]
        if part.get("notes"):
            lines.append("")
    return "\n".join(lines)


COLUMN_ORDER = ("ms", "x GEMMs", "TFLOP/s", "extra GiB", "peak GiB", "status", "error")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.3g}" if abs(value) < 1e-2 or abs(value) >= 1e4 else f"{value:.3f}"
    return str(value)


def environment(device: str) -> dict[str, Any]:
    """infosft's record of the machine (infosft.files.environment) with the suite's libraries,
    the date, the device's name and the CUDA version."""
    import torch

    from infosft.files import environment as run_environment
    from infosft.files import library_versions

    names = ("transformers", "trl", "accelerate", "peft", "datasets", "triton", "liger-kernel")
    names += ("cut-cross-entropy", "deepspeed", "nvidia-cutlass-dsl", "pyarrow", "fsspec")
    cuda = device == "cuda"
    return {
        **run_environment(),
        "date": datetime.date.today().isoformat(),
        "device": torch.cuda.get_device_name() if cuda else f"cpu x{torch.get_num_threads()}",
        "torch": torch.__version__,
        "cuda": torch.version.cuda if cuda else None,
        "versions": library_versions(names),
    }


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


# ---- part 1: correctness ---------------------------------------------------------------------


def make_problem(device: str, dtype, tiny: bool, seed: int = 0) -> dict[str, Any]:
    """Inputs of one correctness case, drawn afresh per seed; leaves need grad.

    hidden [B, T, H], W [V, H] ~ N(0, 3/sqrt(H)) so that logits have std ~3, b [V]; every third
    row of hidden is scaled by 4 (a peaked distribution) and its target is that row's argmax,
    so q -> 1 and infosft/memft give weight 0 there. labels carry ignored spans and a scattered
    -100 every 7th position. Base model: the same plus noise, for the KL anchor.
    """
    import torch

    batch, seq, hidden_size, vocab = (2, 23, 16, 61) if tiny else (2, 257, 256, 2053)
    gen = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    hidden = torch.randn(batch, seq, hidden_size, generator=gen, dtype=f64)
    hidden[:, ::3] *= 4.0
    weight = 3.0 / hidden_size**0.5 * torch.randn(vocab, hidden_size, generator=gen, dtype=f64)
    bias = 0.5 * torch.randn(vocab, generator=gen, dtype=f64)
    labels = torch.randint(0, vocab, (batch, seq), generator=gen)
    argmax = (hidden @ weight.t() + bias).argmax(-1)
    # labels[t + 1] is the target of position t: the peaked rows t = 0, 3, 6, ... get their argmax.
    labels[:, 1::3] = argmax[:, 0:-1:3][:, : labels[:, 1::3].shape[1]]
    labels[0, :5] = -100
    labels[1, -4:] = -100
    labels[:, 2::7] = -100
    base_hidden = hidden + 0.3 * torch.randn(hidden.shape, generator=gen, dtype=f64)
    base_weight = weight + 0.3 / hidden_size**0.5 * torch.randn(weight.shape, generator=gen)
    leaves = {
        "hidden": hidden.to(device, dtype).requires_grad_(),
        "weight": weight.to(device, dtype).requires_grad_(),
        "bias": bias.to(device, dtype).requires_grad_(),
    }
    return {
        **leaves,
        "labels": labels.to(device),
        "base_hidden": base_hidden.to(device, dtype),
        "base_weight": base_weight.to(device, dtype),
        "chunk_size": 7 if tiny else 96,
    }


def float64_reference(problem: dict[str, Any], method: str, kl: float):
    """Loss and gradients of ``weighted_nll_loss`` on the float64 full logits of the inputs."""
    from infosft.losses import weighted_nll_loss

    leaves = {k: problem[k].detach().cpu().double().requires_grad_() for k in LEAVES}
    logits = leaves["hidden"] @ leaves["weight"].t() + leaves["bias"]
    kwargs = {}
    if kl:
        base_h, base_w = (
            problem[k].detach().cpu().double() for k in ("base_hidden", "base_weight")
        )
        kwargs = {"base_logits": base_h @ base_w.t(), "kl_to_base": kl}
    loss = weighted_nll_loss(logits, problem["labels"].cpu(), method=method, **kwargs)
    loss.backward()
    return loss.detach(), {k: leaves[k].grad for k in LEAVES}


LEAVES = ("hidden", "weight", "bias")


def relative_error(got, expected) -> float:
    got = got.detach().cpu().double()
    return float((got - expected).norm() / expected.norm().clamp(min=1e-30))


def check_case(problem: dict[str, Any], method: str, compiled: bool, kl: float) -> dict[str, Any]:
    """One fused-loss call with its gradients against the float64 reference."""
    from infosft.losses import fused_weighted_nll_loss

    for name in LEAVES:
        problem[name].grad = None
    anchor = {}
    if kl:
        anchor = {
            "base_hidden_states": problem["base_hidden"],
            "base_lm_head_weight": problem["base_weight"],
            "kl_to_base": kl,
        }
    loss = fused_weighted_nll_loss(
        problem["hidden"],
        problem["weight"],
        problem["labels"],
        method=method,
        lm_head_bias=problem["bias"],
        chunk_size=problem["chunk_size"],
        use_compile=compiled,
        **anchor,
    )
    loss.backward()
    ref_loss, ref_grads = float64_reference(problem, method, kl)
    errors = {"loss": relative_error(loss, ref_loss)}
    for name in LEAVES:
        grad = problem[name].grad
        if grad is None or grad.dtype != problem[name].dtype:
            errors[name] = math.inf
        else:
            errors[name] = relative_error(grad, ref_grads[name])
    return errors


def part_correctness(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from infosft.objectives import available_schemes

    with contextlib.suppress(AttributeError):
        # Every (scheme, dtype, flag) combination is a new specialisation of the compiled chunk
        # function; past the default limit (8) torch would silently fall back to eager.
        torch._dynamo.config.recompile_limit = 256
    compile_modes = {"both": (False, True), "on": (True,), "off": (False,)}[args.compile]
    rows, notes = [], []
    seed = 0
    for method in available_schemes():
        for dtype_name in ("float32", "bfloat16"):
            for compiled in compile_modes:
                for kl in (0.0, 0.5):
                    seed += 1
                    problem = make_problem(args.device, getattr(torch, dtype_name), args.tiny, seed)
                    row = {"method": method, "dtype": dtype_name, "compiled": compiled, "kl": kl}
                    try:
                        errors = check_case(problem, method, compiled, kl)
                    except Exception as err:  # a crash is a failed check, not the end of the run
                        row |= {"status": "FAIL", "error": f"{type(err).__name__}: {err}"[:300]}
                        rows.append(row)
                        continue
                    worst = max(errors.values())
                    ok = worst <= TOLERANCE[dtype_name] and math.isfinite(worst)
                    row |= {f"err_{k}": v for k, v in errors.items()}
                    row["status"] = "ok" if ok else "FAIL"
                    rows.append(row)
    failed = sum(row["status"] == "FAIL" for row in rows)
    notes.append(f"{len(rows) - failed} of {len(rows)} cases within tolerance {TOLERANCE}")
    return {"rows": rows, "notes": notes}


# ---- part 2: LM-head loss speed and memory ---------------------------------------------------


LossFn = Callable[[Any, Any, Any], Any]
"""``fn(hidden [1, N + 1, H], weight [V, H], labels [1, N + 1]) -> scalar loss or None``."""


def _rows_and_targets(hidden, labels):
    return hidden[0, :-1], labels[0, 1:]


def weighted_outside(nll):
    """InfoSFT loss from per-token NLL [N] of another library: -sum(w(q) log q) / N."""
    from infosft.objectives import token_weights

    weights = token_weights(-nll.detach(), "infosft")
    return (weights * nll).sum() / nll.numel()


def loss_candidates(device: str) -> dict[str, LossFn | str]:
    """Every candidate of the loss part: its loss function, or why it is skipped here."""
    import torch
    import torch.nn.functional as F

    from infosft.losses import fused_weighted_nll_loss, weighted_nll_loss
    from infosft.objectives import token_weights

    def gemms(hidden, weight, labels):
        rows, weight = hidden.detach()[0, :-1], weight.detach()
        logits = rows @ weight.t()
        torch.mm(logits, weight)
        torch.mm(logits.t(), rows)

    def ours(method, chunk_size=None):
        return lambda h, w, y: fused_weighted_nll_loss(
            h, w, y, method=method, chunk_size=chunk_size
        )

    def full_ce(hidden, weight, labels):
        rows, targets = _rows_and_targets(hidden, labels)
        return F.cross_entropy((rows @ weight.t()).float(), targets)

    def full_infosft(hidden, weight, labels):
        return weighted_nll_loss(hidden @ weight.t(), labels, method="infosft")

    candidates: dict[str, LossFn | str] = {
        "3 GEMMs": gemms,
        "ours nll": ours("nll"),
        "ours dft": ours("dft"),
        "ours infosft": ours("infosft"),
    }
    if device == "cuda":
        # Other chunk heights than the plan's (infosft.losses.chunking), to tune it on the card.
        for rows in CHUNK_SIZES:
            candidates[f"ours infosft c={rows}"] = ours("infosft", rows)
    candidates |= {"full logits CE": full_ce, "full logits infosft": full_infosft}
    try:
        from trl.kernels import ChunkedLogProbFunction

        def trl_infosft(hidden, weight, labels):
            rows, targets = _rows_and_targets(hidden, labels)
            log_probs = ChunkedLogProbFunction.apply(
                rows, weight, None, targets, 1.0, TRL_VOCAB_TILE, None, 1.0, ()
            )[0]
            weights = token_weights(log_probs, "infosft")
            return -(weights * log_probs).sum() / log_probs.numel()

        candidates["TRL chunked_logprob infosft"] = trl_infosft
    except ImportError as err:
        candidates["TRL chunked_logprob infosft"] = f"skipped (trl: {err})"
    if device != "cuda":
        for name in ("Liger FLCE nll", "Liger FLCE dft", "Liger per-token NLL infosft"):
            candidates[name] = "skipped (CUDA only)"
        candidates["cut-cross-entropy infosft"] = "skipped (CUDA only)"
        return candidates
    try:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

        def liger(scaling: bool) -> LossFn:
            module = LigerFusedLinearCrossEntropyLoss(use_token_scaling=scaling)

            def liger_loss(hidden, weight, labels):
                rows, targets = _rows_and_targets(hidden, labels)
                out = module(weight, rows, targets)
                return getattr(out, "loss", out)

            return liger_loss

        candidates["Liger FLCE nll"] = liger(False)
        candidates["Liger FLCE dft"] = liger(True)
    except ImportError as err:
        candidates["Liger FLCE nll"] = candidates["Liger FLCE dft"] = f"skipped (liger: {err})"
    candidates["Liger per-token NLL infosft"] = liger_per_token_nll()
    try:
        from cut_cross_entropy import linear_cross_entropy

        def cce_infosft(hidden, weight, labels):
            rows, targets = _rows_and_targets(hidden, labels)
            return weighted_outside(linear_cross_entropy(rows, weight, targets, reduction="none"))

        candidates["cut-cross-entropy infosft"] = cce_infosft
    except ImportError as err:
        candidates["cut-cross-entropy infosft"] = f"skipped (cut-cross-entropy: {err})"
    return candidates


def liger_per_token_nll() -> LossFn | str:
    """Liger's per-token NLL op on its SM90 CuTe path, or why it cannot run here."""
    import torch

    try:
        from liger_kernel.ops import LigerFusedLinearScaledCrossEntropyFunction
    except ImportError as err:
        return f"skipped (liger per-token op: {err})"
    if torch.cuda.get_device_capability() != (9, 0):
        return "skipped (the CuTe path is SM90 only; elsewhere it is a torch fallback)"
    try:
        from liger_kernel.ops.fused_linear_scaled_cross_entropy import _load_sm90_function

        _load_sm90_function()
    except ImportError as err:
        return f"skipped (SM90 CuTe path needs nvidia-cutlass-dsl: {err})"

    def per_token(hidden, weight, labels):
        rows, targets = _rows_and_targets(hidden, labels)
        out = LigerFusedLinearScaledCrossEntropyFunction.apply(rows, weight, targets)
        return weighted_outside(out[0] if isinstance(out, tuple) else out)

    return per_token


def time_call(fn: LossFn, inputs: tuple, device: str, warmup: int, repeats: int) -> float:
    """Median seconds of ``fn`` + backward over ``repeats`` calls after ``warmup`` calls."""
    import torch

    def once():
        inputs[0].grad = inputs[1].grad = None
        loss = fn(*inputs)
        if loss is not None:
            loss.backward()

    for _ in range(warmup):
        once()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            once()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            begin = time.perf_counter()
            once()
            times.append(time.perf_counter() - begin)
    return statistics.median(times)


def peak_extra_bytes(fn: LossFn, inputs: tuple) -> tuple[int, int]:
    """(peak allocated during one call above what was allocated before it, peak in total)."""
    import torch

    inputs[0].grad = inputs[1].grad = None
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    loss = fn(*inputs)
    if loss is not None:
        loss.backward()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    return peak - before, peak


def part_loss(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    device = args.device
    shapes = TINY_LOSS_SHAPES if args.tiny else LOSS_SHAPES
    candidates = loss_candidates(device)
    rows, notes = [], []
    for hidden_size, vocab, tokens in shapes:
        gen = torch.Generator().manual_seed(0)
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        hidden = torch.randn(1, tokens + 1, hidden_size, generator=gen).to(device, dtype)
        weight = (0.02 * torch.randn(vocab, hidden_size, generator=gen)).to(device, dtype)
        labels = torch.randint(0, vocab, (1, tokens + 1), generator=gen).to(device)
        inputs = (hidden.requires_grad_(), weight.requires_grad_(), labels)
        small = tokens <= 8192
        warmup = args.warmup if args.warmup is not None else (3 if small else 2)
        repeats = args.repeats if args.repeats is not None else (10 if small else 5)
        shape_rows = []
        for name, fn in candidates.items():
            row: dict[str, Any] = {"H": hidden_size, "V": vocab, "tokens": tokens}
            row["candidate"] = name
            if isinstance(fn, str):
                shape_rows.append(row | {"status": fn})
                continue
            try:
                seconds = time_call(fn, inputs, device, warmup, repeats)
                row |= {"ms": seconds * 1e3, "TFLOP/s": 6 * tokens * hidden_size * vocab / seconds}
                row["TFLOP/s"] /= 1e12
                if device == "cuda":
                    extra, peak = peak_extra_bytes(fn, inputs)
                    row |= {"extra GiB": extra / GIB, "peak GiB": peak / GIB}
                row["status"] = "ok"
            except torch.OutOfMemoryError:
                row["status"] = "OOM"
            except Exception as err:  # one candidate's failure must not hide the others
                row["status"] = f"error: {type(err).__name__}: {err}"[:300]
            finally:
                inputs[0].grad = inputs[1].grad = None
                if device == "cuda":
                    torch.cuda.empty_cache()
            shape_rows.append(row)
        base = next((r["ms"] for r in shape_rows if r["candidate"] == "3 GEMMs" and "ms" in r), 0)
        for row in shape_rows:
            if "ms" in row and base:
                row["x GEMMs"] = row["ms"] / base
        rows += shape_rows
        if (hidden_size, vocab, tokens) == GOAL["shape"]:
            notes.append(goal_note(shape_rows))
        del hidden, weight, inputs
    notes.append(
        "ms: median fwd+bwd; extra GiB: peak allocated above the inputs during one call "
        "(gradients included); peak GiB: peak allocated in total; x GEMMs: time over the three "
        "bare bf16 GEMMs at the same shape, same run"
    )
    return {"rows": rows, "notes": notes}


def goal_note(rows: list[dict[str, Any]]) -> str:
    ours = next(r for r in rows if r["candidate"] == "ours infosft")
    if "ms" not in ours:
        return f"goal (infosft at {GOAL['shape']}): not measured ({ours['status']})"
    checks = [
        f"{ours.get('x GEMMs', math.nan):.2f}x GEMMs (goal <= {GOAL['x_gemms']})",
        f"{ours['ms']:.1f} ms (goal <= {GOAL['ms']})",
        f"{ours.get('peak GiB', math.nan):.2f} GiB peak (goal <= {GOAL['gib']})",
    ]
    met = (
        ours.get("x GEMMs", math.inf) <= GOAL["x_gemms"]
        and ours["ms"] <= GOAL["ms"]
        and ours.get("peak GiB", math.inf) <= GOAL["gib"]
    )
    return (
        f"goal (infosft at H, V, tokens = {GOAL['shape']}): "
        + ", ".join(checks)
        + (" -- MET" if met else " -- NOT MET")
    )


# ---- part 3: a training step -----------------------------------------------------------------


TRAIN_RUNS = {
    "InfoSFTTrainer infosft": ("infosft", "infosft"),
    "InfoSFTTrainer nll": ("infosft", "nll"),
    "TRL SFTTrainer dft": ("trl", "dft"),
    "TRL SFTTrainer nll": ("trl", "nll"),
}
TINY_TRAIN_RUNS = ["InfoSFTTrainer infosft", "TRL SFTTrainer dft"]
QWEN25_15B = {
    "hidden_size": 1536,
    "intermediate_size": 8960,
    "num_hidden_layers": 28,
    "num_attention_heads": 12,
    "num_key_value_heads": 2,
    "vocab_size": 151936,
    "max_position_embeddings": 32768,
    "rope_theta": 1000000.0,
    "tie_word_embeddings": True,
}
TINY_QWEN = QWEN25_15B | {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 1000,
}


def word_level_tokenizer():
    """A minimal fast tokenizer: the data is already token ids, the trainers only need its
    special tokens."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.WordLevel({s: i for i, s in enumerate(specials)}, unk_token=specials[0]))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=specials[2], pad_token=specials[0], unk_token=specials[0]
    )


def train_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Train one run of the train part in this process; its step times and peak memory."""
    import torch
    from datasets import Dataset
    from transformers import Qwen2Config, Qwen2ForCausalLM, TrainerCallback

    cuda = spec["device"] == "cuda"
    trainer_kind, method = TRAIN_RUNS[spec["run"]]
    torch.manual_seed(0)
    config = Qwen2Config(**spec["model"])
    with torch.device(spec["device"]):
        model = Qwen2ForCausalLM(config)
    batch, seq_len, steps = spec["batch"], spec["seq_len"], spec["warmup"] + spec["steps"]
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(3, config.vocab_size, (batch * steps, seq_len), generator=gen)
    dataset = Dataset.from_list([{"input_ids": row} for row in ids.tolist()])

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times: list[float] = []

        def on_step_begin(self, *_args, **_kwargs):
            if cuda:
                torch.cuda.synchronize()
            self.start = time.perf_counter()

        def on_step_end(self, *_args, **_kwargs):
            if cuda:
                torch.cuda.synchronize()
            self.times.append(time.perf_counter() - self.start)

    timer = StepTimer()
    options = {
        "output_dir": spec["output_dir"],
        "per_device_train_batch_size": batch,
        "max_steps": steps,
        "max_length": seq_len,
        "learning_rate": 1e-5,
        "bf16": cuda,
        "use_cpu": not cuda,
        "gradient_checkpointing": True,
        "shuffle_dataset": False,
        "logging_steps": 10**6,
        "save_strategy": "no",
        "report_to": [],
        "disable_tqdm": True,
    }
    tokenizer = word_level_tokenizer()
    if trainer_kind == "infosft":
        from infosft.training import InfoSFTConfig, RunSpec, build_trainer

        run = RunSpec(args=InfoSFTConfig(method=method, **options), data=dataset)
        trainer = build_trainer(run, model=model, tokenizer=tokenizer, callbacks=[timer])
    else:
        from trl import SFTConfig, SFTTrainer

        trainer = SFTTrainer(
            model=model,
            args=SFTConfig(loss_type=method, **options),
            train_dataset=dataset,
            processing_class=tokenizer,
            callbacks=[timer],
        )
    if cuda:
        torch.cuda.synchronize()
        model_bytes = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    step = statistics.median(timer.times[spec["warmup"] :])
    result = {"s/step": step, "tokens/s": batch * seq_len / step}
    if cuda:
        peak = torch.cuda.max_memory_allocated()
        result |= {"peak GiB": peak / GIB, "peak above model GiB": (peak - model_bytes) / GIB}
    return result


def part_train(args: argparse.Namespace) -> dict[str, Any]:
    import importlib.util

    tiny = args.tiny
    spec = {
        "device": args.device,
        "model": TINY_QWEN if tiny else QWEN25_15B,
        "batch": 2 if tiny else 4,
        "seq_len": 32 if tiny else 2048,
        "warmup": 1 if tiny else 2,
        "steps": 2 if tiny else 4,
    }
    rows, notes = [], []
    missing = [m for m in ("trl", "datasets") if importlib.util.find_spec(m) is None]
    # The tiny self-check runs one run of each trainer (the others differ by the method alone).
    runs = TINY_TRAIN_RUNS if tiny else list(TRAIN_RUNS)
    for name in runs:
        row = {"run": name}
        if missing:
            rows.append(row | {"status": f"skipped ({', '.join(missing)} not installed)"})
            continue
        with tempfile.TemporaryDirectory() as out:
            spec_json = json.dumps(spec | {"run": name, "output_dir": out})
            done = subprocess.run(
                [sys.executable, __file__, "--train-worker", spec_json],
                capture_output=True,
                text=True,
                env=child_env(),
            )
        results = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        if done.returncode != 0 or not results:
            rows.append(row | {"status": "error: " + done.stderr.strip()[-1500:]})
            continue
        rows.append(row | json.loads(results[-1][len("RESULT ") :]) | {"status": "ok"})
    by_name = {row["run"]: row for row in rows if row["status"] == "ok"}
    infosft, nll = by_name.get("InfoSFTTrainer infosft"), by_name.get("InfoSFTTrainer nll")
    trl_dft = by_name.get("TRL SFTTrainer dft")
    if infosft and nll:
        notes.append(
            f"step time infosft / nll (InfoSFTTrainer): {infosft['s/step'] / nll['s/step']:.3f}"
        )
    if infosft and trl_dft:
        ratio = infosft["s/step"] / trl_dft["s/step"]
        notes.append(f"step time InfoSFTTrainer infosft / TRL dft: {ratio:.3f}")
        if "peak GiB" in infosft:
            ratio = infosft["peak GiB"] / trl_dft["peak GiB"]
            notes.append(f"peak memory InfoSFTTrainer infosft / TRL dft: {ratio:.3f}")
    shape = spec["model"]
    notes.append(
        f"model: Qwen2 H {shape['hidden_size']}, {shape['num_hidden_layers']} layers, V "
        f"{shape['vocab_size']}, random init; batch {spec['batch']} x {spec['seq_len']} tokens; "
        f"median of {spec['steps']} steps after {spec['warmup']}; "
        + ("fp32 weights, bf16 autocast, " if args.device == "cuda" else "fp32, ")
        + "gradient checkpointing, AdamW"
    )
    return {"rows": rows, "notes": notes}


def child_env() -> dict[str, str]:
    """This process's environment, with ``src`` importable and nothing fetched from a hub."""
    path = os.pathsep.join(p for p in (str(REPO / "src"), os.environ.get("PYTHONPATH")) if p)
    return os.environ | {"PYTHONPATH": path, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


# ---- part 4: DeepSpeed ZeRO-2/3 --------------------------------------------------------------


def part_deepspeed(args: argparse.Namespace) -> dict[str, Any]:
    """tests/test_deepspeed.py (ZeRO-2 and ZeRO-3 against one process) on this machine."""
    import importlib.util
    import xml.etree.ElementTree as ET

    if importlib.util.find_spec("deepspeed") is None:
        return {"rows": [{"test": "ZeRO-2/3", "status": "skipped (deepspeed not installed)"}]}
    with tempfile.TemporaryDirectory() as work:
        report = Path(work) / "report.xml"
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                f"--junitxml={report}",
                str(REPO / "tests" / "test_deepspeed.py"),
            ],
            capture_output=True,
            text=True,
            cwd=REPO,
            env=child_env(),
        )
        if not report.exists():
            raise RuntimeError(
                f"pytest wrote no report:\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
            )
        cases = ET.parse(report).getroot().iter("testcase")
    rows = []
    for case in cases:
        problem = next((c for c in case if c.tag in ("failure", "error", "skipped")), None)
        status = "ok" if problem is None else problem.tag.replace("failure", "FAIL")
        row = {
            "test": case.get("name"),
            "seconds": float(case.get("time", "nan")),
            "status": status,
        }
        if problem is not None:
            row["error"] = (problem.get("message") or "")[:300]
        rows.append(row)
    return {"rows": rows, "notes": ["tests/test_deepspeed.py: one process per GPU, at most 2"]}


# ---- driver ----------------------------------------------------------------------------------


RUNNERS = {
    "correctness": part_correctness,
    "loss": part_loss,
    "train": part_train,
    "deepspeed": part_deepspeed,
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--parts", default=",".join(PARTS), help="comma list of " + ", ".join(PARTS)
    )
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"), help="results dir")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--tiny", action="store_true", help="tiny shapes (the CPU self-check)")
    parser.add_argument(
        "--compile",
        default=None,
        choices=["both", "on", "off"],
        help="correctness with the compiled chunk function, without, or both (default: both "
        "on CUDA, off with --tiny)",
    )
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per candidate")
    parser.add_argument("--warmup", type=int, default=None, help="untimed calls first")
    parser.add_argument("--train-worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(args.parts) - set(PARTS))
    if unknown:
        parser.error(f"unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    if args.device == "cpu" and not args.tiny:
        parser.error("--device cpu is the self-check mode: add --tiny (full shapes need a GPU)")
    args.compile = args.compile or ("off" if args.tiny else "both")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    if args.train_worker:
        print("RESULT " + json.dumps(train_worker(json.loads(args.train_worker))), flush=True)
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        print(
            f"gpu_suite.py needs a CUDA device, and torch {torch.__version__} sees none "
            "(torch.cuda.is_available() is False); run it on a GPU machine, or "
            "--device cpu --tiny for the CPU self-check",
            file=sys.stderr,
        )
        return 2
    if str(REPO / "src") not in sys.path:
        sys.path.insert(0, str(REPO / "src"))
    env = environment(args.device)
    stem = f"gpu_suite_{env['date']}_{slug(env['device'])}"
    if list(args.parts) != list(PARTS):
        stem += "_" + "-".join(args.parts)
    results = Results(Path(args.out) / stem, env, {})
    print(f"gpu_suite on {env['device']}, torch {env['torch']}: writing {results.path_stem}.*")
    for part in args.parts:
        started = time.perf_counter()
        try:
            results.parts[part] = RUNNERS[part](args)
        except Exception:
            results.parts[part] = {"status": "error", "error": traceback.format_exc()}
        results.parts[part]["seconds"] = round(time.perf_counter() - started, 1)
        results.save()
        print(markdown({"environment": env, "parts": {part: results.parts[part]}}), flush=True)
    return 1 if results.failed() else 0


if __name__ == "__main__":
    sys.exit(main())
