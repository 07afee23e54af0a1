"""What every bitdet entry point in tools/ shares: Detectron2's argument parser with a
``--config`` alias, config set-up (file + ``KEY VALUE`` overrides, frozen, logged, the output
folder locked), and the launch (torchrun, SLURM or ``--num-gpus``: :mod:`bitdet.engine.launch`)."""
import logging
from typing import Callable, Sequence

from detectron2.engine import default_argument_parser, default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from bitdet.config import resolve_config_file
from bitdet.engine.launch import launch_main, launch_summary
from bitdet.engine.output_lock import OutputDirLocked, acquire_output_lock

__all__ = ["argument_parser", "launch_main", "lock_output_dir", "setup_cfg", "setup_logging"]


def argument_parser():
    """Detectron2's ``default_argument_parser`` plus ``--config`` (same as ``--config-file``)."""
    parser = default_argument_parser()
    parser.add_argument("--config", dest="config_file", metavar="FILE",
                        help="same as --config-file; a bare name is looked up in configs/")
    return parser


def lock_output_dir(output_dir: str) -> None:
    """The main process locks ``output_dir``; every process stops if another run holds it."""
    error = None
    if comm.is_main_process() and output_dir:
        try:
            acquire_output_lock(output_dir)
        except OutputDirLocked as e:
            error = str(e)
    if comm.get_world_size() > 1:
        error = comm.all_gather(error)[0]
    if error:
        raise SystemExit(error)


def setup_logging(output_dir: str) -> None:
    """bitdet's logger (console on the main process, ``log.txt[.rank<r>]`` in ``output_dir``),
    starting with the launcher line (launcher, rank, world size, backend)."""
    setup_logger(output_dir or None, distributed_rank=comm.get_rank(), name="bitdet")
    # Detectron2's logger setup leaves the root at WARNING; bitdet's modules log under "bitdet".
    logging.getLogger("bitdet").setLevel(logging.INFO)
    logging.getLogger("bitdet").info(launch_summary())


def setup_cfg(args, load_cfg: Callable, extra_opts: Sequence[str] = ()):
    """``load_cfg(config_file, opts)`` with the flags' and trailing overrides, frozen; output folder
    locked, logging set up (bitdet's, then Detectron2's ``default_setup``)."""
    if args.config_file:  # default_setup copies the file into OUTPUT_DIR: give it the resolved path
        args.config_file = resolve_config_file(args.config_file)
    cfg = load_cfg(args.config_file, [*extra_opts, *args.opts])
    cfg.freeze()
    lock_output_dir(cfg.OUTPUT_DIR)
    setup_logging(cfg.OUTPUT_DIR)
    default_setup(cfg, args)
    return cfg
