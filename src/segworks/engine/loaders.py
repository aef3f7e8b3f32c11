"""Data loaders of a training run whose batches depend only on (seed, rank, epoch, position).

Each epoch's shuffling depends only on the seed, the rank and the epoch, and each sample's
augmentation on those and its position in the epoch, so a resumed run (any number of loader
workers) sees exactly the batches of an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, Subset

from segworks.config import TrainConfig
from segworks.engine import distributed as ddp


class PositionedSampler(Sampler[tuple[int, int]]):
    """(position in the epoch, dataset index) pairs of `sampler`, after the first `skip`
    (resuming in the middle of an epoch)."""

    def __init__(self, sampler: Sampler[int], skip: int = 0):
        self.sampler, self.skip = sampler, skip

    def __iter__(self):
        return iter(list(enumerate(self.sampler))[self.skip :])

    def __len__(self) -> int:
        return max(0, len(self.sampler) - self.skip)


class SeededSamples(Dataset):
    """Loads the sample of a (position, index) pair with torch's RNG seeded from (`seed`,
    position): an epoch's augmentation is the same whatever the number of loader workers and
    wherever a run was stopped and resumed. The caller's RNG state is left as it was."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]):
        position, index = item
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((self.seed * 1_000_003 + position) % 2**63)
            return self.dataset[index]


def train_loader(
    cfg: TrainConfig,
    dataset: Dataset,
    info: ddp.DistInfo,
    epoch: int,
    *,
    skip: int = 0,
    collate: Callable | None = None,
) -> DataLoader:
    """This epoch's loader: shuffling and every sample's random transforms depend only on
    (seed, rank, epoch, position in the epoch), never on the worker that loads it.

    `skip` counts micro-batches already consumed in this epoch (resume); the loader's batches
    then start where the interrupted run stopped, with the same augmentation.
    """
    sampler = DistributedSampler(
        dataset, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=cfg.seed
    )
    sampler.set_epoch(epoch)
    drop_last = len(sampler) >= cfg.batch_size  # no tiny last batch (BatchNorm) unless needed
    epoch_seed = (cfg.seed * 1_000_003 + epoch) * 1009 + info.rank
    return DataLoader(
        SeededSamples(dataset, epoch_seed),
        collate_fn=collate,
        batch_size=cfg.batch_size,
        sampler=PositionedSampler(sampler, skip * cfg.batch_size),
        num_workers=cfg.workers,
        drop_last=drop_last,
        pin_memory=torch.cuda.is_available() and cfg.device != "cpu",
        worker_init_fn=seed_worker,
        generator=torch.Generator().manual_seed(epoch_seed),
    )


def val_loader(
    cfg: TrainConfig, dataset: Dataset, info: ddp.DistInfo, *, collate: Callable | None = None
) -> DataLoader:
    """This rank's share of the val images, unpadded; batched only when resized to one size."""
    indices = ddp.shard(list(range(len(dataset))), info)
    return DataLoader(
        Subset(dataset, indices),
        batch_size=cfg.batch_size if cfg.eval_size else 1,
        num_workers=min(cfg.workers, len(indices)),
        collate_fn=collate,
        pin_memory=torch.cuda.is_available() and cfg.device != "cpu",
        generator=torch.Generator().manual_seed(0),  # never draw from the global RNG
    )


def seed_worker(worker_id: int) -> None:
    """Seed numpy and random in a loader worker from its torch seed (for user transforms)."""
    import random

    import numpy as np

    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
