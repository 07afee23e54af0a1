"""Config keys of the benchmark: ``add_benchmark_config(cfg)`` (``BENCH.*``)."""

from __future__ import annotations

from typing import Optional, Sequence

# fvcore's CfgNode (the base of Detectron2's): _BASE_ inheritance, no Detectron2 VERSION key.
from fvcore.common.config import CfgNode as CN

from bitdet.config import merge_config
from bitdet.errors import ConfigError
from bitdet.utils.precision import precision_dtype

__all__ = [
    "add_benchmark_config",
    "default_variant",
    "get_benchmark_cfg",
    "variant_levers",
    "LEVERS",
    "TARGET_METRICS",
]

# Levers a variant can combine with "+" ("eager" alone means none of them):
#   cl: channels-last memory format for model and inputs; ws: cached standardized kernels
#   (inference) and standardize-once-per-step (training, over BENCH.ACCUM_STEPS micro-batches);
#   compile: torch.compile (BENCH.COMPILE_MODE); cudagraphs: torch.compile "reduce-overhead";
#   fold: plain convs holding the standardized kernels (the folded deployment form; inference);
#   ckpt-stage / ckpt-unit: activation checkpointing of the BiT trunk per stage / per unit
#   (training; MODEL.ACTIVATION_CHECKPOINTING in the trainers).
LEVERS = ("cl", "ws", "compile", "cudagraphs", "fold", "ckpt-stage", "ckpt-unit")

# Metrics a BENCH.TARGETS entry can set: "<task>_<row field>".
TARGET_METRICS = (
    "train_images_per_sec",
    "train_sec_per_iter",
    "inference_images_per_sec",
    "inference_ms_per_image",
)


def variant_levers(variant: str) -> list:
    """The levers of a ``BENCH.VARIANTS`` entry: ``[]`` for "eager", else its "+"-joined parts."""
    return [] if variant == "eager" else variant.split("+")


