#!/usr/bin/env python
"""Train or evaluate a Detectron2 detector with a BiT backbone (RetinaNet on COCO-2017 by default).

Examples::

    # the paper's setting (BiT-M-R101x3), 8 GPUs
    python tools/train_net.py --config COCO-Detection/retinanet_bit_m.yaml --num-gpus 8
    # two machines
    python tools/train_net.py --config COCO-Detection/retinanet_bit_m.yaml --num-gpus 8 \\
        --num-machines 2 --machine-rank 0 --dist-url tcp://HOST:PORT
    # torchrun / SLURM (one task per GPU) / CPU processes (gloo)
    torchrun --standalone --nproc_per_node 8 -m bitdet.tools.train_net \\
        --config COCO-Detection/retinanet_bit_m.yaml
    sbatch --nodes 2 tools/slurm.sbatch train_net --config COCO-Detection/retinanet_bit_m.yaml
    python tools/train_net.py --config quick_schedules/retinanet_bit_instant_test.yaml \\
        --num-gpus 2 MODEL.DEVICE cpu
    # re-running a command continues its run from the last checkpoint of OUTPUT_DIR; --force
    # starts over there; evaluate a trained model
    python tools/train_net.py --config COCO-Detection/retinanet_bit_m.yaml
    python tools/train_net.py --config COCO-Detection/retinanet_bit_m.yaml --force
    python tools/train_net.py --config COCO-Detection/retinanet_bit_m.yaml --eval-only \\
        MODEL.WEIGHTS path/model_final.pth
    # a LazyConfig (.py, Detectron2's lazyconfig_train_net.py way), KEY=VALUE overrides
    python tools/train_net.py --config COCO-Detection/fcos_bit_m_R50x1_FPN_1x.py --num-gpus 8 \\
        train.max_iter=1000
    python tools/train_net.py --config COCO-Detection/fcos_bit_m_R50x1_FPN_1x.py --eval-only \\
        train.init_checkpoint=path/model_final.pth
    # any COCO-format dataset
    python tools/train_net.py --config COCO-Detection/retinanet_bit_m_R50x1_1x.yaml \\
        DATASETS.COCO_FORMAT \\
        "[['mine_train','ann/train.json','img/train'],['mine_val','ann/val.json','img/val']]" \\
        DATASETS.TRAIN "('mine_train',)" DATASETS.TEST "('mine_val',)" MODEL.RETINANET.NUM_CLASSES 3

OUTPUT_DIR, as for every bitdet trainer: a run of the same config continues from its last
checkpoint (--resume is the default), a finished one (final.json: iterations, last loss and
the final evaluation) is reported, not repeated, and a run of another config is refused with
the keys that differ (--force deletes its checkpoints and starts over). SIGTERM saves a
checkpoint and exits 0, Ctrl-C saves one and exits 130. --eval-only records its config as
config_eval.yaml.
"""

from detectron2.evaluation import verify_results
from detectron2.evaluation.testing import flatten_results_dict
from detectron2.utils import comm

from bitdet.config import resolve_config_file
from bitdet.detection import BiTCheckpointer, BiTTrainer, get_bit_cfg, prepare_datasets
from bitdet.detection.lazy import (
    LazyRunConfig,
    build_lazy_model,
    dataset_names,
    is_lazy_config,
    lazy_test,
    lazy_train,
    load_lazy_config,
)
from bitdet.engine.run_folder import open_run
from bitdet.tools.cli import argument_parser, lock_output_dir, run_launched, setup_cfg, setup_output
from bitdet.utils.io import write_json

RESULTS_FILE = "final.json"

# KEY VALUE overrides shown in --help (keys of the detection config).
OVERRIDES_EXAMPLE = "SOLVER.BASE_LR 0.001 MODEL.DEVICE cpu"


