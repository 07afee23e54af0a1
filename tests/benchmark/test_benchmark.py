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
        "BENCH.MODELS",
        "['bit-R14-tiny', 'torchvision-resnet18', 'retinanet-bit-R14-tiny-FPN']",
        "BENCH.VARIANTS",
        "['eager', 'ws', 'cl+cudagraphs']",
        "BENCH.DEFAULT_VARIANTS.TRAIN",
        "eager",
        "BENCH.DEFAULT_VARIANTS.INFERENCE",
        "ws",
        "BENCH.RATIO_TARGETS",
        "[['bit-R14-tiny', 'default', 'inference', 'torchvision-resnet18', 'eager', 0.001],"
        " ['bit-R14-tiny', 'cl', 'train', 'torchvision-resnet18', 'eager', 1.0]]",
        "BENCH.DATA.ITERS",
        "2",
        "BENCH.ITERS",
        "1",
    ]
    results = tool.main(_args(tool, tmp_path, *opts))
    saved = json.loads((tmp_path / "benchmark.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(results["rows"]))
    assert {"meta", "rows", "ratios", "targets"} <= saved.keys() and saved["meta"][
        "device"
    ] == "cpu"

    timed = [
        r for r in saved["rows"] if r["task"] in ("train", "inference") and r["status"] == "ok"
    ]
    # bit: 2 tasks x (eager, ws); resnet18: 2 tasks x eager; retinanet: 2 tasks x (eager, ws)
    assert len(timed) == 10
    for r in timed:
        for key in ("sec_per_iter", "images_per_sec", "ms_per_image", "peak_mem_mb", "batch_size"):
            assert r[key] > 0, (r["model"], key)
        assert r["images_per_sec"] == pytest.approx(r["batch_size"] / r["sec_per_iter"])
        # each row in a process of its own: its peak, above what the process held before it
        assert r["peak_mem_kind"] == "cpu_row_max_rss" and 0 < r["base_mem_mb"] <= r["peak_mem_mb"]
    # per row, not one high-water mark: the detector rows need more than the classifier rows
    peaks = {(r["model"], r["task"]): r["peak_mem_mb"] for r in timed if r["variant"] == "eager"}
    assert peaks[("retinanet-bit-R14-tiny-FPN", "train")] > peaks[("bit-R14-tiny", "train")]
    memory = [r for r in saved["rows"] if r["task"] == "memory"]
    assert [(r["variant"], r["entry"], r["status"]) for r in memory] == [
        ("eager", [32, 2], "ok"),
        ("ckpt-unit", [32, 2], "ok"),
    ]
    assert [(q["variant"], q["entry"]) for q in saved["ratios"]["memory"]] == [
        ("ckpt-unit", [32, 2])
    ]
    skipped = {
        (r["model"], r["variant"]): r["reason"] for r in saved["rows"] if r["status"] == "skipped"
    }
    assert "CUDA" in skipped[("bit-R14-tiny", "cl+cudagraphs")]
    assert "bitdet" in skipped[("torchvision-resnet18", "ws")]

    data = {r["loader"]: r for r in saved["rows"] if r["task"] == "data"}
    assert set(data) == {"imagefolder", "shards", "hyperrule", "decode_jpeg", "detection"}
    for r in data.values():
        assert r["images_per_sec_per_core"] > 0
        assert r["cores_per_gpu"] == math.ceil(
            r["gpu_images_per_sec"] / r["images_per_sec_per_core"]
        )

    ratios = saved["ratios"]
    pairs = {(q["group"], q["task"]) for q in ratios["vs_peers"]}
    assert pairs == {("tiny", "train"), ("tiny", "inference")}
    assert all(
        q["ratio"] > 0 and q["peer"].startswith("torchvision-resnet18/") for q in ratios["vs_peers"]
    )
    assert {(q["model"], q["task"]) for q in ratios["levers"]} == {
        (m, t)
        for m in ("bit-R14-tiny", "retinanet-bit-R14-tiny-FPN")
        for t in ("train", "inference")
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
    assert [r.get("sec_per_iter") for r in again["rows"]] == [
        r.get("sec_per_iter") for r in saved["rows"]
    ]


def test_ratios_pick_fastest_bitdet_variant_and_speedups_vs_eager():
    def row(model, role, variant, ips, task="train"):
        return {
            "model": model,
            "group": "g",
            "role": role,
            "kind": "classifier",
            "task": task,
            "variant": variant,
            "status": "ok",
            "images_per_sec": ips,
            "batch_size": 8,
            "sec_per_iter": 8 / ips,
            "ms_per_image": 1000 / ips,
            "peak_mem_mb": 1.0,
        }

    rows = [
        row("bit", "bitdet", "eager", 100.0),
        row("bit", "bitdet", "cl+compile", 250.0),
        row("timm", "peer", "eager", 50.0),
        row("timm", "peer", "cl+compile", 200.0),
        {**row("bit", "bitdet", "cl", 1e9), "status": "failed"},
    ]
    ratios = compute_ratios(rows)
    assert [(q["peer"], q["ratio"]) for q in ratios["vs_peers"]] == [
        ("timm/eager", 5.0),
        ("timm/cl+compile", 1.25),
    ]
    assert all(q["bitdet"] == "bit/cl+compile" for q in ratios["vs_peers"])
    assert ratios["levers"] == [
        {"model": "bit", "task": "train", "variant": "cl+compile", "speedup": 2.5}
    ]
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
        get_benchmark_cfg(
            None, ["BENCH.RATIO_TARGETS", "[['bit-R50x1', 'default', 'eval', 'x', 'eager', 1.0]]"]
        )
    with pytest.raises(KeyError, match="known: bit-R50x1"):
        from bitdet.benchmark.suite import get_spec

        get_spec("bit-R51x1")


def test_interleaved_rows_keep_order_and_fold_matches_eager(tmp_path):
    tool = _load_tool()
    opts = [
        "BENCH.INTERLEAVE",
        "True",
        "BENCH.CLOCK",
        "cpu",
        "BENCH.MODELS",
        "['bit-R14-tiny', 'torchvision-resnet18']",
        "BENCH.VARIANTS",
        "['eager', 'fold']",
        "BENCH.TASKS",
        "['inference']",
        "BENCH.REPEATS",
        "2",
        "BENCH.MEMORY.ROWS",
        "[]",
    ]
    rows = tool.main(_args(tool, tmp_path, *opts))["rows"]
    assert [(r["model"], r["variant"], r["status"]) for r in rows] == [
        ("bit-R14-tiny", "eager", "ok"),
        ("bit-R14-tiny", "fold", "ok"),
        ("torchvision-resnet18", "eager", "ok"),
        ("torchvision-resnet18", "fold", "skipped"),
    ]
    assert (
        rows[1]["ws_convs"] == 0 and rows[0]["ws_convs"] > 0
    )  # folded: no weight standardization left
    assert rows[0]["clock"] == "cpu" and rows[0]["sec_per_iter"] > 0
    # timed together, then each row's peak memory measured in a process of its own
    assert all(r["peak_mem_kind"] == "cpu_row_max_rss" for r in rows if r["status"] == "ok")


def test_fold_gives_the_eager_outputs():
    import torch

    from bitdet import create_model
    from bitdet.export.fold import fold_weight_standardization

    torch.manual_seed(0)
    model = create_model("R14-tiny", num_classes=5).eval()
    model.fc.bias.data.normal_()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        fold_weight_standardization(model, inplace=True)
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
    assert all(
        type(m) is torch.nn.Conv2d for m in model.modules() if isinstance(m, torch.nn.Conv2d)
    )


@pytest.mark.parametrize(
    "preset", [p.name for p in sorted((ROOT / "configs" / "benchmark").glob("*.yaml"))]
)
def test_default_variants_are_the_trainers_defaults(preset):
    """The trainers' defaults are the same on every device (eager, channels-first, cached WS in
    evaluation), and each preset names them."""
    from bitdet.detection import get_bit_cfg
    from bitdet.pretrain.config import get_pretrain_cfg
    from bitdet.transfer.config import get_finetune_cfg

    def variant(*levers):
        return "+".join(name for name, on in levers if on) or "eager"

    bench = get_benchmark_cfg(preset).BENCH.DEFAULT_VARIANTS
    for cfg in (get_pretrain_cfg(None), get_finetune_cfg(None)):
        cl = cfg.SOLVER.CHANNELS_LAST
        assert variant(("cl", cl), ("compile", cfg.SOLVER.COMPILE)) == bench.TRAIN
        assert variant(("cl", cl), ("ws", cfg.TEST.CACHE_WS)) == bench.INFERENCE
        assert cfg.MODEL.ACTIVATION_CHECKPOINTING == "none"
    det = get_bit_cfg()
    assert variant(("cl", det.SOLVER.CHANNELS_LAST), ("compile", det.SOLVER.COMPILE)) == bench.TRAIN
    assert (
        variant(("cl", det.SOLVER.CHANNELS_LAST), ("ws", det.MODEL.BIT.CACHE_WS)) == bench.INFERENCE
    )


def test_detectron2_group_norm_peer_trains_every_layer():
    from torch import nn

    stock = SUITE["retinanet-d2-R50-FPN"].build(3, "cpu")
    gn = SUITE["retinanet-d2-R50-FPN-GN"].build(3, "cpu")
    assert all(p.requires_grad for p in gn.parameters())
    assert any(isinstance(m, nn.GroupNorm) for m in gn.backbone.bottom_up.modules())
    assert not all(
        p.requires_grad for p in stock.parameters()
    )  # stem and res2 frozen (FREEZE_AT 2)


@pytest.mark.slow
def test_memory_rows_are_per_row_and_checkpointing_saves_activation_memory(tmp_path):
    """Two batch sizes and checkpointing: each row's own peak, not the process's largest so far."""
    tool = _load_tool()
    # R50x1 (its activations outweigh its weights at batch 16; R14-tiny's stem would dominate)
    opts = [
        "BENCH.MODELS",
        "[]",
        "BENCH.TASKS",
        "[]",
        "BENCH.MEMORY.ROWS",
        "[['bit-R50x1', 128, 16], ['bit-R50x1', 128, 2]]",
        "BENCH.MEMORY.VARIANTS",
        "['eager', 'ckpt-unit']",
        "BENCH.CLS_NUM_CLASSES",
        "10",
    ]
    results = tool.main(_args(tool, tmp_path, *opts))
    own = {
        (r["entry"][1], r["variant"]): r["peak_mem_mb"] - r["base_mem_mb"] for r in results["rows"]
    }
    assert (
        own[(2, "eager")] < 0.75 * own[(16, "eager")]
    )  # measured after the larger row, yet smaller
    assert own[(16, "ckpt-unit")] < 0.9 * own[(16, "eager")]
    ratio = {(tuple(q["entry"]), q["variant"]): q for q in results["ratios"]["memory"]}[
        ((128, 16), "ckpt-unit")
    ]
    assert ratio["own_ratio"] == pytest.approx(own[(16, "ckpt-unit")] / own[(16, "eager")])
    assert ratio["time_ratio"] > 0


@pytest.mark.slow
@pytest.mark.parametrize(
    "preset", [p.name for p in sorted((ROOT / "configs" / "benchmark").glob("*.yaml"))]
)
def test_every_preset_dry_runs_on_cpu(tmp_path, preset, capsys):
    """--dry-run builds and steps every row of a shipped preset at tiny size, so that a GPU run
    cannot fail on a name, a lever or a size; rows skipped are those the real device skips."""
    tool = _load_tool()
    results = tool.main(
        tool.parse_args(
            ["--config-file", f"benchmark/{preset}", "--dry-run", "OUTPUT_DIR", str(tmp_path)]
        )
    )
    cfg = get_benchmark_cfg(preset)
    rows = results["rows"]
    failed = [
        (r.get("model"), r["task"], r.get("variant"), r["reason"])
        for r in rows
        if r["status"] == "failed"
    ]
    assert not failed
    assert results["meta"]["dry_run"] and not results["ratios"] and not results["targets"]
    models = {r["model"] for r in rows if r["task"] != "data"}
    assert models == set(cfg.BENCH.MODELS) | {m for m, _, _ in cfg.BENCH.MEMORY.ROWS}
    assert sum(r["task"] == "memory" for r in rows) >= len(cfg.BENCH.MEMORY.ROWS)
    for r in rows:
        if r["status"] == "ok" and r["task"] != "data":
            assert r["dry_run"] and max(r["image_size"]) <= 64, (
                r
            )  # tiny inputs, whatever the preset says
    assert (tmp_path / "benchmark.dry-run.json").is_file() and not (
        tmp_path / "benchmark.json"
    ).exists()
    assert "no timing or memory claims" in capsys.readouterr().out


def test_dry_run_reports_a_typo_in_a_preset(tmp_path):
    tool = _load_tool()
    with pytest.raises(KeyError, match="unknown model 'bit-R50x2-typo'"):
        tool.main(
            tool.parse_args(
                [
                    "--config-file",
                    "benchmark/h100.yaml",
                    "--dry-run",
                    "OUTPUT_DIR",
                    str(tmp_path),
                    "BENCH.MODELS",
                    "['bit-R50x2-typo']",
                ]
            )
        )


def test_checkpointing_levers_apply_to_bitdet_training_only():
    from bitdet.benchmark.timing import applicable

    assert applicable(SUITE["bit-R14-tiny"], ["ckpt-unit"], "cpu", "train") is None
    assert "training lever" in applicable(SUITE["bit-R14-tiny"], ["ckpt-stage"], "cpu", "inference")
    assert "training lever" in applicable(
        SUITE["torchvision-resnet18"], ["ckpt-unit"], "cpu", "train"
    )
    assert "one of" in applicable(
        SUITE["bit-R14-tiny"], ["ckpt-unit", "ckpt-stage"], "cpu", "train"
    )
    with pytest.raises(ValueError, match="BENCH.MEMORY.ROWS entry"):
        get_benchmark_cfg(None, ["BENCH.MEMORY.ROWS", "[['bit-R50x1', 224]]"])
