"""The HTML evaluation report: content checks in Python, rendering checks in headless Chromium."""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from helpers import tiny_net, write_checkpoint, write_dataset
from PIL import Image

import segworks
from segworks import models
from segworks.checkpoint import load_checkpoint, save_checkpoint
from segworks.cli import main
from segworks.report import render_report, write_report

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
CLASS_NAMES = ["background", "road", "car <&> bus", "tree"]  # markup in a name must be escaped
PALETTE = [(0, 0, 0), (128, 64, 128), (0, 0, 142), (107, 142, 35)]


def _results() -> dict:
    matrix = [[50, 5, 0, 0], [3, 40, 2, 0], [0, 1, 20, 0], [0, 0, 0, 0]]  # tree never occurs
    return {
        "pixel_accuracy": 0.9134,
        "mean_accuracy": 0.8821,
        "iou": [0.8621, 0.8000, 0.8696, math.nan],
        "miou": 0.8439,
        "fwiou": 0.8501,
        "dice": [0.926, 0.889, 0.930, math.nan],
        "mean_dice": 0.9150,
        "confusion_matrix": matrix,
        "num_images": 3,
    }


def _samples() -> list[dict]:
    rng = np.random.default_rng(0)
    samples = []
    for index, miou in enumerate([0.31, 0.92, 0.55]):
        h, w = 40 + 8 * index, 56
        gt = rng.integers(0, 3, (h, w), dtype=np.int64)
        gt[:4] = 255
        pred = np.where(rng.random((h, w)) < miou, gt, (gt + 1) % 3)
        image = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        samples.append(
            {"name": f"img_{index}.png", "image": image, "gt": gt, "pred": pred, "miou": miou}
        )
    return samples


def test_report_content(tmp_path):
    path = write_report(
        tmp_path / "rep", _results(), class_names=CLASS_NAMES, palette=PALETTE, samples=_samples()
    )
    assert path == tmp_path / "rep" / "report.html"
    page = path.read_text(encoding="utf-8")
    # self-contained: no script, no external URL of any kind
    assert "<script" not in page.lower()
    assert not re.search(r"""(src|href)=["'](?!data:)""", page)
    assert "car &lt;&amp;&gt; bus" in page and "car <&> bus" not in page
    assert "84.39" in page and "91.34" in page and "n/a" in page
    assert page.count('class="bar"') == 3  # tree's IoU is NaN: no bar
    assert page.count('class="cell"') == 7  # the non-zero confusion entries
    assert page.count("<img ") == 3 * 4
    worst = page.index('id="worst"')
    best = page.index('id="best"')
    # sorted: worst section holds 0.31 then 0.55, best holds 0.92
    assert (
        worst < page.index("img_0.png") < page.index("img_2.png") < best < page.index("img_1.png")
    )


def test_report_shows_the_confusion_counts_as_text():
    page = render_report(_results(), class_names=CLASS_NAMES, palette=PALETTE, samples=[])
    assert _count_cells(page) == _results()["confusion_matrix"]


def _count_cells(page: str) -> list[list[int]]:
    """The confusion matrix read back from the text of the page's count cells."""
    cells = re.findall(r'<td class="count" data-gt="(\d+)" data-pred="(\d+)"[^>]*>(\d+)</td>', page)
    k = int(math.isqrt(len(cells)))
    matrix = [[-1] * k for _ in range(k)]
    for gt, pred, count in cells:
        matrix[int(gt)][int(pred)] = int(count)
    return matrix