def setup(args):
    """Config from file + overrides, frozen; logging and output folder set up.

    ``SOLVER.AMP.ENABLED`` autocasts on ``MODEL.DEVICE``, the CPU included (bf16 there);
    pass ``SOLVER.AMP.ENABLED False`` for float32.
    """
    return setup_cfg(
        args, get_bit_cfg, config_name=None, config_kind="detection"
    )  # the run records it


def final_results(trainer, results) -> dict:
    """What ``final.json`` holds: iterations, the last losses and the final evaluation (flat keys,
    e.g. ``bbox/AP``)."""
    latest = trainer.storage.latest()
    final = {"iterations": trainer.max_iter}
    final.update(
        {k: v for k, (v, _) in latest.items() if k == "total_loss" or k.startswith("loss_")}
    )
    final.update(flatten_results_dict(dict(results or {})))
    return final


def setup_lazy(args):
    """A LazyConfig with ``KEY=VALUE`` overrides; logging and output folder set up as
    :func:`setup`."""
    args.config_file = resolve_config_file(args.config_file, kind="detection")
    cfg = load_lazy_config(args.config_file, args.opts)
    lock_output_dir(cfg.train.output_dir)
    setup_output(cfg, args, config_name=None)  # the run records it when it opens
    return cfg


def main_lazy(args):
    """Train or evaluate a LazyConfig detector (``dataloader``, ``model``, ``optimizer``,
    ``train``)."""
    cfg = setup_lazy(args)
    prepare_datasets(None, dataset_names(cfg, ("test",) if args.eval_only else ("train", "test")))
    if args.eval_only:
        model = build_lazy_model(cfg)
        BiTCheckpointer(model, save_dir=cfg.train.output_dir).resume_or_load(
            cfg.train.init_checkpoint, resume=args.resume
        )
        return lazy_test(cfg, model)
    output_dir = cfg.train.output_dir
    finished = open_run(
        output_dir, LazyRunConfig(cfg), RESULTS_FILE, force=args.force, clear=("model_final.pth",)
    )
    if finished is not None:
        return finished
    results = lazy_train(
        cfg, resume=True
    )  # the last checkpoint of this run, else train.init_checkpoint
    if comm.is_main_process():
        write_json(
            f"{output_dir}/{RESULTS_FILE}",
            {"iterations": cfg.train.max_iter, **flatten_results_dict(results or {})},
        )
    return results


def main(args):
    if is_lazy_config(args.config_file):
        return main_lazy(args)
    cfg = setup(args)
    if args.eval_only:
        prepare_datasets(cfg, cfg.DATASETS.TEST)
        model = BiTTrainer.build_model(cfg)
        BiTCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        results = BiTTrainer.test(cfg, model)
        verify_results(cfg, results)
        return results
    finished = open_run(
        cfg.OUTPUT_DIR, cfg, RESULTS_FILE, force=args.force, clear=("model_final.pth",)
    )
    if finished is not None:
        return finished
    prepare_datasets(cfg, None)
    trainer = BiTTrainer(cfg)
    trainer.resume_or_load(resume=True)  # the last checkpoint of this run, else MODEL.WEIGHTS
    results = trainer.train()
    if comm.is_main_process():
        write_json(f"{cfg.OUTPUT_DIR}/{RESULTS_FILE}", final_results(trainer, results))
    return results


def parse_args(argv=None):
    parser = argument_parser(
        __doc__,
        overrides_example=OVERRIDES_EXAMPLE,
        resume_help="the default for training (a run of the same config continues from its last "
        "checkpoint); with --eval-only, evaluate OUTPUT_DIR's last checkpoint "
        "instead of MODEL.WEIGHTS",
        force_help="start over: delete OUTPUT_DIR's checkpoints and final.json, train from "
        "iteration 0",
    )
    return parser.parse_args(argv)


def cli(argv=None):
    """Console-script entry point."""
    run_launched("train_net", main, parse_args(argv))


if __name__ == "__main__":
    cli()
