"""Several GPUs (or CPU processes) under ``torchrun``: the chunks of a level are shared out among the ranks.

Chunks of one level do not depend on each other, so rank ``r`` of ``W`` denoises the chunks whose place in the
level is ``r`` modulo ``W`` and every rank then receives all of them. Everything else (prompt embedding,
conditions, decoding) is cheap next to denoising and runs on every rank; only rank 0 writes files.
Started with plain ``python``/``tempo``, everything runs in the one process.
"""

from __future__ import annotations

import os
from typing import Mapping

import torch
import torch.distributed as dist


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def init_from_env() -> None:
    """Join the process group that ``torchrun`` describes in the environment (NCCL on GPUs, gloo on CPU)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available() or dist.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl")
    else:
        dist.init_process_group("gloo")


def local_device() -> torch.device | None:
    """This rank's GPU under torchrun, or None (let the caller choose)."""
    if world_size() > 1 and torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return None


def my_share(items: list[int]) -> list[int]:
    """The items this rank works on: every ``world_size()``-th, starting at ``rank()``."""
    return items[rank()::world_size()]


def gather(local: Mapping[int, torch.Tensor]) -> dict[int, torch.Tensor]:
    """Every rank's ``{chunk index: CPU tensor}`` merged, on every rank."""
    if world_size() == 1:
        return dict(local)
    parts: list[dict[int, torch.Tensor] | None] = [None] * world_size()
    dist.all_gather_object(parts, {k: v.cpu() for k, v in local.items()})
    return {k: v for part in parts if part for k, v in part.items()}


def from_main(value):
    """Rank 0's ``value`` (any picklable object), on every rank: a choice one rank makes for all of them."""
    if world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    """Wait until every rank is here (nothing to wait for in one process)."""
    if world_size() > 1:
        torch.distributed.barrier()


def shutdown() -> None:
    """Leave the process group (a gloo group left open can abort the process at exit)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
