"""COCO-format annotation files: malformed, incomplete, inconsistent and degenerate input."""

from __future__ import annotations

import json
import logging

import pytest
from detectron2.data import DatasetCatalog

from bitdet.detection import register_coco_format
from bitdet.detection.annotations import AnnotationError, AnnotationStats, load_coco_format


def _coco(images=None, annotations=None, categories=None):
    images = (
        images
        if images is not None
        else [
            {"id": 1, "file_name": "a.jpg", "height": 100, "width": 200},
            {"id": 2, "file_name": "b.jpg", "height": 100, "width": 200},
        ]
    )
    if annotations is None:
        annotations = [
            {
                "id": 10,
                "image_id": 1,
                "category_id": 3,
                "bbox": [10, 10, 50, 40],
                "area": 2000,
                "iscrowd": 0,
            }
        ]
    categories = (
        categories
        if categories is not None
        else [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}]
    )
    return {"images": images, "annotations": annotations, "categories": categories}


def _write(tmp_path, data, name="ann.json"):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def _ann(i, bbox, image_id=1, category_id=3):
    return {
        "id": i,
        "image_id": image_id,
        "category_id": category_id,
        "bbox": bbox,
        "area": 1.0,
        "iscrowd": 0,
    }


def test_malformed_json_names_file_line_and_column(tmp_path):
    text = json.dumps(_coco(), indent=1).replace('"width": 200', '"width": 200,,', 1)
    path = _write(tmp_path, text)
    line = next(i for i, s in enumerate(text.splitlines(), 1) if ",," in s)
    with pytest.raises(AnnotationError, match=rf"{path}:{line}:\d+: malformed JSON"):
        load_coco_format(path, tmp_path, tmp_path.name)


@pytest.mark.parametrize(
    "section, key, where",
    [
        ("annotations", "bbox", "annotation id 10"),
        ("annotations", "category_id", "annotation id 10"),
        ("annotations", "image_id", "annotation id 10"),
        ("annotations", "id", "annotation id '<entry #0>'"),
        ("images", "height", "image id 1"),
        ("images", "file_name", "image id 1"),
    ],
)
def test_missing_key_names_key_and_id(tmp_path, section, key, where):
    data = _coco()
    del data[section][0][key]
    path = _write(tmp_path, data)
    with pytest.raises(AnnotationError, match=rf"{path}.*key '{key}' missing in {where}"):
        load_coco_format(path, tmp_path, tmp_path.name)


def test_missing_categories_section(tmp_path):
    data = _coco()
    del data["categories"]
    with pytest.raises(AnnotationError, match="missing or non-list top-level key 'categories'"):
        load_coco_format(_write(tmp_path, data), tmp_path, tmp_path.name)


def test_unknown_category_is_an_error_with_ids_and_count(tmp_path):
    anns = [
        _ann(10, [1, 1, 5, 5]),
        _ann(11, [1, 1, 5, 5], category_id=99),
        _ann(12, [1, 1, 5, 5], category_id=99),
    ]
    path = _write(tmp_path, _coco(annotations=anns))
    with pytest.raises(
        AnnotationError,
        match=(
            r"'category_id' has values \[99\] not in 'categories' \[3, 7\] "
            r"in annotation id 11 \(and 1 more\)"
        ),
    ):
        load_coco_format(path, tmp_path, tmp_path.name)


def test_malformed_bbox_names_annotation(tmp_path):
    path = _write(tmp_path, _coco(annotations=[_ann(5, [1, 2, 3])]))
    with pytest.raises(
        AnnotationError, match=r"'bbox' is not \[x, y, w, h\] numbers in annotation id 5"
    ):
        load_coco_format(path, tmp_path, tmp_path.name)


def test_degenerate_and_out_of_image_boxes_are_filtered_and_counted(tmp_path, caplog):
    anns = [
        _ann(1, [10, 10, 50, 40]),  # kept as is
        _ann(2, [10, 10, 0, 40]),  # zero width: degenerate
        _ann(3, [10, 10, 20, -5]),  # negative height: degenerate
        _ann(4, [float("nan"), 10, 20, 20]),  # NaN: degenerate
        _ann(5, [180, 90, 50, 50]),  # crosses the corner: clipped to 20 x 10
        _ann(6, [-30, -30, 40, 40]),  # crosses the origin: clipped to 10 x 10
        _ann(7, [250, 10, 20, 20]),  # entirely right of the image: dropped
        _ann(8, [10, -50, 20, 50], image_id=2),  # touches the top edge only: nothing left
    ]
    path = _write(tmp_path, _coco(annotations=anns))
    stats = AnnotationStats()
    caplog.set_level(logging.INFO)
    records = load_coco_format(path, tmp_path, tmp_path.name, stats=stats)
    assert (
        stats.images,
        stats.boxes,
        stats.dropped_degenerate,
        stats.dropped_outside,
        stats.clipped,
    ) == (2, 3, 3, 2, 2)
    assert stats.images_without_boxes == 1
    by_id = {a["id"]: a["bbox"] for r in records for a in r["annotations"]}
    assert by_id == {1: [10, 10, 50, 40], 5: [180.0, 90.0, 20.0, 10.0], 6: [0.0, 0.0, 10.0, 10.0]}
    assert (
        "dropped 3 degenerate" in caplog.text
        and "clipped 2" in caplog.text
        and str(path) in caplog.text
    )


def test_images_without_annotations_are_kept(tmp_path):
    data = _coco(annotations=[])
    records = load_coco_format(_write(tmp_path, data), tmp_path, tmp_path.name)
    assert [r["image_id"] for r in records] == [1, 2] and all(
        r["annotations"] == [] for r in records
    )


def test_registered_datasets_use_the_validating_loader(tmp_path):
    anns = [_ann(1, [10, 10, 50, 40], category_id=7), _ann(2, [10, 10, 0, 0])]
    register_coco_format(
        "reliability_annotations_test", _write(tmp_path, _coco(annotations=anns)), tmp_path
    )
    records = DatasetCatalog.get("reliability_annotations_test")
    assert [len(r["annotations"]) for r in records] == [1, 0]
    assert records[0]["annotations"][0]["category_id"] == 1  # contiguous id of category 7
