"""A stand-in for SLURM's ``srun`` (no scheduler needed): ``srun [--opts] CMD...`` starts
``SLURM_NTASKS`` copies of CMD on this machine with the variables srun gives each task
(``SLURM_PROCID``, ``SLURM_LOCALID``, ``SLURM_NODEID``), waits for all, and exits with the
first non-zero status. Tests put it on ``PATH`` as ``srun`` to run ``tools/slurm.sbatch``."""

import os
import subprocess
import sys


def main(argv):
    while argv and argv[0].startswith("--"):
        argv = argv[1:]
    tasks = int(os.environ["SLURM_NTASKS"])
    per_node = int(os.environ.get("SLURM_NTASKS_PER_NODE", tasks))
    procs = []
    for rank in range(tasks):
        env = dict(
            os.environ,
            SLURM_PROCID=str(rank),
            SLURM_LOCALID=str(rank % per_node),
            SLURM_NODEID=str(rank // per_node),
            SLURM_STEP_ID="0",
        )
        procs.append(subprocess.Popen(argv, env=env))
    codes = [p.wait() for p in procs]
    return next((c for c in codes if c), 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
