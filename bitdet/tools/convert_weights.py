#!/usr/bin/env python
"""Convert BiT weights between formats: official ``.npz``, bitdet, Detectron2, timm, the
authors' bit_pytorch.

The input may be any format bitdet reads (the format is sniffed from the content): an
official ``.npz``, a bitdet / Detectron2 checkpoint, a timm ``resnetv2_*_bit`` state dict
(``.pth``, ``.bin``, ``.safetensors``), the authors' ``bit_pytorch`` checkpoint, a transformers
``BitForImageClassification`` file, or an ``hf-hub:`` id.

Examples::

    # official npz -> PyTorch (loads with torch.load(weights_only=True) and bitdet.create_model)
    bitdet-convert BiT-M-R50x1.npz BiT-M-R50x1.pth --to torch
    # a model pretrained with bitdet-pretrain -> the official layout, to share it
    bitdet-convert output/pretrain/model_final.pth model.npz --to npz
    # -> a file Detectron2's stock DetectionCheckpointer loads (MODEL.WEIGHTS)
    bitdet-convert BiT-M-R101x3.npz bit_m_r101x3_d2.pth --to detectron2
    # weights trained here -> timm: timm.create_model("resnetv2_50x1_bit", pretrained=True,
    #     pretrained_cfg_overlay=dict(file="resnetv2_50x1_bit.safetensors"), num_classes=...)
    bitdet-convert model_final.pth resnetv2_50x1_bit.safetensors --to timm
    # a hub checkpoint -> the official npz layout
    bitdet-convert hf-hub:timm/resnetv2_50x1_bit.goog_in21k BiT-M-R50x1-timm.npz

The architecture (units per stage, stem width, head size) is read from the file; the summary
line describes the file written, read back (a Detectron2 file has no head).
"""

import argparse
import logging
import sys
from pathlib import Path

from bitdet.errors import ConfigError
from bitdet.tools.cli import user_errors
from bitdet.weights.convert import DETECTRON2_PREFIX, FORMATS, convert

_SUFFIX_FORMAT = {".npz": "npz", ".pth": "torch", ".pt": "torch"}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("src", help="weights in any format bitdet reads, or an hf-hub: id")
    parser.add_argument("dst", help="output file (written atomically)")
    parser.add_argument("--to", choices=FORMATS, help="output format (default: from dst's suffix)")
    parser.add_argument(
        "--prefix",
        default=DETECTRON2_PREFIX,
        help=f"parameter prefix for --to detectron2 (default {DETECTRON2_PREFIX!r})",
    )
    return parser.parse_args(argv)


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    fmt = args.to or _SUFFIX_FORMAT.get(Path(args.dst).suffix)
    if fmt is None:
        raise ConfigError(
            f"cannot tell the format of {args.dst} from its suffix; pass --to "
            f"{{{','.join(FORMATS)}}}"
        )
    written = convert(args.src, args.dst, fmt, prefix=args.prefix)  # read back from dst
    print(
        f"{args.src} -> {args.dst} ({fmt}): units {list(written.layers)}, stem "
        f"{written.stem_channels} channels, head {written.num_classes or 'none'}"
    )
    return 0


def cli(argv=None):
    """Console-script entry point."""
    with user_errors("convert_weights"):
        sys.exit(main(argv))


if __name__ == "__main__":
    cli()
