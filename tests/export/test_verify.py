"""compare_outputs: tolerance rules and detection matching (order-free, ties at the cut-off);
verify: outputs whose agreement proves nothing fail."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

import bitdet
from bitdet.export import classifier_target, compare_outputs, sample_photos, verify
from bitdet.export.verify import ALL_SAMPLES

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
    assert (
        _ok(results) and results[0].matched == 0
    )  # passes, but the tool warns that nothing was compared


@pytest.fixture(scope="module")
def tiny_classifier():
    torch.manual_seed(0)
    model = bitdet.create_model("R14-tiny", num_classes=4).eval()
    nn.init.normal_(model.fc.weight, std=0.05)
    return model


def _verify_eagerly(model, new_head=""):
    """``verify`` with the folded module as the exported graph (the same computation as an
    export)."""
    target = classifier_target(
        model, image_size=32, batch_size=2, photos=sample_photos(), new_head=new_head
    )

    def runner(x):
        with torch.no_grad():
            return [target.module(x).numpy()]

    return verify(target, runner)


def test_informative_logits_pass(tiny_classifier):
    results = _verify_eagerly(tiny_classifier)
    assert len(results) == 2 and _ok(results)  # two samples, no failed check
    assert all(r.shape[1] == 4 for r in results)


@pytest.mark.parametrize(
    "case, note",
    [
        ("zero", "zero on every sample"),
        ("constant", "the same for every input image"),
        ("nan", "non-finite values"),
    ],
)
def test_uninformative_outputs_fail(tiny_classifier, case, note):
    model = copy.deepcopy(tiny_classifier)
    with torch.no_grad():
        if case == "zero":
            model.fc.weight.zero_()  # a zero-initialised head: every logit is 0
        elif case == "constant":
            model.fc.weight.zero_()
            model.fc.bias.copy_(torch.tensor([0.5, -1.0, 2.0, 0.0]))  # every image gets the bias
        else:
            model.fc.weight[0, 0] = float("nan")
    results = _verify_eagerly(model)
    per_sample = [r for r in results if r.sample != ALL_SAMPLES]
    assert len(per_sample) == 2
    if case != "nan":  # exported and eager agree: the comparison alone would pass
        assert _ok(per_sample) and all(r.max_abs_diff == 0 for r in per_sample)
    checks = [r for r in results if r.sample == ALL_SAMPLES]
    assert len(checks) == 1 and not checks[0].ok and note in checks[0].note


def test_a_new_head_fails_verification(tiny_classifier):
    results = _verify_eagerly(tiny_classifier, new_head="zero-initialised (requested)")
    failures = [r for r in results if not r.ok]
    assert len(results) == 3 and len(failures) == 1  # the logits agree; the new head fails
    assert "the head is new, zero-initialised (requested)" in failures[0].note


def test_features_of_a_single_repeated_image_are_not_called_constant(tiny_classifier):
    headless = bitdet.create_model("R14-tiny", num_classes=0).eval()
    target = classifier_target(headless, image_size=32, batch_size=2, photos=sample_photos()[:1])
    assert torch.equal(target.samples[0][0][0], target.samples[0][0][1])  # one photo: equal rows

    def runner(x):
        with torch.no_grad():
            return [target.module(x).numpy()]

    assert _ok(verify(target, runner))  # the two sizes differ, so do their features
