"""Moving adapter state in and out of a live PEFT model without rebuilding state dicts.

Layer names are module paths inside the base model (e.g. `bert.encoder.layer.0.attention.self.query`);
head names are the head's parameter names (e.g. `classifier.weight`). The handles to the live
parameters are looked up once per model and cached, so swapping a client's adapter in is a
handful of in-place `copy_` calls.
"""
from __future__ import annotations

import copy
import json
import weakref
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import PeftModel, get_peft_model_state_dict
from peft.tuners.lora import LoraLayer
from peft.utils.other import ModulesToSaveWrapper
from safetensors.torch import save as safetensors_bytes
from torch import nn

from fedlora.files import atomic_write_bytes, file_mode, folder_mode, replacing_folder
from fedlora.state import AdapterState, LoraFactors

_PREFIX = "base_model.model."


@dataclass
class Handles:
    lora: dict[str, tuple[nn.Parameter, nn.Parameter]]  # name -> (A weight, B weight)
    head: dict[str, nn.Parameter]  # name -> trainable head parameter
    live_names: dict[int, str]  # id(param) -> name in model.named_parameters()
    base: dict[str, nn.Parameter]  # name -> the frozen base weight under the LoRA layer
    # The base weights as loaded, kept once a merged base (AdapterState.base) is first written, so
    # writing a state without one restores them bit for bit.
    original_base: dict[str, torch.Tensor] | None = None
    applied_base: dict[str, torch.Tensor] | None = None  # the merged base the weights hold (None: as loaded)


_HANDLES: "weakref.WeakKeyDictionary[nn.Module, Handles]" = weakref.WeakKeyDictionary()


def _short(name: str) -> str:
    return name[len(_PREFIX):] if name.startswith(_PREFIX) else name


def lora_layers(model: PeftModel) -> dict[str, LoraLayer]:
    """LoRA-wrapped modules of the active adapter, keyed by module path in the base model."""
    adapter = model.active_adapter
    return {_short(n): m for n, m in model.named_modules()
            if isinstance(m, LoraLayer) and adapter in m.lora_A}


def head_modules(model: PeftModel) -> dict[str, nn.Module]:
    """The trained copies of the exchanged head modules (PEFT `modules_to_save`)."""
    adapter = model.active_adapter
    return {_short(n): m.modules_to_save[adapter] for n, m in model.named_modules()
            if isinstance(m, ModulesToSaveWrapper) and adapter in m.modules_to_save}


def handles(model: PeftModel) -> Handles:
    """Live parameter handles, computed once per model."""
    cached = _HANDLES.get(model)
    if cached is not None:
        return cached
    adapter = model.active_adapter
    layers = lora_layers(model)
    lora = {name: (layer.lora_A[adapter].weight, layer.lora_B[adapter].weight) for name, layer in layers.items()}
    head = {f"{mod_name}.{p_name}": p for mod_name, module in head_modules(model).items()
            for p_name, p in module.named_parameters()}
    if not lora:
        raise ValueError(f"{type(model).__name__} has no LoRA layers for adapter {adapter!r}")
    live_names = {id(p): n for n, p in model.named_parameters()}
    base = {name: layer.get_base_layer().weight for name, layer in layers.items()}
    _HANDLES[model] = Handles(lora=lora, head=head, live_names=live_names, base=base)
    return _HANDLES[model]


def lora_modules(model: PeftModel) -> dict[str, tuple[nn.Parameter, nn.Parameter]]:
    return handles(model).lora


def head_params(model: PeftModel) -> dict[str, nn.Parameter]:
    return handles(model).head


def live_factors(model: PeftModel) -> dict[str, LoraFactors]:
    """The live (differentiable) LoRA parameters, for the client penalty."""
    return {name: LoraFactors(a, b) for name, (a, b) in handles(model).lora.items()}


def read_state(model: PeftModel) -> AdapterState:
    """Detached float32 copies of the live adapter and head."""
    h = handles(model)
    copy = lambda t: t.detach().to(dtype=torch.float32, copy=True)  # noqa: E731
    return AdapterState(
        lora={name: LoraFactors(copy(a), copy(b)) for name, (a, b) in h.lora.items()},
        head={name: copy(p) for name, p in h.head.items()},
    )


def _check_keys(kind: str, expected: set[str], got: set[str]) -> None:
    if expected != got:
        missing, extra = sorted(expected - got), sorted(got - expected)
        raise KeyError(f"adapter state {kind} does not match the model: missing {missing[:5]}, "
                       f"unexpected {extra[:5]}")


def _copy_into(param: nn.Parameter, value: torch.Tensor, name: str) -> None:
    if param.shape != value.shape:
        raise ValueError(f"adapter tensor {name}: expected shape {tuple(param.shape)}, got {tuple(value.shape)}")
    param.copy_(value)


