"""The official BiT checkpoints: their names, the cache that holds them, and their checks."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

import torch

from bitdet.errors import UnknownNameError
from bitdet.utils.io import default_cache_dir
from bitdet.weights.download import download, mirrored
from bitdet.weights.errors import CheckpointError, CheckpointMismatchError, WeightsNotFoundError
from bitdet.weights.npz import npz_key_map, read_npz

if TYPE_CHECKING:
    from bitdet.weights.loading import WeightsFile

__all__ = ["check_npz_architecture", "check_official", "official_name", "pretrained_path"]


def official_name(source: os.PathLike | str) -> Optional[str]:
    """The official checkpoint ``source`` names, or None.

    That is an official name (``BiT-M-R50x1``), its bare file name (``BiT-M-R50x1.npz``), or
    that file in the bitdet cache (where ``pretrained=True`` puts it).
    """
    from bitdet.models.variants import PRETRAINED

    text = str(source)
    name = text[: -len(".npz")] if text.endswith(".npz") else text
    if name in PRETRAINED:
        return name
    path = Path(text).expanduser()
    if (
        path.suffix == ".npz"
        and path.stem in PRETRAINED
        and path.parent.resolve() == Path(default_cache_dir()).resolve()
    ):
        return path.stem
    return None


def check_official(weights: "WeightsFile", name: str) -> None:
    """Check that ``weights`` hold the architecture and head of the official checkpoint ``name``.

    Raises:
        CheckpointError: one line naming the file, what ``name`` holds and what was found.
    """
    from bitdet.models.variants import PRETRAINED

    pre = PRETRAINED[name]
    arch = weights.arch
    found_arch = "no ResNet-v2" if arch is None else arch.name or arch.describe()
    classes = arch.num_classes if arch is not None else 0
    if (found_arch, classes) != (pre.arch, pre.num_classes):
        found_head = f"a {classes}-class head" if classes else "no head"
        raise CheckpointError(
            f"{weights.path} is not the official {name}: expected {pre.arch} with a "
            f"{pre.num_classes}-class head, found {found_arch} with {found_head}"
        )


def check_npz_architecture(path: os.PathLike, name: str) -> None:
    """Check that an official-layout npz holds exactly the parameters of model ``name``.

    Every array must be readable and every parameter of the architecture (head of the
    upstream class count included) present with its shape; nothing else may be there.

    Raises:
        CheckpointMismatchError: naming the missing, unexpected and misshapen keys.
    """
    from bitdet.models.resnetv2 import ResNetV2
    from bitdet.models.variants import resolve

    _, arch, pre = resolve(name)
    arrays = read_npz(path)
    with torch.device("meta"):  # shapes only: no memory for the weights
        model = ResNetV2(
            arch.layers,
            width=arch.width,
            stem_width=arch.stem_width,
            num_classes=pre.num_classes if pre else 1000,
        )
    params = dict(model.named_parameters())
    expected = {key: tuple(params[param].shape) for param, key in npz_key_map(model).items()}
    found = {
        key: (a.shape[3], a.shape[2], a.shape[0], a.shape[1]) if a.ndim == 4 else tuple(a.shape)
        for key, a in arrays.items()
    }  # HWIO kernels -> OIHW
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    mismatched = [
        (k, expected[k], found[k])
        for k in sorted(set(expected) & set(found))
        if expected[k] != found[k]
    ]
    if missing or unexpected or mismatched:
        raise CheckpointMismatchError(path, missing, unexpected, mismatched)


def pretrained_path(
    name: str,
    cache_dir: Optional[os.PathLike] = None,
    progress: bool = True,
    looked_at: Sequence[os.PathLike] = (),
) -> Path:
    """Local path of a named official checkpoint, downloading it into the cache if absent.

    A download enters the cache only when it is complete (its ``Content-Length``), matches
    the recorded sha256 when there is one, and :func:`check_npz_architecture` accepts it.

    Args:
        name: e.g. ``"BiT-M-R50x1"``.
        cache_dir: defaults to :func:`bitdet.utils.io.default_cache_dir`.
        progress: show a download progress bar.
        looked_at: other places already searched, named (with the cache) when the file can
            be neither found nor downloaded.

    ``$BITDET_WEIGHTS_URL`` serves the file from a mirror; concurrent callers download once.

    Raises:
        WeightsNotFoundError: not in the cache and the download failed (names every place).
    """
    from bitdet.models.variants import resolve

    _, _, pre = resolve(name)
    if pre is None:
        raise UnknownNameError(
            f"{name!r} has no official checkpoint; pass a weights file path instead"
        )
    dest = Path(cache_dir or default_cache_dir()) / f"{name}.npz"
    try:
        return download(
            mirrored(pre.url),
            dest,
            sha256=pre.sha256,
            validate=lambda p: check_npz_architecture(p, name),
            progress=progress,
        )
    except CheckpointError as e:
        if not isinstance(e.__cause__, OSError):  # the file failed a check: not a missing file
            raise
        places = ", ".join(str(Path(p).resolve()) for p in (*looked_at, dest))
        raise WeightsNotFoundError(f"{name} is not at {places}; {e}") from e
