"""tools/fetch_test_fixtures.py: only "cannot be fetched" may become a skip; a corrupted archive
is an error; the set-up runs it without the test package.

Runs offline: a small sdist-shaped archive is written into the cache and a fixture source
pinned to it is put in :data:`FIXTURES` for the test.
"""

import hashlib
import io
import json
import subprocess
import tarfile

import pytest

from tests.fixtures import fetch_test_fixtures as fixtures
from tests.tools.tool_run import ROOT, run_python

FixtureIntegrityError = fixtures.FixtureIntegrityError
FixtureSource = fixtures.FixtureSource
FixtureUnavailableError = fixtures.FixtureUnavailableError
fetch_fixture = fixtures.fetch_fixture

COCO = {
    "images": [{"id": 1, "file_name": "a.jpg", "width": 4, "height": 4}],
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 2, 2], "area": 4, "iscrowd": 0}
    ],
    "categories": [{"id": 1, "name": "thing"}],
}


def _sdist(path, members):
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(f"pkg-1.0/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A cache holding pkg-1.0.tar.gz; returns (cache root, archive path, install(sha) -> name)."""
    archive = tmp_path / "sdists" / "pkg-1.0.tar.gz"
    archive.parent.mkdir()

    def install(sha256):
        monkeypatch.setitem(
            fixtures.FIXTURES,
            "test_fixture",
            FixtureSource("pkg", "1.0", sha256, "data/coco.json", "data"),
        )
        return "test_fixture"

    return tmp_path, archive, install


def test_pinned_archive_is_extracted_and_normalised(cache):
    root, archive, install = cache
    sha = _sdist(archive, {"data/coco.json": json.dumps(COCO).encode(), "data/a.jpg": b"jpeg"})
    got = fetch_fixture(install(sha), cache_dir=root)
    assert json.loads(got.json_file.read_text())["annotations"][0]["bbox"] == [0, 0, 2, 2]
    assert (got.image_root / "a.jpg").read_bytes() == b"jpeg"


def test_sha256_mismatch_is_an_integrity_error_not_a_skip(cache):
    root, archive, install = cache
    _sdist(archive, {"data/coco.json": json.dumps(COCO).encode(), "data/a.jpg": b"jpeg"})
    with pytest.raises(FixtureIntegrityError, match=r"pkg-1\.0\.tar\.gz: sha256 .*expected 0{64}"):
        fetch_fixture(install("0" * 64), cache_dir=root)


def test_missing_member_is_an_integrity_error(cache):
    root, archive, install = cache
    sha = _sdist(archive, {"data/coco.json": json.dumps(COCO).encode()})  # the image is missing
    with pytest.raises(FixtureIntegrityError, match=r"has no file pkg-1\.0/data/a\.jpg"):
        fetch_fixture(install(sha), cache_dir=root)
    assert not (root / "test_fixture" / "instances.json").exists()


def test_download_failure_is_unavailable(cache, monkeypatch):
    root, archive, install = cache
    failed = subprocess.CompletedProcess(
        [], 1, "", "ERROR: No matching distribution found for pkg==1.0"
    )
    monkeypatch.setattr(fixtures.subprocess, "run", lambda *a, **k: failed)
    with pytest.raises(FixtureUnavailableError, match="No matching distribution"):
        fetch_fixture(install("0" * 64), cache_dir=root)


@pytest.mark.parametrize(
    "error, status", [(FixtureUnavailableError("offline"), 2), (FixtureIntegrityError("bad"), 1)]
)
def test_setup_exit_status(monkeypatch, capsys, error, status):
    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(fixtures, "fetch_fixtures", fail)
    assert fixtures.main([]) == status
    assert str(error) in capsys.readouterr().err


# Runs the tool as tools/setup_env.sh does, from another folder, with ``tests`` made unimportable.
_WITHOUT_TESTS = """
import runpy, sys
class NoTests:
    def find_spec(self, name, path=None, target=None):
        if name == "tests" or name.startswith("tests."):
            raise ImportError(f"the set-up imported {name}")
sys.meta_path.insert(0, NoTests())
sys.argv = [sys.argv[1], "--help"]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_the_setup_runs_the_tool_without_the_test_package(tmp_path):
    setup = (ROOT / "tools" / "setup_env.sh").read_text()
    assert '"$PY" tools/fetch_test_fixtures.py' in setup and "-m tests" not in setup
    tool = ROOT / "tools" / "fetch_test_fixtures.py"
    proc = run_python("-c", _WITHOUT_TESTS, tool, cwd=tmp_path, timeout=120)
    assert proc.stdout.startswith("usage: fetch_test_fixtures.py") and "--cache-dir" in proc.stdout
