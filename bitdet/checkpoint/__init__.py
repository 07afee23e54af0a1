"""Checkpoint formats: official BiT ``.npz``, PyTorch state dicts, cached downloads."""
from bitdet.checkpoint.atomic import atomic_write
from bitdet.checkpoint.download import default_cache_dir, download
from bitdet.checkpoint.errors import CheckpointError, CheckpointMismatchError
from bitdet.checkpoint.loading import LoadReport, apply_state_dict, load_weights, read_state_dict, save_checkpoint
from bitdet.checkpoint.npz import npz_key_map, npz_to_state_dict, read_npz, state_dict_to_npz, write_npz

__all__ = [
    "CheckpointError",
    "CheckpointMismatchError",
    "LoadReport",
    "apply_state_dict",
    "atomic_write",
    "default_cache_dir",
    "download",
    "load_weights",
    "npz_key_map",
    "npz_to_state_dict",
    "read_npz",
    "read_state_dict",
    "save_checkpoint",
    "state_dict_to_npz",
    "write_npz",
]
