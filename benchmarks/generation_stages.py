"""Greedy generation in stages (finished rows leave the batch) against one generate call.

    python benchmarks/generation_stages.py [--n-test 32] [--steps 3]

On the embedded SmolLM2-135M-Instruct, one run, side by side: the held-out word problems
(max 96 new tokens, one batch) answered greedily by the base model (long, chatty answers) and
by copies fine-tuned for ``--steps`` steps of plain SFT on the terse demonstrations at the
demo's three learning rates (as its cells are: answers of mixed lengths), each with one
``generate`` call for the whole budget and with ``infosft.evaluation.generation``'s stages.
Prints seconds, the ratio and how many answers are identical.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time


def fine_tuned(model, tokenizer, rows, steps, learning_rate):
    from datasets import Dataset

    from infosft.training import RunSpec, build_trainer

    with tempfile.TemporaryDirectory(prefix="infosft-stages-") as scratch:
        spec = RunSpec.from_dict(
            {
                "method": "nll",
                "learning_rate": learning_rate,
                "per_device_train_batch_size": 8,
                "max_steps": steps,
                "warmup_steps": 0,
                "output_dir": scratch,
                "data": Dataset.from_list(rows),
                "save_strategy": "no",
                "report_to": "none",
                "disable_tqdm": True,
            }
        )
        trainer = build_trainer(spec, model=copy.deepcopy(model), tokenizer=tokenizer)
        trainer.train()
        return trainer.model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-test", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()

    import datasets
    import torch

    from infosft.evaluation import generation
    from infosft.evaluation.generation import generate
    from infosft.evaluation.runner import with_overrides
    from infosft.experiments import GENERATED_TASKS
    from infosft.models import DEFAULT_MODEL, load_model_and_tokenizer

    datasets.disable_progress_bars()
    torch.manual_seed(0)
    model, tokenizer = load_model_and_tokenizer(DEFAULT_MODEL, dtype="float32")
    model.eval()
    task = GENERATED_TASKS["word_problems"]
    train, test = task.split(8 * args.steps, args.n_test, seed=0)
    evaluation = task.evaluation_task(test)
    settings = with_overrides(evaluation.generation, batch_size=max(args.n_test, 1))
    prompts = [evaluation.prompt(item) for item in evaluation.items]
    rows = [task.sft_example(p) for p in train]

    def tuned(lr):
        return fine_tuned(model, tokenizer, rows, args.steps, lr)

    models = [("base", model)] + [
        (f"{args.steps} steps of SFT at lr {lr:g}", tuned(lr)) for lr in (3e-5, 1e-4, 3e-4)
    ]
    staged_first = generation.FIRST_STAGE_TOKENS
    print(
        f"{args.n_test} held-out word problems, greedy, up to {settings.max_new_tokens} new "
        f"tokens, one batch; stages of {staged_first}, {2 * staged_first}, ... tokens"
    )
    print(f"  {'model':34} {'one call':>9} {'stages':>9} {'ratio':>7}  identical answers")
    for label, lm in models:
        seconds, answers = {}, {}
        for name, first in (("one call", settings.max_new_tokens), ("stages", staged_first)):
            generation.FIRST_STAGE_TOKENS = first
            start = time.perf_counter()
            answers[name] = generate(lm, tokenizer, prompts, settings, progress=False)
            seconds[name] = time.perf_counter() - start
        generation.FIRST_STAGE_TOKENS = staged_first
        same = sum(a == b for a, b in zip(answers["one call"], answers["stages"], strict=True))
        print(
            f"  {label:34} {seconds['one call']:8.1f}s {seconds['stages']:8.1f}s "
            f"{seconds['stages'] / seconds['one call']:6.2f}x  {same}/{len(prompts)}",
            flush=True,
        )


if __name__ == "__main__":
    main()
