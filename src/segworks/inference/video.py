"""`<stem>_overlay.mp4` of a video input: every frame with its prediction blended in.

Needs OpenCV (`pip install opencv-python-headless`, or `segworks[video]`), imported on use.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from segworks.errors import DataError, SegworksError
from segworks.inference.inputs import InputItem
from segworks.inference.writer import Writer

__all__ = ["predict_video"]


def predict_video(predictor, item: InputItem, writer: Writer, *, batch_size: int) -> Path:
    """Write ``<stem>_overlay.mp4`` into the writer's folder (no legend, so every frame keeps
    the video's size); frames go through `predictor.predict_batch` `batch_size` at a time."""
    cv2 = _import_cv2()
    capture = cv2.VideoCapture(str(item.path))
    if not capture.isOpened():
        raise DataError(item.path, "cannot open the video (unknown codec or not a video)")
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    out = writer.out_dir / item.out_stem
    out = out.with_name(f"{out.name}_overlay.mp4")
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.stem}.partial.mp4")
    video = None
    try:
        for frames in _frame_batches(cv2, capture, batch_size, item.path, total):
            video = video or _open_writer(cv2, partial, fps, frames[0].size)
            for frame, prediction in zip(frames, predictor.predict_batch(frames)):
                blended = writer.overlay(frame, prediction, legend=False)
                video.write(cv2.cvtColor(np.asarray(blended), cv2.COLOR_RGB2BGR))
        if video is None:
            raise DataError(item.path, "the video has no readable frame")
        video.release()
        os.replace(partial, out)
    finally:
        capture.release()
        if video is not None:
            video.release()
        partial.unlink(missing_ok=True)
    return out


def _import_cv2():
    try:
        import cv2
    except ImportError:
        cv2 = None
    if cv2 is None:
        raise SegworksError(
            "video input needs OpenCV, which is not installed: "
            "pip install opencv-python-headless (or segworks[video])"
        )
    return cv2


def _frame_batches(cv2, capture, batch_size: int, path: Path, total: int | None):
    batch = []
    with tqdm(total=total, desc=f"video {path.name}", unit="frame") as bar:
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            batch.append(Image.fromarray(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)))
            bar.update(1)
            if len(batch) == batch_size:
                yield batch
                batch = []
    if batch:
        yield batch


def _open_writer(cv2, path: Path, fps: float, size: tuple[int, int]):
    video = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    if not video.isOpened():
        raise DataError(path, "OpenCV cannot write an mp4v video here")
    return video
