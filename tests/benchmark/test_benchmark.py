"""The benchmark harness end to end on CPU with tiny models (schema, positivity, ratios)."""
import importlib
import json
import math
from pathlib import Path

import pytest

from bitdet.benchmark import compute_ratios, format_table, get_benchmark_cfg
from bitdet.benchmark.config import LEVERS
from bitdet.benchmark.suite import SUITE

ROOT = Path(__file__).resolve().parents[2]


def _load_tool():
    return importlib.import_module("bitdet.tools.benchmark")


def _args(tool, tmp_path, *opts, resume=False):
    argv = ["--config-file", "benchmark/cpu_tiny.yaml"] + (["--resume"] if resume else [])
    argv += ["OUTPUT_DIR", str(tmp_path), *opts]
    return tool.parse_args(argv)


def test_tiny_cpu_run_writes_json_table_and_ratios(tmp_path, capsys):
    tool = _load_tool()
    opts = [
        "BENCH.MODELS", "['bit-R14-tiny', 'torchvision-resnet18', 'retinanet-bit-R14-tiny-FPN']",
        "BENCH.VARIANTS", "['eager', 'ws', 'cl+cudagraphs']",
        "BENCH.DEFAULT_VARIANTS.TRAIN", "eager", "BENCH.DEFAULT_VARIANTS.INFERENCE", "ws",
        "BENCH.RATIO_TARGETS", "[['bit-R14-tiny', 'default', 'inference', 'torchvision-resnet18', 'eager', 0.001],"
        " ['bit-R14-tiny', 'cl', 'train', 'torchvision-resnet18', 'eager', 1.0]]",
        "BENCH.DATA.ITERS", "2", "BENCH.ITERS", "1",
    ]
    results = tool.main(_args(tool, tmp_path, *opts))
    saved = json.loads((tmp_path / "benchmark.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(results["rows"]))
    assert {"meta", "rows", "ratios", "targets"} <= saved.keys() and saved["meta"]["device"] == "cpu"

    timed = [r for r in saved["rows"] if r["task"] in ("train", "inference") and r["status"] == "ok"]
    # bit: 2 tasks x (eager, ws); resnet18: 2 tasks x eager; retinanet: 2 tasks x (eager, ws)
    assert len(timed) == 10
    for r in timed:
        for key in ("sec_per_iter", "images_per_sec", "ms_per_image", "peak_mem_mb", "batch_size"):
            assert r[key] > 0, (r["model"], key)
        assert r["images_per_sec"] == pytest.approx(r["batch_size"] / r["sec_per_iter"])
    skipped = {(r["model"], r["variant"]): r["reason"] for r in saved["rows"] if r["status"] == "skipped"}
    assert "CUDA" in skipped[("bit-R14-tiny", "cl+cudagraphs")]
    assert "bitdet" in skipped[("torchvision-resnet18", "ws")]

    data = {r["loader"]: r for r in saved["rows"] if r["task"] == "data"}
    assert set(data) == {"imagefolder", "shards", "hyperrule", "decode_jpeg", "detection"}
    for r in data.values():
        assert r["images_per_sec_per_core"] > 0
        assert r["cores_per_gpu"] == math.ceil(r["gpu_images_per_sec"] / r["images_per_sec_per_core"])

    ratios = saved["ratios"]
    pairs = {(q["group"], q["task"]) for q in ratios["vs_peers"]}
    assert pairs == {("tiny", "train"), ("tiny", "inference")}
    assert all(q["ratio"] > 0 and q["peer"].startswith("torchvision-resnet18/") for q in ratios["vs_peers"])
    assert {(q["model"], q["task"]) for q in ratios["levers"]} == {
        (m, t) for m in ("bit-R14-tiny", "retinanet-bit-R14-tiny-FPN") for t in ("train", "inference")
    }
    defaults = [(q["task"], q["bitdet"]) for q in ratios["default_vs_peers"]]
    assert defaults == [("inference", "bit-R14-tiny/ws"), ("train", "bit-R14-tiny/eager")]
    inference_ratio = [q["ratio"] for q in ratios["vs_peers"] if q["task"] == "inference"][0]
    first, unmeasured = saved["ratio_targets"]
    assert first["bitdet"] == "bit-R14-tiny/ws" and first["met"] is True and first["ratio"] > 0
    assert unmeasured["ratio"] is None and unmeasured["met"] is None  # no "cl" row in this run
    assert inference_ratio > 0
    out = capsys.readouterr().out
    assert "bitdet default: train = eager, inference = ws" in out and "ws *" in out
    assert "vs torchvision-resnet18/eager" in out and "img/s per core" in out and "cores for" in out

    # --resume keeps finished rows (same config) instead of re-measuring them
    again = tool.main(_args(tool, tmp_path, *opts, resume=True))
    assert [r.get("sec_per_iter") for r in again["rows"]] == [r.get("sec_per_iter") for r in saved["rows"]]


def test_ratios_pick_fastest_bitdet_variant_and_speedups_vs_eager():
    def row(model, role, variant, ips, task="train"):
        return {"model": model, "group": "g", "role": role, "kind": "classifier", "task": task,
                "variant": variant, "status": "ok", "images_per_sec": ips, "batch_size": 8,
                "sec_per_iter": 8 / ips, "ms_per_image": 1000 / ips, "peak_mem_mb": 1.0}

    rows = [row("bit", "bitdet", "eager", 100.0), row("bit", "bitdet", "cl+compile", 250.0),
            row("timm", "peer", "eager", 50.0), row("timm", "peer", "cl+compile", 200.0),
            {**row("bit", "bitdet", "cl", 1e9), "status": "failed"}]
    ratios = compute_ratios(rows)
    assert [(q["peer"], q["ratio"]) for q in ratios["vs_peers"]] == [("timm/eager", 5.0), ("timm/cl+compile", 1.25)]
    assert all(q["bitdet"] == "bit/cl+compile" for q in ratios["vs_peers"])
    assert ratios["levers"] == [{"model": "bit", "task": "train", "variant": "cl+compile", "speedup": 2.5}]
    table = format_table({"meta": {}, "rows": rows, "ratios": ratios, "targets": []})
    assert "5.00x" in table and "2.50x" in table


def test_configs_load_and_name_known_models_and_levers():
    for path in sorted((ROOT / "configs" / "benchmark").glob("*.yaml")):
        cfg = get_benchmark_cfg(str(path))
        assert set(cfg.BENCH.MODELS) <= set(SUITE), path
        for v in cfg.BENCH.VARIANTS:
            assert v == "eager" or set(v.split("+")) <= set(LEVERS)
    h100 = get_benchmark_cfg("h100.yaml")
    assert {SUITE[m].group for m in h100.BENCH.MODELS} == {"R50x1", "R101x3", "RetinaNet"}
    assert (SUITE["bit-R50x1"].batch_size, SUITE["bit-R101x3"].batch_size) == (128, 32)


def test_bad_settings_are_clear_errors():
    with pytest.raises(ValueError, match="BENCH.VARIANTS"):
        get_benchmark_cfg(None, ["BENCH.VARIANTS", "['cl+turbo']"])
    with pytest.raises(ValueError, match="BENCH.PRECISION"):
        get_benchmark_cfg(None, ["BENCH.PRECISION", "int8"])
    with pytest.raises(ValueError, match="BENCH.CLOCK"):
        get_benchmark_cfg(None, ["BENCH.CLOCK", "tsc"])
    with pytest.raises(ValueError, match="BENCH.TARGETS entry"):
        get_benchmark_cfg(None, ["BENCH.TARGETS", "[['bit-R50x1', 'train_img_per_sec', 1.0]]"])
    with pytest.raises(ValueError, match="BENCH.RATIO_TARGETS entry"):
        get_benchmark_cfg(None, ["BENCH.RATIO_TARGETS", "[['bit-R50x1', 'default', 'eval', 'x', 'eager', 1.0]]"])
    with pytest.raises(KeyError, match="known: bit-R50x1"):
        from bitdet.benchmark.suite import get_spec

        get_spec("bit-R51x1")


def test_interleaved_rows_keep_order_and_fold_matches_eager(tmp_path):
    tool = _load_tool()
    opts = ["BENCH.INTERLEAVE", "True", "BENCH.CLOCK", "cpu", "BENCH.MODELS", "['bit-R14-tiny', 'torchvision-resnet18']",
            "BENCH.VARIANTS", "['eager', 'fold']", "BENCH.TASKS", "['inference']", "BENCH.REPEATS", "2"]
    rows = tool.main(_args(tool, tmp_path, *opts))["rows"]
    assert [(r["model"], r["variant"], r["status"]) for r in rows] == [
        ("bit-R14-tiny", "eager", "ok"), ("bit-R14-tiny", "fold", "ok"),
        ("torchvision-resnet18", "eager", "ok"), ("torchvision-resnet18", "fold", "skipped"),
    ]
    assert rows[1]["ws_convs"] == 0 and rows[0]["ws_convs"] > 0  # folded: no weight standardization left
    assert rows[0]["clock"] == "cpu" and rows[0]["sec_per_iter"] > 0


def test_fold_gives_the_eager_outputs():
    import torch

    from bitdet.benchmark.timing import _fold_weight_standardization
    from bitdet.models import create_model

    torch.manual_seed(0)
    model = create_model("R14-tiny", num_classes=5).eval()
    model.fc.bias.data.normal_()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        _fold_weight_standardization(model)
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
    assert all(type(m) is torch.nn.Conv2d for m in model.modules() if isinstance(m, torch.nn.Conv2d))


@pytest.mark.parametrize("device,preset", [("cpu", "cpu_levers.yaml"), ("cpu", "cpu_tiny.yaml"), ("cuda", "h100.yaml")])
def test_default_variants_are_the_trainers_defaults(device, preset):
    from bitdet.detection import get_bit_cfg
    from bitdet.models.fast import lever_default
    from bitdet.pretrain.config import get_pretrain_cfg
    from bitdet.transfer.config import get_finetune_cfg

    def variant(*levers):
        return "+".join(name for name, on in levers if on) or "eager"

    bench = get_benchmark_cfg(preset).BENCH.DEFAULT_VARIANTS
    for cfg in (get_pretrain_cfg(None), get_finetune_cfg(None)):
        cl = lever_default(cfg.SOLVER.CHANNELS_LAST, device)
        assert variant(("cl", cl), ("compile", lever_default(cfg.SOLVER.COMPILE, device))) == bench.TRAIN
        assert variant(("cl", cl), ("ws", cfg.TEST.CACHE_WS)) == bench.INFERENCE
    det = get_bit_cfg()
    assert variant(("cl", lever_default(det.SOLVER.CHANNELS_LAST, device)), ("ws", det.MODEL.BIT.CACHE_WS)) == bench.INFERENCE


def test_detectron2_group_norm_peer_trains_every_layer():
    from torch import nn

    stock = SUITE["retinanet-d2-R50-FPN"].build(3, "cpu")
    gn = SUITE["retinanet-d2-R50-FPN-GN"].build(3, "cpu")
    assert all(p.requires_grad for p in gn.parameters())
    assert any(isinstance(m, nn.GroupNorm) for m in gn.backbone.bottom_up.modules())
    assert not all(p.requires_grad for p in stock.parameters())  # stem and res2 frozen (FREEZE_AT 2)
