"""`segworks predict` on an instance checkpoint: run Mask R-CNN on each input and hand the
detections to `InstanceWriter` (segworks.inference.instances, shared with the ONNX path)."""

from __future__ import annotations

import glob
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from segworks.devices import device_from_args
from segworks.errors import DataError
from segworks.inference.instances import InstanceWriter, keep_confident
from segworks.suffixes import IMAGE_SUFFIXES


def expand_inputs(inputs: list[str]) -> list[Path]:
    """Files, folders (their images) and glob patterns, in order, without duplicates."""
    paths: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            paths += sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            paths.append(path)
        else:
            matches = sorted(Path(p) for p in glob.glob(item))
            if not matches:
                raise DataError(path, "no such file, folder or matching glob")
            paths += matches
    return list(dict.fromkeys(paths))


def run_predict(args) -> int:
    """Draw and save the detections of each input (see segworks.inference.instances)."""
    from segworks.engine.instance import load_instance_checkpoint

    model, meta = load_instance_checkpoint(args.checkpoint)
    device = device_from_args(args)
    model.to(device)
    threshold = getattr(args, "score_threshold", None)
    threshold = 0.5 if threshold is None else float(threshold)
    writer = InstanceWriter(
        Path(getattr(args, "out", None) or "predictions"),
        meta,
        contour=bool(getattr(args, "contour", False)),
        coco_json=getattr(args, "coco_json", None),
    )
    for path in tqdm(expand_inputs(list(args.inputs)), desc="predict"):
        try:
            image = Image.open(path).convert("RGB")
        except OSError as error:
            raise DataError(path, f"cannot read image ({error})") from error
        tensor = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float() / 255
        with torch.no_grad():
            output = model([tensor.to(device)])[0]
        detections = {key: value.cpu().numpy() for key, value in output.items()}
        writer.write(path, image, keep_confident(detections, threshold))
    writer.finish()
    return 0
