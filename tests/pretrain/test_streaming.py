"""Shard indexes (start-up without header scans) and streamed shards (``pipe:`` through the
webdataset library): rank shares, exact resumption, and the webdataset instant config."""

import json

import numpy as np
import pytest
import torch
from detectron2.engine import HookBase
from PIL import Image
from skimage import data as skdata

from bitdet import create_model
from bitdet.engine import ClassifierTrainer
from bitdet.pretrain import ShardDataset, StreamingShards, write_shards
from bitdet.pretrain import shards as shards_module
from bitdet.pretrain.data import train_transform
from bitdet.pretrain.shards import is_stream

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "horse")


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    """4 shards of 3 samples each (12 real photos, 5 classes) with their indexes."""
    root = tmp_path_factory.mktemp("shards")
    samples = []
    for i, name in enumerate(PHOTOS):
        img = Image.fromarray(getattr(skdata, name)()).convert("RGB").resize((24, 20))
        for j in range(2):
            path = root / "img" / f"{name}{j}.png"
            path.parent.mkdir(exist_ok=True)
            img.rotate(90 * j).save(path)
            samples.append((str(path), i % 5))
    written = write_shards(samples, str(root / "s-%06d.tar"), max_count=3)
    assert len(written) == 4
    return root


def _local(root):
    return str(root / "s-{000000..000003}.tar")


def _pipe(root):
    return f"pipe:cat {root}/s-{{000000..000003}}.tar"


def test_index_replaces_the_header_scan(shard_dir, monkeypatch):
    scanned = ShardDataset(_local(shard_dir))
    assert sorted(p.name for p in shard_dir.glob("*.idx")) == [
        f"s-00000{i}.tar.idx" for i in range(4)
    ]

    def no_scan(path):
        raise AssertionError(f"scanned {path} although its index exists")

    monkeypatch.setattr(shards_module, "index_shard", no_scan)
    indexed = ShardDataset(_local(shard_dir))
    assert indexed.index == scanned.index and len(indexed) == 12
    assert np.array_equal(np.asarray(indexed[5][0]), np.asarray(scanned[5][0]))


def test_index_of_another_shard_version_is_an_error(shard_dir, tmp_path):
    shard = tmp_path / "s-000000.tar"
    shard.write_bytes((shard_dir / "s-000000.tar").read_bytes())
    index = json.loads((shard_dir / "s-000000.tar.idx").read_text())
    index["shard_bytes"] += 512
    (tmp_path / "s-000000.tar.idx").write_text(json.dumps(index))
    with pytest.raises(
        ValueError, match=r"s-000000.tar.idx does not describe .*write_shards --index"
    ):
        ShardDataset(str(shard))


def test_stream_reads_what_random_access_reads(shard_dir):
    assert (
        is_stream(_pipe(shard_dir))
        and is_stream("https://host/a-{0..9}.tar")
        and not is_stream(_local(shard_dir))
    )
    local = ShardDataset(_local(shard_dir))
    streamed = list(StreamingShards(_pipe(shard_dir)))
    assert len(streamed) == len(local) == 12
    for i, (img, target) in enumerate(streamed):
        assert np.array_equal(np.asarray(img), np.asarray(local[i][0])) and target == local[i][1]


def test_ranks_read_different_shards(shard_dir):
    stream = StreamingShards(_pipe(shard_dir))
    for epoch in (0, 1):
        mine = [stream.shards_of(epoch, 3, rank, 2) for rank in (0, 1)]
        assert sorted(mine[0] + mine[1]) == [0, 1, 2, 3] and len(mine[0]) == 2
    orders = [stream.shards_of(epoch, 3, 0, 1) for epoch in range(4)]
    assert len({tuple(o) for o in orders}) > 1  # a new (seeded) shard order each epoch
    first = [np.asarray(next(iter(stream.for_rank(rank, 2, 2, 0, 3)))[0]) for rank in (0, 1)]
    assert not np.array_equal(first[0], first[1])
    with pytest.raises(ValueError, match="4 shards .* cannot feed 8 process"):
        next(iter(stream.for_rank(0, 8, 2, 0, 3)))


