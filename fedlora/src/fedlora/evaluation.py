"""Accuracy and loss of the current adapter on a pre-tokenised eval set, and its per-item scores."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from fedlora.precision import autocast
from fedlora.scoring import NUM_CHOICES, Encoded, batch_to, choice_loss, choice_scores


def evaluate(model: Any, family: str, data: Encoded, batch_size: int = 16,
             precision: str = "fp32", packed: bool = False) -> dict[str, float]:
    """{'accuracy', 'loss' (mean cross-entropy over the 4 scores), 'n'} over `data`;
    `precision` is a resolved one (fp32 | bf16, see precision.py), `packed` the decoder's path."""
    return evaluate_items(model, family, data, batch_size, precision, packed)[0]


@torch.inference_mode()
def evaluate_items(model: Any, family: str, data: Encoded, batch_size: int = 16, precision: str = "fp32",
                   packed: bool = False) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    """As `evaluate`, plus the per-item scores (N, 4) float32 and labels (N,) in `data`'s order:
    what a paired comparison of two evaluations of the same items needs (see stats.py)."""
    if len(data) == 0:
        raise ValueError("evaluate: the eval set is empty")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    correct, loss_sum = 0, 0.0
    item_scores = np.zeros((len(data), NUM_CHOICES), dtype=np.float32)
    # Batches of similar length waste less compute on padding; the totals do not depend on order.
    order = sorted(range(len(data)), key=data.length)
    for start in range(0, len(data), batch_size):
        batch = batch_to(data.batch(order[start : start + batch_size]), device)
        with autocast(precision, device):
            scores = choice_scores(model, family, batch, packed=packed)  # (B, 4)
        loss_sum += choice_loss(scores, batch.labels, reduction="sum").item()
        correct += (scores.argmax(-1) == batch.labels).sum().item()
        item_scores[order[start : start + batch_size]] = scores.float().cpu().numpy()
    model.train(was_training)
    summary = {"accuracy": correct / len(data), "loss": loss_sum / len(data), "n": len(data)}
    return summary, item_scores, np.asarray(data.labels, dtype=np.int64)
