"""checkpoint.py: resumable step-N folders, written atomically, the newest two kept; a failed write leaves the previous
checkpoint as it was and says why in one line."""

import json

import pytest
import torch
from safetensors import SafetensorError

from eggroll_llm import checkpoint
from eggroll_llm.checkpoint import checkpoint_step, list_checkpoints, load_checkpoint, save_checkpoint
from eggroll_llm.io import WriteError


def state(value: float) -> dict:
    return {"layer.lora_U": torch.full((3, 2), value), "es.momentum": torch.arange(4.0)}


def test_a_checkpoint_round_trips_and_only_the_newest_two_are_kept(tmp_path):
    for step in (1, 2, 10, 3):  # numeric order, not text order: step-10 is the newest
        save_checkpoint(tmp_path, step, state(float(step)), {"wall_s": step / 2})
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000003", "step-000010"]
    tensors, saved = load_checkpoint(list_checkpoints(tmp_path)[-1])
    assert torch.equal(tensors["layer.lora_U"], torch.full((3, 2), 10.0))
    assert saved == {"step": 10, "wall_s": 5.0}
    assert int(tensors["es.step"]) == 10  # an older checkpoint without the ES step takes it from the state
    assert checkpoint_step(list_checkpoints(tmp_path)[-1]) == 10 and checkpoint_step(None) == -1


def test_a_folder_without_its_state_file_is_not_a_checkpoint(tmp_path):
    save_checkpoint(tmp_path, 1, state(1.0), {})
    (tmp_path / "checkpoints" / "step-000002").mkdir()  # a kill between mkdir and the state write (pre-atomic runs)
    (tmp_path / "checkpoints" / "notes").mkdir()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000001"]


def test_a_full_disk_keeps_the_previous_checkpoint_and_says_why_in_one_line(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, 1, state(1.0), {})

    def full(tensors, path):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(checkpoint, "save_file", full)
    with pytest.raises(WriteError) as raised:
        save_checkpoint(tmp_path, 2, state(2.0), {})
    message = str(raised.value)
    assert "\n" not in message and "could not write the checkpoint of step 2" in message
    assert "No space left on device" in message and "--resume" in message
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000001"]
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".")]  # no half-written folder
    assert json.loads((list_checkpoints(tmp_path)[0] / "trainer_state.json").read_text())["step"] == 1
