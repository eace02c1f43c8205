"""Fail fast without the Hugging Face Hub: one short connectivity check before anything asks the Hub for files.

Offline, `from_pretrained` and `load_dataset` retry for 25-50 s before they give up, and their errors name neither
the cause nor the fix. `require_hub` answers in a few seconds instead: with HF_HUB_OFFLINE set, the libraries read
their local cache and fail at once by themselves, so nothing is checked; otherwise one TCP connection to the Hub's
host (HF_ENDPOINT, default huggingface.co) decides, and its answer is kept for the process.
"""

from __future__ import annotations

import functools
import os
import socket
from urllib.parse import urlparse

CONNECT_TIMEOUT_S = 3.0
TRUE_VALUES = {"1", "ON", "YES", "TRUE"}


class HubUnreachable(OSError):
    """The Hub cannot be reached; the message names what needed it and how to use local files instead."""


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in TRUE_VALUES


@functools.cache
def _reachable(host: str, port: int) -> str | None:
    """None when a TCP connection to host:port opens within CONNECT_TIMEOUT_S, else why it did not."""
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close()
        return None
    except OSError as err:
        return str(err) or type(err).__name__


def require_hub(what: str, fix: str, *, cache: bool = True) -> None:
    """Raise HubUnreachable naming `what` needed the Hub and `fix` (how to do without), unless the Hub answers or
    HF_HUB_OFFLINE is set (then the libraries use the local cache). `cache` False: the local cache cannot stand in
    (an upload), so the message does not suggest HF_HUB_OFFLINE."""
    if offline():
        return
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host, port = endpoint.hostname or "huggingface.co", endpoint.port or (80 if endpoint.scheme == "http" else 443)
    problem = _reachable(host, port)
    if problem is not None:
        cached = ", or set HF_HUB_OFFLINE=1 to use the local Hugging Face cache" if cache else ""
        raise HubUnreachable(f"{what} needs the Hugging Face Hub, which cannot be reached ({host}:{port}: {problem}); "
                             f"{fix}{cached}")