def add_benchmark_config(cfg: CN) -> None:
    """Add the ``BENCH`` keys (and ``OUTPUT_DIR``) to ``cfg``."""
    cfg.BENCH = CN()
    # "auto" (CUDA when available, else CPU), "cuda" or "cpu".
    cfg.BENCH.DEVICE = "auto"
    # Models from bitdet.benchmark.suite.SUITE; BiT entries are compared with the peers of
    # their group (e.g. "bit-R50x1" with "timm-resnetv2_50x1_bit" and "torchvision-resnet50").
    cfg.BENCH.MODELS = [
        "bit-R50x1",
        "timm-resnetv2_50x1_bit",
        "torchvision-resnet50",
        "bit-R101x3",
        "timm-resnetv2_101x3_bit",
        "retinanet-bit-R50x1-FPN",
        "retinanet-d2-R50-FPN",
        "retinanet-d2-R50-FPN-GN",
    ]
    # Variants to run for every model: "eager" or levers joined by "+" from LEVERS, e.g.
    # "cl+ws+compile". A lever that does not apply to a model (ws on a non-BiT model,
    # cudagraphs on CPU) makes the row "skipped" with the reason.
    cfg.BENCH.VARIANTS = [
        "eager",
        "cl",
        "cl+ws",
        "cl+compile",
        "cl+ws+compile",
        "cl+compile+cudagraphs",
    ]
    # Variants for the peers ([] = BENCH.VARIANTS), e.g. their default ("eager") only.
    cfg.BENCH.PEER_VARIANTS = []
    # Tasks: "train" (forward, backward, SGD step), "inference", "data" (decode + augment).
    cfg.BENCH.TASKS = ["train", "inference", "data"]
    # Autocast precision: "bf16", "fp16", or "fp32" (no autocast).
    cfg.BENCH.PRECISION = "bf16"
    # torch.compile mode of the "compile" lever: "default" or "max-autotune-no-cudagraphs".
    cfg.BENCH.COMPILE_MODE = "default"
    # Classifier input side (square images) and class count of the head.
    cfg.BENCH.CLS_IMAGE_SIZE = 224
    cfg.BENCH.CLS_NUM_CLASSES = 1000
    # Classifier batch; 0 uses each model's reference batch from the suite (R50x1: 128,
    # R101x3: 32).
    cfg.BENCH.CLS_BATCH_SIZE = 0
    # Detector input (height, width); images are synthetic with random boxes.
    cfg.BENCH.DET_IMAGE_SIZE = [800, 1216]
    # Detector training batch and inference batch (Detectron2 reports inference per image
    # at batch 1).
    cfg.BENCH.DET_BATCH_SIZE = 8
    cfg.BENCH.DET_INFER_BATCH_SIZE = 1
    # Detector classes and ground-truth boxes per synthetic image.
    cfg.BENCH.DET_NUM_CLASSES = 80
    cfg.BENCH.DET_BOXES_PER_IMAGE = 8
    # Micro-batches per optimizer step in training rows (gradient accumulation); the "ws"
    # lever standardizes once per step across them. 1 = no accumulation.
    cfg.BENCH.ACCUM_STEPS = 1
    # CPU runs only: intra-op threads (0 keeps torch's default). On a shared machine more
    # threads than free cores makes every number noise; 1 gives per-core figures.
    cfg.BENCH.CPU_THREADS = 0
    # "wall" (wall-clock time) or "cpu" (this process's CPU time; CPU device only). With one
    # intra-op thread on a machine shared with other jobs, CPU time counts the work done
    # and not the time spent waiting for a core.
    cfg.BENCH.CLOCK = "wall"
    # Untimed iterations first (compilation and autotuning happen here), then REPEATS
    # timed blocks of ITERS iterations; the median block is reported.
    cfg.BENCH.WARMUP_ITERS = 10
    cfg.BENCH.ITERS = 20
    cfg.BENCH.REPEATS = 3
    # Interleave the timed blocks of every row of a task (round-robin over models and
    # variants, REPEATS rounds) instead of timing each row in turn, so that load from other
    # processes on a shared machine hits every row alike and the ratios stay comparable.
    # All rows of a task are then held in memory at once; on CUDA the peak memory becomes
    # the maximum over them.
    cfg.BENCH.INTERLEAVE = False
    # Seed for weights and synthetic inputs.
    cfg.BENCH.SEED = 0
    # JSON results file; relative paths are under OUTPUT_DIR. Rows are written as they
    # finish, and --resume keeps the finished rows of an earlier run with the same settings.
    cfg.BENCH.OUTPUT = "benchmark.json"

    # bitdet's default variant per task: the levers its trainers switch on unless a config
    # says otherwise, on every device (SOLVER.CHANNELS_LAST and SOLVER.COMPILE are off; cached
    # standardized kernels in evaluation, TEST.CACHE_WS). The table names them.
    cfg.BENCH.DEFAULT_VARIANTS = CN()
    cfg.BENCH.DEFAULT_VARIANTS.TRAIN = "eager"
    cfg.BENCH.DEFAULT_VARIANTS.INFERENCE = "ws"
    # Absolute targets, each [model, metric, value] with metric "train_images_per_sec"
    # (higher is better), "train_sec_per_iter" or "inference_ms_per_image" (lower is
    # better), judged on the best variant of the model. They are set for one GPU at a
    # preset's sizes, so they are judged on CUDA only.
    cfg.BENCH.TARGETS = []
    # Throughput ratio targets, each [bitdet model, variant, task, peer model, peer variant,
    # minimum ratio]; variant "default" stands for BENCH.DEFAULT_VARIANTS of the task.
    cfg.BENCH.RATIO_TARGETS = []

    cfg.BENCH.MEMORY = CN()
    # Peak memory of one training step (forward, backward, SGD step), each [model, image side,
    # batch]: one row per entry and BENCH.MEMORY.VARIANTS (bitdet models; peers run "eager").
    # E.g. [["retinanet-bit-R101x3-FPN", 1024, 4]]. Each row runs in a fresh process on CPU
    # (its peak resident memory) and after a reset of the peak statistics on CUDA.
    cfg.BENCH.MEMORY.ROWS = []
    # Variants of every memory row, e.g. without and with activation checkpointing.
    cfg.BENCH.MEMORY.VARIANTS = ["eager", "ckpt-stage", "ckpt-unit"]
    # Timed iterations after one untimed one (its seconds per iteration show what the
    # memory costs in time).
    cfg.BENCH.MEMORY.ITERS = 2

    cfg.BENCH.DATA = CN()
    # Loaders to measure (bitdet.benchmark.data.LOADERS): "imagefolder" and "shards"
    # (pretraining datasets: PIL decode, Inception crop 224, flip, [-1, 1]), "hyperrule"
    # (fine-tuning: square resize, random crop, flip), "decode_jpeg" (torchvision's tensor
    # route, for comparison) and "detection" (Detectron2 DatasetMapper, BiT RetinaNet augs).
    cfg.BENCH.DATA.LOADERS = ["imagefolder", "shards", "hyperrule", "decode_jpeg", "detection"]
    # Distinct JPEG images (made from scikit-image's photos) and images decoded per timing.
    cfg.BENCH.DATA.NUM_IMAGES = 16
    cfg.BENCH.DATA.ITERS = 64
    # JPEG side lengths (height, width) the photos are resized to before encoding
    # (ImageNet-like for the classification loaders, COCO-like for detection).
    cfg.BENCH.DATA.PRETRAIN_IMAGE_SIZE = [375, 500]
    cfg.BENCH.DATA.DETECTION_IMAGE_SIZE = [480, 640]
    # Images per second one GPU consumes, per loader, each [loader, img/s]: the table states
    # how many CPU cores at the measured per-core rate keep it fed. Defaults from the H100
    # targets of benchmark/h100.yaml (BENCH.TARGETS): R50x1's training rate at 224 px for the
    # pretraining loaders, the same GPU time at HyperRule's 384 px crop (x (224/384)^2), and
    # RetinaNet's batch of 8 per target iteration time for detection.
    cfg.BENCH.DATA.GPU_IMAGES_PER_SEC = [
        ["imagefolder", 4300.0],
        ["shards", 4300.0],
        ["decode_jpeg", 4300.0],
        ["hyperrule", 1460.0],
        ["detection", 69.0],
    ]
    # Also time torchvision.io.decode_jpeg on the GPU (nvJPEG), batched, when CUDA is used.
    cfg.BENCH.DATA.GPU_DECODE = True

    # Folder for the JSON results and the log.
    cfg.OUTPUT_DIR = "output/benchmark"


