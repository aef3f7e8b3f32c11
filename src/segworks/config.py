"""Flat typed configuration of a training run.

The CLI maps flags to fields one to one; `segworks.engine.train.train(cfg)` reads nothing else.
`TrainConfig.to_dict()` (saved in every checkpoint) holds only plain values and never the paths
of weight files, so a checkpoint can travel without them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from segworks.data.meta import IMAGENET_MEAN, IMAGENET_STD
from segworks.errors import SegworksError

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("step", "poly", "cosine", "multistep", "constant")
LOSSES = ("ce", "dice", "ce+dice", "lovasz", "ce+lovasz")
TASKS = ("semantic", "binary", "instance")

# Keys that name weight files: useful to build the model once, never saved in a checkpoint.
WEIGHT_FILE_KEYS = ("backbone_weights", "weights", "init_from")


@dataclass
class TrainConfig:
    """Everything a training run depends on. Paths are strings so the config is JSON-able."""

    # 1. data: a directory/spec (`data`) or the seed's list + image dir + annotation dir
    data: str | None = None
    train_list: str | None = None
    train_images: str | None = None
    train_annotations: str | None = None
    mask_format: str = "auto"
    ignore_index: int | None = None
    class_names: list[str] | None = None
    reduce_zero_label: bool = False
    num_classes: int | None = None  # checked against the data when given
    task: str | None = None  # None: what the data says (binary masks: "binary")
    train_split: str = "train"
    val_name: str = "val"
    val_split: float = 0.1  # fraction carved from train when the data has no `val_name` split
    skip_bad: bool = False

    # 2. model
    model: str = "unet"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    pretrained: str | None = None  # registry name, "imagenet", a file, or None/"none"
    backbone_weights: str | None = None
    weights: str | None = None
    reset_classifier: bool = False
    sync_bn: bool = False
    backbone_lr_mult: float = 1.0  # learning rate of the encoder relative to `lr`
    freeze_backbone_epochs: int = 0  # encoder frozen (weights and BatchNorm) for N epochs
    freeze_bn: bool = False  # encoder BatchNorm statistics stay as loaded

    # 3. optimisation
    epochs: int = 50
    max_steps: int | None = None  # stop after N optimizer steps (the last epoch partial)
    epoch_repeats: int = 1  # passes over the train images per epoch (tiny datasets)
    batch_size: int = 8
    lr: float = 1e-3
    optimizer: str = "adam"
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = "poly"
    warmup: int = 0  # linear warm-up iterations (multistep: at most a fifth of the run)
    milestones: tuple[float, ...] = (0.75, 0.9)  # multistep: x0.1 at these fractions of the run
    accum_steps: int = 1
    clip_grad: float | None = None
    loss: str = "ce"
    class_weights: str = "none"  # "none" | "median" (median-frequency balancing)
    aux_weight: float = 0.4
    presence_weight: float = 0.2  # class-presence loss, for a model built with presence_head
    ema_decay: float = 0.0  # > 0: validate, save and predict with an EMA of the weights
    max_minutes: float | None = None  # stop (and checkpoint) after this much training time
    fit_minutes: float | None = None  # refit `epochs` after epoch 1 so the run takes this long
    budget_clock: str = "wall"  # of both limits: "wall" | "cpu" (this process's CPU time)

    # 4. augmentation and normalisation
    crop_size: int = 256
    scale_range: tuple[float, float] = (0.5, 2.0)
    hflip: bool = True
    jitter: float = 0.0
    dihedral: bool = False  # random vertical flips and 90-degree turns too (top-down photos)
    long_side: int | None = None  # resize each image so its longer side is N (train and eval)
    eval_size: int | tuple[int, int] | None = None  # validate at N x N or (H, W); None: as loaded
    mean: tuple[float, float, float] | None = None  # None: the pretrained weights' (or ImageNet)
    std: tuple[float, float, float] | None = None
    tta_flip: bool = False  # eval and predict average with the mirror image unless --no-tta
    tta_scales: tuple[float, ...] = (1.0,)  # ... and over these input scales

    # 5. runtime
    seed: int = 0
    workers: int = 2
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N"
    amp: bool = True  # only ever on CUDA
    channels_last: bool = False
    compile: bool = False
    deterministic: bool = False
    tensorboard: bool = True
    progress: bool = True

    # 6. run directory and checkpoints
    out: str = "runs/train"
    resume: str | None = None
    patience: int | None = None  # epochs without a better val mIoU before stopping
    snapshot_every: int = 10  # keep epoch_N.pt every N epochs (0: never)

    # 7. instance segmentation (--task instance; refused for other tasks)
    gamma: float = 1.0  # weight of the mask loss
    roi_size: int = 14  # RoIAlign output size of the mask head
    min_size: int | None = None  # images resized to this shorter side (None: the model's)
    max_size: int | None = None  # ... and at most this longer side
    min_size_test: int | None = None  # eval and predict at this shorter side (None: min_size)
    max_size_test: int | None = None  # ... and longer side (None: max_size scaled alike)
    instance_format: str = "auto"  # coco | labelme | via | voc | auto
    bn2affine: bool = False  # BatchNorm as a frozen affine layer (same as freeze_bn)
    val_data: str | None = None  # annotations of a separate validation set

    def __post_init__(self) -> None:
        self.scale_range = (float(self.scale_range[0]), float(self.scale_range[1]))
        self.milestones = tuple(float(m) for m in self.milestones)
        scales = self.tta_scales
        self.tta_scales = (
            tuple(float(s) for s in scales)
            if isinstance(scales, (list, tuple))
            else (float(scales),)
        )
        if self.mean is None or self.std is None:
            mean, std = self.weights_normalisation()
            self.mean = mean if self.mean is None else self.mean
            self.std = std if self.std is None else self.std
        self.mean = tuple(float(v) for v in self.mean)
        self.std = tuple(float(v) for v in self.std)
        self.validate()

    def weights_normalisation(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """The input normalisation the pretrained weights expect (ImageNet's by default)."""
        from segworks.models.pretrained import normalisation

        found = normalisation(self.pretrained, self.model, self.model_kwargs)
        return found if found is not None else (IMAGENET_MEAN, IMAGENET_STD)

    def validate(self) -> None:
        """Raise ValueError naming the first field that is out of range."""
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("schedule", self.schedule, SCHEDULES)
        _choice("loss", self.loss, LOSSES)
        if self.task is not None:
            _choice("task", self.task, TASKS)
        _choice("class_weights", self.class_weights, ("none", "median"))
        _choice("budget_clock", self.budget_clock, ("wall", "cpu"))
        if self.max_steps is not None and int(self.max_steps) < 1:
            raise SegworksError(f"max_steps must be >= 1, got {self.max_steps}")
        if self.fit_minutes is not None and not self.fit_minutes > 0:
            raise SegworksError(f"fit_minutes must be > 0, got {self.fit_minutes}")
        for name in ("epochs", "epoch_repeats", "batch_size", "accum_steps", "crop_size"):
            if int(getattr(self, name)) < 1:
                raise SegworksError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise SegworksError(f"lr must be > 0, got {self.lr}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise SegworksError(f"ema_decay must be in [0, 1) (0: off), got {self.ema_decay}")
        if not 0.0 <= self.val_split < 1.0:
            raise SegworksError(f"val_split must be a fraction in [0, 1), got {self.val_split}")
        if self.long_side is not None and self.long_side < 8:
            raise SegworksError(f"long_side must be >= 8 pixels, got {self.long_side}")
        if not self.presence_weight >= 0:
            raise SegworksError(f"presence_weight must be >= 0, got {self.presence_weight}")
        if not self.backbone_lr_mult >= 0:
            raise SegworksError(f"backbone_lr_mult must be >= 0, got {self.backbone_lr_mult}")
        if self.freeze_backbone_epochs < 0:
            raise SegworksError(
                f"freeze_backbone_epochs must be >= 0, got {self.freeze_backbone_epochs}"
            )
        if self.warmup < 0 or self.snapshot_every < 0 or self.workers < 0:
            raise SegworksError("warmup, snapshot_every and workers must be >= 0")
        if self.patience is not None and self.patience < 1:
            raise SegworksError(f"patience must be >= 1 epoch, got {self.patience}")
        if self.num_classes is not None and self.num_classes < 1:
            raise SegworksError(f"num_classes must be >= 1, got {self.num_classes}")
        if not self.tta_scales or any(not s > 0 for s in self.tta_scales):
            raise SegworksError(f"tta_scales must be numbers > 0, got {list(self.tta_scales)}")
        if any(not 0.0 < m < 1.0 for m in self.milestones):
            raise SegworksError(f"milestones must be fractions in (0, 1), got {self.milestones}")
        check_task_fields(self)
        if self.data is None and self.train_images is None and self.resume is None:
            raise SegworksError("no training data: give --data DIR, or -tr IMAGES -ta ANNOTATIONS")

    def to_dict(self) -> dict[str, Any]:
        """Plain values for a checkpoint: lists instead of tuples, weight-file paths removed."""
        data = dataclasses.asdict(self)
        for key in WEIGHT_FILE_KEYS:
            data[key] = None
        data["model_kwargs"] = model_kwargs_for_checkpoint(self.model_kwargs)
        return {key: list(v) if isinstance(v, tuple) else v for key, v in data.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Inverse of to_dict; unknown keys (from a newer segworks) are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in names})


# Fields only one kind of task can use: given (not at their default) for the other, refused.
INSTANCE_ONLY = ("gamma", "roi_size", "min_size", "max_size", "min_size_test", "max_size_test",
                 "instance_format", "bn2affine", "val_data")  # fmt: skip
SEMANTIC_ONLY = (
    "train_list", "train_images", "train_annotations", "mask_format", "ignore_index",
    "class_names", "reduce_zero_label", "num_classes", "train_split", "val_name", "skip_bad",
    "freeze_backbone_epochs", "loss", "class_weights", "aux_weight", "presence_weight",
    "crop_size", "scale_range",
    "jitter", "dihedral", "long_side", "eval_size", "channels_last", "compile", "tta_flip",
    "tta_scales",
)  # fmt: skip


def check_task_fields(cfg: TrainConfig) -> None:
    """Refuse a field the task cannot use (e.g. --loss dice with --task instance)."""
    defaults = {f.name: f.default for f in dataclasses.fields(cfg)}
    instance = cfg.task == "instance"
    for name in SEMANTIC_ONLY if instance else INSTANCE_ONLY:
        if getattr(cfg, name) != defaults[name]:
            flag = "--" + name.replace("_", "-")
            task = "--task instance" if instance else "semantic or binary segmentation"
            raise SegworksError(
                f"{flag} ({getattr(cfg, name)!r}) does not apply to {task}; drop it"
                + ("" if instance else " or add --task instance")
            )


def model_kwargs_for_checkpoint(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Builder kwargs without weight-file paths: the weights are in the state_dict already."""
    return {key: value for key, value in kwargs.items() if key not in WEIGHT_FILE_KEYS}


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise SegworksError(f"{name} must be one of {', '.join(choices)}; got {value!r}")
