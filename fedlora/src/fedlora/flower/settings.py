"""Flower run configuration: the typed RunConfig plus the Flower-only settings.

Flower hands every ServerApp/ClientApp a flat `run_config` (the `[tool.flwr.app.config]` table
of the app's pyproject.toml fused with `flwr run --run-config` overrides). The experiment itself
travels as one key, `config-json` (the resolved RunConfig, so server and clients see exactly the
same values), or as `config-path` + `overrides` for runs started by hand with `flwr run`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fedlora.config import ConfigError, RunConfig, config_from_dict, load_config

Engine = Literal["flower-simulation", "flower-deployment"]


class FlowerSettings(BaseModel):
    """What only the Flower engines need (the in-process engine has no use for it)."""

    model_config = ConfigDict(extra="forbid")

    engine: Engine = "flower-deployment"
    out_dir: str = Field("", description="run folder written by the ServerApp (absolute path)")
    # A round fails the run only when fewer replies than this arrive (crashed or late clients
    # are recorded in the round's `failed_clients` and left out of the aggregate).
    min_replies: int = Field(1, ge=1)
    round_timeout_s: float = Field(600.0, gt=0, description="wait at most this long for replies")
    # Pause between reply pulls (Flower's own grid: 3 s). Shorter polls cost CPU that the clients
    # need on a small machine: see docs/flower.md for measurements.
    poll_interval_s: float = Field(1.0, gt=0, description="pause between reply pulls")
    node_wait_s: float = Field(120.0, ge=0, description="wait this long for all nodes to connect")
    client_eval: bool = False  # also let the sampled clients score the new global on their data
    # Flower's SecAgg+ (flower/secagg.py): the server learns only the sum of the updates. Shares of
    # each client's keys go to this fraction of the round's clients, and this fraction of the
    # shares rebuilds a dropped client's masks (Flower's num_shares / reconstruction_threshold).
    secure_aggregation: bool = False
    secagg_num_shares: float = Field(1.0, gt=0, le=1)
    secagg_threshold: float = Field(0.67, gt=0, le=1)
    # Each contribution entry must lie in [-range, range] (checked on the client, never clipped);
    # it is quantized to this many levels, so the sum is exact to about 2 * range / levels per client.
    secagg_clipping_range: float = Field(8.0, gt=0)
    secagg_quantization_range: int = Field(2**22, ge=2, lt=2**31)


# Flat Flower run-config keys (kebab case, as Flower apps use) -> FlowerSettings fields.
SETTING_KEYS = {
    "engine": "engine", "out-dir": "out_dir", "min-replies": "min_replies",
    "round-timeout-s": "round_timeout_s", "poll-interval-s": "poll_interval_s",
    "node-wait-s": "node_wait_s", "client-eval": "client_eval", "secure-aggregation": "secure_aggregation",
    "secagg-num-shares": "secagg_num_shares", "secagg-threshold": "secagg_threshold",
    "secagg-clipping-range": "secagg_clipping_range", "secagg-quantization-range": "secagg_quantization_range",
}
CONFIG_KEYS = ("config-json", "config-path", "overrides")


def default_run_config() -> dict[str, Any]:
    """The app's `[tool.flwr.app.config]` defaults (every key Flower will accept)."""
    defaults = FlowerSettings()
    out: dict[str, Any] = {"config-json": "", "config-path": "", "overrides": ""}
    for key, field in SETTING_KEYS.items():
        out[key] = getattr(defaults, field)
    return out


def to_run_config(cfg: RunConfig, settings: FlowerSettings) -> dict[str, Any]:
    """The flat run config that carries `cfg` and `settings` to every Flower process."""
    out = {"config-json": cfg.model_dump_json(), "config-path": "", "overrides": ""}
    for key, field in SETTING_KEYS.items():
        out[key] = getattr(settings, field)
    return out


def _run_config_from(run_config: Mapping[str, Any]) -> RunConfig:
    text = str(run_config.get("config-json") or "")
    if text:
        try:
            tree = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(f"Flower run config key 'config-json' is not valid JSON: {err}") from None
        return config_from_dict(tree, "Flower run config key 'config-json'")
    path = str(run_config.get("config-path") or "")
    if not path:
        raise ConfigError("the Flower run config sets neither 'config-json' nor 'config-path'; start the run "
                          "with `fedlora flower simulate|deploy` or pass --run-config \"config-path='CONFIG.yaml'\"")
    overrides = [o for o in str(run_config.get("overrides") or "").split(";") if o.strip()]
    return load_config(Path(path).expanduser(), overrides)


def parse_run_config(run_config: Mapping[str, Any]) -> tuple[RunConfig, FlowerSettings]:
    """Typed RunConfig and FlowerSettings from Flower's flat run config; errors name the key."""
    unknown = sorted(set(run_config) - set(SETTING_KEYS) - set(CONFIG_KEYS))
    if unknown:
        raise ConfigError(f"unknown Flower run config key(s) {unknown}; valid: "
                          f"{sorted(SETTING_KEYS) + list(CONFIG_KEYS)}")
    values = {SETTING_KEYS[k]: v for k, v in run_config.items() if k in SETTING_KEYS}
    try:
        settings = FlowerSettings.model_validate(values)
    except ValidationError as err:
        lines = ["invalid Flower run config:"]
        inverse = {v: k for k, v in SETTING_KEYS.items()}
        for e in err.errors():
            field = str(e["loc"][0]) if e["loc"] else "?"
            lines.append(f"  {inverse.get(field, field)}: {e['msg']}")
        raise ConfigError("\n".join(lines)) from None
    return _run_config_from(run_config), settings
