"""Training-step cost of InfoSFTTrainer: infosft vs nll step time, peak memory vs TRL's DFT.

Each run trains a few optimizer steps of the same model on the same token rows in its own
process (so one run's allocator cache cannot hide another's peak), and reports the median step
time after warm-up and the peak memory the training adds on top of the loaded model:
CUDA max_memory_allocated on a GPU, the process's peak resident set (VmHWM, reset just before
training) on a CPU. Targets: infosft step <= 1.02x the nll step of the same trainer,
and less peak memory than TRL's ``SFTTrainer(loss_type="dft")``.

    python benchmarks/train_bench.py                      # SmolLM2-135M, batch 2 x 256, CPU
    python benchmarks/train_bench.py --batch-size 8 --seq-len 1024 --bf16   # on a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

RUNS = {
    "infosft-nll": ("InfoSFTTrainer", "nll"),
    "infosft-infosft": ("InfoSFTTrainer", "infosft"),
    "trl-dft": ("SFTTrainer", "dft"),
    "trl-nll": ("SFTTrainer", "nll"),
}
DEFAULT_RUNS = ["infosft-nll", "infosft-infosft", "trl-dft"]


def token_rows(tokenizer, num_rows: int, seq_len: int) -> list[dict[str, list[int]]]:
    """``num_rows`` rows of ``seq_len`` tokens cut from chat-formatted two-digit additions.

    Real text rather than random ids: InfoSFT skips the gradient of tokens it already predicts
    (q >= p_bar), and a template the model partly knows has such tokens, as real data does.
    """
    stream: list[int] = []
    a = 0
    while len(stream) < num_rows * seq_len:
        a += 1
        x, y = 10 + (a * 37) % 90, 10 + (a * 53) % 90
        messages = [
            {"role": "user", "content": f"What is {x} + {y}?"},
            {"role": "assistant", "content": f"{x} + {y} = {x + y}. The answer is {x + y}."},
        ]
        stream += tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False)
    return [{"input_ids": stream[i * seq_len : (i + 1) * seq_len]} for i in range(num_rows)]


def peak_rss_reset() -> None:
    """Reset the kernel's peak-resident-set mark (VmHWM) of this process (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def rss_kib(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def worker(args: argparse.Namespace) -> dict[str, float]:
    """Train one run in this process and return its timings and peak memory."""
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from infosft.models import load_model_and_tokenizer
    from infosft.training import RunSpec, build_trainer

    trainer_name, method = RUNS[args.worker]
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = torch.cuda.is_available() and not args.cpu
    model, tokenizer = load_model_and_tokenizer(args.model, dtype="float32")
    rows = token_rows(tokenizer, args.batch_size * (args.warmup + args.steps), args.seq_len)

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
    with tempfile.TemporaryDirectory() as out:
        options = {
            "output_dir": out,
            "per_device_train_batch_size": args.batch_size,
            "max_steps": args.warmup + args.steps,
            "max_length": args.seq_len,
            "learning_rate": 1e-5,
            "bf16": args.bf16,
            "use_cpu": not cuda,
            "gradient_checkpointing": not args.no_gradient_checkpointing,
            "shuffle_dataset": False,
            "logging_steps": 10**6,
            "save_strategy": "no",
            "report_to": [],
            "disable_tqdm": True,
        }
        if trainer_name == "InfoSFTTrainer":
            spec = RunSpec.from_dict({**options, "method": method, "data": Dataset.from_list(rows)})
            trainer = build_trainer(spec, model=model, tokenizer=tokenizer, callbacks=[timer])
        else:
            trainer = SFTTrainer(
                model=model,
                args=SFTConfig(**options, loss_type=method),
                train_dataset=Dataset.from_list(rows),
                processing_class=tokenizer,
                callbacks=[timer],
            )
        if cuda:
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        else:
            base = rss_kib("VmRSS") * 1024
            peak_rss_reset()
        trainer.train()
        peak = torch.cuda.max_memory_allocated() if cuda else rss_kib("VmHWM") * 1024
    step = statistics.median(timer.times[args.warmup :])
    return {
        "step_s": step,
        "tokens_per_s": args.batch_size * args.seq_len / step,
        "peak_extra_mib": (peak - base) / 2**20,
        "device": torch.cuda.get_device_name() if cuda else f"cpu x{torch.get_num_threads()}",
    }


def run_in_subprocess(name: str, args: argparse.Namespace) -> dict[str, float]:
    command = [sys.executable, os.path.abspath(__file__), "--worker", name]
    for key in ("model", "batch_size", "seq_len", "steps", "warmup", "threads"):
        command += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    for flag in ("bf16", "cpu", "no_gradient_checkpointing"):
        if getattr(args, flag):
            command.append(f"--{flag.replace('_', '-')}")
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    raise RuntimeError(f"run {name} failed:\n{done.stderr[-3000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--steps", type=int, default=3, help="timed optimizer steps per run")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--repeats", type=int, default=1, help="rounds over all runs")
    parser.add_argument("--runs", nargs="+", default=DEFAULT_RUNS, choices=list(RUNS))
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    parser.add_argument("--bf16", action="store_true", help="bf16 mixed precision")
    parser.add_argument("--cpu", action="store_true", help="stay on the CPU with a GPU present")
    parser.add_argument("--no-gradient-checkpointing", action="store_true")
    parser.add_argument("--worker", choices=list(RUNS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(args)), flush=True)
        return

    results: dict[str, list[dict[str, float]]] = {name: [] for name in args.runs}
    for _ in range(args.repeats):
        for name in args.runs:
            results[name].append(run_in_subprocess(name, args))
    device = next(iter(results.values()))[0]["device"]
    precision = "bf16" if args.bf16 else "fp32"
    print(
        f"{args.model} on {device}, {precision}, batch {args.batch_size} x {args.seq_len} tokens, "
        f"median of {args.steps} steps after {args.warmup} warm-up, {args.repeats} round(s)"
    )
    print(f"{'run':<18}{'s/step':>10}{'tokens/s':>10}{'peak MiB':>10}")
    summary = {}
    for name, runs in results.items():
        step = statistics.median(r["step_s"] for r in runs)
        peak = max(r["peak_extra_mib"] for r in runs)
        summary[name] = (step, peak)
        print(f"{name:<18}{step:>10.3f}{args.batch_size * args.seq_len / step:>10.0f}{peak:>10.0f}")
    if {"infosft-nll", "infosft-infosft"} <= summary.keys():
        ratio = summary["infosft-infosft"][0] / summary["infosft-nll"][0]
        print(f"step time  infosft / nll (InfoSFTTrainer): {ratio:.3f}  (target <= 1.02)")
    if {"infosft-infosft", "trl-dft"} <= summary.keys():
        ratio = summary["infosft-infosft"][1] / summary["trl-dft"][1]
        print(f"peak memory  InfoSFTTrainer infosft / TRL dft: {ratio:.3f}  (target < 1)")


if __name__ == "__main__":
    main()
