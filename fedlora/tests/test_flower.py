"""Flower layer without processes: records, run config, app file, and the ServerApp/ClientApp
driven through an in-process Grid (the same code Flower runs, minus the transport)."""
from __future__ import annotations

import copy
import json
import uuid
from pathlib import Path

import pytest
import torch

from conftest import make_encoder, make_tokenizer, shared_file
from fedlora.config import ConfigError, load_config
from fedlora.engine import build_federation, train_federation
from fedlora.flower.records import ARRAYS, METRICS, arrays_to_state, read_result, result_content, state_to_arrays
from fedlora.flower.settings import FlowerSettings, parse_run_config, to_run_config
from fedlora.methods import METHODS
from fedlora.records import RoundRecord
from fedlora.rundir import RunDir
from fedlora.state import AdapterState, LoraFactors

ROOT = Path(__file__).resolve().parents[1]
GEOMETRY_KEYS = ("basis_overlap", "basis_overlap_code", "cancellation_ratio_delta", "client_global_cosine")


# -- shared tiny setup (also used by test_flower_deploy.py) --------------------------------------
def write_tiny_setup(folder: Path) -> dict:
    """A tiny random RoBERTa saved with save_pretrained, and small JSONL pools from the shared data."""
    tokenizer = make_tokenizer()
    model_dir = folder / "tiny-roberta"
    make_encoder(len(tokenizer)).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    train = shared_file("hellaswag/hellaswag_train_3368.jsonl").read_text().splitlines()[:60]
    val = shared_file("hellaswag/hellaswag_val.jsonl").read_text().splitlines()[:16]
    (folder / "train.jsonl").write_text("\n".join(train) + "\n")
    (folder / "val.jsonl").write_text("\n".join(val) + "\n")
    return {"model.name": str(model_dir), "data.train_path": str(folder / "train.jsonl"),
            "data.eval_path": str(folder / "val.jsonl"), "data.source": "local", "data.max_length": 32,
            "data.train_size": 60, "data.eval_size": 16,
            "threads": 1, "federation.num_clients": 3, "federation.min_client_size": 2,
            "federation.fraction": 0.6, "train.max_local_steps": 2, "lora.r": 4, "lora.alpha": 8}


def tiny_config(setup: dict, **extra):
    return load_config(ROOT / "configs" / "tiny.yaml", {**setup, **extra})


def comparable(metrics: list[dict]) -> list[dict]:
    """The per-round numbers both engines must agree on (timings and Flower extras left out)."""
    keep = ("round", "clients", "weights", "accuracy", "loss", "client_loss", "examples_trained", "bytes_up",
            "bytes_down")
    return [{**{k: getattr(m, k) for k in keep}, **{k: m.geometry[k] for k in GEOMETRY_KEYS}} for m in metrics]


def assert_same_run(flower: list[RoundRecord], engine: list[RoundRecord], tol: float = 1e-6) -> None:
    a, b = comparable(flower), comparable(engine)
    assert [m["round"] for m in a] == [m["round"] for m in b]
    for x, y in zip(a, b):
        for key, value in y.items():
            if isinstance(value, float):
                assert x[key] == pytest.approx(value, abs=tol, nan_ok=True), (x["round"], key)
            else:
                assert x[key] == value, (x["round"], key)


def read_metrics(run: Path) -> list[RoundRecord]:
    return RunDir(run).read_metrics()


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    return write_tiny_setup(tmp_path_factory.mktemp("flower-setup"))


