"""Argument checks of the plausibility functions and of method="select" (tester report
10:30, items 2 and 8): bad values raise ValueError naming the argument instead of a
TypeError/IndexError deep inside, or a silent NaN / empty result."""

from __future__ import annotations

import pytest
import torch
from geo3d.apps.assembly._pipeline import assemble_from_outputs
from geo3d.apps.assembly._plausibility import (
    assembly_score,
    contact_penetration,
    icp_contact,
    pair_search,
    select_hypotheses,
    spacing,
)

F64 = torch.float64
NAN, INF = float("nan"), float("inf")


def _cloud(n: int = 30, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g, dtype=F64)
    return x, torch.nn.functional.normalize(x, dim=-1)


def _with_nan(t: torch.Tensor) -> torch.Tensor:
    t = t.clone()
    t.view(-1)[1] = NAN
    return t


# ---------------------------------------------------------------- spacing
@pytest.mark.parametrize("bad", [torch.zeros(0, 3), _with_nan(torch.zeros(4, 3)),
                                 [[0.0, 0, 0], [1.0, 0, 0]], torch.zeros(4, 2)])
def test_spacing_rejects(bad):
    with pytest.raises(ValueError, match="points"):
        spacing(bad)


# ---------------------------------------------------------------- contact_penetration
@pytest.mark.parametrize("kw,name", [
    (dict(contact_radius=True), "contact_radius"), (dict(contact_radius=-1.0), "contact_radius"),
    (dict(pen_radius=NAN), "pen_radius"), (dict(cos_opposite="a"), "cos_opposite"),
    (dict(cos_opposite=NAN), "cos_opposite"), (dict(pen_depth=NAN), "pen_depth"),
    (dict(pen_depth=-1.0), "pen_depth"),
])
def test_contact_penetration_rejects_scalars(kw, name):
    x, n = _cloud()
    with pytest.raises(ValueError, match=name):
        contact_penetration(x, n, x + 0.01, -n, **{"contact_radius": 0.1, "pen_radius": 0.1,
                                                   **kw})


@pytest.mark.parametrize("which", ["x", "ny"])
@pytest.mark.parametrize("bad", ["nan", "inf", "f32", "empty"])
def test_contact_penetration_rejects_tensors(which, bad):
    x, n = _cloud()
    args = dict(x=x, nx=n, y=x + 0.01, ny=-n)
    t = args[which]
    if bad == "nan":
        args[which] = _with_nan(t)
    elif bad == "inf":
        args[which] = t.clone().fill_(INF)
    elif bad == "f32":
        args[which] = t.float()
    else:  # no points: both of a piece's tensors empty
        key = "x" if which == "x" else "y"
        args[key], args["n" + key] = args[key][:0], args["n" + key][:0]
        which = key
    with pytest.raises(ValueError, match=which):
        contact_penetration(**args, contact_radius=0.1, pen_radius=0.1)


# ---------------------------------------------------------------- icp_contact
@pytest.mark.parametrize("kw,name", [
    (dict(radius=0.0), "radius"), (dict(radius=NAN), "radius"), (dict(steps=-1), "steps"),
    (dict(steps=True), "steps"), (dict(damping=NAN), "damping"),
    (dict(cos_opposite=2.0), "cos_opposite"),
])
def test_icp_contact_rejects_scalars(kw, name):
    x, n = _cloud()
    G = torch.eye(4, dtype=F64)[None]
    with pytest.raises(ValueError, match=name):
        icp_contact(x, n, x, -n, G, **{"radius": 0.2, **kw})


def test_icp_contact_rejects_nan_pose():
    x, n = _cloud()
    G = torch.eye(4, dtype=F64)[None].clone()
    G[0, 0, 3] = NAN
    with pytest.raises(ValueError, match="G"):
        icp_contact(x, n, x, -n, G, radius=0.2)


# ---------------------------------------------------------------- pair_search
@pytest.mark.parametrize("kw,name", [
    (dict(rotations=0), "rotations"), (dict(rotations=True), "rotations"),
    (dict(top=0), "top"), (dict(top=-1), "top"), (dict(cell=0.0), "cell"),
    (dict(cell=-1.0), "cell"), (dict(chunk=0), "chunk"), (dict(per_rotation=0), "per_rotation"),
    (dict(icp_steps=-1), "icp_steps"), (dict(w_pen=NAN), "w_pen"),
    (dict(cos_vote="x"), "cos_vote"), (dict(contact_radius=-1.0), "contact_radius"),
    (dict(extra=torch.full((1, 4, 4), NAN, dtype=F64)), "extra"),
    (dict(rotations=torch.full((2, 3, 3), NAN, dtype=F64)), "rotations"),
])
def test_pair_search_rejects_scalars(kw, name):
    x, n = _cloud()
    with pytest.raises(ValueError, match=name):
        pair_search(x, n, x + 1.0, n, **{"rotations": 8, "top": 4, "icp_steps": 0, **kw})


