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


def test_a_reachable_hub_passes_after_one_connection_and_offline_mode_connects_nowhere(monkeypatch):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.settimeout(5)
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        hub.require_hub("model org/x", "use local files")  # raises if the check did not reach the server
        server.accept()[0].close()  # the check did open its connection here (it would time out otherwise)
    hub._reachable.cache_clear()
    tried = []
    monkeypatch.setattr(hub.socket, "create_connection", lambda *a, **k: tried.append(a))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the libraries read their cache and fail fast by themselves
    hub.require_hub("model org/x", "use local files")
    assert tried == []


def test_an_upload_is_not_told_to_go_offline(monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    with pytest.raises(hub.HubUnreachable) as raised:
        hub.require_hub("pushing to me/x", "push from a machine with network access", cache=False)
    assert "HF_HUB_OFFLINE" not in str(raised.value) and "push from a machine" in str(raised.value)


@pytest.mark.parametrize("argv, message", [
    (["eval", "--model", "./nothere"], "model folder ./nothere does not exist"),
    (["eval", "--model", "sub/dir/model"], "model folder sub/dir/model does not exist"),
    (["train", "--data.task", "null", "--data.data_path", "sub/x.jsonl"], "data path sub/x.jsonl does not exist"),
])
def test_local_paths_are_never_taken_for_hub_ids(monkeypatch, capsys, tmp_path, argv, message):
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")  # a Hub look-up would fail differently
    monkeypatch.chdir(tmp_path)
    if argv[0] == "train":
        (tmp_path / "r.yaml").write_text("rewards: [format]\n")
        argv = ["train", "r.yaml", *argv[1:]]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "needs the Hugging Face Hub" not in err, err


def test_the_offline_gsm8k_advice_names_each_commands_flag(monkeypatch):
    from eggroll_llm.data import load_task

    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    with pytest.raises(hub.HubUnreachable, match="train: --data.data_path DIR; eval: --data DIR"):
        load_task("gsm8k", "test")


def test_eval_of_a_hub_model_without_the_hub_is_one_line_and_exit_2(monkeypatch, capsys):
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    assert main(["eval", "--model", "org/not-here", "--limit", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "model org/not-here needs the Hugging Face Hub" in err
