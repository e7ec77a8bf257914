"""Local training of one client, starting from the global adapter.

Examples are drawn as one stream (a fresh permutation per pass over the client's data, from a
generator seeded by (seed, round, client)) and cut into micro-batches of `batch_size`; every
`grad_accum` micro-batches make one AdamW step on the example-weighted mean gradient. Hence a
batch of 8 and micro-batch 1 x accumulation 8 see the same examples and take the same step.
With `length_grouping`, each step's examples are sorted by length before they are cut into
micro-batches: the step sees the same examples, its micro-batches carry less padding. With
`packing` (decoder), a micro-batch's items share packed rows of up to `PACKED_ROW_TOKENS` tokens.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from fedlora.adapters import live_factors, read_state, set_trainable, write_state
from fedlora.config import FAMILY_DEFAULTS, TrainConfig
from fedlora.precision import autocast, resolve_precision
from fedlora.scoring import Encoded, batch_to, choice_loss, choice_scores
from fedlora.state import AdapterState

# Training micro-batches are random in length, so one packed row per item pads each item to the
# longest (18% of the tokens on drift-smollm2-135m); several items per row pad nothing. Measured
# there (bf16, 10 steps of 4 items, alternating): rows of up to 1024 tokens train 1.15x faster than
# one row per item, 512 about the same, 256 only 1.02x (`make bench`, cpu-smollm2-135m: 1.21x).
# Evaluation keeps one row per item: its batches are sorted by length, and multi-item rows made it
# 1.1-2x slower (longer attention rows).
PACKED_ROW_TOKENS = 1024


@dataclass(frozen=True)
class LocalTrain:
    """TrainConfig with the family defaults filled in."""

    lr: float
    weight_decay: float
    grad_clip: float  # 0: off
    batch_size: int
    grad_accum: int
    max_local_steps: int  # micro-batches per round
    local_epochs: float | None = None  # optional cap in passes over the client's data
    precision: str = "fp32"  # resolved: fp32 | bf16
    length_grouping: bool = False
    packing: bool = False  # decoder: packed rows of items (scoring.py)


def resolve_train(train: TrainConfig, family: str, device: torch.device | str = "cpu") -> LocalTrain:
    defaults = FAMILY_DEFAULTS[family]
    return LocalTrain(
        lr=train.lr if train.lr is not None else defaults["lr"],
        weight_decay=train.weight_decay,
        grad_clip=train.grad_clip if train.grad_clip is not None else defaults["grad_clip"],
        batch_size=train.batch_size,
        grad_accum=train.grad_accum,
        max_local_steps=train.max_local_steps if train.max_local_steps is not None else defaults["max_local_steps"],
        local_epochs=train.local_epochs,
        precision=resolve_precision(train.precision, torch.device(device))[0],
        length_grouping=train.length_grouping,
        packing=train.packing,
    )


@dataclass
class ClientResult:
    state: AdapterState | None  # None where the server receives only the secure sum (SecAgg+)
    mean_loss: float  # example-weighted mean task loss over the round
    examples: int
    micro_batches: int
    optimizer_steps: int
    mean_penalty: float = 0.0  # mean client penalty over the optimizer steps (0 without one)
    start: AdapterState | None = None  # the adapter the client started from (not sent: the server knows it)
    rank: int | None = None  # the client's LoRA rank after the update (rank self-pruning may lower it)


def derive_seed(seed: int | Sequence[int]) -> int:
    """One 63-bit seed from (seed, round, client), stable across platforms."""
    key = [int(seed)] if isinstance(seed, (int, np.integer)) else [int(s) for s in seed]
    return int(np.random.SeedSequence(key).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def example_stream(n: int, total: int, generator: torch.Generator) -> list[int]:
    """`total` example indices: concatenated fresh permutations of range(n)."""
    order: list[int] = []
    while len(order) < total:
        order += torch.randperm(n, generator=generator).tolist()
    return order[:total]


def plan_micro_batches(n: int, train: LocalTrain, generator: torch.Generator) -> list[list[int]]:
    """Example indices of each micro-batch of this round."""
    total = train.max_local_steps * train.batch_size
    if train.local_epochs is not None:
        total = min(total, math.ceil(train.local_epochs * n))
    stream = example_stream(n, total, generator)
    return [stream[i : i + train.batch_size] for i in range(0, len(stream), train.batch_size)]


def step_plan(micro: list[list[int]], train: LocalTrain, data: Encoded) -> list[list[list[int]]]:
    """Micro-batches of each optimizer step: `grad_accum` consecutive ones, or, with
    length_grouping, the same examples sorted by length and cut again into `batch_size` pieces."""
    groups = [micro[i : i + train.grad_accum] for i in range(0, len(micro), train.grad_accum)]
    if not train.length_grouping:
        return groups
    sized = train.batch_size
    regrouped = []
    for group in groups:
        # Stable sort: equal lengths keep their stream order, so the plan stays seeded.
        examples = sorted((i for mb in group for i in mb), key=data.length)
        regrouped.append([examples[j : j + sized] for j in range(0, len(examples), sized)])
    return regrouped


def _penalty_fn(method: Any, start: AdapterState, device: torch.device):
    if not method.penalty.active:
        return None
    from fedlora.penalty import SubspacePenalty

    reference = start.map_tensors(lambda t: t.to(device))
    return SubspacePenalty(reference, method.penalty, method.scaling)


def _self_pruning(method: Any, start: AdapterState, rank: int | None):
    """HetLoRA's rank self-pruning of this update (methods/hetlora.py), or None when it is off."""
    if method.prune_gamma is None:
        return None
    if rank is None:
        raise ValueError("local_update: rank self-pruning needs the client's rank")
    from fedlora.methods.hetlora import RankSelfPruning

    return RankSelfPruning(start.lora, rank, method.prune_gamma, method.prune_lambda)


