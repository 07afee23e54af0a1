"""Ratios (bitdet vs peers, each lever vs eager) and the printed table."""

from __future__ import annotations

from typing import Dict, List, Optional

__all__ = ["compute_ratios", "format_table", "memory_ratios"]


def _ok(rows: List[Dict]) -> List[Dict]:
    return [r for r in rows if r.get("status") == "ok" and r.get("task") in ("train", "inference")]


def compute_ratios(
    rows: List[Dict], defaults: Optional[Dict[str, str]] = None
) -> Dict[str, List[Dict]]:
    """Throughput ratios from result rows.

    Args:
        rows: result rows.
        defaults: bitdet's default variant per task (``{"train": ..., "inference": ...}``).

    Returns:
        ``default_vs_peers``: for each (group, task), bitdet's default variant against every
        peer's "eager" row, the peers' defaults (``ratio`` > 1: bitdet is faster).
        ``vs_peers``: bitdet's fastest variant against every peer row. ``levers``: each
        bitdet variant against the same model's "eager" row (``speedup``).
    """
    ok = _ok(rows)
    defaults = defaults or {}
    default_vs_peers, vs_peers, levers = [], [], []
    for key in sorted({(r["group"], r["task"]) for r in ok}):
        same = [r for r in ok if (r["group"], r["task"]) == key]
        ours = [r for r in same if r["role"] == "bitdet"]
        if not ours:
            continue
        peers = [r for r in same if r["role"] == "peer"]
        best = max(ours, key=lambda r: r["images_per_sec"])
        for peer in peers:
            vs_peers.append(_ratio(key, best, peer))
        for default in (r for r in ours if r["variant"] == defaults.get(key[1])):
            default_vs_peers += [
                _ratio(key, default, peer) for peer in peers if peer["variant"] == "eager"
            ]
    for r in ok:
        if r["role"] != "bitdet" or r["variant"] == "eager":
            continue
        base = [
            b
            for b in ok
            if (b["model"], b["task"], b["variant"]) == (r["model"], r["task"], "eager")
        ]
        if base:
            levers.append(
                {
                    "model": r["model"],
                    "task": r["task"],
                    "variant": r["variant"],
                    "speedup": r["images_per_sec"] / base[0]["images_per_sec"],
                }
            )
    return {
        "default_vs_peers": default_vs_peers,
        "vs_peers": vs_peers,
        "levers": levers,
        "memory": memory_ratios(rows),
    }


def memory_ratios(rows: List[Dict]) -> List[Dict]:
    """Each memory row (``BENCH.MEMORY``) against the "eager" row of the same model, size and batch.

    Returns:
        One dict per non-eager row: ``peak_ratio`` (peak memory / eager's), on CPU
        ``own_ratio`` (the same after subtracting each process's memory before the row, where
        eager's row rose above it), and
        ``time_ratio`` (seconds per iteration / eager's).
    """
    ok = [
        r
        for r in rows
        if r.get("task") == "memory" and r.get("status") == "ok" and not r.get("dry_run")
    ]
    eager = {(r["model"], *r["entry"]): r for r in ok if r["variant"] == "eager"}
    out = []
    for r in ok:
        base = eager.get((r["model"], *r["entry"]))
        if r["variant"] == "eager" or base is None:
            continue
        ratio = {
            "model": r["model"],
            "entry": r["entry"],
            "variant": r["variant"],
            "peak_ratio": r["peak_mem_mb"] / base["peak_mem_mb"],
            "time_ratio": r["sec_per_iter"] / base["sec_per_iter"],
        }
        base_own = base["peak_mem_mb"] - base.get("base_mem_mb", base["peak_mem_mb"])
        # a tiny row can stay below the process's start-up peak
        if "base_mem_mb" in r and base_own > 0:
            ratio["own_ratio"] = (r["peak_mem_mb"] - r["base_mem_mb"]) / base_own
        out.append(ratio)
    return out


