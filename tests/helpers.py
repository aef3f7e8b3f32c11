"""Helpers shared by the test files: import them with `from helpers import ...` (pytest puts
tests/ on sys.path). Test files import from here and from segworks, never from each other.

- PerPixel: the control model of the learn tests (it sees one pixel, so context tasks defeat it)
- SMALL_KWARGS, ALIASES: tiny widths per registry entry for fast contract tests
- TinyNet, tiny_net, write_checkpoint, reference_predictions: a tiny semantic model, a checkpoint
  of it and its predictions by a plain forward pass (register_tiny_net or conftest's `registered` fixture registers it)
- stripes_batch, mean_iou, train_and_score: the texture-orientation learn task
- write_coco: a small COCO instance set of squares and triangles
- write_image, write_mask, make_labels, make_*: small datasets in the layouts segworks reads
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import nn

from segworks.checkpoint import save_checkpoint
from segworks.coco_eval import encode_mask as encode_rle
from segworks.config import TrainConfig
from segworks.data.encoding import encode_mask
from segworks.data.meta import DatasetMeta, voc_palette

# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------


class PerPixel(nn.Module):
    """The control of the learn tests: 1x1 convolutions see one pixel alone, so a task that
    needs context defeats it. hidden=0: one 1x1 convolution; else an MLP with two hidden layers."""

    def __init__(self, num_classes: int = 3, hidden: int = 0):
        super().__init__()
        widths = [3] + ([hidden, hidden] if hidden else [])
        layers: list[nn.Module] = []
        for inputs, outputs in zip(widths, widths[1:]):
            layers += [nn.Conv2d(inputs, outputs, 1), nn.ReLU()]
        self.net = nn.Sequential(*layers, nn.Conv2d(widths[-1], num_classes, 1))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.net(x)}


TINY_DEEPLABV3PLUS = {"aspp_channels": 8, "skip_channels": 4, "decoder_channels": 8}
SMALL_KWARGS: dict[str, dict] = {
    "tutorial_convnet": {"width": 4},
    "tutorial_upsample": {"width": 4},
    "tutorial_transposed": {"width": 4},
    "tutorial_concat": {"width": 4},
    "unet_original": {"base_width": 4, "depth": 2},
    "unet": {"base_width": 4, "depth": 3},
    "segnet": {"base_width": 4},
    "segnet_basic": {"width": 4, "kernel_size": 3},
    "fcn32s": {"width": 2, "fc_channels": 8},
    "fcn16s": {"width": 2, "fc_channels": 8},
    "fcn8s": {"width": 2, "fc_channels": 8},
    "refinenet": {"backbone": "resnet18", "features": 8},
    "refinenet_resnet50": {"features": 8},
    "refinenet_resnet101": {"features": 8},
    "refinenet_resnet152": {"features": 8},
    "refinenet_seed": {"backbone": "resnet18", "features": 8},
    "deeplabv3": {"backbone": "resnet18", "output_stride": 16, "aspp_channels": 8},
    "deeplabv3_resnet50": {"output_stride": 16, "aspp_channels": 8},
    "deeplabv3_resnet101": {"output_stride": 16, "aspp_channels": 8},
    "unet_resnet": {"encoder": "resnet18", "decoder_channels": (8, 8, 8, 8, 8)},
    "deeplabv3plus": {"encoder": "resnet18", **TINY_DEEPLABV3PLUS},
    "deeplabv3plus_resnet50": TINY_DEEPLABV3PLUS,
    "deeplabv3plus_resnet101": TINY_DEEPLABV3PLUS,
    "deeplabv3plus_mobilenet_v2": TINY_DEEPLABV3PLUS,
    "deeplabv3plus_efficientnet_lite0": TINY_DEEPLABV3PLUS,
    "deeplabv3plus_efficientnet_lite2": TINY_DEEPLABV3PLUS,
    "fcn_resnet": {"backbone": "resnet18"},
}
# Fixed-backbone aliases build full ResNet-50/101/152 encoders (25-60 M parameters). Their code
# is the generic entry's, which the contract tests run with a ResNet-18 encoder; the aliases get
# a cheap check that they build that same architecture (on the meta device, no memory).
ALIASES = {
    "refinenet_resnet50": "refinenet",
    "refinenet_resnet101": "refinenet",
    "refinenet_resnet152": "refinenet",
    "refinenet_seed_resnet50": "refinenet_seed",
    "refinenet_seed_resnet101": "refinenet_seed",
    "refinenet_seed_resnet152": "refinenet_seed",
    "deeplabv3_resnet50": "deeplabv3",
    "deeplabv3_resnet101": "deeplabv3",
    "deeplabv3plus_resnet50": "deeplabv3plus",
    "deeplabv3plus_resnet101": "deeplabv3plus",
    "fcn_resnet50": "fcn_resnet",
    "fcn_resnet101": "fcn_resnet",
    "unet_resnet34": "unet_resnet",
}


MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class TinyNet(nn.Module):
    """Two 3x3 convolutions; the colour of a pixel and its neighbours decides its class."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, num_classes, 3, padding=1)
        )

    def forward(self, x):
        return {"out": self.body(x)}


