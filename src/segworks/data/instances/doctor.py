"""check-data for instance sources: a report and one line per problem."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from segworks.data.instances.read import FORMAT_NAMES, detect_format, read_instances
from segworks.data.instances.records import (
    IGNORE_LABEL,
)


def check_instances(source: Path, *, images: Path | None = None) -> tuple[str, list[str]]:
    """Inspect an instance source of any format: (report text, list of problems).

    Reports images, instances per class, crowd instances and empty images; problems are
    degenerate polygons, boxes/polygons outside images, unknown category ids or labels and
    missing image files (one line each).
    """
    fmt, path = detect_format(Path(source))
    instance_set = read_instances(path, images=images, fmt=fmt, strict=False)
    per_class = Counter(i.label for r in instance_set.records for i in r.instances)
    ignore = per_class.pop(IGNORE_LABEL, 0)
    crowd = sum(i.iscrowd for r in instance_set.records for i in r.instances) - ignore
    empty = [r.image.name for r in instance_set.records if not r.instances]
    lines = [
        f"instance source: {instance_set.source} ({FORMAT_NAMES[fmt]})",
        f"images: {len(instance_set.records)}, instances: {sum(per_class.values())}"
        f" (crowd {crowd}), ignore regions: {ignore}, empty images: {len(empty)}",
        "instances per class:",
    ]
    for label, name in enumerate(instance_set.class_names, start=1):
        lines.append(f"  {label:3d} {name}: {per_class.get(label, 0)}")
    if empty:
        lines.append("empty images: " + ", ".join(empty[:20]) + (" ..." if len(empty) > 20 else ""))
    lines.append(f"problems: {len(instance_set.problems)}")
    lines += [f"  {p}" for p in instance_set.problems]
    return "\n".join(lines), list(instance_set.problems)
