"""sdk.metrics: DAVIS J and F on synthetic masks with answers worked out by hand."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis.extra.numpy import arrays

from sdk.metrics import (
    boundary_map,
    boundary_measure,
    boundary_tolerance,
    evaluate_sequence,
    first_appearance,
    region_similarity,
    statistics,
    summarize,
)


def rect(shape, top, left, bottom, right):
    mask = np.zeros(shape, bool)
    mask[top:bottom, left:right] = True
    return mask


def test_j_of_two_overlapping_rectangles():
    a = rect((20, 20), 0, 0, 10, 10)  # 100 px
    b = rect((20, 20), 5, 0, 15, 10)  # 100 px, 50 shared
    assert region_similarity(a, b) == pytest.approx(50 / 150)


def test_j_ignores_void_pixels():
    a, b = rect((20, 20), 0, 0, 10, 10), rect((20, 20), 5, 0, 15, 10)
    void = rect((20, 20), 10, 0, 15, 10)  # b's 50 px outside a
    assert region_similarity(a, b, void) == pytest.approx(50 / 100)


def test_j_of_empty_masks():
    empty = np.zeros((4, 4), bool)
    assert region_similarity(empty, empty) == 1.0
    assert region_similarity(empty, rect((4, 4), 0, 0, 1, 1)) == 0.0


def test_boundary_of_a_square_is_one_pixel_wide_4k_pixels():
    # inside: right column + bottom row (2k − 1); outside: column left of it + row above (2k + 1)
    b = boundary_map(rect((12, 12), 4, 4, 8, 8))
    assert b.sum() == 16
    assert b[3, 3:8].all() and b[7, 3:8].all() and b[3:8, 3].all() and b[3:8, 7].all()


def test_boundary_of_a_half_plane_is_one_column():
    b = boundary_map(rect((6, 8), 0, 0, 6, 3))
    assert b[:, 2].all() and b.sum() == 6


def test_tolerance_is_ceil_of_0_008_diagonal():
    assert boundary_tolerance((40, 60)) == 1  # diagonal 72.1 -> 0.58 -> 1
    assert boundary_tolerance((480, 854)) == 8  # 979.6 -> 7.84 -> 8
    assert boundary_tolerance((240, 427)) == 4


def test_f_of_identical_masks_is_one():
    mask = rect((40, 60), 5, 7, 30, 41)
    assert boundary_measure(mask, mask) == 1.0


def test_f_of_shifted_edge_within_and_beyond_tolerance():
    gt = rect((40, 60), 0, 0, 40, 20)  # boundary: column 19; tolerance 1 px
    assert boundary_measure(rect((40, 60), 0, 0, 40, 21), gt) == 1.0  # 1 px: matched
    assert boundary_measure(rect((40, 60), 0, 0, 40, 22), gt) == 0.0  # 2 px: no pixel matched


def test_f_of_shifted_square_beyond_tolerance_is_below_one():
    gt = rect((40, 60), 10, 10, 30, 30)
    assert boundary_measure(np.roll(gt, 1, axis=1), gt) == 1.0
    assert 0 < boundary_measure(np.roll(gt, 5, axis=1), gt) < 1


def test_f_with_a_spurious_blob_loses_precision_only():
    gt = rect((40, 60), 0, 0, 40, 20)  # 40 boundary pixels
    pred = gt | rect((40, 60), 10, 40, 14, 44)  # + a 4x4 square: 16 boundary pixels, far away
    precision, recall = 40 / 56, 1.0
    assert boundary_measure(pred, gt) == pytest.approx(2 * precision * recall / (precision + recall))


def test_f_of_empty_masks():
    empty, mask = np.zeros((10, 10), bool), rect((10, 10), 2, 2, 5, 5)
    assert boundary_measure(empty, empty) == 1.0
    assert boundary_measure(empty, mask) == 0.0
    assert boundary_measure(mask, empty) == 0.0


@settings(max_examples=30, deadline=None)
@given(arrays(bool, (12, 16)), arrays(bool, (12, 16)))
def test_j_and_f_are_symmetric_fractions(a, b):
    for measure in (region_similarity, boundary_measure):
        value = measure(a, b)
        assert 0.0 <= value <= 1.0
        assert value == pytest.approx(measure(b, a))
        assert measure(a, a) == 1.0


def labels_of(*masks):
    out = np.zeros(masks[0].shape, np.uint8)
    for label, mask in enumerate(masks, 1):
        out[mask] = label
    return out


def test_evaluate_sequence_drops_first_and_last_frame():
    shape = (40, 60)
    gt = [labels_of(rect(shape, 10, 10, 30, 30))] * 4
    wrong = np.zeros(shape, np.uint8)
    result = evaluate_sequence([wrong, gt[1], gt[2], wrong], gt)
    assert result == {1: {"J": [1.0, 1.0], "F": [1.0, 1.0]}}


def test_evaluate_sequence_per_object_and_late_objects():
    shape = (40, 60)
    one, two = rect(shape, 0, 0, 10, 10), rect(shape, 20, 20, 30, 40)
    gt = [labels_of(one), labels_of(one), labels_of(one, two), labels_of(one, two), labels_of(one, two)]
    pred = [labels_of(one)] * 5  # object 2 never found
    result = evaluate_sequence(pred, gt)
    assert result[1]["J"] == [1.0, 1.0, 1.0]  # frames 1..3
    assert result[2] == {"J": [0.0], "F": [0.0]}  # given on frame 2, scored on frame 3 only
    assert first_appearance(gt) == {1: 0, 2: 2}


def test_evaluate_sequence_void_and_length_mismatch():
    shape = (20, 20)
    gt = labels_of(rect(shape, 0, 0, 10, 10))
    gt[10:15, :10] = 255
    pred = labels_of(rect(shape, 0, 0, 15, 10))
    assert evaluate_sequence([pred] * 3, [gt] * 3)[1]["J"] == [1.0]
    with pytest.raises(ValueError):
        evaluate_sequence([pred] * 2, [gt] * 3)


def test_statistics_mean_recall_decay():
    stats = statistics([1.0, 1.0, 0.0, 0.0])
    assert stats == {"mean": 0.5, "recall": 0.5, "decay": 1.0}
    assert statistics([0.6, 0.6, 0.6])["decay"] == 0.0


def test_summarize_means_over_objects():
    objects = [{"J": [1.0, 1.0], "F": [0.5, 0.5]}, {"J": [0.0, 0.0], "F": [1.0, 1.0]}]
    summary = summarize(objects)
    assert summary["J-Mean"] == 0.5 and summary["F-Mean"] == 0.75
    assert summary["J&F"] == pytest.approx(0.625)
    assert summary["J-Recall"] == 0.5 and summary["F-Recall"] == 0.5
    with pytest.raises(ValueError):
        summarize([])
