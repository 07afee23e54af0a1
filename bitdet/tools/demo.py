#!/usr/bin/env python
"""The BiT story on real data, on a CPU: pretrain -> classify -> detect, then a report.

1. upstream pretraining of a small BiT model on Fashion-MNIST (``tools/pretrain.py``);
2. BiT-HyperRule transfer to scikit-learn's digits at 1/5/10 shots and full data, from that
   checkpoint and from scratch (``tools/finetune.py``);
3. RetinaNet with the pretrained BiT backbone on the generated detection dataset (Fashion-MNIST
   items on scikit-image photos), against the same detector from scratch, COCO AP
   (``tools/train_net.py``), and detections drawn on validation images (``tools/visualize.py``);
4. ``OUTPUT/report.md`` with the tables and plots, every figure read from the run's files.

Examples::

    python tools/demo.py                 # about 15 minutes on 2 CPU cores (make demo)
    python tools/demo.py --smoke         # every stage at toy size, a few minutes (the CI test)
    python tools/demo.py --force         # rerun stages whose outputs exist

Each stage is one of the documented tools with a config from ``configs/``; the same configs
scale up by override (see the README). Finished stages are reused unless ``--force``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Sequence

# The demo model: a small BiT-style ResNet-v2 (GN + WS, pre-activation), not a paper model.
DEMO_MODEL = "R14-tiny"

# (config, extra arguments) per stage and mode. Smoke mode runs the instant-test configs.
CONFIGS = {
    "full": {
        "pretrain": ("pretrain/demo_fashion_mnist.yaml", []),
        "transfer": ("finetune/demo_digits.yaml", ["--shots", "1,5,10,full", "--seeds", "0,1"]),
        "detection": ("demo/retinanet_bit_tiny_demo.yaml", []),
    },
    "smoke": {
        "pretrain": ("pretrain/quick_schedules/pretrain_fashion_mnist_instant_test.yaml", []),
        "transfer": ("finetune/quick_schedules/finetune_instant_test.yaml", ["--shots", "1,full", "--seeds", "0"]),
        "detection": ("quick_schedules/retinanet_bit_instant_test.yaml", []),
    },
}


def run_stage(name: str, cmd: Sequence[str], log_dir: Path, env: Dict[str, str]) -> float:
    """Run one stage, its output to ``log_dir/<name>.log``; return its wall time.

    Raises:
        SystemExit: the stage failed; the message names it and shows the end of its log.
    """
    log = log_dir / f"{name}.log"
    print(f"[demo] {name}: {' '.join(cmd[1:])}", flush=True)
    start = time.monotonic()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
    seconds = time.monotonic() - start
    if proc.returncode != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-30:])
        raise SystemExit(f"[demo] stage {name!r} failed (exit {proc.returncode}); end of {log}:\n{tail}")
    print(f"[demo] {name}: done in {seconds:.0f} s (log: {log})", flush=True)
    return seconds


def _tool(name: str) -> List[str]:
    return [sys.executable, "-m", f"bitdet.tools.{name.removesuffix('.py')}"]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", default="output/demo", help="demo folder (default output/demo)")
    parser.add_argument("--smoke", action="store_true", help="toy sizes: checks every stage in about 2 minutes")
    parser.add_argument("--force", action="store_true", help="rerun stages whose outputs exist")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    mode = "smoke" if args.smoke else "full"
    out = Path(args.output).resolve()
    if args.force and out.exists():
        shutil.rmtree(out)
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("DETECTRON2_DATASETS", str(Path("datasets").resolve()))  # Detectron2's default root
    cfg = CONFIGS[mode]
    timings_file = out / "timings.json"
    timings: Dict[str, float] = json.loads(timings_file.read_text()) if timings_file.is_file() else {}

    def stage(name: str, done: Path, cmd: Sequence[str]) -> None:
        if done.exists():
            print(f"[demo] {name}: reusing {done} (--force reruns)", flush=True)
            return
        timings[name] = run_stage(name, cmd, logs, env)
        timings_file.write_text(json.dumps(timings, indent=2))

    pretrained = out / "pretrain" / "model_final.pth"
    config, extra = cfg["pretrain"]
    stage("pretrain", pretrained, [*_tool("pretrain.py"), "--config-file", config, *extra,
                                   "MODEL.NAME", DEMO_MODEL, "OUTPUT_DIR", str(out / "pretrain")])

    config, extra = cfg["transfer"]
    stage("transfer", out / "transfer" / "results.md",
          [*_tool("finetune.py"), "--config-file", config, "--weights", f"{pretrained},scratch", *extra,
           "MODEL.NAME", DEMO_MODEL, "OUTPUT_DIR", str(out / "transfer")])

    config, extra = cfg["detection"]
    from bitdet.detection.config import get_bit_cfg

    max_iter = get_bit_cfg(config).SOLVER.MAX_ITER
    for init, weights in (("pretrained", str(pretrained)), ("scratch", "")):
        stage(f"detection_{init}", out / "detection" / init / "model_final.pth",
              [*_tool("train_net.py"), "--config", config, *extra, "MODEL.BIT.VARIANT", DEMO_MODEL,
               "MODEL.WEIGHTS", weights, "TEST.EVAL_PERIOD", str(max_iter), "SEED", "0",
               "OUTPUT_DIR", str(out / "detection" / init)])

    val_images = _validation_images(get_bit_cfg(config).DATASETS.TEST[0], env, count=3)
    drawn = out / "detections"
    stage("visualize", drawn, [*_tool("visualize.py"), "--config", config, "--input", *map(str, val_images),
                               "--output", str(drawn), "--confidence-threshold", "0.2",
                               "MODEL.BIT.VARIANT", DEMO_MODEL,
                               "MODEL.WEIGHTS", str(out / "detection" / "pretrained" / "model_final.pth")])

    import torch

    from bitdet.demo_report import write_report

    settings = {"mode": mode, "model": DEMO_MODEL, "cpus": os.cpu_count(), "torch": torch.__version__}
    report = write_report(out, timings, settings, detection_images=sorted(drawn.glob("*.png")))
    print(f"[demo] report: {report} (total {sum(timings.values()) / 60:.1f} min)")
    return 0


def _validation_images(dataset: str, env: Dict[str, str], count: int) -> List[Path]:
    """The first ``count`` image files of a registered COCO-format dataset (demo sets: generated)."""
    os.environ["DETECTRON2_DATASETS"] = env["DETECTRON2_DATASETS"]
    from detectron2.data import DatasetCatalog

    from bitdet.detection.datasets import register_demo_datasets

    register_demo_datasets()
    return [Path(r["file_name"]) for r in DatasetCatalog.get(dataset)[:count]]


def cli(argv=None):
    """Console-script entry point."""
    sys.exit(main(argv))


if __name__ == "__main__":
    cli()
