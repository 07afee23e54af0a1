"""How long the demo should take, said before its first stage: each stage's optimizer steps
times a per-step CPU cost, plus start-up, scheduled as :func:`bitdet.demo.progress.run_tasks`
runs the stages (up to ``jobs`` at a time, each after the stages it needs).

The per-step costs are those of the full demo's reference runs in docs/demo.md (an otherwise idle
2-core x86_64 machine, one thread per stage, two stages at a time), start-up and evaluation
included; each stage's ``cpu_s`` in ``OUTPUT/timings.json`` is the figure to compare them with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Sequence

from bitdet.demo.progress import Task

__all__ = [
    "CPU_BUDGET_S",
    "CPU_HEADROOM",
    "STAGE_COSTS",
    "Estimate",
    "StageCost",
    "estimate",
    "stage_cpu_s",
]

# The full demo's budget: CPU seconds of all its stages together on the reference machine.
CPU_BUDGET_S = 30 * 60.0
# The share of the budget the full demo's estimate may use: the rest absorbs run-to-run spread.
CPU_HEADROOM = 0.9


@dataclass(frozen=True)
class StageCost:
    """CPU seconds of one kind of stage: ``start_s + runs * run_s + steps * step_s``."""

    step_s: float
    run_s: float = 0.0
    start_s: float = 0.0


# Per stage kind (the task name's first word): pretraining, detection and transfer per
# optimizer step; a transfer sweep also pays per run (data draw, model, evaluation, plots);
# every stage is one process that imports torch, Detectron2 and bitdet first.
STAGE_COSTS: Dict[str, StageCost] = {
    "pretrain": StageCost(step_s=0.26, start_s=5.0),
    "detection": StageCost(step_s=0.29, start_s=10.0),
    "transfer": StageCost(step_s=0.06, run_s=1.5, start_s=10.0),
    # Drawing detections: model start-up and a few images, no training.
    "visualize": StageCost(step_s=0.0, start_s=6.0),
    "ground": StageCost(step_s=0.0, start_s=6.0),
}


@dataclass(frozen=True)
class Estimate:
    """Expected CPU seconds per stage and wall seconds of the whole schedule."""

    cpu_s: Dict[str, float]
    wall_s: float
    jobs: int
    cores: int

    def describe(self) -> str:
        """One line: expected minutes, and what the figure assumes."""
        cpu = sum(self.cpu_s.values())
        kinds: Dict[str, float] = {}
        for name, seconds in self.cpu_s.items():
            kinds[_kind(name)] = kinds.get(_kind(name), 0.0) + seconds
        parts = ", ".join(f"{k} {s / 60:.1f}" for k, s in kinds.items())
        per_step = ", ".join(
            f"{k} {c.step_s:g} s" for k, c in STAGE_COSTS.items() if c.step_s and k in kinds
        )
        return (
            f"expected: about {self.wall_s / 60:.0f} min wall, {cpu / 60:.0f} CPU-min ({parts}), "
            f"{self.jobs} stage(s) at a time on {self.cores} core(s); assumes the CPU seconds "
            f"per step of the docs/demo.md reference machine ({per_step}) and otherwise idle "
            "cores: a slower or busy machine takes longer (each stage's live line shows its own "
            "ETA)"
        )


def _kind(name: str) -> str:
    kind = name.split("_", 1)[0]
    if kind not in STAGE_COSTS:
        raise KeyError(f"stage {name!r}: no cost model for stages of kind {kind!r}")
    return kind


def stage_cpu_s(task: Task) -> float:
    """Expected CPU seconds of one stage from its step and run counts."""
    cost = STAGE_COSTS[_kind(task.name)]
    runs = task.progress.runs if task.progress.iters_per_run > 0 else 0
    return cost.start_s + runs * (cost.run_s + task.progress.iters_per_run * cost.step_s)


def estimate(tasks: Sequence[Task], jobs: int, cores: int) -> Estimate:
    """Expected time of ``tasks`` run as :func:`~bitdet.demo.progress.run_tasks` runs them: in
    order, at most ``jobs`` at once, each after its ``needs``; ``jobs`` above ``cores`` share them.
    Stages whose output exists (reused) cost nothing."""
    pending = [t for t in tasks if not t.done.exists()]
    cpu = {t.name: stage_cpu_s(t) for t in pending}
    slowdown = max(1.0, jobs / max(1, cores))
    names = {t.name for t in pending}
    finish: Dict[str, float] = {}
    running: Dict[str, float] = {}  # name -> finish time
    now = 0.0
    while pending or running:
        ready = [t for t in pending if all(n not in names or n in finish for n in t.needs)]
        for task in ready[: max(0, jobs - len(running))]:
            pending.remove(task)
            running[task.name] = now + cpu[task.name] * slowdown
        if not running:
            raise ValueError(f"stages {[t.name for t in pending]} wait for stages that never run")
        name = min(running, key=running.get)
        now = running.pop(name)
        finish[name] = now
    return Estimate(cpu, now, jobs, cores)
