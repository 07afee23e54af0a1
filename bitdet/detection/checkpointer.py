"""Detectron2 checkpointer that reads BiT weights of every format, and writes checkpoints
atomically.

``MODEL.WEIGHTS`` may be anything :func:`bitdet.weights.read_weights` reads:

- an official BiT ``.npz``, or its name (``BiT-M-R101x3``: from the bitdet cache, downloaded
  there if absent),
- a bitdet classification / pretraining checkpoint, a timm ``resnetv2_*_bit`` state dict
  (``.pth``, ``.bin``, ``.safetensors``), the authors' ``bit_pytorch`` checkpoint, a
  transformers ``BitForImageClassification`` file, an ``hf-hub:`` id,
- a Detectron2 checkpoint of a bitdet detector (resuming, evaluating, fine-tuning),

and, for a model without a BiT backbone, anything Detectron2 itself reads (``.pkl`` files are
unpickled with numpy arrays as the only allowed objects, :mod:`bitdet.weights.safe_pickle`).

For a BiT detector every tensor of the trunk must come from the file: a file of another
layout or architecture is an error that names both (the FPN and heads may keep their
initialisation; the log says so). BiT weights go to the trunk (``backbone.bottom_up.``); the
classification head is dropped.

Training checkpoints are written atomically and never with NaN / inf weights. ``--resume``
falls back, with a warning naming both files, from a ``last_checkpoint`` that is missing,
truncated or corrupt to the newest older checkpoint that reads whole.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch
from detectron2.checkpoint import DetectionCheckpointer

from bitdet.detection.backbone import BiTBackbone
from bitdet.utils.io import remove_stale_temporaries
from bitdet.weights.architecture import FileArchitecture, architecture_of
from bitdet.weights.checkpoint_file import (
    RUNNING_STATS,
    caffe2_weights,
    last_checkpoint,
    load_pickle,
    point_last_checkpoint,
    resume_file,
    torch_load_safely,
    write_checkpoint,
    ws_eps_of,
)
from bitdet.weights.errors import CheckpointError
from bitdet.weights.loading import check_trunk, read_weights, resolve_source, set_ws_eps
from bitdet.weights.safe_pickle import unsafe_pickle_allowed

__all__ = ["BiTCheckpointer"]

logger = logging.getLogger(__name__)

_BLOCK = re.compile(r"^block(\d+)\.")


def _unbuilt_part(trunk: BiTBackbone, name: str) -> bool:
    """Whether bitdet parameter ``name`` belongs to a part the detector's trunk omits.

    The classification head, and the stages or final norm after the last requested feature
    (see :class:`BiTBackbone`), are expected extras in a checkpoint.
    """
    first = name.split(".")[0]
    if first == "fc":
        return True
    if first == "norm":
        return not hasattr(trunk, "norm")
    match = _BLOCK.match(name)
    return bool(match) and int(match.group(1)) > trunk.num_stages


def _trunk_architecture(trunk_state: Dict[str, torch.Tensor]) -> Optional[FileArchitecture]:
    """The trunk's architecture, named after the one full architecture its built stages begin."""
    from dataclasses import replace

    from bitdet.models.variants import ARCHITECTURES

    arch = architecture_of(trunk_state)
    if arch is None or arch.name is not None:
        return arch
    n = len(arch.layers)
    names = [
        name
        for name, a in ARCHITECTURES.items()
        if tuple(a.layers[:n]) == arch.layers and a.stem_width * a.width == arch.stem_channels
    ]
    return replace(arch, name=names[0]) if len(names) == 1 else arch


