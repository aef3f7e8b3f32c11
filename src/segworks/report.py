"""Self-contained HTML evaluation report: one file, no network, viewable in any browser.

write_report(out_dir, results, *, class_names, palette, samples, provenance=None) -> Path

    out_dir      folder to write into (created); the report is ``out_dir / "report.html"``,
                 written atomically, and that path is returned.
    results      the metrics dict of segworks.metrics: pixel_accuracy, mean_accuracy, miou,
                 fwiou, mean_dice (floats in [0, 1], NaN allowed), iou and dice (per-class
                 lists, NaN for a class absent from ground truth and prediction), and
                 "confusion_matrix" as a nested list ``[gt][pred]`` of pixel counts. Missing
                 keys are left out of the page; other top-level numbers are listed after them.
    class_names  one name per class (index = label value).
    palette      one (r, g, b) colour per class.
    samples      per-image dicts for the worst and best images, in any order:
                 {"name": str, "image": PIL RGB image, "gt": np.int64 (H, W) with 255 = ignore,
                  "pred": np.int64 (H, W), "miou": float}. They are sorted by "miou"; the
                 lower half (rounded up) is shown as "worst", the rest as "best". An optional
                 "group": "worst" | "best" key overrides that split.
    provenance   what produced the numbers, as ordered label -> text pairs (checkpoint, data,
                 split, inference settings, versions, date); shown first, in a table.

The page holds the provenance table, a summary table, a per-class IoU bar chart (inline SVG, one ``rect.bar`` per class
with a finite IoU), a confusion-matrix heat map (inline SVG, rows normalised to the ground truth) followed by a
table of its pixel counts (one ``td.count`` per entry, shaded like the heat map) and, per sample, a panel of image / ground truth / prediction / error map (wrong pixels red) with
a legend of the classes present. Images are base64 PNG data URIs; there is no script, external
stylesheet or font.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from segworks import IGNORE_INDEX
from segworks.fileio import save_text
from segworks.visualize import colorize, error_map

__all__ = ["write_report", "render_report", "confusion_table"]

SUMMARY_KEYS = (
    ("miou", "mIoU"),
    ("pixel_accuracy", "Pixel accuracy"),
    ("mean_accuracy", "Mean accuracy"),
    ("fwiou", "Frequency-weighted IoU"),
    ("mean_dice", "Mean Dice"),
)
PER_CLASS_KEYS = ("iou", "dice", "confusion_matrix")
PANEL_MAX_SIDE = 384

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .5em 0; }
th, td { border: 1px solid #ddd; padding: .25em .6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.swatch { display: inline-block; width: .9em; height: .9em; border: 1px solid #444;
          vertical-align: middle; margin-right: .3em; }
.legend span.item { margin-right: 1em; white-space: nowrap; }
.panel { margin: 1em 0 2em; }
.panel figure { display: inline-block; margin: 0 .5em .5em 0; vertical-align: top; }
.panel figcaption { font-size: .85em; color: #555; }
.panel img { image-rendering: pixelated; width: 260px; height: auto; border: 1px solid #ccc; }
table.provenance th { text-align: left; font-weight: 600; }
table.provenance td { text-align: left; font-family: ui-monospace, monospace; }
td.count { font-variant-numeric: tabular-nums; }
svg text { font-family: system-ui, sans-serif; }
"""


def write_report(
    out_dir: str | Path,
    results: dict[str, Any],
    *,
    class_names: list[str],
    palette: Sequence[Sequence[int]],
    samples: list[dict[str, Any]],
    provenance: dict[str, Any] | None = None,
) -> Path:
    """Write ``out_dir/report.html`` (see the module docstring) and return its path."""
    page = render_report(
        results, class_names=class_names, palette=palette, samples=samples, provenance=provenance
    )
    path = Path(out_dir) / "report.html"
    save_text(page, path)
    return path


def render_report(
    results: dict[str, Any],
    *,
    class_names: list[str],
    palette: Sequence[Sequence[int]],
    samples: list[dict[str, Any]],
    provenance: dict[str, Any] | None = None,
) -> str:
    """The report as one HTML string."""
    palette = _check_palette(palette, len(class_names))
    body = [
        "<h1>segworks evaluation report</h1>",
        _provenance_section(provenance or {}),
        _summary_section(results),
        _per_class_section(results, class_names, palette),
        _confusion_section(results, class_names),
    ]
    worst, best = _split_samples(samples)
    body.append(_samples_section("worst", "Worst images", worst, class_names, palette))
    body.append(_samples_section("best", "Best images", best, class_names, palette))
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        "<title>segworks evaluation report</title>"
        f"<style>{CSS}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


