"""log q of target tokens under a causal LM (to be replaced by the loss engine's scorer)."""

from __future__ import annotations

from typing import Any

# Target rows projected through the LM head at once: bounds the float32 logits to
# HEAD_CHUNK_TOKENS x V instead of the whole [B, T, V].
HEAD_CHUNK_TOKENS = 1024


def pad_right(sequences: list[list[int]], pad_id: int, device: Any = None) -> tuple[Any, Any]:
    """Token id lists -> (input_ids [B, T] int64, attention_mask [B, T] int64), right-padded."""
    import torch

    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, s in enumerate(sequences):
        ids[row, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[row, : len(s)] = 1
    return ids.to(device), mask.to(device)


def target_log_probs(model: Any, input_ids: Any, attention_mask: Any, labels: Any) -> Any:
    """log p(labels[t] | input_ids[:t]) aligned with labels, 0 where there is no target.

    Args:
        model: a causal LM (``transformers`` ``*ForCausalLM``), in eval mode.
        input_ids: [B, T] int64, right-padded. attention_mask: [B, T], 1 on real tokens.
        labels: [B, T] int64, -100 where no loss applies.

    Returns:
        [B, T] float32 on the model's device. The LM head runs in chunks of 1024 tokens so the
        full [B, T, V] logits never exist; log-softmax is taken in float32.
    """
    import torch

    from infosft.losses import IGNORE_INDEX
    from infosft.losses.reference import shift_labels

    with torch.no_grad():
        targets = shift_labels(labels)
        mask = targets != IGNORE_INDEX
        decoder, head = model.get_decoder(), model.get_output_embeddings()
        hidden = decoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        picked, target_ids = hidden[mask], targets[mask]
        values = torch.empty(picked.shape[0], dtype=torch.float32, device=hidden.device)
        for start in range(0, picked.shape[0], HEAD_CHUNK_TOKENS):
            end = start + HEAD_CHUNK_TOKENS
            logits = head(picked[start:end]).float()
            values[start:end] = logits.log_softmax(-1).gather(-1, target_ids[start:end, None])[:, 0]
        shifted = torch.zeros(labels.shape, dtype=torch.float32, device=hidden.device)
        shifted[mask] = values
    # Position t predicted labels[t + 1]; move each value onto the label it scores.
    return torch.nn.functional.pad(shifted[:, :-1], (1, 0), value=0.0)
