"""Flower ServerApp: sampling, aggregation, geometry, evaluation and the run folder, all from the
package's own engine.

Each round is the in-process engine's `play_round`, with `MessageRound` collecting the updates
(`secagg.SecureRound` under secure aggregation, where the server receives only their sum):
it samples exactly the clients the in-process engine samples (`sample_clients` by (seed,
round)), sends each one the global adapter on the node that reported that partition, and
aggregates the replies that arrived with the configured method (`server_update`, so every
method and ablation switch of `build_method` is available). Clients that crash or miss the
round timeout are left out (weights renormalise over the replies) and listed in the round's
`failed_clients`; the run fails only when fewer than `min-replies` arrive. Nothing is carried
from one step of a round to the next outside that one function call.

A personalized method's factors (FedSA-LoRA's B) stay on the nodes: the server holds the global
A and the initial B, so the model it evaluates is that one, the clients' own models are scored by
their nodes on their held-out items, and the geometry and drift of the clients' models, which
need their B, are not recorded (the in-process engine measures both, and evaluates an
evaluation-only global with the clients' mean B).
"""
from __future__ import annotations

import logging
import time
from typing import Iterable

from flwr.app import Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

from fedlora.engine import Federation, Replies, RunRecorder, build_federation, client_start, mean_heldout, play_round
from fedlora.flower.records import (
    ARRAYS,
    METRICS,
    evaluate_content,
    read_result,
    state_to_arrays,
    train_content,
    wire_bytes,
)
from fedlora.flower.secagg import SecureRound, check_secure_aggregation
from fedlora.flower.settings import FlowerSettings, parse_run_config
from fedlora.records import RunSummary
from fedlora.rundir import RunDir
from fedlora.state import AdapterState

log = logging.getLogger("fedlora.flower.server")


class PollingGrid(Grid):
    """Flower's Grid with a configurable pull interval (the deployment grid sleeps 3 s between
    pulls) that remembers where each message went, so error replies map back to clients, and
    the last error each node replied with."""

    def __init__(self, grid: Grid, poll_interval_s: float):
        self._grid = grid
        self.poll_interval_s = poll_interval_s
        self.destination: dict[str, int] = {}  # message id -> destination node id
        self.errors: dict[int, str] = {}  # node id -> the reason of its last error reply

    def set_run(self, run) -> None:
        self._grid.set_run(run)

    @property
    def run(self):
        return self._grid.run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None) -> Message:
        return self._grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self._grid.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        messages = list(messages)
        ids = list(self._grid.push_messages(messages))
        self.destination.update({mid: m.metadata.dst_node_id for mid, m in zip(ids, messages)})
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self._grid.pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        pending = set(self.push_messages(messages))
        deadline = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        while pending:
            got = list(self.pull_messages(pending))
            replies.extend(got)
            self.errors.update({self.origin(m): m.error.reason for m in got if m.has_error()})
            pending -= {m.metadata.reply_to_message_id for m in got}
            if not pending or (deadline is not None and time.monotonic() >= deadline):
                break
            time.sleep(self.poll_interval_s)
        return replies

    def origin(self, reply: Message) -> int | None:
        """The node a reply answers for (error replies come from the SuperLink itself)."""
        return self.destination.get(reply.metadata.reply_to_message_id)


def discover_nodes(grid: PollingGrid, num_clients: int, settings: FlowerSettings) -> dict[int, int]:
    """client index -> node id, from the partition id each connected node reports."""
    deadline = time.monotonic() + settings.node_wait_s
    while len(nodes := sorted(grid.get_node_ids())) < num_clients and time.monotonic() < deadline:
        time.sleep(settings.poll_interval_s)
    if not nodes:
        raise RuntimeError(f"no SuperNode connected within node-wait-s={settings.node_wait_s}")
    queries = [Message(RecordDict(), dst_node_id=n, message_type=MessageType.QUERY) for n in nodes]
    mapping: dict[int, int] = {}
    for reply in grid.send_and_receive(queries, timeout=settings.round_timeout_s):
        node = grid.origin(reply)
        if reply.has_error():
            log.warning("node %s did not answer the partition query: %s", node, reply.error.reason)
            continue
        info = reply.content["node"]
        pid, declared = int(info["partition-id"]), int(info["num-partitions"])
        if declared != num_clients or not 0 <= pid < num_clients:
            raise ValueError(f"node {node} holds partition-id={pid} of num-partitions={declared}, but the run "
                             f"has federation.num_clients={num_clients}")
        if pid in mapping:
            raise ValueError(f"nodes {mapping[pid]} and {node} both hold partition-id={pid}")
        mapping[pid] = node
    absent = [k for k in range(num_clients) if k not in mapping]
    if absent:
        log.warning("no node holds client(s) %s: they will count as failed when sampled", absent)
    return mapping


