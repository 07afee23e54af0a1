#!/usr/bin/env python
"""Convert BiT weights: official ``.npz`` <-> bitdet PyTorch checkpoint -> Detectron2 checkpoint.

Examples::

    # official npz -> PyTorch (loads with torch.load(weights_only=True) and bitdet.create_model)
    python tools/convert_weights.py BiT-M-R50x1.npz BiT-M-R50x1.pth --to torch
    # a model pretrained with tools/pretrain.py -> the official layout, to share it
    python tools/convert_weights.py output/pretrain/model_final.pth model.npz --to npz
    # -> a file Detectron2's stock DetectionCheckpointer loads (MODEL.WEIGHTS)
    python tools/convert_weights.py BiT-M-R101x3.npz bit_m_r101x3_d2.pth --to detectron2

The architecture (units per stage, stem width, head size) is read from the file.
"""
import argparse
import logging
import sys
from pathlib import Path

from bitdet.checkpoint.convert import DETECTRON2_PREFIX, FORMATS, convert
from bitdet.tools.cli import user_errors

_SUFFIX_FORMAT = {".npz": "npz", ".pth": "torch", ".pt": "torch"}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", help="an official BiT .npz or a PyTorch checkpoint")
    parser.add_argument("dst", help="output file (written atomically)")
    parser.add_argument("--to", choices=FORMATS, help="output format (default: from dst's suffix)")
    parser.add_argument("--prefix", default=DETECTRON2_PREFIX,
                        help=f"parameter prefix for --to detectron2 (default {DETECTRON2_PREFIX!r})")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    fmt = args.to or _SUFFIX_FORMAT.get(Path(args.dst).suffix)
    if fmt is None:
        raise ValueError(f"cannot tell the format of {args.dst} from its suffix; pass --to {{{','.join(FORMATS)}}}")
    arch = convert(args.src, args.dst, fmt, prefix=args.prefix)
    print(f"{args.src} -> {args.dst} ({fmt}): units {list(arch.layers)}, stem {arch.stem_channels} channels, "
          f"head {arch.num_classes or 'none'}")
    return 0


def cli(argv=None):
    """Console-script entry point."""
    with user_errors("convert_weights"):
        sys.exit(main(argv))


if __name__ == "__main__":
    cli()
