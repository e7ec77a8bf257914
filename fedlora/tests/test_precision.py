"""bf16 autocast for training and evaluation: choice of precision, agreement with fp32."""
from __future__ import annotations

import math

import pytest
import torch

from conftest import make_items, make_lora_model
from fedlora import precision
from fedlora.adapters import read_state, write_state
from fedlora.client import LocalTrain, local_update
from fedlora.config import ConfigError, config_from_dict
from fedlora.evaluation import evaluate
from fedlora.methods.base import Method, PenaltyWeights
from fedlora.precision import autocast, resolve_precision
from fedlora.scoring import choice_scores, encode

CPU = torch.device("cpu")
# bf16 keeps 8 significant bits (relative rounding 2^-9 per product). On these 2-layer tiny models
# scores of magnitude 0.1-4.3 moved by at most 0.014 (3 seeds, both families); 0.05 leaves a
# margin above that and is still far below what a wrong computation gives (scores of order 1).
SCORE_TOL = 0.05


def _randomized(family, tokenizer, seed=0, scale=0.2, lora_dropout=0.0):
    model = make_lora_model(family, tokenizer, seed=seed, lora_dropout=lora_dropout)
    gen = torch.Generator().manual_seed(seed)
    write_state(model, read_state(model).map_tensors(lambda t: t + scale * torch.randn(t.shape, generator=gen)))
    return model


def test_fp32_is_the_default_and_auto_says_why(monkeypatch):
    cfg = config_from_dict({"model": {"name": "x"}})
    assert cfg.train.precision == cfg.eval.precision == "fp32"  # today's numbers unless asked
    assert resolve_precision("fp32", CPU) == ("fp32", "configured")
    monkeypatch.setattr(precision, "_cpu_flags", lambda: {"avx512f", "avx512_bf16"})
    chosen, why = resolve_precision("auto", CPU)
    assert chosen == "bf16" and "avx512_bf16" in why
    monkeypatch.setattr(precision, "_cpu_flags", lambda: {"avx2"})
    chosen, why = resolve_precision("auto", CPU)
    assert chosen == "fp32" and "lacks avx512_bf16 and amx_bf16" in why
    chosen, why = resolve_precision("bf16", CPU)  # asked for explicitly: honoured, with a warning
    assert chosen == "bf16" and "emulated" in why


@pytest.mark.parametrize("key", ["train", "eval"])
def test_bad_precision_names_the_key(key):
    with pytest.raises(ConfigError, match=rf"{key}\.precision: .*'fp16'"):
        config_from_dict({"model": {"name": "x"}, key: {"precision": "fp16"}})


@pytest.mark.parametrize("family", ["encoder", "decoder"])
@torch.no_grad()
def test_bf16_scores_agree_with_fp32(tokenizer, family):
    model = _randomized(family, tokenizer)
    data = encode(make_items(16, seed=1), tokenizer, family, 48)
    batch = data.batch(range(16))
    fp32 = choice_scores(model, family, batch)
    with autocast("bf16", CPU):
        bf16 = choice_scores(model, family, batch)
    assert bf16.dtype == torch.float32 and torch.isfinite(bf16).all()
    assert not torch.equal(bf16, fp32)  # bf16 really ran
    torch.testing.assert_close(bf16, fp32, atol=SCORE_TOL, rtol=0)
    ev32 = evaluate(model, family, data, batch_size=4)
    ev16 = evaluate(model, family, data, batch_size=4, precision="bf16")
    assert ev16["loss"] == pytest.approx(ev32["loss"], abs=SCORE_TOL)


@pytest.mark.parametrize(("family", "packing"), [("encoder", False), ("decoder", False), ("decoder", True)])
def test_bf16_training_is_finite_close_to_fp32_and_keeps_fp32_state(tokenizer, family, packing):
    model = _randomized(family, tokenizer, lora_dropout=0.1)
    data = encode(make_items(12, seed=2), tokenizer, family, 48)
    start = read_state(model)
    method = Method(name="t", server="average", rank=4, scaling=2.0,
                    penalty=PenaltyWeights(mu=0.05, a_b=0.01, lam=1e-5))
    results = {}
    for prec in ("fp32", "bf16"):
        train = LocalTrain(lr=1e-2, weight_decay=0.0, grad_clip=1.0, batch_size=4, grad_accum=1,
                           max_local_steps=3, precision=prec, packing=packing)
        results[prec] = local_update(model, family, data, start, method, train, seed=(1, 1, 0))
    r16, r32 = results["bf16"], results["fp32"]
    assert math.isfinite(r16.mean_loss)
    # A mean of cross-entropies over the 4 scores: moves by at most the score error.
    assert r16.mean_loss == pytest.approx(r32.mean_loss, abs=SCORE_TOL)
    flat16, flat32 = r16.state.flat_dict(), r32.state.flat_dict()
    assert all(t.dtype == torch.float32 and torch.isfinite(t).all() for t in flat16.values())
    # Adam's steps are sign-like (g / sqrt(v)): bf16 can flip the sign of a tiny gradient entry and
    # move that entry a whole step the other way, so compare the update as a whole: its direction.
    start_flat = start.flat_dict()
    step16 = torch.cat([(flat16[k] - start_flat[k]).flatten() for k in flat16])
    step32 = torch.cat([(flat32[k] - start_flat[k]).flatten() for k in flat32])
    cosine = torch.nn.functional.cosine_similarity(step16, step32, dim=0).item()
    assert cosine > 0.9  # measured 0.99-0.997 on these models
