"""Data-parallel training with torch's own engine (torchrun + DistributedDataParallel).

`torchrun --nproc_per_node=N -m segworks train ...` sets RANK, LOCAL_RANK and WORLD_SIZE (and
MASTER_ADDR/PORT, or a rendezvous endpoint for multi-node runs); `init_from_env` reads them and
joins the process group: NCCL when the run is on CUDA, gloo on the CPU. Without those variables
everything here is a no-op for a single process, so the training loop has one code path.

Only rank 0 logs, shows progress and writes files; `barrier()` keeps the other ranks from racing
ahead of a checkpoint write. Validation shards the images across ranks without padding and sums
the confusion matrices, so the metrics equal a single-process evaluation on the same data.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_from_env(device: torch.device) -> DistInfo:
    """Join the process group described by torchrun's environment variables (if any).

    On CUDA each process takes the GPU of its LOCAL_RANK; `device` must be a CUDA device then,
    and the caller should use `device_for(info, device)` afterwards.
    """
    world_size = env_world_size()
    if world_size <= 1:
        return DistInfo()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
        log.debug("joined process group: rank %d of %d (%s)", rank, world_size, backend)
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world_size)


def device_for(info: DistInfo, device: torch.device) -> torch.device:
    """The device of this process: cuda:LOCAL_RANK in a multi-process CUDA run."""
    if info.enabled and device.type == "cuda":
        return torch.device("cuda", info.local_rank)
    return device


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum `tensor` in place over all ranks (no-op for one process) and return it."""
    if info.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def any_rank(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """True when `flag` is true on at least one rank (e.g. a NaN loss or an early stop)."""
    if not info.enabled:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    return bool(all_reduce_sum(value, info).item() > 0)


def wrap_model(
    model: nn.Module,
    info: DistInfo,
    device: torch.device,
    *,
    sync_bn: bool,
    find_unused: bool = False,
) -> nn.Module:
    """SyncBatchNorm (optional) and DistributedDataParallel when running on several ranks.

    `find_unused` lets some parameters go without gradients (a frozen backbone)."""
    if not info.enabled:
        return model
    if sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    device_ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(
        model, device_ids=device_ids, find_unused_parameters=find_unused
    )


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model under DDP and torch.compile wrappers (what a checkpoint stores)."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def shard(indices: list[int], info: DistInfo) -> list[int]:
    """This rank's share of `indices` (every index on exactly one rank, no padding)."""
    return indices[info.rank :: info.world_size]


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
