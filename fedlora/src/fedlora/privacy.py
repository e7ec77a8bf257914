"""Client-level central differential privacy: clipping, Gaussian noise and accounting.

Every sampled client's contribution is clipped to L2 norm `clipping_norm` (C) and the server adds
Gaussian noise of standard deviation noise_multiplier * C / n to the mean of the n contributions
(Flower's `compute_stdv`), then the method's server rule post-processes that one noisy mean.
What a contribution is depends on what the method's server rule reads (`MethodPreset.aggregates`):

- "factors": the rule needs only the weighted mean of the tensors clients send (FedAvg, FFA-LoRA,
  RoLoRA, FedSA-LoRA, FedSVD). The contribution is the client's sent tensors minus its start:
  the sent LoRA factors and the head, flattened together. Clipping happens on the client
  (`clipping: client`, as Flower's `fixedclipping_mod`) or on the server (`clipping: server`).
- "products": the rule needs sum_k p_k s B_k A_k (SVD, Subspace-Reg, FlexLoRA, FLoRA). The
  contribution is the client's dense update s B_k A_k - s B A over all LoRA layers (and the head
  delta); only the server can clip it (a client cannot scale a product through its factors), so
  these methods take `clipping: server` only: a trusted server sees the individual updates.

Methods whose rule is neither (HetLoRA's norm-based weights, FedEx-LoRA's two releases) are refused.
The same contributions are what Flower's SecAgg+ sums (flower/secagg.py, `aggregate_mean`).
Noise is drawn from a generator seeded by (seed, round), so a resumed run replays it. Weights are
uniform (federation.weighting: uniform): the noise is calibrated to one client's weight 1/n.
The privacy spent, epsilon at `delta` after each round, comes from Flower's RDP accountant
(Google's dp-accounting) for n of K clients sampled without replacement (replace-one neighbours).
The geometry diagnostics in metrics.jsonl read the individual updates: they are not private.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from fedlora.client import derive_seed
from fedlora.config import PrivacySection
from fedlora.state import AdapterState, LoraFactors


def contribution(update: AdapterState, start: AdapterState, sent: str, scaling: float,
                 aggregates: str) -> dict[str, Tensor]:
    """The client's contribution as named float64 tensors (see the module docstring)."""
    out = {}
    for name, f in update.lora.items():
        ref = start.lora[name]
        if aggregates == "products":
            out[name] = scaling * (f.B.double() @ f.A.double() - ref.B.double() @ ref.A.double())
        else:
            for factor in sent:
                out[f"{name}::{factor}"] = getattr(f, factor).double() - getattr(ref, factor).double()
    for name, t in update.head.items():
        out[f"head::{name}"] = t.double() - start.head[name].double()
    return out


def _norm(tensors: dict[str, Tensor]) -> float:
    return math.sqrt(sum(t.square().sum().item() for t in tensors.values()))


def _clip_scale(norm: float, clipping_norm: float) -> float:
    """The factor that brings a contribution of L2 norm `norm` within `clipping_norm`."""
    return min(1.0, clipping_norm / norm) if norm > 0 else 1.0


def clip_factors(update: AdapterState, start: AdapterState, sent: str, clipping_norm: float) -> AdapterState:
    """`update` with its sent tensors moved toward `start` so that the sent delta has L2 norm at
    most `clipping_norm` (the client-side clipping of "factors" methods)."""
    factor = _clip_scale(_norm(contribution(update, start, sent, 1.0, "factors")), clipping_norm)
    if factor == 1.0:
        return update
    lora = {}
    for name, f in update.lora.items():
        ref = start.lora[name]
        moved = {k: (getattr(ref, k) + factor * (getattr(f, k) - getattr(ref, k))).to(getattr(f, k).dtype)
                 for k in sent}
        lora[name] = f._replace(**moved)
    head = {name: (start.head[name] + factor * (t - start.head[name])).to(t.dtype) for name, t in update.head.items()}
    return AdapterState(lora=lora, head=head, base=update.base)


def noisy_mean(updates: list[AdapterState], start: AdapterState, sent: str, scaling: float, aggregates: str,
               cfg: PrivacySection, generator: torch.Generator, clip: bool) -> tuple[dict[str, Tensor], list[float]]:
    """(mean_k clip(contribution_k) + N(0, (noise_multiplier * C / n)^2) per entry, the norm of
    each contribution as the server received it, before its own clipping)."""
    n = len(updates)
    total: dict[str, Tensor] = {}
    norms = []
    for u in updates:
        delta = contribution(u, start, sent, scaling, aggregates)
        norms.append(_norm(delta))
        factor = _clip_scale(norms[-1], cfg.clipping_norm) if clip else 1.0
        for k, t in delta.items():
            if k in total:
                total[k].add_(t, alpha=factor)
            else:
                total[k] = t.mul_(factor)
        del delta
    for t in total.values():  # in place: the dense sums of "products" methods are large
        t.div_(n)
    add_noise(total, cfg, n, generator)
    return total, norms