class _Crash(HookBase):
    """Ends the process's training abruptly after ``step`` steps (its checkpoint is on disk)."""

    def __init__(self, step):
        self.step = step

    def after_step(self):
        if self.trainer.iter + 1 == self.step:
            raise KeyboardInterrupt("killed")


def _trainer(out, stream, steps):
    torch.manual_seed(0)
    model = create_model("R14-tiny", num_classes=5)
    return ClassifierTrainer(
        model,
        stream,
        output_dir=out,
        max_steps=steps,
        global_batch=4,
        lr_at=lambda s: 0.05,
        checkpoint_period=2,
        keep_last=0,
        log_period=1,
        seed=3,
        num_workers=2,
    )


@pytest.mark.slow
def test_streamed_training_resumes_exactly_after_a_kill(shard_dir, tmp_path):
    """Resume is exact to the sample: 6 steps in one go equal 3 steps, a crash and a resume.

    The crash comes after step 3, past the checkpoint of step 2: the resumed run repeats
    step 3 from the same shard position (worker 0 of 2 skips 1 batch, worker 1 skips 1)."""
    stream = StreamingShards(_pipe(shard_dir), transform=train_transform(16))
    straight = _trainer(tmp_path / "straight", stream, 6)
    straight.train(resume=False)
    crashed = _trainer(tmp_path / "crashed", stream, 6)
    crashed.register_hooks([_Crash(3)])
    with pytest.raises(KeyboardInterrupt):
        crashed.train(resume=False)
    assert (tmp_path / "crashed" / "last_checkpoint").read_text() == "model_0000001.pth"
    resumed = _trainer(tmp_path / "crashed", stream, 6)
    resumed.train(resume=True)
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    other = _trainer(tmp_path / "other_seed", stream, 2)
    other.seed = 4
    other.train(resume=False)
    assert not torch.equal(other.model.state_dict()["fc.weight"], a["fc.weight"])


@pytest.mark.slow
def test_pipe_pattern_trains_the_webdataset_instant_config(shard_dir, tmp_path):
    from bitdet.tools.pretrain import cli

    out = tmp_path / "out"
    cli(
        [
            "--config-file",
            "quick_schedules/pretrain_webdataset_multilabel_instant_test.yaml",
            "DATASETS.TRAIN.ROOT",
            _pipe(shard_dir),
            "DATASETS.TEST.ROOT",
            _pipe(shard_dir),
            "DATASETS.TEST.MAX_SAMPLES",
            "7",
            "OUTPUT_DIR",
            str(out),
        ]
    )
    final = json.loads((out / "final.json").read_text())
    assert final["steps"] == 3 and final["train_images"] is None and final["num_samples"] == 7
    assert "data share of rank 0 of 1: shards [0, 1, 2, 3] of 4" in (out / "log.txt").read_text()


def test_streamed_training_refuses_another_process_count_on_resume(shard_dir, tmp_path):
    """Each (process, worker) streams its own shards: a resume with other counts would read
    other data."""
    stream = StreamingShards(_pipe(shard_dir), transform=train_transform(16))
    first = _trainer(tmp_path, stream, 2)
    first.num_workers = 0
    first.train(resume=False)
    path = tmp_path / "model_0000001.pth"
    state = torch.load(path, weights_only=True)
    assert state["data"] == {"world_size": 1, "num_workers": 0}
    state["data"]["world_size"] = 2  # as a run of 2 processes writes it
    torch.save(state, path)
    with pytest.raises(
        ValueError,
        match=r"model_0000001\.pth was written by a run of 2 process\(es\) x 0 data-loader "
        r"worker\(s\) and this run has 1 x 2: each process and worker streams its "
        r"own shards, .* resume with 2 process\(es\) and DATALOADER\.NUM_WORKERS 0",
    ):
        _trainer(tmp_path, stream, 4).resume()
