"""The name of the machine's CPU, for reports and benchmark records."""

import platform


def cpu_name(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU's model name (Linux: ``/proc/cpuinfo``), else what ``platform`` knows, with the
    architecture, e.g. ``"AMD EPYC 7B13 (x86_64)"``. Floating-point results of the same seeded
    run can differ between CPU models (their kernels differ), so a measured figure names it."""
    name = ""
    try:
        with open(cpuinfo) as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and value.strip():
                    name = value.strip()
                    break
    except OSError:
        pass
    name = name or platform.processor() or "unknown CPU"
    return f"{name} ({platform.machine()})"
