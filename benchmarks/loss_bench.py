"""Forward+backward time and peak extra memory of four ways to compute the InfoSFT loss.

Candidates, side by side in one run, on the same random LM-head problem (all tokens are targets,
the least favourable case for skipping anything):

  (a) full logits   the authors' approach: logits = hidden @ W.T for every position, then
                    infosft.weighted_nll_loss (float32 log-softmax over the [B, T, V] logits)
  (b) TRL chunked   trl.kernels.ChunkedLogProbFunction (TRL 1.16's fused LM head) for log q,
                    then -sum(w(q) * log q) / N; its backward recomputes every logits tile
  (c) Liger DFT     liger-kernel's fused linear cross-entropy with use_token_scaling=True (DFT,
                    w = q; Liger has no per-token weight argument). CUDA only
  (d) ours          infosft.fused_weighted_nll_loss
  floor             the three matmuls alone (logits, grad of hidden, grad of W) at the same
                    shapes, into output buffers allocated once: the time no exact method can
                    beat; not a loss

Time: median wall time of --repeats calls of loss + backward (gradients of hidden and W), after
--warmup calls; on CPU also the median process CPU time (all threads), steadier than wall time
when other processes share the cores. Candidates are interleaved (a, b, d, a, b, d, ...) so
that load from other processes hits them alike; on CUDA every call is bracketed by
synchronize().

Memory: "peak" is the memory one call holds at its peak above what was held before it; on
CUDA max_memory_allocated() during the call minus memory_allocated() before it. On CPU each
candidate runs once in a fresh subprocess: it builds the inputs, warms the code path up on a
tiny problem (libraries and thread pools loaded, high-water mark barely touched), resets the
kernel's peak-RSS counter (VmHWM, via /proc/self/clear_refs; ru_maxrss where that is not
allowed), runs one full-size call, and reports the peak resident memory minus the resident
memory just before the call (allocator slack and library workspaces included). "extra" is that
peak minus the gradients every method must return (of hidden states and W, in the inputs'
dtype): the memory the method itself needs, and the column the ratios compare.

Default: Qwen2.5-0.5B's head (H 896, V 151936) at 512, 2048 and 8192 target tokens, and
SmolLM2-135M's (H 576, V 49152) at 2048; about 25 minutes on 2 cores (full logits at 8192 tokens
need about 14 GB). Examples:
    python benchmarks/loss_bench.py --shapes qwen2.5-0.5b --tokens 512,2048
    python benchmarks/loss_bench.py --shapes smollm2-135m --tokens 2048 --repeats 5
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch

from infosft.losses.chunking import rows_per_chunk
from infosft.losses.fused import fused_weighted_nll_loss
from infosft.losses.reference import weighted_nll_loss, weighted_sum
from infosft.objectives import token_weights

SHAPES = {"smollm2-135m": (576, 49152), "qwen2.5-0.5b": (896, 151936)}
CPU_TOKENS = {"smollm2-135m": [2048], "qwen2.5-0.5b": [512, 2048, 8192]}
CUDA_TOKENS = {"smollm2-135m": [16384], "qwen2.5-0.5b": [8192]}
TRL_VOCAB_TILE = 32768  # trl.trainer.utils._CHUNKED_LOGPROB_CHUNK_SIZE in TRL 1.16
CANDIDATES = ("full", "trl", "liger", "ours")
LABELS = {
    "full": "(a) full logits",
    "trl": "(b) TRL chunked",
    "liger": "(c) Liger DFT",
    "ours": "(d) ours",
    "floor": "3 matmuls alone",
}


def make_inputs(
    hidden_size: int, vocab: int, tokens: int, dtype: torch.dtype, device: str, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """hidden [1, tokens + 1, H] and W [V, H] (leaves that need grad), labels [1, tokens + 1].

    W ~ N(0, 0.02) as at LM initialisation; after the causal shift there are ``tokens`` targets.
    """
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(1, tokens + 1, hidden_size, generator=gen).to(device, dtype)
    weight = (0.02 * torch.randn(vocab, hidden_size, generator=gen)).to(device, dtype)
    labels = torch.randint(0, vocab, (1, tokens + 1), generator=gen).to(device)
    return hidden.requires_grad_(), weight.requires_grad_(), labels


def loss_fn(name: str, method: str, chunk_size: int | None) -> Callable[..., torch.Tensor]:
    """fn(hidden, weight, labels) -> scalar loss of candidate ``name``."""
    if name == "full":
        return lambda h, w, y: weighted_nll_loss(h @ w.t(), y, method=method)
    if name == "ours":
        return lambda h, w, y: fused_weighted_nll_loss(
            h, w, y, method=method, chunk_size=chunk_size
        )
    if name == "trl":
        from trl.kernels import ChunkedLogProbFunction

        def trl_loss(h, w, y):
            rows, targets = h[:, :-1].reshape(-1, h.shape[-1]), y[:, 1:].reshape(-1)
            log_probs = ChunkedLogProbFunction.apply(
                rows, w, None, targets, 1.0, TRL_VOCAB_TILE, None, 1.0, ()
            )[0]
            weights = token_weights(log_probs, method)
            return -weighted_sum(weights, log_probs) / targets.numel()

        return trl_loss
    if name == "liger":
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

        liger = LigerFusedLinearCrossEntropyLoss(use_token_scaling=True)

        def liger_loss(h, w, y):
            out = liger(w, h[:, :-1].reshape(-1, h.shape[-1]), y[:, 1:].reshape(-1))
            return getattr(out, "loss", out)

        return liger_loss
    if name == "floor":
        buffers: dict = {}

        def three_matmuls(h, w, y):
            rows, w = h.detach()[0, :-1], w.detach()
            if not buffers:
                buffers["logits"] = rows.new_empty(rows.shape[0], w.shape[0])
                buffers["rows"], buffers["w"] = torch.empty_like(rows), torch.empty_like(w)
            torch.mm(rows, w.t(), out=buffers["logits"])
            torch.mm(buffers["logits"], w, out=buffers["rows"])
            torch.mm(buffers["logits"].t(), rows, out=buffers["w"])

        return three_matmuls
    raise ValueError(f"unknown candidate {name!r}")


def run_once(fn: Callable, hidden, weight, labels) -> None:
    hidden.grad = weight.grad = None
    loss = fn(hidden, weight, labels)
    if loss is not None:
        loss.backward()


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def available(name: str, device: str) -> str | None:
    """None when the candidate can run here, else why not."""
    if name == "liger":
        if device != "cuda":
            return "n/a (CUDA only)"
        try:
            import liger_kernel.transformers  # noqa: F401
        except ImportError:
            return "n/a (liger-kernel not installed)"
    return None


def time_candidates(
    names: list, fns: dict, inputs, device: str, warmup: int, repeats: int
) -> tuple[dict, dict]:
    """Median wall seconds and median process CPU seconds per call, candidates interleaved."""
    wall: dict = {name: [] for name in names}
    cpu: dict = {name: [] for name in names}
    for step in range(warmup + repeats):
        for name in names:
            gc.collect()
            sync(device)
            start, start_cpu = time.perf_counter(), time.process_time()
            run_once(fns[name], *inputs)
            sync(device)
            if step >= warmup:
                wall[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - start_cpu)
    median = statistics.median
    return {k: median(v) for k, v in wall.items()}, {k: median(v) for k, v in cpu.items()}


def cuda_peak_extra(fn: Callable, inputs) -> int:
    gc.collect()
    torch.cuda.synchronize()
    inputs[0].grad = inputs[1].grad = None
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    run_once(fn, *inputs)
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        return int(next(line.split()[1] for line in status if line.startswith(field + ":")))


def child_peak_extra(spec: dict) -> int:
    """In a fresh process: peak resident memory of one full-size call above the resident memory
    before it (see the module docstring), in bytes."""
    fn = loss_fn(spec["name"], spec["method"], spec["chunk_size"])
    dtype = getattr(torch, spec["dtype"])
    run_once(fn, *make_inputs(32, 64, 16, dtype, "cpu"))
    inputs = make_inputs(spec["hidden"], spec["vocab"], spec["tokens"], dtype, "cpu")
    gc.collect()
    try:
        # Linux: "5" resets the peak (VmHWM) to the current resident set.
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        before = _status_kib("VmRSS")
        run_once(fn, *inputs)
        return (_status_kib("VmHWM") - before) * 1024
    except OSError:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        run_once(fn, *inputs)
        return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024


def cpu_peak_extra(spec: dict) -> int:
    result = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec)],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(result.stdout.strip().splitlines()[-1])


def bench_shape(args: argparse.Namespace, shape: str, tokens: int) -> list[str]:
    hidden_size, vocab = SHAPES[shape] if shape in SHAPES else map(int, shape.split("x"))
    device, dtype = args.device, getattr(torch, args.dtype)
    flops = 6 * tokens * hidden_size * vocab
    variants = [("ours", c) for c in args.chunk_sizes] or [("ours", None)]
    keys = [("full", None), ("trl", None), ("liger", None), *variants, ("floor", None)]
    keys = [k for k in keys if k[0] in args.candidates]
    label = {k: LABELS[k[0]] + (f" c={k[1]}" if k[1] else "") for k in keys}
    skipped = {k: available(k[0], device) for k in keys}
    runnable = [k for k in keys if skipped[k] is None]
    fns = {k: loss_fn(k[0], args.method, k[1]) for k in runnable}
    inputs = make_inputs(hidden_size, vocab, tokens, dtype, device)
    seconds, cpu_seconds = time_candidates(runnable, fns, inputs, device, args.warmup, args.repeats)
    memory: dict = {}
    for key in runnable:
        if args.no_memory or key[0] == "floor":
            continue
        if device == "cuda":
            memory[key] = cuda_peak_extra(fns[key], inputs)
        else:
            spec = {"name": key[0], "chunk_size": key[1], "method": args.method}
            spec |= {"hidden": hidden_size, "vocab": vocab, "tokens": tokens, "dtype": args.dtype}
            memory[key] = cpu_peak_extra(spec)

    base = ("full", None)
    cpu = device == "cpu"
    # Gradients of hidden [1, tokens + 1, H] and W [V, H] that every candidate returns.
    grads = ((tokens + 1) * hidden_size + vocab * hidden_size) * dtype.itemsize
    extra = {key: value - grads for key, value in memory.items()}
    plan = rows_per_chunk(tokens, vocab, torch.device(device))
    lines = [
        f"\n{shape}: H={hidden_size} V={vocab} tokens={tokens} {args.dtype} {device} "
        f"method={args.method} (median of {args.repeats}; 6NHV = {flops / 1e9:.1f} GFLOP; "
        f"chunk plan {plan} rows; gradients {grads / 2**20:.0f} MiB)",
        f"{'candidate':24s} {'time ms':>9s} {'x (a)':>6s}"
        + (f" {'cpu ms':>9s} {'x (a)':>6s}" if cpu else "")
        + f" {'TFLOP/s':>8s} {'peak MiB':>9s} {'extra MiB':>9s} {'x (a)':>6s}",
    ]
    for key in keys:
        if skipped[key]:
            lines.append(f"{label[key]:24s} {skipped[key]}")
            continue
        t = seconds[key]
        row = f"{label[key]:24s} {t * 1e3:9.0f} {t / seconds[base]:6.2f}"
        if cpu:
            row += f" {cpu_seconds[key] * 1e3:9.0f} {cpu_seconds[key] / cpu_seconds[base]:6.2f}"
        row += f" {flops / t / 1e12:8.3f}"
        if key in memory:
            ratio = extra[key] / max(extra[base], 1)
            row += f" {memory[key] / 2**20:9.0f} {extra[key] / 2**20:9.0f} {ratio:6.2f}"
        lines.append(row)
    ours = next(k for k in keys if k[0] == "ours")
    if ("trl", None) in seconds:
        lines.append(f"ours / TRL time: {seconds[ours] / seconds[('trl', None)]:.2f}")
    if ("floor", None) in seconds:
        lines.append(f"ours / 3 matmuls alone: {seconds[ours] / seconds[('floor', None)]:.2f}")
    if args.peak_tflops:
        share = flops / seconds[ours] / 1e12 / args.peak_tflops
        lines.append(f"ours at {share:.0%} of {args.peak_tflops} TFLOP/s")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--shapes",
        default="qwen2.5-0.5b,smollm2-135m",
        help=f"comma list of {', '.join(SHAPES)} or HxV, e.g. 4096x151936",
    )
    parser.add_argument(
        "--tokens",
        default=None,
        help="comma list of target tokens per call (default: per shape and device)",
    )
    parser.add_argument(
        "--dtype",
        default=None,
        choices=["float32", "bfloat16", "float16"],
        help="default: float32 on CPU, bfloat16 on CUDA",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--method", default="infosft")
    parser.add_argument("--repeats", type=int, default=None, help="default: 3 CPU, 20 CUDA")
    parser.add_argument("--warmup", type=int, default=None, help="default: 1 CPU, 5 CUDA")
    parser.add_argument(
        "--chunk-sizes",
        default="",
        help="comma list: time ours at each chunk size instead of the default",
    )
    parser.add_argument(
        "--candidates",
        default=",".join([*CANDIDATES, "floor"]),
        help="comma list of the candidates to run (default: all)",
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the memory measurement")
    parser.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="device peak (e.g. 989 for H100 SXM bf16 dense) to print a share",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(child_peak_extra(json.loads(args.child)))
        return
    cuda = args.device == "cuda"
    args.dtype = args.dtype or ("bfloat16" if cuda else "float32")
    args.repeats = args.repeats or (20 if cuda else 3)
    args.warmup = args.warmup if args.warmup is not None else (5 if cuda else 1)
    args.chunk_sizes = [int(c) for c in args.chunk_sizes.split(",") if c]
    args.candidates = args.candidates.split(",")
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}"
        + (f" ({torch.cuda.get_device_name()})" if cuda else "")
    )
    given = [int(t) for t in args.tokens.split(",")] if args.tokens else None
    for shape in args.shapes.split(","):
        for tokens in given or (CUDA_TOKENS if cuda else CPU_TOKENS).get(shape, [1024]):
            for line in bench_shape(args, shape, tokens):
                print(line, flush=True)


if __name__ == "__main__":
    main()
