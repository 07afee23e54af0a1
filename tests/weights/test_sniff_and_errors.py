"""The container is read from the bytes, not the name; no weights load silently or half-load."""

import gzip
import pickle
import zipfile

import numpy as np
import pytest
import torch

from bitdet import create_model
from bitdet.weights import (
    CheckpointError,
    CheckpointMismatchError,
    WeightsNotFoundError,
    load_weights,
    save_checkpoint,
    sniff_container,
)
from tests.official_npz import write_official_npz
from tests.tools.tool_run import run_tool


def test_containers_are_recognised_whatever_the_name(tmp_path):
    from safetensors.torch import save_file

    state = {"w": torch.zeros(2)}
    torch.save(state, tmp_path / "a.npz")  # misnamed on purpose
    torch.save(state, tmp_path / "b.pth", _use_new_zipfile_serialization=False)
    save_file(state, str(tmp_path / "c.bin"))
    np.savez(tmp_path / "d.pth", w=np.zeros(2))
    (tmp_path / "e.safetensors").write_bytes(pickle.dumps({"w": np.zeros(2)}, protocol=2))
    kinds = [
        sniff_container(tmp_path / n)
        for n in ("a.npz", "b.pth", "c.bin", "d.pth.npz", "e.safetensors")
    ]
    assert kinds == ["torch", "torch-legacy", "safetensors", "npz", "pickle"]


@pytest.mark.parametrize(
    "content,what",
    [
        (b"hello\n", "a text file (it starts 'hello')"),
        (b"", "empty"),
        (b"<!DOCTYPE html><html><body>Sign in</body></html>", "an HTML / XML page"),
        (gzip.compress(b"x" * 100), "gzip-compressed"),
        (b"\x89HDF\r\n\x1a\n" + bytes(64), "HDF5"),
        (b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\n", "Git LFS pointer"),
        (bytes(range(7, 40)), "of an unknown kind"),
    ],
)
def test_a_file_that_is_no_weights_is_called_what_it_is(tmp_path, content, what):
    path = tmp_path / "x.npz"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="is not a weights file: it is") as err:
        load_weights(create_model("R14-tiny"), path)
    assert what in str(err.value) and str(path) in str(err.value)
    assert "pickle" not in str(err.value)


def test_zip_of_other_files_is_named(tmp_path):
    with zipfile.ZipFile(tmp_path / "w.pth", "w") as z:
        z.writestr("readme.txt", "hi")
    with pytest.raises(CheckpointError, match=r"zip archive of other files \(readme.txt\)"):
        sniff_container(tmp_path / "w.pth")


def test_unknown_layout_shows_its_keys_and_the_formats_read(tmp_path):
    torch.save(
        {"model": {"features.0.weight": torch.zeros(3), "classifier.weight": torch.zeros(2)}},
        tmp_path / "m.pth",
    )
    with pytest.raises(CheckpointError) as err:
        create_model("R14-tiny", pretrained=tmp_path / "m.pth")
    text = str(err.value)
    assert "no BiT key layout recognised" in text and "classifier.weight, features.0.weight" in text
    assert "timm resnetv2_*_bit" in text and "bit_pytorch" in text and "transformers" in text


def test_other_architecture_is_named_with_the_setting_to_change(tmp_path):
    path = tmp_path / "r26.npz"
    write_official_npz(path, layers=(2, 2, 2, 2), num_classes=5)
    with pytest.raises(CheckpointMismatchError) as err:
        load_weights(
            create_model("R14-tiny", num_classes=5), path, variant_option="MODEL.BIT.VARIANT"
        )
    text = str(err.value)
    assert (
        "this file is R26-tiny (" in text
        and "the model is R14-tiny (" in text
        and "set MODEL.BIT.VARIANT R26-tiny" in text
    )
    assert "official BiT .npz" in text and "\n" not in text  # one line
    assert (
        "; 36 keys differ (36 unexpected), first: resnet/block1/unit02/" in text
        and text.endswith("not in the model")
    )
    listed = err.value.details.split("unexpected keys")[1].split("\n")[
        0
    ]  # the details: the traceback's note
    assert listed.count("resnet/block") == 5 and "more)" in listed  # five examples, then a count
    assert err.value.__notes__ == [err.value.details]


@pytest.mark.slow
def test_a_tool_given_another_architecture_prints_one_line_and_logs_the_keys(tmp_path):
    save_checkpoint(tmp_path / "r26.pth", create_model("R26-tiny", num_classes=0))
    out = tmp_path / "run"
    proc = run_tool(
        "finetune.py",
        "--config-file",
        "finetune/demo_digits.yaml",
        "--weights",
        tmp_path / "r26.pth",
        "OUTPUT_DIR",
        out,
        cwd=tmp_path,
        status=2,
        timeout=300,
    )
    # torch's notice on a machine with a CUDA toolkit and no GPU is not the tool's
    err = [line for line in proc.stderr.splitlines() if "No CUDA runtime is found" not in line]
    assert len(err) == 1, proc.stderr
    assert err[0].startswith(f"finetune: error: weights {tmp_path / 'r26.pth'} (bitdet")
    assert (
        "this file is R26-tiny (3.5M); the model is R14-tiny (2.0M): "
        "set MODEL.BIT.VARIANT R26-tiny; " in err[0]
    )
    assert err[0].endswith(
        "36 keys differ (36 unexpected), first: block1.unit02.conv1.weight not in the model"
    )
    assert (
        "unexpected keys (36 in the file, not in the model): block1.unit02.conv1.weight"
        in (out / "log.txt").read_text()
    )


def test_a_partial_trunk_is_an_error_and_changes_nothing(tmp_path):
    source = create_model("R14-tiny", num_classes=3)
    state = source.state_dict()
    for key in ["block3.unit01.conv2.weight", "block4.unit01.gn1.bias"]:
        del state[key]
    torch.save(state, tmp_path / "partial.pth")
    model = create_model("R14-tiny", num_classes=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointMismatchError) as err:
        load_weights(model, tmp_path / "partial.pth")
    text = str(err.value)
    assert (
        "incomplete" in text
        and "2 keys differ (2 missing), first: block3.unit01.conv2.weight not in the file" in text
    )
    assert "missing keys (2 not in the file; the model's trunk has" in err.value.details
    assert "block3.unit01.conv2.weight, block4.unit01.gn1.bias" in err.value.details
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_missing_sources_are_one_clear_error(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="'nope.npz' not found: no such file") as err:
        load_weights(create_model("R14-tiny"), "nope.npz")
    assert isinstance(err.value, FileNotFoundError)
    with pytest.raises(WeightsNotFoundError, match="BiT-M-R50x9 is no official BiT checkpoint"):
        load_weights(create_model("R14-tiny"), "BiT-M-R50x9")


def test_bitdet_checkpoint_restores_its_epsilon(tmp_path):
    source = create_model("R14-tiny", num_classes=3, ws_eps=1e-8)
    save_checkpoint(tmp_path / "m.pth", source)
    model = create_model("R14-tiny", num_classes=3, pretrained=tmp_path / "m.pth")
    assert {m.eps for m in model.modules() if hasattr(m, "clear_weight_cache")} == {1e-8}
