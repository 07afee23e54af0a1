"""The BiT paper's detection protocol (supplementary E) as shipped configs, and
``INPUT.AUGMENTATION``: the configs' numbers, the fixed-size jitter mapper (crop, dropped boxes,
jitter range), the evaluation size and the model's square padding, and an instant run of the
protocol end to end."""

import re

import numpy as np
import pytest
import torch
from detectron2.data import DatasetMapper
from detectron2.data import transforms as T
from detectron2.modeling import build_model
from detectron2.structures import BoxMode
from PIL import Image

from bitdet.detection import BiTCheckpointer, get_bit_cfg
from bitdet.detection.config import fixed_input_size
from bitdet.detection.mapper import BiTDatasetMapper
from bitdet.weights.errors import WeightsNotFoundError
from tests.tools.tool_run import read_metrics, run_tool

PAPER_CONFIGS = {
    "COCO-Detection/retinanet_bit_s.yaml": "BiT-S-R101x3",
    "COCO-Detection/retinanet_bit_m.yaml": "BiT-M-R101x3",
    "COCO-Detection/retinanet_bit_l.yaml": "YOUR-BiT-L-R101x3-WEIGHTS",
}
DETECTRON2_PROTOCOL = [
    "COCO-Detection/retinanet_bit_m_R101x3_1x.yaml",
    "COCO-Detection/retinanet_bit_m_R101x3_3x.yaml",
    "COCO-Detection/retinanet_bit_s_R101x3_1x.yaml",
    "COCO-Detection/retinanet_bit_m_R50x1_1x.yaml",
    "COCO-Detection/retinanet_bit_m_R50x1_3x.yaml",
    "COCO-Detection/retinanet_bit_s_R50x1_1x.yaml",
]
INSTANT = "quick_schedules/retinanet_bit_instant_test.yaml"
PAPER_INSTANT = "quick_schedules/retinanet_bit_paper_instant_test.yaml"

# Supplementary E: batch 256, 30 epochs, lr / 10 after epochs 16 and 22; COCO-2017 train2017 has
# 117,266 images with annotations. Iterations are rounded to the nearest (not ceil).
TRAIN2017_IMAGES, BATCH, EPOCHS, DROP_EPOCHS = 117_266, 256, 30, (16, 22)


def _iterations(epochs: float) -> int:
    return round(epochs * TRAIN2017_IMAGES / BATCH)


def _fixed_cfg(size=64, scales=(0.8, 1.2), flip="none", *opts):
    return get_bit_cfg(
        INSTANT,
        [
            "INPUT.AUGMENTATION",
            "fixed_size_jitter",
            "INPUT.FIXED_SIZE_JITTER.SIZE",
            str(size),
            "INPUT.FIXED_SIZE_JITTER.SCALE_RANGE",
            str(scales),
            "INPUT.RANDOM_FLIP",
            flip,
            "INPUT.MIN_SIZE_TEST",
            str(size),
            "INPUT.MAX_SIZE_TEST",
            str(size),
            *opts,
        ],
    )


