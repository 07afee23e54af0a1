"""Detectors written as Detectron2 LazyConfigs (``.py`` files naming classes, e.g.
``L(BiTBackbone)(...)``).

The loop is the one of Detectron2's ``tools/lazyconfig_train_net.py`` (``model``, ``dataloader``,
``optimizer``, ``lr_multiplier`` and ``train`` sections; ``SimpleTrainer`` and Detectron2's hooks),
with bitdet's parts: :class:`BiTCheckpointer` for ``train.init_checkpoint`` (BiT weights of every
format), :class:`AutocastTrainer` for ``train.amp`` on any ``train.device`` (``train.amp.precision``
"bf16" or "fp16"; Detectron2's meaning, fp16, when absent), DDP on CPU processes (gloo), and the
SIGTERM checkpoint of :class:`PreemptionCheckpointer`. A run folder follows the rule of
:mod:`bitdet.engine.run_folder` (:class:`LazyRunConfig`); a continued run restarts its data
stream (the exact stream position is a feature of the yacs trainer), which it says in a warning.
"""

from __future__ import annotations

import copy
import logging
import os
import tempfile
from typing import Dict, List, Optional, Sequence

from detectron2.config import LazyConfig, instantiate
from detectron2.engine import SimpleTrainer, default_writers, hooks
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm
from omegaconf import DictConfig, OmegaConf

from bitdet.config import check_device
from bitdet.detection.checkpointer import BiTCheckpointer
from bitdet.detection.hooks import PreemptionCheckpointer
from bitdet.detection.precision import AutocastTrainer
from bitdet.detection.trainer import _create_ddp_model_any_device
from bitdet.errors import ConfigError
from bitdet.log import FILE_LOGGER, ignore_third_party_warnings
from bitdet.utils.precision import precision_dtype

__all__ = [
    "LazyRunConfig",
    "dataset_names",
    "is_lazy_config",
    "load_lazy_config",
    "lazy_test",
    "lazy_train",
]

logger = logging.getLogger(__name__)

SECTIONS = ("model", "dataloader.train", "dataloader.test", "optimizer", "lr_multiplier", "train")
# The train keys the loop reads (Detectron2's common/train.py defines them all).
TRAIN_KEYS = (
    "output_dir",
    "init_checkpoint",
    "max_iter",
    "device",
    "checkpointer",
    "eval_period",
    "log_period",
)
_MISSING = object()


class LazyRunConfig:
    """A LazyConfig as the run-folder rule reads a config: ``dump()`` gives the YAML that
    ``LazyConfig.save`` writes, without ``train.output_dir`` (a moved folder is the same run)."""

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg

    def dump(self) -> str:
        cfg = copy.deepcopy(self.cfg)
        cfg.train.output_dir = None
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "config.yaml")
            LazyConfig.save(cfg, path)
            with open(path) as f:
                return f.read()


def is_lazy_config(path: str) -> bool:
    """Whether ``path`` is a LazyConfig (Python) rather than a yacs (YAML) config."""
    return str(path).endswith(".py")


def _check_override(cfg: DictConfig, override: str, path: str) -> None:
    """Refuse an override that would add a key nothing reads.

    Detectron2's ``apply_overrides`` creates missing keys; a new key is only read when it lands in a
    ``LazyCall`` (``_target_``), whose constructor then checks it.
    """
    if "=" not in override:
        raise ConfigError(
            f"override {override!r}: a LazyConfig takes KEY=VALUE overrides, e.g. "
            "train.max_iter=100"
        )
    key = override.split("=", 1)[0].lstrip("+~")
    if OmegaConf.select(cfg, key, default=_MISSING) is not _MISSING:
        return
    parent = OmegaConf.select(cfg, key.rpartition(".")[0], default=None) if "." in key else cfg
    if not (isinstance(parent, DictConfig) and "_target_" in parent):
        raise ConfigError(f"override {override!r}: {path} has no key {key!r}")


