"""Detection training survives SIGTERM, SIGKILL, a damaged checkpoint, a NaN loss and a change of
the process count: tiny ``train_net.py`` runs.

Each kill point is fixed (``kill_point.py``): before the first checkpoint, between two
checkpoints, in the middle of a checkpoint write, after the final checkpoint. For every
one, the killed run's checkpoints are whole and equal the uninterrupted run's of the same
iteration, ``--resume`` starts from the last whole checkpoint, and the resumed run's final
weights and optimizer state are bit-identical to the uninterrupted run's (same seed, same
number of processes, CPU), in float32 and with the shipped bf16 autocast. One uninterrupted
reference run per process count and precision is shared.
"""

from __future__ import annotations

import json
import re
import shutil

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
    "after-last-checkpoint": (
        "end",
        ["model_0000001.pth", "model_0000003.pth", "model_0000005.pth", "model_final.pth"],
        runs.MAX_ITER,
    ),
}


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    return tmp_path_factory.mktemp("datasets")


@pytest.fixture(scope="module")
def references(tmp_path_factory, datasets):
    """Uninterrupted runs, one per process count and precision, made on first use and shared."""
    made = {}

    def reference(num_gpus: int, precision: str = "fp32"):
        key = num_gpus, precision
        if key not in made:
            out = tmp_path_factory.mktemp(f"reference{num_gpus}{precision}") / "run"
            try:
                runs.run(out, datasets, num_gpus=num_gpus, extra=runs.PRECISION[precision])
                made[key] = out
            except AssertionError as e:  # fail every test of this process count, running it once
                made[key] = e
        if isinstance(made[key], AssertionError):
            raise made[key]
        return made[key]

    return reference


def _assert_same_state(state: dict, ref: dict, what: str) -> None:
    """Model weights and optimizer state bit-identical."""
    assert state["iteration"] == ref["iteration"], what
    assert state["model"].keys() == ref["model"].keys(), what
    for key, value in ref["model"].items():
        assert torch.equal(state["model"][key], value), f"{what}: {key} differs"
    opt, ref_opt = (
        state["trainer"]["_trainer"]["optimizer"]["state"],
        ref["trainer"]["_trainer"]["optimizer"]["state"],
    )
    assert opt.keys() == ref_opt.keys(), what
    for key in ref_opt:
        assert torch.equal(opt[key]["momentum_buffer"], ref_opt[key]["momentum_buffer"]), (
            f"{what}: momentum {key}"
        )
    assert state["trainer"]["hooks"] == ref["trainer"]["hooks"], (
        f"{what}: scheduler / data stream state"
    )


def _assert_checkpoints_whole(out, ref_dir, expected) -> None:
    """Exactly ``expected`` checkpoint files, each equal to the reference's; last_checkpoint names
    the newest."""
    names = sorted(p.name for p in runs.checkpoints(out))
    assert names == sorted(expected)
    for name in names:
        _assert_same_state(runs.load(out / name), runs.load(ref_dir / name), f"killed run's {name}")
    if expected:
        assert (out / "last_checkpoint").read_text() == expected[-1]
    else:
        assert not (out / "last_checkpoint").exists()


# 2 processes: DDP over gloo on the CPU. bf16 with 2 processes: see the process-count test below.
CASES = [
    pytest.param(point, num_gpus, "fp32", id=f"{point}-{num_gpus}proc-fp32")
    for num_gpus in (1, 2)
    for point in KILL_POINTS
]
CASES.append(pytest.param("between-checkpoints", 1, "bf16", id="between-checkpoints-1proc-bf16"))


@pytest.mark.parametrize("point, num_gpus, precision", CASES)
def test_sigkill_then_resume_is_bit_identical(
    tmp_path, datasets, references, point, num_gpus, precision
):
    kill_at, on_disk, resume_at = KILL_POINTS[point]
    ref = references(num_gpus, precision)
    out = tmp_path / "run"
    extra = runs.PRECISION[precision]
    runs.run_killed(out, datasets, kill_at, num_gpus=num_gpus, extra=extra)

    _assert_checkpoints_whole(out, ref, on_disk)
    temporaries = list(out.glob(".*.tmp"))
    if point == "during-checkpoint-write":
        # The half-written file is the temporary; the checkpoint name never appeared.
        assert len(temporaries) == 1 and temporaries[0].name.startswith(".model_0000003.pth.")
        assert 0 < temporaries[0].stat().st_size < (ref / "model_0000003.pth").stat().st_size
    else:
        assert temporaries == []

    log = runs.run(out, datasets, resume=True, num_gpus=num_gpus, extra=extra)
    assert f"Starting training from iteration {resume_at}" in log
    if resume_at:
        assert f"data stream resumes at batch {resume_at}" in log
    _assert_same_state(
        runs.load(out / "model_final.pth"), runs.load(ref / "model_final.pth"), "resumed final"
    )
    for name in ("model_0000001.pth", "model_0000003.pth", "model_0000005.pth"):
        _assert_same_state(runs.load(out / name), runs.load(ref / name), f"resumed run's {name}")


def test_sigterm_saves_current_iteration_exits_zero_and_resumes_exactly(
    tmp_path, datasets, references
):
    ref = references(1)
    out = tmp_path / "run"
    # SIGTERM arrives after iteration 1; the flag is acted on after the next iteration.
    proc = runs.start(out, datasets, kill_at="term:1")
    assert proc.wait(300) == 0, (tmp_path / "run.log").read_text()[-3000:]
    log = (tmp_path / "run.log").read_text()
    assert re.search(r"SIGTERM received: saved .*model_0000002\.pth after iteration 2", log), log[
        -3000:
    ]
    assert (out / "last_checkpoint").read_text() == "model_0000002.pth"
    assert runs.load(out / "model_0000002.pth")["iteration"] == 2
    assert not (out / "model_final.pth").exists()
    assert not list(out.glob(".*.tmp")), "a temporary checkpoint file was left behind"

    log = runs.run(out, datasets, resume=True)
    assert "Starting training from iteration 3" in log
    _assert_same_state(
        runs.load(out / "model_final.pth"), runs.load(ref / "model_final.pth"), "resumed final"
    )


