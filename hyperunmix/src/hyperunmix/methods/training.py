"""The minibatch training loop the deep methods share, and their one seeding rule.

Seeding rule: `random_state` (or, when None, a fresh seed drawn from the OS) seeds torch's global
generator (weight initialisation, dropout), a private `torch.Generator` that orders the
minibatches (and draws CNNAEU's crops), and every numpy / scikit-learn call of the fit (pixel
samples, k-means, VCA). Same seed, same data: same numbers.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import numpy as np
import torch

# (stage name, epochs done, epochs in all) -> None; set by `report_progress`, e.g. the CLI's bar.
ProgressCallback = Callable[[str, int, int], None]
_progress: ContextVar[ProgressCallback | None] = ContextVar("hyperunmix_training_progress", default=None)


def seeded(random_state: int | None) -> tuple[int, torch.Generator]:
    """The fit's seed and its minibatch-order generator; seeds torch's global generator too."""
    seed = int(np.random.default_rng().integers(2**31 - 1)) if random_state is None else int(random_state)
    torch.manual_seed(seed)
    return seed, torch.Generator().manual_seed(seed)


def shuffled(n_samples: int, batch_size: int, generator: torch.Generator) -> Callable[[int], Iterator[torch.Tensor]]:
    """Minibatches of sample indices, a fresh permutation every epoch."""
    return lambda epoch: iter(torch.randperm(n_samples, generator=generator).split(batch_size))


@contextmanager
def report_progress(callback: ProgressCallback):
    """Within the block, every training loop reports each finished epoch to `callback`."""
    token = _progress.set(callback)
    try:
        yield
    finally:
        _progress.reset(token)


def train(
    optimizer: torch.optim.Optimizer,
    batch_loss: Callable[[torch.Tensor, int], torch.Tensor],
    batches: Callable[[int], Iterable[torch.Tensor]],
    epochs: int,
    curve: list[float],
    after_step: Callable[[], None] | None = None,
    stage: str = "training",
) -> None:
    """Plain minibatch loop: `batches(epoch)` yields the minibatches (index tensors or data, one
    row per sample), `batch_loss(batch, epoch)` their mean loss; appends each epoch's mean loss
    (weighted by batch size) to `curve`. `after_step` runs after every optimiser step (a
    projection that keeps a decoder non-negative)."""
    report = _progress.get()
    for epoch in range(epochs):
        total, count = 0.0, 0
        for batch in batches(epoch):
            loss = batch_loss(batch, epoch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if after_step is not None:
                after_step()
            total += loss.item() * len(batch)
            count += len(batch)
        curve.append(total / count)
        if report is not None:
            report(stage, epoch + 1, epochs)