def get_benchmark_cfg(config_file: Optional[str] = None, opts: Sequence[str] = ()) -> CN:
    """Benchmark defaults merged with a config file (a path, or a preset such as
    ``benchmark/h100.yaml``: :func:`bitdet.config.resolve_config_file`) and overrides."""
    cfg = CN()
    add_benchmark_config(cfg)
    merge_config(cfg, config_file, opts, kind="benchmark")
    bad = [
        v
        for v in cfg.BENCH.VARIANTS + cfg.BENCH.PEER_VARIANTS + cfg.BENCH.MEMORY.VARIANTS
        if set(variant_levers(v)) - set(LEVERS)
    ]
    if bad:
        raise ConfigError(
            f"BENCH.VARIANTS {bad}: use 'eager' or levers from {LEVERS} joined by '+'"
        )
    if cfg.BENCH.CLOCK not in ("wall", "cpu"):
        raise ConfigError(f"BENCH.CLOCK {cfg.BENCH.CLOCK!r}: expected 'wall' or 'cpu'")
    unknown_tasks = set(cfg.BENCH.TASKS) - {"train", "inference", "data"}
    if unknown_tasks:
        raise ConfigError(
            f"BENCH.TASKS {sorted(unknown_tasks)}: choose from train, inference, data"
        )
    precision_dtype(cfg.BENCH.PRECISION, "BENCH.PRECISION")
    for task, variant in cfg.BENCH.DEFAULT_VARIANTS.items():
        if set(variant_levers(variant)) - set(LEVERS):
            raise ConfigError(
                f"BENCH.DEFAULT_VARIANTS.{task} {variant!r}: use 'eager' or levers from {LEVERS}"
            )
    for target in cfg.BENCH.TARGETS:
        if len(target) != 3 or target[1] not in TARGET_METRICS:
            raise ConfigError(
                f"BENCH.TARGETS entry {target!r}: expected [model, metric, value], "
                f"metric in {TARGET_METRICS}"
            )
    for target in cfg.BENCH.RATIO_TARGETS:
        if len(target) != 6 or target[2] not in ("train", "inference"):
            raise ConfigError(
                f"BENCH.RATIO_TARGETS entry {target!r}: expected [model, variant, task, peer, "
                "peer variant, minimum ratio] with task 'train' or 'inference'"
            )
    for row in cfg.BENCH.MEMORY.ROWS:
        if len(row) != 3 or not all(isinstance(v, int) and v > 0 for v in row[1:]):
            raise ConfigError(
                f"BENCH.MEMORY.ROWS entry {row!r}: expected [model, image side, batch] "
                "with positive sizes"
            )
    if cfg.BENCH.MEMORY.ITERS < 1:
        raise ConfigError(f"BENCH.MEMORY.ITERS {cfg.BENCH.MEMORY.ITERS}: expected at least 1")
    return cfg


def default_variant(cfg: CN, task: str) -> str:
    """bitdet's default variant for ``task`` ("train" / "inference"), from
    ``BENCH.DEFAULT_VARIANTS``."""
    return cfg.BENCH.DEFAULT_VARIANTS[task.upper()]