# -- an in-process Grid --------------------------------------------------------------------------
class InlineGrid:
    """Runs the real ClientApp in this process, one Context per node (as a SuperNode keeps it).

    broken: node indices whose ClientApp 'crashes' in training (an error reply, as Flower sends);
    silent: node indices that stop answering after the partition query (a machine that died);
    drop_at: {node index: SecAgg+ stage} nodes that die when that stage of the protocol reaches them."""

    def __new__(cls, *args, **kwargs):
        from flwr.serverapp import Grid

        if not issubclass(cls, Grid):  # subclass lazily so importing this file stays light
            cls = type("InlineGrid", (cls, Grid), {})
        return object.__new__(cls)

    def __init__(self, run_config: dict, nodes: int, broken=(), silent=(), partition_of=None, drop_at=None):
        from flwr.app import Context, RecordDict
        from flwr.supercore.task_identity import TaskIdentity

        # Flower stamps new messages with the identity of the running ServerApp task.
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
        self.node_ids = [1000 + 7 * i for i in range(nodes)]
        partition_of = partition_of or (lambda i: i)
        self.contexts = {n: Context(run_id=1, node_id=n, state=RecordDict(), run_config=dict(run_config),
                                    node_config={"partition-id": partition_of(i), "num-partitions": nodes})
                         for i, n in enumerate(self.node_ids)}
        self.broken = {self.node_ids[i] for i in broken}
        self.silent = {self.node_ids[i] for i in silent}
        self.drop_at = {self.node_ids[i]: stage for i, stage in (drop_at or {}).items()}
        self.replies: dict = {}
        self.sent: list = []

    def set_run(self, run) -> None:
        pass

    @property
    def run(self):
        return None

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
        from flwr.app import Message

        return Message(content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id)

    def get_node_ids(self):
        return list(self.node_ids)

    def push_messages(self, messages):
        from flwr.app import Error, Message

        from fedlora.flower.client_app import app

        ids = []
        for msg in messages:
            mid = uuid.uuid4().hex
            msg.metadata.__dict__["_message_id"] = mid
            node = msg.metadata.dst_node_id
            self.sent.append((node, msg.metadata.message_type))
            query = msg.metadata.message_type == "query"
            secagg = msg.content.config_records.get("secaggplus_configs")
            if secagg and node in self.drop_at and secagg.get("stage") == self.drop_at[node]:
                self.silent.add(node)
            if node in self.broken and not query:
                self.replies[mid] = Message(Error(code=0, reason="ClientApp raised: simulated crash"), reply_to=msg)
            elif node not in self.silent or query:  # a copy, as the transport delivers one
                try:
                    self.replies[mid] = app(copy.deepcopy(msg), self.contexts[node])
                except Exception as err:  # as Flower turns a ClientApp's exception into an error reply
                    self.replies[mid] = Message(Error(code=0, reason=f"{type(err).__name__}: {err}"), reply_to=msg)
            ids.append(mid)
        return ids

    def pull_messages(self, message_ids):
        return [self.replies.pop(m) for m in list(message_ids) if m in self.replies]

    def send_and_receive(self, messages, *, timeout=None):
        return self.pull_messages(self.push_messages(messages))


def run_inline(cfg, out: Path, nodes: int | None = None, **settings):
    from fedlora.flower.server_app import run_server

    grid_kwargs = {k: settings.pop(k) for k in ("broken", "silent", "partition_of", "drop_at") if k in settings}
    s = FlowerSettings(engine="flower-simulation", out_dir=str(out), poll_interval_s=0.01,
                       **{"round_timeout_s": 1.0, **settings})
    grid = InlineGrid(to_run_config(cfg, s), nodes or cfg.federation.num_clients, **grid_kwargs)
    return grid, run_server(grid, cfg, s)


# -- records and run config ------------------------------------------------------------------
def random_state(seed: int = 0) -> AdapterState:
    g = torch.Generator().manual_seed(seed)
    lora = {f"layer{i}": LoraFactors(torch.randn(4, 6, generator=g), torch.randn(5, 4, generator=g)) for i in range(3)}
    return AdapterState(lora=lora, head={"classifier.weight": torch.randn(1, 6, generator=g)})


def test_arrays_round_trip_is_bit_exact():
    state = random_state()
    back = arrays_to_state(state_to_arrays(state), like=state)
    for key, t in state.flat_dict().items():
        assert torch.equal(back.flat_dict()[key], t)


@pytest.mark.parametrize(("sent", "kept"), [("B", "A"), ("A", "B")])
def test_only_the_trained_factor_is_sent_and_the_other_comes_from_the_start(sent, kept):
    from fedlora.client import ClientResult

    start, trained = random_state(0), random_state(1)
    record = state_to_arrays(trained, sent)
    assert not [k for k in record if k.endswith(f"::{kept}")]
    assert record.count_bytes() < state_to_arrays(trained).count_bytes()
    content = result_content(ClientResult(trained, 1.25, 16, 4, 2, mean_penalty=0.5), client=2, sent=sent)
    client, result = read_result(content, lambda c: start)
    assert client == 2 and result.examples == 16 and result.mean_loss == 1.25 and result.optimizer_steps == 2
    assert result.mean_penalty == 0.5
    for name in start.lora:
        assert torch.equal(getattr(result.state.lora[name], kept), getattr(start.lora[name], kept))
        assert torch.equal(getattr(result.state.lora[name], sent), getattr(trained.lora[name], sent))


