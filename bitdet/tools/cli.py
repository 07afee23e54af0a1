"""What every bitdet entry point in tools/ shares: Detectron2's argument parser with a
``--config`` alias, config set-up (file + ``KEY VALUE`` overrides, frozen, logged), and launch."""
import logging
from typing import Callable, Sequence

from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from bitdet.config import resolve_config_file


def argument_parser():
    """Detectron2's ``default_argument_parser`` plus ``--config`` (same as ``--config-file``)."""
    parser = default_argument_parser()
    parser.add_argument("--config", dest="config_file", metavar="FILE",
                        help="same as --config-file; a bare name is looked up in configs/")
    return parser


def setup_cfg(args, load_cfg: Callable, extra_opts: Sequence[str] = ()):
    """``load_cfg(config_file, opts)`` with the flags' and trailing overrides, frozen; output folder
    and logging set up by Detectron2's ``default_setup``."""
    if args.config_file:  # default_setup copies the file into OUTPUT_DIR: give it the resolved path
        args.config_file = resolve_config_file(args.config_file)
    cfg = load_cfg(args.config_file, [*extra_opts, *args.opts])
    cfg.freeze()
    default_setup(cfg, args)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="bitdet")
    # Detectron2's logger setup leaves the root at WARNING; bitdet's modules log under "bitdet".
    logging.getLogger("bitdet").setLevel(logging.INFO)
    return cfg


def launch_main(main: Callable, args) -> None:
    """Run ``main(args)`` on ``--num-gpus`` processes per machine (one process: in this one)."""
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))
