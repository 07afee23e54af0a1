"""A run's folder, and the one rule every trainer (detection, pretraining, fine-tuning, VTAB
tasks) follows when it opens one again.

A training run records the config that made it as ``<folder>/config.yaml`` when it opens the
folder. Opening it again:

- nothing of a run there (no ``model_*.pth``, ``last_checkpoint`` or results file): a new run;
- a run of another config: refused with one line listing the settings that differ
  (``KEY: old -> new``; :class:`RunConfigMismatch`, a user error); ``--force`` starts over
  there, or set another ``OUTPUT_DIR``;
- a finished run (its results file) of this config: its results are printed and returned,
  nothing trains;
- an unfinished run of this config: training continues from its newest checkpoint (resuming is
  the default, so a requeued or re-run command picks up where it stopped);
- ``force``: its checkpoints and results are deleted first and training starts from step 0.

Keys that do not change what a run computes are not compared: :data:`UNCOMPARED_KEYS`.
``--eval-only`` records its config as ``config_eval.yaml``, never over the run's ``config.yaml``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import yaml
from detectron2.utils import comm

from bitdet.engine.checkpoint import clear_run
from bitdet.errors import UserError
from bitdet.utils.io import PathLike, atomic_write
from bitdet.weights.checkpoint_file import LAST_CHECKPOINT

__all__ = [
    "EVAL_CONFIG",
    "RUN_CONFIG",
    "RunConfigMismatch",
    "UNCOMPARED_KEYS",
    "check_run",
    "check_runs",
    "config_differences",
    "open_run",
    "record_config",
]

logger = logging.getLogger(__name__)

RUN_CONFIG = "config.yaml"
EVAL_CONFIG = "config_eval.yaml"
# Where a run writes and how often, not what it computes: a moved folder or another checkpoint
# or log period continues the same run.
UNCOMPARED_KEYS = (
    "OUTPUT_DIR",
    "SOLVER.CHECKPOINT_PERIOD",
    "SOLVER.KEEP_LAST",
    "SOLVER.LOG_PERIOD",
)
_MAX_LISTED = 6  # differences named in the one-line error
_MAX_VALUE = 40  # characters of a value in it


class RunConfigMismatch(UserError, ValueError):
    """The folder holds checkpoints or results of another config."""


def record_config(folder: PathLike, cfg, name: str = RUN_CONFIG) -> Path:
    """Write ``cfg`` (a yacs ``CfgNode``) to ``folder/name`` atomically; returns the path."""
    path = Path(folder) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "w") as f:
        f.write(cfg.dump())
    return path


def _flatten(node: Any, prefix: str = "") -> Dict[str, Any]:
    if not isinstance(node, Mapping):
        return {prefix: node}
    flat: Dict[str, Any] = {}
    for key, value in node.items():
        flat.update(_flatten(value, f"{prefix}{key}."))
    return {k.rstrip("."): v for k, v in flat.items()}


def config_differences(old: Mapping, new: Mapping) -> List[Tuple[str, Any, Any]]:
    """``(KEY, old value, new value)`` for every compared key whose value differs (a key absent on
    one side has the value ``"<absent>"`` there), sorted by key."""
    a, b = _flatten(old), _flatten(new)
    absent = "<absent>"
    return [
        (key, a.get(key, absent), b.get(key, absent))
        for key in sorted(set(a) | set(b))
        if key not in UNCOMPARED_KEYS and a.get(key, absent) != b.get(key, absent)
    ]


def _compact(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) or value in ("", "<absent>") else value
    text = "''" if text == '""' else text
    return text if len(text) <= _MAX_VALUE else text[: _MAX_VALUE - 3] + "..."


def _holds_run(folder: Path, results_file: str) -> bool:
    return (
        (folder / results_file).is_file()
        or (folder / LAST_CHECKPOINT).is_file()
        or any(folder.glob("model_*.pth"))
    )


def _read_json(path: Path) -> Dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise RunConfigMismatch(
            f"{path} cannot be read ({type(e).__name__}: {e}); --force starts the run over"
        ) from None


def check_run(folder: PathLike, cfg, results_file: str) -> Optional[Dict[str, Any]]:
    """What ``folder`` holds for a run of ``cfg`` (no side effects; any process may call it).

    Returns:
        The stored results of a finished run of ``cfg``; None when there is nothing of a run,
        or an unfinished run of ``cfg`` to continue.

    Raises:
        RunConfigMismatch: checkpoints or results of another config (the line lists the
            differing keys), or an unreadable ``config.yaml`` or results file.
    """
    folder = Path(folder)
    if not folder.is_dir() or not _holds_run(folder, results_file):
        return None
    stored = folder / RUN_CONFIG
    if not stored.is_file():
        logger.warning(
            "%s holds checkpoints or results but no %s: their settings cannot be compared with "
            "this run's; continuing it (--force starts over)",
            folder,
            RUN_CONFIG,
        )
    else:
        try:
            old = yaml.safe_load(stored.read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise RunConfigMismatch(
                f"{stored} cannot be read ({type(e).__name__}); --force starts the run over "
                "there, or set another OUTPUT_DIR"
            ) from None
        differences = config_differences(old, yaml.safe_load(cfg.dump()))
        if differences:
            listed = ", ".join(
                f"{key}: {_compact(a)} -> {_compact(b)}" for key, a, b in differences[:_MAX_LISTED]
            )
            more = (
                f" (and {len(differences) - _MAX_LISTED} more)"
                if len(differences) > _MAX_LISTED
                else ""
            )
            raise RunConfigMismatch(
                f"{folder} holds a run of another config ({listed}{more}); --force starts over "
                "there (deleting its checkpoints and results), or set another OUTPUT_DIR"
            )
    results = folder / results_file
    return _read_json(results) if results.is_file() else None


def _decided_by_main(decide: Callable[[], Any]) -> Any:
    """``decide()`` on the main process, its value (or its :class:`RunConfigMismatch`) on every
    one."""
    decision: Tuple[str, Any] = ("ok", None)
    if comm.is_main_process():
        try:
            decision = ("ok", decide())
        except RunConfigMismatch as e:
            decision = ("error", str(e))
    if comm.get_world_size() > 1:
        decision = comm.all_gather(decision)[0]
    kind, payload = decision
    if kind == "error":
        raise RunConfigMismatch(payload)
    return payload


def check_runs(
    runs: Sequence[Tuple[PathLike, Any]], results_file: str, force: bool = False
) -> None:
    """:func:`check_run` for every ``(folder, cfg)`` of a sweep before its first run starts, so
    that a folder of another config stops the sweep before its first run, not midway.

    ``force``: nothing to check, every run starts over (:func:`open_run` with ``force``).

    Raises:
        RunConfigMismatch: the first folder holding a run of another config.
    """
    if force:
        return

    def check_all() -> None:
        for folder, cfg in runs:
            check_run(folder, cfg, results_file)

    _decided_by_main(check_all)


def _summary(results: Mapping[str, Any]) -> str:
    numbers = [
        (k, v)
        for k, v in results.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    ]
    return (
        ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in numbers)
        or "no numbers"
    )


def open_run(
    folder: PathLike, cfg, results_file: str, force: bool = False, clear: Sequence[str] = ()
) -> Optional[Dict[str, Any]]:
    """Open ``folder`` for a training run of ``cfg`` by the rule of the module docstring.

    The main process decides and every process follows it; on the way to training, the main
    process records ``cfg`` as ``folder/config.yaml``.

    Args:
        folder: the run's folder (its ``OUTPUT_DIR``, or a sweep's sub-folder).
        cfg: the run's config (a yacs ``CfgNode``).
        results_file: the file a finished run leaves (e.g. ``results.json``).
        force: start over: delete checkpoints, ``results_file`` and ``clear`` first.
        clear: further files of a run that ``force`` deletes (e.g. ``model_final.pth``).

    Returns:
        The results of a finished run of ``cfg`` (also printed), or None: train, resuming
        from the newest checkpoint in ``folder`` if there is one.

    Raises:
        RunConfigMismatch: see :func:`check_run`.
    """
    folder = Path(folder)
    results = None if force else _decided_by_main(lambda: check_run(folder, cfg, results_file))
    if results is not None:
        logger.info(
            "%s has finished with this config; its results (%s): %s. --force starts it over",
            folder,
            results_file,
            _summary(results),
        )
        return results
    if comm.is_main_process():
        if force:
            clear_run(folder, (results_file, *clear))
        record_config(folder, cfg)
    comm.synchronize()
    return None
