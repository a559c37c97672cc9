"""Checkpoint files -> state dicts -> models built on the meta device.

Formats: ``.safetensors``, sharded ``*.safetensors.index.json``, and torch pickles (``.bin``, ``.pth``,
``.pt``) read with ``torch.load(weights_only=True, mmap=True)``; arbitrary pickled code is never run.
Models are built on the meta device and receive the loaded tensors with ``assign=True``, so a 14B model
never exists twice in memory: each tensor is cast (and moved) once, and the source reference is dropped.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Mapping, MutableMapping, TypeVar

import torch
from torch import nn

from tempo_cli.errors import CheckpointError

M = TypeVar("M", bound=nn.Module)
PICKLE_SUFFIXES = (".bin", ".pth", ".pt", ".ckpt")
WRAPPER_KEYS = ("state_dict", "model", "module")


def read_state_dict(path: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint file, keyed by its state-dict name (memory-mapped where possible)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    name = path.name
    if name.endswith(".safetensors.index.json"):
        return _read_sharded(path, device)
    if name.endswith(".safetensors"):
        return _read_safetensors(path, device)
    if name.endswith(PICKLE_SUFFIXES):
        return _read_pickle(path, device)
    raise CheckpointError(f"unsupported checkpoint format: {path}",
                          hint="use .safetensors, .safetensors.index.json, .bin, .pth or .pt")


def _read_safetensors(path: Path, device: str | torch.device) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}", hint="the file may be truncated; download it again") from None


def _read_sharded(index_path: Path, device: str | torch.device) -> dict[str, torch.Tensor]:
    try:
        weight_map: Mapping[str, str] = json.loads(index_path.read_text())["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"cannot read shard index {index_path}: {exc!r}") from None
    state: dict[str, torch.Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        tensors = _read_safetensors(index_path.parent / shard, device)
        wanted = {k for k, v in weight_map.items() if v == shard}
        if missing := sorted(wanted - tensors.keys()):
            raise CheckpointError(f"shard {shard} of {index_path} lacks {len(missing)} listed tensors, e.g. {missing[:3]}")
        state.update((k, tensors[k]) for k in wanted)
    return state


def _read_pickle(path: Path, device: str | torch.device) -> dict[str, torch.Tensor]:
    try:
        try:
            obj = torch.load(path, map_location=device, weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc) and "zip" not in str(exc):
                raise
            obj = torch.load(path, map_location=device, weights_only=True)  # legacy (non-zip) pickle
    except Exception as exc:  # noqa: BLE001 - torch raises many types for corrupt or unsafe files
        raise CheckpointError(f"cannot read {path}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}",
                              hint="the file may be truncated or not a weights file") from None
    while isinstance(obj, dict) and len(obj) == 1 and next(iter(obj)) in WRAPPER_KEYS:
        obj = next(iter(obj.values()))
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    return obj


def check_keys(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Raise one clear CheckpointError if ``state`` does not have exactly the model's keys and shapes."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {tuple(state[k].shape)} != {expected[k]}" for k in expected
             if k in state and tuple(state[k].shape) != expected[k]]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys (first: {', '.join(missing[:3])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (first: {', '.join(unexpected[:3])})")
    if wrong:
        problems.append(f"{len(wrong)} wrong shapes (first: {'; '.join(wrong[:3])})")
    if problems:
        raise CheckpointError(f"{source} does not fit {type(model).__name__}: {'; '.join(problems)}",
                              hint="is it the right file for this preset, and complete?")


def build_on_meta(factory: Callable[[], M]) -> M:
    """Construct a module without allocating its parameters."""
    with torch.device("meta"):
        return factory()


def load_into(model: M, state: MutableMapping[str, torch.Tensor], *, source: str,
              dtype: torch.dtype | None = None, device: str | torch.device = "cpu") -> M:
    """Give a meta-device ``model`` the tensors of ``state`` (consumed), cast and moved one at a time."""
    check_keys(model, state, source)
    placed: dict[str, torch.Tensor] = {}
    for key in list(state):
        tensor = state.pop(key)
        target = dtype if dtype is not None and tensor.is_floating_point() else tensor.dtype
        placed[key] = tensor.to(device=device, dtype=target)
    model.load_state_dict(placed, strict=True, assign=True)
    for name, buffer in model.named_buffers():
        if buffer.is_meta:
            raise CheckpointError(f"{type(model).__name__} buffer {name} was not initialised while loading {source}")
    return model.eval().requires_grad_(False)


def load_model(factory: Callable[[], M], path: str | Path, *, dtype: torch.dtype | None = None,
               device: str | torch.device = "cpu") -> M:
    """Build ``factory()`` on the meta device and load the checkpoint at ``path`` into it."""
    return load_into(build_on_meta(factory), read_state_dict(path), source=str(path), dtype=dtype, device=device)


def weights_identity(paths: Mapping[str, Path]) -> str:
    """A short, stable identity of a set of weight files, cheap enough for 30 GB checkpoints.

    Each file contributes its name, size and the sha256 of its first and last MiB; the identity is the
    sha256 of those lines. It tells different downloads apart; it is not a full content hash.
    """
    import hashlib

    digest = hashlib.sha256()
    for role in sorted(paths):
        path = Path(paths[role])
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            size = file.stat().st_size
            with open(file, "rb") as handle:
                head = handle.read(1 << 20)
                handle.seek(max(size - (1 << 20), 0))
                tail = handle.read(1 << 20)
            digest.update(f"{role}:{file.name}:{size}:".encode())
            digest.update(hashlib.sha256(head + tail).digest())
    return "files:" + digest.hexdigest()[:16]


def random_identity(seed: int) -> str:
    """The identity recorded for random (test) weights drawn from ``seed``."""
    return f"random:{seed}"


def build_random(factory: Callable[[], M], seed: int, *, dtype: torch.dtype | None = None,
                 device: str | torch.device = "cpu") -> M:
    """Build ``factory()`` with its default initialisation drawn from ``seed`` (the global RNG is untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = factory()
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)
