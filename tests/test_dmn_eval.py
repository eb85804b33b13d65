"""benchmarks/dmn_eval.py: ground-truth objects as DMN-AOA proposals (the oracle variant) in the
Segmenter's geometry, and the per-sequence table."""
from __future__ import annotations

import numpy as np

from benchmarks.dmn_eval import OracleProposals, identity_swaps, markdown


def test_oracle_proposals_are_the_frames_objects_on_the_padded_stride4_grid():
    labels = np.zeros((40, 60), np.uint8)
    labels[4:20, 6:30] = 1
    labels[24:36, 40:56] = 3
    empty = np.zeros_like(labels)
    oracle = OracleProposals([labels, empty], resolution=80, stride=16)   # 40x60 -> 80x120, padded to 80x128
    boxes, scores, masks = oracle(np.zeros((1, 3, 80, 128), np.float32))
    assert masks.shape == (2, 20, 32) and scores.tolist() == [1.0, 1.0]
    assert boxes.tolist() == [[12.0, 8.0, 60.0, 40.0], [80.0, 48.0, 112.0, 72.0]]   # ×2, in padded px
    assert masks[0].sum() == (32 // 4) * (48 // 4) and masks[:, :, 30:].sum() == 0   # padding holds nothing
    oracle.advance()
    boxes, scores, masks = oracle(np.zeros((1, 3, 80, 128), np.float32))
    assert boxes.shape == (0, 4) and masks.shape == (0, 20, 32)


def test_markdown_lists_every_sequence_and_variant():
    seqs = {"a": {"J&F": 80.0}, "b": {"J&F": 70.5}}
    report = {"data": "d", "split": "val", "resolution": 480, "machine": {"cpu": "cpu", "cores": 2},
              "variants": {"every_k": {"sequences": seqs, "J&F": 75.2},
                           "dmn_aoa": {"sequences": {"a": {"J&F": 81.0}, "b": {"J&F": 69.0}}, "J&F": 75.0}}}
    table = markdown(report)
    assert "| sequence | every_k | dmn_aoa |" in table
    assert "| b | 70.5 | 69.0 |" in table and "**75.2**" in table


def test_identity_swaps_count_masks_lying_on_another_object():
    gt = np.zeros((10, 10), np.uint8)
    gt[:, :5], gt[:, 5:] = 1, 2
    swapped = np.where(gt == 1, 2, 1).astype(np.uint8)         # both labels exchanged
    half = gt.copy()
    half[:, 3:5] = 2                                            # object 2 leaks into 1: 40 % of 1's
    assert identity_swaps([gt, gt, swapped], [gt, gt, gt]) == 2
    assert identity_swaps([gt, half], [gt, gt]) == 0
    assert identity_swaps([swapped, gt], [gt, gt]) == 0          # frame 0 (the given mask) is not scored