# ---------------------------------------------------------------------------------------------
# sections


def _provenance_section(provenance: dict[str, Any]) -> str:
    if not provenance:
        return ""
    rows = "".join(
        f"<tr><th>{html.escape(str(label))}</th><td>{html.escape(str(value))}</td></tr>"
        for label, value in provenance.items()
    )
    return (
        '<section id="provenance"><h2>Produced by</h2>'
        f'<table class="provenance">{rows}</table></section>'
    )


def _summary_section(results: dict[str, Any]) -> str:
    rows = [
        (f"{label} (%)", _percent(results[key])) for key, label in SUMMARY_KEYS if key in results
    ]
    known = {key for key, _ in SUMMARY_KEYS} | set(PER_CLASS_KEYS)
    rows += [
        (key, _number(value))
        for key, value in results.items()
        if key not in known and isinstance(value, int | float) and not isinstance(value, bool)
    ]
    cells = "".join(
        f'<tr><td>{html.escape(str(label))}</td><td class="value">{value}</td></tr>'
        for label, value in rows
    )
    return (
        '<section id="summary"><h2>Summary</h2>'
        f'<table class="metrics"><tr><th>metric</th><th>value</th></tr>{cells}</table></section>'
    )


def _per_class_section(
    results: dict[str, Any], class_names: list[str], palette: list[tuple[int, int, int]]
) -> str:
    if "iou" not in results:
        return ""
    iou = _per_class(results["iou"], class_names, "iou")
    dice = _per_class(results["dice"], class_names, "dice") if "dice" in results else None
    rows = []
    for index, name in enumerate(class_names):
        dice_cell = f"<td>{_percent(dice[index])}</td>" if dice is not None else ""
        rows.append(
            f"<tr><td>{_swatch(palette[index])}{html.escape(name)}</td>"
            f"<td>{_percent(iou[index])}</td>{dice_cell}</tr>"
        )
    dice_head = "<th>Dice (%)</th>" if dice is not None else ""
    table = (
        f'<table class="per-class"><tr><th>class</th><th>IoU (%)</th>{dice_head}</tr>'
        + "".join(rows)
        + "</table>"
    )
    return (
        '<section id="per-class"><h2>Per-class IoU</h2>'
        + iou_bar_chart(iou, class_names, palette)
        + table
        + "</section>"
    )


def _confusion_section(results: dict[str, Any], class_names: list[str]) -> str:
    if "confusion_matrix" not in results:
        return ""
    matrix = np.asarray(results["confusion_matrix"], dtype=np.float64)
    k = len(class_names)
    if matrix.shape != (k, k):
        raise ValueError(f"confusion_matrix has shape {matrix.shape}; expected ({k}, {k})")
    return (
        '<section id="confusion"><h2>Confusion matrix</h2>'
        "<p>Rows: ground truth; columns: prediction; colour: share of the row's pixels.</p>"
        + confusion_heatmap(matrix, class_names)
        + "<p>Pixel counts (rows: ground truth; columns: prediction):</p>"
        + confusion_table(matrix, class_names)
        + "</section>"
    )


def _samples_section(
    section_id: str,
    title: str,
    samples: list[dict[str, Any]],
    class_names: list[str],
    palette: list[tuple[int, int, int]],
) -> str:
    if not samples:
        return ""
    panels = "".join(_sample_panel(sample, class_names, palette) for sample in samples)
    return f'<section id="{section_id}"><h2>{title}</h2>{panels}</section>'


