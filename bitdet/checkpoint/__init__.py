"""BiT weights: every format users have (official npz, bitdet, Detectron2, timm, the authors'
bit_pytorch, transformers, ``hf-hub:`` ids), one loader for all entry points, conversion."""

from bitdet.checkpoint.architecture import FileArchitecture, architecture_of
from bitdet.checkpoint.download import download
from bitdet.checkpoint.errors import CheckpointError, CheckpointMismatchError, WeightsNotFoundError
from bitdet.checkpoint.hub import is_hub_id
from bitdet.checkpoint.layouts import LAYOUTS
from bitdet.checkpoint.loading import (
    LoadReport,
    WeightsFile,
    apply_state_dict,
    apply_weights,
    load_weights,
    read_state_dict,
    read_weights,
    save_checkpoint,
)
from bitdet.checkpoint.npz import (
    npz_key_map,
    npz_to_state_dict,
    read_npz,
    state_dict_to_npz,
    write_npz,
)
from bitdet.checkpoint.sniff import sniff_container

__all__ = [
    "CheckpointError",
    "CheckpointMismatchError",
    "FileArchitecture",
    "LAYOUTS",
    "LoadReport",
    "WeightsFile",
    "WeightsNotFoundError",
    "apply_state_dict",
    "apply_weights",
    "architecture_of",
    "download",
    "is_hub_id",
    "load_weights",
    "npz_key_map",
    "npz_to_state_dict",
    "read_npz",
    "read_state_dict",
    "read_weights",
    "save_checkpoint",
    "sniff_container",
    "state_dict_to_npz",
    "write_npz",
]
