"""Run by tests/test_distributed.py under ``torchrun --nproc_per_node 2`` (gloo, CPU).

Shards the tiny Llama with FSDP2 (``fully_shard`` on each decoder layer and on the root, so the
LM head's weight is sharded), computes the InfoSFT loss of half the batch per rank inside the
LM head's forward exactly as InfoSFTTrainer does (``loss_in_lm_head`` + the fused loss,
normalised by the global target count, scaled by the world size), backpropagates, and saves
the full gradients on rank 0 to the path given as argv[1].
"""

import sys

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard

from conftest import build_tiny_llama
from infosft.losses.fused import fused_weighted_nll_loss
from infosft.losses.lm_head import loss_in_lm_head

VOCAB = 600


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    """4 rows of 12 tokens with ragged target spans, so the ranks hold unequal token counts."""
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(0, VOCAB, (4, 12), generator=generator)
    labels = input_ids.clone()
    labels[:, :3] = -100
    labels[1, 8:] = -100
    labels[3, 5:] = -100
    return input_ids, labels


def main(path: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    model = build_tiny_llama(VOCAB, seed=0)
    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(model)
    input_ids, labels = batch()
    num_items_in_batch = int((labels[:, 1:] != -100).sum())
    rows = slice(rank * 2, rank * 2 + 2)

    def head_loss(hidden, weight, bias):
        return fused_weighted_nll_loss(
            hidden,
            weight,
            labels[rows],
            method="infosft",
            num_items_in_batch=num_items_in_batch,
            lm_head_bias=bias,
            return_stats=True,
        )

    with loss_in_lm_head(model.lm_head, head_loss):
        outputs = model(input_ids=input_ids[rows], use_cache=False)
    # FSDP averages gradients over ranks; the trainer scales the rank's loss back up.
    (outputs.logits.reshape(()) * world).backward()
    grads = {name: p.grad.full_tensor() for name, p in model.named_parameters()}
    sharded = isinstance(model.lm_head.weight, torch.distributed.tensor.DTensor)
    if rank == 0:
        torch.save({"grads": grads, "lm_head_sharded": sharded}, path)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
