#!/usr/bin/env python
"""Export a BiT classifier or detector to TorchScript and/or ONNX, with weight standardization
folded into plain conv kernels; optionally check the files against eager and time them.

Like Detectron2's ``tools/deploy/export_model.py`` (tracing through its ``TracingAdapter``),
plus classifiers. Examples::

    # a classifier by name, with its weights; verified against eager on real photos
    python tools/export_model.py --model BiT-M-R50x1 --weights BiT-M-R50x1.npz \\
        --format torchscript onnx --output output/export/r50x1 --verify
    # a RetinaNet from its config (MODEL.WEIGHTS as for training), verified, then timed
    python tools/export_model.py --config-file quick_schedules/retinanet_bit_instant_test.yaml \\
        --format onnx --output output/export/retinanet --verify --benchmark \\
        MODEL.WEIGHTS output/quick_schedules/retinanet_bit_instant_test/model_final.pth
    # only the BiT + FPN backbone of any meta-architecture
    python tools/export_model.py --config-file COCO-Detection/retinanet_bit_m_R50x1_1x.yaml \\
        --part backbone --format onnx --output output/export/fpn MODEL.WEIGHTS BiT-M-R50x1.npz

Writes ``model.ts`` / ``model.onnx`` and ``export_report.json`` (comparisons, timings) into
``--output``. The head size comes from the weights file (``--num-classes`` that disagrees
needs ``--new-head``). Exit status: 0 on success, 1 when ``--verify`` finds an output beyond
tolerance or one whose agreement proves nothing (non-finite, all zero, the same for every
image, a new head), 2 for a usage error (missing file, unknown model or key).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Dict, List, Optional

import torch

from bitdet.errors import ConfigError
from bitdet.export import (
    DEFAULT_OPSET,
    FORMATS,
    backbone_target,
    classifier_target,
    detector_target,
    export,
    load_runner,
    sample_photos,
    verify,
)
from bitdet.export.formats import check_onnx_size, require_onnx
from bitdet.export.verify import ALL_SAMPLES, DEFAULT_ATOL, DEFAULT_RTOL
from bitdet.tools.cli import USER_ERRORS, program_name, user_error_message
from bitdet.utils.io import write_json

logger = logging.getLogger("bitdet.export")


def _version(package: str) -> Optional[str]:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def build_classifier_target(args):
    """``--model``: a BiT classifier with ``--weights``; samples at ``--image-size``.

    The head size is the weights file's unless ``--num-classes`` says otherwise; a size that
    differs from the file's (0, headless, aside) needs ``--new-head``, and such a head makes
    ``--verify`` fail, as its logits do not come from the weights.
    """
    from bitdet.factory import create_model, head_of
    from bitdet.weights import is_hub_id, load_weights, read_weights

    source = args.weights or (args.model if is_hub_id(args.model) else None)
    weights = read_weights(source) if source else None
    num_classes = args.num_classes
    if weights is not None:
        file_head = head_of(weights)
        if num_classes is None:
            num_classes = file_head
        elif num_classes not in (0, file_head) and not args.new_head:
            raise ConfigError(
                f"--num-classes {num_classes} disagrees with {source}, whose head has "
                f"{file_head or 'no'} classes: leave --num-classes out to export the file's head, "
                f"or pass --new-head for a new {num_classes}-class head"
            )
    model = create_model(
        args.model, num_classes=num_classes, pretrained=False if is_hub_id(args.model) else None
    )
    new_head = ""
    if weights is not None:
        report = load_weights(model, weights, zero_head=args.new_head, variant_option="--model")
        new_head = report.head if report.new_head else ""
    else:
        logger.warning("--weights not given: exporting the randomly initialised %s", args.model)
    return classifier_target(
        model.eval(),
        args.image_size or 224,
        args.batch_size,
        sample_photos(args.sample_image),
        new_head=new_head,
    )


def build_detector_target(args):
    """``--config-file``: a Detectron2 model from the config, ``MODEL.WEIGHTS`` loaded, on the
    CPU."""
    from detectron2.modeling import build_model

    from bitdet.detection import BiTCheckpointer, get_bit_cfg, resolve_config_file

    cfg = get_bit_cfg(resolve_config_file(args.config_file, kind="detection"), args.opts)
    if cfg.MODEL.DEVICE != "cpu":
        logger.info(
            "tracing on the CPU (the config says MODEL.DEVICE %s); the exported graphs run "
            "anywhere",
            cfg.MODEL.DEVICE,
        )
        cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    model = build_model(cfg).eval()
    if cfg.MODEL.WEIGHTS:
        BiTCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    else:
        logger.warning(
            "MODEL.WEIGHTS is empty: exporting a randomly initialised %s",
            cfg.MODEL.META_ARCHITECTURE,
        )
    photos = sample_photos(args.sample_image, cfg.INPUT.FORMAT)
    if args.part == "backbone":
        return backbone_target(model, cfg, photos, args.batch_size, args.image_size)
    return detector_target(model, cfg, photos)


def main(args) -> int:
    """Export, verify, benchmark; returns the exit status."""
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    try:
        if "onnx" in args.format:
            require_onnx(runtime=args.verify or args.benchmark)
        target = build_classifier_target(args) if args.model else build_detector_target(args)
        if "onnx" in args.format:
            check_onnx_size(target)
    except USER_ERRORS as e:  # any other exception is a bug: it keeps its traceback
        print(f"{program_name('export_model')}: error: {user_error_message(e)}", file=sys.stderr)
        return 2
    output = Path(args.output)
    files = {fmt: export(target, fmt, output, opset=args.opset) for fmt in args.format}
    report: Dict = {
        "kind": target.kind,
        "files": {k: str(v) for k, v in files.items()},
        "inputs": target.input_names,
        "outputs": target.output_names,
        "opset": args.opset,
    }
    failed: List[str] = []
    if args.verify:
        report["verify"] = {"atol": args.atol, "rtol": args.rtol, "comparisons": {}}
        for fmt, path in files.items():
            comparisons = verify(
                target, load_runner(path, fmt, threads=args.threads), args.atol, args.rtol
            )
            report["verify"]["comparisons"][fmt] = [vars(c) for c in comparisons]
            for sample in sorted({c.sample for c in comparisons}):
                rows = [c for c in comparisons if c.sample == sample]
                notes = sorted({c.note for c in rows if c.note})
                where = "all samples" if sample == ALL_SAMPLES else f"sample {sample}"
                logger.info(
                    "%s %s: %s%s",
                    fmt,
                    where,
                    ", ".join(f"{c.name} {c.max_abs_diff:.3g}" for c in rows),
                    f" ({'; '.join(notes)})" if notes else "",
                )
            failed += [f"{fmt} {c}" for c in comparisons if not c.ok]
            if target.detections and not any(c.matched for c in comparisons):
                logger.warning(
                    "%s: no sample has a detection above the score threshold (an untrained head?), "
                    "so no box was compared: pass --sample-image files showing objects, or lower "
                    "MODEL.RETINANET.SCORE_THRESH_TEST",
                    fmt,
                )
            worst = max(c.max_abs_diff for c in comparisons)
            compared = sum(c.sample != ALL_SAMPLES for c in comparisons)
            logger.info(
                "%s: %d outputs on %d samples, max abs diff %.3g: %s",
                fmt,
                compared,
                len(target.samples),
                worst,
                "FAIL" if any(not c.ok for c in comparisons) else "ok",
            )
    if args.benchmark:
        from bitdet.benchmark.export import export_throughput, format_throughput

        rows = export_throughput(
            target, files, threads=args.threads, iters=args.iters, repeats=args.repeats
        )
        report["benchmark"] = rows
        report["machine"] = {
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "onnxruntime": _version("onnxruntime"),
        }
        shape = "x".join(map(str, rows[0]["input_shape"]))
        print(
            f"\nCPU inference, input {shape}, {args.threads} thread(s), torch {torch.__version__}\n"
            f"{format_throughput(rows)}"
        )
    write_json(output / "export_report.json", report)
    if failed:
        print(
            f"export_model: verification failed (atol {args.atol:g}, rtol {args.rtol:g}):\n  "
            + "\n  ".join(failed),
            file=sys.stderr,
        )
        return 1
    return 0


def argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="export_model",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--model", metavar="NAME", help="a classifier from bitdet.list_models(), e.g. BiT-M-R50x1"
    )
    source.add_argument(
        "--config-file",
        "--config",
        dest="config_file",
        metavar="FILE",
        help="a detection config (a bare name is looked up in configs/)",
    )
    parser.add_argument(
        "--format", nargs="+", choices=FORMATS, required=True, help="one or both formats"
    )
    parser.add_argument(
        "--output", required=True, metavar="DIR", help="folder for model.ts / model.onnx"
    )
    parser.add_argument(
        "--weights",
        metavar="FILE",
        help="--model: weights in any format bitdet reads (official .npz, bitdet checkpoint, ...)",
    )
    parser.add_argument(
        "--num-classes",
        type=int,
        default=None,
        help="--model: head size (default: the weights file's, else the name's); 0 exports the "
        "trunk",
    )
    parser.add_argument(
        "--new-head",
        action="store_true",
        help="--model: a new zero-initialised head instead of the file's (then --verify fails)",
    )
    parser.add_argument(
        "--part",
        choices=("model", "backbone"),
        default="model",
        help="--config-file: the whole RetinaNet, or the BiT + FPN backbone of any "
        "meta-architecture",
    )
    parser.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="side of the traced input (--model: default 224; backbone: INPUT.MIN_SIZE_TEST)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="batch of the traced input (--model, --part backbone; default 2)",
    )
    parser.add_argument(
        "--sample-image",
        nargs="+",
        default=(),
        metavar="PATH",
        help="images to trace and verify on (default: photographs bundled with scikit-image)",
    )
    parser.add_argument(
        "--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})"
    )
    parser.add_argument(
        "--verify",
        action="store_true",
        help="compare the exported outputs with eager; exit 1 if beyond tolerance",
    )
    parser.add_argument(
        "--atol",
        type=float,
        default=DEFAULT_ATOL,
        help=f"--verify: absolute tolerance (default {DEFAULT_ATOL:g})",
    )
    parser.add_argument(
        "--rtol",
        type=float,
        default=DEFAULT_RTOL,
        help="--verify: tolerance relative to an output's largest value "
        f"(default {DEFAULT_RTOL:g})",
    )
    parser.add_argument(
        "--benchmark",
        action="store_true",
        help="time eager vs the exported files on the traced input",
    )
    parser.add_argument(
        "--iters", type=int, default=5, help="--benchmark: calls per timed block (default 5)"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="--benchmark: rounds of one block per variant, interleaved; the median is reported "
        "(default 3)",
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="CPU threads for torch and ONNX Runtime (default 1)"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed for any randomly initialised weights"
    )
    parser.add_argument(
        "opts",
        nargs=argparse.REMAINDER,
        metavar="KEY VALUE",
        help="--config-file: config overrides, e.g. MODEL.WEIGHTS model_final.pth",
    )
    return parser


def parse_args(argv: Optional[List[str]] = None):
    parser = argument_parser()
    args = parser.parse_args(argv)
    if args.model and args.opts:
        parser.error(f"KEY VALUE overrides need --config-file, got {args.opts} with --model")
    if args.model and args.part != "model":
        parser.error("--part backbone needs --config-file")
    if args.config_file and (args.weights or args.num_classes is not None or args.new_head):
        parser.error(
            "with --config-file, set MODEL.WEIGHTS / MODEL.RETINANET.NUM_CLASSES as KEY VALUE "
            "overrides"
        )
    if args.new_head and not args.weights:
        parser.error("--new-head replaces the head of --weights: give --weights")
    if args.config_file and args.part == "model" and (args.batch_size or args.image_size):
        parser.error(
            "a whole detector takes one image per call at its test size: --batch-size and "
            "--image-size apply to --model and --part backbone"
        )
    args.batch_size = 2 if args.batch_size is None else args.batch_size
    if min(args.batch_size, args.threads, args.iters, args.repeats) < 1:
        parser.error("--batch-size, --threads, --iters and --repeats must be positive")
    return args


def cli(argv: Optional[List[str]] = None) -> None:
    """Console-script entry point."""
    from detectron2.utils.logger import setup_logger

    args = parse_args(argv)
    # Detectron2 scripts a few helpers at import and calls meshgrid the old way: torch 2.14
    # warns about both on every run; they say nothing about the export.
    warnings.filterwarnings(
        "ignore", message=r".*torch\.jit\.script.*is deprecated", category=FutureWarning
    )
    warnings.filterwarnings("ignore", message=r"torch\.meshgrid", category=UserWarning)
    setup_logger(name="bitdet")
    logging.getLogger("bitdet").setLevel(logging.INFO)
    sys.exit(main(args))


if __name__ == "__main__":
    cli()