def test_eval_report_states_what_produced_it(tmp_path, monkeypatch):
    monkeypatch.setitem(models.MODELS, "tiny_net", tiny_net)
    data = write_dataset(tmp_path / "data", num_classes=3)
    checkpoint_path = write_checkpoint(tmp_path / "model.pt", num_classes=3)
    checkpoint = load_checkpoint(checkpoint_path)
    save_checkpoint(checkpoint_path, checkpoint | {"epoch": 7, "best": {"epoch": 5}})
    out = tmp_path / "rep"
    argv = ["eval", str(checkpoint_path), "--data", str(data), "--report", str(out)]
    argv += ["--json", str(tmp_path / "r.json"), "--long-side", "24", "--no-progress"]
    assert main(argv) == 0
    page = (out / "report.html").read_text(encoding="utf-8")
    provenance = page[page.index('id="provenance"') : page.index('id="summary"')]
    expected = [
        str(checkpoint_path.resolve()),
        "tiny_net",
        "7 (best mIoU at epoch 5)",
        str(data.resolve()),
        "val (3 images)",
        "whole",
        "24 px",
        "<th>TTA</th><td>off</td>",
        "0.5 (binary models only; not used)",
        torch.__version__,
        torchvision.__version__,
        f"segworks</th><td>{segworks.__version__}",
        time.strftime("%Y-%m-%d"),
    ]
    assert [text for text in expected if text not in provenance] == []
    scored = json.loads((tmp_path / "r.json").read_text())["variants"]["plain"]
    assert _count_cells(page) == scored["confusion_matrix"]
    assert sum(map(sum, scored["confusion_matrix"])) > 0


def test_report_rejects_mismatched_sample():
    sample = _samples()[0]
    sample["pred"] = sample["pred"][:-1]
    with pytest.raises(ValueError, match="same size"):
        render_report(_results(), class_names=CLASS_NAMES, palette=PALETTE, samples=[sample])


def test_report_rejects_wrong_class_count():
    results = _results()
    results["iou"] = results["iou"][:2]
    with pytest.raises(ValueError, match="2 values for 4 classes"):
        render_report(results, class_names=CLASS_NAMES, palette=PALETTE, samples=[])


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed at /usr/bin/chromium (.ci/install-browser)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip package playwright missing")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS
        )
        yield browser
        browser.close()


def test_report_renders_in_chromium(tmp_path, browser):
    path = write_report(
        tmp_path, _results(), class_names=CLASS_NAMES, palette=PALETTE, samples=_samples()
    )
    page = browser.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.on("requestfailed", lambda request: problems.append(f"failed {request.url}"))
    page.goto(path.as_uri(), wait_until="load")

    assert page.title() == "segworks evaluation report"
    assert problems == []
    summary = page.locator("#summary table").inner_text()
    assert "mIoU (%)" in summary and "84.39" in summary and "91.50" in summary
    # charts: an svg with one drawn bar per class with a finite IoU, and the heat map cells
    bars = page.locator("svg#iou-chart rect.bar")
    assert bars.count() == 3
    widths = [float(bars.nth(i).evaluate("e => e.getBBox().width")) for i in range(3)]
    assert widths[0] > widths[1] > 300  # 86 % vs 80 % of a 420 px axis
    assert page.locator("svg#confusion-matrix rect.cell").count() == 7
    assert page.locator("svg#confusion-matrix").evaluate("e => e.getBBox().width") > 100
    # every image decoded with its real size
    sizes = page.eval_on_selector_all(
        "img", "images => images.map(i => [i.complete, i.naturalWidth, i.naturalHeight])"
    )
    assert len(sizes) == 12
    assert all(complete and w == 56 and h >= 40 for complete, w, h in sizes)
    assert page.locator("#worst .panel").count() == 2 and page.locator("#best .panel").count() == 1
    legend = page.locator("#best .legend").inner_text()
    assert "road" in legend and "car <&> bus" in legend and "tree" not in legend
    page.close()


def test_broken_image_is_caught_by_the_browser_check(tmp_path, browser):
    """Control: a page with an undecodable image must fail the naturalWidth check above."""
    broken = tmp_path / "broken.html"
    broken.write_text(
        "<!DOCTYPE html><html><head><title>t</title></head><body>"
        '<img src="data:image/png;base64,AAAA"></body></html>'
    )
    page = browser.new_page()
    page.goto(broken.as_uri(), wait_until="load")
    sizes = page.eval_on_selector_all("img", "images => images.map(i => i.naturalWidth)")
    assert sizes == [0]
    page.close()
