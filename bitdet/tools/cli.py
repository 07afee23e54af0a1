"""What every bitdet entry point in tools/ shares: one argument-parser shape (Detectron2's flags,
``--config`` as an alias of ``--config-file``, only the flags a tool uses), config set-up (file +
``KEY VALUE`` overrides, device checked, frozen; details to the log file), user errors as one
line with exit status 2, the output folder locked, and the launch (torchrun, SLURM or
``--num-gpus``: :mod:`bitdet.engine.launch`)."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from typing import Callable, Iterator, Optional, Sequence

from detectron2.config import LazyConfig
from detectron2.engine import default_argument_parser
from detectron2.utils import comm
from detectron2.utils.collect_env import collect_env_info
from detectron2.utils.env import seed_all_rng
from detectron2.utils.logger import setup_logger
from omegaconf import DictConfig, OmegaConf

from bitdet.config import check_device, resolve_config_file
from bitdet.engine.launch import launch_main, launch_summary
from bitdet.engine.output_lock import OutputDirError, acquire_output_lock
from bitdet.engine.run_folder import EVAL_CONFIG, RUN_CONFIG, record_config
from bitdet.errors import UserError
from bitdet.log import FILE_LOGGER

__all__ = [
    "FILE_LOGGER",
    "USER_ERRORS",
    "argument_parser",
    "launch_main",
    "lock_output_dir",
    "setup_cfg",
    "run_launched",
    "setup_output",
    "program_name",
    "user_error_message",
    "user_errors",
]

# Errors a user fixes: bitdet's user errors (bitdet.errors: a config key or value, a flag, a
# file's contents, the device, the output folder, a loss that became NaN), raised with a message
# naming what to change, and the OS errors about a path the user gave (the message names it).
# One line, exit 2; any other exception is a bug and keeps its traceback.
USER_ERRORS = (UserError, FileNotFoundError, NotADirectoryError, IsADirectoryError)


def argument_parser(
    description: Optional[str] = None,
    *,
    overrides_example: str,
    eval_only: bool = True,
    resume: bool = True,
    launcher: bool = True,
    resume_help: Optional[str] = None,
    force_help: Optional[str] = None,
) -> argparse.ArgumentParser:
    """Detectron2's ``default_argument_parser`` flags that a tool uses, plus ``--config``.

    ``--config-file`` (alias ``--config``) is required: no tool runs a default config silently.

    Args:
        description: the tool's help text (its module docstring).
        overrides_example: ``KEY VALUE`` pairs shown in the help, keys of the tool's config.
        eval_only, resume: add ``--eval-only`` / ``--resume``.
        launcher: add ``--num-gpus``, ``--num-machines``, ``--machine-rank``, ``--dist-url``.
        resume_help: what ``--resume`` means for this tool.
        force_help: add ``--force`` (a trainer's run starts over:
            :func:`bitdet.engine.run_folder.open_run`) with this help: what it deletes.
    """
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--config-file",
        "--config",
        dest="config_file",
        metavar="FILE",
        required=True,
        help="config file: a path, or one under the shipped configs/ (e.g. "
        "COCO-Detection/retinanet_bit_m.yaml; a unique file name alone also works)",
    )
    if resume:
        parser.add_argument(
            "--resume",
            action="store_true",
            help=resume_help or "continue from the last checkpoint in OUTPUT_DIR",
        )
    if eval_only:
        parser.add_argument(
            "--eval-only", action="store_true", help="evaluate MODEL.WEIGHTS only, no training"
        )
    if force_help:
        parser.add_argument("--force", action="store_true", help=force_help)
    if launcher:
        d2 = default_argument_parser()  # the same defaults as Detectron2 (its per-user port)
        parser.add_argument("--num-gpus", type=int, default=1, help="processes (GPUs) per machine")
        parser.add_argument("--num-machines", type=int, default=1, help="total number of machines")
        parser.add_argument(
            "--machine-rank", type=int, default=0, help="rank of this machine (unique per machine)"
        )
        parser.add_argument(
            "--dist-url",
            default=d2.get_default("dist_url"),
            help="torch.distributed init URL, e.g. tcp://HOST:PORT of machine 0",
        )
    parser.add_argument(
        "opts",
        nargs=argparse.REMAINDER,
        default=[],
        metavar="KEY VALUE",
        help=f"config overrides, e.g. {overrides_example}",
    )
    return parser


def setup_cfg(
    args,
    load_cfg: Callable,
    extra_opts: Sequence[str] = (),
    config_name: Optional[str] = RUN_CONFIG,
    *,
    config_kind: str,
):
    """``load_cfg(config_file, opts)`` with the flags' and trailing overrides, device checked,
    frozen; output folder locked, logging and seeding set up by :func:`setup_output`.

    ``config_kind`` (one of :data:`bitdet.config.CONFIG_KINDS`): the shipped configs a missing
    ``--config-file`` is compared with. ``config_name``: where :func:`setup_output` records the
    config in ``OUTPUT_DIR``; None for the trainers, which record it when they open the run
    (:func:`bitdet.engine.run_folder.open_run`)."""
    args.config_file = resolve_config_file(args.config_file, kind=config_kind)
    cfg = load_cfg(args.config_file, [*extra_opts, *args.opts])
    for section, key in (("MODEL", "DEVICE"), ("BENCH", "DEVICE")):
        if section in cfg and key in cfg[section]:
            check_device(cfg[section][key], f"{section}.{key}")
    cfg.freeze()
    lock_output_dir(cfg.OUTPUT_DIR)
    setup_output(cfg, args, config_name)
    return cfg


def lock_output_dir(output_dir: str) -> None:
    """The main process locks ``output_dir``; every process stops with the main process's
    :class:`OutputDirError` (a user error) if another run holds it, or it is a file or
    cannot be written."""
    error = None
    if comm.is_main_process() and output_dir:
        try:
            acquire_output_lock(output_dir)
        except OutputDirError as e:
            error = str(e)
    if comm.get_world_size() > 1:
        error = comm.all_gather(error)[0]
    if error:
        raise OutputDirError(error)


def _setting(cfg, yacs_key: str, lazy_key: str, default=None):
    """A setting of a yacs config (``OUTPUT_DIR``) or of a LazyConfig (``train.output_dir``)."""
    if isinstance(cfg, DictConfig):
        return OmegaConf.select(cfg, lazy_key, default=default)
    return cfg.get(yacs_key, default)


def setup_output(cfg, args, config_name: Optional[str] = RUN_CONFIG) -> None:
    """Detectron2's ``default_setup``, with the console kept short and plain.

    ``cfg`` is a yacs config or a LazyConfig (whose settings are ``train.output_dir``,
    ``train.seed``, ``train.cudnn_benchmark``, as Detectron2 reads them).

    Creates ``OUTPUT_DIR``, logs ``detectron2``, ``fvcore`` and ``bitdet`` to the console (rank
    0; colours only on a terminal) and to ``OUTPUT_DIR/log.txt``; writes the environment, the
    command line and the full config to the log file only, and the config to
    ``OUTPUT_DIR/<config_name>`` (``config_eval.yaml`` with ``--eval-only``: never over the
    config of the training run beside it); seeds every RNG from ``SEED`` (< 0: a random
    seed); sets cuDNN benchmarking from ``CUDNN_BENCHMARK`` unless evaluating.
    """
    output_dir = _setting(cfg, "OUTPUT_DIR", "train.output_dir") or None
    rank = comm.get_rank()
    if output_dir and comm.is_main_process():
        os.makedirs(output_dir, exist_ok=True)
    color = sys.stdout.isatty()
    for name in ("fvcore", "detectron2", "bitdet"):
        setup_logger(output_dir, distributed_rank=rank, color=color, name=name)
    # Detectron2's logger set-up leaves the root at WARNING; bitdet's modules log under "bitdet".
    logging.getLogger("bitdet").setLevel(logging.INFO)
    logging.getLogger("bitdet").info(launch_summary())  # launcher, rank, world size, backend
    details = setup_logger(
        output_dir, distributed_rank=rank, name=FILE_LOGGER, configure_stdout=False
    )
    details.info("rank %d of %d; command line: %s", rank, comm.get_world_size(), " ".join(sys.argv))
    details.info("arguments: %s", args)
    with _records_to(CPP_EXTENSION_LOGGER, details):
        details.info("environment:\n%s", collect_env_info())
    if getattr(args, "eval_only", False):
        config_name = EVAL_CONFIG
    if output_dir and comm.is_main_process():
        lazy = isinstance(cfg, DictConfig)
        if config_name and lazy:
            LazyConfig.save(cfg, os.path.join(output_dir, config_name))
        elif config_name:
            record_config(output_dir, cfg, config_name)
        dump = LazyConfig.to_py(cfg) if lazy else cfg.dump()
        details.info(
            "config %s merged with overrides %s:\n%s", args.config_file, list(args.opts), dump
        )
    if output_dir:
        logging.getLogger("bitdet").info(
            "config %s -> %s (environment and full config: %s)",
            args.config_file,
            output_dir,
            os.path.join(output_dir, "log.txt"),
        )
    seed = _setting(cfg, "SEED", "train.seed", -1)
    seed_all_rng(None if seed < 0 else seed + rank)
    if not getattr(args, "eval_only", False):
        import torch

        torch.backends.cudnn.benchmark = bool(
            _setting(cfg, "CUDNN_BENCHMARK", "train.cudnn_benchmark", False)
        )


# torch's C++-extension module, imported by Detectron2's environment report: on a machine
# without CUDA its import warns "No CUDA runtime is found" about building extensions, which no
# tool does; the line belongs with the environment in the log file.
CPP_EXTENSION_LOGGER = "torch.utils.cpp_extension"


@contextlib.contextmanager
def _records_to(name: str, target: logging.Logger) -> Iterator[None]:
    """Inside the block, logger ``name``'s records go to ``target``'s handlers only (none:
    dropped)."""
    source = logging.getLogger(name)
    saved = source.handlers, source.propagate
    source.handlers, source.propagate = list(target.handlers) or [logging.NullHandler()], False
    try:
        yield
    finally:
        source.handlers, source.propagate = saved


def program_name(tool: str) -> str:
    """The name a message of ``tool`` (its module's name) starts with: the console script when
    one was run (``bitdet-convert``, argparse's usage shows the same), else ``tool`` (for
    ``python tools/<tool>.py`` and ``python -m bitdet.tools.<tool>``)."""
    invoked = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return invoked if invoked.startswith("bitdet-") else tool


@contextlib.contextmanager
def user_errors(tool: str) -> Iterator[None]:
    """Turn a user error (:data:`USER_ERRORS`) into one line ``<tool>: error: <message>``
    (``<tool>``: :func:`program_name`) and exit 2; any other exception propagates with its
    traceback.

    The traceback goes to the log file when logging is set up. ``BITDET_TRACEBACK=1`` re-raises
    instead, for debugging.
    """
    try:
        yield
    except USER_ERRORS as e:
        if os.environ.get("BITDET_TRACEBACK") == "1":
            raise
        tool = program_name(tool)
        details = logging.getLogger(FILE_LOGGER)
        if details.handlers:
            details.error("%s failed", tool, exc_info=True)
        print(f"{tool}: error: {user_error_message(e)}", file=sys.stderr, flush=True)
        sys.exit(2)


def user_error_message(error: BaseException) -> str:
    """The one-line text of a user error (:data:`USER_ERRORS`): its message without the quotes
    ``KeyError`` adds; an OS error's with the path it names."""
    e = error
    message = str(e.args[0]) if len(e.args) == 1 and not isinstance(e, OSError) else str(e)
    if isinstance(e, OSError) and e.filename and str(e.filename) not in message:
        message = f"{message}: {e.filename}"
    return message


def run_launched(tool: str, main: Callable, args) -> None:
    """``main(args)`` in this job's process group (:func:`launch_main`); a user error ends it with
    one line and exit status 2 (:func:`user_errors`), a Ctrl-C that no training loop handled
    (:mod:`bitdet.engine.stop_signals`) with one line and exit status 130."""
    try:
        with user_errors(tool):
            launch_main(main, args)
    except KeyboardInterrupt:  # outside a training loop, or a second Ctrl-C while one saves
        print(
            f"{program_name(tool)}: interrupted (Ctrl-C): nothing saved since the last checkpoint",
            file=sys.stderr,
            flush=True,
        )
        sys.exit(130)
