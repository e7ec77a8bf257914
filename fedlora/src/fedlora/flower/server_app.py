"""Flower ServerApp: sampling, aggregation, geometry, evaluation and the run folder, all from the
package's own engine.

The strategy samples exactly the clients the in-process engine samples (`sample_clients` by
(seed, round)), sends each one the global adapter on the node that reported that partition, and
aggregates the replies that arrived with the configured method (`server_update`, so every
method and ablation switch of `build_method` is available). Clients that crash or miss the
round timeout are left out (weights renormalise over the replies) and listed in the round's
`failed_clients`; the run fails only when fewer than `min-replies` arrive.
"""
from __future__ import annotations

import logging
import time
from typing import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from fedlora.engine import Federation, RunRecorder, build_federation, client_start, server_update
from fedlora.flower.records import ARRAYS, METRICS, read_result, state_to_arrays, train_content, wire_bytes
from fedlora.flower.settings import FlowerSettings, parse_run_config
from fedlora.partition import sample_clients
from fedlora.records import RunSummary
from fedlora.rundir import RunDir
from fedlora.state import AdapterState

log = logging.getLogger("fedlora.flower.server")


class RoundFailed(RuntimeError):
    """Fewer replies than `min-replies` arrived in a round."""


class PollingGrid(Grid):
    """Flower's Grid with a configurable pull interval (the deployment grid sleeps 3 s between
    pulls) that remembers where each message went, so error replies map back to clients."""

    def __init__(self, grid: Grid, poll_interval_s: float):
        self._grid = grid
        self.poll_interval_s = poll_interval_s
        self.destination: dict[str, int] = {}  # message id -> destination node id

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


