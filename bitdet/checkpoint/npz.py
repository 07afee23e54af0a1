"""The official BiT ``.npz`` checkpoint format: read, write, and map to module names.

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

from bitdet.checkpoint.atomic import PathLike, atomic_write
from bitdet.checkpoint.errors import CheckpointError

__all__ = ["npz_key_map", "read_npz", "write_npz", "npz_to_state_dict", "state_dict_to_npz"]

HEAD_KEYS = ("resnet/head/conv2d/kernel", "resnet/head/conv2d/bias")
_NUMBERED_CONV = re.compile(r"/standardized_conv2d_\d+/")


def npz_key_map(model: torch.nn.Module) -> Dict[str, str]:
    """Map each of ``model``'s parameter names to its key in the official npz layout."""
    conv = "standardized_conv2d/kernel"
    keys = {"stem.conv.weight": f"resnet/root_block/{conv}"}
    for i, stage in enumerate(model.stages, start=1):
        for unit_name, unit in stage.named_children():
            module, scope = f"block{i}.{unit_name}.", f"resnet/block{i}/{unit_name}/"
            for k, letter in zip("123", "abc"):
                keys[f"{module}conv{k}.weight"] = f"{scope}{letter}/{conv}"
                keys[f"{module}gn{k}.weight"] = f"{scope}{letter}/group_norm/gamma"
                keys[f"{module}gn{k}.bias"] = f"{scope}{letter}/group_norm/beta"
            if unit.downsample is not None:
                keys[f"{module}downsample.weight"] = f"{scope}a/proj/{conv}"
    keys["norm.weight"] = "resnet/group_norm/gamma"
    keys["norm.bias"] = "resnet/group_norm/beta"
    if model.fc is not None:
        keys["fc.weight"], keys["fc.bias"] = HEAD_KEYS
    return keys


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


def write_npz(path: PathLike, arrays: Dict[str, np.ndarray]) -> None:
    """Write ``arrays`` as an (uncompressed) npz, atomically."""
    with atomic_write(path) as f:
        np.savez(f, **arrays)


def _to_torch(array: np.ndarray) -> torch.Tensor:
    if array.ndim == 4:  # HWIO -> OIHW
        array = array.transpose(3, 2, 0, 1)
    elif array.ndim > 1 and array.size == max(array.shape):  # e.g. (1, 1, 1, C) norm params
        array = array.reshape(-1)
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def npz_to_state_dict(arrays: Dict[str, np.ndarray], model: torch.nn.Module) -> Dict[str, torch.Tensor]:
    """Rename and transpose npz arrays into ``model``'s state-dict naming.

    Arrays whose key the model does not use keep their npz key, so that callers can report
    them as unexpected.
    """
    names = {key: name for name, key in npz_key_map(model).items()}
    return {names.get(key, key): _to_torch(value) for key, value in arrays.items()}


def state_dict_to_npz(model: torch.nn.Module) -> Dict[str, np.ndarray]:
    """``model``'s parameters in the official npz layout (float32, HWIO kernels)."""
    params = dict(model.named_parameters())
    arrays = {}
    for name, key in npz_key_map(model).items():
        value = params[name].detach().to("cpu", torch.float32).numpy()
        arrays[key] = value.transpose(2, 3, 1, 0) if value.ndim == 4 else value
    return arrays
