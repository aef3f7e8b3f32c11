"""From RGB images to labels: normalisation, optional resize, whole-image or tiled inference,
TTA, and the task's decision rule (argmax, or sigmoid > threshold for binary models).

`predict_logits` is the tensor-level entry point. `Predictor` works on PIL images / uint8 arrays
at their original size and is what `segworks eval` and `segworks predict` use. In slide mode
without a resize it never holds the image's float logits: each finished block of the sliding
window (about one stride square) is reduced to labels (and, for binary models, probabilities) and
written into the output at once.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from segworks.data.meta import IMAGENET_MEAN, IMAGENET_STD, DatasetMeta
from segworks.data.transforms import long_side_size
from segworks.errors import DataError, SegworksError
from segworks.inference.sliding_window import iter_blocks, resolve_stride, slide_logits
from segworks.inference.tta import Forward, check_scales, model_forward, tta_forward

ImageInput = Image.Image | np.ndarray | str | Path  # an RGB image, or the path of one

MODES = ("whole", "slide")

__all__ = [
    "MODES",
    "InferenceOptions",
    "Prediction",
    "Predictor",
    "options_from_checkpoint",
    "predict_logits",
]


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    image: Tensor,
    *,
    mode: str = "whole",
    tile: Sequence[int] | None = None,
    overlap: float = 0.5,
    stride: Sequence[int] | int | None = None,
    margin: int = 0,
    batch_size: int = 4,
    gaussian: bool = True,
    tta_flip: bool = False,
    tta_scales: Sequence[float] = (1.0,),
) -> Tensor:
    """Logits ``(N, K, H, W)`` (float32) of a normalised batch ``(N, 3, H, W)``, TTA-averaged.

    ``mode="whole"`` runs the model once per view on the full image, on the model's device.
    ``mode="slide"`` blends ``tile``-sized windows (`segworks.inference.sliding_window`; tiles
    step by ``stride`` or ``tile * (1 - overlap)``) into a CPU buffer, one image at a time; TTA
    is then applied per tile. For a binary model (K = 1) the averaged logit goes through a sigmoid
    afterwards: average logits, never probabilities.
    """
    forward = tta_forward(model_forward(model), flip=tta_flip, scales=tta_scales)
    device = _model_device(model, image.device)
    if mode == "whole":
        return forward(image.to(device)).float()
    if mode != "slide":
        raise SegworksError(f"mode must be one of {MODES}, got {mode!r}")
    if tile is None:
        raise SegworksError("slide mode needs a tile size (H, W)")
    tile = _pair(tile, "tile")
    step = resolve_stride(tile, overlap=overlap, stride=stride)
    slides = [
        slide_logits(
            forward,
            single[None],
            tile=tile,
            stride=step,
            margin=margin,
            gaussian=gaussian,
            batch_size=batch_size,
            prepare=lambda tiles: tiles.to(device),
        )
        for single in image
    ]
    return torch.cat(slides)


@dataclass
class InferenceOptions:
    """How to run a model on an image; the CLI flags of eval and predict map onto these."""

    mode: str = "whole"  # "whole" | "slide"
    tile: tuple[int, int] | None = None  # slide mode: (H, W) of a window
    overlap: float = 0.5  # fraction of a tile shared with its neighbour
    margin: int = 0  # pixels at inner tile edges given no weight (receptive-field radius)
    tile_batch: int = 4  # windows per forward pass
    gaussian: bool = True  # Gaussian (True) or uniform (False) blending of windows
    tta_flip: bool = False
    tta_scales: tuple[float, ...] = (1.0,)
    size: tuple[int, int] | None = None  # resize input to (H, W); logits resized back
    long_side: int | None = None  # resize input to this longer side (aspect kept), unless size
    threshold: float = 0.5  # binary: foreground where sigmoid(logit) > threshold

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise SegworksError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.mode == "slide" and self.tile is None:
            raise SegworksError("slide mode needs a tile size (--tile H W)")
        if self.tile is not None:
            self.tile = _pair(self.tile, "tile")
            resolve_stride(self.tile, overlap=self.overlap)  # a bad overlap fails before any work
        if self.size is not None:
            self.size = _pair(self.size, "size")
        if self.long_side is not None and self.long_side < 1:
            raise SegworksError(
                f"long_side must be a positive number of pixels, got {self.long_side}"
            )
        if not 0 <= self.threshold <= 1:
            raise SegworksError(f"threshold must be in [0, 1], got {self.threshold}")
        self.tta_scales = check_scales(self.tta_scales)


def options_from_checkpoint(
    checkpoint: dict,
    *,
    mode: str | None = None,
    tile: Sequence[int] | int | None = None,
    long_side: int | None = None,
    threshold: float | None = None,
    tta_flip: bool | None = None,
    tta_scales: Sequence[float] | None = None,
    **fields,
) -> InferenceOptions:
    """InferenceOptions as the checkpoint's training run implies, with the given values winning.

    The one place that reads inference settings from a checkpoint, used by `segworks predict`,
    `segworks eval` and `Predictor.from_checkpoint` alike: `long_side` defaults to the run's
    (0 turns it off), slide mode without a `tile` uses the training crop, `threshold`
    (binary) defaults to the checkpoint's meta, else 0.5, and `tta_flip` / `tta_scales` to the
    run's (a recipe may store flip TTA; ``tta_flip=False, tta_scales=(1,)`` is plain). Other
    `fields` are InferenceOptions'.
    """
    config = checkpoint.get("config") or {}
    meta = checkpoint.get("meta") or {}
    mode = mode or ("slide" if tile else "whole")
    if mode == "slide" and tile is None:
        tile = config.get("crop_size")
        if tile is None:
            raise SegworksError("slide mode needs a tile size (the checkpoint names no crop size)")
    if long_side is None:
        long_side = config.get("long_side")
    if threshold is None:
        threshold = meta.get("threshold", 0.5)
    stored_flip, stored_scales = stored_tta(checkpoint)
    return InferenceOptions(
        mode=mode,
        tile=tile,
        long_side=long_side or None,
        threshold=threshold,
        tta_flip=stored_flip if tta_flip is None else tta_flip,
        tta_scales=stored_scales if tta_scales is None else tta_scales,
        **fields,
    )


def stored_tta(checkpoint: dict) -> tuple[bool, tuple[float, ...]]:
    """(flip, scales) of the TTA the checkpoint's run stored (`TrainConfig.tta_flip` /
    `tta_scales`); (False, (1.0,)) is none."""
    config = checkpoint.get("config") or {}
    return bool(config.get("tta_flip", False)), tuple(config.get("tta_scales") or (1.0,))


@dataclass
class Prediction:
    """Labels ``(H, W)`` (uint8, int32 above 256 classes) at the image's original size; for a
    binary model also ``prob``: float32 foreground probabilities, and labels are 0/1."""

    labels: np.ndarray
    prob: np.ndarray | None = None


class Predictor:
    """Runs a semantic or binary model on RGB images (PIL, uint8 ``(H, W, 3)`` arrays or image
    file paths); `from_checkpoint` sets one up exactly as `segworks predict` does."""

    def __init__(
        self,
        model: nn.Module,
        *,
        task: str = "semantic",
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        device: torch.device | str = "cpu",
        options: InferenceOptions | None = None,
        channel_order: str = "rgb",
        meta: DatasetMeta | None = None,
    ):
        """`mean` and `std` are on the 0..1 scale, in the model's `channel_order`: "rgb", or
        "bgr" for models imported from Caffe/Chainer/Detectron (their 0..255 mean subtraction
        is mean = m / 255, std = 1 / 255)."""
        if task not in ("semantic", "binary"):
            raise SegworksError(f"Predictor handles 'semantic' or 'binary' models, got {task!r}")
        if channel_order not in ("rgb", "bgr"):
            raise SegworksError(f"channel_order must be 'rgb' or 'bgr', got {channel_order!r}")
        self.bgr = channel_order == "bgr"
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.task = task
        self.options = options or InferenceOptions()
        self.meta = meta  # class names and palette, when built from a checkpoint
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        opts = self.options
        self.forward: Forward = tta_forward(
            model_forward(self.model), flip=opts.tta_flip, scales=opts.tta_scales
        )

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: str | Path | dict,
        *,
        device: torch.device | str = "cpu",
        options: InferenceOptions | None = None,
        **option_fields,
    ) -> Predictor:
        """A Predictor set up as `segworks predict` sets it up for the same checkpoint: the
        model, task, normalisation, class names and palette, and the training run's input scale
        (`long_side`; pass ``long_side=0`` for the original size). `option_fields` are
        InferenceOptions fields (``mode="slide"``, ``tta_flip=True``, ``threshold=0.3`` ...);
        `options` replaces them all."""
        from segworks.checkpoint import load_checkpoint
        from segworks.models import model_from_checkpoint

        path = checkpoint if isinstance(checkpoint, (str, Path)) else "<checkpoint>"
        if not isinstance(checkpoint, dict):
            checkpoint = load_checkpoint(checkpoint)
        meta = checkpoint.get("meta")
        if not isinstance(meta, dict) or "class_names" not in meta:
            raise DataError(path, "not a segworks checkpoint: no meta with class_names")
        if meta.get("task", "semantic") not in ("semantic", "binary"):
            raise DataError(
                path, f"a {meta.get('task')} checkpoint: Predictor runs semantic or binary ones"
            )
        return cls(
            model_from_checkpoint(checkpoint, path),
            task=meta.get("task", "semantic"),
            mean=meta.get("mean", IMAGENET_MEAN),
            std=meta.get("std", IMAGENET_STD),
            device=device,
            options=options or options_from_checkpoint(checkpoint, **option_fields),
            channel_order=meta.get("channel_order", "rgb"),
            meta=DatasetMeta.from_dict(meta),
        )

    # -- public ---------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, image: ImageInput) -> Prediction:
        """The prediction of one image at its original size."""
        return self.predict_batch([image])[0]

    @torch.no_grad()
    def predict_batch(self, images: Sequence[ImageInput]) -> list[Prediction]:
        """Predictions of several images; whole mode runs same-size inputs as one batch."""
        arrays = [_as_uint8(image) for image in images]
        if self.options.mode == "slide" and self._input_size(arrays[0]) is None:
            return [self._predict_streaming(array) for array in arrays]
        sizes = {array.shape[:2] for array in arrays}
        if self.options.mode == "whole" and (len(sizes) == 1 or self.options.size is not None):
            logits = self._logits_batch(arrays)
            return [self._decide(item[None]) for item in logits]
        return [self._decide(self._logits_batch([array])[0][None]) for array in arrays]

    @torch.no_grad()
    def probabilities(self, image: ImageInput) -> Tensor:
        """Class probabilities ``(K, H, W)`` at the image's original size: softmax of the
        logits, or for a binary model the foreground probability ``(1, H, W)``."""
        logits = self.logits(image)
        return torch.sigmoid(logits) if self.task == "binary" else logits.softmax(0)

    @torch.no_grad()
    def logits(self, image: ImageInput) -> Tensor:
        """Float32 logits ``(K, H, W)`` at the image's original size (on the CPU in slide mode)."""
        return self._logits_batch([_as_uint8(image)])[0]

    # -- internals ------------------------------------------------------------------------
    def _prepare(self, batch: Tensor) -> Tensor:
        """uint8 ``(N, 3, h, w)`` -> normalised float on the model's device."""
        batch = batch.to(device=self.device, dtype=torch.float32, copy=True)  # the only copy
        if self.bgr:
            batch = batch.flip(1)
        return batch.div_(255).sub_(self.mean).div_(self.std)

    def _logits_batch(self, arrays: list[np.ndarray]) -> list[Tensor]:
        """Logits of each array at its original size; with `size`, all run at that size."""
        opts = self.options
        originals = [array.shape[:2] for array in arrays]
        sizes = [self._input_size(array) for array in arrays]
        arrays = [a if size is None else _resize_uint8(a, size) for a, size in zip(arrays, sizes)]
        batch = torch.stack([_chw_view(array) for array in arrays])
        if opts.mode == "whole":
            logits = self.forward(self._prepare(batch)).float()
        else:
            logits = torch.cat([self._slide(single[None]) for single in batch])
        return [
            _resize_logits(item[None], size)[0] if item.shape[-2:] != size else item
            for item, size in zip(logits, originals)
        ]

    def _input_size(self, array: np.ndarray) -> tuple[int, int] | None:
        """The (H, W) the model sees for this array, or None for its own size."""
        if self.options.size is not None:
            return self.options.size
        if self.options.long_side is not None:
            return long_side_size(*array.shape[:2], self.options.long_side)
        return None

    def _slide(self, image: Tensor) -> Tensor:
        return slide_logits(self.forward, image, **self._slide_kwargs())

    def _slide_kwargs(self) -> dict:
        opts = self.options
        return {
            "tile": opts.tile,
            "stride": resolve_stride(opts.tile, overlap=opts.overlap),
            "margin": opts.margin,
            "gaussian": opts.gaussian,
            "batch_size": opts.tile_batch,
            "prepare": self._prepare,
        }

    def _predict_streaming(self, array: np.ndarray) -> Prediction:
        """Slide mode at the original size: each finished block becomes labels at once."""
        image = _chw_view(array)[None]
        height, width = array.shape[:2]
        labels: np.ndarray | None = None
        prob = np.empty((height, width), np.float32) if self.task == "binary" else None
        for y0, y1, x0, x1, block in iter_blocks(self.forward, image, **self._slide_kwargs()):
            part = self._decide(block[None])
            if labels is None:
                labels = np.empty((height, width), part.labels.dtype)
            labels[y0:y1, x0:x1] = part.labels
            if prob is not None:
                prob[y0:y1, x0:x1] = part.prob
        return Prediction(labels, prob)

    def _decide(self, logits: Tensor) -> Prediction:
        """Labels (and binary probabilities) of ``(1, K, h, w)`` logits, as numpy."""
        channels = logits.shape[1]
        if self.task == "binary":
            if channels != 1:
                raise SegworksError(f"a binary model must output 1 channel, got {channels}")
            prob = torch.sigmoid(logits[0, 0].float())
            labels = (prob > self.options.threshold).to(torch.uint8)
            return Prediction(labels.cpu().numpy(), prob.cpu().numpy())
        dtype = torch.uint8 if channels <= 256 else torch.int32
        return Prediction(logits[0].argmax(0).to(dtype).cpu().numpy())


