"""Fine-tune a BiT model on a downstream dataset with the BiT-HyperRule, via the shared
:class:`bitdet.engine.ClassifierTrainer`; and sweep shots x seeds into one results table.

The entry points are ``tools/finetune.py`` and ``tools/vtab.py``; these functions hold the
logic so that tests and notebooks can call them without a command line.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch.utils.data import Subset

from bitdet.config import check_weights, resolve_device
from bitdet.engine.config import engine_precision
from bitdet.errors import ConfigError
from bitdet.factory import create_model
from bitdet.transfer.config import rule_from_config, tri_state
from bitdet.transfer.datasets import (
    build_dataset,
    dataset_classes,
    dataset_image_size,
    dataset_targets,
    get_spec,
)
from bitdet.transfer.fewshot import FULL, Shots, parse_shots, sample_few_shot, save_indices
from bitdet.transfer.mixup import MixUp
from bitdet.transfer.report import (
    accuracy_vs_shots_plot,
    confusion_plot,
    results_table,
    summarize_runs,
    training_curve_plot,
    write_json,
)
from bitdet.transfer.transforms import TransformedDataset, eval_transform, train_transform

__all__ = [
    "evaluate_only",
    "finetune",
    "finetune_sweep",
    "init_label",
    "resolve_weights",
    "run_config",
    "run_dir_name",
    "validate_sweep",
]

logger = logging.getLogger(__name__)

RESULTS_FILE = "results.json"


def resolve_weights(cfg) -> str:
    """``MODEL.WEIGHTS`` as a weights source ("" for none; a path, ``hf-hub:`` id or official
    name such as ``BiT-M-R50x1`` is checked to exist, an official file downloaded if absent)."""
    weights = check_weights(cfg.MODEL.WEIGHTS)
    if weights and not Path(weights).is_file():
        from bitdet.weights.loading import resolve_source

        resolve_source(weights)  # an hf-hub: id or official name; else names the accepted forms
    return weights


def init_label(cfg) -> str:
    """Short name of the initialisation for tables and folders: ``"scratch"`` for no weights,
    the weights file's stem (an official name: itself), or its folder's name for generic stems
    (``model_final``, ``model_0001000``)."""
    weights = check_weights(cfg.MODEL.WEIGHTS)
    if not weights:
        return "scratch"
    path = Path(weights)
    generic = re.fullmatch(r"model_(final|\d+)", path.stem) is not None
    return path.parent.name if generic and path.parent.name else path.stem


def run_dir_name(shots: Shots, seed: int) -> str:
    """Sub-folder of one sweep run, e.g. ``5shot_seed0`` or ``full_seed0``."""
    return f"{'full' if shots == FULL else f'{shots}shot'}_seed{seed}"


def _batch_split(value: int):
    if value < 0:
        raise ConfigError(
            f"SOLVER.BATCH_SPLIT must be 0 (automatic) or a positive integer, got {value}"
        )
    return "auto" if value == 0 else int(value)


def _open_splits(cfg):
    """(train, test) raw datasets of ``DATASETS.TRAIN.NAME``; with ``DATASETS.DOWNLOAD``, only
    the main process downloads."""
    from detectron2.utils import comm

    d = cfg.DATASETS
    name, spec = d.TRAIN.NAME, get_spec(d.TRAIN.NAME)
    splits = (
        (d.TRAIN.ROOT, d.TRAIN.SPLIT or spec.train_split),
        (d.TEST.ROOT or d.TRAIN.ROOT, d.TEST.SPLIT or spec.test_split),
    )
    if d.DOWNLOAD and comm.get_world_size() > 1:
        if comm.is_main_process():
            for root, split in splits:
                build_dataset(name, root, split, download=True)
        comm.synchronize()  # the others then find the files in place
    return tuple(
        build_dataset(name, root, split, d.DOWNLOAD and comm.is_main_process())
        for root, split in splits
    )


def run_config(cfg, shots: Shots, seed: int, output_dir: str):
    """The config of one run of a sweep as its folder records it: ``cfg`` with ``OUTPUT_DIR``,
    ``SEED``, ``FEWSHOT.SEEDS`` (``[seed]``) and ``FEWSHOT.SHOTS`` (``[]`` for full data) of
    that run, so that the same run started alone or from any sweep compares equal."""
    run_cfg = cfg.clone()
    run_cfg.defrost()
    run_cfg.OUTPUT_DIR = str(output_dir)
    run_cfg.SEED = int(seed)
    run_cfg.FEWSHOT.SEEDS = [int(seed)]
    run_cfg.FEWSHOT.SHOTS = [] if shots == FULL else [int(shots)]
    run_cfg.freeze()
    return run_cfg


def finetune(
    cfg,
    shots: Shots = FULL,
    seed: Optional[int] = None,
    output_dir: Optional[str] = None,
    force: bool = False,
) -> Dict[str, Any]:
    """Fine-tune once (one dataset, one shots setting, one seed) and evaluate on the test split.

    The run's folder opens by :func:`bitdet.engine.run_folder.open_run` with
    :func:`run_config`: a run of this config continues from its newest checkpoint, a finished
    one (``results.json``) is returned as is, a run of another config is refused.

    Args:
        cfg: a config with :func:`~bitdet.transfer.config.add_finetune_config` keys.
        shots: examples per class, or ``"full"`` for the whole training split.
        seed: few-shot draw and training seed; default ``cfg.SEED``.
        output_dir: default ``cfg.OUTPUT_DIR``.
        force: start over: delete the checkpoints and ``results.json`` first.

    Returns:
        The results written to ``OUTPUT_DIR/results.json`` (on the main process; other ranks
        get the training summary only): ``top1``, ``top5``, ``mean_per_class_acc``,
        ``per_class_acc`` (by class name), ``confusion``, ``rule``, ``steps``, ``wall_time_s``, ...
    """
    from detectron2.utils import comm

    from bitdet.engine import ClassifierTrainer, evaluate_classifier
    from bitdet.engine.run_folder import open_run

    t0 = time.perf_counter()
    seed = cfg.SEED if seed is None else int(seed)
    out = Path(output_dir or cfg.OUTPUT_DIR)
    finished = open_run(out, run_config(cfg, shots, seed, str(out)), RESULTS_FILE, force=force)
    if finished is not None:
        return finished

    d = cfg.DATASETS.TRAIN
    spec = get_spec(d.NAME)
    train_raw, test_raw = _open_splits(cfg)
    classes = dataset_classes(train_raw)
    num_classes = len(classes)
    if shots != FULL:
        indices = sample_few_shot(
            dataset_targets(train_raw), int(shots), seed, classes, num_classes
        )
        if comm.is_main_process():
            save_indices(
                out / "fewshot_indices.json",
                indices,
                dataset=d.NAME,
                split=d.SPLIT or spec.train_split,
                shots=int(shots),
                seed=seed,
            )
        train_raw = Subset(train_raw, indices.tolist())

    rule = rule_from_config(cfg, len(train_raw), dataset_image_size(spec, train_raw))
    random_crop = tri_state(cfg.INPUT.RANDOM_CROP, spec.random_crop, "INPUT.RANDOM_CROP")
    flip = tri_state(cfg.INPUT.RANDOM_FLIP, spec.flip, "INPUT.RANDOM_FLIP")
    setting = "all training images" if shots == FULL else f"{shots} per class"
    logger.info(
        "%s (%s, seed %d): %d training / %d test images, %d classes",
        d.NAME,
        setting,
        seed,
        len(train_raw),
        len(test_raw),
        num_classes,
    )
    logger.info(
        "%s; random crop %s, flip %s", rule, "on" if random_crop else "off", "on" if flip else "off"
    )

    train_set = TransformedDataset(
        train_raw, train_transform(rule.resize, rule.crop, random_crop, flip)
    )
    test_set = TransformedDataset(test_raw, eval_transform(rule.crop))

    weights = resolve_weights(cfg)
    # Seeded so that a from-scratch run is reproducible (and a resumed one matches it).
    torch.manual_seed(seed)
    model = create_model(cfg.MODEL.BIT.VARIANT, num_classes=num_classes, zero_head=True)
    model.set_grad_checkpointing(cfg.MODEL.ACTIVATION_CHECKPOINTING)
    load_report = None
    if weights:
        from bitdet.weights import load_weights

        # zero_head=True even when the upstream head has the same size: BiT starts every
        # downstream task from a zero head.
        load_report = str(
            load_weights(model, weights, zero_head=True, variant_option="MODEL.BIT.VARIANT")
        )

    s = cfg.SOLVER
    precision = engine_precision(cfg)
    trainer = ClassifierTrainer(
        model,
        train_set,
        output_dir=out,
        max_steps=rule.steps,
        global_batch=rule.batch_size,
        lr_at=rule.lr_at,
        loss=s.LOSS,
        momentum=s.MOMENTUM,
        weight_decay=s.WEIGHT_DECAY,
        batch_split=_batch_split(s.BATCH_SPLIT),
        precision=precision,
        channels_last=s.CHANNELS_LAST,
        compile=s.COMPILE,
        batch_hook=MixUp(rule.mixup_alpha, num_classes) if rule.mixup_alpha > 0 else None,
        evaluate=lambda m: evaluate_classifier(
            m,
            test_set,
            batch_size=cfg.TEST.IMS_PER_BATCH,
            num_workers=cfg.DATALOADER.NUM_WORKERS,
            precision=precision,
            cache_ws=cfg.TEST.CACHE_WS,
        ),
        eval_period=cfg.TEST.EVAL_PERIOD,
        checkpoint_period=s.CHECKPOINT_PERIOD,
        keep_last=s.KEEP_LAST,
        log_period=s.LOG_PERIOD,
        seed=seed,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
        device=resolve_device(cfg.MODEL.DEVICE),
        meta={
            "model": cfg.MODEL.BIT.VARIANT,
            "dataset": d.NAME,
            "num_classes": num_classes,
            "shots": shots,
        },
    )
    summary = trainer.train(resume=True)
    if not comm.is_main_process():
        return summary

    metrics = dict(summary.pop("eval"))
    results = {
        "dataset": d.NAME,
        "model": cfg.MODEL.BIT.VARIANT,
        "weights": weights,
        "init": init_label(cfg),
        "weights_load": load_report,
        "shots": shots,
        "seed": seed,
        "num_train": len(train_raw),
        "num_test": len(test_raw),
        "num_classes": num_classes,
        "classes": classes,
        "top1": metrics.get("top1"),
        "top5": metrics.get("top5"),
        "mean_per_class_acc": metrics.get("mean_per_class_acc"),
        "per_class_acc": dict(zip(classes, metrics.get("per_class_acc", []))),
        "confusion": metrics.get("confusion"),
        "rule": rule.to_dict(),
        "random_crop": random_crop,
        "flip": flip,
        "steps": rule.steps,
        "train": summary,
        "checkpoint": str(trainer.checkpointer.latest()),
        "wall_time_s": time.perf_counter() - t0,
    }
    if results["confusion"] is not None:
        confusion_plot(
            results["confusion"],
            classes,
            out / "confusion.png",
            title=f"{d.NAME} ({setting}, {results['init']}): top-1 {results['top1']:.1f}%",
        )
    if (out / "metrics.json").is_file():
        training_curve_plot(
            out / "metrics.json", out / "training_curve.png", title=f"{d.NAME} ({setting})"
        )
    write_json(out / RESULTS_FILE, results)
    logger.info(
        "%s: top-1 %.2f%%, top-5 %.2f%% -> %s",
        d.NAME,
        results["top1"],
        results["top5"],
        out / RESULTS_FILE,
    )
    return results


def evaluate_only(cfg, output_dir: Optional[str] = None) -> Dict[str, Any]:
    """Evaluate ``MODEL.WEIGHTS`` (head included) on the test split at the HyperRule's crop size.

    Returns:
        :func:`bitdet.engine.evaluate_classifier`'s metrics plus ``crop``; also written to
        ``OUTPUT_DIR/eval_results.json``.
    """
    from bitdet.engine import evaluate_classifier
    from bitdet.weights import load_weights

    d = cfg.DATASETS.TRAIN
    spec = get_spec(d.NAME)
    weights = resolve_weights(cfg)
    if not weights:
        raise ConfigError("evaluation needs MODEL.WEIGHTS / --weights (a fine-tuned checkpoint)")
    train_raw, test_raw = _open_splits(cfg)
    classes = dataset_classes(train_raw)
    rule = rule_from_config(cfg, len(train_raw), dataset_image_size(spec, train_raw))
    model = create_model(cfg.MODEL.BIT.VARIANT, num_classes=len(classes))
    report = load_weights(model, weights, variant_option="MODEL.BIT.VARIANT")
    if not report.head.startswith("loaded"):
        raise ConfigError(
            f"{weights}: the head was not loaded ({report.head}); evaluate a fine-tuned checkpoint"
        )
    device = resolve_device(cfg.MODEL.DEVICE)
    memory_format = torch.channels_last if cfg.SOLVER.CHANNELS_LAST else torch.contiguous_format
    metrics = evaluate_classifier(
        model.to(device, memory_format=memory_format),
        TransformedDataset(test_raw, eval_transform(rule.crop)),
        batch_size=cfg.TEST.IMS_PER_BATCH,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
        cache_ws=cfg.TEST.CACHE_WS,
    )
    metrics.update(crop=rule.crop, weights=weights, dataset=d.NAME, classes=classes)
    write_json(Path(output_dir or cfg.OUTPUT_DIR) / "eval_results.json", metrics)
    return metrics


def validate_sweep(cfg, shots_list: Sequence[Shots], seeds: Sequence[int]) -> None:
    """Check every (shots, seed) of a sweep against the training split before any run starts.

    Raises:
        ValueError: a repeated or negative seed, a repeated shots entry, or a shots count that
            some class cannot supply (the class and its count named, as with the run itself).
    """
    if not seeds:
        raise ConfigError("FEWSHOT.SEEDS / --seeds: no seed given")
    for seed in seeds:
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise ConfigError(f"FEWSHOT.SEEDS / --seeds: {seed!r} is not a non-negative integer")
    for name, values in (("seeds", list(seeds)), ("shots", list(shots_list))):
        repeated = sorted({str(v) for v in values if values.count(v) > 1})
        if repeated:
            raise ConfigError(f"--{name}: {', '.join(repeated)} given more than once")
    counts = [int(s) for s in shots_list if s != FULL]
    if not counts:
        return
    train_raw, _ = _open_splits(cfg)
    classes = dataset_classes(train_raw)
    targets = dataset_targets(train_raw)
    for shots in counts:
        for seed in seeds:
            try:
                sample_few_shot(targets, shots, int(seed), classes, len(classes))
            except ValueError as e:
                raise ConfigError(
                    f"--shots {shots} (seed {seed}) on {cfg.DATASETS.TRAIN.NAME}: {e}; no run was "
                    "started"
                ) from None


def finetune_sweep(
    cfg,
    shots_list: Sequence[Shots],
    seeds: Sequence[int],
    weights_list: Sequence[str] = (),
    force: bool = False,
) -> Dict[str, Any]:
    """One :func:`finetune` run per (weights, shots, seed), then a summary over seeds.

    Runs go to ``OUTPUT_DIR/<init>/<shots>_seed<seed>/`` (``<init>``: :func:`init_label`), so
    a later sweep with more initialisations, shots or seeds reuses finished runs and continues
    interrupted ones; every run folder is checked against its config before the first run
    (:func:`bitdet.engine.run_folder.check_run`). Writes ``OUTPUT_DIR/results.json`` (every run
    and mean ± std per setting), ``results.md`` (the markdown table) and ``accuracy_vs_shots.png``.

    Args:
        cfg: the fine-tuning config (not modified).
        shots_list: e.g. ``[1, 5, 10, "full"]``.
        seeds: few-shot draw / training seeds.
        weights_list: initialisations to compare (weights paths, official names such as
            ``BiT-M-R50x1``, ``""`` for none); default: ``cfg.MODEL.WEIGHTS`` alone.
        force: start every run over.

    Returns:
        ``{"runs": [...], "summary": [...], "table": markdown}`` (main process; ``{}`` elsewhere).
    """
    from detectron2.utils import comm

    from bitdet.engine.run_folder import check_runs, record_config
    from bitdet.utils.io import atomic_write

    out = Path(cfg.OUTPUT_DIR)
    shots_list = parse_shots(list(shots_list))
    validate_sweep(cfg, shots_list, list(seeds))
    key = "--weights" if weights_list else "MODEL.WEIGHTS"
    inits = [check_weights(w, key) for w in (weights_list or [cfg.MODEL.WEIGHTS])]
    planned = []  # (weights config, shots, seed, folder) of every run
    labels: Dict[str, str] = {}
    for weights in inits:
        init_cfg = cfg.clone()
        init_cfg.defrost()
        init_cfg.MODEL.WEIGHTS = weights
        label = init_label(init_cfg)
        if label in labels:
            raise ConfigError(
                f"weights {labels[label]!r} and {weights!r} share the label {label!r}; rename one "
                "file"
            )
        labels[label] = weights
        planned += [
            (init_cfg, shots, int(seed), str(out / label / run_dir_name(shots, seed)))
            for shots in shots_list
            for seed in seeds
        ]
    check_runs(
        [(folder, run_config(c, shots, seed, folder)) for c, shots, seed, folder in planned],
        RESULTS_FILE,
        force=force,
    )
    runs: List[Dict[str, Any]] = []
    for init_cfg, shots, seed, folder in planned:
        result = finetune(init_cfg, shots=shots, seed=seed, output_dir=folder, force=force)
        if comm.is_main_process():
            runs.append(
                {
                    k: result[k]
                    for k in (
                        "dataset",
                        "init",
                        "shots",
                        "seed",
                        "top1",
                        "top5",
                        "mean_per_class_acc",
                        "steps",
                        "num_train",
                        "wall_time_s",
                    )
                }
            )
    if not comm.is_main_process():
        return {}
    summary = summarize_runs(runs)
    table = results_table(summary)
    record_config(out, cfg)  # the sweep's own settings, beside its table
    write_json(
        out / "results.json",
        {"model": cfg.MODEL.BIT.VARIANT, "weights": inits, "runs": runs, "summary": summary},
    )
    with atomic_write(out / "results.md", "w") as f:
        f.write(table)
    accuracy_vs_shots_plot(
        summary,
        out / "accuracy_vs_shots.png",
        title=f"{cfg.DATASETS.TRAIN.NAME}: {cfg.MODEL.BIT.VARIANT}",
    )
    print(table, flush=True)
    return {"runs": runs, "summary": summary, "table": table}
