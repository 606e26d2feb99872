"""Batched generation with a Hugging Face causal LM: chat templates, greedy or sampled, stops."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from infosft.checks import Number, check_value
from infosft.distributed import gather, my_batches
from infosft.models import eval_mode, pad_left

Prompt = str | list[dict[str, str]]
POSITIVE = Number(whole=True, low=1)
_SETTINGS = {
    "max_new_tokens": POSITIVE,
    "temperature": Number(low=0),
    "top_p": Number(low=0, low_open=True, high=1),
    "n": POSITIVE,
    "stop": list,
    "batch_size": POSITIVE,
    "seed": int,
}


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
        for name, expected in _SETTINGS.items():
            setattr(self, name, check_value(getattr(self, name), expected, name))
        if not all(isinstance(x, str) for x in self.stop):
            raise ValueError(f"stop must be a list of strings, got {self.stop!r}")
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


def full_model_fingerprint(model: Any) -> str:
    """SHA-256 of what decides a model's outputs: its config, its generation config and every
    parameter and buffer (name, dtype, shape and every byte; a tied tensor is hashed once).
    Saved completions are reused under it, so two models that differ anywhere differ here
    (:func:`infosft.training.static_weights.sampled_model_fingerprint` is the fast key that
    samples values)."""
    import torch

    digest = hashlib.sha256(model.config.to_json_string(use_diff=False).encode())
    generation = getattr(model, "generation_config", None)
    if generation is not None:
        digest.update(generation.to_json_string(use_diff=False).encode())
    seen: dict[tuple, str] = {}
    for name, tensor in model.state_dict().items():
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}:".encode())
        if tensor.device.type == "meta":
            digest.update(b"meta")
            continue
        where = (tensor.data_ptr(), tensor.dtype, tuple(tensor.shape), tensor.stride())
        if where in seen:
            digest.update(f"same as {seen[where]}".encode())
            continue
        seen[where] = name
        data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
        digest.update(memoryview(data.numpy()))
    return digest.hexdigest()


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """SHA-256 of a tokenizer's vocabulary and rules, special tokens and chat template."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    parts = {
        "class": type(tokenizer).__name__,
        "vocabulary": backend.to_str()
        if backend is not None
        else sorted(tokenizer.get_vocab().items()),
        "chat_template": getattr(tokenizer, "chat_template", None),
        "special": [tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id],
        "padding_side": getattr(tokenizer, "padding_side", None),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def completions_key(model: Any, tokenizer: Any, settings: SamplingSettings) -> str:
    """One key for everything that decides the completions of a prompt: the model (weights,
    config), the tokenizer and chat template, the sampling settings (not the batch size), the
    device type and the library versions. Saved completions are reused only under it."""
    import torch
    import transformers

    parts = {
        "model": full_model_fingerprint(model),
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "settings": {k: v for k, v in asdict(settings).items() if k != "batch_size"},
        "device": next(model.parameters()).device.type,
        "versions": [torch.__version__, transformers.__version__],
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def sample_seed(seed: int, key: str, index: int) -> int:
    """The seed of sample ``index`` of the prompt named ``key``: a 63-bit hash of the three."""
    digest = hashlib.sha256(f"{seed}\0{key}\0{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def keyed_sampler(seeds: Sequence[int], temperature: float, top_p: float) -> Any:
    """A logits processor that turns greedy decoding into sampling, row ``r`` from its own
    random stream seeded with ``seeds[r]``.

    Gumbel-max: argmax(logits / T + G) with G ~ Gumbel(0, 1) i.i.d. is a draw from
    softmax(logits / T); the top-p nucleus is kept as transformers' TopPLogitsWarper keeps it.
    A row's draws depend on its seed and step only, not on the other rows of its batch.
    """
    import torch
    from transformers import LogitsProcessor

    class KeyedSampler(LogitsProcessor):
        def __init__(self) -> None:
            self.generators: list[torch.Generator] = []

        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            if not self.generators:
                self.generators = [
                    torch.Generator(device=scores.device).manual_seed(s) for s in seeds
                ]
            scores = scores.float() / temperature
            if top_p < 1.0:
                ascending, order = torch.sort(scores, descending=False)
                remove = ascending.softmax(dim=-1).cumsum(dim=-1) <= (1 - top_p)
                remove[..., -1:] = False
                scores = scores.masked_fill(remove.scatter(1, order, remove), float("-inf"))
            uniform = torch.stack(
                [
                    torch.rand(scores.shape[-1], generator=g, device=scores.device)
                    for g in self.generators
                ]
            )
            gumbel = -torch.log(-torch.log(uniform.clamp(min=torch.finfo(uniform.dtype).tiny)))
            return scores + gumbel

    return KeyedSampler()


def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Prompt],
    settings: SamplingSettings,
    progress: bool = True,
    on_batch: Callable[[list[int], list[list[str]]], None] | None = None,
    sample_keys: Sequence[str] | None = None,
) -> list[list[str]]:
    """``settings.n`` completions for each prompt, in prompt order.

    Prompts are sorted by length into batches (less padding), left-padded, and decoded without
    the prompt; each completion is cut at its first stop string. The same seed, settings and
    prompts give the same completions. ``on_batch(prompt_indices, completions)`` is called
    after each batch (e.g. to save progress).

    Sampling with ``sample_keys`` (one name per prompt, e.g. the item id): sample ``j`` of a
    prompt comes from its own stream seeded by (seed, key, j), so it is the same whatever the
    batch size, the order and the other prompts, as a resumed evaluation needs. Without keys,
    each batch is seeded as a whole (seed + batch number).
    """
    import torch
    from tqdm.auto import tqdm
    from transformers import LogitsProcessorList

    # Chat templates already contain their special tokens; raw prompts get the usual ones.
    encoded = [
        tokenizer(render_prompt(tokenizer, p), add_special_tokens=isinstance(p, str))["input_ids"]
        for p in prompts
    ]
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = tokenizer.eos_token_id
    device = next(model.parameters()).device
    kwargs: dict[str, Any] = {"max_new_tokens": settings.max_new_tokens, "pad_token_id": pad_id}
    keyed = sample_keys is not None and not settings.greedy
    if sample_keys is not None and len(sample_keys) != len(prompts):
        raise ValueError(f"{len(sample_keys)} sample keys for {len(prompts)} prompts")
    if settings.greedy or keyed:
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

    results: list[list[str]] = [[] for _ in prompts]
    batches = [
        order[i : i + settings.batch_size] for i in range(0, len(order), settings.batch_size)
    ]
    # Under a distributed measurement each rank runs its share of these same batches.
    mine = my_batches(batches)
    done = []
    with eval_mode(model):
        for b, batch in tqdm(mine, desc="generating", disable=not progress):
            # Keyed sampling draws each of a prompt's n samples as a row of its own.
            rows = [i for i in batch for _ in range(settings.n)] if keyed else batch
            if settings.greedy:
                new_tokens = _greedy_in_stages(model, [encoded[i] for i in rows], kwargs, pad_id)
            else:
                ids, mask = pad_left([encoded[i] for i in rows], pad_id, device)
                extra = {}
                if keyed:
                    seeds = [
                        sample_seed(settings.seed, sample_keys[i], j)
                        for i in batch
                        for j in range(settings.n)
                    ]
                    sampler = keyed_sampler(seeds, settings.temperature, settings.top_p)
                    extra["logits_processor"] = LogitsProcessorList([sampler])
                else:
                    # Seeding per batch keeps results independent of how many batches ran
                    # before.
                    torch.manual_seed(settings.seed + b)
                with torch.no_grad():
                    out = model.generate(input_ids=ids, attention_mask=mask, **kwargs, **extra)
                new_tokens = out[:, ids.shape[1] :]
            decoded = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
            for j, text in enumerate(decoded):
                prompt = rows[j] if keyed else batch[j // settings.n]
                results[prompt].append(truncate_at_stop(text, settings.stop))
            if on_batch is not None:
                on_batch(batch, [results[i] for i in batch])
            done.append((b, [(i, results[i]) for i in batch]))
    for batch_results in gather(done):
        for i, completions in batch_results:
            results[i] = completions
    return results


# Greedy decoding starts with this many new tokens, then doubles the stage length.
FIRST_STAGE_TOKENS = 32


def _greedy_in_stages(
    model: Any, prompts: Sequence[Sequence[int]], kwargs: dict[str, Any], pad_id: int
) -> list[list[int]]:
    """Greedy new tokens for each prompt (token ids), the same as one ``model.generate`` call
    with ``kwargs`` would give, generated in stages of growing length between which the rows
    that have finished leave the batch.

    ``generate`` decodes every row of a batch until the last one finishes, and on a CPU each
    step costs in proportion to the rows in the batch: with a few long answers among many short
    ones most of the work is spent on rows that are done. A greedy row's continuation depends
    only on its own tokens, so the unfinished rows go on from the stage's KV cache, cut to their
    rows; a cache that cannot be cut is dropped and the rows start again from their tokens so
    far (one prefill).
    """
    import torch

    device = next(model.parameters()).device
    eos = model.generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
    stops = bool(kwargs.get("stop_strings"))
    total = kwargs["max_new_tokens"]
    ids, mask = pad_left(prompts, pad_id, device)
    new: list[list[int]] = [[] for _ in prompts]
    live = list(range(len(prompts)))
    # transformers renamed generate's past_key_values to cache (the old name warns).
    try:
        from transformers.generation.utils import ALL_CACHE_NAMES

        cache_name = ALL_CACHE_NAMES[0]
    except ImportError:
        cache_name = "past_key_values"
    cache, made, stage = None, 0, FIRST_STAGE_TOKENS
    while live and made < total:
        length = min(stage, total - made)
        with torch.no_grad():
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                return_dict_in_generate=True,
                **{**kwargs, "max_new_tokens": length, cache_name: cache},
            )
        tokens = out.sequences[:, ids.shape[1] :]
        rows = tokens.tolist()
        for r, row in zip(live, rows, strict=True):
            new[r].extend(row)
        # A finished row has produced an end token, or (stop strings) ends in the pad_id that
        # generate writes after a row is done. A row stopped by a stop string on the stage's
        # last token looks unfinished and goes on, which truncate_at_stop undoes.
        keep = [
            j
            for j, row in enumerate(rows)
            if len(row) == length
            and not eos_ids.intersection(row)
            and not (stops and row[-1] == pad_id)
        ]
        made += length
        stage *= 2
        if not keep or made >= total:
            break
        ids = out.sequences
        mask = torch.cat([mask, torch.ones_like(tokens)], dim=1)
        cache = out.get("cache") if "cache" in out else out.get("past_key_values")
        if len(keep) < len(live):
            index = torch.tensor(keep, device=device)
            live = [live[j] for j in keep]
            ids, mask = ids[index], mask[index]
            try:
                cache.batch_select_indices(index)
            except (AttributeError, NotImplementedError, TypeError):
                cache = None
    return new
