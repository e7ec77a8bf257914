"""In-process federated simulator: the default engine.

One process, one base model loaded once; per sampled client the global adapter is written into
the live LoRA parameters, trained locally, read back; the server aggregates, measures geometry
and evaluates. Every random choice derives from (seed, round, client), so a resumed run
replays the same numbers as an uninterrupted one. A round is `play_round` for every engine:
the Flower ServerApp passes it another way of collecting the clients' updates.
"""
from __future__ import annotations

import os
import subprocess
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from fedlora import __version__
from fedlora.adapters import save_merged_model, save_peft_adapter, write_state
from fedlora.client import ClientResult, local_update, resolve_train
from fedlora.config import FAMILY_DEFAULTS, RunConfig
from fedlora.data import Item, load_pools
from fedlora.evaluation import evaluate_items
from fedlora.files import check_folder_path
from fedlora.geometry import round_geometry, update_norms
from fedlora.methods import Method, build_method
from fedlora.models import add_lora, initial_state, load_base, resolve_device
from fedlora.partition import Partition, client_ranks, make_partition, partition_stats, sample_clients, split_holdout
from fedlora.precision import resolve_precision
from fedlora.privacy import clip_factors, epsilon_after, private_aggregate
from fedlora.progress import Progress
from fedlora.records import RoundRecord, RunSummary
from fedlora.rundir import RunDir
from fedlora.scoring import encode
from fedlora.state import AdapterState, weighted_sum
from fedlora.summary import summarize

Log = Callable[[str], None]


@dataclass
class Federation:
    """Everything a round needs, built once per run."""

    cfg: RunConfig
    model: torch.nn.Module
    tokenizer: object
    family: str
    method: Method
    partition: Partition
    client_items: list[list[Item]]
    client_data: list  # pre-tokenised per client
    eval_data: object  # pre-tokenised eval subset
    partition_stats: dict
    eval_precision: str = "fp32"  # resolved (fp32 | bf16); training's is in resolve_train
    client_ranks: list[int] | None = None  # per client; None: every client trains lora.r
    # Per client, held-out items (federation.client_holdout) and their pre-tokenised form.
    holdout_items: list[list[Item]] | None = None
    holdout_data: list | None = None
    # Personalized methods: each client's own factors (client -> layer -> B), kept between rounds.
    personal: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)

    def rank_of(self, client: int) -> int:
        return self.client_ranks[client] if self.client_ranks else self.cfg.lora.r

    def message_rank(self, client: int) -> int | None:
        """The rank a Flower message about `client` carries: its own where client ranks differ,
        else None (every factor has the global rank)."""
        return self.client_ranks[client] if self.client_ranks else None


_MODEL_CACHE: dict[str, tuple] = {}
# Round 0 of one (model, LoRA, device, data, seed, eval settings) is the same for every method: the
# initial adapter depends on the seed only. A sweep evaluates it once and reuses it (the numbers are
# the same bit for bit; on a CPU it saves one full evaluation per further method).
_ZERO_SHOT_CACHE: dict[str, tuple] = {}


def _model_key(cfg: RunConfig, device: torch.device | str) -> str:
    return repr((cfg.model.model_dump(), cfg.lora.model_dump(), str(device)))


def _load_model(cfg: RunConfig, device: torch.device, log: Log):
    """Base model + LoRA wrapper, shared by every run of one process with the same model/LoRA."""
    key = _model_key(cfg, device)
    if key not in _MODEL_CACHE:
        _MODEL_CACHE.clear()  # keep one model in memory at a time
        _ZERO_SHOT_CACHE.clear()
        loaded = load_base(cfg.model, device, log=log)
        model = add_lora(loaded.model, cfg.lora, loaded.family)
        _MODEL_CACHE[key] = (model, loaded.tokenizer, loaded.family)
    return _MODEL_CACHE[key]


