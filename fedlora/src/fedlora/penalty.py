"""Subspace-Reg client penalty toward the global adapter the client started from.

    R = (1/P) sum_l [ (mu/2) ||s B A - s B_g A_g||_F^2 + (a_B/2) ||B - B_g||_F^2
                      + (lam/2) (||A||_F^2 + ||B||_F^2) ]

The first term is expanded with r x r Gram matrices,
    ||s B A - s B_g A_g||^2 = s^2 tr((B^T B)(A A^T)) - 2 s^2 tr((B_g^T B)(A A_g^T)) + ||s B_g A_g||^2,
so no d_out x d_in product is formed. Layers of equal shape are stacked and handled with one
batched matmul each; the references (B_g^T, A_g, ||s B_g A_g||^2) are prepared once per round.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from fedlora.methods.base import PenaltyWeights
from fedlora.state import AdapterState, LoraFactors


@dataclass
class _ShapeGroup:
    names: list[str]
    B_ref: Tensor  # (G, d_out, r)
    B_ref_t: Tensor  # (G, r, d_out)
    A_ref: Tensor  # (G, r, d_in)


def _gram_trace(X: Tensor, Y: Tensor) -> Tensor:
    """sum over the batch of tr(X_i Y_i) for (G, r, r) stacks."""
    return (X * Y.transpose(-1, -2)).sum()


class SubspacePenalty:
    """Callable on the live LoRA factors; returns a differentiable scalar."""

    def __init__(self, reference: AdapterState, weights: PenaltyWeights, scaling: float):
        if not reference.lora:
            raise ValueError("SubspacePenalty needs a reference adapter with at least one LoRA layer")
        if not scaling > 0:
            raise ValueError(f"SubspacePenalty scaling must be > 0, got {scaling!r}")
        self.weights = weights
        self.scaling = float(scaling)
        self.num_layers = len(reference.lora)
        by_shape: dict[tuple, list[str]] = {}
        for name, f in reference.lora.items():
            by_shape.setdefault((tuple(f.A.shape), tuple(f.B.shape)), []).append(name)
        self._shapes = {name: shape for shape, names in by_shape.items() for name in names}
        self._groups = []
        ref_sq = torch.zeros((), dtype=torch.float64)
        for names in by_shape.values():
            B = torch.stack([reference.lora[n].B.detach() for n in names])
            A = torch.stack([reference.lora[n].A.detach() for n in names])
            self._groups.append(_ShapeGroup(names, B, B.transpose(-1, -2).contiguous(), A))
            B64, A64 = B.double(), A.double()
            ref_sq += _gram_trace(B64.transpose(-1, -2) @ B64, A64 @ A64.transpose(-1, -2))
        self._ref_sq = (self.scaling**2 * ref_sq).item()  # sum_l ||s B_g A_g||_F^2

    def _check(self, live: dict[str, LoraFactors]) -> None:
        if live.keys() != self._shapes.keys():
            diff = sorted(set(live) ^ set(self._shapes))
            raise ValueError(f"live LoRA layers differ from the reference adapter: {diff[:5]}")
        for name, f in live.items():
            if (tuple(f.A.shape), tuple(f.B.shape)) != self._shapes[name]:
                raise ValueError(
                    f"layer {name!r}: live A {tuple(f.A.shape)} / B {tuple(f.B.shape)} do not match the "
                    f"reference {self._shapes[name]}"
                )

    def _move_refs(self, like: Tensor) -> None:
        """References follow the live parameters' device and dtype (moved once)."""
        for g in self._groups:
            if g.B_ref.device != like.device or g.B_ref.dtype != like.dtype:
                g.B_ref, g.B_ref_t, g.A_ref = (t.to(like) for t in (g.B_ref, g.B_ref_t, g.A_ref))

    def __call__(self, live: dict[str, LoraFactors]) -> Tensor:
        self._check(live)
        w, s = self.weights, self.scaling
        first = next(iter(live.values())).A
        if not w.active:
            return torch.zeros((), dtype=first.dtype, device=first.device)
        self._move_refs(first)
        prox = ab = l2 = first.new_zeros(())
        for g in self._groups:
            B = torch.stack([live[n].B for n in g.names])  # (G, d_out, r)
            A = torch.stack([live[n].A for n in g.names])  # (G, r, d_in)
            if w.mu > 0:
                self_sq = _gram_trace(B.transpose(-1, -2) @ B, A @ A.transpose(-1, -2))
                cross = _gram_trace(g.B_ref_t @ B, A @ g.A_ref.transpose(-1, -2))
                prox = prox + s * s * (self_sq - 2 * cross)
            if w.a_b > 0:
                ab = ab + (B - g.B_ref).square().sum()
            if w.lam > 0:
                l2 = l2 + A.square().sum() + B.square().sum()
        total = first.new_zeros(())
        if w.mu > 0:
            total = total + 0.5 * w.mu * (prox + self._ref_sq)
        if w.a_b > 0:
            total = total + 0.5 * w.a_b * ab
        if w.lam > 0:
            total = total + 0.5 * w.lam * l2
        return total / self.num_layers
