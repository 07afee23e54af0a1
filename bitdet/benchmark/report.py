"""Ratios (bitdet vs peers, each lever vs eager) and the printed table."""
from __future__ import annotations

from typing import Dict, List

__all__ = ["compute_ratios", "format_table"]


def _ok(rows: List[Dict]) -> List[Dict]:
    return [r for r in rows if r.get("status") == "ok" and r.get("task") in ("train", "inference")]


def compute_ratios(rows: List[Dict]) -> Dict[str, List[Dict]]:
    """Throughput ratios from result rows.

    Returns:
        ``vs_peers``: for each (group, task), bitdet's fastest variant against every peer
        row (``ratio`` > 1: bitdet is faster). ``levers``: each bitdet variant against the
        same model's "eager" row (``speedup``).
    """
    ok = _ok(rows)
    vs_peers, levers = [], []
    for key in sorted({(r["group"], r["task"]) for r in ok}):
        same = [r for r in ok if (r["group"], r["task"]) == key]
        ours = [r for r in same if r["role"] == "bitdet"]
        if not ours:
            continue
        best = max(ours, key=lambda r: r["images_per_sec"])
        for peer in (r for r in same if r["role"] == "peer"):
            vs_peers.append({
                "group": key[0], "task": key[1],
                "bitdet": f"{best['model']}/{best['variant']}", "peer": f"{peer['model']}/{peer['variant']}",
                "ratio": best["images_per_sec"] / peer["images_per_sec"],
            })
    for r in ok:
        if r["role"] != "bitdet" or r["variant"] == "eager":
            continue
        base = [b for b in ok if (b["model"], b["task"], b["variant"]) == (r["model"], r["task"], "eager")]
        if base:
            levers.append({
                "model": r["model"], "task": r["task"], "variant": r["variant"],
                "speedup": r["images_per_sec"] / base[0]["images_per_sec"],
            })
    return {"vs_peers": vs_peers, "levers": levers}


def format_table(results: Dict) -> str:
    """Human-readable tables: rows, ratios vs peers, lever speed-ups, data path."""
    lines = [f"device: {results['meta'].get('device_name')}  precision: {results['meta'].get('precision')}"]
    header = f"{'model':<28} {'task':<9} {'variant':<24} {'batch':>5} {'img/s':>10} {'s/iter':>9} {'ms/img':>8} {'peak MB':>9}  status"
    lines += ["", header, "-" * len(header)]
    for r in results["rows"]:
        if r.get("task") not in ("train", "inference"):
            continue
        if r["status"] == "skipped":
            continue
        if r["status"] != "ok" and "images_per_sec" not in r:
            lines.append(f"{r['model']:<28} {r['task']:<9} {r['variant']:<24} {'':>5} {'':>10} {'':>9} {'':>8} {'':>9}  {r['status']}: {r['reason']}")
            continue
        lines.append(
            f"{r['model']:<28} {r['task']:<9} {r['variant']:<24} {r['batch_size']:>5} {r['images_per_sec']:>10.1f} "
            f"{r['sec_per_iter']:>9.4f} {r['ms_per_image']:>8.2f} {r['peak_mem_mb']:>9.0f}  {r['status']}"
            + (f": {r['reason']}" if r.get("reason") else "")
        )
    ratios = results.get("ratios", {})
    if ratios.get("vs_peers"):
        lines += ["", "bitdet (fastest variant) vs peers: img/s ratio (>1 = bitdet faster)"]
        for q in ratios["vs_peers"]:
            lines.append(f"  {q['group']:<14} {q['task']:<9} {q['bitdet']:<40} vs {q['peer']:<44} {q['ratio']:6.2f}x")
    if ratios.get("levers"):
        lines += ["", "what each lever buys (vs the same model's eager row)"]
        for q in ratios["levers"]:
            lines.append(f"  {q['model']:<28} {q['task']:<9} {q['variant']:<24} {q['speedup']:6.2f}x")
    if results.get("targets"):
        lines += ["", "GPU targets (H100, bf16, reference sizes)"]
        for t in results["targets"]:
            met = {True: "met", False: "NOT met", None: "n/a here"}[t["met"]]
            lines.append(f"  {t['model']:<28} {t['metric']:<24} target {t['target']:<8g} measured {t['measured']:<10.4g} {met}")
    data = [r for r in results["rows"] if r.get("task") == "data" and r["status"] == "ok"]
    if data:
        lines += ["", "data path"]
        for r in data:
            rate = r.get("images_per_sec_per_core")
            unit = "img/s per core" if rate is not None else "img/s"
            lines.append(f"  {r['loader']:<12} {r['decoder']:<42} {r['image_size']} {rate or r['images_per_sec']:>9.1f} {unit}")
    skipped = [r for r in results["rows"] if r["status"] == "skipped"]
    if skipped:
        lines += ["", f"skipped: {len(skipped)} rows (see JSON 'reason')"]
    return "\n".join(lines)