def _first_batch_ids(log: str, rank: int, world_size: int) -> list:
    """Image ids of the first batch that the last run logging to ``log`` read on ``rank``."""
    found = re.findall(
        rf"data share of rank {rank} of {world_size}: first batch holds image ids (\[.*\])", log
    )
    assert found, f"no first-batch line of rank {rank} of {world_size}"
    return json.loads(found[-1])


def test_two_process_bf16_run_resumes_exactly_and_continues_its_stream_on_one_process(
    tmp_path, datasets, references
):
    """Killed with 2 processes after iteration 2 (checkpoint of iteration 1 on disk), in bf16.
    Resumed with 2: bit-identical to the uninterrupted 2-process run. Resumed with 1: the same
    images, both processes' share of each iteration in one batch (the data stream of the
    interrupted run)."""
    extra = runs.PRECISION["bf16"]
    ref = references(2, "bf16")
    killed = tmp_path / "killed"
    runs.run_killed(killed, datasets, "step:2", num_gpus=2, extra=extra)
    _assert_checkpoints_whole(killed, ref, ["model_0000001.pth"])
    shutil.copytree(killed, tmp_path / "two")
    shutil.copytree(killed, tmp_path / "one")

    log = runs.run(tmp_path / "two", datasets, resume=True, num_gpus=2, extra=extra)
    assert "Starting training from iteration 2" in log
    _assert_same_state(
        runs.load(tmp_path / "two" / "model_final.pth"),
        runs.load(ref / "model_final.pth"),
        "bf16 run resumed with 2 processes",
    )
    two = _first_batch_ids(log, 0, 2) + _first_batch_ids(
        (tmp_path / "two" / "log.txt.rank1").read_text(), 1, 2
    )

    log = runs.run(tmp_path / "one", datasets, resume=True, num_gpus=1, extra=extra)
    assert (
        "resuming a run of 2 process(es) with 1: each iteration reads the images and "
        "augmentations the 2 process(es) would have read, 2 per process" in log
    )
    assert "Starting training from iteration 2" in log and "data stream resumes at batch 2" in log
    assert _first_batch_ids(log, 0, 1) == two and len(two) == 2
    final = runs.load(tmp_path / "one" / "model_final.pth")
    assert final["iteration"] == runs.MAX_ITER - 1
    assert final["trainer"]["hooks"]["DataStreamState"] == {
        "seed": 7,
        "world_size": 2,
        "batches": runs.MAX_ITER,
    }
    assert all(torch.isfinite(v).all() for v in final["model"].values() if v.is_floating_point())


def test_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, datasets, references):
    """The disk after a kill at iteration 4 (checkpoints of iterations 1 and 3), with the newer file
    truncated, then both. The reference stands for a run resumed from iteration 1: resuming there
    is bit-identical to not stopping (the kill tests above)."""
    ref = references(1)
    out = tmp_path / "run"
    out.mkdir()
    half = (ref / "model_0000003.pth").read_bytes()
    (out / "model_0000003.pth").write_bytes(half[: len(half) // 2])
    (out / "model_0000001.pth").write_bytes(b"")
    (out / "last_checkpoint").write_text("model_0000003.pth")

    # No whole checkpoint: one line, exit status 2, nothing trained or written.
    runs.run_user_error(
        out,
        datasets,
        rf"train_net: error: no readable checkpoint to resume from in {re.escape(str(out))} "
        r"\(model_0000003\.pth: truncated or corrupt \(File is not a zip file\); "
        r"model_0000001\.pth: it is empty \(0 bytes\)\); move the damaged files away to train "
        r"from the start",
        resume=True,
    )
    assert sorted(p.name for p in runs.checkpoints(out)) == [
        "model_0000001.pth",
        "model_0000003.pth",
    ]

    shutil.copy(ref / "model_0000001.pth", out / "model_0000001.pth")
    log = runs.run(out, datasets, resume=True)
    assert (
        "cannot resume from model_0000003.pth (model_0000003.pth: truncated or corrupt "
        "(File is not a zip file)): resuming from model_0000001.pth, the newest readable "
        "checkpoint before it"
    ) in log
    assert "Starting training from iteration 2" in log
    for name in ("model_0000003.pth", "model_0000005.pth", "model_final.pth"):
        _assert_same_state(
            runs.load(out / name),
            runs.load(ref / name),
            f"run resumed from model_0000001.pth: {name}",
        )


def test_nan_loss_stops_with_one_line_and_keeps_the_last_good_checkpoint(tmp_path, datasets):
    """A NaN written into a backbone weight before iteration 3 (``kill_point.py nan:3``)."""
    out = tmp_path / "run"
    runs.run_user_error(
        out,
        datasets,
        r"train_net: error: loss is nan at iteration 3 \(loss_cls nan, loss_box_reg nan\): the "
        r"weights were not updated; last good checkpoint: "
        rf"{re.escape(str(out))}/model_0000001\.pth\. "
        r"Lower SOLVER\.BASE_LR or check the training data",
        kill_at="nan:3",
    )
    assert [p.name for p in runs.checkpoints(out)] == ["model_0000001.pth"]
    assert (out / "last_checkpoint").read_text() == "model_0000001.pth"
    assert not list(out.glob(".*.tmp"))
    state = runs.load(out / "model_0000001.pth")
    assert state["iteration"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
