"""Dataset registration for detection: COCO-2017, any COCO-format json, the generated demo set.

COCO-2017 is registered by Detectron2 itself (``coco_2017_train`` / ``coco_2017_val``) under
``$DETECTRON2_DATASETS`` (default ``./datasets``) in its standard layout::

    coco/annotations/instances_{train,val}2017.json
    coco/{train,val}2017/*.jpg

The generated demo sets (``bitdet_demo_*``: Fashion-MNIST items on real photos, see
:mod:`bitdet.data.detection_generate`) are registered when :mod:`bitdet.detection` is
imported and written on first use.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import Dict, Iterable, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils import comm
from filelock import FileLock

from bitdet.detection.annotations import load_coco_format
from bitdet.errors import ConfigError, UnknownNameError

__all__ = [
    "DEMO_DATASETS",
    "datasets_root",
    "register_coco_format",
    "register_demo_datasets",
    "prepare_datasets",
]

logger = logging.getLogger(__name__)

# name -> generator arguments (folder under the datasets root, images, size).
DEMO_DATASETS: Dict[str, Dict] = {
    "bitdet_demo": dict(num_train=400, num_val=100, image_size=(256, 256), seed=0),
    "bitdet_demo_mini": dict(num_train=16, num_val=8, image_size=(128, 128), seed=0),
}


def datasets_root() -> Path:
    """``$DETECTRON2_DATASETS``, default ``datasets`` (Detectron2's convention)."""
    return Path(os.environ.get("DETECTRON2_DATASETS", "datasets"))


def register_coco_format(name: str, json_file: os.PathLike, image_root: os.PathLike) -> None:
    """Register a COCO-format dataset (json + image folder) under ``name``; idempotent.

    Loading validates the file and filters boxes as :mod:`bitdet.detection.annotations` documents.
    """
    if name in DatasetCatalog.list():
        meta = MetadataCatalog.get(name)
        if (meta.get("json_file"), meta.get("image_root")) == (str(json_file), str(image_root)):
            return
        raise ConfigError(
            f"dataset {name!r} is already registered with other files ({meta.get('json_file')})"
        )
    json_file, image_root = str(json_file), str(image_root)
    DatasetCatalog.register(name, lambda: load_coco_format(json_file, image_root, name))
    MetadataCatalog.get(name).set(json_file=json_file, image_root=image_root, evaluator_type="coco")


def _demo_paths(root: Path, base: str, split: str) -> Tuple[Path, Path]:
    folder = root / base
    return folder / "annotations" / f"instances_{split}.json", folder / split


def _load_demo(base: str, name: str, json_file: str, image_root: str):
    """A demo split's records, generating the set on first use (idempotent)."""
    from bitdet.data.detection_generate import generate_detection_dataset

    folder = Path(json_file).parent.parent
    if not Path(json_file).is_file():
        logger.info("generating the %s dataset in %s", base, folder)
    generate_detection_dataset(folder, **DEMO_DATASETS[base])
    return load_coco_format(json_file, image_root, name)


def register_demo_datasets(root: os.PathLike | None = None) -> None:
    """Register ``bitdet_demo{,_mini}_{train,val}`` under ``root`` (default :func:`datasets_root`).

    Runs when :mod:`bitdet.detection` is imported, so Detectron2's stock ``DatasetCatalog`` and
    ``DefaultTrainer`` find them; the images are generated on first use. Calling it again with
    another root (or after ``$DETECTRON2_DATASETS`` changed) moves the registration there.
    """
    root = Path(root) if root else datasets_root()
    for base in DEMO_DATASETS:
        for split in ("train", "val"):
            name = f"{base}_{split}"
            json_file, image_root = (str(p) for p in _demo_paths(root, base, split))
            if name in DatasetCatalog.list():
                if MetadataCatalog.get(name).get("json_file") == json_file:
                    continue
                DatasetCatalog.remove(name)  # ours: re-registered under the new root
                MetadataCatalog.remove(name)
            DatasetCatalog.register(
                name, functools.partial(_load_demo, base, name, json_file, image_root)
            )
            MetadataCatalog.get(name).set(
                json_file=json_file, image_root=image_root, evaluator_type="coco"
            )


def _ensure_demo_generated(name: str) -> None:
    base = name.rsplit("_", 1)[0]
    if base not in DEMO_DATASETS:
        return
    from bitdet.data.detection_generate import generate_detection_dataset

    json_file = Path(MetadataCatalog.get(name).json_file)
    folder = json_file.parent.parent
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{folder}.lock"):
        logger.info("generating the %s dataset in %s (if absent)", base, folder)
        generate_detection_dataset(folder, **DEMO_DATASETS[base])


def prepare_datasets(cfg, names: Iterable[str] | None = None) -> None:
    """Register the config's datasets, generate demo sets, and check every file exists.

    ``cfg`` is a yacs config (its ``DATASETS``), or None with ``names`` given (a LazyConfig's).

    Raises:
        KeyError: a dataset name is not registered.
        FileNotFoundError: a dataset's json or image folder is missing; names the paths.
    """
    register_demo_datasets()
    for name, json_file, image_root in cfg.DATASETS.COCO_FORMAT if cfg is not None else ():
        register_coco_format(name, json_file, image_root)
    names = list(names if names is not None else (*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST))
    for name in names:
        if name not in DatasetCatalog.list():
            raise UnknownNameError(
                f"dataset {name!r} is not registered. Use a Detectron2 built-in "
                "(e.g. coco_2017_train), "
                "a bitdet_demo_* set, or add [name, json_file, image_root] to DATASETS.COCO_FORMAT"
            )
    if (
        comm.get_local_rank() == 0
    ):  # once per machine; the lock serialises machines sharing a folder
        for name in names:
            _ensure_demo_generated(name)
    comm.synchronize()
    for name in names:
        meta = MetadataCatalog.get(name)
        paths = [meta.get("json_file"), meta.get("image_root")]
        missing = [p for p in paths if p and not os.path.exists(p)]
        if missing:
            raise FileNotFoundError(
                f"dataset {name!r}: missing {', '.join(missing)}. Expected the annotation file "
                f"{paths[0]} and the image folder {paths[1]}; set DETECTRON2_DATASETS (now "
                f"{datasets_root()}) to the folder that holds them (COCO-2017: coco/annotations/"
                "instances_train2017.json, coco/train2017/, ...)."
            )
