"""Instance readers (COCO, labelme, VIA, VOC), the dataset, semantic masks and check_instances."""

import json
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from segworks import IGNORE_INDEX
from segworks.data.instances import (
    InstanceDataset,
    check_instances,
    masks_to_boxes,
    read_instances,
    semantic_from_instances,
)
from segworks.errors import DataError


def _image(path, width=40, height=30):
    Image.fromarray(np.zeros((height, width, 3), np.uint8)).save(path)


def _coco_fixture(tmp_path, extra_annotations=()):
    _image(tmp_path / "a.png")
    _image(tmp_path / "b.png")
    crowd = np.zeros((30, 40), np.uint8)
    crowd[20:30, 0:10] = 1
    compressed = mask_utils.encode(np.asfortranarray(crowd))
    compressed["counts"] = compressed["counts"].decode()
    uncompressed = {"size": [30, 40], "counts": [25 * 30 + 5, 10, 20, 10, 20, 10]}
    annotations = [
        {
            "id": 1,
            "image_id": 10,
            "category_id": 7,
            "segmentation": [[2, 2, 12, 2, 12, 12, 2, 12]],
            "iscrowd": 0,
            "bbox": [2, 2, 10, 10],
        },
        {"id": 2, "image_id": 10, "category_id": 3, "segmentation": compressed, "iscrowd": 1},
        {"id": 3, "image_id": 10, "category_id": 3, "segmentation": uncompressed, "iscrowd": 0},
        *extra_annotations,
    ]
    data = {
        "images": [
            {"id": 10, "file_name": "a.png", "height": 30, "width": 40},
            {"id": 11, "file_name": "b.png", "height": 30, "width": 40},
        ],
        "categories": [
            {"id": 0, "name": "_background_"},
            {"id": 7, "name": "seven"},
            {"id": 3, "name": "three"},
        ],
        "annotations": annotations,
    }
    (tmp_path / "ann.json").write_text(json.dumps(data))
    return tmp_path / "ann.json"


def test_coco_polygons_rle_crowd_and_empty_images(tmp_path):
    instance_set = read_instances(_coco_fixture(tmp_path))
    assert instance_set.class_names == ["three", "seven"]  # ordered by category id
    assert instance_set.category_ids == [3, 7] and instance_set.num_classes == 3
    dataset = InstanceDataset(instance_set, min_size=None)
    image, target = dataset[0]
    assert image.shape == (3, 30, 40) and image.dtype == torch.float32
    assert target["image_id"] == 10
    assert target["labels"].tolist() == [2, 1, 1] and target["iscrowd"].tolist() == [0, 1, 0]
    assert target["masks"].dtype == torch.uint8 and target["masks"].shape == (3, 30, 40)
    assert target["masks"][1, 20:30, 0:10].all() and target["masks"][1].sum() == 100
    assert target["masks"][2].sum() == 30  # uncompressed RLE: three columns of ten pixels
    assert target["boxes"][0].tolist() == [2.0, 2.0, 12.0, 12.0]  # rasterised polygon extent
    torch.testing.assert_close(target["area"], target["masks"].flatten(1).sum(1).float())
    _, empty = dataset[1]
    assert empty["boxes"].shape == (0, 4) and empty["masks"].shape == (0, 30, 40)


def test_coco_problems_are_reported_and_strict_read_fails(tmp_path):
    bad = [
        {"id": 4, "image_id": 10, "category_id": 7, "segmentation": [[1, 1, 5, 5]], "iscrowd": 0},
        {
            "id": 5,
            "image_id": 10,
            "category_id": 7,
            "segmentation": [[1, 1, 5, 1, 9, 1]],
            "iscrowd": 0,
        },
        {
            "id": 6,
            "image_id": 10,
            "category_id": 99,
            "segmentation": [[1, 1, 5, 1, 5, 5]],
            "iscrowd": 0,
        },
        {
            "id": 7,
            "image_id": 11,
            "category_id": 7,
            "segmentation": [[1, 1, 60, 1, 60, 20]],
            "bbox": [1, 1, 59, 19],
            "iscrowd": 0,
        },
    ]
    path = _coco_fixture(tmp_path, bad)
    (tmp_path / "b.png").unlink()
    report, problems = check_instances(path)
    text = "\n".join(problems)
    assert "2 points (< 3)" in text and "zero area" in text
    assert "unknown category id 99" in text and "b.png: image file is missing" in text
    assert "outside the 40x30 image" in text
    assert "empty images: 0" in report and "three: 2" in report
    with pytest.raises(DataError, match="image file is missing"):
        read_instances(path)


