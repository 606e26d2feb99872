"""Expected GPU memory per device for the paper's runs, computed (not measured) from a formula.

    python benchmarks/memory_estimate.py [--gpus 4] [--tokens 4096]

Per GPU, with N GPUs, P parameters, bf16 compute and AdamW (mixed precision keeps an fp32 copy
of the weights and two fp32 moments, so 16 bytes per trainable parameter in total):

    DDP        weights 4P + grads 4P + DDP grad buckets 4P + Adam 8P      (fp32 master weights)
    ZeRO-2     bf16 weights 2P + (bf16 grads 2P + fp32 master 4P + Adam 8P) / N
    ZeRO-3     (2P + 2P + 12P) / N + gathered bf16 of the live layers
    FSDP2      (fp32 weights 4P + grads 4P + Adam 8P) / N + gathered bf16 of the live layers
    LoRA       frozen bf16 base 2P (sharded by N under ZeRO-3 / FSDP2) + 16 bytes per LoRA
               parameter, replicated

    activations (gradient checkpointing, n = micro-batch tokens, bf16):
        checkpoints        L * n * H * 2 bytes            (one hidden state per layer)
        recomputed layer   2 * n * (7H + 2H_kv + 4I) * 2   (saved tensors + their grads)
    loss
        plain logits       n * V * (2 + 4 + 4 + 4)   (bf16 logits, fp32 copy, log-softmax, grad)
        fused (infosft)    1.5 * C * V * 4 + V * H * 4 + n * H * 4
                           (C = infosft.losses.chunking.rows_per_chunk(n, V, cuda);
                           fp32 logits chunk + bf16 grad chunk, fp32 grad of the head
                           computed in the forward pass (not with LoRA), fp32 grad of the
                           hidden rows)
    live layers (ZeRO-3/FSDP2): 2 transformer blocks + the LM head in bf16 (the one being computed
    and the one prefetched).

CUDA context, allocator fragmentation and NCCL buffers add about 2-4 GiB per GPU that the
formula leaves out. Shapes are those of the public configs (Qwen2.5-Math-1.5B ties its
embeddings; the 7B and Llama-3.1-8B do not).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch

from infosft.losses.chunking import rows_per_chunk

GIB = 1024**3


@dataclass(frozen=True)
class ModelShape:
    """A Llama/Qwen2-style decoder; sizes from the model's config.json."""

    name: str
    hidden: int
    intermediate: int
    layers: int
    kv_dim: int  # num_key_value_heads * head_dim
    vocab: int
    tied: bool
    qkv_bias: bool

    def layer_params(self) -> int:
        h, kv = self.hidden, self.kv_dim
        attention = h * (h + 2 * kv) + h * h + (h + 2 * kv if self.qkv_bias else 0)
        return attention + 3 * h * self.intermediate + 2 * h

    def params(self) -> int:
        embeddings = self.vocab * self.hidden * (1 if self.tied else 2)
        return self.layers * self.layer_params() + embeddings + self.hidden

    def lora_params(self, rank: int) -> int:
        """LoRA A and B on all seven projections of every layer."""
        h, kv, i = self.hidden, self.kv_dim, self.intermediate
        shapes = [(h, h), (h, kv), (h, kv), (h, h), (h, i), (h, i), (i, h)]
        return self.layers * sum(rank * (a + b) for a, b in shapes)


MODELS = [
    ModelShape("Qwen2.5-Math-1.5B", 1536, 8960, 28, 256, 151936, tied=True, qkv_bias=True),
    ModelShape("Qwen2.5-Math-7B", 3584, 18944, 28, 512, 152064, tied=False, qkv_bias=True),
    ModelShape("Llama-3.1-8B", 4096, 14336, 32, 1024, 128256, tied=False, qkv_bias=False),
    ModelShape("Qwen2.5-7B-Instruct", 3584, 18944, 28, 512, 152064, tied=False, qkv_bias=True),
]
ENGINES = ["ddp", "zero2", "zero3", "fsdp2"]


