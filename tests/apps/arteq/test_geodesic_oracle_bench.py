"""``benchmarks/arteq_geodesic_oracle.py``: its signatures and vote against values known in
closed form (the recorded geodesic-oracle figures rest on them)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))
go = pytest.importorskip("arteq_geodesic_oracle")


def _u_shape():
    """Two parallel rows of 20 points, 1 apart along x and 0.5 apart in y, ``(40, 3)``:
    row A (y = 0, indices 0-19) runs from the left wrist (20, x <= 2) up the arm and spine
    to the pelvis (0, x = 19), row B (y = 0.5, indices 20-39) from the left ankle (7, x <= 4)
    up the leg to the pelvis. Each part is its neighbour's parent or child along a row, so
    the kinematic tree joins the rows only through the pelvis, while the 3-NN graph joins
    them at every x (a contact, 0.5 long)."""
    xa = torch.stack([torch.arange(20.0), torch.zeros(20), torch.zeros(20)], 1)
    x = torch.cat([xa, xa + torch.tensor([0.0, 0.5, 0.0])]).double()
    la = [20] * 3 + [18] * 3 + [16] * 3 + [13] * 3 + [9] * 3 + [6] * 2 + [3] * 2 + [0]
    lb = [7] * 5 + [4] * 5 + [1] * 9 + [0]
    return x, torch.tensor(la + lb)


def test_geodesic_shortcuts_the_contact_and_the_cut_follows_the_tree():
    """Distance to the left wrist (column 1) from B0 (the ankle's end, index 20) relative
    to A10's (8 along row A from the wrist's last point A2; the median scaling cancels).
    3-NN graph: B0 is one 0.5 contact edge from A0, ratio 0.5 / 8. With the contacts cut
    the path runs along row B to B18, takes the 3-NN edge B18-A19 (pelvis 0 and left hip 1
    are adjacent; sqrt(1.25)) and goes back along row A to A2: 18 + sqrt(1.25) + 17.
    Euclidean: 0.5 / 8 as well."""
    x, y = _u_shape()
    b0, a10, wrist = 20, 10, 1
    plain = go.signature(x, y, k=3)
    cut = go.signature(x, y, k=3, cut_contacts=True)
    euc = go.signature(x, y, mode="euclidean")
    np.testing.assert_allclose(plain[b0, wrist] / plain[a10, wrist], 0.5 / 8, rtol=1e-12)
    np.testing.assert_allclose(cut[b0, wrist] / cut[a10, wrist], (35 + 1.25 ** 0.5) / 8,
                               rtol=1e-12)
    np.testing.assert_allclose(euc[b0, wrist] / euc[a10, wrist], 0.5 / 8, rtol=1e-12)
    # the ankle column (3), from A0 against B12 (8 from the ankle's last point B4): with
    # the cut, A0-A18, A18-B19 (spine1 3 and pelvis 0; sqrt(1.25)), B19-B4
    np.testing.assert_allclose(cut[0, 3] / cut[20 + 12, 3], (33 + 1.25 ** 0.5) / 8, rtol=1e-12)
    np.testing.assert_allclose(plain[0, 3] / plain[20 + 12, 3], 0.5 / 8, rtol=1e-12)
    # absent extremities (head 15, right wrist 21, right ankle 8) are UNREACHABLE everywhere
    for j in (0, 2, 4):
        assert np.all(plain[:, j] == go.UNREACHABLE) and np.all(cut[:, j] == go.UNREACHABLE)


def test_signature_exact_on_a_line():
    """A straight line of points 0..9 with the head (15) at x = 0 and the right ankle (8)
    at x = 9: geodesic = Euclidean = |x - 0| and |x - 9|; the median entry over the two
    finite columns is 4.5."""
    x = torch.stack([torch.arange(10.0), torch.zeros(10), torch.zeros(10)], 1).double()
    y = torch.tensor([15] + [12] * 8 + [8])
    for mode in ("geodesic", "euclidean"):
        S = go.signature(x, y, k=2, mode=mode)
        np.testing.assert_allclose(S[:, 0], np.arange(10) / 4.5, rtol=1e-12)
        np.testing.assert_allclose(S[:, 4], (9 - np.arange(10)) / 4.5, rtol=1e-12)


def test_signature_rejects_bad_arguments():
    x = torch.zeros(4, 3)
    with pytest.raises(ValueError, match="mode"):
        go.signature(x, torch.zeros(4, dtype=torch.long), mode="cosine")
    with pytest.raises(ValueError, match="labels"):
        go.signature(x, torch.zeros(3, dtype=torch.long))


def test_knn_vote_majority_and_tie():
    """5 nearest of 1-D signatures: 3 of label 2 beat 2 of label 7; a 2-2-1 tie goes to the
    smaller label."""
    T = np.array([[0.0], [0.1], [0.2], [0.3], [0.4], [5.0]])
    Y = np.array([2, 7, 2, 7, 2, 9])
    assert go.knn_vote(T, Y, np.array([[0.0]])).tolist() == [2]
    Y2 = np.array([7, 7, 3, 3, 9, 1])
    assert go.knn_vote(T, Y2, np.array([[0.0]])).tolist() == [3]


def test_tree_adjacency_is_the_arteq_tree():
    from geo3d.apps.arteq._model import ARTEQ_PARENTS

    A = go.tree_adjacency()
    assert A.shape == (22, 22) and np.array_equal(A, A.T) and A.diagonal().all()
    assert A.sum() == 22 + 2 * 21 and A[20, 18] and A[7, 4] and not A[20, 7]
    assert all(A[c, p] for c, p in enumerate(ARTEQ_PARENTS) if p >= 0)