def test_labelme_group_id_merges_parts(tmp_path):
    _image(tmp_path / "x.png")
    shapes = [
        {
            "label": "cat",
            "group_id": 1,
            "shape_type": "polygon",
            "points": [[0, 0], [5, 0], [5, 5], [0, 5]],
        },
        {"label": "cat", "group_id": 1, "shape_type": "rectangle", "points": [[20, 20], [25, 25]]},
        {
            "label": "cat",
            "group_id": None,
            "shape_type": "polygon",
            "points": [[30, 0], [35, 0], [35, 5]],
        },
        {"label": "dog", "group_id": 1, "shape_type": "circle", "points": [[10, 20], [14, 20]]},
        {
            "label": "__ignore__",
            "group_id": None,
            "shape_type": "polygon",
            "points": [[0, 0], [3, 0], [3, 3]],
        },
    ]
    data = {"shapes": shapes, "imagePath": "x.png", "imageHeight": 30, "imageWidth": 40}
    (tmp_path / "x.json").write_text(json.dumps(data))
    instance_set = read_instances(tmp_path)
    assert instance_set.class_names == ["cat", "dog"]
    target = InstanceDataset(instance_set, min_size=None).target(0)
    assert target["labels"].tolist() == [1, 1, 2, 0]  # __ignore__: label 0, crowd
    assert target["iscrowd"].tolist() == [0, 0, 0, 1]
    merged = target["masks"][0]
    assert merged[2, 2] and merged[22, 22] and not merged[12, 12]
    assert target["boxes"][0].tolist() == [0.0, 0.0, 25.0, 25.0]


def test_via_regions_as_dict_and_list(tmp_path):
    _image(tmp_path / "p.png")
    _image(tmp_path / "q.png")
    polygon = {"name": "polygon", "all_points_x": [1, 10, 10], "all_points_y": [1, 1, 10]}
    data = {
        "p.png1": {
            "filename": "p.png",
            "regions": {"0": {"shape_attributes": polygon, "region_attributes": {}}},
        },
        "q.png1": {
            "filename": "q.png",
            "regions": [
                {
                    "shape_attributes": {"name": "rect", "x": 2, "y": 3, "width": 8, "height": 4},
                    "region_attributes": {},
                },
                {"shape_attributes": polygon, "region_attributes": {}},
            ],
        },
    }
    folder = tmp_path / "kites" / "train"
    folder.mkdir(parents=True)
    (folder / "via_region_data.json").write_text(json.dumps(data))
    for name in ("p.png", "q.png"):
        (tmp_path / name).rename(folder / name)
    instance_set = read_instances(folder)
    assert instance_set.class_names == ["kites"]
    assert [len(r.instances) for r in instance_set.records] == [1, 2]
    rect = InstanceDataset(instance_set, min_size=None).target(1)["masks"][0]
    assert masks_to_boxes(rect[None])[0].tolist() == [2.0, 3.0, 10.0, 7.0]


def test_resize_by_short_side_and_flip_keep_boxes_on_masks(tmp_path):
    path = _coco_fixture(tmp_path)
    dataset = InstanceDataset(read_instances(path), min_size=15, max_size=100, hflip=1.0)
    image, target = dataset[0]
    assert image.shape == (3, 15, 20) and target["masks"].shape[-2:] == (15, 20)
    torch.testing.assert_close(target["boxes"], masks_to_boxes(target["masks"]))
    assert target["masks"][1, 10:15, 15:20].all()  # the crowd corner moved to the right
    assert InstanceDataset(read_instances(path), min_size=60).size(0) == (30, 40)  # never enlarges
    assert InstanceDataset(read_instances(path), min_size=30, max_size=20).size(0) == (15, 20)


def test_semantic_from_instances():
    masks = torch.zeros(3, 6, 6, dtype=torch.uint8)
    masks[0, :4, :4] = 1
    masks[1, 1:3, 1:3] = 1  # small instance on top of the big one
    masks[2, 5, :] = 1
    target = {"masks": masks, "labels": torch.tensor([1, 2, 1]), "iscrowd": torch.tensor([0, 0, 1])}
    semantic = semantic_from_instances(target)
    assert semantic.dtype == torch.int64
    assert semantic[0, 0] == 1 and semantic[1, 1] == 2 and semantic[5, 0] == IGNORE_INDEX
    assert semantic[4, 4] == 0
    empty = {"masks": torch.zeros(0, 6, 6), "labels": torch.zeros(0, dtype=torch.int64)}
    assert semantic_from_instances(empty, height=6, width=6).eq(0).all()
    with pytest.raises(ValueError, match="height and width"):
        semantic_from_instances(empty)


def test_balloon_counts(shared_datasets):
    instance_set = read_instances(shared_datasets / "balloon" / "train")
    assert len(instance_set.records) == 61
    assert sum(len(r.instances) for r in instance_set.records) == 255
    assert instance_set.class_names == ["balloon"] and not instance_set.problems
    image, target = InstanceDataset(instance_set, min_size=256, max_size=400)[0]
    assert min(image.shape[1:]) == 256 and target["masks"].shape[-2:] == image.shape[1:]