def add_noise(mean: dict[str, Tensor], cfg: PrivacySection, n: int, generator: torch.Generator) -> None:
    """Add N(0, (noise_multiplier * C / n)^2) to every entry of the mean of n contributions, in place."""
    std = cfg.noise_multiplier * cfg.clipping_norm / n if cfg.noise_multiplier else 0.0
    if std:
        for t in mean.values():
            t.add_(torch.randn(t.shape, generator=generator, dtype=t.dtype), alpha=std)


def noise_generator(seed: int, round_idx: int) -> torch.Generator:
    """The round's noise generator, seeded by (seed, round): a resumed run replays the noise."""
    return torch.Generator().manual_seed(derive_seed((seed, round_idx, 0x0D9)))


def dense_as_factors(D: Tensor) -> LoraFactors:
    """D (d_out, d_in) as factors B A with the identity on the smaller side, so the server rules'
    factored algebra (QR of B and of A^T) takes the dense matrix at the cost of a d x d identity."""
    d_out, d_in = D.shape
    if d_out <= d_in:
        return LoraFactors(A=D, B=torch.eye(d_out, dtype=D.dtype))
    return LoraFactors(A=torch.eye(d_in, dtype=D.dtype), B=D)


def private_aggregate(method, updates: list[AdapterState], start: AdapterState, round_idx: int, seed: int,
                      cfg: PrivacySection) -> tuple[AdapterState, list[float]]:
    """The method's new global adapter computed from the noisy mean contribution alone (see
    `aggregate_mean`), and the contributions' norms as received (to calibrate the clipping norm:
    with `clipping: server`, before clipping)."""
    mean, norms = noisy_mean(updates, start, method.sent(round_idx), method.scaling, method.aggregates, cfg,
                             noise_generator(seed, round_idx), clip=cfg.clipping == "server")
    return aggregate_mean(method, mean, start, round_idx, seed), norms


def aggregate_mean(method, mean: dict[str, Tensor], start: AdapterState, round_idx: int, seed: int) -> AdapterState:
    """The method's new global adapter from the mean contribution alone (noisy under DP, summed
    securely under SecAgg+): one pseudo-client of weight 1, start + mean, that the server rule
    post-processes. Consumes `mean`."""
    sent = method.sent(round_idx)
    head = {name: (start.head[name].double() + mean[f"head::{name}"]).to(t.dtype) for name, t in start.head.items()}
    lora = {}
    for name, ref in start.lora.items():
        if method.aggregates == "products":  # D = s B A + mean update, as the factors of D / s
            D = (method.scaling * ref.B.double() @ ref.A.double() + mean.pop(name)) / method.scaling
            lora[name] = dense_as_factors(D.float())
        else:
            lora[name] = ref._replace(**{k: (getattr(ref, k).double() + mean[f"{name}::{k}"]).to(getattr(ref, k).dtype)
                                         for k in sent})
    pseudo = AdapterState(lora=lora, head=head)
    return method.aggregate([pseudo], torch.ones(1, dtype=torch.float64), start, round_idx, seed, check_layout=False)


def epsilon_after(cfg: PrivacySection, rounds: int, sampled: int, population: int) -> float | None:
    """Cumulative epsilon at cfg.delta after `rounds` releases of `sampled` of `population`
    clients (Flower's RDP accountant); inf without noise."""
    if rounds == 0:
        return 0.0
    if not cfg.noise_multiplier:
        return math.inf
    from flwr.supercore.privacy_accounting import (
        GaussianPrivacyEvent,
        NeighboringRelation,
        PrivacyConfig,
        SamplingMethod,
    )
    from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant

    accountant = RdpAccountant(PrivacyConfig(target_delta=cfg.delta, population_size=population,
                                             neighboring_relation=NeighboringRelation.REPLACE_ONE,
                                             sampling_method=SamplingMethod.WITHOUT_REPLACEMENT))
    accountant.compose(GaussianPrivacyEvent(cfg.noise_multiplier, sampled, population), count=rounds)
    return accountant.get_epsilon(cfg.delta)