def test_a_lower_rank_client_sends_its_own_components_and_the_server_pads_them():
    from fedlora.client import ClientResult

    start, trained = random_state(0), random_state(1).truncated(2)
    content = result_content(ClientResult(trained, 1.0, 4, 1, 1), client=0, sent="AB", rank=2)
    lora = {k: t for k, t in content[ARRAYS].items() if k.startswith("lora::")}
    assert all(t.shape[0 if k.endswith("::A") else 1] == 2 for k, t in lora.items())
    _, result = read_result(content, lambda c: start.truncated(2), lambda c: 2)
    for k, t in result.state.flat_dict().items():
        assert torch.equal(t, trained.flat_dict()[k]), k
    assert result.rank == 2
    # The reply's rank is the client's (self-pruning lowers it): the server pads by it...
    _, pruned = read_result(content, lambda c: start.truncated(3), lambda c: 3)
    assert pruned.rank == 2 and torch.equal(pruned.state.flat_dict()["lora::layer0::B"], trained.lora["layer0"].B)
    with pytest.raises(ValueError, match="claims rank 2; its rank was 1 and cannot grow"):
        read_result(content, lambda c: start.truncated(1), lambda c: 1)
    content[METRICS]["rank"] = 3  # ...and factors cut to another rank than the reply's are named
    with pytest.raises(ValueError, match="has shape"):
        read_result(content, lambda c: start.truncated(3), lambda c: 3)


def test_arrays_mismatch_names_the_tensor():
    state = random_state()
    record = state_to_arrays(state)
    bad = state.clone()
    bad.lora["layer1"] = LoraFactors(torch.zeros(4, 7), bad.lora["layer1"].B)
    with pytest.raises(ValueError, match="layer1::A.*shape"):
        arrays_to_state(state_to_arrays(bad), like=state)
    del record["head::classifier.weight"]
    with pytest.raises(ValueError, match="missing.*head::classifier.weight"):
        arrays_to_state(record, like=state)


def test_run_config_round_trip_and_errors(setup, tmp_path):
    cfg = tiny_config(setup, **{"method.name": "fedsvd"})
    settings = FlowerSettings(out_dir="/x", min_replies=2, round_timeout_s=9.5)
    cfg2, settings2 = parse_run_config(to_run_config(cfg, settings))
    assert cfg2 == cfg and settings2 == settings
    by_path = parse_run_config({"config-path": str(ROOT / "configs" / "tiny.yaml"),
                                "overrides": f"model.name={setup['model.name']};method.name=svd"})[0]
    assert by_path.method.name == "svd" and by_path.model.name == setup["model.name"]
    with pytest.raises(ConfigError, match="neither 'config-json' nor 'config-path'"):
        parse_run_config({"config-json": ""})
    with pytest.raises(ConfigError, match="unknown Flower run config key.*'min-reply'"):
        parse_run_config({**to_run_config(cfg, settings), "min-reply": 3})
    with pytest.raises(ConfigError, match="min-replies"):
        parse_run_config({**to_run_config(cfg, settings), "min-replies": 0})
    with pytest.raises(ConfigError, match="method.*unknown key"):
        parse_run_config({"config-json": json.dumps({"model": {"name": "x"}, "method": {"nme": "svd"}})})


def test_app_folder_is_valid_for_flower_and_shipped_copy_is_current(tmp_path):
    import tomli
    from flwr.common.config import validate_config

    from fedlora.flower.deploy import app_pyproject, write_app

    folder = write_app(tmp_path / "app")
    config = tomli.loads((folder / "pyproject.toml").read_text())
    ok, errors, _ = validate_config(config, check_module=True, project_dir=folder)
    assert ok, errors
    assert (ROOT / "flower_app" / "pyproject.toml").read_text() == app_pyproject()
    assert parse_run_config({**config["tool"]["flwr"]["app"]["config"],
                             "config-path": str(ROOT / "configs" / "tiny.yaml")})[1] == FlowerSettings()