class FedLoraStrategy(FedAvg):
    """FedAvg's message flow with the package's sampling, aggregation and bookkeeping."""

    def __init__(self, fed: Federation, settings: FlowerSettings, recorder: RunRecorder,
                 node_of_client: dict[int, int]):
        super().__init__(fraction_train=fed.cfg.federation.fraction,
                         fraction_evaluate=1.0 if settings.client_eval else 0.0,
                         min_train_nodes=settings.min_replies, min_available_nodes=1)
        self.fed, self.settings, self.recorder = fed, settings, recorder
        self.node_of_client = dict(node_of_client)
        self.client_of_node = {n: k for k, n in node_of_client.items()}
        self._grid: PollingGrid | None = None
        self._sampled: list[int] = []
        self._started = 0.0
        self._pending: tuple[AdapterState, dict] | None = None

    def summary(self) -> None:
        cfg = self.fed.cfg
        log.info("fedlora strategy: method %s, %d clients, fraction %s, min replies %d", cfg.method.name,
                 cfg.federation.num_clients, cfg.federation.fraction, self.settings.min_replies)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        fed_cfg = self.fed.cfg.federation
        self._grid = grid if isinstance(grid, PollingGrid) else None
        self._sampled = sample_clients(self.fed.cfg.seed, server_round, fed_cfg.num_clients, fed_cfg.fraction)
        self._started = time.perf_counter()
        ranked = bool(self.fed.client_ranks)  # each client trains at the rank the server last learnt
        return [Message(train_content(self.recorder.state, server_round, k, self.fed.rank_of(k) if ranked else None),
                        dst_node_id=self.node_of_client[k], message_type=MessageType.TRAIN,
                        group_id=str(server_round))
                for k in self._sampled if k in self.node_of_client]

    def _reply_client(self, reply: Message) -> int | None:
        node = self._grid.origin(reply) if self._grid else reply.metadata.src_node_id
        return self.client_of_node.get(node)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord, MetricRecord]:
        time_train = time.perf_counter() - self._started
        start = self.recorder.state
        failures = {k: "no node holds this partition" for k in self._sampled if k not in self.node_of_client}
        failures.update({k: f"no reply within round-timeout-s={self.settings.round_timeout_s}"
                         for k in self._sampled if k in self.node_of_client})
        results, wire_up = {}, 0
        for reply in replies:
            k = self._reply_client(reply)
            if k is None or k not in self._sampled:
                log.warning("round %d: ignoring a reply from an unexpected node", server_round)
                continue
            if reply.has_error():
                failures[k] = f"error {reply.error.code}: {reply.error.reason}"
                continue
            try:
                client, result = read_result(reply.content, lambda c: client_start(self.fed, start, c),
                                             lambda c: self.fed.rank_of(c) if self.fed.client_ranks else None)
                if client != k:
                    raise ValueError(f"reply of client {k}'s node claims client {client}")
            except ValueError as err:
                failures[k] = f"bad reply: {err}"
                continue
            results[k] = result
            failures.pop(k, None)
            wire_up += wire_bytes(reply.content[ARRAYS])
        ok = [k for k in self._sampled if k in results]  # the engine's (sorted) client order
        for k, reason in failures.items():
            log.warning("round %d: client %d failed: %s", server_round, k, reason)
        if len(ok) < self.settings.min_replies:
            raise RoundFailed(f"round {server_round}: {len(ok)} of {len(self._sampled)} sampled clients replied, "
                              f"min-replies={self.settings.min_replies}; failures: {failures}")
        new_state, record = server_update(self.fed, start, server_round, ok, [results[k] for k in ok], time_train)
        record.sampled_clients = self._sampled
        record.failed_clients = sorted(failures)
        record.failure_reasons = {str(k): v for k, v in sorted(failures.items())}
        record.bytes_up_wire = wire_up
        record.bytes_down_wire = len(self._sampled) * wire_bytes(state_to_arrays(start))
        self._pending = (new_state, record)
        metrics = MetricRecord({"client_loss": float(record.client_loss), "replies": len(ok)})
        return state_to_arrays(new_state), metrics

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        if not self.settings.client_eval or self._pending is None:
            return []
        state = self._pending[0]
        return [Message(RecordDict({ARRAYS: state_to_arrays(state)}), dst_node_id=self.node_of_client[k],
                        message_type=MessageType.EVALUATE, group_id=str(server_round))
                for k in self._pending[1].clients]

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Close the round: add the clients' own scores (if asked for) and record it."""
        new_state, record = self._pending
        self._pending = None
        scores = [r.content[METRICS] for r in replies if not r.has_error()]
        out = None
        if scores:
            n = sum(float(s["num-examples"]) for s in scores)
            out = MetricRecord({key: sum(float(s[key]) * float(s["num-examples"]) for s in scores) / n
                                for key in ("accuracy", "loss")})
            record.client_eval = {"accuracy": out["accuracy"], "loss": out["loss"],
                                  "clients": sorted(int(s["client"]) for s in scores)}
        self.recorder.record_round(new_state, record)
        log.info("round %d: accuracy %s loss %s failed %s", server_round, record.accuracy, record.loss,
                 record.failed_clients)
        return out


def run_server(grid: Grid, cfg, settings: FlowerSettings) -> RunSummary:
    """The whole Flower run on the server side; writes the run folder at settings.out_dir."""
    if not settings.out_dir:
        raise ValueError("Flower run config key 'out-dir' is empty: the ServerApp needs a run folder")
    from fedlora.methods import METHODS

    if METHODS[cfg.method.name].personal:
        raise ValueError(f"method {cfg.method.name!r} keeps factors on each client between rounds, which needs "
                         f"node-local state the Flower apps do not keep yet: run it with the in-process engine "
                         f"(`fedlora run`)")
    run_dir = RunDir(settings.out_dir)
    run_dir.check_free()
    fed = build_federation(cfg, log=log.info)
    with run_dir.lock():  # one writer per run folder, as in the in-process engine
        recorder = RunRecorder(fed, run_dir, resume=False, log=log.info)
        try:
            polling = PollingGrid(grid, settings.poll_interval_s)
            started = time.perf_counter()
            node_of_client = discover_nodes(polling, cfg.federation.num_clients, settings)
            discovery_s = time.perf_counter() - started
            strategy = FedLoraStrategy(fed, settings, recorder, node_of_client)
            strategy.start(grid=polling, initial_arrays=state_to_arrays(recorder.state), num_rounds=cfg.rounds,
                           timeout=settings.round_timeout_s)
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
