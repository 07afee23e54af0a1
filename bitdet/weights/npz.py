"""The official BiT ``.npz`` checkpoint format: read, and map to module names (written by
:func:`bitdet.weights.checkpoint_file.write_npz`).

Layout (a flat npz of float32 arrays; conv kernels are HWIO)::

    resnet/root_block/standardized_conv2d/kernel
    resnet/block{i}/unit{jj}/{a,b,c}/standardized_conv2d/kernel     conv1, conv2, conv3
    resnet/block{i}/unit{jj}/{a,b,c}/group_norm/{gamma,beta}        gn1, gn2, gn3
    resnet/block{i}/unit01/a/proj/standardized_conv2d/kernel        downsample
    resnet/group_norm/{gamma,beta}                                  final norm
    resnet/head/conv2d/{kernel,bias}                                classifier

Some released files name convs ``standardized_conv2d_N``; they are read as the plain name.
"""

from __future__ import annotations

import re
import zipfile
from typing import Dict

import numpy as np
import torch

from bitdet.utils.io import PathLike
from bitdet.weights.errors import CheckpointError
from bitdet.weights.layouts import LAYOUTS

__all__ = ["npz_key_map", "read_npz", "state_dict_to_npz"]

_NUMBERED_CONV = re.compile(r"/standardized_conv2d_\d+/")


def npz_key_map(model: torch.nn.Module) -> Dict[str, str]:
    """Map each of ``model``'s parameter names to its key in the official npz layout."""
    npz = LAYOUTS["npz"]
    return {name: npz.from_bitdet_key(name) for name, _ in model.named_parameters()}


def read_npz(path: PathLike) -> Dict[str, np.ndarray]:
    """Read every array of an npz file, refusing pickled objects.

    Raises:
        FileNotFoundError: no file at ``path``.
        CheckpointError: the file is truncated, not an npz, or holds pickled objects.
    """
    key = None
    try:
        with np.load(path, allow_pickle=False) as data:
            if not isinstance(data, np.lib.npyio.NpzFile):
                raise CheckpointError(f"{path} is a single .npy array, not an .npz checkpoint")
            arrays = {}
            for key in data.files:
                arrays[_NUMBERED_CONV.sub("/standardized_conv2d/", key)] = data[key]
            return arrays
    except FileNotFoundError:
        raise
    except ValueError as e:
        if "pickle" not in str(e):
            raise CheckpointError(f"{path}: cannot read array {key!r}: {e}") from e
        where = f"array {key!r}" if key else "the file"
        raise CheckpointError(
            f"refusing to load {path}: {where} holds pickled Python objects, which can run "
            "code when loaded; BiT checkpoints contain plain numeric arrays only"
        ) from e
    except (zipfile.BadZipFile, EOFError, OSError) as e:
        raise CheckpointError(
            f"{path} is not a readable .npz file (truncated or corrupt download?): {e}"
        ) from e


def state_dict_to_npz(model: torch.nn.Module) -> Dict[str, np.ndarray]:
    """``model``'s parameters in the official npz layout (float32, HWIO kernels)."""
    npz = LAYOUTS["npz"]
    return {
        npz.from_bitdet_key(name): npz.from_bitdet_tensor(name, value)
        for name, value in model.named_parameters()
    }
