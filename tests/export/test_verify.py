"""compare_outputs: tolerance rules and detection matching (order-free, ties at the cut-off)."""
import numpy as np

from bitdet.export import compare_outputs

NAMES = ["pred_boxes", "pred_classes", "scores", "image_size"]


def _detections(n=6, seed=0):
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 80, (n, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 40, (n, 2))], axis=1).astype(np.float32)
    classes = rng.integers(0, 3, n)
    scores = np.sort(rng.uniform(0.2, 0.9, n)).astype(np.float32)[::-1].copy()
    return [boxes, classes, scores, np.array([128, 128])]


def _ok(results):
    return all(r.ok for r in results)


def test_logits_within_and_beyond_tolerance():
    ref = np.array([[1.0, -2.0, 3.0]], np.float32)
    assert _ok(compare_outputs([ref], [ref + 5e-5], ["logits"]))
    result = compare_outputs([ref], [ref + np.array([[0, 0, 3e-4]], np.float32)], ["logits"])
    assert not _ok(result) and abs(result[0].max_abs_diff - 3e-4) < 1e-6
    assert not _ok(compare_outputs([ref], [ref[:, :2]], ["logits"]))  # shape mismatch


def test_detections_in_another_order_match():
    ref = _detections()
    perm = np.array([1, 0, 2, 3, 5, 4])
    out = [ref[0][perm] + 2e-5, ref[1][perm], ref[2][perm], ref[3]]
    results = compare_outputs(ref, out, NAMES, detections=True)
    assert _ok(results)
    assert results[0].max_abs_diff < 3e-5 and "6 of 6 detections matched" in results[0].note


def test_a_moved_box_or_changed_class_fails():
    ref = _detections()
    moved = [ref[0].copy(), ref[1], ref[2], ref[3]]
    moved[0][0, 2] += 0.5
    assert not _ok(compare_outputs(ref, moved, NAMES, detections=True))
    relabelled = [ref[0], ref[1].copy(), ref[2], ref[3]]
    relabelled[1][0] = (relabelled[1][0] + 1) % 3
    assert not _ok(compare_outputs(ref, relabelled, NAMES, detections=True))
    missing = [r[:-2] for r in ref[:3]] + [ref[3]]  # the two lowest-scored detections lost
    assert not _ok(compare_outputs(ref, missing, NAMES, detections=True))


def test_ties_at_the_lowest_kept_score_are_excused_only_there():
    ref = _detections()
    ref[2][-2:] = ref[2][-1]  # the last two tie
    swapped = [r.copy() for r in ref]
    swapped[0][-1] += 10.0  # another of the tied candidates survived top-k
    results = compare_outputs(ref, swapped, NAMES, detections=True)
    assert _ok(results) and "2 unmatched tie with the lowest kept score" in results[0].note
    above = [r.copy() for r in ref]
    above[0][0] += 10.0  # the best detection differs: not a tie
    assert not _ok(compare_outputs(ref, above, NAMES, detections=True))


def test_counts_the_detections_compared():
    ref = _detections()
    assert compare_outputs(ref, ref, NAMES, detections=True)[0].matched == 6
    empty = [ref[0][:0], ref[1][:0], ref[2][:0], ref[3]]
    results = compare_outputs(empty, empty, NAMES, detections=True)
    assert _ok(results) and results[0].matched == 0  # passes, but the tool warns that nothing was compared
