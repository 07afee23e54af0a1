"""Classification training engine shared by upstream pretraining and BiT fine-tuning.

Built on Detectron2's engine (``TrainerBase`` + hooks, ``EventStorage``, console/JSON/TensorBoard
writers); the tools join one DDP group (NCCL on GPUs, gloo on CPU) through
:mod:`bitdet.engine.launch`, whether ``torchrun``, SLURM or ``--num-gpus`` started them.

Example::

    from bitdet import create_model
    from bitdet.data import FashionMNIST
    from bitdet.engine import ClassifierTrainer, evaluate_classifier

    model = create_model("R14-tiny", num_classes=10)
    train_set, test_set = FashionMNIST(split="train"), FashionMNIST(split="test")
    trainer = ClassifierTrainer(
        model, train_set, output_dir="output/fmnist", max_steps=500, global_batch=128,
        lr_at=lambda step: 0.03 * min(1.0, (step + 1) / 50),
        evaluate=lambda m: evaluate_classifier(m, test_set, batch_size=256), eval_period=100,
        checkpoint_period=100,
    )
    final = trainer.train(resume=True)  # {"step", "loss", "img_per_s", ..., "eval": {...}}

Conventions: ``lr_at(step)`` gives the lr of the 0-based optimizer step ``step``;
``model_{step - 1:07d}.pth`` holds the state after ``step`` completed steps (Detectron2's
naming), with a plain bitdet state dict under ``"model"`` (readable by
:func:`bitdet.weights.load_weights`). Data order and augmentation are functions of
``(seed, step)`` (:mod:`bitdet.engine.data`), so a resumed run reproduces an uninterrupted one
exactly. Accuracies are percentages.
"""

from bitdet.engine.checkpoint import TrainingCheckpointer, clear_run
from bitdet.engine.data import SeededDataset, StepBatchSampler, collate_skip_none
from bitdet.engine.evaluation import (
    classification_metrics,
    evaluate_classifier,
    multilabel_metrics,
    predict,
)
from bitdet.engine.losses import build_loss, sigmoid_cross_entropy, softmax_cross_entropy
from bitdet.engine.trainer import ClassifierTrainer, choose_batch_split

__all__ = [
    "ClassifierTrainer",
    "SeededDataset",
    "StepBatchSampler",
    "TrainingCheckpointer",
    "build_loss",
    "choose_batch_split",
    "classification_metrics",
    "clear_run",
    "collate_skip_none",
    "evaluate_classifier",
    "multilabel_metrics",
    "predict",
    "sigmoid_cross_entropy",
    "softmax_cross_entropy",
]
