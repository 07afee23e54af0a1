"""2-process gloo DDP through Detectron2's launch: learning, identical replicas, failing rank."""

import json
import time

import pytest
import torch
from detectron2.engine import launch

from tests.engine.tiny_run import ddp_worker


@pytest.mark.slow
def test_two_process_ddp_learns_and_replicas_agree(tmp_path):
    launch(ddp_worker, 2, dist_url="auto", args=(str(tmp_path), 16))
    rows = [json.loads(line) for line in (tmp_path / "metrics.json").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 16
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 - 0.2, losses
    a, b = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # only rank 0 writes checkpoints and metrics
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000015.pth"


@pytest.mark.slow
def test_failing_rank_ends_the_job_with_its_error(tmp_path):
    start = time.monotonic()
    with pytest.raises(Exception, match="rank 1 exploded at step 2"):
        launch(ddp_worker, 2, dist_url="auto", args=(str(tmp_path), 50, 1))
    assert time.monotonic() - start < 120  # no hang until a collective timeout
    assert not (tmp_path / "rank0.pt").exists()
