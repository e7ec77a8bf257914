"""Flower ClientApp: local training and scoring with the package's own code.

The Federation (data, partition, model) is built once per process and cached at module level:
Flower's simulation keeps its worker processes between messages, so only the first message of a
worker pays for it. A node tokenises its own partition only, never the other clients' or the eval
set (in a deployment every message starts a fresh process and pays the build). torch and the
model code are imported on first use only, so the partition query (one short-lived process per
node in a deployment) starts fast. The node's partition comes from
`context.node_config["partition-id"]`; per-node bookkeeping lives in `context.state`, and so do a
personalized method's own factors (FedSA-LoRA's B), which never leave the node.
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
PERSONAL_KEY = "fedlora-personal"  # ArrayRecord in context.state: the client's personal factors


def secure_aggregation_mod(msg: Message, context: Context, call_next) -> Message:
    """Flower's `secaggplus_mod` for the messages of the SecAgg+ protocol (flower/secagg.py), the
    plain path for every other message."""
    if in_secagg(msg.content):
        from flwr.client.mod import secaggplus_mod

        return secaggplus_mod(msg, context, call_next)
    return call_next(msg, context)


def in_secagg(content: RecordDict) -> bool:
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

    return RECORD_KEY_CONFIGS in content.config_records


app = ClientApp(mods=[secure_aggregation_mod])
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
    if fed.holdout_data and fed.holdout_data[pid] is None:
        fed.holdout_data[pid] = encode(fed.holdout_items[pid], fed.tokenizer, fed.family, cfg.data.max_length)
    restore_personal(context, fed, pid)
    return fed, pid


def restore_personal(context: Context, fed: "Federation", pid: int) -> None:
    """This node's personal factors from context.state into the Federation, which a simulation
    worker shares between nodes (none yet: the client starts from the global's)."""
    from fedlora.flower.records import arrays_to_personal

    record = context.state.array_records.get(PERSONAL_KEY)
    if record is None:
        fed.personal.pop(pid, None)
    else:
        fed.personal[pid] = arrays_to_personal(record)


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
    """Local update of this node's partition from the global adapter in the message (inside the
    SecAgg+ protocol: the contribution, for secaggplus_mod to mask)."""
    from fedlora.engine import client_update
    from fedlora.flower.records import ARRAYS, arrays_to_state, personal_to_arrays, read_train_config, result_content
    from fedlora.flower.secagg import fitres_content, read_fitins

    fed, pid = federation_for(context)
    secure = in_secagg(msg.content)
    if secure:
        start, round_idx, client, limit = read_fitins(msg.content)
        rank = None  # client ranks are refused with secure aggregation
    else:
        round_idx, client, rank = read_train_config(msg.content)
        start = arrays_to_state(msg.content[ARRAYS])
    if client != pid:
        raise ValueError(f"train message for client {client} reached the node holding partition {pid}")
    if rank is not None and fed.client_ranks:  # the server's record of this client's rank
        fed.client_ranks[pid] = rank
    result = client_update(fed, start, round_idx, pid)
    if fed.method.personal:  # client_update kept them in the Federation; the node keeps them
        context.state[PERSONAL_KEY] = personal_to_arrays(fed.personal[pid])
    _remember(context, trained=True, **{"last-round": round_idx, "last-loss": float(result.mean_loss)})
    if secure:
        return Message(fitres_content(result, fed, pid, round_idx, limit), reply_to=msg)
    rank = result.rank if fed.client_ranks else None  # after any pruning; a lower rank sends no padding
    return Message(result_content(result, pid, fed.method.sent(round_idx), rank), reply_to=msg)


@app.evaluate()
def evaluate_local(msg: Message, context: Context) -> Message:
    """Score the global adapter in the message on this node's partition or, asked for `heldout`,
    the client's own model (the global with its rank and personal factors) on its held-out items."""
    from fedlora.engine import client_heldout, evaluate_state
    from fedlora.flower.records import ARRAYS, METRICS, arrays_to_state, read_evaluate_config

    fed, pid = federation_for(context)
    client, heldout, rank = read_evaluate_config(msg.content)
    if client != pid:
        raise ValueError(f"evaluate message for client {client} reached the node holding partition {pid}")
    state = arrays_to_state(msg.content[ARRAYS])
    if heldout:
        if not fed.holdout_data:
            raise ValueError("held-out scores asked of a run without federation.client_holdout")
        if rank is not None and fed.client_ranks:
            fed.client_ranks[pid] = rank
        scores = client_heldout(fed, state, pid)
    else:
        scores = evaluate_state(fed, state, fed.client_data[pid])[0]
        _remember(context, **{"last-eval-accuracy": float(scores["accuracy"])})
    metrics = MetricRecord({"accuracy": float(scores["accuracy"]), "loss": float(scores["loss"]),
                            "client": pid, "num-examples": int(scores["n"])})
    return Message(RecordDict({METRICS: metrics}), reply_to=msg)
