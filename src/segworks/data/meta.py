"""What a dataset is about: its task, classes, colours and void value."""

from __future__ import annotations

from dataclasses import dataclass, field

from segworks.errors import SegworksError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def voc_palette(n: int = 256) -> list[tuple[int, int, int]]:
    """The Pascal VOC colour map (bit-interleaved), used when a dataset names no colours."""
    palette = []
    for index in range(n):
        r = g = b = 0
        c = index
        for shift in range(7, -1, -1):
            r |= ((c >> 0) & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette.append((r, g, b))
    return palette


@dataclass
class DatasetMeta:
    """Class names and colours of a dataset.

    `ignore_index` is the value that means "void" in the files on disk (255 for VOC, 11 for
    CamVid). Readers map it to segworks.IGNORE_INDEX (255), so every loaded target uses 255.
    task is "semantic" (softmax over len(class_names)) or "binary" (one sigmoid channel;
    class_names are [background, foreground]).
    """

    class_names: list[str]
    palette: list[tuple[int, int, int]] = field(default_factory=list)
    ignore_index: int = 255
    task: str = "semantic"

    def __post_init__(self) -> None:
        if self.task not in ("semantic", "binary"):
            raise SegworksError(f"task must be 'semantic' or 'binary', got {self.task!r}")
        if not self.palette:
            self.palette = voc_palette(len(self.class_names))
        self.palette = [tuple(int(v) for v in colour) for colour in self.palette]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def model_channels(self) -> int:
        """Output channels of a model for this task: 1 for binary, else the class count."""
        return 1 if self.task == "binary" else self.num_classes

    def to_dict(self) -> dict:
        return {
            "class_names": list(self.class_names),
            "palette": [list(c) for c in self.palette],
            "ignore_index": self.ignore_index,
            "task": self.task,
        }

    @classmethod
    def from_dict(cls, data: dict) -> DatasetMeta:
        return cls(
            class_names=list(data["class_names"]),
            palette=[tuple(c) for c in data.get("palette", [])],
            ignore_index=int(data.get("ignore_index", 255)),
            task=data.get("task", "semantic"),
        )