def build_federation(cfg: RunConfig, log: Log = print, node: int | None = None) -> Federation:
    """Data, partition, model and method of a run. `node`: built for the Flower SuperNode holding
    that client, which tokenises its own partition and held-out items only (the other clients'
    `client_data` and `holdout_data` are None) and not the eval set (the ServerApp scores that)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)  # before the data: a missing GPU fails at once
    pools = load_pools(cfg.data, cfg.seed, log=log)
    partition = make_partition(pools.train, cfg.federation, cfg.seed, log=log)
    trained, held = partition.clients, None
    if cfg.federation.client_holdout:
        trained, held = split_holdout(partition, cfg.federation.client_holdout, cfg.seed)
    client_items = [[pools.train[i] for i in idx] for idx in trained]
    holdout_items = [[pools.train[i] for i in idx] for idx in held] if held is not None else None
    model, tokenizer, family = _load_model(cfg, device, log)
    method = build_method(cfg.method, rank=cfg.lora.r, scaling=cfg.lora.scaling,
                          family_clip_tau=FAMILY_DEFAULTS[family]["clip_tau"])
    precision = {}
    for phase in ("train", "eval"):
        requested = getattr(cfg, phase).precision
        precision[phase], why = resolve_precision(requested, device)
        if requested != "fp32":  # say what auto chose, and why
            log(f"{phase}.precision={requested}: {precision[phase]} ({why})")
    ranks = client_ranks(cfg.federation)
    if ranks is None and method.prune_gamma is not None:  # self-pruning makes ranks differ
        ranks = [cfg.lora.r] * cfg.federation.num_clients
    if ranks:
        log(f"client LoRA ranks: {ranks} (the global adapter's: {cfg.lora.r})")
    max_len = cfg.data.max_length
    return Federation(
        cfg=cfg, model=model, tokenizer=tokenizer, family=family, method=method,
        partition=partition, client_items=client_items,
        client_data=[encode(items, tokenizer, family, max_len) if node in (None, k) else None
                     for k, items in enumerate(client_items)],
        eval_data=encode(pools.eval, tokenizer, family, max_len) if node is None else None,
        partition_stats={"scheme": partition.scheme, "fallback_reason": partition.fallback_reason,
                         **partition_stats(partition, [it.activity_label for it in pools.train])},
        eval_precision=precision["eval"],
        client_ranks=ranks,
        holdout_items=holdout_items,
        holdout_data=[encode(items, tokenizer, family, max_len) if node in (None, k) else None
                      for k, items in enumerate(holdout_items)] if holdout_items is not None else None,
    )


def evaluate_state(fed: Federation, state: AdapterState, data=None) -> tuple[dict, np.ndarray, np.ndarray]:
    """(accuracy/loss/n, per-item scores (N, 4), labels (N,)) of `state` on `data` (default: the
    eval subset)."""
    write_state(fed.model, state)
    cfg = fed.cfg.eval
    return evaluate_items(fed.model, fed.family, fed.eval_data if data is None else data, cfg.batch_size,
                          fed.eval_precision, cfg.packing)


def zero_shot(fed: Federation, state: AdapterState) -> tuple[dict, np.ndarray, np.ndarray]:
    """`evaluate_state` of the initial adapter, computed once per process and setting (see above)."""
    cfg = fed.cfg
    key = repr((_model_key(cfg, next(fed.model.parameters()).device), cfg.data.model_dump(), cfg.seed,
                cfg.eval.model_dump()))
    if key not in _ZERO_SHOT_CACHE:
        _ZERO_SHOT_CACHE[key] = evaluate_state(fed, state)
    return _ZERO_SHOT_CACHE[key]


def aggregation_weights(fed: Federation, clients: list[int], results: list[ClientResult]) -> torch.Tensor:
    if fed.cfg.federation.weighting == "uniform":
        n = [1] * len(results)
    elif fed.cfg.federation.weighting == "trained":
        n = [r.examples for r in results]
    else:
        n = [len(fed.client_items[k]) for k in clients]
    n = torch.tensor(n, dtype=torch.float64)
    return (n / n.sum()).float()


def upload_bytes(update: AdapterState, trained: str, rank: int) -> int:
    """Bytes a client sends: the first `rank` components of the LoRA factors it trained ("AB", "A"
    or "B"; a client of lower rank sends no zero padding) and the head."""
    lora = sum(t.numel() * t.element_size() * rank // t.shape[f == "B"]  # r is dim 0 of A, dim 1 of B
               for u in update.lora.values() for t, f in ((u.A, "A"), (u.B, "B")) if f in trained)
    return lora + sum(t.numel() * t.element_size() for t in update.head.values())


def client_start(fed: Federation, state: AdapterState, client: int) -> AdapterState:
    """The adapter `client` starts its round from (and is scored with on its held-out items): the
    global, truncated to the client's rank, with the client's own personal factors."""
    if fed.client_ranks:
        state = state.truncated(fed.client_ranks[client])
    own = fed.personal.get(client)
    if own:  # FedSA-LoRA: the client's own B (personal == "B")
        state = AdapterState(lora={n: f._replace(B=own[n]) for n, f in state.lora.items()}, head=state.head,
                             base=state.base)
    return state


def global_view(fed: Federation, state: AdapterState) -> AdapterState:
    """The model the server evaluates. For personalized methods an evaluation-only model, which no
    party holds: the global A with the partition-weighted mean of the clients' own B."""
    if not fed.method.personal or not fed.personal:
        return state
    clients = sorted(fed.personal)
    sizes = torch.tensor([len(fed.client_items[k]) for k in clients], dtype=torch.float64)
    weights = sizes / sizes.sum()
    lora = {n: f._replace(B=weighted_sum([fed.personal[k][n] for k in clients], weights))
            for n, f in state.lora.items()}
    return AdapterState(lora=lora, head=state.head, base=state.base)


