"""Forgetting: how much of the base model survives fine-tuning, reported as deltas vs the base.

(a) retention: on items the base model answers right (its first, greedy sample), the fraction
    the tuned model still answers right, with a Wilson interval;
(b) KL(base || tuned) per token, exact over the vocabulary, on the base model's own samples for
    general prompts (how far the tuned model moved where the base model puts its mass);
(c) NLL per token of held-out general text under both models, and its increase.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from infosft.distributed import gather, my_batches
from infosft.evaluation.generation import SamplingSettings, generate, render_prompt
from infosft.evaluation.metrics import wilson_interval
from infosft.losses import IGNORE_INDEX, target_log_probs
from infosft.models import pad_right

# Small built-in defaults so that the report always has (b) and (c); pass your own for real use.
DEFAULT_GENERAL_PROMPTS = [
    "Give three tips for staying healthy.",
    "Explain why the sky is blue in two sentences.",
    "Write a short poem about the sea.",
    "What is the difference between a list and a tuple in Python?",
    "Summarise the plot of Romeo and Juliet in one paragraph.",
    "How do vaccines work?",
    "Suggest a name for a bakery and explain your choice.",
    "Translate 'good morning, how are you?' into French.",
]
DEFAULT_HELDOUT_TEXTS = [
    "The water cycle describes how water evaporates from oceans and lakes, condenses into "
    "clouds, and returns to the surface as rain or snow, feeding rivers that flow back to sea.",
    "Photosynthesis lets plants turn sunlight, water and carbon dioxide into sugar and oxygen. "
    "It takes place mostly in the leaves, inside small structures called chloroplasts.",
    "A library lends books, music and films to its members. Many libraries also offer reading "
    "rooms, internet access and classes for children and adults.",
    "To make a cup of tea, boil fresh water, pour it over the tea leaves or bag, wait three to "
    "five minutes, then remove the leaves and add milk or lemon if you like.",
]


def first_samples(records: Sequence[dict[str, Any]]) -> dict[str, bool]:
    """``passed`` of the first sample of each task id."""
    first: dict[str, bool] = {}
    for r in records:
        first.setdefault(r["task_id"], bool(r["passed"]))
    return first


def retention(
    base_records: Sequence[dict[str, Any]], tuned_records: Sequence[dict[str, Any]]
) -> dict[str, float | None]:
    """Share of the items the base model got right that the tuned model still gets right."""
    base, tuned = first_samples(base_records), first_samples(tuned_records)
    if set(base) != set(tuned):
        raise ValueError("base and tuned results cover different items; evaluate the same task")
    known = [tid for tid, ok in base.items() if ok]
    kept = sum(tuned[tid] for tid in known)
    low, high = wilson_interval(kept, len(known))
    base_acc = sum(base.values()) / len(base)
    tuned_acc = sum(tuned.values()) / len(tuned)
    return {
        "retention": kept / len(known) if known else None,  # undefined: base got none right
        "retention_ci_low": low,
        "retention_ci_high": high,
        "base_correct": len(known),
        "accuracy_base": base_acc,
        "accuracy_tuned": tuned_acc,
        "accuracy_delta": tuned_acc - base_acc,
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
        """Mean per-token KL(base || tuned) over the completion tokens (see kl_on_texts)."""
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


def kl_on_texts(
    base_model: Any,
    tuned_model: Any,
    tokenizer: Any,
    prompts: Sequence[str | list[dict[str, str]]],
    completions: Sequence[str],
    batch_size: int = 4,
) -> dict[str, float]:
    """Mean per-token KL(base || tuned) over the completion tokens of prompt + completion.

    At every completion position t, KL_t = sum_v p_base(v) (log p_base(v) - log p_tuned(v)),
    over the full vocabulary; the result averages KL_t over all completion tokens. Both models
    must share the tokenizer.
    """
    reference = KLReference(base_model, tokenizer, prompts, completions, batch_size)
    return reference.kl(tuned_model)


def kl_on_base_samples(
    base_model: Any,
    tuned_model: Any,
    tokenizer: Any,
    prompts: Sequence[str | list[dict[str, str]]],
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    batch_size: int = 4,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, float]:
    """KL(base || tuned) (``kl_on_texts``) on completions sampled from the base model.

    The completions are sampled as text and re-tokenized, so the KL is measured where the base
    model puts its mass, not on the tuned model's own outputs.
    """
    settings = SamplingSettings(
        max_new_tokens=max_new_tokens, temperature=temperature, batch_size=batch_size, seed=seed
    )
    completions = [c[0] for c in generate(base_model, tokenizer, prompts, settings, progress)]
    return kl_on_texts(base_model, tuned_model, tokenizer, prompts, completions, batch_size)


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
    from infosft.files import read_text

    path = Path(path)
    if not path.is_file():
        state = "is a directory, not a file" if path.is_dir() else "does not exist"
        raise FileNotFoundError(f"{what} {path} {state}")
    text = read_text(path)
    expected = 'a JSON string or {"text": ...} object'
    if path.suffix == ".json":
        try:
            rows = json.loads(text) if text.strip() else []
        except json.JSONDecodeError as err:
            raise ValueError(f"{what} {path}:{err.lineno}: not valid JSON ({err.msg})") from None
        if not isinstance(rows, list):
            raise ValueError(f"{what} {path} must hold a JSON list, each item {expected}")
        numbered = [(f"item {i}", row) for i, row in enumerate(rows)]
    else:
        numbered = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            if path.suffix != ".jsonl":
                numbered.append((number, line))
                continue
            try:
                numbered.append((number, json.loads(line)))
            except json.JSONDecodeError as err:
                raise ValueError(
                    f"{what} {path}:{number}: not valid JSON ({err.msg} at column "
                    f"{err.colno}); each line is {expected}"
                ) from None
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


def forgetting_report(
    base_model: Any,
    tuned_model: Any,
    tokenizer: Any,
    base_records: Sequence[dict[str, Any]],
    tuned_records: Sequence[dict[str, Any]],
    general_prompts: Sequence[str] | None = None,
    heldout_texts: Sequence[str] | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, float | None]:
    """Retention, KL(base || tuned) and held-out NLL delta (tuned minus base) in one dict.

    General prompts are sent as user chat messages when the tokenizer has a chat template;
    None (not an empty list) for ``general_prompts`` or ``heldout_texts`` takes the built-in
    ones.
    """
    check_shared_vocabulary(base_model, tuned_model, tokenizer)
    prompts = list(DEFAULT_GENERAL_PROMPTS if general_prompts is None else general_prompts)
    texts = list(DEFAULT_HELDOUT_TEXTS if heldout_texts is None else heldout_texts)
    if not prompts or not texts:
        raise ValueError("general_prompts and heldout_texts must not be empty (None: built-in)")
    if getattr(tokenizer, "chat_template", None):
        prompts = [[{"role": "user", "content": p}] for p in prompts]
    report = retention(base_records, tuned_records)
    report.update(
        kl_on_base_samples(
            base_model, tuned_model, tokenizer, prompts, seed=seed, progress=progress
        )
    )
    base_nll = heldout_nll(base_model, tokenizer, texts)
    tuned_nll = heldout_nll(tuned_model, tokenizer, texts)
    report.update(
        {
            "heldout_nll_base": base_nll["nll"],
            "heldout_nll_tuned": tuned_nll["nll"],
            "heldout_nll_delta": tuned_nll["nll"] - base_nll["nll"],
            "heldout_tokens": base_nll["tokens"],
        }
    )
    return report
