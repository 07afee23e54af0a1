"""Detectron2 checkpointer that also reads BiT weights, and writes checkpoints atomically.

``MODEL.WEIGHTS`` may be:

- an official BiT ``.npz`` (``BiT-M-R101x3.npz``),
- a BiT model name (``BiT-M-R101x3``): the file from the bitdet cache, downloaded there if
  absent (see :func:`bitdet.models.pretrained_path`),
- a bitdet classification / pretraining checkpoint (``.pth`` with BiT parameter names),
- anything Detectron2 itself reads (its own ``.pth`` checkpoints, model-zoo files); ``.pkl``
  files are unpickled with numpy arrays as the only allowed objects
  (:mod:`bitdet.checkpoint.safe_pickle`).

BiT weights go to the BiT trunk inside the detector (``backbone.bottom_up.`` for FPN models);
the classification head is dropped, and the log lists what was loaded and what keeps its
initialisation (FPN, heads).
"""
from __future__ import annotations

import logging
import os
import pickle
import re
from typing import Any, Dict, Tuple

import torch
from detectron2.checkpoint import DetectionCheckpointer

from bitdet.checkpoint.atomic import atomic_write, remove_stale_temporaries
from bitdet.checkpoint.errors import CheckpointError, CheckpointMismatchError
from bitdet.checkpoint.loading import strip_prefixes
from bitdet.checkpoint.npz import HEAD_KEYS, npz_to_state_dict, read_npz
from bitdet.checkpoint.safe_pickle import safe_pickle_load, unsafe_pickle_allowed
from bitdet.detection.backbone import BiTBackbone
from bitdet.models.factory import pretrained_path
from bitdet.models.variants import PRETRAINED

__all__ = ["BiTCheckpointer"]

logger = logging.getLogger(__name__)


_NPZ_BLOCK = re.compile(r"^resnet/block(\d+)/")
_TORCH_BLOCK = re.compile(r"^block(\d+)\.")


def _unbuilt_part(trunk: BiTBackbone, key: str) -> bool:
    """Whether ``key`` (bitdet or npz naming) belongs to a part the detector's trunk omits.

    The classification head, and the stages or final norm after the last requested feature
    (see :class:`BiTBackbone`), are expected extras in a checkpoint; any other key the
    trunk lacks means the file is for another architecture.
    """
    if key in HEAD_KEYS or key.split(".")[0] == "fc":
        return True
    if key.startswith("resnet/group_norm/") or key.split(".")[0] == "norm":
        return not hasattr(trunk, "norm")
    match = _NPZ_BLOCK.match(key) or _TORCH_BLOCK.match(key)
    return bool(match) and int(match.group(1)) > trunk.num_stages


class BiTCheckpointer(DetectionCheckpointer):
    """:class:`DetectionCheckpointer` + BiT ``.npz`` / names / bitdet checkpoints, atomic saves."""

    def __init__(self, model, save_dir: str = "", **kwargs) -> None:
        super().__init__(model, save_dir, **kwargs)
        if self.save_dir and self.save_to_disk:
            remove_stale_temporaries(self.save_dir)

    def load(self, path: str, *args, **kwargs) -> Dict[str, Any]:
        if path in PRETRAINED:
            path = str(pretrained_path(path))
        if path and "://" not in path and not os.path.isfile(path):  # fvcore would only assert
            raise FileNotFoundError(
                f"MODEL.WEIGHTS {path!r}: no such file (expected a BiT .npz, a bitdet or Detectron2 "
                "checkpoint, or a name from bitdet.list_models(pretrained=True))"
            )
        return super().load(path, *args, **kwargs)

    def _bit_trunk(self) -> Tuple[str, BiTBackbone]:
        """The detector's BiT trunk and the prefix of its parameter names."""
        for name, module in self.model.named_modules():
            if isinstance(module, BiTBackbone):
                return (f"{name}." if name else ""), module
        raise ValueError(
            "MODEL.WEIGHTS is a BiT backbone checkpoint, but the model has no BiT backbone; "
            "set MODEL.BACKBONE.NAME to build_retinanet_bit_fpn_backbone or build_bit_fpn_backbone"
        )

    def _load_file(self, filename: str) -> Dict[str, Any]:
        if filename.endswith(".pkl") and not unsafe_pickle_allowed():
            return self._load_pkl_safely(filename)
        if filename.endswith(".npz"):
            return self._as_detector_state(npz_to_state_dict(read_npz(filename), self._bit_trunk()[1]), filename)
        loaded = super()._load_file(filename)
        state = strip_prefixes(loaded.get("model", {}))
        if "stem.conv.weight" in state:  # a bitdet classification / pretraining checkpoint
            return self._as_detector_state(state, filename)
        return loaded

    def _torch_load(self, f: str) -> Dict[str, Any]:
        # Explicit weights_only: torch's default (True since 2.6) can be flipped by
        # TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD, and its error does not name the file.
        try:
            return torch.load(f, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            raise CheckpointError(
                f"refusing to load {f}: it contains Python objects beyond tensors and plain containers, "
                f"which could run code when unpickled ({str(e).splitlines()[-1]})"
            ) from e

    def _load_pkl_safely(self, filename: str) -> Dict[str, Any]:
        """Detectron2's ``.pkl`` handling, with an unpickler that only rebuilds numpy arrays."""
        data = safe_pickle_load(filename)
        if not isinstance(data, dict):
            raise CheckpointMismatchError(filename, unexpected=[f"<a {type(data).__name__}, not a dict>"])
        if "model" in data and "__author__" in data:  # Detectron2 model-zoo format
            return data
        data = data.get("blobs", data)  # Caffe2 detection models keep weights under "blobs"
        data = {k: v for k, v in data.items() if not k.endswith("_momentum")}
        return {"model": data, "__author__": "Caffe2", "matching_heuristics": True}

    def _as_detector_state(self, state: Dict[str, torch.Tensor], filename: str) -> Dict[str, Any]:
        prefix, trunk = self._bit_trunk()
        own = self.model.state_dict()
        mapped = {prefix + k: v for k, v in state.items()}
        unused = sorted(k[len(prefix):] for k in mapped if k not in own)
        unexpected = [k for k in unused if not _unbuilt_part(trunk, k)]
        stats = ("running_mean", "running_var", "num_batches_tracked")
        missing = [k for k in own if k.startswith(prefix) and k not in mapped and not k.endswith(stats)]
        mismatched = [(k, own[k].shape, v.shape) for k, v in mapped.items() if k in own and own[k].shape != v.shape]
        if missing or unexpected or mismatched:
            raise CheckpointMismatchError(filename, missing, unexpected, mismatched)
        if unused:
            logger.info("BiT weights from %s not used by this detector: %s", filename, ", ".join(unused))
        mapped = {k: v for k, v in mapped.items() if k in own}
        loaded_trunk = sum(k.startswith(prefix) for k in mapped)
        logger.info(
            "BiT weights: %d tensors loaded into %s from %s; the rest of the detector keeps its initialisation",
            loaded_trunk, prefix.rstrip(".") or "the model", filename,
        )
        return {"model": mapped, "__author__": "bitdet", "matching_heuristics": False}

    def save(self, name: str, **kwargs: Any) -> None:
        """As Detectron2's save, but written to a temporary file and renamed into place."""
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info("Saving checkpoint to %s", save_file)
        with atomic_write(save_file) as f:
            torch.save(data, f)
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        with atomic_write(os.path.join(self.save_dir, "last_checkpoint"), "w") as f:
            f.write(last_filename_basename)
