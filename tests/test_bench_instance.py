"""The pure helpers of benchmarks/bench_instance.py: split, overrides, sizes, COCO subsets."""

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from segworks.data.instances import Instance, InstanceRecord, InstanceSet, read_instances

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

bench = pytest.importorskip("benchmarks.bench_instance")
DATASETS, apply_sets, coco_subset = bench.DATASETS, bench.apply_sets, bench.coco_subset
resized_size, scale_coco, split_indices, table = (
    bench.resized_size,
    bench.scale_coco,
    bench.split_indices,
    bench.table,
)


def test_split_is_deterministic_disjoint_and_complete():
    train, val = split_indices(61, 12, seed=0)
    assert (train, val) == split_indices(61, 12, seed=0)
    assert len(train) == 49 and len(val) == 12
    assert not set(train) & set(val)
    assert sorted(train + val) == list(range(61))
    assert train == sorted(train) and val == sorted(val)


def test_split_depends_on_the_seed_not_on_global_state():
    torch.manual_seed(123)
    first = split_indices(18, 4, seed=0)
    torch.manual_seed(456)
    assert split_indices(18, 4, seed=0) == first
    assert split_indices(18, 4, seed=1) != first  # a control: the seed does change the split


def test_validation_split_holds_out_train_images_only():
    train, val = bench.bench_split(61, 12, seed=0)
    assert (train, val) == split_indices(61, 12, seed=0)
    inner_train, held_out = bench.bench_split(61, 12, seed=0, validate=True)
    assert len(inner_train) == 37 and len(held_out) == 12
    assert sorted(inner_train + held_out) == train  # the val images are never among them
    other_train, other_held_out = bench.bench_split(61, 12, seed=0, validate=True, draw=1)
    assert sorted(other_train + other_held_out) == train
    assert other_held_out != held_out  # another draw, still from the train part only


def test_draw_without_validate_is_refused(capsys):
    with pytest.raises(SystemExit) as stop:
        bench.parse_args(["--draw", "1"])
    assert stop.value.code == 2 and "--validate" in capsys.readouterr().err
    assert bench.parse_args(["--draw", "1", "--validate"]).draw == 1


@pytest.mark.parametrize("count, val_count", [(1, 1), (10, 0), (10, 10), (5, -1)])
def test_split_rejects_impossible_sizes(count, val_count):
    with pytest.raises(ValueError, match="must be"):
        split_indices(count, val_count)


def test_apply_sets_parses_json_and_model_keywords():
    recipe = {"lr": 0.02, "model": "maskrcnn_tiny", "model_arg": ["width=16"]}
    result = apply_sets(recipe, ["lr=0.01", "model=maskrcnn_r50_fpn", "min_size=[320]",
                                 "model.width=32", "model.anchor_sizes=[16, 32]"])  # fmt: skip
    assert result["lr"] == 0.01 and result["model"] == "maskrcnn_r50_fpn"
    assert result["min_size"] == [320]
    assert result["model_arg"] == ["width=32", "anchor_sizes=[16, 32]"]
    assert recipe["model_arg"] == ["width=16"]  # the recipe itself is untouched


@pytest.mark.parametrize("item", ["lr", "=3", "model.2x=1"])
def test_apply_sets_rejects_malformed_items(item):
    with pytest.raises(ValueError, match="--set"):
        apply_sets({}, [item])


def test_pretrained_swaps_in_the_encoder_recipe_and_sets_still_win():
    plain = bench.recipe_for(bench.parse_args([]))
    args = bench.parse_args(["--pretrained", "--set", "lr=0.01"])
    recipe = bench.recipe_for(args)
    assert plain["model"] == "maskrcnn_tiny" and "pretrained" not in plain
    assert (recipe["model"], recipe["pretrained"]) == ("maskrcnn_mobilenet_v2_fpn", "mobilenet_v2")
    assert recipe["lr"] == 0.01 and recipe["min_size"] == plain["min_size"]
    assert "fpn_channels=128" in recipe["model_arg"]


def test_resized_size_matches_the_dataset_rule():
    assert resized_size(1536, 2048, 384, 640) == (384, 512)
    assert resized_size(600, 2000, 384, 640) == (192, 640)  # the long side limits
    assert resized_size(300, 400, 384, 640) == (300, 400)  # never enlarged


def _instance_set(folder: Path) -> InstanceSet:
    records = []
    for index in range(3):
        path = folder / f"{index}.png"
        Image.new("RGB", (40, 20)).save(path)
        square = [2.0, 2.0, 12.0, 2.0, 12.0, 10.0, 2.0, 10.0]
        records.append(
            InstanceRecord(path, 10 + index, 20, 40, [Instance(1 + index % 2, [square])])
        )
    return InstanceSet(folder, records, ["a", "b"], [7, 9])


def test_coco_subset_reads_back_with_the_same_classes_and_instances(tmp_path):
    instance_set = _instance_set(tmp_path)
    coco = coco_subset(instance_set, [0, 2])
    path = tmp_path / "subset.json"
    path.write_text(json.dumps(coco))
    back = read_instances(path)
    assert back.class_names == ["a", "b"] and back.category_ids == [7, 9]
    assert [r.image_id for r in back.records] == [10, 12]
    assert [[i.label for i in r.instances] for r in back.records] == [[1], [1]]
    assert back.records[0].instances[0].polygons == instance_set.records[0].instances[0].polygons
    assert coco["annotations"][0]["bbox"] == [2.0, 2.0, 10.0, 8.0]


def test_scale_coco_scales_polygons_and_boxes_of_moved_images(tmp_path):
    coco = coco_subset(_instance_set(tmp_path), [0, 1])
    scaled = scale_coco(coco, {10: (10, 20)}, {10: "small.png"})
    image = scaled["images"][0]
    assert (image["file_name"], image["height"], image["width"]) == ("small.png", 10, 20)
    assert scaled["annotations"][0]["segmentation"][0][:4] == [1.0, 1.0, 6.0, 1.0]
    assert scaled["annotations"][0]["bbox"] == [1.0, 1.0, 5.0, 4.0]
    assert scaled["annotations"][1] == coco["annotations"][1]  # image 11 was not moved


def test_table_prints_every_dataset_and_nan():
    metrics = {"AP": 0.5, "AP50": 0.75, "AP75": math.nan}
    row = {"dataset": "balloon", "model": "maskrcnn_tiny", "size": "384/640", "train": 49,
           "val": 12, "epochs": 3, "cpu_min": 1.0, "train_min": 2.0, "bbox": metrics,
           "segm": metrics}  # fmt: skip
    text = table([row])
    assert "balloon" in text and "0.750" in text and "nan" in text


def test_the_split_of_the_real_datasets(shared_datasets):
    for name, (relative, val_count) in DATASETS.items():
        instance_set = read_instances(shared_datasets / relative)
        train, val = split_indices(len(instance_set.records), val_count, seed=0)
        assert len(train) + len(val) == len(instance_set.records)
        assert {"balloon": 61, "fruits_nuts": 18}[name] == len(instance_set.records)


def test_eval_min_size_rescales_the_eval_input_only():
    from segworks.models.mask_rcnn import maskrcnn_tiny

    model = maskrcnn_tiny(num_classes=2, min_size=64, max_size=128)
    bench.rescale_input(model, 96)
    model.eval()  # the evaluation loop sets eval mode again: the size must survive it
    assert model.transform.min_size == (96,) and model.transform.max_size == 192
    model.train()
    assert model.transform.min_size == (64,) and model.transform.max_size == 128
