#!/usr/bin/env python
"""Train or evaluate a Detectron2 detector with a BiT backbone (RetinaNet on COCO-2017 by default).

Examples::

    # the paper's setting (BiT-M-R101x3), 8 GPUs
    python tools/train_net.py --config retinanet_bit_m.yaml --num-gpus 8
    # two machines
    python tools/train_net.py --config retinanet_bit_m.yaml --num-gpus 8 --num-machines 2 \\
        --machine-rank 0 --dist-url tcp://HOST:PORT
    # resume the last checkpoint of OUTPUT_DIR / evaluate a trained model
    python tools/train_net.py --config retinanet_bit_m.yaml --resume
    python tools/train_net.py --config retinanet_bit_m.yaml --eval-only MODEL.WEIGHTS path/model_final.pth
    # any COCO-format dataset
    python tools/train_net.py --config retinanet_bit_m_R50x1.yaml \\
        DATASETS.COCO_FORMAT "[['mine_train','ann/train.json','img/train'],['mine_val','ann/val.json','img/val']]" \\
        DATASETS.TRAIN "('mine_train',)" DATASETS.TEST "('mine_val',)" MODEL.RETINANET.NUM_CLASSES 3
"""
import logging

from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.evaluation import verify_results
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from bitdet.detection import BiTCheckpointer, BiTTrainer, get_bit_cfg, prepare_datasets, resolve_config_file


def setup(args):
    """Config from file + overrides, frozen; logging and output folder set up."""
    # default_setup copies the config file into OUTPUT_DIR: give it the resolved path.
    args.config_file = resolve_config_file(args.config_file)
    cfg = get_bit_cfg(args.config_file, args.opts)
    if cfg.SOLVER.AMP.ENABLED and cfg.MODEL.DEVICE == "cpu":
        logging.getLogger("bitdet").warning("SOLVER.AMP.ENABLED needs CUDA; training in float32 on the CPU")
        cfg.SOLVER.AMP.ENABLED = False
    cfg.freeze()
    default_setup(cfg, args)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="bitdet")
    return cfg


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
    parser = default_argument_parser()
    parser.add_argument(
        "--config", dest="config_file", metavar="FILE",
        help="same as --config-file; a bare name is looked up in configs/",
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = parse_args()
    if not args.config_file:
        raise SystemExit("train_net.py: pass --config FILE (e.g. --config retinanet_bit_m.yaml)")
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
