#!/usr/bin/env python
"""Fetch the tests' real COCO-format annotation fixtures from published source distributions.

Two small, real, human-made COCO files are published inside Python package sdists, which
``pip`` can fetch where the network allows (they cannot be committed here):

- ``labelme_voc``: labelme 6.3.1, ``examples/instance_segmentation/data_dataset_coco``:
  3 PASCAL VOC photos, 12 instances with polygons, 20 VOC classes + ``_background_``.
- ``sahi_terrain``: sahi 0.12.8, ``demo/demo_data``: one aerial photo, 5 car boxes.

:func:`fetch_fixture` runs ``pip download --no-deps --no-binary :all: <pkg>==<version>`` into
the cache (``$BITDET_CACHE/fixtures``, default ``~/.cache/bitdet/fixtures``), checks the
archive's sha256, extracts the json and the images it names, and writes ``instances.json``:
the same annotations after :func:`normalize_coco`, which fixes what the originals get wrong for
COCO tools (documented per fix there). The original json is kept next to it.

Usage (``tools/setup_env.sh`` runs it; the tests call :func:`fetch_fixture` where it could not)::

    python tools/fetch_test_fixtures.py [--cache-dir DIR]

Exit status 0 when every fixture is in the cache, 2 when a package cannot be fetched (the
set-up warns, the tests skip with that reason), 1 on an integrity failure (the set-up fails).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import logging
import os
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from bitdet.utils.io import atomic_write, default_cache_dir

__all__ = [
    "FIXTURES",
    "CocoFixture",
    "FixtureIntegrityError",
    "FixtureSource",
    "FixtureUnavailableError",
    "fetch_fixture",
    "fetch_fixtures",
    "normalize_coco",
]

logger = logging.getLogger(__name__)


class FixtureUnavailableError(RuntimeError):
    """The fixture's package could not be fetched (no network, no pip, no registry access)."""


class FixtureIntegrityError(RuntimeError):
    """The fetched or cached archive is not the pinned one: wrong sha256, or a member is missing.

    Unlike :class:`FixtureUnavailableError` this is never a reason to skip: the data the
    tests would read is not the data they were written for.
    """


@dataclass(frozen=True)
class FixtureSource:
    """Where a fixture lives: a pinned sdist and the json's path inside it.

    Attributes:
        package: PyPI name.
        version: pinned version.
        sha256: of the sdist archive, so a republished file is noticed.
        json_path: the COCO json, relative to the archive's top folder.
        image_root: folder the json's ``file_name`` entries are relative to.
    """

    package: str
    version: str
    sha256: str
    json_path: str
    image_root: str


@dataclass(frozen=True)
class CocoFixture:
    """A fetched fixture: the normalised json, the image folder, the untouched original json."""

    name: str
    json_file: Path
    image_root: Path
    original_json: Path


FIXTURES: Dict[str, FixtureSource] = {
    "labelme_voc": FixtureSource(
        "labelme",
        "6.3.1",
        "2947e0d8341a92faa7b3ee50cf4b672f838051c6bf24892526e95b64fd3a707e",
        "examples/instance_segmentation/data_dataset_coco/annotations.json",
        "examples/instance_segmentation/data_dataset_coco",
    ),
    "sahi_terrain": FixtureSource(
        "sahi",
        "0.12.8",
        "f2074b3b3aa0f655dbdd69fbb1f1a0b985220f5fb3d920a4206eba160d37028a",
        "demo/demo_data/terrain2_coco.json",
        "demo/demo_data",
    ),
}

# Category names that label "no object" in semantic-segmentation exports (labelme writes
# class 0 as "_background_"). They have no instances; as a detection class they would only
# waste a logit and an AP entry, so normalize_coco drops them.
BACKGROUND_NAMES = ("_background_", "__background__", "background")


def _polygon_area(segmentation) -> Optional[float]:
    if not isinstance(segmentation, list) or not segmentation:
        return None
    total = 0.0
    for poly in segmentation:
        xs, ys = poly[0::2], poly[1::2]
        total += abs(sum(xs[i] * ys[i - 1] - xs[i - 1] * ys[i] for i in range(len(xs)))) / 2.0
    return total