def _sample_panel(
    sample: dict[str, Any], class_names: list[str], palette: list[tuple[int, int, int]]
) -> str:
    name = str(sample["name"])
    image = sample["image"].convert("RGB")
    gt = np.asarray(sample["gt"], dtype=np.int64)
    pred = np.asarray(sample["pred"], dtype=np.int64)
    if gt.shape != pred.shape or gt.shape != (image.height, image.width):
        raise ValueError(
            f"sample {name!r}: image {image.width}x{image.height}, gt {gt.shape} and pred "
            f"{pred.shape} must have the same size"
        )
    views = [
        ("image", image),
        ("ground truth", _pil(colorize(gt, palette))),
        ("prediction", _pil(colorize(pred, palette))),
        ("errors (red)", _pil(error_map(image, gt, pred, ignore_index=IGNORE_INDEX))),
    ]
    figures = "".join(
        f'<figure><img alt="{html.escape(name)}: {caption}" src="{_data_uri(_shrink(view))}">'
        f"<figcaption>{caption}</figcaption></figure>"
        for caption, view in views
    )
    present = sorted({int(v) for v in np.unique(np.concatenate([gt.ravel(), pred.ravel()]))})
    legend = _legend([c for c in present if 0 <= c < len(class_names)], class_names, palette)
    return (
        f'<div class="panel"><h3>{html.escape(name)} &mdash; mIoU {_percent(sample["miou"])} %'
        f"</h3>{figures}{legend}</div>"
    )


# ---------------------------------------------------------------------------------------------
# charts


