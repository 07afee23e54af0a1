#!/usr/bin/env python
"""Write the generated detection dataset: real Fashion-MNIST items on real scikit-image photos.

Examples::

    # the demo sets the configs use, under $DETECTRON2_DATASETS (default ./datasets)
    python tools/generate_detection_data.py --demo bitdet_demo bitdet_demo_mini
    # a custom one
    python tools/generate_detection_data.py --output datasets/fashion_det --num-train 2000 \\
        --num-val 200 --image-size 320 320 --seed 1 --format png
    # print the dataset description (for a README)
    python tools/generate_detection_data.py --describe

Training on a custom folder::

    python tools/train_net.py --config demo/retinanet_bit_tiny_demo.yaml DATASETS.COCO_FORMAT \\
        "[['fd_train','datasets/fashion_det/annotations/instances_train.json',
           'datasets/fashion_det/train'],
          ['fd_val','datasets/fashion_det/annotations/instances_val.json',
           'datasets/fashion_det/val']]" \\
        DATASETS.TRAIN "('fd_train',)" DATASETS.TEST "('fd_val',)"
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import List, Optional, Sequence

from bitdet.data.detection_generate import DATASET_DESCRIPTION, generate_detection_dataset
from bitdet.errors import UnknownNameError
from bitdet.tools.cli import user_errors


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    target = parser.add_mutually_exclusive_group()
    target.add_argument(
        "--output", metavar="DIR", help="folder to write train/, val/, annotations/ into"
    )
    target.add_argument(
        "--demo",
        nargs="+",
        metavar="NAME",
        help="registered demo sets (bitdet_demo, bitdet_demo_mini) under $DETECTRON2_DATASETS",
    )
    target.add_argument(
        "--describe", action="store_true", help="print the dataset description and exit"
    )
    parser.add_argument("--num-train", type=int, default=400, help="training images (default 400)")
    parser.add_argument("--num-val", type=int, default=100, help="validation images (default 100)")
    parser.add_argument("--image-size", type=int, nargs=2, default=(256, 256), metavar=("H", "W"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--format", dest="image_format", choices=("jpg", "png"), default="jpg")
    parser.add_argument("--overwrite", action="store_true", help="regenerate even if complete")
    args = parser.parse_args(argv)
    if not (args.output or args.demo or args.describe):
        parser.error("pass --output DIR, --demo NAME [NAME ...] or --describe")
    return args


def _summary(paths) -> str:
    lines = []
    for split in ("train", "val"):
        with open(paths[f"{split}_json"]) as f:
            data = json.load(f)
        lines.append(
            f"{split}: {len(data['images'])} images, {len(data['annotations'])} boxes -> "
            f"{paths[f'{split}_json']}"
        )
    return "\n".join(lines)


def main(args: argparse.Namespace) -> List[dict]:
    """Generate the requested dataset(s) and print a summary; returns their path dicts."""
    if args.describe:
        print(DATASET_DESCRIPTION)
        return []
    jobs = []
    if args.demo:
        from bitdet.detection.datasets import DEMO_DATASETS, datasets_root

        unknown = [n for n in args.demo if n not in DEMO_DATASETS]
        if unknown:
            raise UnknownNameError(
                f"unknown demo set(s) {unknown}; available: {sorted(DEMO_DATASETS)}"
            )
        jobs = [(datasets_root() / name, DEMO_DATASETS[name]) for name in args.demo]
    else:
        spec = dict(
            num_train=args.num_train,
            num_val=args.num_val,
            image_size=tuple(args.image_size),
            seed=args.seed,
        )
        jobs = [(Path(args.output), spec)]
    results = []
    for folder, spec in jobs:
        start = time.perf_counter()
        paths = generate_detection_dataset(
            folder, image_format=args.image_format, overwrite=args.overwrite, **spec
        )
        print(f"{folder} ({time.perf_counter() - start:.1f} s)\n{_summary(paths)}")
        results.append(paths)
    return results


def cli(argv=None):
    """Console-script entry point."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    with user_errors("generate_detection_data"):
        main(args)


if __name__ == "__main__":
    cli()