def normalize_coco(data: Dict) -> Tuple[Dict, List[str]]:
    """Fix COCO json quirks that break Detectron2 / pycocotools; returns ``(fixed copy, notes)``.

    - Background categories (``_background_``) are removed, with any annotation using them:
      Detectron2 would otherwise make them a trainable class.
    - Image and annotation ids are shifted to start at 1 when some are 0: pycocotools'
      COCOeval stores matches as annotation ids with 0 meaning "unmatched", so a ground-truth
      box with id 0 can never be matched and AP drops.
    - An ``area`` larger than its box (impossible for a segment inside the box; sahi writes
      the image area) is replaced by the polygon area, or the box area without polygons, so
      COCO's small/medium/large breakdown is right.
    """
    data = copy.deepcopy(data)
    notes: List[str] = []
    background = {
        c["id"] for c in data.get("categories", []) if c.get("name", "").lower() in BACKGROUND_NAMES
    }
    if background:
        data["categories"] = [c for c in data["categories"] if c["id"] not in background]
        before = len(data["annotations"])
        data["annotations"] = [a for a in data["annotations"] if a["category_id"] not in background]
        noun = "category" if len(background) == 1 else "categories"
        notes.append(
            f"dropped background {noun} {sorted(background)} "
            f"({before - len(data['annotations'])} annotations used them)"
        )
    images, anns = data.get("images", []), data.get("annotations", [])
    if images and min(im["id"] for im in images) < 1:
        shift = 1 - min(im["id"] for im in images)
        for im in images:
            im["id"] += shift
        for a in anns:
            a["image_id"] += shift
        notes.append(f"image ids shifted by {shift} to start at 1")
    if anns and min(a["id"] for a in anns) < 1:
        shift = 1 - min(a["id"] for a in anns)
        for a in anns:
            a["id"] += shift
        notes.append(f"annotation ids shifted by {shift} to start at 1")
    fixed_area = 0
    for a in anns:
        box_area = float(a["bbox"][2] * a["bbox"][3])
        if a.get("area") is None or a["area"] > box_area * 1.0001:
            a["area"] = _polygon_area(a.get("segmentation")) or box_area
            fixed_area += 1
    if fixed_area:
        notes.append(f"{fixed_area} areas larger than their box replaced by the segment/box area")
    data["info"] = dict(data.get("info") or {}, bitdet_normalized=notes)
    return data, notes


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _download_sdist(source: FixtureSource, folder: Path, timeout: float) -> Path:
    archive = folder / f"{source.package}-{source.version}.tar.gz"
    if archive.is_file():
        found = _sha256(archive)
        if found != source.sha256:
            raise FixtureIntegrityError(
                f"{archive}: sha256 {found}, expected {source.sha256}; "
                "delete the file to fetch it again"
            )
        return archive
    folder.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-binary",
        ":all:",
        "--disable-pip-version-check",
        "-d",
        str(folder),
        f"{source.package}=={source.version}",
    ]
    logger.info("fetching the %s %s sdist: %s", source.package, source.version, " ".join(cmd))
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise FixtureUnavailableError(f"`{' '.join(cmd)}` failed: {e}") from e
    if result.returncode != 0 or not archive.is_file():
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise FixtureUnavailableError(
            f"`{' '.join(cmd)}` exited with {result.returncode} (no network or no PyPI access?): "
            f"{' / '.join(tail)}"
        )
    found = _sha256(archive)
    if found != source.sha256:
        raise FixtureIntegrityError(
            f"{archive}: sha256 {found}, expected {source.sha256} (archive changed upstream?)"
        )
    return archive


def _extract(tar: tarfile.TarFile, member: str, target: Path) -> None:
    try:
        fileobj = tar.extractfile(member)
    except KeyError:
        fileobj = None
    if fileobj is None:
        raise FixtureIntegrityError(f"{tar.name} has no file {member}")
    with fileobj, atomic_write(target) as out:
        out.write(fileobj.read())


def fetch_fixture(
    name: str, cache_dir: Optional[os.PathLike] = None, timeout: float = 600.0
) -> CocoFixture:
    """Fetch (once) and extract one fixture of :data:`FIXTURES`.

    Args:
        name: ``"labelme_voc"`` or ``"sahi_terrain"``.
        cache_dir: cache root; default ``$BITDET_CACHE/fixtures`` (``~/.cache/bitdet/fixtures``).
        timeout: seconds allowed for ``pip download``.

    Returns:
        The fixture's paths; register them with
        ``bitdet.detection.register_coco_format(name, f.json_file, f.image_root)``.

    Raises:
        KeyError: unknown name.
        FixtureUnavailableError: the sdist could not be downloaded.
        FixtureIntegrityError: the sdist does not match its sha256 or lacks a file.
    """
    if name not in FIXTURES:
        raise KeyError(f"unknown fixture {name!r}; available: {sorted(FIXTURES)}")
    source = FIXTURES[name]
    root = Path(cache_dir) if cache_dir else default_cache_dir() / "fixtures"
    folder = root / name
    fixture = CocoFixture(
        name, folder / "instances.json", folder / "images", folder / "original.json"
    )
    if fixture.json_file.is_file():  # written last: its presence means complete
        return fixture
    archive = _download_sdist(source, root / "sdists", timeout)
    top = f"{source.package}-{source.version}"
    # Opened once: each open of a .tar.gz decompresses from the start.
    with tarfile.open(archive) as tar:
        _extract(tar, f"{top}/{source.json_path}", fixture.original_json)
        with open(fixture.original_json) as f:
            data = json.load(f)
        for image in data["images"]:
            _extract(
                tar,
                f"{top}/{source.image_root}/{image['file_name']}",
                fixture.image_root / image["file_name"],
            )
    fixed, notes = normalize_coco(data)
    for note in notes:
        logger.info("fixture %s: %s", name, note)
    with atomic_write(fixture.json_file, "w") as f:
        json.dump(fixed, f, indent=1)
    return fixture


def fetch_fixtures(cache_dir: Optional[os.PathLike] = None) -> Dict[str, CocoFixture]:
    """Fetch every fixture in :data:`FIXTURES`."""
    return {name: fetch_fixture(name, cache_dir) for name in FIXTURES}


def main(argv: Optional[List[str]] = None) -> int:
    """Fetch every fixture and print its paths; returns the exit status the usage above gives."""
    parser = argparse.ArgumentParser(
        prog="fetch_test_fixtures.py",
        description="Fetch the tests' real COCO-format fixtures (labelme, sahi sdists) into the "
        "cache.",
    )
    parser.add_argument(
        "--cache-dir", help="cache root (default: fixtures/ in $BITDET_CACHE or ~/.cache/bitdet)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    try:
        fixtures = fetch_fixtures(args.cache_dir)
    except FixtureUnavailableError as e:
        print(f"COCO fixtures cannot be fetched: {e}", file=sys.stderr)
        return 2
    except FixtureIntegrityError as e:
        print(f"COCO fixture integrity failure: {e}", file=sys.stderr)
        return 1
    for fixture in fixtures.values():
        print(f"{fixture.name}: {fixture.json_file} ({fixture.image_root})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
