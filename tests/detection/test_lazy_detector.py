"""A LazyConfig detector (FCOS with L(BiTBackbone) in L(FPN)) through tools/train_net.py:
overrides are checked, the instant config trains, checkpoints and evaluates, and --eval-only
reproduces the AP."""

import math

import pytest
from detectron2.config import instantiate

from bitdet.config import resolve_config_file
from bitdet.detection import BiTBackbone
from bitdet.detection.lazy import dataset_names, is_lazy_config, load_lazy_config
from tests.tools.tool_run import read_metrics, run_tool

INSTANT = "quick_schedules/fcos_bit_instant_test.py"


def test_shipped_fcos_config_builds_a_bit_trunk_in_an_fpn():
    cfg = load_lazy_config(
        resolve_config_file("COCO-Detection/fcos_bit_m_R50x1_FPN_1x.py"), ["train.device=cpu"]
    )
    model = instantiate(cfg.model)
    trunk = model.backbone.bottom_up
    assert (
        isinstance(trunk, BiTBackbone) and trunk.block4.unit01.conv1.weight.shape[0] == 512
    )  # R50x1 res5
    assert {k: v.stride for k, v in model.backbone.output_shape().items()} == {
        "p3": 8,
        "p4": 16,
        "p5": 32,
        "p6": 64,
        "p7": 128,
    }
    assert model.backbone.top_block.in_feature == "p5" and all(
        p.requires_grad for p in trunk.parameters()
    )
    assert (
        cfg.train.output_dir == "output/COCO-Detection/fcos_bit_m_R50x1_FPN_1x"
        and dataset_names(cfg)
        == [
            "coco_2017_train",
            "coco_2017_val",
        ]
    )
    assert is_lazy_config("x.py") and not is_lazy_config("x.yaml")


def test_a_stock_detectron2_lazyconfig_loads_and_missing_train_keys_are_named(tmp_path):
    stock = tmp_path / "stock_fcos.py"
    stock.write_text(
        "from detectron2 import model_zoo\n"
        "globals().update(model_zoo.get_config('COCO-Detection/fcos_R_50_FPN_1x.py'))\n"
    )
    assert load_lazy_config(str(stock), ["train.device=cpu"]).model.num_classes == 80
    lacking = tmp_path / "lacking.py"
    lacking.write_text(stock.read_text() + "del train['eval_period']\n")
    with pytest.raises(ValueError, match=r"missing \['train.eval_period'\]"):
        load_lazy_config(str(lacking), ["train.device=cpu"])


def test_overrides_that_nothing_reads_are_refused():
    path = resolve_config_file(INSTANT)
    with pytest.raises(ValueError, match="has no key 'train.max_iters'"):
        load_lazy_config(path, ["train.max_iters=3"])
    with pytest.raises(ValueError, match="KEY=VALUE"):
        load_lazy_config(path, ["train.max_iter", "3"])
    # a new argument of a LazyCall reaches its constructor, which checks it
    cfg = load_lazy_config(path, ["model.backbone.bottom_up.ws_eps=1e-8", "train.max_iter=3"])
    assert (
        cfg.train.max_iter == 3 and instantiate(cfg.model.backbone.bottom_up).stem.conv.eps == 1e-8
    )


def _run(tmp_path, *args):
    run = run_tool("train_net.py", "--config", INSTANT, *args, cwd=tmp_path)
    return run.stdout + run.stderr


@pytest.mark.slow
def test_instant_lazy_config_trains_evaluates_and_eval_only_reproduces(tmp_path):
    out = tmp_path / "out"
    console = _run(tmp_path, f"train.output_dir={out}")
    assert (
        "Warning:" not in console
    )  # Detectron2's meshgrid and pkg_resources warnings are not the user's
    metrics = read_metrics(out)
    losses = [m for m in metrics if "total_loss" in m]
    assert [m["iteration"] for m in losses] == [0, 1, 2, 3] and all(
        math.isfinite(m["total_loss"]) for m in losses
    )
    assert {"loss_fcos_cls", "loss_fcos_loc", "loss_fcos_ctr"} <= set(losses[-1])
    trained = [metrics[-1][f"bbox/{k}"] for k in ("AP", "AP50", "AP75")]
    assert all(0.0 <= v <= 100.0 for v in trained)  # finite: there were detections
    assert (out / "model_0000001.pth").is_file() and (
        out / "last_checkpoint"
    ).read_text() == "model_final.pth"
    assert "bitdet_demo_mini_val" in (out / "config.yaml").read_text()

    log = _run(
        tmp_path,
        "--eval-only",
        f"train.init_checkpoint={out / 'model_final.pth'}",
        f"train.output_dir={tmp_path / 'eval'}",
    )
    assert "Starting training" not in log
    line = log.split("copypaste: AP,AP50,AP75,APs,APm,APl")[1].splitlines()[1]
    evaluated = [float(v) for v in line.split("copypaste: ")[1].split(",")[:3]]
    assert evaluated == pytest.approx(trained, abs=1e-3)
