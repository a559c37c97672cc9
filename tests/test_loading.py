"""Checkpoint loading: every file format round-trips; broken or wrong files give one clear error."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from tempo_cli.config import DiTConfig
from tempo_cli.errors import CheckpointError
from tempo_cli.loading import build_on_meta, load_model, read_state_dict
from tempo_cli.models.dit import MultiMaskDiT

TINY = DiTConfig(dim=48, in_dim=36, ffn_dim=64, freq_dim=16, text_dim=8, out_dim=16, num_heads=1, num_layers=2)


@pytest.fixture
def state():
    torch.manual_seed(0)
    return {k: v.clone() for k, v in MultiMaskDiT(TINY).state_dict().items()}


def save_sharded(state, folder):
    keys = sorted(state)
    halves = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2],
              "model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
    weight_map = {}
    for shard, names in halves.items():
        save_file({k: state[k] for k in names}, str(folder / shard))
        weight_map.update({k: shard for k in names})
    index = folder / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return index


@pytest.mark.parametrize("fmt", ["safetensors", "sharded", "bin", "pth", "pt", "wrapped"])
def test_every_format_round_trips(fmt, state, tmp_path):
    if fmt == "safetensors":
        path = tmp_path / "w.safetensors"
        save_file(state, str(path))
    elif fmt == "sharded":
        path = save_sharded(state, tmp_path)
    elif fmt == "wrapped":
        path = tmp_path / "w.pth"
        torch.save({"state_dict": state}, path)
    else:
        path = tmp_path / f"w.{fmt}"
        torch.save(state, path)
    model = load_model(lambda: MultiMaskDiT(TINY), path)
    assert not any(p.is_meta for p in model.parameters())
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, state[key], rtol=0, atol=0)
    assert not model.training and not any(p.requires_grad for p in model.parameters())


def test_loading_casts_to_the_chosen_dtype(state, tmp_path):
    path = tmp_path / "w.safetensors"
    save_file(state, str(path))
    model = load_model(lambda: MultiMaskDiT(TINY), path, dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_pickle_loading_never_unpickles_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"x": Evil()}, path)
    with pytest.raises(CheckpointError, match="evil.pt"):
        read_state_dict(path)


def test_missing_and_unexpected_keys_name_file_and_keys(state, tmp_path):
    del state["head.head.weight"]
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "wrong.safetensors"
    save_file(state, str(path))
    with pytest.raises(CheckpointError) as info:
        load_model(lambda: MultiMaskDiT(TINY), path)
    text = str(info.value)
    assert "wrong.safetensors" in text and "head.head.weight" in text and "extra.weight" in text


def test_wrong_shapes_are_reported(state, tmp_path):
    path = tmp_path / "w.safetensors"
    save_file(state, str(path))
    bigger = DiTConfig(dim=96, in_dim=36, ffn_dim=64, freq_dim=16, text_dim=8, out_dim=16, num_heads=2, num_layers=2)
    with pytest.raises(CheckpointError, match="wrong shapes"):
        load_model(lambda: MultiMaskDiT(bigger), path)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_truncated_file_gives_clear_error(state, tmp_path, suffix):
    path = tmp_path / f"w{suffix}"
    if suffix == ".pt":
        torch.save(state, path)
    else:
        save_file(state, str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cannot read"):
        read_state_dict(path)


def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        read_state_dict(tmp_path / "nope.safetensors")
    odd = tmp_path / "w.onnx"
    odd.write_bytes(b"x")
    with pytest.raises(CheckpointError, match="unsupported"):
        read_state_dict(odd)


def test_meta_build_allocates_nothing():
    model = build_on_meta(lambda: MultiMaskDiT(TINY))
    assert all(p.is_meta for p in model.parameters())
