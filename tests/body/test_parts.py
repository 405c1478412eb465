from __future__ import annotations

import pytest
import torch

from geo3d.body import (
    ARTEQ_PART_MAP,
    arteq_part_labels,
    part_labels,
    smpl_to_arteq_labels,
    tiny_body_dict,
)


def test_arteq_map_merges_hands_and_feet_only():
    expect = list(range(22)) + [20, 21]
    expect[10], expect[11] = 7, 8
    assert list(ARTEQ_PART_MAP) == expect


def test_tiny_body_parts_cover_24_and_arteq_20():
    w = torch.as_tensor(tiny_body_dict()["weights"])
    lab = part_labels(w)
    assert sorted(lab.unique().tolist()) == list(range(24))
    a = arteq_part_labels(w)
    occurring = sorted(a.unique().tolist())
    assert occurring == [j for j in range(22) if j not in (10, 11)]
    assert len(occurring) == 20


def test_arteq_sums_before_argmax():
    # wrist 0.4 vs hand 0.35 + elbow 0.25: SMPL label wrist(20); after merging hand into wrist
    # the same. Foot 0.45 vs knee 0.3 + ankle 0.25: SMPL says foot (10), ArtEq ankle (7) with
    # 0.7 > knee — a bug mapping after argmax would also give 7, so add a case that differs:
    # hand 0.3 + wrist 0.3 vs elbow 0.4 -> SMPL: elbow (18); ArtEq: wrist (20, 0.6).
    w = torch.zeros(2, 24, dtype=torch.float64)
    w[0, 22], w[0, 20], w[0, 18] = 0.3, 0.3, 0.4
    w[1, 10], w[1, 4], w[1, 7] = 0.45, 0.3, 0.25
    torch.testing.assert_close(part_labels(w), torch.tensor([18, 10]))
    torch.testing.assert_close(arteq_part_labels(w), torch.tensor([20, 7]))
    torch.testing.assert_close(smpl_to_arteq_labels(part_labels(w)), torch.tensor([18, 7]))


def test_ties_go_to_lowest_index():
    assert part_labels(torch.tensor([[0.5, 0.5, 0.0]])).tolist() == [0]


def test_errors():
    with pytest.raises(ValueError, match="weights"):
        arteq_part_labels(torch.zeros(3, 23))
    with pytest.raises(ValueError, match="weights"):
        part_labels(torch.tensor([[float("nan"), 1.0]]))
    with pytest.raises(ValueError, match="labels"):
        smpl_to_arteq_labels(torch.tensor([24]))
