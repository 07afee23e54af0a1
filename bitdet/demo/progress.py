"""Running the demo's stages as subprocesses: full logs to files, one live progress line.

Each stage is a documented tool run as ``python -m bitdet.tools.<name>``. Its output goes to
``logs/<stage>.log``; a reader thread also parses it (Detectron2's console lines ``eta: ...
iter: N ... loss: X``, the fine-tuning sweep's per-run lines, evaluation results) into a
:class:`Progress`, and :func:`run_tasks` prints every running stage's progress on one console
line. Up to ``jobs`` stages run at once; each is told how many threads to use.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, TextIO

__all__ = ["Progress", "StageFailed", "Task", "run_tasks"]

_ITER = re.compile(r"eta: (\S+)\s+iter: (\d+)")
_LOSS = re.compile(r"\b(?:total_loss|loss): ([0-9.eE+-]+)")
_TOP1 = re.compile(r"(?:evaluation after \d+ steps: .*\btop1=|: top-1 )([0-9.]+)")
_NEW_RUN = re.compile(r": \S+ \(([^)]*)\): \d+ training / \d+ test images")
_AP_HEADER = re.compile(r"copypaste: AP,")
_AP_VALUES = re.compile(r"copypaste: ([0-9.nan]+),")


class StageFailed(RuntimeError):
    """A stage exited with a non-zero status; the message names it and ends with its log's tail."""


@dataclass
class Progress:
    """What a stage's output says so far.

    Attributes:
        iters_per_run: optimizer steps of one run (from the stage's config).
        runs: runs the stage makes (a fine-tuning sweep: shots x seeds; else 1).
    """

    iters_per_run: int
    runs: int = 1
    run: int = 0
    run_label: str = ""
    iteration: int = 0
    eta: str = ""
    loss: Optional[float] = None
    metric: str = ""
    _ap_next: bool = False

    def feed(self, line: str) -> None:
        """Update from one line of the stage's output."""
        m = _NEW_RUN.search(line)
        if m:
            self.run, self.run_label, self.iteration, self.eta = self.run + 1, m.group(1), 0, ""
        m = _ITER.search(line)
        if m:
            self.eta, self.iteration = m.group(1), int(m.group(2)) + 1
        m = _LOSS.search(line)
        if m:
            try:
                self.loss = float(m.group(1))
            except ValueError:
                pass
        m = _TOP1.search(line)
        if m:
            self.metric = f"top-1 {float(m.group(1)):.1f} %"
        if self._ap_next:
            m = _AP_VALUES.search(line)
            if m:
                self.metric, self._ap_next = f"AP {m.group(1)}", False
        elif _AP_HEADER.search(line):
            self._ap_next = True

    def line(self) -> str:
        """A short status, e.g.
        ``run 2/12 (1 per class, seed 1) iter 40/100 eta 0:00:12 loss 1.21 top-1 53.0 %``."""
        if self.iters_per_run <= 0:
            return "running"
        parts = []
        if self.runs > 1:
            parts.append(
                f"run {max(self.run, 1)}/{self.runs}"
                + (f" ({self.run_label})" if self.run_label else "")
            )
        parts.append(f"iter {self.iteration}/{self.iters_per_run}")
        if self.eta:
            parts.append(f"eta {self.eta}")
        if self.loss is not None:
            parts.append(f"loss {self.loss:.3g}")
        if self.metric:
            parts.append(self.metric)
        return " ".join(parts)


@dataclass
class Task:
    """One stage: a command, the file whose existence marks it finished, its progress model.

    Attributes:
        name: stage name (log file ``<name>.log``).
        cmd: the command line.
        done: the stage's final output; when it exists the stage is reused.
        progress: the parser of its output.
        needs: names of stages that must finish first.
    """

    name: str
    cmd: Sequence[str]
    done: Path
    progress: Progress
    needs: Sequence[str] = ()
    wall_s: float = 0.0
    cpu_s: float = 0.0
    _proc: Optional[subprocess.Popen] = field(default=None, repr=False)
    _reader: Optional[threading.Thread] = field(default=None, repr=False)
    _log: Optional[TextIO] = field(default=None, repr=False)
    _start: float = 0.0


def _pump(stream: TextIO, log: TextIO, progress: Progress) -> None:
    for line in stream:
        log.write(line)
        log.flush()
        progress.feed(line)