def test_fruits_nuts_counts(shared_datasets):
    report, problems = check_instances(shared_datasets / "fruits_nuts" / "trainval.json")
    instance_set = read_instances(shared_datasets / "fruits_nuts" / "trainval.json")
    assert len(instance_set.records) == 18 and instance_set.class_names == [
        "date",
        "fig",
        "hazelnut",
    ]
    assert sum(len(r.instances) for r in instance_set.records) == 165
    assert problems == [] and "instances: 165" in report


def test_labelme_voc_three_formats_agree(shared_datasets):
    root = shared_datasets / "labelme_voc" / "instance_segmentation"
    sources = [
        root / "data_annotated",
        root / "data_dataset_coco" / "annotations.json",
        root / "data_dataset_voc",
    ]
    counts = []
    for source in sources:
        instance_set = read_instances(source)
        assert len(instance_set.class_names) == 20 and instance_set.class_names[14] == "person"
        counts.append(
            Counter(
                instance_set.class_names[i.label - 1] if i.label else "(ignore)"
                for r in instance_set.records
                for i in r.instances
            )
        )
    assert counts[0].pop("(ignore)") == 2  # labelme's __ignore__ shapes: crowd regions
    assert counts[0] == counts[1] == counts[2]
    assert sum(counts[0].values()) == 12 and counts[0]["person"] == 6
    labelme = InstanceDataset(read_instances(sources[0]), min_size=None)
    voc = InstanceDataset(read_instances(sources[2]), min_size=None)
    for index in range(len(labelme)):
        a, b = labelme.target(index), voc.target(index)
        objects = a["masks"][a["labels"] > 0].bool()
        ious = [(x & y).sum() / (x | y).sum() for x, y in zip(objects, b["masks"].bool())]
        assert len(ious) == len(b["masks"]) and min(ious) > 0.8  # same objects, same order


def _labelme_with_ignore(folder, false_positive_box):
    """Two objects and an __ignore__ region in a labelme folder, plus predictions that hit both
    objects and add a confident false positive of each class at `false_positive_box`."""
    folder.mkdir()
    _image(folder / "x.png", width=64, height=48)
    square = [[4, 4], [20, 4], [20, 20], [4, 20]]
    shapes = [
        {"label": "cat", "shape_type": "polygon", "points": square},
        {"label": "dog", "shape_type": "rectangle", "points": [[30, 4], [50, 24]]},
        {"label": "__ignore__", "shape_type": "rectangle", "points": [[4, 28], [36, 46]]},
    ]
    data = {"shapes": shapes, "imagePath": "x.png", "imageHeight": 48, "imageWidth": 64}
    (folder / "x.json").write_text(json.dumps(data))
    dataset = InstanceDataset(read_instances(folder), min_size=None)
    target = dataset.target(0)
    x1, y1, x2, y2 = false_positive_box
    extra = torch.zeros(2, 48, 64, dtype=torch.uint8)
    extra[:, y1:y2, x1:x2] = 1
    output = {
        "boxes": torch.cat([target["boxes"][:2], torch.tensor([false_positive_box] * 2).float()]),
        "labels": torch.tensor([1, 2, 1, 2]),
        "scores": torch.tensor([0.9, 0.9, 0.99, 0.99]),
        "masks": torch.cat([target["masks"][:2], extra])[:, None].float(),
    }
    return dataset, output


def test_labelme_ignore_region_is_crowd_in_training_and_eval(tmp_path):
    from segworks.coco_eval import CocoEvaluator
    from segworks.engine.instance import targets_for_training

    dataset, output = _labelme_with_ignore(tmp_path / "a", (6, 30, 34, 44))
    report, problems = check_instances(tmp_path / "a")
    assert not problems and "ignore regions: 1" in report and "instances: 2" in report
    target = dataset.target(0)
    assert targets_for_training([target], torch.device("cpu"))[0]["labels"].tolist() == [1, 2]
    assert semantic_from_instances(target)[40, 10] == IGNORE_INDEX
    evaluator = CocoEvaluator(dataset)
    evaluator.update({0: output})
    for iou_type in ("bbox", "segm"):  # detections of either class on the region are ignored
        assert evaluator.compute()[iou_type]["AP"] == pytest.approx(1.0)
    dataset, output = _labelme_with_ignore(tmp_path / "b", (40, 30, 60, 46))  # the control
    evaluator = CocoEvaluator(dataset)
    evaluator.update({0: output})
    assert evaluator.compute()["segm"]["AP"] < 0.9


def test_coco_ignore_category_becomes_ignore_regions(tmp_path):
    extra = [{"id": 9, "image_id": 11, "category_id": 5, "segmentation": [[1, 1, 9, 1, 9, 9]]}]
    path = _coco_fixture(tmp_path, extra)
    data = json.loads(path.read_text())
    data["categories"].append({"id": 5, "name": "__ignore__"})
    path.write_text(json.dumps(data))
    instance_set = read_instances(path)
    assert instance_set.class_names == ["three", "seven"]
    target = InstanceDataset(instance_set, min_size=None).target(1)
    assert target["labels"].tolist() == [0] and target["iscrowd"].tolist() == [1]