def _ratio(key: tuple, ours: Dict, peer: Dict) -> Dict:
    return {
        "group": key[0],
        "task": key[1],
        "bitdet": f"{ours['model']}/{ours['variant']}",
        "peer": f"{peer['model']}/{peer['variant']}",
        "ratio": ours["images_per_sec"] / peer["images_per_sec"],
    }


def _section(lines: List[str], title: str, rows, row_line) -> None:
    """Append a blank line, ``title`` and one ``row_line(row)`` per row; nothing when no rows."""
    if rows:
        lines += ["", title]
        lines.extend(row_line(row) for row in rows)


def _ratio_line(q: Dict) -> str:
    return (
        f"  {q['group']:<14} {q['task']:<9} {q['bitdet']:<40} vs {q['peer']:<44} {q['ratio']:6.2f}x"
    )


def _ratio_target_line(t: Dict) -> str:
    met = {True: "met", False: "NOT met", None: "not measured"}[t["met"]]
    ratio = "" if t["ratio"] is None else f"{t['ratio']:.2f}x"
    return (
        f"  {t['task']:<9} {t['bitdet']:<32} vs {t['peer']:<36} "
        f">= {t['target']:<5g} {ratio:>7}  {met}"
    )


def _target_line(t: Dict) -> str:
    met = {True: "met", False: "NOT met", None: "n/a here"}[t["met"]]
    return (
        f"  {t['model']:<28} {t['metric']:<24} target {t['target']:<8g} "
        f"measured {t['measured']:<10.4g} {met}"
    )


