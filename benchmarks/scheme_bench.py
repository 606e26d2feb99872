"""Forward+backward time and peak extra memory of every weighting scheme against ``nll``.

All schemes run through ``infosft.fused_weighted_nll_loss`` on the same random LM-head problem
(SmolLM2-135M's head by default: H 576, V 49152, 2048 target tokens, float32, CPU), side by
side in one run, and are reported as ratios to ``nll`` measured in the same run.
Targets: every per-token scheme within 1.10x of ``nll``, the KL anchor within 1.6x.

Candidates: each registered scheme at its defaults, and the KL anchor
(``kl_to_base=0.1``, a base model whose hidden states and head differ from the trained ones)
on ``nll`` ("SFT-KL") and ``dft`` (ASFT).

Time: median wall time of --repeats calls of loss + backward (gradients of hidden and W), after
--warmup calls, candidates interleaved (a, b, c, a, b, c, ...) so that load from other processes
hits them alike; also the median process CPU time (all threads), steadier when the cores are
shared.

Peak extra memory: each candidate runs once in a fresh subprocess that builds the inputs,
warms the code path up on a tiny problem, resets the kernel's peak-RSS counter (VmHWM, via
/proc/self/clear_refs), runs one full-size call and reports peak resident memory minus the
resident memory just before it (the gradients of hidden and W, the same for all, included).

Example (under the heavy-job lock on the shared machine):
    flock /tmp/infosft-heavy.lock python benchmarks/scheme_bench.py
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import time

import torch

from infosft.losses.fused import fused_weighted_nll_loss, score_targets
from infosft.objectives import available_schemes, get_scheme

KL_BETA = 0.1
KL_CANDIDATES = {"nll+kl": "nll", "dft+kl (ASFT)": "dft"}


def candidates() -> dict[str, tuple[str, float]]:
    """name -> (method, kl_to_base)."""
    plain = {method: (method, 0.0) for method in available_schemes()}
    return plain | {name: (method, KL_BETA) for name, method in KL_CANDIDATES.items()}


def what_it_adds(method: str, beta: float) -> str:
    if beta:
        return "base head streamed beside the trained one"
    scheme = get_scheme(method)
    if scheme.top_k is not None:
        return f"top-{scheme.top_k} of every logits row"
    if scheme.needs_batch_statistic:
        return "first pass for log q (tau)"
    if scheme.self_normalised:
        return "divides by its weight sum"
    return "per-token weight"


def make_inputs(hidden_size: int, vocab: int, tokens: int, seed: int = 0) -> dict:
    """Trained hidden [1, tokens + 1, H] and W [V, H] (need grad), a base model's, labels.

    W ~ N(0, 1/H) gives logits of unit spread; each hidden row is then pushed along its
    target's row of W so that the target's logit rises by a margin drawn uniformly from
    [0, 25]: q spreads from about 1e-5 to 1 as in fine-tuning data, so that zero weights,
    tiny weights and confident tokens all occur (the schemes' costs depend on them).
    """
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(vocab, hidden_size, generator=gen) / hidden_size**0.5
    labels = torch.randint(0, vocab, (1, tokens + 1), generator=gen)
    hidden = torch.randn(1, tokens + 1, hidden_size, generator=gen)
    target_rows = weight[labels[0, 1:]]
    margin = 25.0 * torch.rand(tokens, 1, generator=gen)
    hidden[0, :-1] += margin * target_rows / target_rows.pow(2).sum(1, keepdim=True)
    base_hidden = hidden + 0.1 * torch.randn(hidden.shape, generator=gen)
    base_weight = weight + 0.1 * torch.randn(weight.shape, generator=gen) / hidden_size**0.5
    return {
        "hidden": hidden.requires_grad_(),
        "weight": weight.requires_grad_(),
        "base_hidden": base_hidden,
        "base_weight": base_weight,
        "labels": labels,
    }


def describe_q(inputs: dict) -> str:
    """Quantiles of the targets' q under the trained head, for the table's header."""
    scores = score_targets(inputs["hidden"].detach(), inputs["weight"].detach(), inputs["labels"])
    q = scores.log_probs[0, 1:].exp()
    share = {f"q<{t:g}": float((q < t).float().mean()) for t in (1e-4, 0.5)}
    share["q>=0.93"] = float((q >= 0.93).float().mean())
    parts = [f"median q {float(q.median()):.2f}"] + [f"{k} {v:.0%}" for k, v in share.items()]
    return ", ".join(parts)


def run_once(method: str, beta: float, inputs: dict) -> None:
    inputs["hidden"].grad = inputs["weight"].grad = None
    base = {}
    if beta:
        base = {
            "base_hidden_states": inputs["base_hidden"],
            "base_lm_head_weight": inputs["base_weight"],
            "kl_to_base": beta,
        }
    loss = fused_weighted_nll_loss(
        inputs["hidden"], inputs["weight"], inputs["labels"], method=method, **base
    )
    loss.backward()


def time_all(names: list[str], inputs: dict, warmup: int, repeats: int) -> tuple[dict, dict]:
    """Median wall and process-CPU seconds per call, candidates interleaved."""
    table = candidates()
    wall: dict = {name: [] for name in names}
    cpu: dict = {name: [] for name in names}
    for step in range(warmup + repeats):
        for name in names:
            gc.collect()
            start, start_cpu = time.perf_counter(), time.process_time()
            run_once(*table[name], inputs)
            if step >= warmup:
                wall[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - start_cpu)
    median = statistics.median
    return {k: median(v) for k, v in wall.items()}, {k: median(v) for k, v in cpu.items()}


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        return int(next(line.split()[1] for line in status if line.startswith(field + ":")))


def child_peak_extra(spec: dict) -> int:
    """In a fresh process: peak resident bytes of one full-size call above those before it."""
    method, beta = candidates()[spec["name"]]
    run_once(method, beta, make_inputs(32, 64, 16))
    inputs = make_inputs(spec["hidden"], spec["vocab"], spec["tokens"])
    gc.collect()
    # Linux: "5" resets the peak (VmHWM) to the current resident set.
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")
    before = _status_kib("VmRSS")
    run_once(method, beta, inputs)
    return (_status_kib("VmHWM") - before) * 1024


def peak_extra(name: str, args: argparse.Namespace) -> int:
    spec = {"name": name, "hidden": args.hidden, "vocab": args.vocab, "tokens": args.tokens}
    out = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec)],
        check=True,
        capture_output=True,
        text=True,
    )
    return int(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=576, help="H (SmolLM2-135M: 576)")
    parser.add_argument("--vocab", type=int, default=49152, help="V (SmolLM2-135M: 49152)")
    parser.add_argument("--tokens", type=int, default=2048, help="target tokens")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--only", nargs="+", default=None, help="candidates (nll is always in)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(child_peak_extra(json.loads(args.child)))
        return 0

    table = candidates()
    names = list(table) if args.only is None else ["nll", *(n for n in args.only if n != "nll")]
    unknown = [n for n in names if n not in table]
    if unknown:
        parser.error(f"unknown candidates {unknown}; known: {', '.join(table)}")
    inputs = make_inputs(args.hidden, args.vocab, args.tokens)
    wall, cpu = time_all(names, inputs, args.warmup, args.repeats)
    memory = {name: peak_extra(name, args) for name in names}

    print(
        f"scheme_bench: H={args.hidden} V={args.vocab} tokens={args.tokens} float32 cpu, "
        f"torch threads {torch.get_num_threads()}, median of {args.repeats} (fwd+bwd)"
    )
    print(f"targets: {describe_q(inputs)}")
    header = (
        f"{'scheme':<15}{'what it adds':<43}{'time s':>8}{'x nll':>7}{'cpu x nll':>10}"
        f"{'peak MiB':>10}{'x nll':>7}{'target':>8}  met"
    )
    print(header)
    print("-" * len(header))
    for name in names:
        method, beta = table[name]
        target = 1.6 if beta else 1.10
        ratio = wall[name] / wall["nll"]
        met = "yes" if ratio <= target else "NO"
        print(
            f"{name:<15}{what_it_adds(method, beta):<43}{wall[name]:>8.3f}{ratio:>7.2f}"
            f"{cpu[name] / cpu['nll']:>10.2f}{memory[name] / 2**20:>10.0f}"
            f"{memory[name] / memory['nll']:>7.2f}{target:>8.2f}  {met}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
