"""Launcher detection (torchrun, SLURM), GPU checks and the OUTPUT_DIR lock, without processes."""

import json
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from bitdet.engine import launch
from bitdet.engine.launch import LaunchInfo, detect_launcher, first_slurm_host
from bitdet.engine.output_lock import LOCK_NAME, OutputDirError, OutputDirLock, OutputDirLocked

TORCHRUN = dict(
    RANK="3",
    WORLD_SIZE="4",
    LOCAL_RANK="1",
    LOCAL_WORLD_SIZE="2",
    MASTER_ADDR="node7",
    MASTER_PORT="29500",
    TORCHELASTIC_RUN_ID="x",
)
SLURM = dict(
    SLURM_STEP_ID="0",
    SLURM_PROCID="5",
    SLURM_NTASKS="8",
    SLURM_LOCALID="1",
    SLURM_NODEID="1",
    SLURM_JOB_ID="123456",
    SLURM_JOB_NODELIST="gpu[007-008]",
    SLURM_TASKS_PER_NODE="4(x2)",
    SLURM_NNODES="2",
)


def test_torchrun_environment():
    assert detect_launcher(TORCHRUN) == LaunchInfo("torchrun", 3, 4, 1, 2, "node7", 29500)


def test_slurm_environment_one_task_per_gpu():
    info = detect_launcher(SLURM)
    assert info == LaunchInfo("slurm", 5, 8, 1, 4, "gpu007", 20000 + 123456 % 20000)
    # MASTER_ADDR / MASTER_PORT override the node list and the derived port
    info = detect_launcher(dict(SLURM, MASTER_ADDR="head", MASTER_PORT="1234"))
    assert (info.master_addr, info.master_port) == ("head", 1234)


def test_torchrun_wins_over_slurm_and_one_slurm_task_is_no_launcher():
    # torchrun inside an srun task of a one-task-per-node job
    assert detect_launcher({**SLURM, **TORCHRUN}).launcher == "torchrun"
    # a one-task allocation: the tool spawns its processes itself (--num-gpus)
    assert (
        detect_launcher(dict(SLURM, SLURM_NTASKS="1", SLURM_PROCID="0", SLURM_LOCALID="0")) is None
    )
    assert detect_launcher({"PATH": "/bin"}) is None
    # the batch script of a multi-task job (no srun step): a plain process, with a warning
    batch = {k: v for k, v in SLURM.items() if k != "SLURM_STEP_ID"}
    assert (
        detect_launcher(dict(batch, SLURM_PROCID="0", SLURM_LOCALID="0", SLURM_NODEID="0")) is None
    )


@pytest.mark.parametrize(
    "nodelist, first",
    [
        ("gpu[007-008]", "gpu007"),
        ("node1,node2", "node1"),
        ("a[3,5-9],b1", "a3"),
        ("rack[2-3]-n[01-04]", "rack2-n01"),
        ("localhost", "localhost"),
    ],
)
def test_first_slurm_host(nodelist, first):
    assert first_slurm_host(nodelist) == first


@pytest.mark.parametrize(
    "env, message",
    [
        ({k: v for k, v in TORCHRUN.items() if k != "MASTER_PORT"}, "MASTER_PORT is not set"),
        (dict(TORCHRUN, RANK="4"), "inconsistent rank 4 / world size 4"),
        (dict(TORCHRUN, LOCAL_RANK="x"), "LOCAL_RANK='x' is not an integer"),
        (dict(SLURM, SLURM_TASKS_PER_NODE="5,3"), "tasks per node differ"),
        (dict(SLURM, SLURM_NODEID="0"), "distribution=block"),
        ({k: v for k, v in SLURM.items() if k != "SLURM_JOB_NODELIST"}, "SLURM_JOB_NODELIST"),
    ],
)
def test_bad_launch_environment_is_one_clear_error(env, message):
    with pytest.raises(SystemExit, match=message):
        detect_launcher(env)


def _args(num_gpus=1, num_machines=1):
    return SimpleNamespace(
        num_gpus=num_gpus, num_machines=num_machines, machine_rank=0, dist_url="auto"
    )


