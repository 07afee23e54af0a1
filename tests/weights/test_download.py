import functools
import hashlib
import http.server
import multiprocessing
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from bitdet.weights import CheckpointError, download, pretrained_path, read_npz
from bitdet.weights.download import mirrored


@pytest.fixture
def npz_file(tmp_path):
    path = tmp_path / "src" / "weights.npz"
    path.parent.mkdir()
    np.savez(path, a=np.arange(10, dtype=np.float32))
    return path


@pytest.fixture
def http_server(npz_file):
    handler = functools.partial(
        http.server.SimpleHTTPRequestHandler, directory=str(npz_file.parent)
    )
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_file_url_download_with_hash(tmp_path, npz_file):
    digest = hashlib.sha256(npz_file.read_bytes()).hexdigest()
    dest = download(
        npz_file.as_uri(),
        tmp_path / "cache" / "w.npz",
        sha256=digest,
        validate=read_npz,
        progress=False,
    )
    assert dest.read_bytes() == npz_file.read_bytes()
    npz_file.unlink()  # cached: no second download
    assert download("file:///nonexistent", dest, progress=False) == dest


def test_http_download_from_local_server(tmp_path, http_server, npz_file):
    dest = download(
        f"{http_server}/weights.npz",
        tmp_path / "cache" / "w.npz",
        validate=read_npz,
        progress=False,
    )
    assert np.array_equal(read_npz(dest)["a"], np.arange(10))


def test_hash_mismatch_leaves_nothing_in_cache(tmp_path, npz_file):
    cache = tmp_path / "cache"
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        download(npz_file.as_uri(), cache / "w.npz", sha256="0" * 64, progress=False)
    assert [p.name for p in cache.iterdir()] == [
        ".w.npz.lock"
    ]  # only the lock of the concurrent callers


def test_unloadable_download_leaves_nothing_in_cache(tmp_path):
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"PK\x03\x04 this is not a zip")
    cache = tmp_path / "cache"
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        download(junk.as_uri(), cache / "w.npz", validate=read_npz, progress=False)
    assert [p.name for p in cache.iterdir()] == [
        ".w.npz.lock"
    ]  # only the lock of the concurrent callers


def test_unreachable_url_says_where_to_put_the_file(tmp_path, http_server):
    with pytest.raises(CheckpointError, match="place it at"):
        download(f"{http_server}/missing.npz", tmp_path / "w.npz", progress=False)


def test_named_model_uses_the_cache(tmp_path, monkeypatch, npz_file):
    monkeypatch.setenv("BITDET_CACHE", str(tmp_path / "cache"))
    cached = tmp_path / "cache" / "BiT-M-R50x1.npz"
    cached.parent.mkdir()
    cached.write_bytes(npz_file.read_bytes())
    assert pretrained_path("BiT-M-R50x1") == cached
    with pytest.raises(KeyError, match="no official checkpoint"):
        pretrained_path("R14-tiny")


def _official_layout_npz(path, arch, num_classes):
    from bitdet import create_model
    from bitdet.weights import state_dict_to_npz, write_npz

    write_npz(path, state_dict_to_npz(create_model(arch, num_classes=num_classes)))
    return path


