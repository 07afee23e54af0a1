#!/usr/bin/env python
"""Upstream BiT pretraining (BiT-S / BiT-M / BiT-L style recipes) of a ResNet-v2 classifier.

Examples::

    # CPU demo: R14-tiny on Fashion-MNIST (its time: docs/demo.md)
    python tools/pretrain.py --config-file configs/pretrain/demo_fashion_mnist.yaml
    # BiT-S R50x1 on ILSVRC-2012 (ImageFolder), 8 GPUs; the same command resumes
    python tools/pretrain.py --config-file configs/pretrain/bit_s_R50x1.yaml --num-gpus 8 \\
        DATASETS.TRAIN.ROOT /data/imagenet/train DATASETS.TEST.ROOT /data/imagenet/val
    # two machines of 8 GPUs
    python tools/pretrain.py --config-file configs/pretrain/bit_m_R101x3.yaml --num-gpus 8 \\
        --num-machines 2 --machine-rank 0 --dist-url tcp://HOST:PORT
    # the same under torchrun, or SLURM with one task per GPU (see tools/slurm.sbatch)
    torchrun --standalone --nproc_per_node 8 -m bitdet.tools.pretrain \\
        --config-file pretrain/bit_s_R50x1.yaml
    sbatch --nodes 2 tools/slurm.sbatch pretrain --config-file pretrain/bit_m_R101x3.yaml
    # evaluate a trained model on DATASETS.TEST
    python tools/pretrain.py --config-file ... --eval-only \\
        MODEL.WEIGHTS output/pretrain/model_final.pth

Writes to OUTPUT_DIR: model_*.pth checkpoints, metrics.json, TensorBoard events, and at the end
model_final.pth (bitdet), model_final.npz (official BiT layout) and final.json. SIGTERM saves a
checkpoint and exits 0, Ctrl-C saves one and exits 130; re-running the command resumes, and
re-running a finished run reports its final.json unchanged. A folder holding a run of another
config is refused (the differing keys are listed): --force starts over there.
"""

import json

from detectron2.utils import comm

from bitdet.config import resolve_device
from bitdet.errors import ConfigError
from bitdet.pretrain import (
    build_datasets,
    build_model,
    evaluator,
    get_pretrain_cfg,
    run_pretraining,
)
from bitdet.tools.cli import argument_parser, run_launched, setup_cfg

# KEY VALUE overrides shown in --help (keys of the pretraining config).
OVERRIDES_EXAMPLE = "SOLVER.BASE_LR_PER_256 0.01 MODEL.DEVICE cpu"


def setup(args):
    """Config from file + overrides, frozen; logging and output folder set up."""
    # config.yaml: run_pretraining records it
    return setup_cfg(args, get_pretrain_cfg, config_name=None, config_kind="pretrain")


def main(args):
    cfg = setup(args)
    if args.eval_only:
        _, test_set = build_datasets(cfg)
        if test_set is None:
            raise ConfigError(
                "--eval-only needs DATASETS.TEST.NAME and DATASETS.TEST.ROOT in the config"
            )
        model = (
            build_model(cfg).to(resolve_device(cfg.MODEL.DEVICE)).eval()
            if comm.is_main_process()
            else None
        )
        results = evaluator(cfg, test_set)(model) if comm.is_main_process() else {}
        if comm.is_main_process():
            print(
                json.dumps({k: v for k, v in results.items() if not isinstance(v, list)}, indent=2)
            )
        return results
    # Like every trainer, pretraining resumes by default (preemption-safe); --force starts over.
    return run_pretraining(cfg, force=args.force)


def parse_args(argv=None):
    parser = argument_parser(
        __doc__,
        overrides_example=OVERRIDES_EXAMPLE,
        resume=False,
        force_help="start over: delete OUTPUT_DIR's checkpoints and final files, train from step 0",
    )
    return parser.parse_args(argv)


def cli(argv=None):
    """Console-script entry point."""
    run_launched("pretrain", main, parse_args(argv))


if __name__ == "__main__":
    cli()
