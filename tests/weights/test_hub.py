"""``hf-hub:`` ids through huggingface_hub, offline, against a cache laid out as the hub client
lays it out::

    models--<org>--<name>/{blobs/<hash>, refs/<branch or tag>,
                           snapshots/<commit>/<file> -> ../../blobs/<hash>}

(LFS files are named by their sha256, regular files by their git blob sha1)."""

from __future__ import annotations

import copy
import hashlib
import json
import time
from pathlib import Path

import pytest
import torch

from bitdet import create_model
from bitdet.weights import CheckpointError, read_weights
from tests.weights.sources import max_rel_diff, randomise

REPO = "timm/resnetv2_50x1_bit.goog_in21k_ft_in1k"
HUB_ID = f"hf-hub:{REPO}"
X = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(3), dtype=torch.float64)


def add_snapshot(cache: Path, repo: str, commit: str, files: dict, refs=("main",)) -> None:
    """Write ``files`` ({name: bytes}) as one snapshot of ``repo``, as ``hf_hub_download`` stores
    them."""
    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    (root / "refs").mkdir(exist_ok=True)
    snapshot = root / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name, data in files.items():
        if name.endswith((".safetensors", ".bin")):
            blob = hashlib.sha256(data).hexdigest()
        else:
            blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        (root / "blobs" / blob).write_bytes(data)
        (snapshot / name).symlink_to(Path("..") / ".." / "blobs" / blob)
    for ref in refs:
        (root / "refs" / ref).write_text(commit)


@pytest.fixture(scope="module")
def timm_models():
    import timm

    new = randomise(timm.create_model("resnetv2_50x1_bit", num_classes=1000), seed=7).eval()
    old = randomise(timm.create_model("resnetv2_50x1_bit", num_classes=1000), seed=8).eval()
    return new, old


@pytest.fixture
def hub_cache(tmp_path, monkeypatch, timm_models):
    from huggingface_hub import constants
    from safetensors.torch import save

    cache = tmp_path / "hub"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    config = json.dumps({"architecture": "resnetv2_50x1_bit", "num_classes": 1000}).encode()
    new, old = timm_models
    add_snapshot(
        cache,
        REPO,
        "b" * 40,
        {"model.safetensors": save(old.state_dict()), "config.json": config},
        refs=("v1",),
    )
    add_snapshot(
        cache, REPO, "a" * 40, {"model.safetensors": save(new.state_dict()), "config.json": config}
    )
    return cache


def test_hub_id_alone_builds_the_network_of_its_file(hub_cache, timm_models):
    model = create_model(HUB_ID)
    assert model.fc.out_channels == 1000 and [len(s) for s in model.stages] == [3, 4, 6, 3]
    assert {m.eps for m in model.modules() if hasattr(m, "clear_weight_cache")} == {1e-8}
    source = copy.deepcopy(timm_models[0]).double()
    with torch.no_grad():
        assert max_rel_diff(model.double().eval()(X), source(X)) <= 1e-5


def test_hub_id_with_a_new_head(hub_cache, timm_models):
    model = create_model(HUB_ID, num_classes=10)
    assert model.fc.out_channels == 10 and torch.count_nonzero(model.fc.weight) == 0
    assert torch.equal(
        model.block4.unit03.conv3.weight, timm_models[0].stages[3].blocks[2].conv3.weight
    )


@pytest.mark.parametrize("revision", ["v1", "b" * 40])
def test_revision_is_pinned(hub_cache, timm_models, revision):
    weights = read_weights(f"{HUB_ID}@{revision}")
    assert torch.equal(weights.state["stem.conv.weight"], timm_models[1].stem.conv.weight)
    assert f"snapshots/{'b' * 40}/" in str(weights.path)


def test_hub_id_as_detectron2_and_pretraining_weights(hub_cache, timm_models):
    from detectron2.modeling import build_model

    from bitdet.detection import BiTCheckpointer, get_bit_cfg
    from bitdet.pretrain import build_model as build_classifier
    from bitdet.pretrain import get_pretrain_cfg

    detector = build_model(
        get_bit_cfg(
            "quick_schedules/retinanet_bit_instant_test.yaml", ["MODEL.BIT.VARIANT", "R50x1"]
        )
    )
    BiTCheckpointer(detector).load(HUB_ID)
    assert torch.equal(
        detector.backbone.bottom_up.block2.unit01.downsample.weight,
        timm_models[0].stages[1].blocks[0].downsample.conv.weight,
    )
    classifier = build_classifier(
        get_pretrain_cfg(None, ["MODEL.WEIGHTS", HUB_ID, "MODEL.NUM_CLASSES", "1000"])
    )
    assert torch.equal(classifier.fc.bias, timm_models[0].head.fc.bias)
    from bitdet.transfer.config import get_finetune_cfg
    from bitdet.transfer.finetune import resolve_weights

    assert (
        resolve_weights(get_finetune_cfg("", ["MODEL.WEIGHTS", HUB_ID])) == HUB_ID
    )  # --weights accepts it


def test_uncached_id_offline_says_where_it_looked_and_what_to_do(hub_cache):
    with pytest.raises(CheckpointError) as err:
        create_model("hf-hub:timm/resnetv2_101x1_bit.goog_in21k")
    text = str(err.value)
    assert (
        str(hub_cache) in text
        and "HF_HUB_OFFLINE is set" in text
        and "hf download timm/resnetv2_101x1_bit" in text
    )
    with pytest.raises(CheckpointError, match="revision v9"):
        read_weights(f"{HUB_ID}@v9")
    with pytest.raises(CheckpointError, match="expected hf-hub:<org>/<name>"):
        read_weights("hf-hub:resnetv2_50x1_bit")


@pytest.fixture
def no_network(monkeypatch):
    """The hub's address is a closed local port: every request fails at once, as without network."""
    from huggingface_hub import constants

    dead = "http://127.0.0.1:9"
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", dead)
    monkeypatch.setattr(
        constants, "HUGGINGFACE_CO_URL_TEMPLATE", dead + "/{repo_id}/resolve/{revision}/{filename}"
    )


def test_without_network_an_uncached_id_fails_in_seconds(hub_cache, no_network, capfd):
    start = time.monotonic()
    with pytest.raises(CheckpointError) as err:
        read_weights("hf-hub:timm/resnetv2_101x1_bit.goog_in21k")
    assert time.monotonic() - start < 10  # one request, no retries with back-off
    text = str(err.value)
    assert (
        "\n" not in text
        and str(hub_cache) in text
        and "the hub could not be reached (ConnectError" in text
    )
    assert "hf download timm/resnetv2_101x1_bit.goog_in21k" in text
    assert "Retrying" not in capfd.readouterr().err


def test_without_network_a_cached_id_loads_from_the_cache(hub_cache, no_network, timm_models):
    start = time.monotonic()
    weights = read_weights(HUB_ID)
    assert time.monotonic() - start < 10
    assert torch.equal(weights.state["stem.conv.weight"], timm_models[0].stem.conv.weight)
    assert f"snapshots/{'a' * 40}/" in str(weights.path)