@torch.no_grad()
def write_state(model: PeftModel, state: AdapterState) -> None:
    """Copy `state` into the live parameters in place (dtype/device converted by copy_)."""
    h = handles(model)
    _check_keys("LoRA layers", set(h.lora), set(state.lora))
    _check_keys("head tensors", set(h.head), set(state.head))
    for name, (a, b) in h.lora.items():
        _copy_into(a, state.lora[name].A, f"{name}.A")
        _copy_into(b, state.lora[name].B, f"{name}.B")
    for name, p in h.head.items():
        _copy_into(p, state.head[name], name)
    _write_base(h, state.base)


def _write_base(h: Handles, base: dict[str, torch.Tensor]) -> None:
    """Base weights = as loaded + `base` (the merged updates); as loaded when `base` is empty.
    A round writes the same global's base for every client and the evaluation: written once."""
    target = base or None
    if target is h.applied_base:
        return
    if base:
        _check_keys("merged base layers", set(h.lora), set(base))
        for name, weight in h.base.items():  # (d_out, d_in), as nn.Linear stores it
            if base[name].shape != weight.shape:
                raise ValueError(f"merged base of {name}: shape {tuple(base[name].shape)}, the layer's weight "
                                 f"is {tuple(weight.shape)} (layers storing W transposed are not supported)")
    if h.original_base is None:
        h.original_base = {name: w.detach().clone() for name, w in h.base.items()}
    for name, weight in h.base.items():
        original = h.original_base[name]
        weight.data.copy_(original + base[name].to(original) if base else original)
    h.applied_base = target


def set_trainable(model: PeftModel, trained: str = "AB") -> list[nn.Parameter]:
    """Only the LoRA factors named in `trained` ("AB", "A" or "B") and the head train; returns the
    trainable parameters."""
    h = handles(model)
    for p in model.parameters():
        p.requires_grad_(False)
    trainable = []
    for a, b in h.lora.values():
        a.requires_grad_("A" in trained)
        b.requires_grad_("B" in trained)
        trainable += [p for p, factor in ((a, "A"), (b, "B")) if factor in trained]
    for p in h.head.values():
        p.requires_grad_(True)
        trainable.append(p)
    return trainable


def peft_state_dict(model: PeftModel, state: AdapterState) -> dict[str, torch.Tensor]:
    """`state` under PEFT's saved key names (as `get_peft_model_state_dict` writes them)."""
    h = handles(model)
    values: dict[str, torch.Tensor] = {}
    for name, (a, b) in h.lora.items():
        values[h.live_names[id(a)]] = state.lora[name].A
        values[h.live_names[id(b)]] = state.lora[name].B
    for name, p in h.head.items():
        values[h.live_names[id(p)]] = state.head[name]
    out = get_peft_model_state_dict(model, state_dict=values, adapter_name=model.active_adapter,
                                    save_embedding_layers=False)
    if len(out) != len(values):
        raise RuntimeError(f"PEFT kept {len(out)} of {len(values)} adapter tensors when saving")
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in out.items()}


def save_peft_adapter(model: PeftModel, state: AdapterState, folder: str | Path) -> Path:
    """Write `state` in PEFT format (adapter_config.json + adapter_model.safetensors), atomically.

    Loadable with `PeftModel.from_pretrained(base_model, folder)`.
    """
    folder = Path(folder)
    h = handles(model)
    _check_keys("LoRA layers", set(h.lora), set(state.lora))
    _check_keys("head tensors", set(h.head), set(state.head))
    tensors = peft_state_dict(model, state)
    with replacing_folder(folder) as tmp:
        model.peft_config[model.active_adapter].save_pretrained(str(tmp))
        # Bytes written by our helper: safetensors' own save_file leaves the file owner-only.
        atomic_write_bytes(tmp / "adapter_model.safetensors", safetensors_bytes(tensors, metadata={"format": "pt"}))
        json.loads((tmp / "adapter_config.json").read_text())  # written and parseable
    return folder


def save_merged_model(model: PeftModel, state: AdapterState, tokenizer, folder: str | Path) -> Path:
    """The full model W0 + base + s B A (and its tokenizer) as a transformers folder, atomically:
    the export of methods that merge into the base weights, which no PEFT adapter alone can hold.

    Loadable with `AutoModelForCausalLM` / `AutoModelForMultipleChoice.from_pretrained(folder)`."""
    folder = Path(folder)
    write_state(model, state)
    merged = copy.deepcopy(model).merge_and_unload()
    with replacing_folder(folder) as tmp:
        merged.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        for path in tmp.rglob("*"):  # safetensors writes owner-only files: give them the umask's mode
            path.chmod(folder_mode() if path.is_dir() else file_mode())
    return folder
