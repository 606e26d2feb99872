"""Batched generation with a Hugging Face causal LM: chat templates, greedy or sampled, stops."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

Prompt = str | list[dict[str, str]]


@dataclass
class SamplingSettings:
    """How completions are drawn; maps 1:1 to the ``generation:`` block of a task YAML."""

    max_new_tokens: int = 512
    temperature: float = 0.0  # 0 means greedy decoding
    top_p: float = 1.0
    n: int = 1  # completions per prompt
    stop: list[str] = field(default_factory=list)  # cut each completion at the first of these
    batch_size: int = 8  # prompts per generate() call
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must lie in (0, 1], got {self.top_p}")
        if self.n < 1 or self.batch_size < 1:
            raise ValueError(f"n and batch_size must be >= 1, got {self.n}, {self.batch_size}")
        if self.n > 1 and self.temperature == 0:
            raise ValueError(
                f"n={self.n} samples per prompt need temperature > 0 (greedy gives one answer)"
            )

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def render_prompt(tokenizer: Any, prompt: Prompt) -> str:
    """A plain string stays as is; a list of chat messages goes through the chat template.

    When the last message is the assistant's, the reply continues it (a response prefix such
    as an opening code fence); otherwise a new assistant turn starts.
    """
    if isinstance(prompt, str):
        return prompt
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError("chat-message prompts need a tokenizer with a chat template")
    prefilled = prompt[-1]["role"] == "assistant"
    return tokenizer.apply_chat_template(
        prompt,
        tokenize=False,
        add_generation_prompt=not prefilled,
        continue_final_message=prefilled,
    )


def truncate_at_stop(text: str, stop: Sequence[str]) -> str:
    """``text`` up to (not including) the earliest occurrence of any stop string."""
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=len(text))
    return text[:cut]


def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Prompt],
    settings: SamplingSettings,
    progress: bool = True,
    on_batch: Callable[[list[int], list[list[str]]], None] | None = None,
) -> list[list[str]]:
    """``settings.n`` completions for each prompt, in prompt order.

    Prompts are sorted by length into batches (less padding), left-padded, and decoded without
    the prompt; each completion is cut at its first stop string. The same seed, settings and
    prompts give the same completions. ``on_batch(prompt_indices, completions)`` is called
    after each batch (e.g. to save progress).
    """
    import torch
    from tqdm.auto import tqdm

    texts = [render_prompt(tokenizer, p) for p in prompts]
    # Chat templates already contain their special tokens; raw prompts get the usual ones.
    add_special = [isinstance(p, str) for p in prompts]
    encoded = [
        tokenizer(t, add_special_tokens=a)["input_ids"]
        for t, a in zip(texts, add_special, strict=True)
    ]
    order = sorted(range(len(texts)), key=lambda i: len(encoded[i]))
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = tokenizer.eos_token_id
    device = next(model.parameters()).device
    kwargs: dict[str, Any] = {"max_new_tokens": settings.max_new_tokens, "pad_token_id": pad_id}
    if settings.greedy:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    else:
        kwargs.update(
            do_sample=True,
            temperature=settings.temperature,
            top_p=settings.top_p,
            top_k=None,
            num_return_sequences=settings.n,
        )
    if settings.stop:
        kwargs.update(stop_strings=list(settings.stop), tokenizer=tokenizer)

    results: list[list[str]] = [[] for _ in texts]
    was_training = model.training
    model.eval()
    batches = [
        order[i : i + settings.batch_size] for i in range(0, len(order), settings.batch_size)
    ]
    try:
        for b, batch in enumerate(tqdm(batches, desc="generating", disable=not progress)):
            width = max(len(encoded[i]) for i in batch)
            ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                ids[row, width - len(encoded[i]) :] = torch.tensor(encoded[i])
                mask[row, width - len(encoded[i]) :] = 1
            # Seeding per batch keeps results independent of how many batches ran before.
            torch.manual_seed(settings.seed + b)
            with torch.no_grad():
                out = model.generate(
                    input_ids=ids.to(device), attention_mask=mask.to(device), **kwargs
                )
            new_tokens = out[:, width:]
            decoded = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
            for j, text in enumerate(decoded):
                results[batch[j // settings.n]].append(truncate_at_stop(text, settings.stop))
            if on_batch is not None:
                on_batch(batch, [results[i] for i in batch])
    finally:
        model.train(was_training)
    return results