def iou_bar_chart(
    iou: list[float], class_names: list[str], palette: list[tuple[int, int, int]]
) -> str:
    """Horizontal bar chart, one ``rect.bar`` per class with a finite IoU; NaN reads "n/a"."""
    label_width, bar_width, row, top = 160, 420, 22, 24
    height = top + row * len(class_names) + 8
    parts = [
        f'<svg id="iou-chart" xmlns="http://www.w3.org/2000/svg" width="{label_width + bar_width + 90}"'
        f' height="{height}" role="img" aria-label="per-class IoU">'
    ]
    for tick in (0, 25, 50, 75, 100):
        x = label_width + bar_width * tick / 100
        parts.append(
            f'<line x1="{x:.1f}" y1="{top - 4}" x2="{x:.1f}" y2="{height - 8}" stroke="#ddd"/>'
            f'<text x="{x:.1f}" y="{top - 8}" font-size="11" text-anchor="middle">{tick}%</text>'
        )
    for index, (name, value) in enumerate(zip(class_names, iou)):
        y = top + index * row
        parts.append(
            f'<text x="{label_width - 6}" y="{y + 15}" font-size="12" text-anchor="end">'
            f"{html.escape(name)}</text>"
        )
        if math.isnan(value):
            parts.append(
                f'<text x="{label_width + 4}" y="{y + 15}" font-size="12" fill="#888">n/a</text>'
            )
            continue
        width = max(bar_width * min(max(value, 0.0), 1.0), 0.5)
        r, g, b = palette[index]
        parts.append(
            f'<rect class="bar" data-class="{index}" x="{label_width}" y="{y + 3}" '
            f'width="{width:.1f}" height="{row - 6}" fill="rgb({r},{g},{b})" stroke="#333" '
            f'stroke-width="0.5"><title>{html.escape(name)}: {_percent(value)} %</title></rect>'
            f'<text x="{label_width + width + 6:.1f}" y="{y + 15}" font-size="12">'
            f"{_percent(value)}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def confusion_heatmap(matrix: np.ndarray, class_names: list[str]) -> str:
    """Row-normalised heat map; only non-zero cells are drawn, each with a hover title."""
    k = len(class_names)
    cell = max(6, min(36, 720 // max(k, 1)))
    margin = 150
    size = margin + cell * k + 10
    rows = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, rows, out=np.zeros_like(matrix), where=rows > 0)
    font = max(6, min(12, cell - 2))
    parts = [
        f'<svg id="confusion-matrix" xmlns="http://www.w3.org/2000/svg" width="{size}" '
        f'height="{size}" role="img" aria-label="confusion matrix">',
        f'<rect x="{margin}" y="{margin}" width="{cell * k}" height="{cell * k}" fill="#fff" '
        'stroke="#999"/>',
    ]
    for index, name in enumerate(class_names):
        centre = margin + index * cell + cell / 2
        label = html.escape(name)
        parts.append(
            f'<text x="{margin - 4}" y="{centre + font / 3:.1f}" font-size="{font}" '
            f'text-anchor="end">{label}</text>'
            f'<text transform="translate({centre + font / 3:.1f},{margin - 4}) rotate(-90)" '
            f'font-size="{font}">{label}</text>'
        )
    for g, p in zip(*np.nonzero(matrix)):
        value = share[g, p]
        shade = int(round(255 * (1 - value)))
        parts.append(
            f'<rect class="cell" x="{margin + p * cell}" y="{margin + g * cell}" width="{cell}" '
            f'height="{cell}" fill="rgb({shade},{shade},255)"><title>'
            f"{html.escape(class_names[g])} predicted as {html.escape(class_names[p])}: "
            f"{int(matrix[g, p])} px ({100 * value:.1f} % of the row)</title></rect>"
        )
    parts.append("</svg>")
    return "".join(parts)


def confusion_table(matrix: np.ndarray, class_names: list[str]) -> str:
    """The confusion matrix as text: one ``td.count`` per entry, shaded by its share of the row."""
    rows = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, rows, out=np.zeros_like(matrix), where=rows > 0)
    names = [html.escape(name) for name in class_names]
    head = "<tr><th>gt \\ pred</th>" + "".join(f"<th>{n}</th>" for n in names) + "</tr>"
    body = []
    for g, name in enumerate(names):
        cells = "".join(
            f'<td class="count" data-gt="{g}" data-pred="{p}" style="background: '
            f'{_shade(share[g, p])}">{int(matrix[g, p])}</td>'
            for p in range(len(names))
        )
        body.append(f"<tr><th>{name}</th>{cells}</tr>")
    return f'<table class="confusion-counts">{head}{"".join(body)}</table>'


def _shade(share: float) -> str:
    """White to light blue: black text stays readable on a full row."""
    level = int(round(255 - 135 * share))
    return f"rgb({level},{level},255)"


# ---------------------------------------------------------------------------------------------
# helpers


def _split_samples(
    samples: list[dict[str, Any]],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    ordered = sorted(samples, key=lambda s: _sort_key(s["miou"]))
    if any("group" in s for s in ordered):
        for sample in ordered:
            if sample.get("group") not in ("worst", "best"):
                raise ValueError(
                    f"sample {sample.get('name')!r}: group must be 'worst' or 'best', "
                    f"got {sample.get('group')!r}"
                )
        return (
            [s for s in ordered if s["group"] == "worst"],
            [s for s in ordered if s["group"] == "best"][::-1],
        )
    half = (len(ordered) + 1) // 2
    return ordered[:half], ordered[half:][::-1]


def _sort_key(value: float) -> float:
    value = float(value)
    return -math.inf if math.isnan(value) else value


def _per_class(values: Sequence[float], class_names: list[str], key: str) -> list[float]:
    values = [float(v) for v in values]
    if len(values) != len(class_names):
        raise ValueError(
            f"results[{key!r}] has {len(values)} values for {len(class_names)} classes"
        )
    return values


def _check_palette(palette: Sequence[Sequence[int]], k: int) -> list[tuple[int, int, int]]:
    colours = [tuple(int(c) for c in colour) for colour in palette]
    if len(colours) < k or any(len(c) != 3 for c in colours):
        raise ValueError(f"palette must hold {k} (r, g, b) colours, got {len(colours)}")
    return colours


def _legend(classes: list[int], class_names: list[str], palette: list[tuple[int, int, int]]) -> str:
    items = "".join(
        f'<span class="item">{_swatch(palette[c])}{html.escape(class_names[c])}</span>'
        for c in classes
    )
    return f'<div class="legend">{items}</div>'


def _swatch(colour: tuple[int, int, int]) -> str:
    r, g, b = colour
    return f'<span class="swatch" style="background: rgb({r},{g},{b})"></span>'


def _pil(view: Any) -> Image.Image:
    if isinstance(view, Image.Image):
        return view.convert("RGB")
    return Image.fromarray(np.asarray(view, dtype=np.uint8)).convert("RGB")


def _shrink(image: Image.Image) -> Image.Image:
    """Label views must stay crisp, so shrink with NEAREST; large panels bloat the file."""
    longest = max(image.size)
    if longest <= PANEL_MAX_SIDE:
        return image
    scale = PANEL_MAX_SIDE / longest
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.NEAREST)


def _data_uri(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _number(value: float) -> str:
    value = float(value)
    if math.isnan(value):
        return "n/a"
    if value.is_integer() and abs(value) > 1:
        return str(int(value))
    return f"{value:.4f}"


def _percent(value: float) -> str:
    value = float(value)
    return "n/a" if math.isnan(value) else f"{100 * value:.2f}"
