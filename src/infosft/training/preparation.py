"""Training rows as the trainer trains on them, for training and for scoring alike.

:func:`prepare_rows` is what :class:`~infosft.training.InfoSFTTrainer` does to its datasets,
and what ``infosft inspect`` and the grid runner's q under the base model do to theirs without
building a trainer: TRL's SFTTrainer preparation (chat template, completion-only or
assistant-only masking, truncation to ``max_length``, packing), plus:

- ``assistant_only_loss`` with a chat template TRL cannot patch but infosft can (SmolLM2's):
  the rows are tokenized with a copy of the tokenizer carrying the marked template;
- a conversational row without an assistant message is refused under ``assistant_only_loss``;
- rows left without a target token (a prompt filling ``max_length``) are dropped with a
  warning that counts them, and rows cut at ``max_length`` are counted in a warning.
"""

from __future__ import annotations

import copy
import logging
import types
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from infosft.losses import IGNORE_INDEX

if TYPE_CHECKING:
    from datasets import Dataset
    from trl import SFTConfig

logger = logging.getLogger(__name__)


def has_assistant_turn(row: Mapping[str, Any]) -> bool:
    """Whether a conversational row has an assistant message to train on."""
    messages = row.get("messages") or [*(row.get("prompt") or []), *(row.get("completion") or [])]
    return any(isinstance(m, dict) and m.get("role") == "assistant" for m in messages)


def marked_template_tokenizer(tokenizer: Any, assistant_only_loss: bool) -> Any:
    """A copy of ``tokenizer`` whose chat template marks the assistant turns with
    ``{% generation %}``, for ``assistant_only_loss``; None when TRL needs no help (the option
    is off, or the template is not one :func:`infosft.models.training_chat_template` knows)."""
    from infosft.models import training_chat_template

    if not assistant_only_loss or tokenizer is None:
        return None
    marked = training_chat_template(getattr(tokenizer, "chat_template", None))
    if marked is None:
        return None
    training_tokenizer = copy.deepcopy(tokenizer)
    training_tokenizer.chat_template = marked
    return training_tokenizer


def drop_examples_without_targets(
    prepared: Dataset, total: int, name: str, max_length: int | None
) -> Dataset:
    """Remove tokenized examples with no target token and warn how many of the ``total``
    given were lost (counting those TRL dropped) and how many reach ``max_length``.

    Truncation to ``max_length`` can cut away a whole completion; such an example would add
    only padding to a batch. Raises ValueError when no example is left.
    """
    # The first position is never predicted (the causal shift): a label there is no target.
    kept = prepared.filter(
        lambda row: any(label != IGNORE_INDEX for label in row["labels"][1:]),
        desc=f"Checking {name} targets",
    )
    if len(kept) == 0:
        raise ValueError(
            f"none of the {total} {name} examples has a target token within "
            f"max_length={max_length} (the prompt fills it); raise max_length"
        )
    dropped = total - len(kept)
    if dropped:
        logger.warning(
            "%d of %d %s examples have no target token within max_length=%s and were dropped",
            dropped,
            total,
            name,
            max_length,
        )
    if max_length is not None:
        cut = sum(len(ids) >= max_length for ids in kept["input_ids"])
        if cut:
            logger.warning(
                "%d of %d %s examples reach max_length=%d tokens; longer ones are cut there "
                "(raise max_length to train on them whole)",
                cut,
                total,
                name,
                max_length,
            )
    return kept


def trl_preparation(
    rows: Dataset, tokenizer: Any, args: SFTConfig, name: str, packing: bool
) -> Dataset:
    """TRL's SFTTrainer preparation of ``rows`` without a trainer: what ``SFTTrainer.__init__``
    does first (``eos_token`` and a ``.jinja`` ``chat_template_path`` set on the tokenizer, here
    on a copy; TRL's own training template; completion-only loss from the first row), then
    ``SFTTrainer._prepare_dataset`` itself."""
    from trl import SFTTrainer
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers

    if args.eos_token is not None or args.chat_template_path is not None:
        tokenizer = copy.deepcopy(tokenizer)
        tokenizer.eos_token = args.eos_token or tokenizer.eos_token
        if args.chat_template_path is not None:
            path = Path(args.chat_template_path)
            if not (path.is_file() and path.suffix in (".jinja", ".j2")):
                raise ValueError(
                    f"chat_template_path {path} is no .jinja file; a template cloned from a "
                    "model adds tokens to the model, which only training does"
                )
            tokenizer.chat_template = path.read_text(encoding="utf-8")
    chat_template = None
    if args.assistant_only_loss and not has_generation_markers(tokenizer.chat_template):
        chat_template = get_training_chat_template(tokenizer)
    completion_only_loss = args.completion_only_loss
    if completion_only_loss is None:
        first = next(iter(rows))
        completion_only_loss = "prompt" in first and "completion" in first
    # The three attributes of the trainer that TRL's preparation reads.
    decided = types.SimpleNamespace(
        _tokenizer=tokenizer, chat_template=chat_template, completion_only_loss=completion_only_loss
    )
    return SFTTrainer._prepare_dataset(decided, rows, tokenizer, args, packing, None, name)


def prepare_rows(
    rows: Dataset,
    tokenizer: Any,
    args: SFTConfig,
    *,
    name: str = "train",
    packing: bool | None = None,
    tokenize: Callable[[Dataset, Any], Dataset] | None = None,
) -> Dataset:
    """``rows`` (a TRL format, see :mod:`infosft.training.data`) as the trainer trains on
    them: a Dataset of ``input_ids`` and ``labels`` (IGNORE_INDEX where no loss applies), one
    row per example that has a target token.

    Args:
        rows: the examples, checked (:func:`infosft.training.data.load_data`).
        tokenizer: the model's tokenizer (never changed; a copy carries a marked template).
        args: the run's options (``max_length``, ``truncation_mode``, ``assistant_only_loss``,
            ``completion_only_loss``, ``packing``, ... decide the result).
        name: the dataset's name in messages ("train", "eval").
        packing: whether rows are packed (default ``args.packing``); packed rows are kept whole.
        tokenize: TRL's step as ``tokenize(rows, tokenizer)``; InfoSFTTrainer passes its own
            (the parent's ``_prepare_dataset``), the default is :func:`trl_preparation`.

    Raises ValueError for a conversational row without an assistant message under
    ``assistant_only_loss``, and when no row has a target token within ``max_length``.
    """
    packing = args.packing if packing is None else packing
    if args.assistant_only_loss and "input_ids" not in rows.column_names:
        for index, row in enumerate(rows):
            if not has_assistant_turn(row):
                raise ValueError(
                    f"assistant_only_loss is set, but {name} example {index} has no assistant "
                    "message to train on; add one, or set assistant_only_loss: false"
                )
    tokenizer = marked_template_tokenizer(tokenizer, args.assistant_only_loss) or tokenizer
    if tokenize is None:

        def tokenize(rows: Dataset, tokenizer: Any) -> Dataset:
            return trl_preparation(rows, tokenizer, args, name, packing)

    total = len(rows)
    prepared = tokenize(rows, tokenizer)
    if not packing:
        prepared = drop_examples_without_targets(prepared, total, name, args.max_length)
    return prepared
