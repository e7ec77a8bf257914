"""Flower ClientApp: local training and scoring with the package's own code.

The Federation (data, partition, model) is built once per process and cached at module level:
Flower's simulation keeps its worker processes between messages, so only the first message of a
worker pays for it. A node tokenises its own partition only, never the other clients' or the eval
set (in a deployment every message starts a fresh process and pays the build). torch and the
model code are imported on first use only, so the partition query (one short-lived process per
node in a deployment) starts fast. The node's partition comes from
`context.node_config["partition-id"]`; per-node bookkeeping lives in `context.state`.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedlora.flower.settings import parse_run_config

if TYPE_CHECKING:
    from fedlora.engine import Federation

log = logging.getLogger("fedlora.flower.client")
STATE_KEY = "fedlora-client"  # ConfigRecord in context.state: this node's private bookkeeping

app = ClientApp()
_FEDERATION: dict[str, "Federation"] = {}


def federation_for(context: Context) -> tuple["Federation", int]:
    """(the process-wide Federation of this run's config and node, built on first use; the node's
    client index)."""
    from fedlora.engine import build_federation
    from fedlora.scoring import encode

    cfg, _ = parse_run_config(context.run_config)
    pid = partition_id(context, cfg.federation.num_clients)
    key = repr(sorted(context.run_config.items()))
    if key not in _FEDERATION:
        _FEDERATION.clear()  # one model in memory per process
        _FEDERATION[key] = build_federation(cfg, log=log.info, node=pid)
    fed = _FEDERATION[key]
    if fed.client_data[pid] is None:  # a simulation worker serves several nodes in turn
        fed.client_data[pid] = encode(fed.client_items[pid], fed.tokenizer, fed.family, cfg.data.max_length)
    return fed, pid


def partition_id(context: Context, num_clients: int) -> int:
    """This node's client index, validated against the run's number of clients."""
    config = context.node_config
    if "partition-id" not in config:
        raise ValueError("node_config has no 'partition-id'; start the SuperNode with "
                         "--node-config \"partition-id=K num-partitions=N\"")
    pid = int(config["partition-id"])
    declared = int(config.get("num-partitions", num_clients))
    if declared != num_clients or not 0 <= pid < num_clients:
        raise ValueError(f"node_config partition-id={pid} num-partitions={declared} does not fit the run's "
                         f"federation.num_clients={num_clients}")
    return pid


def _remember(context: Context, trained: bool = False, **values) -> None:
    """Update this node's private record in context.state (it never leaves the node)."""
    record = context.state.config_records.get(STATE_KEY) or ConfigRecord({"rounds-participated": 0})
    if trained:
        record["rounds-participated"] = int(record["rounds-participated"]) + 1
    for key, value in values.items():
        record[key] = value
    context.state[STATE_KEY] = record


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Report which partition this node holds (the server maps client index -> node id)."""
    pid = int(context.node_config.get("partition-id", -1))
    n = int(context.node_config.get("num-partitions", -1))
    return Message(RecordDict({"node": ConfigRecord({"partition-id": pid, "num-partitions": n})}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Local update of this node's partition from the global adapter in the message."""
    from fedlora.engine import client_update
    from fedlora.flower.records import ARRAYS, arrays_to_state, read_train_config, result_content

    fed, pid = federation_for(context)
    round_idx, client, rank = read_train_config(msg.content)
    if client != pid:
        raise ValueError(f"train message for client {client} reached the node holding partition {pid}")
    if rank is not None and fed.client_ranks:  # the server's record of this client's rank
        fed.client_ranks[pid] = rank
    start = arrays_to_state(msg.content[ARRAYS])
    result = client_update(fed, start, round_idx, pid)
    _remember(context, trained=True, **{"last-round": round_idx, "last-loss": float(result.mean_loss)})
    rank = result.rank if fed.client_ranks else None  # after any pruning; a lower rank sends no padding
    return Message(result_content(result, pid, fed.method.sent(round_idx), rank), reply_to=msg)


@app.evaluate()
def evaluate_local(msg: Message, context: Context) -> Message:
    """Score the global adapter in the message on this node's own partition."""
    from fedlora.adapters import write_state
    from fedlora.evaluation import evaluate
    from fedlora.flower.records import ARRAYS, METRICS, arrays_to_state

    fed, pid = federation_for(context)
    write_state(fed.model, arrays_to_state(msg.content[ARRAYS]))
    scores = evaluate(fed.model, fed.family, fed.client_data[pid], fed.cfg.eval.batch_size, fed.eval_precision,
                      fed.cfg.eval.packing)
    _remember(context, **{"last-eval-accuracy": float(scores["accuracy"])})
    metrics = MetricRecord({"accuracy": float(scores["accuracy"]), "loss": float(scores["loss"]),
                            "client": pid, "num-examples": int(scores["n"])})
    return Message(RecordDict({METRICS: metrics}), reply_to=msg)
