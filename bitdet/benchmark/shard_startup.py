"""Start-up time of random access to local shards, with and without their ``.idx`` indexes.

``python -m bitdet.benchmark.shard_startup FOLDER [--shards 100] [--samples 1000]`` writes one
shard of small JPEGs, copies it ``--shards`` times (with its index) into FOLDER, and prints the
best of three :class:`bitdet.pretrain.ShardDataset` constructions with and without indexes.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path
from typing import Dict

from PIL import Image
from skimage import data as skdata

from bitdet.pretrain.shards import INDEX_SUFFIX, ShardDataset, write_shards

__all__ = ["measure_startup"]


def measure_startup(
    folder: Path, shards: int = 100, samples: int = 1000, repeats: int = 3
) -> Dict[str, float]:
    """Seconds to open ``shards`` shards of ``samples`` samples:
    ``{"with_index", "without_index"}``."""
    folder.mkdir(parents=True, exist_ok=True)
    image = folder / "image.jpg"
    Image.fromarray(skdata.astronaut()).resize((32, 32)).save(image)
    write_shards(
        [(str(image), i % 10) for i in range(samples)],
        str(folder / "one-%06d.tar"),
        max_count=samples,
    )
    for i in range(shards):
        for ext in (".tar", ".tar" + INDEX_SUFFIX):
            shutil.copy(folder / f"one-000000{ext}", folder / f"train-{i:06d}{ext}")
    pattern = str(folder / f"train-{{000000..{shards - 1:06d}}}.tar")

    def best() -> float:
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            ShardDataset(pattern)
            times.append(time.perf_counter() - start)
        return min(times)

    result = {"with_index": best()}
    for path in folder.glob("train-*" + INDEX_SUFFIX):
        path.unlink()
    result["without_index"] = best()
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("folder", type=Path)
    parser.add_argument("--shards", type=int, default=100)
    parser.add_argument("--samples", type=int, default=1000, help="samples per shard")
    args = parser.parse_args(argv)
    result = measure_startup(args.folder, args.shards, args.samples)
    for key, seconds in result.items():
        print(
            f"{key.replace('_', ' ')}: {seconds:.3f} s to open {args.shards} shards "
            f"x {args.samples} samples"
        )


if __name__ == "__main__":
    main()