@pytest.mark.parametrize("bad,name", [
    (lambda x, n: dict(xa=x.numpy()), "xa"), (lambda x, n: dict(xa=_with_nan(x)), "xa"),
    (lambda x, n: dict(nb=_with_nan(n)), "nb"), (lambda x, n: dict(xb=x[:, :2]), "xb"),
    (lambda x, n: dict(xb=x.float(), nb=n.float()), "xb"),
])
def test_pair_search_rejects_points(bad, name):
    x, n = _cloud()
    args = dict(xa=x, na=n, xb=x + 1.0, nb=n)
    args.update(bad(x, n))
    with pytest.raises(ValueError, match=name):
        pair_search(args["xa"], args["na"], args["xb"], args["nb"], rotations=8, top=4,
                    icp_steps=0)


# ---------------------------------------------------------------- assembly_score
def _two_pieces():
    x, n = _cloud()
    pts, nrm = torch.stack([x, x + 0.01]), torch.stack([n, -n])
    return pts, nrm, torch.eye(4, dtype=F64).repeat(2, 1, 1)


@pytest.mark.parametrize("bad,name", [
    (dict(valid=torch.ones(3, dtype=torch.bool)), "valid"),
    (dict(valid=torch.ones(2)), "valid"), (dict(w_pen=INF), "w_pen"),
    (dict(poses=torch.full((2, 4, 4), NAN, dtype=F64)), "poses"),
    (dict(contact_radius=NAN), "contact_radius"),
])
def test_assembly_score_rejects(bad, name):
    pts, nrm, T = _two_pieces()
    kw = dict(points=pts, normals=nrm, poses=T, contact_radius=0.1, pen_radius=0.1)
    kw.update(bad)
    with pytest.raises(ValueError, match=name):
        assembly_score(**kw)


def test_assembly_score_ignores_invalid_pieces_values():
    """A NaN-padded invalid piece is no error and leaves the score of the others."""
    pts, nrm, T = _two_pieces()
    ref = assembly_score(pts, nrm, T, contact_radius=0.1, pen_radius=0.1)
    pts3 = torch.cat([pts, torch.full_like(pts[:1], NAN)])
    nrm3 = torch.cat([nrm, torch.full_like(nrm[:1], NAN)])
    T3 = torch.cat([T, torch.full_like(T[:1], NAN)])
    got = assembly_score(pts3, nrm3, T3, torch.tensor([True, True, False]),
                         contact_radius=0.1, pen_radius=0.1)
    c, p = contact_penetration(pts[0], nrm[0], pts[1], nrm[1], contact_radius=0.1,
                               pen_radius=0.1)
    assert float(got) == float(ref) == float(c - p)


# ---------------------------------------------------------------- select_hypotheses
@pytest.mark.parametrize("kw,name", [
    (dict(top_k=-1), "top_k"), (dict(top_k=True), "top_k"), (dict(top_k="3"), "top_k"),
    (dict(search=-5), "search"), (dict(icp_steps=-1), "icp_steps"),
    (dict(w_net=NAN), "w_net"), (dict(margin=NAN), "margin"), (dict(margin="1"), "margin"),
    (dict(w_pen=INF), "w_pen"), (dict(anchor=True), "anchor"),
    (dict(valid=torch.ones(2)), "valid"), (dict(contact_radius=0.0), "contact_radius"),
    (dict(points=None), "points"), (dict(net_poses=None), "net_poses"),
    (dict(normals=None), "normals"), (dict(hyp_poses=None), "hyp_poses"),
    (dict(hyp_logits=None), "hyp_logits"),
])
def test_select_hypotheses_rejects(kw, name):
    pts, nrm, T = _two_pieces()
    args = dict(points=pts, normals=nrm, valid=torch.ones(2, dtype=torch.bool), anchor=0,
                net_poses=T, hyp_poses=T[:, None].clone(), hyp_logits=torch.zeros(2, 1, dtype=F64))
    for k, v in kw.items():  # None: that tensor with a NaN
        args[k] = _with_nan(args[k]) if v is None else v
    with pytest.raises(ValueError, match=name):
        select_hypotheses(**args)


@pytest.mark.parametrize("bad", ["rot", "trans", "points", "normals"])
def test_select_method_rejects_nan(bad):
    """method='select' raised nothing and returned NaN poses for NaN network poses."""
    pts, nrm, T = _two_pieces()
    out = {"rot": T[None, :, :3, :3].clone(), "trans": T[None, :, :3, 3].clone()}
    points, normals = pts[None].clone(), nrm[None].clone()
    if bad in out:
        out[bad][0, 1].view(-1)[0] = NAN
    elif bad == "points":
        points[0, 1, 3, 0] = NAN
    else:
        normals[0, 1, 3, 0] = NAN
    name = {"rot": "rot", "trans": "trans"}.get(bad, bad)
    with pytest.raises(ValueError, match=name):
        assemble_from_outputs(points, torch.ones(1, 2, dtype=torch.bool), out, method="select",
                              normals=normals)


def test_select_method_rejects_bad_select_kwargs():
    pts, nrm, T = _two_pieces()
    out = {"rot": T[None, :, :3, :3], "trans": T[None, :, :3, 3]}
    with pytest.raises(ValueError, match="top_k"):
        assemble_from_outputs(pts[None], torch.ones(1, 2, dtype=torch.bool), out,
                              method="select", normals=nrm[None], select_kwargs={"top_k": "3"})