def tiny_net(*, num_classes: int) -> TinyNet:
    return TinyNet(num_classes)


def register_tiny_net(monkeypatch) -> None:
    """Register `tiny_net` as a semantic model for one test (checkpoints name it)."""
    from segworks import models

    monkeypatch.setitem(models.MODELS, "tiny_net", tiny_net)
    monkeypatch.setitem(models.SEMANTIC_MODELS, "tiny_net", tiny_net)
    monkeypatch.setitem(models.TASKS, "tiny_net", "semantic")


def write_checkpoint(path: Path, *, num_classes: int, task: str = "semantic") -> Path:
    torch.manual_seed(0)
    channels = 1 if task == "binary" else num_classes
    model = TinyNet(channels)
    names = ["background", "foreground"] if task == "binary" else ["sky", "road", "car", "tree"]
    meta = DatasetMeta(class_names=names[:num_classes], task=task).to_dict()
    meta.update(mean=list(MEAN), std=list(STD))
    save_checkpoint(
        path,
        {
            "model": model.state_dict(),
            "model_name": "tiny_net",
            "model_kwargs": {"num_classes": channels},
            "meta": meta,
            "config": {"crop_size": 16},
        },
    )
    return path


def reference_predictions(model, pairs, *, binary_threshold=None):
    """Labels of each image from a plain forward pass of the model, at the original size."""
    predictions = []
    for image, _ in pairs:
        tensor = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
        tensor = (tensor - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
        with torch.no_grad():
            logits = model.eval()(tensor)["out"][0]
        if binary_threshold is None:
            predictions.append(logits.argmax(0).numpy())
        else:
            predictions.append((torch.sigmoid(logits[0]) > binary_threshold).numpy().astype(int))
    return predictions


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


def stripes_batch(batch: int, size: int, generator: torch.Generator, sides: tuple[int, int]):
    """Binary noise with rectangles of horizontal (class 1) or vertical (class 2) stripes.

    Every pixel is 0 or 1 with probability 1/2 whatever its class, so only the neighbourhood
    (the texture's orientation) tells the classes apart: a per-pixel classifier cannot.
    """
    image = torch.randint(0, 2, (batch, size, size), generator=generator).float()
    target = torch.zeros(batch, size, size, dtype=torch.long)
    stripes = (torch.arange(size) // 2 % 2).float()
    patterns = {1: stripes[:, None].expand(size, size), 2: stripes[None, :].expand(size, size)}
    for index in range(batch):
        for _ in range(2):
            h, w = torch.randint(sides[0], sides[1] + 1, (2,), generator=generator).tolist()
            top = torch.randint(0, size - h + 1, (1,), generator=generator).item()
            left = torch.randint(0, size - w + 1, (1,), generator=generator).item()
            label = torch.randint(1, 3, (1,), generator=generator).item()
            window = (index, slice(top, top + h), slice(left, left + w))
            image[window] = patterns[label][window[1:]]
            target[window] = label
    return (2 * image - 1)[:, None].expand(-1, 3, -1, -1), target


def mean_iou(pred: torch.Tensor, target: torch.Tensor, num_classes: int = 3) -> float:
    ious = [
        ((pred == c) & (target == c)).sum() / ((pred == c) | (target == c)).sum()
        for c in range(num_classes)
    ]
    return torch.stack(ious).nanmean().item()


def train_and_score(
    model: nn.Module, *, steps: int, size: int, sides: tuple[int, int], lr: float = 1e-3
) -> float:
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        x, y = stripes_batch(8, size, generator, sides)
        out = model(x)
        loss = F.cross_entropy(out["out"], y)
        if "aux" in out:
            loss = loss + 0.4 * F.cross_entropy(out["aux"], y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    x, y = stripes_batch(16, size, torch.Generator().manual_seed(99), sides)
    with torch.no_grad():
        return mean_iou(model.eval()(x)["out"].argmax(1), y)


COCO_SIZE = 96
CATEGORIES = [{"id": 3, "name": "square"}, {"id": 7, "name": "triangle"}]


def _polygon(generator, cell_x: int, cell_y: int, category: int) -> list[float]:
    half = COCO_SIZE // 2
    side = int(torch.randint(18, 34, (), generator=generator))
    x0 = cell_x * half + int(torch.randint(2, half - side - 1, (), generator=generator))
    y0 = cell_y * half + int(torch.randint(2, half - side - 1, (), generator=generator))
    if category == 3:
        return [x0, y0, x0 + side, y0, x0 + side, y0 + side, x0, y0 + side]
    return [x0 + side / 2, y0, x0 + side, y0 + side, x0, y0 + side]


def write_coco(folder, count: int, *, seed: int, categories=CATEGORIES, empty_last=True):
    """`count` images of 1-3 shapes, one per quarter, and a COCO JSON; returns the JSON path."""
    folder.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    ids = [c["id"] for c in categories]
    images, annotations = [], []
    for index in range(count):
        base = (torch.rand(3, generator=generator) * 70).tolist()
        noise = torch.rand(COCO_SIZE, COCO_SIZE, 3, generator=generator).numpy() * 30
        picture = Image.fromarray((np.array(base) + noise).astype(np.uint8))
        draw = ImageDraw.Draw(picture)
        cells = torch.randperm(4, generator=generator)[: 1 + index % 3].tolist()
        for cell in [] if empty_last and index == count - 1 else cells:
            category = ids[int(torch.randint(len(ids), (), generator=generator))]
            flat = _polygon(generator, cell % 2, cell // 2, category)
            colour = tuple(int(v) for v in 150 + torch.randint(0, 100, (3,), generator=generator))
            draw.polygon(flat, fill=colour)
            annotation = {"segmentation": [flat], "iscrowd": 0}
            if len(annotations) == 1:  # one RLE annotation
                mask = Image.new("L", (COCO_SIZE, COCO_SIZE))
                ImageDraw.Draw(mask).polygon(flat, fill=1)
                annotation["segmentation"] = encode_rle(np.array(mask))
            annotation |= {"id": len(annotations) + 1, "image_id": 100 + index}
            annotations.append(annotation | {"category_id": category})
        picture.save(folder / f"img{index}.png")
        images.append({"id": 100 + index, "file_name": f"img{index}.png"})
        images[-1] |= {"height": COCO_SIZE, "width": COCO_SIZE}
    data = {"images": images, "annotations": annotations, "categories": categories}
    (folder / "instances.json").write_text(json.dumps(data))
    return folder / "instances.json"


RNG = np.random.default_rng(0)


def write_image(path, size=(12, 16)):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = RNG.integers(0, 255, (*size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def write_mask(path, labels, fmt="palette", **options):
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "palette":
        options.setdefault("palette", voc_palette(256))
    return encode_mask(labels, path, mask_format=fmt, **options)


def make_labels(value, size=(12, 16)):
    labels = np.zeros(size, dtype=np.int64)
    labels[3:8, 4:10] = value
    return labels


def make_class_folders(root, per_class=2):
    """The tutorial's newts: images/<cls>/*.jpg + seg_images/<cls>/*.png, palette PNGs."""
    for split in ("train", "test"):
        for value, cls in enumerate(("akahara", "madara"), start=1):
            for i in range(per_class):
                write_image(root / split / "images" / cls / f"{cls}_{i}.jpg")
                write_mask(root / split / "seg_images" / cls / f"{cls}_{i}.png", make_labels(value))
        (root / split / "labels.txt").write_text("__ignore__\n_background_\nakahara\nmadara\n")
    return root


def make_camvid(root, count=3):
    """SegNet layout: train/ + trainannot/ + train.txt, index PNGs with void 11."""
    for split in ("train", "val"):
        lines = []
        for i in range(count):
            write_image(root / split / f"f{i}.png")
            labels = make_labels(i + 3)
            labels[0, :] = 11
            write_mask(root / f"{split}annot" / f"f{i}.png", labels, "index")
            lines.append(f"{split}/f{i}.png {split}annot/f{i}.png")
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return root


def make_binary_dirs(root, count=3):
    """ISBI: image/N.png (grey) + label/N.png holding 0 and 255."""
    for i in range(count):
        (root / "image").mkdir(parents=True, exist_ok=True)
        Image.fromarray(RNG.integers(0, 255, (12, 16), dtype=np.uint8)).save(
            root / "image" / f"{i}.png"
        )
        write_mask(root / "label" / f"{i}.png", make_labels(1), "binary")
    return root


def make_refinenet(root, stems=("aaa", "bbb", "ccc")):
    for stem in stems:
        write_image(root / "images" / f"{stem}.jpg")
        write_mask(root / "annotations" / f"{stem}.png", make_labels(2))
    (root / "train.txt").write_text("\n".join(stems) + "\n")
    return root


# ---------------------------------------------------------------------------------------------
# Instance models
# ---------------------------------------------------------------------------------------------

# Small images and few proposals: any Mask R-CNN entry runs a step in seconds on a CPU.
DETECTOR_SMALL = {
    "min_size": 64,
    "max_size": 96,
    "box_score_thresh": 0.0,
    "rpn_pre_nms_top_n_train": 200,
    "rpn_post_nms_top_n_train": 50,
    "rpn_pre_nms_top_n_test": 200,
    "rpn_post_nms_top_n_test": 20,
    "box_batch_size_per_image": 32,
    "box_detections_per_img": 5,
}


def one_instance(height: int = 72, width: int = 88, label: int = 1) -> dict:
    """A torchvision detection target holding one rectangle."""
    masks = torch.zeros(1, height, width, dtype=torch.uint8)
    masks[0, 20:60, 30:80] = 1
    boxes = torch.tensor([[30.0, 20.0, 80.0, 60.0]])
    return {"boxes": boxes, "labels": torch.tensor([label]), "masks": masks}


def write_dataset(root: Path, *, num_classes: int, binary: bool = False, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for split, sizes in (("train", [(20, 24)]), ("val", [(20, 24), (18, 30), (22, 22)])):
        (root / split / "image").mkdir(parents=True)
        (root / split / "label").mkdir(parents=True)
        for index, (height, width) in enumerate(sizes):
            image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
            labels = rng.integers(0, num_classes, (height, width)).astype(np.uint8)
            labels.flat[:num_classes] = np.arange(num_classes)  # every class present
            if binary:
                labels = labels * 255
            Image.fromarray(image).save(root / split / "image" / f"{index}.png")
            Image.fromarray(labels).save(root / split / "label" / f"{index}.png")
    if not binary:
        names = ["sky", "road", "car", "tree"][:num_classes]
        (root / "classes.txt").write_text("\n".join(names) + "\n")
    return root


def randomise_batchnorm(model: torch.nn.Module, seed: int = 3) -> None:
    """BatchNorm running statistics and affine parameters away from the identity."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                size = module.num_features
                module.running_mean.copy_(0.1 * torch.randn(size, generator=generator))
                module.running_var.copy_(torch.rand(size, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(size, generator=generator) + 0.5)
                module.bias.copy_(0.1 * torch.randn(size, generator=generator))


def tiny_config(data: Path, out: Path, **overrides) -> TrainConfig:
    settings = dict(
        data=str(data),
        model="unet",
        model_kwargs={"base_width": 4, "depth": 2},
        epochs=3,
        batch_size=4,
        lr=3e-3,
        crop_size=28,
        scale_range=(0.8, 1.2),
        jitter=0.2,
        workers=0,
        device="cpu",
        out=str(out),
        tensorboard=False,
        progress=False,
    )
    settings.update(overrides)
    return TrainConfig(**settings)


def read_rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))