def test_official_download_is_checked_against_the_architecture(tmp_path, monkeypatch):
    """With no published sha256, a wrong or truncated-by-content file must still not enter the
    cache."""
    from bitdet.models import variants
    from bitdet.weights import CheckpointMismatchError

    right = _official_layout_npz(tmp_path / "right.npz", "R14-tiny", 21843)
    wrong = _official_layout_npz(tmp_path / "wrong.npz", "R26-tiny", 21843)
    cache = tmp_path / "cache"
    monkeypatch.setenv("BITDET_CACHE", str(cache))
    entry = variants.Pretrained("R14-tiny", 21843, wrong.as_uri())
    monkeypatch.setitem(variants.PRETRAINED, "BiT-M-R14-tiny", entry)
    with pytest.raises(CheckpointMismatchError, match=r"unexpected keys .*resnet/block1/unit02"):
        pretrained_path("BiT-M-R14-tiny", progress=False)
    assert [p.name for p in cache.iterdir()] == [
        ".BiT-M-R14-tiny.npz.lock"
    ]  # the per-machine download lock only
    monkeypatch.setitem(
        variants.PRETRAINED, "BiT-M-R14-tiny", variants.Pretrained("R14-tiny", 1000, right.as_uri())
    )
    with pytest.raises(
        CheckpointMismatchError, match=r"head/conv2d/kernel: expected .*1000.* found .*21843"
    ):
        pretrained_path("BiT-M-R14-tiny", progress=False)
    monkeypatch.setitem(
        variants.PRETRAINED,
        "BiT-M-R14-tiny",
        variants.Pretrained("R14-tiny", 21843, right.as_uri()),
    )
    assert pretrained_path("BiT-M-R14-tiny", progress=False).read_bytes() == right.read_bytes()


