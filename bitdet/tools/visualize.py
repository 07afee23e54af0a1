#!/usr/bin/env python
"""Draw a detector's predictions, or a dataset's ground truth, into PNG files.

Examples::

    # predictions of a trained model on files and folders (boxes, class names, scores)
    python tools/visualize.py --config demo/retinanet_bit_tiny_demo.yaml \\
        --input photo.jpg more_photos/ --output vis/ --confidence-threshold 0.4 \\
        MODEL.WEIGHTS output/demo/retinanet_bit_tiny_demo/model_final.pth
    # ground truth of a registered dataset (the config supplies DATASETS.COCO_FORMAT, if any)
    python tools/visualize.py --config demo/retinanet_bit_tiny_demo.yaml \\
        --dataset bitdet_demo_val --output vis_gt/ --max-images 20
    # ... or of chosen images (COCO image ids)
    python tools/visualize.py --config demo/retinanet_bit_tiny_demo.yaml \\
        --dataset bitdet_demo_val --output vis_gt/ --image-ids 3 17

Class names come from ``--metadata-from`` (default: the config's first ``DATASETS.TEST``).
Outputs have the input image's size and the input's file name with a ``.png`` suffix. With
``--num-gpus N`` each process draws every N-th image. Unreadable images are skipped, named in
the log and counted at the end. Configs that say ``MODEL.DEVICE cuda`` need
``MODEL.DEVICE cpu`` on a machine without CUDA.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

import cv2
import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from detectron2.utils.visualizer import Visualizer

from bitdet.config import check_device
from bitdet.data.images import DecodeStats, load_image
from bitdet.detection import BiTPredictor, get_bit_cfg, prepare_datasets, resolve_config_file
from bitdet.errors import ConfigError
from bitdet.tools.cli import argument_parser, run_launched
from bitdet.utils.io import atomic_write

logger = logging.getLogger("bitdet.visualize")

# KEY VALUE overrides shown in --help (keys of the detection config).
OVERRIDES_EXAMPLE = "MODEL.WEIGHTS model_final.pth MODEL.DEVICE cpu"

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def setup(args):
    """Config from file + overrides with the score threshold applied, frozen; logging set up."""
    cfg = get_bit_cfg(resolve_config_file(args.config_file, kind="detection"), args.opts)
    # Keep everything the model scores above the threshold; drawing filters again, so the
    # threshold holds for any meta-architecture.
    cfg.MODEL.RETINANET.SCORE_THRESH_TEST = args.confidence_threshold
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = args.confidence_threshold
    check_device(cfg.MODEL.DEVICE, "MODEL.DEVICE")
    cfg.freeze()
    setup_logger(name="bitdet", distributed_rank=comm.get_rank(), color=sys.stdout.isatty())
    logging.getLogger("bitdet").setLevel(logging.INFO)
    return cfg


def list_images(inputs: Iterable[str]) -> List[Path]:
    """Image files named in ``inputs``; folders are searched (not recursively), sorted.

    Raises:
        FileNotFoundError: an input does not exist or a folder holds no images.
    """
    files: List[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise FileNotFoundError(
                    f"--input {path}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder"
                )
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"--input {path}: no such file or folder")
    return files


def _metadata(cfg, name: Optional[str]):
    """Metadata with ``thing_classes`` of dataset ``name``, loading it if needed (names only)."""
    if not name:
        return MetadataCatalog.get("__unnamed__")
    try:
        prepare_datasets(cfg, [name])
        DatasetCatalog.get(name)  # COCO-format sets fill in thing_classes when loaded
    except (KeyError, FileNotFoundError) as e:
        logger.warning("no class names from %r (%s); labels show class indices", name, e)
        return MetadataCatalog.get("__unnamed__")
    return MetadataCatalog.get(name)


def _write_png(path: Path, rgb: np.ndarray) -> None:
    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(rgb[:, :, ::-1]))
    if not ok:
        raise RuntimeError(f"could not encode {path}")
    with atomic_write(path) as f:
        f.write(encoded.tobytes())


def _output_name(source: str, used: Dict[str, int]) -> str:
    stem = Path(source).stem
    count = used.get(stem, 0)
    used[stem] = count + 1
    return f"{stem}.png" if count == 0 else f"{stem}_{count}.png"


def _read_rgb(path: str, stats: DecodeStats) -> Optional[np.ndarray]:
    """An upright 8-bit RGB array, or None for an unreadable file (logged and counted in
    ``stats``)."""
    image = load_image(path, stats=stats)
    return None if image is None else np.asarray(image)


def _report_skipped(stats: DecodeStats, drawn: int, output: Path) -> None:
    if stats.skipped:
        logger.warning(
            "drew %d images into %s; skipped %d unreadable (%s)",
            drawn,
            output,
            stats.skipped,
            ", ".join(f"{k}: {v}" for k, v in sorted(stats.reasons.items())),
        )


def draw_predictions(
    cfg, files: List[Path], output: Path, threshold: float, metadata
) -> List[Path]:
    """Run the model on ``files`` and write one PNG each into ``output``; returns the PNG paths.

    Unreadable files are skipped, logged and counted; the rest are drawn.
    """
    predictor = BiTPredictor(cfg)
    used: Dict[str, int] = {}
    names = [_output_name(str(f), used) for f in files]
    written = []
    stats = DecodeStats()
    for path, name in list(zip(files, names))[comm.get_rank() :: comm.get_world_size()]:
        rgb = _read_rgb(str(path), stats)
        if rgb is None:
            continue
        instances = predictor(rgb[:, :, ::-1])["instances"].to("cpu")  # it takes BGR
        instances = instances[instances.scores >= threshold]
        vis = Visualizer(rgb, metadata).draw_instance_predictions(instances)
        _write_png(output / name, vis.get_image())
        logger.info(
            "%s: %d detections >= %.2f -> %s", path, len(instances), threshold, output / name
        )
        written.append(output / name)
    _report_skipped(stats, len(written), output)
    return written


def draw_ground_truth(
    name: str, output: Path, max_images: Optional[int], image_ids: Optional[Sequence[int]] = None
) -> List[Path]:
    """Draw the ground truth of registered dataset ``name`` (only ``image_ids``, if given) into
    ``output``; returns the PNG paths."""
    dicts = DatasetCatalog.get(name)
    if image_ids:
        wanted = set(image_ids)
        missing = wanted - {d["image_id"] for d in dicts}
        if missing:
            raise ConfigError(f"{name} has no image id(s) {sorted(missing)}")
        dicts = [d for d in dicts if d["image_id"] in wanted]
    dicts = dicts[:max_images]
    metadata = MetadataCatalog.get(name)
    used: Dict[str, int] = {}
    names = [_output_name(d["file_name"], used) for d in dicts]
    written = []
    stats = DecodeStats()
    for record, out_name in list(zip(dicts, names))[comm.get_rank() :: comm.get_world_size()]:
        rgb = _read_rgb(record["file_name"], stats)
        if rgb is None:
            continue
        vis = Visualizer(rgb, metadata).draw_dataset_dict(record)
        _write_png(output / out_name, vis.get_image())
        written.append(output / out_name)
    logger.info("%s: drew %d images into %s", name, len(written), output)
    _report_skipped(stats, len(written), output)
    return written


def main(args) -> List[Path]:
    cfg = setup(args)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    if args.dataset:
        prepare_datasets(cfg, [args.dataset])
        return draw_ground_truth(args.dataset, output, args.max_images, args.image_ids)
    metadata_name = (
        args.metadata_from if args.metadata_from is not None else (cfg.DATASETS.TEST or [None])[0]
    )
    metadata = _metadata(cfg, metadata_name)
    return draw_predictions(
        cfg, list_images(args.input), output, args.confidence_threshold, metadata
    )


def parse_args(argv=None):
    parser = argument_parser(
        __doc__, overrides_example=OVERRIDES_EXAMPLE, eval_only=False, resume=False
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--input", nargs="+", metavar="PATH", help="image files and/or folders to run the model on"
    )
    source.add_argument(
        "--dataset", metavar="NAME", help="draw the ground truth of this registered dataset"
    )
    parser.add_argument("--output", required=True, metavar="DIR", help="folder for the PNG files")
    parser.add_argument(
        "--confidence-threshold", type=float, default=0.5, help="minimum score drawn (default 0.5)"
    )
    parser.add_argument(
        "--metadata-from", metavar="NAME", help="dataset whose class names label boxes"
    )
    parser.add_argument(
        "--max-images", type=int, default=None, help="--dataset: draw at most this many"
    )
    parser.add_argument(
        "--image-ids", type=int, nargs="+", metavar="ID", help="--dataset: draw only these images"
    )
    args = parser.parse_args(argv)
    if not (args.input or args.dataset):
        parser.error("pass --input PATH [PATH ...] or --dataset NAME")
    if args.image_ids and not args.dataset:
        parser.error("--image-ids selects images of --dataset NAME")
    return args


def cli(argv=None):
    """Console-script entry point."""
    run_launched("visualize", main, parse_args(argv))


if __name__ == "__main__":
    cli()