def local_update(model: Any, family: str, data: Encoded, start: AdapterState, method: Any,
                 train: LocalTrain, seed: int | Sequence[int], trained: str = "AB",
                 rank: int | None = None) -> ClientResult:
    """Train the client's copy of the adapter from `start` (the LoRA factors in `trained`, "AB",
    "A" or "B", and the head); returns its new state and stats. `rank`: the client's LoRA rank
    (its start's later components are zero), needed by rank self-pruning."""
    if len(data) == 0:
        raise ValueError("local_update: the client has no examples")
    device = next(model.parameters()).device
    write_state(model, start)
    params = set_trainable(model, trained)
    optimizer = torch.optim.AdamW(params, lr=train.lr, weight_decay=train.weight_decay)
    penalty = _penalty_fn(method, start, device)
    pruning = _self_pruning(method, start, rank)
    if pruning is not None:  # one client penalty: the subspace terms plus the pruning regulariser
        penalty = pruning if penalty is None else (lambda live, p=penalty: p(live) + pruning(live))
    key = derive_seed(seed)
    generator = torch.Generator().manual_seed(key)
    micro = plan_micro_batches(len(data), train, generator)
    groups = step_plan(micro, train, data)
    loss_sum, seen, penalty_sum = 0.0, 0, 0.0
    model.train()
    # Dropout draws from the global RNG: seed it per (seed, round, client) without leaking out.
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(key)
        for group in groups:
            optimizer.zero_grad(set_to_none=True)
            group_size = sum(len(mb) for mb in group)
            for mb in group:
                batch = batch_to(data.batch(mb), device)
                with autocast(train.precision, device):
                    scores = choice_scores(model, family, batch, packed=train.packing,
                                           row_tokens=PACKED_ROW_TOKENS)  # (B, 4)
                losses = choice_loss(scores, batch.labels, reduction="none")  # (B,), fp32
                # Sum over the group / group size: the mean gradient whatever the micro-batching.
                (losses.sum() / group_size).backward()
                loss_sum += losses.detach().sum().item()
                seen += len(mb)
            if penalty is not None:
                value = penalty(live_factors(model))  # once per step: params fixed within a group
                value.backward()
                penalty_sum += value.item()
            if train.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, train.grad_clip)
            optimizer.step()
    model.eval()
    state = read_state(model)
    if pruning is not None:
        rank = pruning.pruned_rank(state.lora)
        state = state.truncated(rank)  # the pruned components are dropped, not sent
    return ClientResult(state=state, mean_loss=loss_sum / seen, examples=seen,
                        micro_batches=len(micro), optimizer_steps=len(groups),
                        mean_penalty=penalty_sum / len(groups), start=start, rank=rank)