def client_heldout(fed: Federation, state: AdapterState, client: int) -> dict:
    """`client`'s own model (client_start from the global `state`) on its own held-out items:
    accuracy, loss and n."""
    return evaluate_state(fed, client_start(fed, state, client), fed.holdout_data[client])[0]


def mean_heldout(per_client: list[dict]) -> dict:
    """The round's held-out scores: the mean over clients of their accuracies and losses (clients
    weigh alike: every client holds out as many items)."""
    return {"heldout_accuracy": float(np.mean([s["accuracy"] for s in per_client])),
            "heldout_loss": float(np.mean([s["loss"] for s in per_client]))}


def heldout_scores(fed: Federation, state: AdapterState) -> dict:
    """`mean_heldout` over every client, each scored here (the in-process engine holds every
    client's items and personal factors; on Flower the nodes score their own)."""
    return mean_heldout([client_heldout(fed, state, k) for k in range(len(fed.holdout_data))])


def client_update(fed: Federation, state: AdapterState, round_idx: int, client: int) -> ClientResult:
    """Client `client`'s local training in round `round_idx`, starting from the global `state`."""
    train = resolve_train(fed.cfg.train, fed.family, next(fed.model.parameters()).device)
    result = local_update(fed.model, fed.family, fed.client_data[client], client_start(fed, state, client),
                          fed.method, train, seed=(fed.cfg.seed, round_idx, client),
                          trained=fed.method.trained(round_idx), rank=fed.rank_of(client))
    if fed.method.personal:  # kept on the client for its next round; never sent
        fed.personal[client] = {n: f.B for n, f in result.state.lora.items()}
    privacy = fed.cfg.privacy
    if privacy.enabled and privacy.clipping == "client":  # what the client sends is clipped
        result.state = clip_factors(result.state, result.start, fed.method.sent(round_idx), privacy.clipping_norm)
    return result


