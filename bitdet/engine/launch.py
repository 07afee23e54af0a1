"""One ``torch.distributed`` group however a job is started.

Three launchers are recognised, in this order:

* ``torchrun`` (or any launcher that sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
  ``MASTER_ADDR``, ``MASTER_PORT``): the group forms through ``env://``.
* SLURM with one task per GPU (``srun`` sets ``SLURM_STEP_ID``, ``SLURM_PROCID``,
  ``SLURM_NTASKS``, ``SLURM_LOCALID``, ``SLURM_NODEID``, ``SLURM_JOB_NODELIST``; the batch
  script itself, without ``SLURM_STEP_ID``, is a plain process): the first host of the node
  list is the rendezvous (``MASTER_ADDR`` / ``MASTER_PORT`` override it; the default port is
  derived from ``SLURM_JOB_ID`` so that every task agrees on it).
* ``--num-gpus N --num-machines M`` (Detectron2's ``launch``: N processes spawned per machine).

Backend: NCCL when CUDA is available, else gloo (CPU). ``BITDET_DIST_TIMEOUT`` (seconds,
default 1800) bounds the rendezvous and every collective. Where the environment says the
world is larger than one and the group cannot form, the job stops with an error naming the
launcher, the variables and the rendezvous address: never N independent copies.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Callable, Mapping, Optional

import torch
import torch.distributed as dist
from detectron2.engine import launch as d2_launch
from detectron2.utils import comm

__all__ = ["LaunchInfo", "detect_launcher", "first_slurm_host", "launch_main", "launch_summary"]

logger = logging.getLogger(__name__)

_TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
_SLURM_VARS = ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID")
_SUMMARY: Optional[str] = None  # this process's launcher line, logged first by the tools


@dataclass(frozen=True)
class LaunchInfo:
    """Where this process sits in a job that an external launcher started.

    Attributes:
        launcher: ``"torchrun"`` or ``"slurm"``.
        rank, world_size: global rank and process count.
        local_rank, local_world_size: the same on this machine.
        master_addr, master_port: the rendezvous (``env://``).
    """

    launcher: str
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    master_addr: str
    master_port: int


def _int_var(env: Mapping[str, str], name: str, launcher: str) -> int:
    value = env.get(name)
    if value is None:
        raise SystemExit(
            f"{launcher} launch: the environment variable {name} is not set "
            f"(a {launcher} job sets "
            f"{', '.join(_TORCHRUN_VARS if launcher == 'torchrun' else _SLURM_VARS)})"
        )
    try:
        return int(value)
    except ValueError:
        raise SystemExit(f"{launcher} launch: {name}={value!r} is not an integer") from None


def first_slurm_host(nodelist: str) -> str:
    """The first host of a SLURM node list: ``"gpu[003-005,9],cpu1"`` -> ``"gpu003"``."""
    host, depth, skip = [], 0, False
    for ch in nodelist.strip():
        if ch == "[":
            depth, skip = depth + 1, False
        elif ch == "]":
            depth, skip = depth - 1, False
        elif depth == 0 and ch == ",":
            break
        elif depth > 0 and ch in ",-":
            skip = True  # only the start of the first range of a bracket counts
        elif not skip:
            host.append(ch)
    if not host or depth:
        raise SystemExit(f"SLURM launch: cannot read a host from SLURM_JOB_NODELIST={nodelist!r}")
    return "".join(host)


def _slurm_tasks_per_node(env: Mapping[str, str], world: int) -> int:
    # SLURM_NTASKS_PER_NODE exists with --ntasks-per-node; SLURM_TASKS_PER_NODE always:
    # "8(x2)" or "8,8" for two nodes of 8, "2,1" for an uneven split.
    if env.get("SLURM_NTASKS_PER_NODE"):
        return int(env["SLURM_NTASKS_PER_NODE"])
    spec = env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE")
    if spec:
        counts = {int(m) for m in re.findall(r"(\d+)(?:\(x\d+\))?", spec)}
        if len(counts) != 1:
            raise SystemExit(
                f"SLURM launch: tasks per node differ ({spec!r}); start the same number of tasks "
                "(one per GPU) on every node, e.g. --ntasks-per-node=8"
            )
        return counts.pop()
    nodes = int(
        env.get("SLURM_STEP_NUM_NODES")
        or env.get("SLURM_NNODES")
        or env.get("SLURM_JOB_NUM_NODES")
        or 1
    )
    return world // nodes


def detect_launcher(environ: Optional[Mapping[str, str]] = None) -> Optional[LaunchInfo]:
    """The external launcher of this process, or None when none started it.

    Args:
        environ: the environment to read (default ``os.environ``).

    Returns:
        A :class:`LaunchInfo` for torchrun (``WORLD_SIZE`` set) or for an srun task of more than
        one (``SLURM_STEP_ID`` set, ``SLURM_NTASKS`` > 1); None otherwise (a plain process, or a
        one-task SLURM job that spawns its processes with ``--num-gpus``).

    Raises:
        SystemExit: a variable that the launcher sets is missing or inconsistent.
    """
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" in env or "RANK" in env or "TORCHELASTIC_RUN_ID" in env:
        world = _int_var(env, "WORLD_SIZE", "torchrun")
        rank = _int_var(env, "RANK", "torchrun")
        local_rank = _int_var(env, "LOCAL_RANK", "torchrun")
        local_world = int(env.get("LOCAL_WORLD_SIZE", world))
        addr = env.get("MASTER_ADDR", "") if world > 1 else env.get("MASTER_ADDR", "127.0.0.1")
        port = (
            _int_var(env, "MASTER_PORT", "torchrun")
            if world > 1
            else int(env.get("MASTER_PORT", 0))
        )
        if world > 1 and not addr:
            raise SystemExit("torchrun launch: the environment variable MASTER_ADDR is not set")
        info = LaunchInfo("torchrun", rank, world, local_rank, local_world, addr, port)
    elif "SLURM_NTASKS" in env and int(env["SLURM_NTASKS"]) > 1 and "SLURM_STEP_ID" not in env:
        # The batch script or an salloc shell of a multi-task allocation, not an srun task.
        logger.warning(
            "SLURM_NTASKS=%s but this process is no srun task (SLURM_STEP_ID unset): running as a "
            "plain process; start one task per GPU through srun (tools/slurm.sbatch)",
            env["SLURM_NTASKS"],
        )
        return None
    elif "SLURM_NTASKS" in env and int(env["SLURM_NTASKS"]) > 1:
        world = _int_var(env, "SLURM_NTASKS", "SLURM")
        rank = _int_var(env, "SLURM_PROCID", "SLURM")
        local_rank = _int_var(env, "SLURM_LOCALID", "SLURM")
        local_world = _slurm_tasks_per_node(env, world)
        nodelist = (
            env.get("SLURM_STEP_NODELIST")
            or env.get("SLURM_JOB_NODELIST")
            or env.get("SLURM_NODELIST")
        )
        if not env.get("MASTER_ADDR") and not nodelist:
            raise SystemExit("SLURM launch: neither MASTER_ADDR nor SLURM_JOB_NODELIST is set")
        addr = env.get("MASTER_ADDR") or first_slurm_host(nodelist or "")
        if env.get("MASTER_PORT"):
            port = int(env["MASTER_PORT"])
        else:  # the same port on every task of the job; a different one for each job
            port = 20000 + int(_int_var(env, "SLURM_JOB_ID", "SLURM")) % 20000
        if "SLURM_NODEID" in env and rank // max(local_world, 1) != int(env["SLURM_NODEID"]):
            raise SystemExit(
                f"SLURM launch: task {rank} runs on node {env['SLURM_NODEID']} but a block "
                f"layout of {local_world} tasks per node puts it on node {rank // local_world}; "
                "use srun --distribution=block"
            )
        info = LaunchInfo("slurm", rank, world, local_rank, local_world, addr, port)
    else:
        return None
    if not (
        0 <= info.rank < info.world_size
        and 0 <= info.local_rank < info.local_world_size
        and info.local_world_size <= info.world_size
        and info.world_size % info.local_world_size == 0
    ):
        raise SystemExit(
            f"{info.launcher} launch: inconsistent rank {info.rank} / world size {info.world_size} "
            f"/ local rank {info.local_rank} / processes per machine {info.local_world_size}"
        )
    return info


def _timeout() -> timedelta:
    return timedelta(seconds=float(os.environ.get("BITDET_DIST_TIMEOUT", 1800)))


def _backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


def _check_gpus(asked: int, what: str) -> None:
    """Fail at once when more GPUs are asked for than this machine shows."""
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if visible and asked > visible:
        shown = os.environ.get("CUDA_VISIBLE_DEVICES")
        raise SystemExit(
            f"{what} asks for {asked} GPUs per machine but {visible} are visible"
            + (f" (CUDA_VISIBLE_DEVICES={shown})" if shown is not None else "")
        )


def _set_summary(launcher: str, detail: str = "") -> None:
    global _SUMMARY
    backend = dist.get_backend() if dist.is_available() and dist.is_initialized() else "none"
    _SUMMARY = (
        f"launcher: {launcher}{detail}; rank {comm.get_rank()} of world size "
        f"{comm.get_world_size()} (local rank {comm.get_local_rank()} of "
        f"{comm.get_local_size()}), backend {backend}"
    )


def launch_summary() -> str:
    """The launcher line of this process (launcher, rank, world size, backend)."""
    return _SUMMARY or (
        f"launcher: none; rank {comm.get_rank()} of world size {comm.get_world_size()}, "
        f"backend {dist.get_backend() if dist.is_initialized() else 'none'}"
    )


def _init_from_env(info: LaunchInfo) -> None:
    """Join the job's process group through ``env://``; a failure ends the job with its cause."""
    _check_gpus(
        info.local_world_size, f"{info.launcher} with {info.local_world_size} processes per machine"
    )
    if torch.cuda.is_available():
        torch.cuda.set_device(info.local_rank)
    os.environ.update(
        MASTER_ADDR=info.master_addr,
        MASTER_PORT=str(info.master_port),
        RANK=str(info.rank),
        WORLD_SIZE=str(info.world_size),
        LOCAL_RANK=str(info.local_rank),
    )
    timeout = _timeout()
    where = f"{info.master_addr}:{info.master_port}"
    try:
        dist.init_process_group(
            backend=_backend(),
            init_method="env://",
            rank=info.rank,
            world_size=info.world_size,
            timeout=timeout,
        )
        comm.create_local_process_group(info.local_world_size)
        comm.synchronize()
    except (RuntimeError, ValueError, OSError) as e:  # DistNetworkError, DistStoreError, ...
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SystemExit(
            f"{info.launcher} launch: rank {info.rank} could not join the process group of "
            f"{info.world_size} processes at {where} within {timeout.total_seconds():.0f} s "
            f"({type(e).__name__}: {first}). Check that every process was started (SLURM: "
            f"through srun, one task per GPU) and that {where} is reachable"
        ) from None


def _run(main: Callable, args) -> object:
    from bitdet.engine.output_lock import release_output_locks

    try:
        return main(args)
    finally:
        release_output_locks()


def _spawned(main: Callable, args, detail: str) -> object:
    """Entry point of the processes that ``--num-gpus`` spawns (the group is formed)."""
    _set_summary("--num-gpus/--num-machines", detail)
    return _run(main, args)


def launch_main(main: Callable, args) -> object:
    """Run ``main(args)`` in this job's process group, whichever launcher started it.

    Args:
        main: the tool's ``main(args)``; it runs once per process.
        args: Detectron2's parsed arguments (``num_gpus``, ``num_machines``, ``machine_rank``,
            ``dist_url``).

    Raises:
        SystemExit: contradictory launch flags, more GPUs asked for than visible, or a process
            group that cannot form.
    """
    info = detect_launcher()
    if info is not None:
        if args.num_gpus > 1 or args.num_machines > 1:
            raise SystemExit(
                f"{info.launcher} started this process (rank {info.rank} of {info.world_size}): "
                f"each process is one GPU, so pass --num-gpus 1 --num-machines 1 (got --num-gpus "
                f"{args.num_gpus} --num-machines {args.num_machines})"
            )
        if info.world_size > 1:
            _init_from_env(info)
        _set_summary(
            info.launcher,
            f" (env://{info.master_addr}:{info.master_port})" if info.world_size > 1 else "",
        )
        try:
            return _run(main, args)
        finally:
            if dist.is_initialized():
                dist.destroy_process_group()
    _check_gpus(args.num_gpus, f"--num-gpus {args.num_gpus}")
    if args.num_gpus * args.num_machines == 1:
        _set_summary("single process")
        return _run(main, args)
    if not torch.cuda.is_available():
        logging.getLogger("bitdet").info(
            "no CUDA device: --num-gpus %d starts %d CPU processes (gloo)",
            args.num_gpus,
            args.num_gpus,
        )
    detail = f" {args.num_gpus} x {args.num_machines} ({args.dist_url})"
    d2_launch(
        _spawned,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(main, args, detail),
        timeout=_timeout(),
    )
    return None
