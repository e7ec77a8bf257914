"""Secure aggregation with Flower's SecAgg+ (`secure-aggregation = true`): the server learns only
the weighted sum of the clients' contributions, never one client's update.

Flower runs the protocol: `SecAggPlusWorkflow` on the server and `secaggplus_mod` on the clients
(key agreement, Shamir shares of each client's mask seeds, masked quantized vectors, unmasking;
a client lost at any stage is survived while enough shares remain, see `_workflow_class`). Both
speak Flower's legacy fit format, so the protocol's train messages carry a `FitIns` and the
client's reply a `FitRes`; this module is the one place that knows that format.

What is summed is the method's linear form (`privacy.contribution`, as under differential
privacy): the sent factors minus the round's start for methods whose server rule needs only their
weighted mean ("factors": FedAvg, FFA-LoRA, RoLoRA, FedSA-LoRA, FedSVD), the dense update
s B_k A_k - s B A for those that need sum_k p_k s B_k A_k ("products": SVD, Subspace-Reg,
FlexLoRA, FLoRA). The server rule then post-processes the mean alone (`privacy.aggregate_mean`).
Methods whose rule reads individual updates otherwise (HetLoRA, FedEx-LoRA) are refused.

The sum is exact up to SecAgg+'s quantization (each entry and each weight on
`secagg-quantization-range` levels over [-`secagg-clipping-range`, `secagg-clipping-range`]);
a client whose contribution leaves that range fails with an error that names the setting, as
Flower would clip it silently. Geometry, drift, contribution norms and bytes need individual
updates and are not recorded. With differential privacy the clients clip and the server adds the
seeded noise to the mean, as the in-process engine does.
"""
from __future__ import annotations

import logging
import time

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, RecordDict
from flwr.common import Code, FitIns, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.compat.common import recorddict_compat as compat
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.strategy import Strategy
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey

from fedlora.client import ClientResult
from fedlora.config import RunConfig
from fedlora.engine import Federation, Replies
from fedlora.flower.records import CLIENT_KEY, RESULT_FIELDS, ROUND_KEY, state_to_arrays
from fedlora.flower.settings import FlowerSettings
from fedlora.methods import METHODS
from fedlora.partition import num_sampled
from fedlora.privacy import add_noise, aggregate_mean, contribution, noise_generator
from fedlora.state import AdapterState

log = logging.getLogger("fedlora.flower.secagg")
KEYS_KEY, RANGE_KEY = "keys", "clipping-range"  # FitIns config: the adapter's tensor names, the range


def check_secure_aggregation(cfg: RunConfig) -> None:
    """Refuse, before anything starts, a run that secure aggregation cannot serve."""
    if METHODS[cfg.method.name].aggregates not in ("factors", "products"):
        raise ValueError(f"secure aggregation: method {cfg.method.name!r}'s server rule reads the individual "
                         f"client updates (not a sum of them), which SecAgg+ hides; use a method whose rule is "
                         f"a weighted sum (see docs/flower.md)")
    sampled = num_sampled(cfg.federation.num_clients, cfg.federation.fraction)
    if sampled < 2:
        raise ValueError(f"secure aggregation needs at least 2 clients per round; federation.fraction "
                         f"{cfg.federation.fraction} of {cfg.federation.num_clients} clients samples {sampled}")
    if cfg.federation.client_ranks is not None:
        raise ValueError("secure aggregation with federation.client_ranks is not supported: a client's "
                         "contribution would be measured from its truncated start")
    if cfg.federation.weighting == "trained":
        raise ValueError("secure aggregation: federation.weighting 'trained' weighs by counts the server learns "
                         "only after the round; use 'partition' or 'uniform'")
    if cfg.privacy.enabled and cfg.privacy.clipping != "client":
        raise ValueError("secure aggregation with differential privacy needs privacy.clipping: client (the server "
                         "never sees an individual update to clip), which only 'factors' methods allow")


def weight_basis(fed: Federation, client: int) -> int:
    """What client `client` reports as its SecAgg+ weight: its partition size, or 1 (uniform)."""
    return 1 if fed.cfg.federation.weighting == "uniform" else len(fed.client_items[client])


def _contribution_arrays(result: ClientResult, fed: Federation, round_idx: int, limit: float) -> list[np.ndarray]:
    method = fed.method
    tensors = contribution(result.state, result.start, method.sent(round_idx), method.scaling, method.aggregates)
    arrays = [t.numpy() for t in tensors.values()]
    largest = max(float(np.abs(a).max()) for a in arrays)
    if largest > limit:
        raise ValueError(f"secure aggregation: a contribution entry of {largest:.4g} leaves "
                         f"secagg-clipping-range={limit}; raise it (the quantization step grows with it)")
    return arrays


# -- client side ---------------------------------------------------------------------------------
def read_fitins(content: RecordDict) -> tuple[AdapterState, int, int, float]:
    """(global adapter, round, client, clipping range) of the protocol's train message."""
    fitins = compat.recorddict_to_fitins(content, keep_input=True)
    config = fitins.config
    for key in (ROUND_KEY, CLIENT_KEY, KEYS_KEY, RANGE_KEY):
        if key not in config:
            raise ValueError(f"secure train message lacks config key {key!r}")
    keys = str(config[KEYS_KEY]).split("\n")
    arrays = parameters_to_ndarrays(fitins.parameters)
    if len(keys) != len(arrays):
        raise ValueError(f"secure train message holds {len(arrays)} tensors for {len(keys)} names")
    state = AdapterState.from_flat_dict({k: torch.from_numpy(np.array(a, copy=True)) for k, a in zip(keys, arrays)})
    return state, int(config[ROUND_KEY]), int(config[CLIENT_KEY]), float(config[RANGE_KEY])


