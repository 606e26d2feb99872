"""Forgetting: a tuned model against its base model, measured by :func:`compare_to_base` for
``infosft eval --base-model`` and every grid cell alike (the same keys and values):

(a) accuracy on the new task (first completion) and its change from the base;
(b) retention: on prior-capability items the base model answers right (first completion), the
    share the tuned model still answers right, with a Wilson interval;
(c) KL(base || tuned) per token, exact over the vocabulary, on the base model's own samples for
    general prompts (how far the tuned model moved where the base model puts its mass);
(d) NLL per token of general text under the tuned model, and its change from the base.

The base model's side of (c) and (d) is measured once (:func:`measure_base_general`,
:class:`KLReference`) for any number of tuned models.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from infosft.distributed import gather, my_batches
from infosft.evaluation.generation import Prompt, SamplingSettings, generate, render_prompt
from infosft.evaluation.metrics import wilson_interval
from infosft.losses import IGNORE_INDEX, target_log_probs
from infosft.models import pad_right

# The base model's samples that KL is measured on: one per general prompt, sampled at
# temperature 1 with a fixed seed (not a task's), so every task and every run shares them.
GENERAL_SAMPLE_TOKENS = 48
GENERAL_SAMPLE_SEED = 0


def first_samples(records: Sequence[dict[str, Any]]) -> dict[str, bool]:
    """``passed`` of the first sample of each task id."""
    first: dict[str, bool] = {}
    for r in records:
        first.setdefault(r["task_id"], bool(r["passed"]))
    return first


def share_correct(correct: Mapping[str, bool]) -> float | None:
    """The share of items answered right (None for no items)."""
    return sum(correct.values()) / len(correct) if correct else None


def retention(
    base_correct: Mapping[str, bool], tuned_correct: Mapping[str, bool]
) -> dict[str, float | int | None]:
    """Of the items the base model answers right (``base_correct`` of them), the share the
    tuned model still answers right (None for none) and its Wilson interval. Both map item id
    to first completion correct; ``tuned_correct`` needs only the items the base gets right."""
    known = [item for item, ok in base_correct.items() if ok]
    missing = [item for item in known if item not in tuned_correct]
    if missing:
        raise ValueError(
            f"base and tuned results cover different items (the tuned model lacks {missing[0]!r}); "
            "score both models on the same items"
        )
    kept = sum(bool(tuned_correct[item]) for item in known)
    low, high = wilson_interval(kept, len(known))
    return {
        "retention": kept / len(known) if known else None,
        "retention_ci_low": low,
        "retention_ci_high": high,
        "base_correct": len(known),
    }


def _log_probs(model: Any, ids: Any, mask: Any) -> Any:
    """log softmax of the next-token logits, float32 [B, T, V]."""
    import torch

    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
    return torch.log_softmax(logits.float(), dim=-1)


class KLReference:
    """The base model's next-token log-probs on fixed texts (prompt + completion), computed
    once, so that KL(base || tuned) of many tuned models costs one forward pass each.

    Holds float32 log-probs [B, T, V] for every batch of ``batch_size`` texts; made inside
    :func:`infosft.distributed.splitting`, each rank holds its share of the batches, and
    :meth:`kl` (called inside it too) gathers the totals.
    """

    def __init__(
        self,
        base_model: Any,
        tokenizer: Any,
        prompts: Sequence[str | list[dict[str, str]]],
        completions: Sequence[str],
        batch_size: int = 4,
    ) -> None:
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        device = next(base_model.parameters()).device
        # Under a distributed measurement each rank holds (and later scores) its share.
        self.batches = []
        for _, start in my_batches(range(0, len(prompts), batch_size)):
            seqs, spans = [], []
            chunk = slice(start, start + batch_size)
            for p, c in zip(prompts[chunk], completions[chunk], strict=True):
                head = tokenizer(render_prompt(tokenizer, p), add_special_tokens=isinstance(p, str))
                tail = tokenizer(c, add_special_tokens=False)["input_ids"]
                seqs.append(head["input_ids"] + tail)
                spans.append((len(head["input_ids"]), len(seqs[-1])))
            ids, mask = pad_right(seqs, pad_id, device)
            self.batches.append((start, ids, mask, spans, _log_probs(base_model, ids, mask)))

    def kl(self, tuned_model: Any) -> dict[str, float]:
        """``kl_base_tuned``: the mean over the ``kl_tokens`` completion tokens t of
        KL_t = sum_v p_base(v) (log p_base(v) - log p_tuned(v)), over the full vocabulary."""
        sums = []
        for start, ids, mask, spans, base_lp in self.batches:
            total, count = 0.0, 0
            tuned_lp = _log_probs(tuned_model, ids, mask)
            if base_lp.shape != tuned_lp.shape:
                raise ValueError(
                    "base and tuned models have different vocabularies; KL is undefined"
                )
            kl = (base_lp.exp() * (base_lp - tuned_lp)).sum(-1)  # [B, T]
            for row, (lo, hi) in enumerate(spans):
                # Position t predicts token t + 1: completion tokens lo..hi-1 come from lo-1..hi-2.
                total += kl[row, lo - 1 : hi - 1].double().sum().item()
                count += hi - lo
            sums.append((start, (total, count)))
        total, count = _sum_in_order(gather(sums))
        return {"kl_base_tuned": total / max(count, 1), "kl_tokens": count}


def heldout_nll(
    model: Any, tokenizer: Any, texts: Sequence[str], batch_size: int = 4, max_length: int = 512
) -> dict[str, float]:
    """Mean negative log-likelihood per token (nats) of ``texts`` under ``model``."""
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    sums = []
    for _, start in my_batches(range(0, len(texts), batch_size)):
        seqs = [
            tokenizer(t, add_special_tokens=True)["input_ids"][:max_length]
            for t in texts[start : start + batch_size]
        ]
        ids, mask = pad_right(seqs, pad_id, device)
        # Every real token after the first is a target; padding is not.
        labels = ids.masked_fill(mask == 0, IGNORE_INDEX)
        log_probs = target_log_probs(model, ids, mask, labels)
        target_mask = labels != IGNORE_INDEX
        target_mask[:, 0] = False
        nll = -log_probs[target_mask].double().sum().item()
        sums.append((start, (nll, int(target_mask.sum()))))
    total, count = _sum_in_order(gather(sums))
    return {"nll": total / max(count, 1), "tokens": count}


def _sum_in_order(sums: Sequence[tuple[float, int]]) -> tuple[float, int]:
    """Per-batch (total, count) pairs summed in batch order: the same float64 additions
    whether one process or several ran the batches."""
    total, count = 0.0, 0
    for batch_total, batch_count in sums:
        total += batch_total
        count += batch_count
    return total, count


def read_texts(path: str | Path, what: str = "text file") -> list[str]:
    """Texts from a file: JSON lines (``.jsonl``: a string or a ``text`` or ``prompt`` field
    per line), a JSON list of those (``.json``) or plain text, one item per non-empty line.

    ValueError naming the file (``what``: how the user gave it, e.g. ``--heldout``) and the
    line of a line that is not JSON or holds no text, and for a file with no text at all
    (an empty file is never a silent fallback to built-in texts).
    """
    from infosft.files import existing_file, json_lines, parse_json, read_text

    path = existing_file(path, what)
    text = read_text(path)
    if path.suffix == ".json":
        rows = parse_json(text, f"{what} {path}") if text.strip() else []
        if not isinstance(rows, list):
            raise ValueError(
                f"{what} {path} must hold a JSON list, each item a JSON string or "
                '{"text": ...} object'
            )
        numbered = [(f"item {i}", row) for i, row in enumerate(rows)]
    elif path.suffix == ".jsonl":
        numbered = json_lines(path, what)
    else:
        numbered = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    texts = []
    for where, row in numbered:
        text = row.get("text", row.get("prompt")) if isinstance(row, dict) else row
        if not isinstance(text, str) or not text.strip():
            raise ValueError(
                f"{what} {path}:{where}: each line needs a non-empty 'text' or 'prompt' string "
                f"(or is one JSON string), got {json.dumps(row)[:80]}"
            )
        texts.append(text)
    if not texts:
        raise ValueError(f"{what} {path} holds no texts; give at least one line of text")
    return texts


def check_shared_vocabulary(base_model: Any, tuned_model: Any, tokenizer: Any) -> None:
    """ValueError unless both models have one embedding row per token of ``tokenizer`` (KL and
    NLL compare their next-token distributions token by token)."""
    rows = [model.get_input_embeddings().num_embeddings for model in (base_model, tuned_model)]
    if rows[0] != rows[1] or len(tokenizer) > min(rows):
        raise ValueError(
            f"the base model has {rows[0]} embedding rows, the tuned model {rows[1]} and the "
            f"tokenizer {len(tokenizer)} tokens; forgetting needs the base model the tuned "
            "model was fine-tuned from (one vocabulary)"
        )


def general_prompt_messages(prompts: Sequence[str]) -> list[list[dict[str, str]]]:
    """Each general prompt as one user message, for a model with a chat template."""
    return [[{"role": "user", "content": prompt}] for prompt in prompts]


def measure_base_general(
    base_model: Any,
    tokenizer: Any,
    prompts: Sequence[Prompt],
    texts: Sequence[str],
) -> dict[str, Any]:
    """The base model's side of KL and general NLL, measured once for every tuned model:
    ``general_samples`` (one completion per prompt, sampled as ``GENERAL_SAMPLE_*`` say, to
    build a :class:`KLReference` on) and ``general_nll`` (nats per token of ``texts``)."""
    if not prompts or not texts:
        raise ValueError(
            "the general prompts and general texts must not be empty; give at least one of each"
        )
    settings = SamplingSettings(
        max_new_tokens=GENERAL_SAMPLE_TOKENS,
        temperature=1.0,
        batch_size=len(prompts),
        seed=GENERAL_SAMPLE_SEED,
    )
    samples = generate(base_model, tokenizer, prompts, settings, progress=False)
    return {
        "general_samples": [s[0] for s in samples],
        "general_nll": heldout_nll(base_model, tokenizer, texts)["nll"],
    }


def compare_to_base(
    tuned_model: Any,
    tokenizer: Any,
    base: Mapping[str, Any],
    task_correct: Mapping[str, bool],
    prior_correct: Mapping[str, bool],
    kl_reference: KLReference,
    texts: Sequence[str],
) -> dict[str, float | int | None]:
    """The tuned model against its base (see the module docstring) in one flat dict: accuracy,
    accuracy_base, accuracy_delta, :func:`retention`'s keys, :meth:`KLReference.kl`'s keys,
    general_nll, general_nll_base, general_nll_delta (tuned minus base), general_tokens.

    ``task_correct`` and ``prior_correct`` map item id to first completion correct (the tuned
    model's priors: at least the items the base gets right); ``base`` holds the base model's
    ``task_correct``, ``prior_correct`` and ``general_nll`` (:func:`measure_base_general`).
    """
    accuracy, accuracy_base = share_correct(task_correct), share_correct(base["task_correct"])
    kept = retention(base["prior_correct"], prior_correct)
    kl = kl_reference.kl(tuned_model)
    nll = heldout_nll(tuned_model, tokenizer, texts)
    return {
        "accuracy": accuracy,
        "accuracy_base": accuracy_base,
        "accuracy_delta": None if None in (accuracy, accuracy_base) else accuracy - accuracy_base,
        **kept,
        **kl,
        "general_nll": nll["nll"],
        "general_nll_base": base["general_nll"],
        "general_nll_delta": nll["nll"] - base["general_nll"],
        "general_tokens": nll["tokens"],
    }


# Built-in general prompts (everyday instructions) and texts (plain-English paragraphs), written
# for this package and used unless others are given.
DEFAULT_GENERAL_PROMPTS: tuple[str, ...] = (
    "Give me one tip for sleeping better.",
    "Describe a sunny day at the beach in two sentences.",
    "What should I pack for a weekend hiking trip?",
    "Explain what a library is to a child.",
    "Write a short thank-you note to a neighbour.",
    "Why do people drink coffee in the morning?",
    "Suggest a name for a small bakery.",
    "How can I keep a houseplant healthy?",
    "Tell me a fun fact about octopuses.",
    "What are the benefits of walking every day?",
    "Describe the taste of a lemon.",
    "Give two reasons to learn a second language.",
    "How do you make a cup of tea?",
    "What is a good way to start learning to cook?",
    "Write one sentence about autumn.",
    "Why is it important to drink water?",
)

DEFAULT_GENERAL_TEXTS: tuple[str, ...] = (
    "The old lighthouse stood at the end of the rocky point, its white paint peeling after "
    "decades of salt and wind. Fishermen still used it to find their way home, even though "
    "the lamp had been replaced by a small automatic beacon that blinked every few seconds.",
    "Bread is made by mixing flour, water, salt and yeast into a dough. The yeast feeds on the "
    "sugars in the flour and releases gas, which makes the dough rise. Baking sets the "
    "structure and gives the crust its brown colour and rich smell.",
    "Every spring the town held a market in the main square. Farmers brought vegetables, "
    "cheese and flowers, and children ran between the stalls with paper kites. By the "
    "afternoon most of the tables were empty and the musicians had started to play.",
    "Rivers shape the land they flow through. Over thousands of years they carve valleys, "
    "carry sand and stones toward the sea, and build wide plains where they spill over their "
    "banks. Many of the world's great cities grew up beside them.",
    "She opened the letter slowly, unsure whether she wanted to know what it said. The "
    "handwriting was familiar, although she had not seen it in years, and the paper smelled "
    "faintly of the cedar box where her grandmother kept her things.",
    "A good night's sleep helps the body repair itself and helps the mind sort the events of "
    "the day. Most adults need seven to nine hours, and keeping a regular bedtime makes it "
    "easier to fall asleep and wake up feeling rested.",
    "The museum's new exhibition tells the story of early flight, from paper balloons to the "
    "first engines light enough to lift a person. Visitors can climb into a copy of an early "
    "cockpit and read the notes the inventors wrote while testing their designs.",
    "Cats spend a large part of the day asleep, but they wake quickly at the sound of food. "
    "They clean their fur with rough tongues, mark their territory by rubbing their cheeks on "
    "furniture, and often choose the one box nobody wanted them to sit in.",
)
