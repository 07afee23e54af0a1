"""Detection training survives SIGTERM and SIGKILL and resumes exactly: tiny ``train_net.py`` runs.

Each kill point is fixed (``kill_point.py``): before the first checkpoint, between two
checkpoints, in the middle of a checkpoint write, after the final checkpoint. For every
one, the killed run's checkpoints are whole and equal the uninterrupted run's of the same
iteration, ``--resume`` starts from the last whole checkpoint, and the resumed run's final
weights and optimizer state are bit-identical to the uninterrupted run's (same seed, same
number of processes, CPU). One uninterrupted reference run per process count is shared.
"""
from __future__ import annotations

import re

import pytest
import torch

from tests.reliability import detection_runs as runs

pytestmark = pytest.mark.slow

LAST = runs.MAX_ITER - 1
# (kill point, checkpoints on disk after the kill, iteration --resume starts from)
KILL_POINTS = {
    "before-first-checkpoint": ("step:0", [], 0),
    "between-checkpoints": ("step:2", ["model_0000001.pth"], 2),
    "during-checkpoint-write": ("write:model_0000003.pth", ["model_0000001.pth"], 2),
    "after-last-checkpoint": ("end", ["model_0000001.pth", "model_0000003.pth", "model_0000005.pth",
                                      "model_final.pth"], runs.MAX_ITER),
}


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    return tmp_path_factory.mktemp("datasets")


@pytest.fixture(scope="module")
def references(tmp_path_factory, datasets):
    """Uninterrupted runs, one per process count, made on first use and shared."""
    made = {}

    def reference(num_gpus: int):
        if num_gpus not in made:
            out = tmp_path_factory.mktemp(f"reference{num_gpus}") / "run"
            try:
                runs.run(out, datasets, num_gpus=num_gpus)
                made[num_gpus] = out
            except AssertionError as e:  # fail every test of this process count, running it once
                made[num_gpus] = e
        if isinstance(made[num_gpus], AssertionError):
            raise made[num_gpus]
        return made[num_gpus]

    return reference


def _assert_same_state(state: dict, ref: dict, what: str) -> None:
    """Model weights and optimizer state bit-identical."""
    assert state["iteration"] == ref["iteration"], what
    assert state["model"].keys() == ref["model"].keys(), what
    for key, value in ref["model"].items():
        assert torch.equal(state["model"][key], value), f"{what}: {key} differs"
    opt, ref_opt = state["trainer"]["_trainer"]["optimizer"]["state"], ref["trainer"]["_trainer"]["optimizer"]["state"]
    assert opt.keys() == ref_opt.keys(), what
    for key in ref_opt:
        assert torch.equal(opt[key]["momentum_buffer"], ref_opt[key]["momentum_buffer"]), f"{what}: momentum {key}"
    assert state["trainer"]["hooks"] == ref["trainer"]["hooks"], f"{what}: scheduler / data stream state"


def _assert_checkpoints_whole(out, ref_dir, expected) -> None:
    """Exactly ``expected`` checkpoint files, each equal to the reference's; last_checkpoint names the newest."""
    names = sorted(p.name for p in runs.checkpoints(out))
    assert names == sorted(expected)
    for name in names:
        _assert_same_state(runs.load(out / name), runs.load(ref_dir / name), f"killed run's {name}")
    if expected:
        assert (out / "last_checkpoint").read_text() == expected[-1]
    else:
        assert not (out / "last_checkpoint").exists()


@pytest.mark.parametrize("num_gpus", [1, 2])  # 2: DDP over gloo on the CPU
@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_sigkill_then_resume_is_bit_identical(tmp_path, datasets, references, point, num_gpus):
    kill_at, on_disk, resume_at = KILL_POINTS[point]
    ref = references(num_gpus)
    out = tmp_path / "run"
    runs.run_killed(out, datasets, kill_at, num_gpus=num_gpus)

    _assert_checkpoints_whole(out, ref, on_disk)
    temporaries = list(out.glob(".*.tmp"))
    if point == "during-checkpoint-write":
        # The half-written file is the temporary; the checkpoint name never appeared.
        assert len(temporaries) == 1 and temporaries[0].name.startswith(".model_0000003.pth.")
        assert 0 < temporaries[0].stat().st_size < (ref / "model_0000003.pth").stat().st_size
    else:
        assert temporaries == []

    log = runs.run(out, datasets, resume=True, num_gpus=num_gpus)
    assert f"Starting training from iteration {resume_at}" in log
    if resume_at:
        assert f"data stream resumes at batch {resume_at}" in log
    _assert_same_state(runs.load(out / "model_final.pth"), runs.load(ref / "model_final.pth"), "resumed final")
    for name in ("model_0000001.pth", "model_0000003.pth", "model_0000005.pth"):
        _assert_same_state(runs.load(out / name), runs.load(ref / name), f"resumed run's {name}")


def test_sigterm_saves_current_iteration_exits_zero_and_resumes_exactly(tmp_path, datasets, references):
    ref = references(1)
    out = tmp_path / "run"
    # SIGTERM arrives after iteration 1; the flag is acted on after the next iteration.
    proc = runs.start(out, datasets, kill_at="term:1")
    assert proc.wait(300) == 0, (tmp_path / "run.log").read_text()[-3000:]
    log = (tmp_path / "run.log").read_text()
    assert re.search(r"SIGTERM received: saved .*model_0000002\.pth after iteration 2", log), log[-3000:]
    assert (out / "last_checkpoint").read_text() == "model_0000002.pth"
    assert runs.load(out / "model_0000002.pth")["iteration"] == 2
    assert not (out / "model_final.pth").exists()
    assert not list(out.glob(".*.tmp")), "a temporary checkpoint file was left behind"

    log = runs.run(out, datasets, resume=True)
    assert "Starting training from iteration 3" in log
    _assert_same_state(runs.load(out / "model_final.pth"), runs.load(ref / "model_final.pth"), "resumed final")