class BiTCheckpointer(DetectionCheckpointer):
    """:class:`DetectionCheckpointer` + BiT weights of every format for the trunk, atomic saves."""

    def __init__(self, model, save_dir: str = "", **kwargs) -> None:
        super().__init__(model, save_dir, **kwargs)
        self._sources: Dict[str, str] = {}
        if self.save_dir and self.save_to_disk:
            remove_stale_temporaries(self.save_dir)

    def load(self, path: str, *args, **kwargs) -> Dict[str, Any]:
        """Load ``path``: a file, an official BiT name, an ``hf-hub:`` id, or a URL Detectron2
        reads.

        Raises:
            WeightsNotFoundError: nothing exists at ``path`` (instead of Detectron2's bare assert).
            CheckpointError: the file is unusable or does not fit the BiT trunk; names the format.
        """
        if path and "://" not in path:
            local, _ = resolve_source(path)
            self._sources[str(local)] = path
            path = str(local)
        return super().load(path, *args, **kwargs)

    def resume_or_load(self, path: str, *, resume: bool = True) -> Dict[str, Any]:
        """Detectron2's ``resume_or_load``; resuming takes the newest checkpoint that reads whole.

        Raises:
            CheckpointError: ``last_checkpoint`` exists but no checkpoint of the folder reads whole.
        """
        if not (resume and self.has_checkpoint()):
            return super().resume_or_load(path, resume=resume)
        pointed = self.get_checkpoint_file()
        return self.load(str(resume_file(Path(pointed) if pointed else None, self.save_dir)))

    def _bit_trunk(self) -> Optional[Tuple[str, BiTBackbone]]:
        """The detector's BiT trunk and the prefix of its parameter names (None without one)."""
        for name, module in self.model.named_modules():
            if isinstance(module, BiTBackbone):
                return (f"{name}." if name else ""), module
        return None

    def _load_file(self, filename: str) -> Dict[str, Any]:
        found = self._bit_trunk()
        if found is None:  # not a BiT detector: Detectron2's own formats
            if filename.endswith(".pkl") and not unsafe_pickle_allowed():
                return self._load_pkl_safely(filename)
            return super()._load_file(filename)
        prefix, trunk = found
        source = self._sources.get(filename, filename)
        weights = read_weights(filename if source == filename else source)
        weights.source = source
        own = self.model.state_dict()
        trunk_state = {k[len(prefix) :]: v for k, v in own.items() if k.startswith(prefix)}
        shapes = {k: v.shape for k, v in trunk_state.items()}
        unused = check_trunk(
            weights,
            shapes,
            _trunk_architecture(trunk_state),
            ignorable=lambda name: _unbuilt_part(trunk, name),
            variant_option="MODEL.BIT.VARIANT",
            allow_other=weights.detectron2,
        )
        set_ws_eps(trunk, weights.ws_eps, source, weights.layout.name)
        loaded = sum(1 for k in shapes if not k.endswith(RUNNING_STATS))
        if weights.detectron2 and weights.prefix == prefix:
            # A checkpoint of a detector like this one: Detectron2 loads all of it (FPN, heads,
            # optimizer and iteration when resuming); its trunk was checked above.
            checkpoint = {"model": weights.arrays, **weights.extras}
            checkpoint.setdefault("__author__", "bitdet")
            checkpoint.setdefault("matching_heuristics", False)
            logger.info("%s (%s): all %d trunk tensors present", source, weights.format, loaded)
            return checkpoint
        if unused:
            logger.info(
                "BiT weights from %s not used by this detector: %s",
                source,
                ", ".join(weights.file_keys[k] for k in unused),
            )
        mapped = {prefix + k: v for k, v in weights.state.items() if k in shapes}
        logger.info(
            "BiT weights (%s): %d of %d trunk tensors loaded into %s from %s; the rest of the "
            "detector keeps its initialisation",
            weights.format,
            loaded,
            loaded,
            prefix.rstrip(".") or "the model",
            source,
        )
        return {"model": mapped, "__author__": "bitdet", "matching_heuristics": False}

    def _torch_load(self, f: str) -> Dict[str, Any]:
        return torch_load_safely(f)

    def _load_pkl_safely(self, filename: str) -> Dict[str, Any]:
        """Detectron2's ``.pkl`` handling, with an unpickler that only rebuilds numpy arrays."""
        data = load_pickle(filename)
        if not isinstance(data, dict):
            raise CheckpointError(f"{filename} holds a {type(data).__name__}, not a dict of arrays")
        if "model" in data and "__author__" in data:  # Detectron2 model-zoo format
            return data
        return {"model": caffe2_weights(data), "__author__": "Caffe2", "matching_heuristics": True}

    def save(self, name: str, **kwargs: Any) -> None:
        """As Detectron2's save, through :func:`bitdet.weights.checkpoint_file.write_checkpoint`:
        atomic, never NaN / inf weights, the trunk's weight-standardization epsilon in ``meta``."""
        if not self.save_dir or not self.save_to_disk:
            return
        found = self._bit_trunk()
        extra = {key: obj.state_dict() for key, obj in self.checkpointables.items()}
        extra.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info("Saving checkpoint to %s", save_file)
        write_checkpoint(
            save_file,
            self.model.state_dict(),
            ws_eps=ws_eps_of(found[1]) if found else None,
            extra=extra,
            what=f"checkpoint {name}",
        )
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        point_last_checkpoint(self.save_dir, last_filename_basename)

    def has_checkpoint(self) -> bool:
        return last_checkpoint(self.save_dir) is not None

    def get_checkpoint_file(self) -> str:
        named = last_checkpoint(self.save_dir)
        return "" if named is None else str(named)