def state_bytes(model: ModelShape, engine: str, gpus: int, lora_rank: int | None) -> float:
    """Weights + gradients + optimizer states on one GPU."""
    p = model.params()
    sharded = engine in ("zero3", "fsdp2")
    live = 2 * (2 * model.layer_params() + model.vocab * model.hidden) if sharded else 0
    if lora_rank is not None:
        base = 2 * p / (gpus if sharded else 1)
        return base + 16 * model.lora_params(lora_rank) + live
    if engine == "ddp":
        return 20 * p
    if engine == "zero2":
        return 2 * p + 14 * p / gpus
    return 16 * p / gpus + live


def activation_bytes(model: ModelShape, tokens: int) -> float:
    """Checkpointed hidden states plus the one layer being recomputed, bf16."""
    checkpoints = model.layers * tokens * model.hidden * 2
    width = 7 * model.hidden + 2 * model.kv_dim + 4 * model.intermediate
    return checkpoints + 2 * tokens * width * 2


def loss_bytes(model: ModelShape, tokens: int, fused: bool, head_trainable: bool) -> float:
    """Memory of the LM head + loss: full logits, or infosft's chunked fused computation."""
    if not fused:
        return tokens * model.vocab * (2 + 4 + 4 + 4)
    head_grad = model.vocab * model.hidden * 4 if head_trainable else 0
    return chunk_bytes(model, tokens) + head_grad + tokens * model.hidden * 4


def chunk_bytes(model: ModelShape, tokens: int) -> float:
    """The fused loss's chunk buffers on a GPU with memory to spare: fp32 logits + bf16 grad."""
    rows = rows_per_chunk(tokens, model.vocab, torch.device("cuda"), 2**40)
    return 1.5 * rows * model.vocab * 4


@dataclass(frozen=True)
class Run:
    label: str
    model: ModelShape
    tokens: int
    lora_rank: int | None = None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gpus", type=int, default=4, help="data-parallel GPUs (paper: 4+)")
    parser.add_argument("--tokens", type=int, default=4096, help="tokens per micro-batch")
    args = parser.parse_args()

    by_name = {m.name: m for m in MODELS}
    runs = [
        Run("math full FT", by_name["Qwen2.5-Math-1.5B"], args.tokens),
        Run("math full FT", by_name["Qwen2.5-Math-7B"], args.tokens),
        Run("math full FT", by_name["Llama-3.1-8B"], args.tokens),
        Run("code LoRA r32", by_name["Llama-3.1-8B"], args.tokens, lora_rank=32),
        Run("long-CoT full FT", by_name["Qwen2.5-7B-Instruct"], 2 * args.tokens),
    ]
    print(
        f"GiB per GPU, {args.gpus} GPUs, bf16 + AdamW, gradient checkpointing, one micro-batch "
        "of the given tokens; fused loss chunks as infosft.losses.chunking plans them."
    )
    print("Cells: total with the fused loss (total with plain logits). Add 2-4 GiB overhead.\n")
    header = f"{'run':<17}{'model':<21}{'params':>7}{'tokens':>7}{'act':>6}{'loss f/p':>11}"
    print(header + "".join(f"{e:>15}" for e in ENGINES))
    for run in runs:
        act = activation_bytes(run.model, run.tokens)
        fused = loss_bytes(run.model, run.tokens, True, run.lora_rank is None)
        plain = loss_bytes(run.model, run.tokens, False, run.lora_rank is None)
        cells = []
        for engine in ENGINES:
            states = state_bytes(run.model, engine, args.gpus, run.lora_rank)
            cells.append(
                f"{(states + act + fused) / GIB:6.1f} ({(states + act + plain) / GIB:5.1f})"
            )
        print(
            f"{run.label:<17}{run.model.name:<21}{run.model.params() / 1e9:6.2f}B{run.tokens:>7}"
            f"{act / GIB:6.1f}{fused / GIB:5.2f}/{plain / GIB:4.1f}"
            + "".join(f"{c:>15}" for c in cells)
        )


if __name__ == "__main__":
    main()
