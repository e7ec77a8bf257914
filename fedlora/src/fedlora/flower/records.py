"""AdapterState and client results <-> Flower records: the one place that knows the wire format.

Message content layout (keys of the RecordDict):
    "arrays"  ArrayRecord   adapter tensors, keys of `AdapterState.flat_dict()`
                            (FedSVD clients keep A frozen, so they send B and the head only)
    "config"  ConfigRecord  server -> client: server-round, client (the partition to train or
                            score), rank, heldout (score the node's own model on its held-out items)
    "metrics" MetricRecord  client -> server: the ClientResult statistics and num-examples
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from fedlora.client import ClientResult
from fedlora.state import AdapterState

ARRAYS, CONFIG, METRICS = "arrays", "config", "metrics"
ROUND_KEY, CLIENT_KEY, RANK_KEY, HELDOUT_KEY = "server-round", "client", "rank", "heldout"
RESULT_FIELDS = ("mean_loss", "examples", "micro_batches", "optimizer_steps", "mean_penalty")


def state_to_arrays(state: AdapterState, sent: str = "AB", rank: int | None = None) -> ArrayRecord:
    """ArrayRecord of the adapter (float tensors are sent bit-exact in their own dtype).

    sent: the LoRA factors to include ("AB", "A" or "B"; a client sends those it trained).
    rank: send only the first `rank` components (a client of a lower rank sends no zero padding)."""
    record = ArrayRecord()
    for key, tensor in state.flat_dict().items():
        factor = key.rpartition("::")[2]
        if key.startswith("lora::"):
            if factor not in sent:
                continue
            if rank is not None:
                tensor = tensor[:rank] if factor == "A" else tensor[:, :rank]
        record[key] = Array(tensor.detach().cpu().contiguous().numpy())
    return record


def arrays_to_state(record: ArrayRecord, like: AdapterState | None = None, rank: int | None = None) -> AdapterState:
    """AdapterState from an ArrayRecord; LoRA factors and merged base not sent are taken from `like`
    (the client's start: clients send the factors they trained and never the base). With `rank`,
    LoRA factors arrive cut to their first `rank` components and are zero-padded to `like`'s shape.

    When `like` is given the keys and shapes must match it exactly, else a ValueError names them."""
    flat = {k: torch.from_numpy(np.array(v.numpy(), copy=True)) for k, v in record.items()}
    if like is None:
        return AdapterState.from_flat_dict(flat)
    expected = like.flat_dict()
    for key, tensor in expected.items():
        if key not in flat and key.startswith(("lora::", "base::")):
            flat[key] = tensor.detach().clone()
        elif rank is not None and key.startswith("lora::") and key in flat:
            cut = tensor[:rank] if key.endswith("::A") else tensor[:, :rank]
            if flat[key].shape == cut.shape:  # else the shape check below names it
                padded = torch.zeros_like(tensor)
                (padded[:rank] if key.endswith("::A") else padded[:, :rank]).copy_(flat[key])
                flat[key] = padded
    missing, extra = sorted(set(expected) - set(flat)), sorted(set(flat) - set(expected))
    if missing or extra:
        raise ValueError(f"adapter record does not match the global adapter: missing {missing[:5]}, "
                         f"unexpected {extra[:5]}")
    for key, tensor in expected.items():
        if tuple(flat[key].shape) != tuple(tensor.shape):
            raise ValueError(f"adapter tensor {key!r} has shape {tuple(flat[key].shape)}, expected "
                             f"{tuple(tensor.shape)}")
    return AdapterState.from_flat_dict({k: flat[k] for k in expected})


def train_content(state: AdapterState, round_idx: int, client: int, rank: int | None = None) -> RecordDict:
    """Server -> client: the global adapter, which partition to train in which round and, where
    client ranks differ, the client's rank as the server last learnt it."""
    config = ConfigRecord({ROUND_KEY: round_idx, CLIENT_KEY: client})
    if rank is not None:
        config[RANK_KEY] = rank
    return RecordDict({ARRAYS: state_to_arrays(state), CONFIG: config})


def read_train_config(content: RecordDict) -> tuple[int, int, int | None]:
    """(round, client, the client's rank or None) of a train message."""
    config = content[CONFIG]
    for key in (ROUND_KEY, CLIENT_KEY):
        if key not in config:
            raise ValueError(f"train message lacks config key {key!r}")
    rank = int(config[RANK_KEY]) if RANK_KEY in config else None
    return int(config[ROUND_KEY]), int(config[CLIENT_KEY]), rank


def evaluate_content(state: AdapterState, client: int, heldout: bool, rank: int | None = None) -> RecordDict:
    """Server -> client: the global adapter to score on the node's partition, or (`heldout`) to
    start the client's own model from and score that on its held-out items."""
    config = ConfigRecord({CLIENT_KEY: client, HELDOUT_KEY: heldout})
    if rank is not None:
        config[RANK_KEY] = rank
    return RecordDict({ARRAYS: state_to_arrays(state), CONFIG: config})


def read_evaluate_config(content: RecordDict) -> tuple[int, bool, int | None]:
    """(client, heldout, the client's rank or None) of an evaluate message."""
    config = content[CONFIG]
    for key in (CLIENT_KEY, HELDOUT_KEY):
        if key not in config:
            raise ValueError(f"evaluate message lacks config key {key!r}")
    rank = int(config[RANK_KEY]) if RANK_KEY in config else None
    return int(config[CLIENT_KEY]), bool(config[HELDOUT_KEY]), rank


def personal_to_arrays(personal: dict[str, torch.Tensor]) -> ArrayRecord:
    """A client's personal factors (layer -> tensor) as a record of its node's private state."""
    record = ArrayRecord()
    for name, tensor in personal.items():
        record[name] = Array(tensor.detach().cpu().contiguous().numpy())
    return record


def arrays_to_personal(record: ArrayRecord) -> dict[str, torch.Tensor]:
    return {name: torch.from_numpy(np.array(a.numpy(), copy=True)) for name, a in record.items()}


def result_content(result: ClientResult, client: int, sent: str, rank: int | None = None) -> RecordDict:
    """Client -> server: the trained adapter and the statistics of the local update."""
    metrics = MetricRecord({
        "client": client,
        "mean_loss": float(result.mean_loss),
        "examples": int(result.examples),
        "micro_batches": int(result.micro_batches),
        "optimizer_steps": int(result.optimizer_steps),
        "mean_penalty": float(result.mean_penalty),
        "num-examples": int(result.examples),  # the key Flower's strategies weight by
    })
    if rank is not None:  # the client's rank after the update: the factors are cut to it
        metrics[RANK_KEY] = rank
    return RecordDict({ARRAYS: state_to_arrays(result.state, sent, rank), METRICS: metrics})


def read_result(content: RecordDict, start_of: Callable[[int], AdapterState],
                rank_of: Callable[[int], int | None] = lambda client: None) -> tuple[int, ClientResult]:
    """(client index, ClientResult) from a train reply. Factors not sent are those of the client's
    start, `start_of(client)`; factors sent cut to the client's rank (the reply's, else
    `rank_of(client)`) are padded."""
    if ARRAYS not in content or METRICS not in content:
        raise ValueError(f"train reply must hold {ARRAYS!r} and {METRICS!r}, got {sorted(content)}")
    metrics = content[METRICS]
    missing = [k for k in ("client", *RESULT_FIELDS) if k not in metrics]
    if missing:
        raise ValueError(f"train reply metrics lack {missing}")
    client = int(metrics["client"])
    start = start_of(client)
    rank = int(metrics[RANK_KEY]) if RANK_KEY in metrics else rank_of(client)
    known = rank_of(client)
    if rank is not None and (rank < 1 or (known is not None and rank > known)):
        raise ValueError(f"reply of client {client} claims rank {rank}; its rank was {known} and cannot grow")
    state = arrays_to_state(content[ARRAYS], like=start, rank=rank)
    result = ClientResult(state=state, mean_loss=float(metrics["mean_loss"]), examples=int(metrics["examples"]),
                          micro_batches=int(metrics["micro_batches"]),
                          optimizer_steps=int(metrics["optimizer_steps"]),
                          mean_penalty=float(metrics["mean_penalty"]), start=start, rank=rank)
    return client, result


def wire_bytes(record: ArrayRecord) -> int:
    """Bytes of the tensor payload as Flower serialises it."""
    return int(record.count_bytes())