class MessageRound:
    """The Flower engine's way of collecting a round's updates (`engine.Collect`): one train
    message per sampled client to the node holding its partition, the replies read back. A client
    whose node is absent, crashed or missed `round-timeout-s` is reported missing with the reason."""

    def __init__(self, fed: Federation, grid: PollingGrid, node_of_client: dict[int, int],
                 settings: FlowerSettings):
        self.fed, self.grid, self.settings = fed, grid, settings
        self.node_of_client = dict(node_of_client)
        self.client_of_node = {n: k for k, n in node_of_client.items()}

    def __call__(self, state: AdapterState, round_idx: int, clients: list[int]) -> Replies:
        fed, timeout = self.fed, self.settings.round_timeout_s
        # Each client trains at the rank the server last learnt.
        messages = [Message(train_content(state, round_idx, k, fed.message_rank(k)),
                            dst_node_id=self.node_of_client[k], message_type=MessageType.TRAIN,
                            group_id=str(round_idx))
                    for k in clients if k in self.node_of_client]
        failures = {k: "no node holds this partition" for k in clients if k not in self.node_of_client}
        failures.update({k: f"no reply within round-timeout-s={timeout}" for k in clients if k in self.node_of_client})
        results, wire_up = {}, 0
        for reply in self.grid.send_and_receive(messages, timeout=timeout):
            k = self.client_of_node.get(self.grid.origin(reply))
            if k is None or k not in clients:
                log.warning("round %d: ignoring a reply from an unexpected node", round_idx)
                continue
            if reply.has_error():
                failures[k] = f"error {reply.error.code}: {reply.error.reason}"
                continue
            try:
                client, result = read_result(reply.content, lambda c: client_start(fed, state, c),
                                             fed.message_rank)
                if client != k:
                    raise ValueError(f"reply of client {k}'s node claims client {client}")
            except ValueError as err:
                failures[k] = f"bad reply: {err}"
                continue
            results[k] = result
            failures.pop(k)
            wire_up += wire_bytes(reply.content[ARRAYS])
        return Replies(results, failures, bytes_up_wire=wire_up,
                       bytes_down_wire=len(clients) * wire_bytes(state_to_arrays(state)))

    def scores(self, state: AdapterState, round_idx: int, clients: list[int], heldout: bool) -> list:
        """The metrics of the nodes of `clients` that answered an evaluate message (see
        client_app.evaluate_local); a node that failed is logged and left out."""
        messages = [Message(evaluate_content(state, k, heldout, self.fed.message_rank(k)),
                            dst_node_id=self.node_of_client[k], message_type=MessageType.EVALUATE,
                            group_id=str(round_idx)) for k in clients if k in self.node_of_client]
        replies = list(self.grid.send_and_receive(messages, timeout=self.settings.round_timeout_s))
        for reply in replies:
            if reply.has_error():
                log.warning("round %d: client %s did not score: %s", round_idx,
                            self.client_of_node.get(self.grid.origin(reply)), reply.error.reason)
        answered = [r.content[METRICS] for r in replies if not r.has_error()]
        if len(answered) < len(clients):
            log.warning("round %d: %d of %d clients scored", round_idx, len(answered), len(clients))
        return answered

    def evaluate(self, state: AdapterState, round_idx: int, clients: list[int]) -> dict | None:
        """The new global scored by `clients` on their own data: example-weighted accuracy and loss
        over the nodes that answered (None when none did)."""
        scores = self.scores(state, round_idx, clients, heldout=False)
        if not scores:
            return None
        n = sum(float(s["num-examples"]) for s in scores)
        mean = {key: sum(float(s[key]) * float(s["num-examples"]) for s in scores) / n for key in ("accuracy", "loss")}
        return {**mean, "clients": sorted(int(s["client"]) for s in scores)}

    def heldout(self, state: AdapterState, round_idx: int) -> dict:
        """`engine.mean_heldout` over the clients whose nodes answered: each node scores the
        client's own model (its rank, its personal factors, which only it holds) on its held-out
        items. Every client is asked, as the in-process engine scores every client."""
        scores = self.scores(state, round_idx, list(range(self.fed.cfg.federation.num_clients)), heldout=True)
        return mean_heldout(scores) if scores else {}


def run_server(grid: Grid, cfg, settings: FlowerSettings) -> RunSummary:
    """The whole Flower run on the server side; writes the run folder at settings.out_dir."""
    if not settings.out_dir:
        raise ValueError("Flower run config key 'out-dir' is empty: the ServerApp needs a run folder")
    run_dir = RunDir(settings.out_dir)
    run_dir.check_free()
    if settings.secure_aggregation:
        check_secure_aggregation(cfg)
    fed = build_federation(cfg, log=log.info)
    with run_dir.lock():  # one writer per run folder, as in the in-process engine
        recorder = RunRecorder(fed, run_dir, resume=False, log=log.info)
        try:
            polling = PollingGrid(grid, settings.poll_interval_s)
            started = time.perf_counter()
            node_of_client = discover_nodes(polling, cfg.federation.num_clients, settings)
            discovery_s = time.perf_counter() - started
            messages = MessageRound(fed, polling, node_of_client, settings)
            collect = SecureRound(fed, polling, node_of_client, settings) if settings.secure_aggregation else messages
            log.info("fedlora on Flower: method %s, %d clients, fraction %s, min replies %d", cfg.method.name,
                     cfg.federation.num_clients, cfg.federation.fraction, settings.min_replies)
            for round_idx in range(1, cfg.rounds + 1):
                # Held-out scores come from the nodes (round 0's, before any client trained, are the
                # server's: every client's model is then the global at its rank).
                heldout = (lambda s, r=round_idx: messages.heldout(s, r)) if fed.holdout_data else None
                new_state, record = play_round(fed, recorder.state, round_idx, collect, settings.min_replies,
                                               log=log.warning, heldout=heldout)
                if settings.client_eval:
                    record.client_eval = messages.evaluate(new_state, round_idx, record.clients)
                recorder.record_round(new_state, record)
                log.info("round %d: accuracy %s loss %s failed %s", round_idx, record.accuracy, record.loss,
                         record.failed_clients)
            failed = sorted({k for m in recorder.metrics for k in m.failed_clients or []})
            return recorder.finish(engine=settings.engine,
                                   nodes={str(k): n for k, n in sorted(node_of_client.items())},
                                   node_discovery_s=discovery_s, clients_ever_failed=failed)
        except BaseException as err:
            run_dir.set_status("failed", error=f"{type(err).__name__}: {err}")
            raise


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg, settings = parse_run_config(context.run_config)
    run_server(grid, cfg, settings)