def load_lazy_config(path: str, overrides: Sequence[str] = ()) -> DictConfig:
    """A LazyConfig with ``KEY=VALUE`` overrides, its sections and ``train.device`` checked.

    Raises:
        ValueError: an override naming a key the config lacks (outside a ``LazyCall``, where its
            constructor checks it), or a missing section or ``train`` key.
        DeviceError: ``train.device`` asks for CUDA on a machine without it.
    """
    ignore_third_party_warnings()
    cfg = LazyConfig.load(path)
    for override in overrides:
        _check_override(cfg, override, path)
    cfg = LazyConfig.apply_overrides(cfg, list(overrides))
    missing = [s for s in SECTIONS if OmegaConf.select(cfg, s, default=None) is None]
    missing += [f"train.{k}" for k in TRAIN_KEYS if "train" not in missing and k not in cfg.train]
    if missing:
        raise ConfigError(
            f"LazyConfig {path}: missing {missing}; a detector config defines {list(SECTIONS)} "
            f"and train.{{{', '.join(TRAIN_KEYS)}}} (Detectron2's model zoo common/train.py)"
        )
    check_device(cfg.train.device, "train.device")
    return cfg


def dataset_names(cfg: DictConfig, splits: Sequence[str] = ("train", "test")) -> List[str]:
    """The dataset names of ``dataloader.<split>.dataset.names`` (a name or a list of names)."""
    names: List[str] = []
    for split in splits:
        value = OmegaConf.select(cfg, f"dataloader.{split}.dataset.names", default=None)
        if value is not None:
            names += [value] if isinstance(value, str) else list(value)
    return names


def lazy_test(cfg: DictConfig, model) -> Dict:
    """``dataloader.evaluator`` over ``dataloader.test``; the results as Detectron2 prints them.

    Raises:
        ValueError: the config has no ``dataloader.evaluator``.
    """
    if "evaluator" not in cfg.dataloader:
        raise ConfigError("the LazyConfig has no dataloader.evaluator: nothing to evaluate with")
    results = inference_on_dataset(
        model, instantiate(cfg.dataloader.test), instantiate(cfg.dataloader.evaluator)
    )
    print_csv_format(results)
    return results


def build_lazy_model(cfg: DictConfig):
    """``cfg.model`` instantiated on ``train.device``; the printout goes to the log file."""
    model = instantiate(cfg.model)
    logging.getLogger(FILE_LOGGER).info("Model:\n%s", model)
    return model.to(cfg.train.device)


def lazy_train(cfg: DictConfig, resume: bool = False) -> Optional[Dict]:
    """Train ``cfg`` for ``train.max_iter`` iterations, evaluating every ``train.eval_period``
    and at the end.

    Args:
        cfg: a config from :func:`load_lazy_config`.
        resume: continue from the last checkpoint in ``train.output_dir`` (else start from
            ``train.init_checkpoint``).

    Returns:
        The final evaluation's results, or None without ``dataloader.evaluator``.
    """
    model = build_lazy_model(cfg)
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    loader = instantiate(cfg.dataloader.train)
    model = _create_ddp_model_any_device(model, **cfg.train.get("ddp", {}))
    amp = cfg.train.get("amp", {})
    if amp.get("enabled", False):
        dtype = precision_dtype(
            amp.get("precision", "fp16"), "train.amp.precision", allowed=("bf16", "fp16")
        )
        trainer = AutocastTrainer(model, loader, optimizer, dtype, cfg.train.device)
    else:
        trainer = SimpleTrainer(model, loader, optimizer)
    output_dir = cfg.train.output_dir
    checkpointer = BiTCheckpointer(model, output_dir, trainer=trainer)
    results: Dict = {}

    def evaluate() -> Dict:
        results.clear()
        if "evaluator" in cfg.dataloader:
            results.update(lazy_test(cfg, model))
        return results

    main = comm.is_main_process()
    trainer.register_hooks(
        [
            hooks.IterationTimer(),
            hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
            hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer) if main else None,
            hooks.EvalHook(cfg.train.eval_period, evaluate),
            hooks.PeriodicWriter(
                default_writers(output_dir, cfg.train.max_iter), period=cfg.train.log_period
            )
            if main
            else None,
            PreemptionCheckpointer(checkpointer),
        ]
    )
    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=resume)
    if resume and checkpointer.has_checkpoint():
        logger.warning(
            "continuing from %s; a LazyConfig run restarts its data stream, so the continued run "
            "sees other images than an uninterrupted one",
            checkpointer.get_checkpoint_file(),
        )
    start_iter = trainer.iter + 1 if resume and checkpointer.has_checkpoint() else 0
    trainer.train(start_iter, cfg.train.max_iter)
    if "evaluator" not in cfg.dataloader:
        logger.info("no dataloader.evaluator in the LazyConfig: trained without evaluation")
        return None
    return dict(results)