def format_table(results: Dict) -> str:
    """Human-readable tables: rows, ratios vs peers, lever speed-ups, targets, data path."""
    meta = results["meta"]
    if meta.get("dry_run"):
        return _format_dry_run(results)
    lines = [
        f"device: {meta.get('device_name')}  precision: {meta.get('precision')}"
        f"  threads: {meta.get('cpu_threads')}"
        f"  clock: {meta.get('clock', 'wall')}  interleaved: {meta.get('interleaved', False)}"
    ]
    defaults = results.get("defaults") or {}
    if defaults:
        lines.append(
            "bitdet default: "
            + ", ".join(f"{task} = {v}" for task, v in defaults.items())
            + "  (marked * below)"
        )
    header = (
        f"{'model':<28} {'task':<9} {'variant':<24} {'batch':>5} {'img/s':>10} {'s/iter':>9} "
        f"{'ms/img':>8} {'peak MB':>9}  status"
    )
    lines += ["", header, "-" * len(header)]
    for r in results["rows"]:
        if r.get("task") not in ("train", "inference"):
            continue
        if r["status"] == "skipped":
            continue
        if r["status"] != "ok" and "images_per_sec" not in r:
            lines.append(
                f"{r['model']:<28} {r['task']:<9} {r['variant']:<24} {'':>5} {'':>10} {'':>9} "
                f"{'':>8} {'':>9}  {r['status']}: {r['reason']}"
            )
            continue
        marked = r["variant"] + (
            " *" if r.get("role") == "bitdet" and defaults.get(r["task"]) == r["variant"] else ""
        )
        lines.append(
            f"{r['model']:<28} {r['task']:<9} {marked:<24} {r['batch_size']:>5} "
            f"{r['images_per_sec']:>10.1f} {r['sec_per_iter']:>9.4f} {r['ms_per_image']:>8.2f} "
            f"{r['peak_mem_mb']:>9.0f}  {r['status']}"
            + (f": {r['reason']}" if r.get("reason") else "")
        )
    ratios = results.get("ratios", {})
    for key, title in (
        ("default_vs_peers", "bitdet default vs peers' eager (their default)"),
        ("vs_peers", "bitdet (fastest variant) vs peers"),
    ):
        _section(lines, f"{title}: img/s ratio (>1 = bitdet faster)", ratios.get(key), _ratio_line)
    _section(
        lines,
        "what each lever buys (vs the same model's eager row)",
        ratios.get("levers"),
        lambda q: f"  {q['model']:<28} {q['task']:<9} {q['variant']:<24} {q['speedup']:6.2f}x",
    )
    _section(
        lines,
        "ratio targets (BENCH.RATIO_TARGETS)",
        results.get("ratio_targets"),
        _ratio_target_line,
    )
    _section(lines, "targets (BENCH.TARGETS; judged on CUDA)", results.get("targets"), _target_line)
    memory = [r for r in results["rows"] if r.get("task") == "memory" and r["status"] != "skipped"]
    if memory:
        own = any("base_mem_mb" in r for r in memory)
        lines += [
            "",
            "peak memory of one training step (BENCH.MEMORY; CPU: each row in a fresh process, "
            "'own' = its peak minus the process's memory before the row)",
            f"  {'model':<28} {'size':>9} {'batch':>5} {'variant':<12} {'peak MB':>9}"
            + (f" {'own MB':>9}" if own else "")
            + f" {'s/iter':>9}",
        ]
        for r in memory:
            side, batch = r["entry"]
            if r["status"] != "ok":
                lines.append(
                    f"  {r['model']:<28} {side:>4}x{side:<4} {batch:>5} {r['variant']:<12} "
                    f"{r['status']}: {r['reason']}"
                )
                continue
            own_mb = (
                f" {r['peak_mem_mb'] - r['base_mem_mb']:>9.0f}"
                if "base_mem_mb" in r
                else (" " * 10 if own else "")
            )
            lines.append(
                f"  {r['model']:<28} {side:>4}x{side:<4} {batch:>5} {r['variant']:<12} "
                f"{r['peak_mem_mb']:>9.0f}"
                f"{own_mb} {r['sec_per_iter']:>9.3f}"
            )
        for q in ratios.get("memory", []):
            side, batch = q["entry"]
            own_text = f", own memory {q['own_ratio']:.2f}x" if "own_ratio" in q else ""
            lines.append(
                f"  {q['model']} {side}x{side} batch {batch}: {q['variant']} / eager: "
                f"peak {q['peak_ratio']:.2f}x"
                f"{own_text}, time {q['time_ratio']:.2f}x"
            )
    data = [r for r in results["rows"] if r.get("task") == "data" and r["status"] == "ok"]
    if data:
        lines += ["", "data path: decode + augment"]
        for r in data:
            rate = r.get("images_per_sec_per_core")
            unit = "img/s per core" if rate is not None else "img/s"
            cores = (
                f"  -> {r['cores_per_gpu']} cores for {r['gpu_images_per_sec']:g} img/s"
                if r.get("cores_per_gpu")
                else ""
            )
            lines.append(
                f"  {r['loader']:<12} {r['decoder']:<56} {str(r['image_size']):<11} "
                f"{rate or r['images_per_sec']:>8.1f} {unit}{cores}"
            )
    skipped = [r for r in results["rows"] if r["status"] == "skipped"]
    if skipped:
        lines += ["", f"skipped: {len(skipped)} rows (see JSON 'reason')"]
    return "\n".join(lines)


def _format_dry_run(results: Dict) -> str:
    """What a dry run checked: each row built (as its stand-in) and stepped, or why not."""
    lines = [
        "dry run: every row built at tiny size and stepped once on this CPU; "
        "no timing or memory claims",
        "",
    ]
    for r in results["rows"]:
        name = r.get("model") or r.get("loader")
        what = f"{r['task']:<9} {r.get('variant', ''):<24}"
        if r["status"] == "ok":
            built = f" as {r['built']}" if r.get("built") not in (None, name) else ""
            entry = f" (entry {r['entry'][0]} px, batch {r['entry'][1]})" if "entry" in r else ""
            lines.append(f"  {name:<28} {what} ok{built}{entry}")
        else:
            lines.append(f"  {name:<28} {what} {r['status']}: {r['reason']}")
    failed = [r for r in results["rows"] if r["status"] == "failed"]
    lines += [
        "",
        f"{len(failed)} of {len(results['rows'])} rows failed"
        if failed
        else f"all {len(results['rows'])} rows ran or were skipped as on the real device",
    ]
    return "\n".join(lines)