def test_certificates_verify_for_loopback(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key

    from fedlora.flower.certs import make_node_keys, make_tls_certs

    tls = make_tls_certs(tmp_path)
    ca = x509.load_pem_x509_certificate(tls.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(tls.server_cert.read_bytes())
    server.verify_directly_issued_by(ca)
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in sans.get_values_for_type(x509.DNSName)
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    keys = make_node_keys(tmp_path, "node0")
    private = load_ssh_private_key(keys.private.read_bytes(), None)
    assert private.public_key().public_numbers() == load_ssh_public_key(keys.public.read_bytes()).public_numbers()
    assert private.curve.name == "secp384r1" and oct(keys.private.stat().st_mode & 0o777) == "0o600"


# -- the apps through the in-process grid ----------------------------------------------------
@pytest.mark.parametrize("method", [m for m, preset in METHODS.items() if not preset.personal])
def test_apps_reproduce_the_in_process_engine(setup, tmp_path, method):
    ranks = {"federation.client_ranks": [4, 1, 2]} if METHODS[method].takes_client_ranks else {}
    cfg = tiny_config(setup, **{"method.name": method}, **ranks)
    train_federation(cfg, tmp_path / "engine")
    grid, summary = run_inline(cfg, tmp_path / "flower")
    assert summary.engine == "flower-simulation" and summary.clients_ever_failed == []
    flower, engine = read_metrics(tmp_path / "flower"), read_metrics(tmp_path / "engine")
    assert_same_run(flower, engine, tol=0.0)  # same process, same code path: bit-identical
    assert [m.failed_clients for m in flower] == [[], []]
    # every node was asked for its partition once; only sampled clients trained
    assert sorted(n for n, t in grid.sent if t == "query") == sorted(grid.node_ids)
    assert sum(t == "train" for _, t in grid.sent) == sum(len(m.clients) for m in engine)
    # client-private state counts the rounds each node trained
    for i, node in enumerate(grid.node_ids):
        record = grid.contexts[node].state.config_records.get("fedlora-client")
        times = sum(i in m.clients for m in engine)
        assert (record["rounds-participated"] if record else 0) == times
    for m in flower:  # clients send what they trained only; FLoRA's train message carries the merged base
        smaller = (METHODS[method].trains != ("AB",) or METHODS[method].takes_client_ranks
                   or (METHODS[method].merges_base and m.round > 1))
        assert (m.bytes_up_wire < m.bytes_down_wire) if smaller else (m.bytes_up_wire == m.bytes_down_wire)
    for name in ("summary.json", "config.yaml", "partition.json", "adapter_final/adapter_config.json",
                 "checkpoint/global.safetensors"):
        assert (tmp_path / "flower" / name).is_file(), name


def test_self_pruned_client_ranks_travel_with_the_messages(setup, tmp_path):
    # HetLoRA's rank self-pruning: each train message tells the node its rank as the server knows
    # it, the reply reports the rank after pruning, and the server pads the factors by it.
    cfg = tiny_config(setup, rounds=4, **{"method.name": "hetlora", "method.prune_gamma": 0.5,
                                          "method.prune_lambda": 1.0, "federation.fraction": 1.0})
    train_federation(cfg, tmp_path / "engine")
    run_inline(cfg, tmp_path / "flower")
    flower, engine = read_metrics(tmp_path / "flower"), read_metrics(tmp_path / "engine")
    assert_same_run(flower, engine, tol=0.0)
    assert [m.client_ranks for m in flower] == [m.client_ranks for m in engine]
    assert engine[0].client_ranks == [4, 4, 4] and max(engine[-1].client_ranks) < 4  # clients pruned


def test_a_node_tokenises_only_its_own_partition(setup):
    """A SuperNode's process builds its own client's data, the same as the full build's, and
    neither the other clients' nor the eval set (the apps test above serves every node from one
    process, so the lazily added partitions are exercised there)."""
    cfg = tiny_config(setup, **{"federation.client_holdout": 1})
    full = build_federation(cfg, log=lambda _: None)
    node = build_federation(cfg, log=lambda _: None, node=1)
    assert node.eval_data is None and [d is None for d in node.client_data] == [True, False, True]
    assert [d is None for d in node.holdout_data] == [True, False, True]
    assert node.holdout_data[1].pairs == full.holdout_data[1].pairs
    assert node.client_items == full.client_items
    assert (node.client_data[1].pairs, node.client_data[1].labels) == (full.client_data[1].pairs,
                                                                        full.client_data[1].labels)


@pytest.mark.parametrize(("method", "clipping"), [("fedavg", "client"), ("svd", "server")])
def test_private_runs_are_the_same_on_flower(setup, tmp_path, method, clipping):
    cfg = tiny_config(setup, **{"method.name": method, "federation.weighting": "uniform", "privacy.enabled": True,
                                "privacy.clipping": clipping, "privacy.clipping_norm": 0.5})
    train_federation(cfg, tmp_path / "engine")
    run_inline(cfg, tmp_path / "flower")
    flower, engine = read_metrics(tmp_path / "flower"), read_metrics(tmp_path / "engine")
    assert_same_run(flower, engine, tol=0.0)  # clipping and seeded noise in the code both engines share
    assert [m.privacy_epsilon for m in flower] == [m.privacy_epsilon for m in engine]


def test_personal_factors_stay_on_the_nodes_and_the_clients_own_models_score_as_in_process(setup, tmp_path):
    # FedSA-LoRA: each node keeps its client's B in context.state and sends A only; the nodes score
    # the clients' own models on their held-out items, bit for bit the in-process engine's numbers.
    cfg = tiny_config(setup, rounds=3, **{"method.name": "fedsa-lora", "federation.client_holdout": 1})
    train_federation(cfg, tmp_path / "engine")
    grid, summary = run_inline(cfg, tmp_path / "flower")
    flower, engine = read_metrics(tmp_path / "flower"), read_metrics(tmp_path / "engine")
    same = ("round", "clients", "weights", "client_loss", "examples_trained", "bytes_up", "bytes_down",
            "heldout_accuracy", "heldout_loss")
    assert [[getattr(m, k) for k in same] for m in flower] == [[getattr(m, k) for k in same] for m in engine]
    assert all(m.heldout_accuracy is not None for m in flower if m.evaluated)
    assert summary.final_heldout_accuracy == engine[-1].heldout_accuracy
    # what the server receives is A alone: the same global A, and B as initialised
    by_engine = RunDir(tmp_path / "engine").load_checkpoint()[0]
    by_flower = RunDir(tmp_path / "flower").load_checkpoint()[0]
    for name, f in by_flower.lora.items():
        assert torch.equal(f.A, by_engine.lora[name].A) and not f.B.any()
    assert all(m.bytes_up_wire < m.bytes_down_wire for m in flower[1:])
    # each node's own B is the one the in-process engine kept for that client; unsampled nodes have none
    personal = RunDir(tmp_path / "engine").load_personal()
    for k, node in enumerate(grid.node_ids):
        record = grid.contexts[node].state.array_records.get("fedlora-personal")
        assert (record is not None) == (k in personal)
        for name, tensor in (personal.get(k) or {}).items():
            assert torch.equal(torch.from_numpy(record[name].numpy()), tensor), (k, name)
    assert len(personal) >= 2 and any(set(m.clients) < set(personal) for m in engine[1:])
    # the server's model (A_g, B = 0) is the zero-shot one; what needs the clients' B is not recorded
    assert {m.accuracy for m in flower if m.evaluated} == {flower[0].accuracy}
    assert all(m.geometry is None and m.client_update_norm is None for m in flower[1:])
    assert all(m.geometry is not None and m.client_update_norm is not None for m in engine[1:])


def test_crashed_and_silent_clients_are_left_out_and_recorded(setup, tmp_path):
    from fedlora.engine import build_federation, server_update
    from fedlora.partition import sample_clients

    cfg = tiny_config(setup, **{"federation.fraction": 1.0, "method.name": "svd"})
    _, summary = run_inline(cfg, tmp_path / "run", broken=[1], silent=[2])
    metrics = read_metrics(tmp_path / "run")
    assert summary.clients_ever_failed == [1, 2]
    for m in metrics:
        assert m.sampled_clients == [0, 1, 2] and m.clients == [0] and m.failed_clients == [1, 2]
        assert m.weights == [1.0]
        assert "simulated crash" in m.failure_reasons["1"] and "round-timeout" in m.failure_reasons["2"]
    # the aggregate is exactly the package's server update over the replies that arrived
    fed = build_federation(cfg, log=lambda _: None)
    from fedlora.engine import client_update
    from fedlora.models import initial_state

    start = initial_state(fed.model, cfg.seed)
    assert sample_clients(cfg.seed, 1, 3, 1.0) == [0, 1, 2]
    _, record = server_update(fed, start, 1, [0], [client_update(fed, start, 1, 0)], 0.0)
    assert metrics[0].accuracy == record.accuracy and metrics[0].loss == pytest.approx(record.loss, abs=0)


# SecAgg+ quantizes each client's weighted entries on `levels` over [-range, range] with stochastic
# rounding (off by less than one level each): the weighted mean of n clients with weights p is off
# by less than n max(p) levels, plus the float32 rounding of the new global.
SECAGG = {"secure_aggregation": True, "secagg_clipping_range": 0.5, "secagg_quantization_range": 2**22}
SECAGG_STEP = 2 * 0.5 / 2**22


def assert_near_aggregate(secure: Path, plain: Path, products: bool) -> None:
    a, b = RunDir(secure).load_checkpoint()[0], RunDir(plain).load_checkpoint()[0]
    p = read_metrics(plain)[-1].weights
    level = SECAGG_STEP * len(p) * max(p)

    def near(x, y):
        return bool(((x - y).abs() <= level + 2 * torch.finfo(torch.float32).eps * y.abs()).all())

    for name, f in a.lora.items():
        g = b.lora[name]
        if products:  # a truncated SVD moves by at most twice the perturbation's norm (Eckart-Young)
            E = f.B @ f.A - g.B @ g.A
            assert E.norm() <= 2 * level * E.numel() ** 0.5, name
        else:
            assert near(f.A, g.A) and near(f.B, g.B), name
    for name, t in a.head.items():
        assert near(t, b.head[name]), name


# FedSVD sums factors but refactorizes their product by SVD: its factors are compared as products.
# With DP the clients clip and both servers add the same seeded noise to the mean.
DP = {"federation.weighting": "uniform", "privacy.enabled": True, "privacy.clipping": "client",
      "privacy.clipping_norm": 0.5, "privacy.noise_multiplier": 0.01}


@pytest.mark.parametrize(("method", "products", "extra"), [("fedavg", False, {}), ("fedsvd", True, {}),
                                                           ("svd", True, {}), ("ffa-lora", False, DP),
                                                           ("fedsa-lora", False, {"federation.client_holdout": 1})])
def test_secure_aggregation_gives_the_plain_aggregate_within_one_quantization_level(setup, tmp_path, method,
                                                                                    products, extra):
    cfg = tiny_config(setup, rounds=1, **{"method.name": method}, **extra)
    run_inline(cfg, tmp_path / "plain")
    grid, summary = run_inline(cfg, tmp_path / "secure", **SECAGG)
    assert_near_aggregate(tmp_path / "secure", tmp_path / "plain", products)
    secure, plain = read_metrics(tmp_path / "secure"), read_metrics(tmp_path / "plain")
    assert [(m.clients, m.weights) for m in secure] == [(m.clients, m.weights) for m in plain]
    assert [m.client_loss for m in secure] == [m.client_loss for m in plain]  # statistics travel unmasked
    assert secure[-1].geometry is None and secure[-1].bytes_up is None and summary.basis_overlap is None
    # the protocol ran: each sampled node went through its four stages (setup, keys, vectors, unmask)
    stages = sum(t == "train" for _, t in grid.sent)
    assert stages == 4 * len(secure[-1].clients)


@pytest.mark.parametrize(("stage", "counted"), [("setup", False), ("share_keys", False),
                                               ("collect_masked_vectors", False), ("unmask", True)])
def test_secure_aggregation_survives_a_client_lost_at_any_stage(setup, tmp_path, stage, counted):
    # Three clients, shares to all, threshold 2. A client lost before it sends its masked vector
    # is left out (after sharing its keys, the others' shares remove its pairwise masks); one lost
    # while unmasking is counted (its vector is in the sum; the others' shares remove its own mask).
    cfg = tiny_config(setup, rounds=1, **{"federation.fraction": 1.0, "method.name": "fedavg"})
    run_inline(cfg, tmp_path / "plain", broken=[] if counted else [2])
    run_inline(cfg, tmp_path / "secure", drop_at={2: stage}, **SECAGG)
    record = read_metrics(tmp_path / "secure")[-1]
    assert record.sampled_clients == [0, 1, 2]
    assert record.clients == ([0, 1, 2] if counted else [0, 1])
    if not counted:
        assert "dropped out of the SecAgg+ round" in record.failure_reasons["2"]
    assert_near_aggregate(tmp_path / "secure", tmp_path / "plain", products=False)


def test_secure_aggregation_refuses_what_it_cannot_serve_before_writing(setup, tmp_path):
    from fedlora.engine import RoundFailed

    for overrides, match in [({"method.name": "hetlora"}, "hetlora.*individual client updates"),
                             ({"federation.weighting": "trained"}, "weighting 'trained'"),
                             ({"method.name": "flexlora", "federation.client_ranks": [4, 2, 2]}, "client_ranks"),
                             ({"federation.fraction": 0.3}, "at least 2 clients per round"),
                             ({"method.name": "svd", "privacy.enabled": True, "federation.weighting": "uniform",
                               "privacy.clipping": "server"}, "privacy.clipping: client")]:
        with pytest.raises(ValueError, match=match):
            run_inline(tiny_config(setup, **overrides), tmp_path / "run", **SECAGG)
        assert not (tmp_path / "run").exists()
    # a contribution outside the quantization range fails the client with the setting's name
    with pytest.raises(RoundFailed, match="dropped out of the SecAgg\\+ round: ValueError.*secagg-clipping-range"):
        run_inline(tiny_config(setup, rounds=1), tmp_path / "narrow", **{**SECAGG, "secagg_clipping_range": 1e-9})


def test_too_few_replies_fail_the_run_clearly(setup, tmp_path):
    from fedlora.engine import RoundFailed

    cfg = tiny_config(setup, **{"federation.fraction": 1.0})
    with pytest.raises(RoundFailed, match=r"round 1: 1 of 3 sampled clients replied, min-replies=2"):
        run_inline(cfg, tmp_path / "run", broken=[0, 2], min_replies=2)
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["status"] == "failed" and "min-replies=2" in status["error"]


def test_client_evaluation_scores_the_global_on_local_data(setup, tmp_path):
    from safetensors.torch import load_file

    from fedlora.adapters import write_state
    from fedlora.engine import build_federation
    from fedlora.evaluation import evaluate

    cfg = tiny_config(setup, rounds=1)
    grid, _ = run_inline(cfg, tmp_path / "run", client_eval=True)
    record = read_metrics(tmp_path / "run")[0]
    assert record.client_eval["clients"] == record.clients
    fed = build_federation(cfg, log=lambda _: None)
    write_state(fed.model, AdapterState.from_flat_dict(load_file(str(tmp_path / "run" / "checkpoint" /
                                                                   "global.safetensors"))))
    scores = [evaluate(fed.model, fed.family, fed.client_data[k], 16) for k in record.clients]
    n = sum(s["n"] for s in scores)
    assert record.client_eval["accuracy"] == pytest.approx(sum(s["accuracy"] * s["n"] for s in scores) / n)
    assert sum(t == "evaluate" for _, t in grid.sent) == len(record.clients)


def test_nodes_claiming_the_same_partition_are_refused(setup, tmp_path):
    cfg = tiny_config(setup)
    with pytest.raises(ValueError, match="both hold partition-id=0"):
        run_inline(cfg, tmp_path / "run", partition_of=lambda i: 0)


def test_deploy_checks_one_node_per_client(setup, tmp_path):
    from fedlora.flower.run import flower_deploy

    with pytest.raises(ValueError, match="--nodes 2 but federation.num_clients=3"):
        flower_deploy(tiny_config(setup), tmp_path / "run", nodes=2)
    assert not (tmp_path / "run").exists()
