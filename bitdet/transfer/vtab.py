"""VTAB-1k (Zhai et al. 2019): 19 tasks, each with 1,000 training examples.

Protocol: ``train800`` and ``val200`` for model selection, ``train800val200`` (their union)
for the final run, evaluated on the task's full ``test`` split. The score is the mean top-1
over the 19 tasks.

On disk, per task, either

- a CSV ``ROOT/<task>.csv`` (or ``ROOT/<task>/<task>.csv``) with a header ``image,label,split``:
  the image path relative to the CSV's folder, an integer label, and a split among
  ``train800``, ``val200``, ``test`` (rows may also say ``train800val200``); or
- a folder ``ROOT/<task>/<split>/<label>/<image>``, ``<label>`` an integer.

``train800val200`` is the union of ``train800`` and ``val200`` unless it is given explicitly.
Each task is also registered as dataset ``vtab/<task>`` for ``tools/finetune.py``.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from torch.utils.data import Dataset

from bitdet.data.images import load_image
from bitdet.errors import ConfigError, DataError, UnknownNameError
from bitdet.transfer.datasets import DatasetSpec, register_dataset
from bitdet.transfer.fewshot import mean_std

__all__ = [
    "SPLITS",
    "VTAB_TASKS",
    "VTABTask",
    "VTABTaskDataset",
    "check_tasks",
    "find_task",
    "run_vtab",
]

logger = logging.getLogger(__name__)

SPLITS = ("train800", "val200", "train800val200", "test")
_SPLIT_SIZES = {"train800": 800, "val200": 200, "train800val200": 1000}
_IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class VTABTask:
    """One VTAB task.

    Attributes:
        name: VTAB's task name.
        group: ``natural``, ``specialized`` or ``structured``.
        num_classes: label count.
        image_size: typical source ``(height, width)`` (picks the HyperRule resolution).
        random_crop / flip: off where they change the label: counting and distances
            (a crop can remove objects), positions and orientations (a flip mirrors them).
    """

    name: str
    group: str
    num_classes: int
    image_size: Tuple[int, int]
    random_crop: bool = True
    flip: bool = True


VTAB_TASKS: Dict[str, VTABTask] = {
    t.name: t
    for t in (
        VTABTask("caltech101", "natural", 102, (300, 200)),
        VTABTask("cifar100", "natural", 100, (32, 32)),
        VTABTask("dtd", "natural", 47, (480, 640)),
        VTABTask("oxford_flowers102", "natural", 102, (500, 600)),
        VTABTask("oxford_iiit_pet", "natural", 37, (375, 500)),
        VTABTask("sun397", "natural", 397, (300, 400)),
        VTABTask("svhn", "natural", 10, (32, 32)),
        VTABTask("patch_camelyon", "specialized", 2, (96, 96)),
        VTABTask("eurosat", "specialized", 10, (64, 64)),
        VTABTask("resisc45", "specialized", 45, (256, 256)),
        VTABTask("diabetic_retinopathy", "specialized", 5, (512, 512)),
        VTABTask("clevr_count", "structured", 8, (320, 480), random_crop=False),
        VTABTask("clevr_distance", "structured", 6, (320, 480), random_crop=False),
        VTABTask("dmlab", "structured", 6, (360, 480), random_crop=False),
        VTABTask("kitti_distance", "structured", 4, (375, 1242), random_crop=False),
        VTABTask("dsprites_location", "structured", 16, (64, 64), random_crop=False, flip=False),
        VTABTask("dsprites_orientation", "structured", 16, (64, 64), random_crop=False, flip=False),
        VTABTask("smallnorb_azimuth", "structured", 18, (96, 96), flip=False),
        VTABTask("smallnorb_elevation", "structured", 9, (96, 96)),
    )
}
assert len(VTAB_TASKS) == 19


class VTABTaskDataset(Dataset):
    """``(PIL.Image, int)`` pairs of one split of one task; unreadable files give ``None``.

    Attributes:
        files, targets: image paths and labels; ``classes``: ``"0" .. str(num_classes - 1)``.
    """

    def __init__(self, files: Sequence[Path], targets: Sequence[int], num_classes: int) -> None:
        self.files = list(files)
        self.targets = np.asarray(targets, dtype=np.int64)
        self.classes = [str(i) for i in range(num_classes)]

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        image = load_image(self.files[index])
        return None if image is None else (image, int(self.targets[index]))


def find_task(root: Path, task: str) -> Path:
    """The CSV file or folder holding ``task`` under ``root``.

    Raises:
        FileNotFoundError: naming the places searched.
    """
    root = Path(root)
    candidates = [root / f"{task}.csv", root / task / f"{task}.csv", root / task]
    for path in candidates:
        if path.is_file() or (path.is_dir() and any((path / s).is_dir() for s in SPLITS)):
            return path
    raise FileNotFoundError(
        f"VTAB task {task!r}: none of {', '.join(map(str, candidates))} "
        f"(a CSV with image,label,split or folders {'/'.join(SPLITS)}) exists"
    )


def check_tasks(root: Union[str, Path], tasks: Sequence[str]) -> Dict[str, Path]:
    """Find every task's data before any training; all problems in one message.

    Returns:
        ``{task: CSV file or folder}``.

    Raises:
        KeyError: unknown task names.
        FileNotFoundError: the root is not a folder, or tasks have no data (all named at once).
    """
    unknown = [t for t in tasks if t not in VTAB_TASKS]
    if unknown:
        raise UnknownNameError(f"unknown VTAB tasks {unknown}; tasks: {', '.join(VTAB_TASKS)}")
    if not str(root).strip():
        raise FileNotFoundError("VTAB data root not set: pass --data-root (DATASETS.TRAIN.ROOT)")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(
            f"VTAB data root {root} is not a folder: check --data-root (DATASETS.TRAIN.ROOT)"
        )
    found, missing = {}, []
    for task in tasks:
        try:
            found[task] = find_task(root, task)
        except FileNotFoundError:
            missing.append(task)
    if missing:
        raise FileNotFoundError(
            f"VTAB data root {root}: {len(missing)} of {len(tasks)} tasks have no data: "
            f"{', '.join(missing)} (each needs ROOT/<task>.csv, ROOT/<task>/<task>.csv or "
            f"ROOT/<task>/<{'|'.join(SPLITS)}>/)"
        )
    return found


def _read_csv(path: Path) -> Dict[str, List[Tuple[Path, int]]]:
    rows: Dict[str, List[Tuple[Path, int]]] = {}
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = {"image", "label", "split"} - set(reader.fieldnames or ())
        if missing:
            raise DataError(
                f"{path}: header must have image,label,split; missing {sorted(missing)}"
            )
        for line, row in enumerate(reader, start=2):
            split = row["split"].strip()
            if split not in SPLITS:
                raise DataError(f"{path}:{line}: split {split!r} is not one of {SPLITS}")
            try:
                label = int(row["label"])
            except ValueError:
                raise DataError(
                    f"{path}:{line}: label {row['label']!r} is not an integer"
                ) from None
            rows.setdefault(split, []).append((path.parent / row["image"].strip(), label))
    return rows


def _read_folder(folder: Path, split: str) -> List[Tuple[Path, int]]:
    out = []
    for label_dir in sorted(p for p in (folder / split).iterdir() if p.is_dir()):
        try:
            label = int(label_dir.name)
        except ValueError:
            raise DataError(
                f"{label_dir}: VTAB class folders are integer labels, found {label_dir.name!r}"
            ) from None
        out += [(f, label) for f in sorted(label_dir.iterdir()) if f.suffix.lower() in _IMAGE_EXTS]
    return out


def load_split(root: Path, task: str, split: str, strict: bool = False) -> VTABTaskDataset:
    """One split of one task.

    Args:
        root: the VTAB data root.
        task: a key of :data:`VTAB_TASKS`.
        split: one of :data:`SPLITS`.
        strict: require exactly 800 / 200 / 1000 training examples (else only a warning).
    """
    if task not in VTAB_TASKS:
        raise UnknownNameError(f"unknown VTAB task {task!r}; tasks: {', '.join(VTAB_TASKS)}")
    if split not in SPLITS:
        raise ConfigError(f"VTAB split must be one of {SPLITS}, got {split!r}")
    spec, source = VTAB_TASKS[task], find_task(Path(root), task)

    csv_rows = _read_csv(source) if source.is_file() else None  # parsed once for every split

    def read(name: str) -> List[Tuple[Path, int]]:
        if csv_rows is not None:
            return csv_rows.get(name, [])
        return _read_folder(source, name) if (source / name).is_dir() else []

    items = read(split)
    if split == "train800val200" and not items:
        items = read("train800") + read("val200")
    if not items:
        raise FileNotFoundError(f"VTAB task {task!r}: split {split!r} has no examples in {source}")
    bad = sorted({label for _, label in items if not 0 <= label < spec.num_classes})
    if bad:
        raise DataError(
            f"VTAB task {task!r} ({source}): labels {bad} outside [0, {spec.num_classes})"
        )
    expected = _SPLIT_SIZES.get(split)
    if expected and len(items) != expected:
        message = (
            f"VTAB task {task!r}: split {split!r} has {len(items)} examples, "
            f"the protocol has {expected}"
        )
        if strict:
            raise DataError(message)
        logger.warning("%s", message)
    files, labels = zip(*items)
    return VTABTaskDataset(files, labels, spec.num_classes)


def _register(task: VTABTask) -> None:
    def build(root: str, split: str, download: bool) -> Dataset:
        if download:
            raise ConfigError(
                "VTAB-1k cannot be downloaded here; prepare the CSV or folders "
                "(see bitdet.transfer.vtab)"
            )
        return load_split(Path(root), task.name, split)

    register_dataset(
        DatasetSpec(
            f"vtab/{task.name}",
            build,
            "train800val200",
            "test",
            SPLITS,
            task.image_size,
            random_crop=task.random_crop,
            flip=task.flip,
        )
    )


for _task in VTAB_TASKS.values():
    _register(_task)


def run_vtab(
    run_task: Callable[[str], Dict[str, float]],
    tasks: Optional[Sequence[str]] = None,
    metric: str = "top1",
) -> Dict[str, object]:
    """Run ``run_task(task) -> metrics`` for every task and summarise.

    A failing task is recorded with its error and left out of the mean (the summary says so),
    so one broken folder does not lose the other 18 results.

    Args:
        run_task: fine-tunes and evaluates one task; returns a metrics dict with ``metric``.
        tasks: defaults to all 19, in VTAB's order.
        metric: the key averaged.

    Returns:
        ``{"tasks": {task: metrics or {"error": str}}, "mean": float, "groups": {group: mean},
        "complete": bool}``.
    """
    tasks = list(tasks or VTAB_TASKS)
    unknown = [t for t in tasks if t not in VTAB_TASKS]
    if unknown:
        raise UnknownNameError(f"unknown VTAB tasks {unknown}; tasks: {', '.join(VTAB_TASKS)}")
    results: Dict[str, Dict] = {}
    for task in tasks:
        try:
            results[task] = dict(run_task(task))
        except Exception as e:  # noqa: BLE001 -- recorded per task, re-raised if all fail
            logger.exception("VTAB task %s failed", task)
            results[task] = {"error": f"{type(e).__name__}: {e}"}
    scores = {t: float(r[metric]) for t, r in results.items() if metric in r}
    if not scores:
        raise RuntimeError(f"every VTAB task failed: {results}")
    groups: Dict[str, List[float]] = {}
    for task, score in scores.items():
        groups.setdefault(VTAB_TASKS[task].group, []).append(score)
    return {
        "tasks": results,
        "mean": mean_std(list(scores.values()))["mean"],
        "groups": {g: sum(v) / len(v) for g, v in groups.items()},
        "complete": len(scores) == len(VTAB_TASKS),
    }