def _dataset_dict(tmp_path, height, width, boxes):
    path = tmp_path / f"image_{height}x{width}.png"
    Image.fromarray(np.full((height, width, 3), 200, np.uint8)).save(path)
    annotations = [
        {"bbox": list(map(float, b)), "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0, "iscrowd": 0}
        for b in boxes
    ]
    return {
        "file_name": str(path),
        "height": height,
        "width": width,
        "image_id": 0,
        "annotations": annotations,
    }


@pytest.mark.parametrize("name", sorted(PAPER_CONFIGS))
def test_paper_configs_follow_supplementary_e(name):
    cfg = get_bit_cfg(name)
    assert cfg.MODEL.BIT.VARIANT == "R101x3" and cfg.MODEL.WEIGHTS == PAPER_CONFIGS[name]
    assert (cfg.DATASETS.TRAIN, cfg.DATASETS.TEST) == (("coco_2017_train",), ("coco_2017_val",))
    assert cfg.INPUT.AUGMENTATION == "fixed_size_jitter" and cfg.INPUT.RANDOM_FLIP == "horizontal"
    assert fixed_input_size(cfg) == cfg.INPUT.FIXED_SIZE_JITTER.SIZE == 1024
    assert (cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST) == (1024, 1024)
    low, high = cfg.INPUT.FIXED_SIZE_JITTER.SCALE_RANGE
    assert low < 1 < high  # scale jitter on
    solver = cfg.SOLVER
    assert (solver.IMS_PER_BATCH, solver.BASE_LR, solver.MOMENTUM, solver.WEIGHT_DECAY) == (
        BATCH,
        0.08,
        0.9,
        1e-4,
    )
    assert solver.MAX_ITER == _iterations(EPOCHS)
    assert tuple(solver.STEPS) == tuple(_iterations(e) for e in DROP_EPOCHS) and solver.GAMMA == 0.1
    # Warm-up, the tensorflow/tpu RetinaNet's: linear over 500 steps from lr 0.0067.
    assert solver.WARMUP_METHOD == "linear" and solver.WARMUP_ITERS == 500
    assert solver.WARMUP_FACTOR * solver.BASE_LR == pytest.approx(0.0067)
    assert (cfg.MODEL.RETINANET.FOCAL_LOSS_ALPHA, cfg.MODEL.RETINANET.FOCAL_LOSS_GAMMA) == (
        0.25,
        2.0,
    )


@pytest.mark.parametrize("name", DETECTRON2_PROTOCOL)
def test_detectron2_protocol_configs_say_their_schedule_and_trunk(name):
    cfg = get_bit_cfg(name)
    upstream, variant, schedule = re.fullmatch(
        r"COCO-Detection/retinanet_bit_([ms])_(R\w+)_(\dx)\.yaml", name
    ).groups()
    assert (
        cfg.MODEL.BIT.VARIANT == variant
        and cfg.MODEL.WEIGHTS == f"BiT-{upstream.upper()}-{variant}"
    )
    assert cfg.INPUT.AUGMENTATION == "multiscale" and fixed_input_size(cfg) == 0
    assert (cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.BASE_LR) == (16, 0.01)
    assert cfg.SOLVER.MAX_ITER == {"1x": 90_000, "3x": 270_000}[schedule]


def test_bit_l_placeholder_weights_stop_the_run():
    cfg = get_bit_cfg(
        "COCO-Detection/retinanet_bit_l.yaml",
        ["MODEL.DEVICE", "cpu", "MODEL.BIT.VARIANT", "R14-tiny"],
    )
    model = build_model(cfg)
    with pytest.raises(WeightsNotFoundError, match="weights 'YOUR-BiT-L-R101x3-WEIGHTS' not found"):
        BiTCheckpointer(model).load(cfg.MODEL.WEIGHTS)


def test_unknown_augmentation_is_a_one_line_error_naming_the_choices():
    cfg = get_bit_cfg(INSTANT, ["INPUT.AUGMENTATION", "lsj"])
    for build in (lambda: BiTDatasetMapper(cfg, is_train=True), lambda: build_model(cfg)):
        with pytest.raises(ValueError) as error:
            build()
        message = str(error.value)
        assert "\n" not in message and "INPUT.AUGMENTATION 'lsj'" in message
        assert "'multiscale'" in message and "'fixed_size_jitter'" in message


@pytest.mark.parametrize(
    "opts, key",
    [
        (["INPUT.MAX_SIZE_TEST", "1333"], "INPUT.MAX_SIZE_TEST"),
        (["INPUT.CROP.ENABLED", "True"], "INPUT.CROP.ENABLED"),
        (["INPUT.FIXED_SIZE_JITTER.SCALE_RANGE", "(1.2, 0.8)"], "SCALE_RANGE"),
    ],
)
def test_fixed_size_jitter_refuses_keys_that_contradict_it(opts, key):
    cfg = _fixed_cfg(64, (0.8, 1.2), "none", *opts)
    with pytest.raises(ValueError, match=key):
        BiTDatasetMapper(cfg, is_train=False)


def test_multiscale_mapper_is_detectron2s_with_its_crop():
    cfg = get_bit_cfg(INSTANT, ["INPUT.CROP.ENABLED", "True"])
    ours, theirs = BiTDatasetMapper(cfg, is_train=True), DatasetMapper(cfg, is_train=True)
    assert repr(ours.augmentations) == repr(theirs.augmentations) and "RandomCrop" in repr(
        ours.augmentations
    )


def test_paper_config_trains_with_flip_resize_scale_and_fixed_size_crop():
    augs = BiTDatasetMapper(
        get_bit_cfg("COCO-Detection/retinanet_bit_m.yaml"), is_train=True
    ).augmentations.augs
    assert [type(a) for a in augs] == [T.RandomFlip, T.ResizeScale, T.FixedSizeCrop]
    assert (augs[1].min_scale, augs[1].max_scale) == (0.8, 1.2) and augs[2].crop_size == (
        1024,
        1024,
    )


def test_crop_clips_boxes_and_drops_those_cropped_out(tmp_path):
    # 100x200 at scale 1.5 of 64: fits 96x96 -> 48x96, then a random 48x64 crop at x offset 0..32.
    mapper = BiTDatasetMapper(_fixed_cfg(64, (1.5, 1.5)), is_train=True)
    whole, left, right = (
        [0, 0, 200, 100],
        [0, 10, 20, 90],
        [180, 10, 200, 90],
    )  # left/right: x 0-9.6 / 86.4-96
    counts = set()
    for seed in range(12):
        np.random.seed(seed)
        out = mapper(_dataset_dict(tmp_path, 100, 200, [whole, left, right]))
        assert tuple(out["image"].shape) == (3, 48, 64)
        boxes = out["instances"].gt_boxes.tensor
        assert torch.equal(boxes[0], torch.tensor([0.0, 0.0, 64.0, 48.0]))  # clipped to the crop
        assert (out["instances"].gt_boxes.area() > 0).all()
        counts.add(len(boxes))
    # Left and right are never both inside a 64 px window: one at least is dropped, sometimes both.
    assert counts == {1, 2}


def test_scale_jitter_stays_in_its_range(tmp_path):
    mapper = BiTDatasetMapper(_fixed_cfg(64, (0.5, 1.0)), is_train=True)
    sides = set()
    for seed in range(8):
        np.random.seed(seed)
        height, width = mapper(_dataset_dict(tmp_path, 100, 100, [[10, 10, 60, 60]]))[
            "image"
        ].shape[1:]
        assert height == width and 32 <= height <= 64
        sides.add(height)
    assert len(sides) > 1


def test_evaluation_resizes_the_long_side_and_the_model_pads_to_a_square(tmp_path):
    cfg = _fixed_cfg(64)
    image = BiTDatasetMapper(cfg, is_train=False)(_dataset_dict(tmp_path, 100, 200, []))["image"]
    scale = min(64 / 100, 64 / 200)  # the TPU code's eval resize: fit the image in SIZE x SIZE
    assert tuple(image.shape[1:]) == (round(100 * scale), round(200 * scale)) == (32, 64)
    model = build_model(cfg).eval()
    batch = model.preprocess_image([{"image": image}])
    assert tuple(batch.tensor.shape[-2:]) == (64, 64) and batch.image_sizes == [(32, 64)]
    assert (batch.tensor[..., 32:, :] == 0).all()  # padded with zeros after normalisation
    with torch.no_grad():
        instances = model([{"image": image, "height": 100, "width": 200}])[0]["instances"]
    assert instances.image_size == (100, 200) and len(instances) > 0  # mapped back from image_sizes
    assert (
        build_model(get_bit_cfg(INSTANT)).backbone.padding_constraints["square_size"] == 0
    )  # multiscale


@pytest.mark.slow
def test_instant_paper_protocol_trains_and_evaluates(tmp_path):
    run = run_tool(
        "train_net.py", "--config-file", PAPER_INSTANT, "OUTPUT_DIR", tmp_path / "out", cwd=tmp_path
    )
    log = run.stdout + run.stderr
    assert (
        "Augmentations used in training: [RandomFlip(), ResizeScale(min_scale=0.8, max_scale=1.2, "
        "target_height=128, target_width=128), FixedSizeCrop(crop_size=(128, 128), pad=False)]"
    ) in log
    assert (
        "Augmentations used in inference: [ResizeShortestEdge(short_edge_length=(128, 128), "
        "max_size=128" in log
    )
    ap = re.search(r"copypaste: AP,AP50,AP75,APs,APm,APl\s*\n.*copypaste: ([-\d.nan]+),", log, re.M)
    assert ap and 0.0 <= float(ap.group(1)) <= 100.0, log[-3000:]
    cfg = get_bit_cfg(PAPER_INSTANT)
    metrics = read_metrics(tmp_path / "out")
    last = [m for m in metrics if "lr" in m][-1]
    # The last iteration is after both drops (STEPS), at lr / 100.
    assert (
        last["iteration"] == cfg.SOLVER.MAX_ITER - 1 and max(cfg.SOLVER.STEPS) <= last["iteration"]
    )
    assert last["lr"] == pytest.approx(cfg.SOLVER.BASE_LR * cfg.SOLVER.GAMMA**2)
