"""The task adapter interface the one training loop drives (`task_for` in engine.train picks one).

A task adapter (`SemanticTask` in `segworks.engine.semantic`, `InstanceTask` in
`segworks.engine.instance`) answers what differs between tasks, and nothing else:

    build_data(cfg) -> Data                 datasets (and class weights, meta)
    build_model(cfg, data) -> nn.Module     the model with its starting weights
    model_kwargs(cfg, data), checkpoint_meta(cfg, data)   what a checkpoint needs to rebuild it
    inputs_to(inputs, device, cfg), targets_to(targets, device)   a batch on the device
    loss(model, inputs, targets, cfg, data) -> Tensor     the training loss of a batch
    evaluator(data, device), predict(model, inputs, targets)   validation (engine.evaluators)
    score(metrics) -> float | None          the metric that picks best.pt (`best_metric`)
    csv_fields, csv_values(metrics)         the validation columns of metrics.csv
    collate                                 the DataLoader's collate_fn (None: torch's)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset


@dataclass
class Data:
    """A task's datasets. `meta` is the task's description of the classes (a DatasetMeta for
    semantic and binary data, an InstanceSet's classes for instances)."""

    meta: Any
    train_set: Dataset
    val_set: Dataset | None
    class_weights: torch.Tensor | None = None
