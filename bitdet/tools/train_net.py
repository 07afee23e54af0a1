#!/usr/bin/env python
"""Train or evaluate a Detectron2 detector with a BiT backbone (RetinaNet on COCO-2017 by default).

Examples::

    # the paper's setting (BiT-M-R101x3), 8 GPUs
    python tools/train_net.py --config retinanet_bit_m.yaml --num-gpus 8
    # two machines
    python tools/train_net.py --config retinanet_bit_m.yaml --num-gpus 8 --num-machines 2 \\
        --machine-rank 0 --dist-url tcp://HOST:PORT
    # torchrun / SLURM (one task per GPU) / CPU processes (gloo)
    torchrun --standalone --nproc_per_node 8 -m bitdet.tools.train_net --config retinanet_bit_m.yaml
    sbatch --nodes 2 tools/slurm.sbatch train_net --config retinanet_bit_m.yaml
    python tools/train_net.py --config quick_schedules/retinanet_bit_instant_test.yaml --num-gpus 2 MODEL.DEVICE cpu
    # resume the last checkpoint of OUTPUT_DIR / evaluate a trained model
    python tools/train_net.py --config retinanet_bit_m.yaml --resume
    python tools/train_net.py --config retinanet_bit_m.yaml --eval-only MODEL.WEIGHTS path/model_final.pth
    # any COCO-format dataset
    python tools/train_net.py --config retinanet_bit_m_R50x1.yaml \\
        DATASETS.COCO_FORMAT "[['mine_train','ann/train.json','img/train'],['mine_val','ann/val.json','img/val']]" \\
        DATASETS.TRAIN "('mine_train',)" DATASETS.TEST "('mine_val',)" MODEL.RETINANET.NUM_CLASSES 3
"""
from detectron2.evaluation import verify_results


from bitdet.checkpoint import CheckpointError
from bitdet.detection import BiTCheckpointer, BiTTrainer, get_bit_cfg, prepare_datasets
from bitdet.tools.cli import argument_parser, run_launched, setup_cfg

# KEY VALUE overrides shown in --help (keys of the detection config).
OVERRIDES_EXAMPLE = "SOLVER.BASE_LR 0.001 MODEL.DEVICE cpu"


def setup(args):
    """Config from file + overrides, frozen; logging and output folder set up.

    ``SOLVER.AMP.ENABLED`` autocasts on ``MODEL.DEVICE``, the CPU included (bf16 there);
    pass ``SOLVER.AMP.ENABLED False`` for float32.
    """
    return setup_cfg(args, get_bit_cfg, config_kind="detection")


def main(args):
    cfg = setup(args)
    prepare_datasets(cfg, cfg.DATASETS.TEST if args.eval_only else None)
    if args.eval_only:
        model = BiTTrainer.build_model(cfg)
        BiTCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        results = BiTTrainer.test(cfg, model)
        verify_results(cfg, results)
        return results
    trainer = BiTTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def parse_args(argv=None):
    return argument_parser(__doc__, overrides_example=OVERRIDES_EXAMPLE).parse_args(argv)


def cli(argv=None):
    """Console-script entry point."""
    run_launched("train_net", main, parse_args(argv))


if __name__ == "__main__":
    cli()