class _Console:
    """One status line: rewritten in place on a terminal, printed every ``period`` s otherwise."""

    def __init__(self, out: TextIO, period: float = 30.0) -> None:
        self.out, self.tty, self.period = out, out.isatty(), period
        self._last, self._width = 0.0, 0

    def status(self, text: str) -> None:
        now = time.monotonic()
        if self.tty:
            text = text[: max(20, _terminal_width() - 1)]
            self.out.write("\r" + text.ljust(self._width))
            self._width = len(text)
            self.out.flush()
        elif now - self._last >= self.period:
            self.out.write(text + "\n")
            self.out.flush()
            self._last = now

    def say(self, text: str) -> None:
        if self.tty and self._width:
            self.out.write("\r" + " " * self._width + "\r")
            self._width = 0
        self.out.write(text + "\n")
        self.out.flush()


def _terminal_width() -> int:
    try:
        return os.get_terminal_size().columns
    except OSError:
        return 120


def _finish(task: Task, status: int, rusage) -> None:
    task._reader.join()
    task.wall_s = time.monotonic() - task._start
    task.cpu_s = rusage.ru_utime + rusage.ru_stime
    task._proc.returncode = os.waitstatus_to_exitcode(status)


def run_tasks(
    tasks: Sequence[Task], log_dir: Path, env: Dict[str, str], jobs: int, out: TextIO = sys.stdout
) -> List[Task]:
    """Run the tasks whose ``done`` file is absent, at most ``jobs`` at a time, in order.

    Each task's process gets ``OMP_NUM_THREADS`` = cores / jobs (at least 1): a second thread per
    process does not pay on small CPU models whose data loader needs a core too. Wall and
    CPU seconds (user + system of the process and its workers) are recorded on each task.

    Returns:
        The tasks that ran.

    Raises:
        StageFailed: a stage exited non-zero; the other running stages are terminated.
    """
    console = _Console(out)
    pending = [t for t in tasks if not t.done.exists()]
    for t in tasks:
        if t.done.exists():
            console.say(f"[demo] {t.name}: reusing {t.done} (--force reruns)")
    names = {t.name for t in pending}
    finished: List[Task] = []
    running: List[Task] = []
    threads = max(1, (os.cpu_count() or 1) // max(1, jobs))
    try:
        while pending or running:
            done = {f.name for f in finished}
            ready = [t for t in pending if not any(n in names and n not in done for n in t.needs)]
            for task in ready[: max(0, jobs - len(running))]:
                pending.remove(task)
                log = open(log_dir / f"{task.name}.log", "w")
                console.say(
                    f"[demo] {task.name}: started, {threads} thread(s) ({' '.join(task.cmd[2:])}); "
                    f"log {log.name}"
                )
                task._start = time.monotonic()
                task._proc = subprocess.Popen(
                    task.cmd,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                    env=dict(env, OMP_NUM_THREADS=str(threads)),
                )
                task._reader = threading.Thread(
                    target=_pump, args=(task._proc.stdout, log, task.progress), daemon=True
                )
                task._reader.start()
                task._log = log
                running.append(task)
            time.sleep(1.0)
            for task in list(running):
                pid, status, rusage = os.wait4(task._proc.pid, os.WNOHANG)
                if pid == 0:
                    continue
                _finish(task, status, rusage)
                task._log.close()
                running.remove(task)
                if task._proc.returncode != 0:
                    log = log_dir / f"{task.name}.log"
                    tail = "".join(log.read_text().splitlines(keepends=True)[-30:])
                    raise StageFailed(
                        f"[demo] stage {task.name!r} failed (exit {task._proc.returncode}); "
                        f"end of {log}:\n{tail}"
                    )
                finished.append(task)
                console.say(
                    f"[demo] {task.name}: done in {task.wall_s:.0f} s wall, {task.cpu_s:.0f} s CPU "
                    f"({task.progress.line()})"
                )
            if running:
                console.status(
                    "[demo] " + " | ".join(f"{t.name}: {t.progress.line()}" for t in running)
                )
    finally:
        for task in running:  # only after a failure or an interrupt
            if task._proc.poll() is None:
                task._proc.terminate()
                task._proc.wait()
            task._log.close()
    return finished
