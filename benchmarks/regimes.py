"""Where each built-in task sits on the weak-prior / strong-prior axis, under the base model.

    python benchmarks/regimes.py [--tasks arith_chain word_problems] [--n-test 100]
                                 [--n-scored 64] [--dtype float32]

For each generated task it prints the base model's held-out accuracy (greedy, the task's own
scorer, with a Wilson interval) and, for the first ``--n-scored`` training demonstrations, the
statistics of q (the base model's probability of each target token, read through the trainer's
own data preparation): median, share with q >= 0.93 (InfoSFT weight 0), share with q < 0.05,
target tokens per demonstration, and the share of each method's logit-gradient mass
``2 w (1 - q)`` per q bin (see ``infosft.experiments.diagnostics``). It then scores the
built-in retention probes (``infosft.experiments.probes``) with the base model, batched greedy
answers as every tuned model is scored, and prints how many the base gets right and the time.
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", nargs="+", default=["arith_chain", "word_problems"])
    parser.add_argument("--model", default=None, help="default: the embedded SmolLM2-135M")
    parser.add_argument("--n-test", type=int, default=100)
    parser.add_argument("--n-scored", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=50, help="prompts per generate call")
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()

    import torch

    from infosft.evaluation import evaluate
    from infosft.evaluation.metrics import wilson_interval
    from infosft.experiments import GENERATED_TASKS, probes
    from infosft.experiments.diagnostics import mass_shares
    from infosft.experiments.inspect import q_summary, score_rows, scored_log_probs
    from infosft.models import DEFAULT_MODEL, load_model_and_tokenizer

    torch.manual_seed(0)
    model, tokenizer = load_model_and_tokenizer(args.model or DEFAULT_MODEL, dtype=args.dtype)
    model.eval()
    methods = ("nll", "dft", "infosft")
    rows_out = []
    for name in args.tasks:
        task = GENERATED_TASKS[name]
        train, test = task.split(args.n_scored, args.n_test, seed=0, test_seed=0)
        start = time.perf_counter()
        result = evaluate(
            model, tokenizer, task.evaluation_task(test, batch_size=args.batch_size), progress=False
        )
        seconds = time.perf_counter() - start
        correct = round(result["metrics"]["acc@1"] * len(test))
        low, high = wilson_interval(correct, len(test))
        scored = score_rows(model, tokenizer, [task.sft_example(p) for p in train])
        log_q = scored_log_probs(scored)
        stats = q_summary(log_q)
        shares = mass_shares(log_q, methods)
        rows_out.append((name, correct, len(test), low, high, seconds, stats, shares, len(train)))
        print(f"{name}: first held-out answer of the base: {result['samples'][0]['completion']!r}")

    print(
        f"\nbase model {args.model or DEFAULT_MODEL} ({args.dtype}); held-out greedy accuracy, "
        f"q of the target tokens of {args.n_scored} training demonstrations\n"
    )
    header = (
        f"{'task':15} {'base acc':>8} {'95% CI':>13} {'gen s':>6} {'tok/demo':>8} "
        f"{'median q':>8} {'q>=0.93':>8} {'q<0.05':>7} "
        + " ".join(f"{'w̄ ' + m:>9}" for m in methods)
    )
    print(header)
    for name, correct, n, low, high, seconds, stats, shares, n_demos in rows_out:
        print(
            f"{name:15} {correct / n:8.3f} {f'{low:.2f}-{high:.2f}':>13} {seconds:6.0f} "
            f"{stats['num_target_tokens'] / n_demos:8.1f} {stats['median_q']:8.3f} "
            f"{stats['share_q_ge_p_bar']:8.3f} {stats['share_q_lt_low']:7.3f} "
            + " ".join(f"{shares['mean_weight'][m]:9.3f}" for m in methods)
        )
    start = time.perf_counter()
    records = probes.probe_records(model, tokenizer, probes.PROBES)
    seconds = time.perf_counter() - start
    right = sum(r["passed"] for r in records)
    print(
        f"\nprobes: the base answers {right} of {len(records)} correctly (retention items); "
        f"scoring all of them took {seconds:.1f} s (batched greedy, 24 new tokens)"
    )
    missed = [p.question for p, r in zip(probes.PROBES, records, strict=True) if not r["passed"]]
    print("missed:", "; ".join(missed))
    print("\nshare of tokens and of each method's logit-gradient mass 2w(1-q) per q bin")
    for name, *_, shares, _n in rows_out:
        labels = list(shares["tokens"])
        print(f"{name:15} {'':9}" + " ".join(f"{label:>13}" for label in labels))
        for key in ("tokens", *methods):
            print(f"{'':15} {key:9}" + " ".join(f"{shares[key][b]:13.3f}" for b in labels))


if __name__ == "__main__":
    main()
