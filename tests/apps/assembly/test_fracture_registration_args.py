"""fracture_assembly / pair_poses argument checks and pose invariance (tester report 10:30,
items 7 and 11)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

pytest.importorskip("open3d")

from geo3d.apps.assembly._fracture_registration import (  # noqa: E402
    _frame,
    fracture_assembly,
    pair_poses,
)

from .test_fracture_registration import _move_pieces, wavy_box_halves  # noqa: E402

NAN, INF = float("nan"), float("inf")


@pytest.fixture(scope="module")
def box():
    return wavy_box_halves(seed=1, n=600)


@pytest.mark.parametrize("kw,name", [
    (dict(n_theta=0), "n_theta"), (dict(n_theta=-2), "n_theta"), (dict(n_theta=2.0), "n_theta"),
    (dict(eps=-1), "eps"), (dict(eps=NAN), "eps"), (dict(eps=0.0), "eps"),
    (dict(min_points="3"), "min_points"), (dict(min_points=-1), "min_points"),
    (dict(min_points=True), "min_points"), (dict(min_points=2), "min_points"),
    (dict(pen_weight=NAN), "pen_weight"), (dict(pen_weight=INF), "pen_weight"),
    (dict(pen_weight=-1.0), "pen_weight"), (dict(threshold=NAN), "threshold"),
    (dict(threshold=True), "threshold"),
])
def test_fracture_assembly_rejects(box, kw, name):
    """Before: n_theta=0 -> TypeError (unpacking None), eps=-1 -> an error naming
    contact_radius, min_points='3' -> TypeError, NaN/negative values accepted."""
    pts, nrm, lab = box
    with pytest.raises(ValueError, match=name):
        fracture_assembly(pts, nrm, 0, labels=lab, **kw)


@pytest.mark.parametrize("bad", [NAN, INF])
def test_fracture_assembly_rejects_non_finite_labels(box, bad):
    pts, nrm, lab = box
    lab = [lab[0].astype(float), lab[1]]
    lab[0][5] = bad
    with pytest.raises(ValueError, match=r"labels\[0\]"):
        fracture_assembly(pts, nrm, 0, labels=lab)


@pytest.mark.parametrize("kw,name", [
    (dict(scale=0.0), "scale"), (dict(scale=NAN), "scale"), (dict(n_theta=0), "n_theta"),
    (dict(eps=-1.0), "eps"), (dict(top=0), "top"), (dict(pen_weight=NAN), "pen_weight"),
    (dict(fa="mask"), "fa"), (dict(fb="few"), "fb"), (dict(pa="nan"), "pa"),
    (dict(nb="short"), "nb"),
])
def test_pair_poses_rejects(box, kw, name):
    pts, nrm, lab = box
    args = dict(pa=pts[0], na=nrm[0], fa=lab[0], pb=pts[1], nb=nrm[1], fb=lab[1], scale=0.5,
                n_theta=2)
    for k, v in kw.items():
        if v == "mask":
            v = lab[0].astype(float)
        elif v == "few":
            v = np.zeros(len(pts[1]), bool)
            v[:2] = True
        elif v == "nan":
            v = pts[0].copy()
            v[0, 0] = NAN
        elif v == "short":
            v = nrm[1][:-1]
        args[k] = v
    with pytest.raises(ValueError, match=name):
        pair_poses(args.pop("pa"), args.pop("na"), args.pop("fa"), args.pop("pb"),
                   args.pop("nb"), args.pop("fb"), args.pop("scale"), **args)


def test_frame_rotates_with_the_points():
    """The principal frame of a rotated asymmetric set is the rotated frame (eigh's own
    signs are arbitrary; they reordered the ICP starts, so ties went another way)."""
    from scipy.spatial.transform import Rotation

    rng = np.random.default_rng(0)
    p = rng.normal(size=(200, 3)) * [3.0, 2.0, 1.0]
    p = p + 0.3 * p**2 * [1, 1, 0]  # skewed: nonzero third moments
    c, U = _frame(p)
    for s in range(5):
        R = Rotation.random(random_state=s).as_matrix()
        c2, U2 = _frame(p @ R.T + 1.0)
        np.testing.assert_allclose(U2, R @ U, atol=1e-10)
        assert np.linalg.det(U2) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("seed", [4, 5])
def test_invariant_on_wavy_box_with_predicted_labels(box, seed):
    """float64, shipped classifier, a non-symmetric (wavy) cut, each piece moved by its
    own rigid motion: G'_i M_i = M_a G_i up to ICP's convergence tolerance (measured
    <= 5e-6 over 6 motions at n=600; the box is 2.5 across). Not a guarantee for every
    input: at n=400, n_theta=4 a 1e-14 perturbation of the points changed the placement
    by 1.46 (poorly converged ICP is discontinuous in its input; see the docstring)."""
    pts, nrm, _ = box
    G0, p0 = fracture_assembly(pts, nrm, 0)
    M, mp, mn = _move_pieces(pts, nrm, seed=seed)
    G1, p1 = fracture_assembly(mp, mn, 0)
    for i in range(2):
        np.testing.assert_allclose(p1[i].numpy(), p0[i].numpy(), atol=1e-6)
        np.testing.assert_allclose(G1[i].numpy() @ M[i], M[0] @ G0[i].numpy(), atol=1e-4)


def test_unreached_piece_warns_and_keeps_orientation(box):
    """With no fracture points (labels all False) no edge exists: the piece is only
    centred on the anchor (its input orientation kept), which is said by a warning."""
    pts, nrm, lab = box
    none = [np.zeros(len(p), bool) for p in pts]
    with pytest.warns(RuntimeWarning, match=r"pieces \[1\]"):
        G, _ = fracture_assembly(pts, nrm, 0, labels=none)
    G = G.numpy()
    np.testing.assert_array_equal(G[1, :3, :3], np.eye(3))
    np.testing.assert_allclose(G[1, :3, 3], pts[0].mean(0) - pts[1].mean(0), atol=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fracture_assembly(pts, nrm, 0, labels=lab, n_theta=2)  # reached: no warning