def fitres_content(result: ClientResult, fed: Federation, client: int, round_idx: int, limit: float) -> RecordDict:
    """Client -> secaggplus_mod: the contribution to mask, the weight and the statistics."""
    metrics = {"client": client, **{f: float(getattr(result, f)) for f in RESULT_FIELDS}}
    fitres = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(_contribution_arrays(result, fed, round_idx, limit)),
                    weight_basis(fed, client), metrics)
    return compat.fitres_to_recorddict(fitres, keep_input=False)


# -- server side ---------------------------------------------------------------------------------
class Workflow(SecAggPlusWorkflow):
    """Flower's SecAgg+ workflow with one correction: a node lost before it shared its keys (dead,
    or dropping out at setup or key sharing) formed no masks with anyone, so it is not counted
    among the round's dropped clients, whose masks the others' key shares remove (Flower counts
    it, asks the others for shares they never received, and the round fails)."""

    def share_keys_stage(self, grid, context, state) -> bool:
        ok = super().share_keys_stage(grid, context, state)
        state.sampled_node_ids = set(state.active_node_ids)
        return ok


class RoundStrategy(Strategy):
    """The legacy Strategy the workflow drives for one round: it hands out our train instructions
    (`fitins_of(parameters)`) and keeps what `aggregate_fit` receives, the securely aggregated
    mean (the same in every result) with each client's statistics."""

    def __init__(self, fitins_of):
        self.fitins_of, self.received = fitins_of, []

    def initialize_parameters(self, client_manager):
        return None

    def configure_fit(self, server_round, parameters, client_manager):
        return self.fitins_of(parameters)

    def aggregate_fit(self, server_round, results, failures):
        self.received.extend(results)
        return None, {}

    def configure_evaluate(self, server_round, parameters, client_manager):
        return []

    def aggregate_evaluate(self, server_round, results, failures):
        return None, {}

    def evaluate(self, server_round, parameters):
        return None


class SecureRound:
    """The Flower engine's way of collecting a round (`engine.Collect`) under SecAgg+: the sampled
    clients' nodes run the protocol, and the server gets the weighted mean of their contributions,
    from which it computes the new global (noised first under differential privacy)."""

    def __init__(self, fed: Federation, grid, node_of_client: dict[int, int], settings: FlowerSettings):
        check_secure_aggregation(fed.cfg)
        self.fed, self.grid, self.settings = fed, grid, settings
        self.node_of_client = dict(node_of_client)
        self.client_of_node = {n: k for k, n in node_of_client.items()}

    def __call__(self, state: AdapterState, round_idx: int, clients: list[int]) -> Replies:
        fed, s = self.fed, self.settings
        arrays = state_to_arrays(state)
        present = [k for k in clients if k in self.node_of_client]

        def fitins_of(parameters):  # the global as the workflow read it from the context's state
            instructions = []
            for k in present:
                config = {ROUND_KEY: round_idx, CLIENT_KEY: k, KEYS_KEY: "\n".join(arrays.keys()),
                          RANGE_KEY: s.secagg_clipping_range}
                instructions.append((GridClientProxy(self.node_of_client[k], self.grid, 0), FitIns(parameters, config)))
            return instructions

        strategy = RoundStrategy(fitins_of)
        context = LegacyContext(Context(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config={}),
                                strategy=strategy)
        context.state[MAIN_CONFIGS_RECORD] = ConfigRecord({WorkflowKey.CURRENT_ROUND: round_idx})
        context.state[MAIN_PARAMS_RECORD] = arrays
        # The largest weight of the round: each client's weight ratio is then as fine as it can be.
        max_weight = float(max([weight_basis(fed, k) for k in present], default=1))
        workflow = Workflow(num_shares=s.secagg_num_shares, reconstruction_threshold=s.secagg_threshold,
                            max_weight=max_weight, clipping_range=s.secagg_clipping_range,
                            quantization_range=s.secagg_quantization_range, timeout=s.round_timeout_s)
        started = time.perf_counter()
        self.grid.errors.clear()
        workflow(self.grid, context)
        received = strategy.received
        log.info("round %d: SecAgg+ over %d clients in %.1f s", round_idx, len(received), time.perf_counter() - started)

        results = {}
        for proxy, fitres in received:
            k = self.client_of_node.get(proxy.node_id)
            m = fitres.metrics
            results[k] = ClientResult(state=None, mean_loss=float(m["mean_loss"]), examples=int(m["examples"]),
                                      micro_batches=int(m["micro_batches"]),
                                      optimizer_steps=int(m["optimizer_steps"]), mean_penalty=float(m["mean_penalty"]))
        failures = {k: "no node holds this partition" for k in clients if k not in self.node_of_client}
        for k in present:
            if k not in results:
                error = self.grid.errors.get(self.node_of_client[k])
                failures[k] = "dropped out of the SecAgg+ round" + (f": {error}" if error else "")
        if not received:
            return Replies({}, failures)
        mean_arrays = parameters_to_ndarrays(received[0][1].parameters)
        layout = contribution(state, state, fed.method.sent(round_idx), fed.method.scaling, fed.method.aggregates)
        mean = {name: torch.from_numpy(np.asarray(a, dtype=np.float64)).reshape(t.shape)
                for (name, t), a in zip(layout.items(), mean_arrays)}
        if fed.cfg.privacy.enabled:
            add_noise(mean, fed.cfg.privacy, len(results), noise_generator(fed.cfg.seed, round_idx))
        aggregated = aggregate_mean(fed.method, mean, state, round_idx, fed.cfg.seed)
        return Replies(results, failures, aggregated=aggregated)
