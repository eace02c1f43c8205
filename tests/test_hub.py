"""Hub look-ups fail fast and in one line when the Hub cannot be reached (hub.require_hub)."""

import socket
import time

import pytest

from eggroll_llm import hub
from eggroll_llm.cli import main


@pytest.fixture(autouse=True)
def fresh_check(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    hub._reachable.cache_clear()
    yield
    hub._reachable.cache_clear()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the block ends: connections are refused


def test_an_unreachable_hub_is_reported_at_once_with_the_fix(monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    start = time.perf_counter()
    with pytest.raises(hub.HubUnreachable, match="model org/x needs the Hugging Face Hub.*use local files.*"
                                                 "HF_HUB_OFFLINE=1"):
        hub.require_hub("model org/x", "use local files")
    assert time.perf_counter() - start < hub.CONNECT_TIMEOUT_S + 1


def test_a_reachable_hub_or_offline_mode_passes(monkeypatch):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        hub.require_hub("model org/x", "use local files")
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the libraries read their cache and fail fast by themselves
    hub.require_hub("model org/x", "use local files")


def test_eval_of_a_hub_model_without_the_hub_is_one_line_and_exit_2(monkeypatch, capsys):
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    assert main(["eval", "--model", "org/not-here", "--limit", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "model org/not-here needs the Hugging Face Hub" in err
