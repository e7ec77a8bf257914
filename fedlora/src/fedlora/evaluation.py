"""Accuracy and loss of the current adapter on a pre-tokenised eval set."""
from __future__ import annotations

from typing import Any

import torch

from fedlora.precision import autocast
from fedlora.scoring import Encoded, batch_to, choice_loss, choice_scores


@torch.inference_mode()
def evaluate(model: Any, family: str, data: Encoded, batch_size: int = 16,
             precision: str = "fp32", packed: bool = False) -> dict[str, float]:
    """{'accuracy', 'loss' (mean cross-entropy over the 4 scores), 'n'} over `data`;
    `precision` is a resolved one (fp32 | bf16, see precision.py), `packed` the decoder's path."""
    if len(data) == 0:
        raise ValueError("evaluate: the eval set is empty")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    correct, loss_sum = 0, 0.0
    # Batches of similar length waste less compute on padding; the totals do not depend on order.
    order = sorted(range(len(data)), key=data.length)
    for start in range(0, len(data), batch_size):
        batch = batch_to(data.batch(order[start : start + batch_size]), device)
        with autocast(precision, device):
            scores = choice_scores(model, family, batch, packed=packed)  # (B, 4)
        loss_sum += choice_loss(scores, batch.labels, reduction="sum").item()
        correct += (scores.argmax(-1) == batch.labels).sum().item()
    model.train(was_training)
    return {"accuracy": correct / len(data), "loss": loss_sum / len(data), "n": len(data)}