def server_update(fed: Federation, state: AdapterState, round_idx: int, clients: list[int],
                  results: list[ClientResult], time_train_s: float,
                  heldout: Callable[[AdapterState], dict] | None = None,
                  aggregated: AdapterState | None = None) -> tuple[AdapterState, RoundRecord]:
    """Aggregate the replies of `clients`, measure geometry, evaluate: the new global and the
    round's record. Shared by the in-process engine and the Flower server.

    `heldout`: scores the clients' own models on their held-out items from the new global
    (default `heldout_scores`, here; the Flower server asks the nodes, which hold them).
    `aggregated`: the new global, already computed from the securely summed contributions
    (SecAgg+): `results` then hold the clients' statistics without their adapters, and what
    needs an individual update (geometry, drift, contribution norms, bytes) is not recorded.

    On an evaluated round the record carries the per-item scores and labels (arrays, not JSON);
    `RunRecorder.record_round` moves them to eval_items.npz."""
    cfg = fed.cfg
    t1 = time.perf_counter()
    weights = aggregation_weights(fed, clients, results)
    updates = [r.state for r in results]
    # Contiguous, as a checkpoint reloads it: identical memory layout keeps resumed runs bit-exact.
    contribution_norms = None
    if aggregated is not None:
        new_state = aggregated
    elif cfg.privacy.enabled:
        new_state, contribution_norms = private_aggregate(fed.method, updates, state, round_idx, cfg.seed,
                                                          cfg.privacy)
    else:
        new_state = fed.method.aggregate(updates, weights, state, round_idx, cfg.seed)
    new_state = new_state.map_tensors(torch.Tensor.contiguous)
    t2 = time.perf_counter()
    for k, r in zip(clients, results):  # a client's rank after its update (self-pruning lowers it)
        if fed.client_ranks and r.rank is not None:
            fed.client_ranks[k] = r.rank
    ranks = [fed.rank_of(k) for k in clients]
    # The clients' models of a personalized method include their personal factors, which this
    # process holds in-process and a Flower server never receives: without them no geometry, no drift.
    seen = aggregated is None and (not fed.method.personal or bool(fed.personal))
    geometry = round_geometry(updates, weights, state, new_state, cfg.lora.scaling, ranks) if seen else None
    t3 = time.perf_counter()
    last = round_idx == cfg.rounds
    evaluated = last or round_idx % cfg.eval.every == 0
    scores, item_scores, labels = evaluate_state(fed, global_view(fed, new_state)) if evaluated else ({}, None, None)
    score_heldout = heldout or (lambda s: heldout_scores(fed, s))
    held = score_heldout(new_state) if evaluated and fed.holdout_data else {}
    t4 = time.perf_counter()
    record = RoundRecord(
        round=round_idx,
        accuracy=scores.get("accuracy"),
        loss=scores.get("loss"),
        **held,
        clients=clients,
        weights=[round(w, 6) for w in weights.tolist()],
        client_loss=float(sum(r.mean_loss for r in results) / len(results)),
        # Client drift: ||dW_k - dW_start||_F per client, and the penalty's share of its objective.
        client_update_norm=update_norms(updates, [r.start for r in results], cfg.lora.scaling) if seen else None,
        client_penalty=[r.mean_penalty for r in results],
        penalty_share=float(np.mean([r.mean_penalty / (r.mean_loss + r.mean_penalty) for r in results])),
        client_ranks=ranks,
        examples_trained=[r.examples for r in results],
        optimizer_steps=[r.optimizer_steps for r in results],
        time_train_s=time_train_s,
        time_aggregate_s=t2 - t1,
        time_geometry_s=t3 - t2,
        time_eval_s=t4 - t3,
        bytes_up=sum(upload_bytes(u, fed.method.sent(round_idx), r) for u, r in zip(updates, ranks))
        if aggregated is None else None,
        bytes_down=len(clients) * state.nbytes(),
        geometry=geometry,
        contribution_norms=contribution_norms,
        privacy_epsilon=epsilon_after(cfg.privacy, round_idx, len(clients), cfg.federation.num_clients)
        if cfg.privacy.enabled else None,
        _eval_items=(item_scores, labels) if evaluated else None,
    )
    return new_state, record


class RoundFailed(RuntimeError):
    """Fewer clients replied in a round than the run needs (`min_replies`)."""


@dataclass
class Replies:
    """What a round's sampled clients sent back: results by client, and why each missing client
    is missing. The bytes on the wire are known only where messages are serialised (Flower)."""

    results: dict[int, ClientResult]
    failures: dict[int, str] = field(default_factory=dict)
    bytes_up_wire: int | None = None
    bytes_down_wire: int | None = None
    # The new global when the server received only the sum of the updates (SecAgg+): `results`
    # then carry the clients' statistics, not their adapters.
    aggregated: AdapterState | None = None


