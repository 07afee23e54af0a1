"""BiT weights: every format users have (official npz, bitdet, Detectron2, timm, the authors'
bit_pytorch, transformers, ``hf-hub:`` ids), one loader for all entry points, conversion, and
the one writer and reader of bitdet's checkpoint files (:mod:`bitdet.weights.checkpoint_file`).

Nothing here imports :mod:`bitdet.models` at import time; :mod:`bitdet.models` never imports
this package (:func:`bitdet.create_model`, in :mod:`bitdet.factory`, joins the two).
"""

from bitdet.weights.architecture import FileArchitecture, architecture_of
from bitdet.weights.checkpoint_file import save_checkpoint, torch_load_safely, write_npz
from bitdet.weights.download import download
from bitdet.weights.errors import CheckpointError, CheckpointMismatchError, WeightsNotFoundError
from bitdet.weights.hub import is_hub_id
from bitdet.weights.layouts import LAYOUTS
from bitdet.weights.loading import (
    LoadReport,
    WeightsFile,
    apply_weights,
    load_weights,
    read_state_dict,
    read_weights,
)
from bitdet.weights.npz import npz_key_map, read_npz, state_dict_to_npz
from bitdet.weights.official import pretrained_path
from bitdet.weights.sniff import sniff_container

__all__ = [
    "CheckpointError",
    "CheckpointMismatchError",
    "FileArchitecture",
    "LAYOUTS",
    "LoadReport",
    "WeightsFile",
    "WeightsNotFoundError",
    "apply_weights",
    "architecture_of",
    "download",
    "is_hub_id",
    "load_weights",
    "npz_key_map",
    "pretrained_path",
    "read_npz",
    "read_state_dict",
    "read_weights",
    "save_checkpoint",
    "sniff_container",
    "state_dict_to_npz",
    "torch_load_safely",
    "write_npz",
]