def test_more_gpus_than_visible_fails_at_once(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    ran = []
    with pytest.raises(
        SystemExit,
        match=r"--num-gpus 8 asks for 8 GPUs per machine but 2 are visible "
        r"\(CUDA_VISIBLE_DEVICES=0,1\)",
    ):
        launch.launch_main(ran.append, _args(num_gpus=8))
    assert ran == []


def test_num_gpus_under_an_external_launcher_is_refused(monkeypatch):
    for key, value in TORCHRUN.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(SystemExit, match="pass --num-gpus 1"):
        launch.launch_main(print, _args(num_gpus=8))


def test_single_process_runs_in_this_process_and_says_so():
    seen = []
    launch.launch_main(lambda a: seen.append(launch.launch_summary()), _args())
    assert seen == [
        "launcher: single process; rank 0 of world size 1 (local rank 0 of 1), backend none"
    ]


# ---------------------------------------------------------------- OUTPUT_DIR lock
def _holder(tmp_path, **owner):
    (tmp_path / LOCK_NAME).write_text(json.dumps(owner))


def test_live_holder_stops_a_second_run_naming_it(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _holder(
            tmp_path,
            host=socket.gethostname(),
            pid=sleeper.pid,
            started="today",
            command="pretrain.py A",
        )
        with pytest.raises(
            OutputDirLocked,
            match=rf"in use by another run \(host {socket.gethostname()}, "
            rf"pid {sleeper.pid}.*pretrain.py A",
        ):
            OutputDirLock(tmp_path).acquire()
    finally:
        sleeper.kill()
        sleeper.wait()
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == sleeper.pid  # untouched


def test_lock_of_a_dead_process_is_taken_over_with_a_warning(tmp_path, caplog):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _holder(tmp_path, host=socket.gethostname(), pid=dead.pid)
    with caplog.at_level(logging.WARNING, logger="bitdet.engine.output_lock"):
        lock = OutputDirLock(tmp_path).acquire()
    assert f"pid {dead.pid}: process {dead.pid} on" in caplog.text
    held = json.loads((tmp_path / LOCK_NAME).read_text())
    assert (held["host"], held["pid"]) == (socket.gethostname(), os.getpid())
    lock.release()
    assert list(tmp_path.iterdir()) == []


def test_a_lock_being_written_is_waited_for_so_the_error_names_its_holder(tmp_path):
    """Two runs at the same instant: the loser may find the winner's lock still empty."""
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    (tmp_path / LOCK_NAME).write_text("")
    writer = threading.Timer(
        0.3, _holder, (tmp_path,), dict(host=socket.gethostname(), pid=sleeper.pid)
    )
    writer.start()
    try:
        with pytest.raises(OutputDirLocked, match=rf"pid {sleeper.pid}"):
            OutputDirLock(tmp_path).acquire()
    finally:
        writer.join()
        sleeper.kill()
        sleeper.wait()


def test_an_output_dir_under_a_file_is_a_user_error(tmp_path):
    afile = tmp_path / "a_file"
    afile.write_text("x")
    with pytest.raises(
        OutputDirError, match=rf"OUTPUT_DIR {afile / 'run'} is under the file {afile}, not a folder"
    ):
        OutputDirLock(afile / "run").acquire()


def test_remote_holder_is_stale_only_without_refresh(tmp_path, monkeypatch):
    _holder(tmp_path, host="elsewhere", pid=1)
    with pytest.raises(OutputDirLocked, match="host elsewhere, pid 1"):
        OutputDirLock(tmp_path, stale_after_s=600).acquire()
    old = time.time() - 700
    os.utime(tmp_path / LOCK_NAME, (old, old))
    OutputDirLock(tmp_path, stale_after_s=600).acquire().release()
    # a requeued SLURM job takes over the lock of its own earlier run at once
    _holder(tmp_path, host="elsewhere", pid=1, slurm_job_id="77", slurm_restart_count=0)
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    OutputDirLock(tmp_path).acquire().release()


def test_cluster_doc_shows_the_script_the_tests_run():
    root = Path(__file__).resolve().parents[2]
    section = (root / "docs" / "cluster.md").read_text()
    block = re.search(r"`tools/slurm.sbatch`, the script.*?```bash\n(.*?)```", section, re.S).group(
        1
    )
    script = [
        line
        for line in (root / "tools" / "slurm.sbatch").read_text().splitlines()
        if line and (line.startswith("#SBATCH") or not line.startswith("#"))
    ]
    assert block.strip().splitlines() == script
    # the launch forms the cluster tests use
    assert "torchrun --standalone --nproc_per_node 8 -m bitdet.tools.pretrain" in section
    assert "sbatch --nodes 4 tools/slurm.sbatch pretrain" in section