def _model_device(model: nn.Module, fallback: torch.device) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else fallback


def _pair(value: Sequence[int] | int, name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(int(v) for v in value)
    if len(pair) == 1:
        pair = (pair[0], pair[0])
    if len(pair) != 2 or min(pair) < 1:
        raise SegworksError(f"{name} must be one or two positive ints (H W), got {value}")
    return pair


def _as_uint8(image: ImageInput) -> np.ndarray:
    if isinstance(image, (str, Path)):
        from segworks.data.reading import open_image

        image = open_image(Path(image))
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise SegworksError(
            f"expected an RGB image as uint8 (H, W, 3), got {image.dtype} {image.shape}"
        )
    return image


def _chw_view(array: np.ndarray) -> Tensor:
    """A uint8 ``(3, H, W)`` tensor viewing the ``(H, W, 3)`` array, no copy. Arrays from PIL
    are read-only; nothing here writes to them, so torch's warning about that is silenced."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array).permute(2, 0, 1)


def _resize_uint8(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize to (H, W) with PIL, as the training transforms do."""
    if array.shape[:2] == size:
        return array
    return np.asarray(Image.fromarray(array).resize((size[1], size[0]), Image.BILINEAR))


def _resize_logits(logits: Tensor, size: tuple[int, int]) -> Tensor:
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
