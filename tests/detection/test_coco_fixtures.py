"""Real COCO-format annotations (labelme, sahi sdists) through Detectron2's data path and
COCOEvaluator."""

import json
import os

import pytest
import torch
from detectron2.data import DatasetCatalog, DatasetMapper, MetadataCatalog
from detectron2.evaluation import COCOEvaluator
from detectron2.structures import Boxes, BoxMode, Instances

from bitdet.detection import get_bit_cfg, register_coco_format
from tests.fixtures import FixtureUnavailableError, fetch_fixture, normalize_coco


@pytest.fixture(scope="module", params=["labelme_voc", "sahi_terrain"])
def fixture(request):
    try:
        fetched = fetch_fixture(
            request.param
        )  # cached under $BITDET_CACHE/fixtures after the first run
    except FixtureUnavailableError as e:
        pytest.skip(f"fixture {request.param} unavailable (pip download needs PyPI access): {e}")
    name = f"fixture_{request.param}"
    register_coco_format(name, fetched.json_file, fetched.image_root)
    return name, fetched


EXPECTED = {"labelme_voc": (3, 12), "sahi_terrain": (1, 5)}


def test_catalog_loads_every_box(fixture):
    name, fetched = fixture
    dicts = DatasetCatalog.get(name)
    with open(fetched.original_json) as f:
        original = json.load(f)
    images, boxes = EXPECTED[fetched.name]
    assert len(dicts) == len(original["images"]) == images
    assert sum(len(d["annotations"]) for d in dicts) == len(original["annotations"]) == boxes
    for d in dicts:
        assert d["file_name"].startswith(str(fetched.image_root)) and os.path.isfile(d["file_name"])


def test_background_category_is_filtered(fixture):
    name, fetched = fixture
    DatasetCatalog.get(name)
    classes = MetadataCatalog.get(name).thing_classes
    assert "_background_" not in classes
    if fetched.name == "labelme_voc":
        assert len(classes) == 20 and classes[0] == "aeroplane" and "person" in classes
    else:
        assert classes == ["car"]


def test_normalize_coco_fixes_ids_areas_and_background():
    data = {
        "images": [{"id": 0, "file_name": "a.jpg", "height": 10, "width": 10}],
        "categories": [{"id": 0, "name": "_background_"}, {"id": 1, "name": "cat"}],
        "annotations": [
            {
                "id": 0,
                "image_id": 0,
                "category_id": 1,
                "bbox": [0, 0, 4, 5],
                "area": 100,
                "iscrowd": 0,
            },
            {
                "id": 1,
                "image_id": 0,
                "category_id": 0,
                "bbox": [0, 0, 2, 2],
                "area": 4,
                "iscrowd": 0,
            },
        ],
    }
    fixed, notes = normalize_coco(data)
    assert [c["name"] for c in fixed["categories"]] == ["cat"]
    assert [(a["id"], a["image_id"], a["area"]) for a in fixed["annotations"]] == [(1, 1, 20.0)]
    assert fixed["images"][0]["id"] == 1 and len(notes) == 4
    assert data["images"][0]["id"] == 0  # the input is not modified


def test_mapper_produces_instances(fixture):
    name, _ = fixture
    cfg = get_bit_cfg("quick_schedules/retinanet_bit_instant_test.yaml")
    dicts = DatasetCatalog.get(name)
    mapper = DatasetMapper(cfg, is_train=True)
    for d in dicts:
        out = mapper(d)
        inst = out["instances"]
        assert out["image"].shape[0] == 3 and max(out["image"].shape[1:]) == 128  # MAX_SIZE_TRAIN
        assert len(inst) == len(d["annotations"]) and inst.gt_boxes.tensor.shape == (
            len(d["annotations"]),
            4,
        )
        assert (inst.gt_boxes.area() > 0).all()


def test_ground_truth_as_predictions_scores_ap_100(fixture, tmp_path):
    name, _ = fixture
    dicts = DatasetCatalog.get(name)
    evaluator = COCOEvaluator(name, output_dir=str(tmp_path), use_fast_impl=False)
    evaluator.reset()
    for d in dicts:
        inst = Instances((d["height"], d["width"]))
        boxes = [
            BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in d["annotations"]
        ]
        inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
        inst.scores = torch.ones(len(boxes))
        inst.pred_classes = torch.tensor([a["category_id"] for a in d["annotations"]])
        evaluator.process([{"image_id": d["image_id"]}], [{"instances": inst}])
    results = evaluator.evaluate()["bbox"]
    assert results["AP"] == pytest.approx(100.0)
    assert results["AP50"] == pytest.approx(100.0)


def test_the_id_fix_is_needed_for_pycocotools():
    """Without normalize_coco, labelme's annotation id 0 is never matched: GT-as-predictions
    AP < 100."""
    try:
        fetched = fetch_fixture("labelme_voc")
    except FixtureUnavailableError as e:
        pytest.skip(f"fixture labelme_voc unavailable (pip download needs PyPI access): {e}")
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(fetched.original_json))
        dets = [
            dict(image_id=a["image_id"], category_id=a["category_id"], bbox=a["bbox"], score=1.0)
            for a in gt.dataset["annotations"]
        ]
        ev = COCOeval(gt, gt.loadRes(dets), "bbox")
        ev.evaluate(), ev.accumulate(), ev.summarize()
    assert ev.stats[0] < 0.99