class _CountingHandler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder slowly (so that the ranks' requests would overlap) and counts GETs."""

    def do_GET(self):
        with self.server.lock:
            self.server.requests.append(self.path)
        time.sleep(0.3)
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture
def mirror(tmp_path):
    folder = tmp_path / "mirror"
    folder.mkdir()
    _official_layout_npz(folder / "BiT-M-R14-tiny.npz", "R14-tiny", 21843)
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_CountingHandler, directory=str(folder))
    )
    server.requests, server.lock, server.folder = [], threading.Lock(), str(folder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()


def _rank(cache, barrier, results):
    os.environ["BITDET_CACHE"] = cache
    barrier.wait()  # all ranks ask at the same moment
    path = pretrained_path("BiT-M-R14-tiny", progress=False)
    results.put((cache, str(path), len(read_npz(path))))


def test_one_download_per_node_from_a_mirror(tmp_path, monkeypatch, mirror):
    from bitdet.models import variants

    # a small model's official-layout file; downloads are checked against its architecture
    official = "https://example.org/bit_models/BiT-M-R14-tiny.npz"
    monkeypatch.setitem(
        variants.PRETRAINED, "BiT-M-R14-tiny", variants.Pretrained("R14-tiny", 21843, official)
    )
    monkeypatch.setenv("BITDET_WEIGHTS_URL", f"http://127.0.0.1:{mirror.server_address[1]}/")
    # two machines with two ranks each; each machine has its own (node-local) cache
    caches = [
        str(tmp_path / "node0"),
        str(tmp_path / "node0"),
        str(tmp_path / "node1"),
        str(tmp_path / "node1"),
    ]
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(len(caches)), ctx.Queue()
    procs = [ctx.Process(target=_rank, args=(c, barrier, results)) for c in caches]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    seen = sorted(results.get(timeout=5) for _ in caches)
    assert mirror.requests == ["/BiT-M-R14-tiny.npz"] * 2  # one request per node
    expected = len(read_npz(Path(mirror.folder) / "BiT-M-R14-tiny.npz"))
    assert all(
        path == f"{cache}/BiT-M-R14-tiny.npz" and count == expected for cache, path, count in seen
    )
    # cached: never fetched again, even from a fresh process
    proc = ctx.Process(target=_rank, args=(caches[0], ctx.Barrier(1), results))
    proc.start()
    proc.join(60)
    assert proc.exitcode == 0 and len(mirror.requests) == 2


def test_mirror_url_keeps_the_file_name(monkeypatch):
    official = "https://example.org/bit_models/BiT-S-R50x1.npz"
    assert mirrored(official) == official
    monkeypatch.setenv("BITDET_WEIGHTS_URL", "file:///shared/weights/")
    assert mirrored(official) == "file:///shared/weights/BiT-S-R50x1.npz"


@pytest.fixture
def official_tiny(tmp_path, monkeypatch):
    """A small official entry, ``BiT-M-R14-tiny`` (R14-tiny, 7 classes), with an empty cache and
    no download."""
    from bitdet.models import variants

    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("BITDET_CACHE", str(cache))
    monkeypatch.setenv(
        "BITDET_WEIGHTS_URL", (tmp_path / "no-mirror").as_uri()
    )  # a download fails at once
    monkeypatch.setitem(
        variants.PRETRAINED,
        "BiT-M-R14-tiny",
        variants.Pretrained("R14-tiny", 7, "https://x/BiT-M-R14-tiny.npz"),
    )
    monkeypatch.chdir(tmp_path)
    return cache


@pytest.mark.parametrize(
    "layers, classes, found",
    [
        ((1, 1, 1, 1), 3, "found R14-tiny with a 3-class head"),
        ((2, 2, 2, 2), 7, "found R26-tiny with a 7-class head"),
        ((1, 1, 1, 1), 0, "found R14-tiny with no head"),
    ],
)
def test_an_official_name_must_hold_the_official_architecture_and_head(
    official_tiny, layers, classes, found
):
    from bitdet import create_model
    from tests.official_npz import write_official_npz

    cached = official_tiny / "BiT-M-R14-tiny.npz"
    write_official_npz(cached, layers=layers, num_classes=classes)
    expected = (
        f"{cached} is not the official BiT-M-R14-tiny: expected R14-tiny with a 7-class head, "
        f"{found}"
    )
    for call in (
        lambda: create_model("BiT-M-R14-tiny", pretrained=True),
        lambda: create_model("R14-tiny", pretrained="BiT-M-R14-tiny"),
        lambda: create_model("R14-tiny", num_classes=2, pretrained="BiT-M-R14-tiny.npz"),
        lambda: create_model("R14-tiny", pretrained=cached),
    ):  # the cache's file, by its path
        with pytest.raises(CheckpointError) as err:
            call()
        assert str(err.value) == expected


def test_the_real_table_names_the_upstream_heads(official_tiny):
    from bitdet import create_model
    from tests.official_npz import write_official_npz

    write_official_npz(
        official_tiny / "BiT-M-R50x1.npz", num_classes=10
    )  # a small 10-class file, misnamed
    with pytest.raises(
        CheckpointError,
        match="expected R50x1 with a 21843-class head, found R14-tiny with a 10-class",
    ):
        create_model("BiT-M-R50x1", pretrained=True)
    write_official_npz(official_tiny / "BiT-S-R50x1.npz", num_classes=10)
    with pytest.raises(CheckpointError, match="expected R50x1 with a 1000-class head"):
        create_model("R50x1", pretrained="BiT-S-R50x1.npz")


def test_an_official_file_name_is_found_here_then_in_the_cache(official_tiny, tmp_path):
    import torch

    from bitdet import create_model
    from bitdet.weights import WeightsNotFoundError
    from tests.official_npz import write_official_npz

    with pytest.raises(WeightsNotFoundError) as err:
        create_model("R14-tiny", pretrained="BiT-M-R14-tiny.npz")
    text = str(err.value)
    assert "\n" not in text and text.startswith(
        f"BiT-M-R14-tiny is not at {tmp_path / 'BiT-M-R14-tiny.npz'}, "
        f"{official_tiny / 'BiT-M-R14-tiny.npz'}; "
        f"could not download {(tmp_path / 'no-mirror').as_uri()}/BiT-M-R14-tiny.npz"
    )
    cached = write_official_npz(official_tiny / "BiT-M-R14-tiny.npz", num_classes=7, seed=1)
    here = write_official_npz(tmp_path / "BiT-M-R14-tiny.npz", num_classes=7, seed=2)
    stem = "resnet/root_block/standardized_conv2d/kernel"
    for arrays in (here, cached):  # the current folder's file first, then the cache's
        model = create_model("R14-tiny", pretrained="BiT-M-R14-tiny.npz")
        assert (
            model.fc.out_channels == 7 and torch.count_nonzero(model.fc.weight) > 0
        )  # the file's head
        assert torch.equal(
            model.stem.conv.weight, torch.from_numpy(arrays[stem]).permute(3, 2, 0, 1)
        )
        (tmp_path / "BiT-M-R14-tiny.npz").unlink(missing_ok=True)
