#!/usr/bin/env python
"""Write WebDataset tar shards from an ImageFolder or a label file (original image bytes).

Beside each shard goes an index, ``<shard>.idx`` (sample offsets and labels), so that
training from local shards starts without re-reading every shard's tar headers.

Examples::

    # ImageFolder root/<class>/<image> -> out/train-000000.tar (+ .idx), ... (1000 images per shard)
    python tools/write_shards.py --image-folder /data/imagenet/train --output "out/train-%06d.tar"
    # label file of "relative/path<TAB>label[,label...]" lines (multi-label allowed)
    python tools/write_shards.py --label-file /data/jft/labels.tsv --output "out/jft-%06d.tar" \\
        --max-count 5000
    # index shards written by other tools
    python tools/write_shards.py --index "out/train-{000000..000127}.tar"

Read them back with DATASETS.TRAIN.NAME webdataset and ROOT "out/train-{000000..000127}.tar"
(random access), or stream them: ROOT "pipe:cat out/train-{000000..000127}.tar", a URL pattern,
or "pipe:aws s3 cp s3://bucket/train-{000000..000127}.tar -".
Samples are shuffled into shards with --seed, so each shard holds a mix of classes.
"""

import argparse
import json
import logging
import random
from pathlib import Path

from bitdet.errors import ConfigError
from bitdet.pretrain import ImageFolderDataset, expand_shards, read_label_file, write_shards
from bitdet.pretrain.shards import write_index
from bitdet.tools.cli import user_errors


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--image-folder", help="root/<class name>/<image> (classes sorted by name)")
    src.add_argument("--label-file", help="lines 'relative/path<TAB>label[,label...]'")
    src.add_argument(
        "--index", metavar="PATTERN", help="only write the .idx index of existing shards"
    )
    parser.add_argument("--output", help="shard pattern with a %% field, e.g. out/train-%%06d.tar")
    parser.add_argument("--max-count", type=int, default=1000, help="samples per shard")
    parser.add_argument("--max-size", type=float, default=1e9, help="bytes per shard")
    parser.add_argument(
        "--seed", type=int, default=0, help="shuffle seed (-1: keep the source order)"
    )
    return parser.parse_args(argv)


def main(args) -> list:
    if args.index:
        shards = expand_shards(args.index)
        for shard in shards:
            write_index(shard)
        print(f"indexed {len(shards)} shards: {shards[0]} ... {shards[-1]}")
        return shards
    if not args.output:
        raise ConfigError("pass --output PATTERN (e.g. out/train-%06d.tar)")
    if args.image_folder:
        folder = ImageFolderDataset(args.image_folder)
        samples = list(folder.samples)
        classes = folder.classes
    else:
        samples = [
            (p, labels if len(labels) > 1 else labels[0])
            for p, labels in read_label_file(args.label_file)
        ]
        classes = None
    if "%" not in args.output:
        raise ConfigError(
            f"--output {args.output!r} needs a % field such as %06d for the shard number"
        )
    if args.seed >= 0:
        random.Random(args.seed).shuffle(samples)
    shards = write_shards(samples, args.output, max_count=args.max_count, max_size=args.max_size)
    if classes is not None:  # keep the class names next to the shards
        (Path(args.output).parent / "classes.json").write_text(json.dumps(classes))
    print(f"wrote {len(samples)} samples into {len(shards)} shards: {shards[0]} ... {shards[-1]}")
    return shards


def cli(argv=None):
    """Console-script entry point."""
    logging.basicConfig(level=logging.INFO)
    args = parse_args(argv)
    with user_errors("write_shards"):
        main(args)


if __name__ == "__main__":
    cli()