# How an engine gets the sampled clients' updates: (global state, round, sampled clients) -> Replies.
Collect = Callable[[AdapterState, int, list[int]], Replies]


def play_round(fed: Federation, state: AdapterState, round_idx: int, collect: Collect, min_replies: int = 1,
               log: Log = print, heldout: Callable[[AdapterState], dict] | None = None
               ) -> tuple[AdapterState, RoundRecord]:
    """One round, whatever the engine: sample, collect the clients' updates, leave out the clients
    that did not reply (recorded with the reason; the weights renormalise over the rest), fail
    the round below `min_replies`, aggregate and record (`heldout` as in `server_update`)."""
    cfg = fed.cfg
    sampled = sample_clients(cfg.seed, round_idx, cfg.federation.num_clients, cfg.federation.fraction)
    t0 = time.perf_counter()
    replies = collect(state, round_idx, sampled)
    time_train = time.perf_counter() - t0
    ok = [k for k in sampled if k in replies.results]  # the sampling's (sorted) order
    failures = {k: replies.failures.get(k, "no reply") for k in sampled if k not in replies.results}
    for k, reason in failures.items():
        log(f"round {round_idx}: client {k} failed: {reason}")
    if len(ok) < min_replies:
        raise RoundFailed(f"round {round_idx}: {len(ok)} of {len(sampled)} sampled clients replied, "
                          f"min-replies={min_replies}; failures: {failures}")
    new_state, record = server_update(fed, state, round_idx, ok, [replies.results[k] for k in ok], time_train,
                                      heldout, replies.aggregated)
    record.sampled_clients = sampled
    record.failed_clients = sorted(failures)
    record.failure_reasons = {str(k): v for k, v in sorted(failures.items())}
    record.bytes_up_wire, record.bytes_down_wire = replies.bytes_up_wire, replies.bytes_down_wire
    return new_state, record


def run_round(fed: Federation, state: AdapterState, round_idx: int,
              progress: Progress) -> tuple[AdapterState, RoundRecord]:
    """One in-process round: the sampled clients train one after another on the shared model (a
    client that raises ends the run: in one process an error is a bug, not a lost machine)."""
    def collect(state: AdapterState, round_idx: int, clients: list[int]) -> Replies:
        return Replies({k: client_update(fed, state, round_idx, k) for k in progress.clients(clients, round_idx)})

    return play_round(fed, state, round_idx, collect)


def code_commit() -> str | None:
    """The git commit of the fedlora source that runs ("+dirty" with uncommitted changes), or None
    when it does not run from a git checkout (an installed wheel)."""
    source = Path(__file__).resolve().parent

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=source, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return None
    changed = git("status", "--porcelain", "--untracked-files=no", "--", str(source.parents[1]))
    return commit + ("+dirty" if changed else "")


def machine_facts() -> dict:
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": device,
            "torch": torch.__version__, "fedlora": __version__, "git_commit": code_commit()}


