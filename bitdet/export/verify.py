"""Compare an exported graph's outputs with the eager model's on the target's samples.

Float outputs pass when ``max |exported - eager| <= atol + rtol * max |eager|``: the relative
part scales with the output's magnitude (box coordinates with the image size, logits with
the largest logit), since float32 round-off in a box is proportional to its anchor's size,
not to the coordinate. Integer outputs (classes, image sizes) must be equal. Detections are
matched first: an exported detection pairs with an eager one of the same class whose score
and box are within tolerance. Scores that agree to within float round-off may leave top-k /
NMS in either order, so the order is not compared. A detection without a partner fails,
unless its score ties with the lowest score kept: which of several tied candidates survive
top-k and NMS depends on sort order, not on the model (an untrained RetinaNet head scores
every anchor near its prior, 0.01, so most detections tie; the note counts them).

A comparison of uninformative outputs proves nothing, so :func:`verify` also fails an output
that is non-finite, zero on every sample, the same for every distinct input image (batched
outputs: a constant, such as a zero-weight head with its bias), or empty on every sample,
and a classifier whose head was re-initialised rather than loaded (its logits would not come
from the weights).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from bitdet.export.formats import Runner, outputs_as_numpy
from bitdet.export.targets import ExportTarget

__all__ = ["ALL_SAMPLES", "Comparison", "compare_outputs", "uninformative_outputs", "verify"]

DEFAULT_ATOL = 1e-4
DEFAULT_RTOL = 1e-5
ALL_SAMPLES = -1  # Comparison.sample of a check over every sample


@dataclass(frozen=True)
class Comparison:
    """One output of one sample: the largest absolute difference and whether it passes."""

    sample: int
    name: str
    shape: tuple
    max_abs_diff: float
    ok: bool
    note: str = ""
    matched: Optional[int] = None  # detections: how many were compared

    def __str__(self) -> str:
        status = "ok" if self.ok else "FAIL"
        note = f" ({self.note})" if self.note else ""
        where = "all samples" if self.sample == ALL_SAMPLES else f"sample {self.sample}"
        return (
            f"{where} {self.name} {self.shape}: max abs diff {self.max_abs_diff:.3g} {status}{note}"
        )


def _close(reference: np.ndarray, value: np.ndarray, atol: float, rtol: float) -> bool:
    if np.issubdtype(reference.dtype, np.integer) or reference.dtype == bool:
        return bool(np.array_equal(reference, value))
    if not reference.size:
        return True
    scale = float(np.abs(reference).max())
    return bool(np.abs(value.astype(np.float64) - reference).max() <= atol + rtol * scale)


@dataclass(frozen=True)
class _Matching:
    pairs: np.ndarray  # (k, 2): exported index, eager index
    at_cutoff: int  # unmatched detections whose score ties with the lowest kept score
    unexplained: int  # unmatched detections above that cut-off: a real difference


def _match_detections(
    ref: Sequence[np.ndarray], out: Sequence[np.ndarray], atol: float, rtol: float
) -> _Matching:
    """Pair each exported detection with an unused eager one of the same class whose score
    and box are within tolerance (the nearest box among those), highest scores first."""
    boxes_r, classes_r, scores_r = ref[:3]
    boxes_o, classes_o, scores_o = out[:3]
    scale_s = max(float(np.abs(scores_r).max(initial=0)), float(np.abs(scores_o).max(initial=0)))
    scale_b = max(float(np.abs(boxes_r).max(initial=0)), float(np.abs(boxes_o).max(initial=0)))
    tol_s, tol_b = atol + rtol * scale_s, atol + rtol * scale_b
    used = np.zeros(len(scores_r), dtype=bool)
    matched = np.zeros(len(scores_o), dtype=bool)
    pairs = []
    for i in np.argsort(-scores_o, kind="stable"):
        distance = np.abs(boxes_r - boxes_o[i]).max(axis=1) if len(boxes_r) else np.zeros(0)
        candidates = (
            (~used)
            & (classes_r == classes_o[i])
            & (np.abs(scores_r - scores_o[i]) <= tol_s)
            & (distance <= tol_b)
        )
        if candidates.any():
            j = int(np.argmin(np.where(candidates, distance, np.inf)))
            used[j] = matched[i] = True
            pairs.append((i, j))
    # Top-k and NMS keep a fixed number of candidates: among candidates whose scores tie with
    # the last one kept, which survive depends on sort and NMS order, not on the model.
    unmatched = np.concatenate([scores_o[~matched], scores_r[~used]])
    cutoff = min(scores_r.min(initial=np.inf), scores_o.min(initial=np.inf))
    at_cutoff = int((unmatched <= cutoff + tol_s).sum())
    return _Matching(
        np.array(pairs, dtype=np.int64).reshape(-1, 2), at_cutoff, len(unmatched) - at_cutoff
    )


def compare_outputs(
    reference: Sequence[np.ndarray],
    exported: Sequence[np.ndarray],
    names: Sequence[str],
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
    detections: bool = False,
    sample: int = 0,
) -> List[Comparison]:
    """Compare one sample's outputs; see the module docstring for the rules.

    Args:
        reference, exported: outputs in ``names`` order.
        detections: the first three outputs are ``pred_boxes, pred_classes, scores``.
    """
    if len(reference) != len(exported) or len(reference) != len(names):
        return [
            Comparison(
                sample,
                "outputs",
                (len(exported),),
                float("inf"),
                False,
                f"{len(exported)} outputs, eager has {len(reference)} ({', '.join(names)})",
            )
        ]
    reference = [np.asarray(r) for r in reference]
    exported = [np.asarray(e) for e in exported]
    note = ""
    if detections:
        matching = _match_detections(reference, exported, atol, rtol)
        counts = (len(reference[2]), len(exported[2]))
        if matching.unexplained:
            return [
                Comparison(
                    sample,
                    "detections",
                    (counts[1],),
                    float("inf"),
                    False,
                    f"{matching.unexplained} detections above the lowest kept score have no "
                    "partner of the same class, score and box "
                    f"(exported {counts[1]}, eager {counts[0]})",
                )
            ]
        out_idx, ref_idx = matching.pairs[:, 0], matching.pairs[:, 1]
        reference = [r[ref_idx] for r in reference[:3]] + reference[3:]
        exported = [e[out_idx] for e in exported[:3]] + exported[3:]
        note = f"{len(out_idx)} of {counts[1]} detections matched"
        if matching.at_cutoff:
            note += f"; {matching.at_cutoff} unmatched tie with the lowest kept score"
    matched = len(exported[2]) if detections else None
    results = []
    for name, ref, out in zip(names, reference, exported):
        if ref.shape != out.shape:
            results.append(
                Comparison(sample, name, out.shape, float("inf"), False, f"eager shape {ref.shape}")
            )
            continue
        diff = (
            float(np.abs(out.astype(np.float64) - ref.astype(np.float64)).max())
            if ref.size
            else 0.0
        )
        results.append(
            Comparison(sample, name, out.shape, diff, _close(ref, out, atol, rtol), note, matched)
        )
    return results


def _is_float(array: np.ndarray) -> bool:
    return np.issubdtype(array.dtype, np.floating)


def _constant_across_inputs(inputs: Sequence[np.ndarray], outputs: Sequence[np.ndarray]) -> bool:
    """Whether batched ``outputs`` are identical for every distinct input item (compared among
    items whose output has the same shape: feature maps grow with the image)."""
    groups: Dict[Tuple[int, ...], Tuple[set, set]] = {}
    for x, y in zip(inputs, outputs):
        for item_in, item_out in zip(x, y):
            seen_in, seen_out = groups.setdefault(item_out.shape, (set(), set()))
            seen_in.add((item_in.shape, item_in.tobytes()))
            seen_out.add(np.ascontiguousarray(item_out).tobytes())
    return any(len(seen_in) > 1 and len(seen_out) == 1 for seen_in, seen_out in groups.values())


def uninformative_outputs(
    target: ExportTarget,
    references: Sequence[Sequence[np.ndarray]],
    exported: Sequence[Sequence[np.ndarray]],
) -> List[Comparison]:
    """Failing comparisons for outputs whose agreement proves nothing (see the module docstring).

    Args:
        target: the export target (its samples, output names, batch axes and head).
        references, exported: per sample, the eager and the exported outputs in ``output_names``
        order.
    """
    failures = []
    inputs = [np.asarray(sample[0]) for sample in target.samples]
    for index, name in enumerate(target.output_names):
        ref = [np.asarray(r[index]) for r in references if index < len(r)]
        out = [np.asarray(e[index]) for e in exported if index < len(e)]
        if not ref or not _is_float(ref[0]):
            continue  # integers (classes, image sizes) carry no float degeneracy
        diffs = [
            float(np.abs(o.astype(np.float64) - r).max())
            for r, o in zip(ref, out)
            if r.shape == o.shape and r.size
        ]
        diff = max(diffs, default=0.0)
        bad_ref = sum(int((~np.isfinite(r)).sum()) for r in ref)
        bad_out = sum(int((~np.isfinite(o)).sum()) for o in out if _is_float(o))
        if bad_ref or bad_out:
            note, diff = (
                f"non-finite values (NaN or inf): {bad_ref} in eager, {bad_out} exported",
                float("inf"),
            )
        elif not any(r.size for r in ref):
            note = "empty on every sample: nothing was compared"
        elif not any(np.any(r) for r in ref):
            note = "zero on every sample: equal outputs prove nothing (a zero-initialised head?)"
        elif target.dynamic_axes.get(name, {}).get(0) == "batch" and _constant_across_inputs(
            inputs, ref
        ):
            note = (
                "the same for every input image: equal outputs prove nothing (a zero-weight head?)"
            )
        else:
            continue
        failures.append(Comparison(ALL_SAMPLES, name, ref[0].shape, diff, False, note))
    if target.new_head:
        name = target.output_names[0]
        shape = np.asarray(references[0][0]).shape if references and len(references[0]) else ()
        failures.append(
            Comparison(
                ALL_SAMPLES,
                name,
                shape,
                0.0,
                False,
                f"the head is new, {target.new_head}: its {name} do not come from the weights; "
                "export the file's head, or the headless trunk (num_classes 0)",
            )
        )
    return failures


def verify(
    target: ExportTarget, runner: Runner, atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL
) -> List[Comparison]:
    """Run the eager reference and the exported ``runner`` on every sample and compare; then
    fail the outputs whose agreement proves nothing (:func:`uninformative_outputs`)."""
    results, references, exported = [], [], []
    for i, sample in enumerate(target.samples):
        reference = outputs_as_numpy(target.reference(*sample))
        outputs = runner(*sample)
        results.extend(
            compare_outputs(
                reference, outputs, target.output_names, atol, rtol, target.detections, sample=i
            )
        )
        references.append(reference)
        exported.append(outputs)
    return results + uninformative_outputs(target, references, exported)