class RunRecorder:
    """Bookkeeping of one run folder shared by every engine: metrics, best/final adapters,
    checkpoint after every round, summary and plots at the end."""

    def __init__(self, fed: Federation, run_dir: RunDir, resume: bool, log: Log = print):
        self.fed, self.run_dir, self.log = fed, run_dir, log
        self.started = time.perf_counter()
        checkpoint, self.metrics = None, []
        if resume:  # read (and check) everything before writing anything
            run_dir.restore_swapped_folders()
            checkpoint = run_dir.load_checkpoint()
            fed.personal = run_dir.load_personal()
            if checkpoint and checkpoint[1].get("client_ranks"):  # as self-pruning left them
                fed.client_ranks = checkpoint[1]["client_ranks"]
            last_round = checkpoint[1]["round"] if checkpoint else -1
            self.metrics = run_dir.truncate_metrics(last_round, log)
            run_dir.truncate_eval_items(last_round)
        else:
            run_dir.create(fed.cfg)
        run_dir.set_status("running")
        run_dir.write_json("partition.json", fed.partition_stats)
        if checkpoint:
            self.state, round_state = checkpoint
            self.next_round = round_state["round"] + 1
            self.best = round_state["best"]
            self.elapsed = round_state["wall_s"]
            log(f"resuming {run_dir.path} after round {round_state['round']}")
        else:
            self.state = initial_state(fed.model, fed.cfg.seed)
            self.next_round, self.best, self.elapsed = 1, {"accuracy": -1.0, "round": 0}, 0.0
            if fed.cfg.eval.zero_shot:
                scores, item_scores, labels = zero_shot(fed, self.state)
                run_dir.write_eval_items(0, item_scores, labels)
                heldout = heldout_scores(fed, self.state) if fed.holdout_data else {}
                self._append(RoundRecord(round=0, **scores, **heldout))

    def _append(self, record: RoundRecord) -> None:
        self.metrics.append(record)
        self.run_dir.append_metrics(record)

    def wall_s(self) -> float:
        return self.elapsed + time.perf_counter() - self.started

    def record_round(self, state: AdapterState, record: RoundRecord) -> None:
        self.state = state
        if record._eval_items is not None:  # before the checkpoint: a kill in between replays this round
            self.run_dir.write_eval_items(record.round, *record._eval_items)
            record._eval_items = None
        self._append(record)
        acc = record.accuracy
        if acc is not None and acc > self.best["accuracy"]:
            self.best = {"accuracy": acc, "round": record.round}
            # A merging method's adapter alone is not its model (model_final is, at the end).
            if not self.fed.method.merges_base:
                save_peft_adapter(self.fed.model, state, self.run_dir.path / "adapter_best")
        self.run_dir.save_checkpoint(state, {"round": record.round, "best": self.best, "wall_s": self.wall_s(),
                                             "client_ranks": self.fed.client_ranks}, personal=self.fed.personal)
        self.next_round = record.round + 1

    def finish(self, **extra) -> RunSummary:
        from fedlora.plots import plot_run  # matplotlib only when a run finishes

        cfg = self.fed.cfg
        save_peft_adapter(self.fed.model, self.state, self.run_dir.path / "adapter_final")
        method = self.fed.method
        if method.merges_base:  # the adapter alone is not the model: export the merged weights too
            save_merged_model(self.fed.model, self.state, self.fed.tokenizer, self.run_dir.path / "model_final")
        summary = RunSummary(method=method.label, method_spec=method.spec(), seed=cfg.seed, model=cfg.model.name,
                             **summarize(self.metrics), wall_s=self.wall_s(), machine=machine_facts(), **extra)
        plot_run(self.metrics, self.run_dir.path / "plots", title=f"{method.label} seed {cfg.seed}")
        self.run_dir.write_summary(summary)
        return summary


def train_federation(cfg: RunConfig | None, out: str | Path, *, resume: bool = False,
                     overwrite: bool = False, log: Log = print, progress: Progress | None = None) -> RunSummary:
    """Run (or, with resume=True, continue) one federated run in the folder `out`.

    The run folder is locked while this runs: a second process writing it is refused.
    """
    run_dir = RunDir(out)
    with ExitStack() as held:
        if resume:
            cfg = run_dir.load_config()  # a folder that is not a run is refused before anything is written
            held.enter_context(run_dir.lock())  # before the model loads: a second resume fails at once
        elif not overwrite:
            run_dir.check_free()
        else:
            check_folder_path(run_dir.path, "run folder")
        progress = progress or Progress(enabled=False)
        # Data, partition and model first: bad input fails before any run folder is written or replaced.
        fed = build_federation(cfg, log=log)
        if not resume:
            held.enter_context(run_dir.lock())
            if overwrite:
                run_dir.clear()
        recorder = RunRecorder(fed, run_dir, resume, log)
        try:
            for round_idx in progress.rounds(range(recorder.next_round, cfg.rounds + 1), cfg.rounds):
                state, record = run_round(fed, recorder.state, round_idx, progress)
                recorder.record_round(state, record)
                progress.report(record)
            return recorder.finish(engine="in-process")
        except BaseException as err:
            run_dir.set_status("failed", error=f"{type(err).__name__}: {err}")
            raise
