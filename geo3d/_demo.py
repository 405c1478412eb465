"""``geo3d report`` (and, for now, ``geo3d demo``): an equivariance report over the groups.

For every group it samples elements with a fixed seed and prints

1. the group axioms (identity, inverse, associativity, closure),
2. the homomorphism error of its representations, ``ρ(ab)x = ρ(a)(ρ(b)x)``,
3. a few example functions run through :func:`geo3d.testing.assert_equivariant`, including
   ones that are *not* equivariant, to show that the checker catches them,

then a final ``PASS``/``FAIL`` line. The exit code is non-zero on failure.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from typing import TextIO

HEADER = """\
geo3d equivariance report  (seed {seed}, {dtype}, {n} random elements per continuous group)

How to read it: every number is the LARGEST error seen over the tested group elements
(random Haar samples plus structured ones: identity, rotations by π, reflections, big
boosts; finite groups: every element). In {dtype}, ~{lo:.0e}..{hi:.0e} means "exact up to
rounding". A row is ok when its error is below the tolerance `tol`. Lorentz errors are
relative to the size of the matrix entries, which grow like e^rapidity.
"""


@dataclass
class _Check:
    name: str
    ok: bool


def _fmt(x: float) -> str:
    return f"{x:9.1e}"


def _short(group) -> str:
    from geo3d.groups import Lorentz

    if isinstance(group, Lorentz):
        return "SO+(1,3)" if group.proper else "O(1,3)"
    return repr(group)


def _relmax(diff, ref) -> float:
    """max |diff| / max(1, max |ref|) per batch item, then the max."""
    d = diff.abs().flatten(1).amax(1)
    s = ref.abs().flatten(1).amax(1).clamp_min(1.0)
    return float((d / s).max())


def _groups():
    from geo3d import groups as G

    return [
        G.SO2(),
        G.O2(),
        G.CyclicGroup(4),
        G.DihedralGroup(3),
        G.OcticGroup(),
        G.SO3(),
        G.O3(),
        G.IcosahedralGroup(),
        G.SE3(),
        G.Lorentz(max_rapidity=3.0),
        G.Lorentz(proper=True, max_rapidity=3.0),
    ]


def _reps(group) -> list:
    from geo3d import groups as G
    from geo3d import reps as R

    if isinstance(group, G.Lorentz):
        return [R.LorentzVector(group), R.LorentzTensor(group)]
    if isinstance(group, G.SE3):
        return [R.Vector(group), R.Points(group), R.Irreps(group, "1x1o + 1x2e")]
    if isinstance(group, G.O3):
        return [R.Vector(group), R.Irreps(group, "1x0o + 1x1e + 1x2e + 1x3o")]
    if isinstance(group, G.SO3):
        return [R.Vector(group), R.Irreps(group, "2x0e + 1x1o + 1x2e + 1x4e")]
    out = [R.Vector(group)]
    if group.is_finite:
        out.append(R.Regular(group))
        if group.element_shape == (2, 2) and 4 % group.n == 0:  # acts on square images
            out.append(R.Image(group, size=5))
    return out


def _axioms(group, n, gen, dtype):
    """(identity, inverse, associativity, closure) errors, relative for non-compact groups."""
    import torch

    if group.is_finite:
        els = group.elements(dtype=dtype)
        a, b = els[:, None], els[None, :]
        c = els[torch.randint(group.order, (1, group.order), generator=gen)]
    else:
        s, _ = group.special_elements(gen, dtype)
        a = torch.cat([s, group.sample(n, generator=gen, dtype=dtype)])
        b = a[torch.randperm(a.shape[0], generator=gen)]
        c = a[torch.randperm(a.shape[0], generator=gen)]
    a, b, c = torch.broadcast_tensors(a, b, c)
    flat = (-1, *group.element_shape)
    a, b, c = a.reshape(flat), b.reshape(flat), c.reshape(flat)
    e = group.identity(dtype=dtype)
    ident = _relmax(group.compose(e, a) - a, a)
    prod = group.compose(a, group.inverse(a))
    scale = a.abs().flatten(1).amax(1) ** 2  # |a| |a^{-1}| (= |a|² for Lorentz)
    inv = float(((prod - e).abs().flatten(1).amax(1) / scale.clamp_min(1.0)).max())
    left = group.compose(group.compose(a, b), c)
    right = group.compose(a, group.compose(b, c))
    scale3 = (a.abs().flatten(1).amax(1) * b.abs().flatten(1).amax(1)) * c.abs().flatten(1).amax(1)
    assoc = float(((left - right).abs().flatten(1).amax(1) / scale3.clamp_min(1.0)).max())
    closure = float(group.element_error(group.compose(a, b)).max())
    return ident, inv, assoc, closure


def _homomorphism(rep, n, gen, dtype) -> float:
    import torch

    from geo3d import reps as R

    group = rep.group
    if group.is_finite:
        els = group.elements(dtype=dtype)
        a = els.repeat_interleave(group.order, 0)
        b = els.repeat(group.order, 1, 1)
    else:
        s, _ = group.special_elements(gen, dtype)
        a = torch.cat([s, group.sample(n, generator=gen, dtype=dtype)])
        b = a[torch.randperm(a.shape[0], generator=gen)]
    x = rep.randn(2, generator=gen, dtype=dtype)
    power = 2 if isinstance(rep, R.LorentzTensor) else 1
    worst = 0.0
    for i in range(a.shape[0]):
        lhs = rep.act(group.compose(a[i], b[i]), x)
        rhs = rep.act(a[i], rep.act(b[i], x))
        # rounding scales with the input and the entries of a and b (large for boosts)
        size = (a[i].abs().max().clamp_min(1) * b[i].abs().max().clamp_min(1)) ** power
        scale = float(x.abs().max().clamp_min(1) * size)
        worst = max(worst, float((lhs - rhs).abs().max()) / scale)
    return worst


def _examples(off: float):
    """(description, group, in_rep, out_rep, fn, expected_equivariant, note)."""
    import torch

    from geo3d import groups as G
    from geo3d import reps as R

    so2, o3, so3, se3 = G.SO2(), G.O3(), G.SO3(), G.SE3()
    d4, lor = G.OcticGroup(), G.Lorentz(max_rapidity=3.0)

    def norm(x):
        return x.norm(dim=-1, keepdim=True)

    def cross(a, b):
        return torch.linalg.cross(a, b, dim=-1)

    def blur(x):
        k = torch.tensor([[1.0, 2, 1], [2, 4, 2], [1, 2, 1]], dtype=x.dtype) / 16
        return torch.tanh(torch.nn.functional.conv2d(x[:, None], k[None, None], padding=1)[:, 0])

    def shift_blur(x):
        k = torch.tensor([[0.0, 1, 0], [0, 1, 1], [0, 0, 0]], dtype=x.dtype) / 3
        return torch.nn.functional.conv2d(x[:, None], k[None, None], padding=1)[:, 0]

    def slightly_off(x):
        return x + off * norm(x) * torch.tensor([1.0, 0.0, 0.0], dtype=x.dtype)

    vec, img = R.Vector, R.Image(d4, size=6)
    lv = R.LorentzVector(lor)
    return [
        ("|x| (norm)", so2, vec(so2), R.Trivial(so2), norm, True, ""),
        ("blur + tanh of an image", d4, img, img, blur, True, ""),
        (
            "asymmetric 3x3 filter",
            d4,
            img,
            img,
            shift_blur,
            False,
            "an asymmetric kernel does not commute with rot90/flip",
        ),
        ("|x| (norm)", o3, vec(o3), R.Trivial(o3), norm, True, ""),
        ("a × b as a vector", so3, (vec(so3), vec(so3)), vec(so3), cross, True, ""),
        (
            "a × b as a vector",
            o3,
            (vec(o3), vec(o3)),
            vec(o3),
            cross,
            False,
            "under x -> -x, a × b stays put but a vector flips: it is a pseudovector",
        ),
        (
            "a × b as a pseudovector (1e)",
            o3,
            (vec(o3), vec(o3)),
            R.Irreps(o3, "1e"),
            cross,
            True,
            "",
        ),
        (
            f"x + {off:.0e}·|x|·e_x",
            so3,
            vec(so3),
            vec(so3),
            slightly_off,
            False,
            f"a {off:.0e} relative error is far above the rounding error",
        ),
        ("centroid of points", se3, R.Points(se3), R.Points(se3), lambda p: p.mean(-2), True, ""),
        (
            "centroid as a direction",
            se3,
            R.Points(se3),
            vec(se3),
            lambda p: p.mean(-2),
            False,
            "a centroid moves with the translation, a direction does not",
        ),
        ("Minkowski a·b", lor, (lv, lv), R.Trivial(lor), _minkowski, True, ""),
        (
            "Euclidean a·b",
            lor,
            (lv, lv),
            R.Trivial(lor),
            lambda a, b: (a * b).sum(-1),
            False,
            "boosts preserve t² − x², not t² + x²",
        ),
        (
            "outer product a bᵀ",
            lor,
            (lv, lv),
            R.LorentzTensor(lor),
            lambda a, b: a[..., :, None] * b[..., None, :],
            True,
            "",
        ),
    ]


def _minkowski(a, b):
    from geo3d.groups import minkowski_dot

    return minkowski_dot(a, b)


def run_report(
    seed: int = 0, n_samples: int = 32, dtype_name: str = "float64", out: TextIO | None = None
) -> bool:
    """Print the report to ``out`` (default stdout); return True when everything passed."""
    import torch

    from geo3d.testing import EquivarianceError, assert_equivariant

    out = out or sys.stdout
    dtype = {"float64": torch.float64, "float32": torch.float32}[dtype_name]
    eps = torch.finfo(dtype).eps
    tol_axiom = 1e4 * eps
    tol_fn = 1e5 * eps if dtype == torch.float64 else 1e3 * eps
    t0 = time.perf_counter()

    def p(line: str = "") -> None:
        print(line, file=out)

    checks: list[_Check] = []
    p(HEADER.format(seed=seed, dtype=dtype_name, n=n_samples, lo=eps, hi=1e3 * eps))

    p(f"1. Group axioms (tol {tol_axiom:.0e})")
    p("   identity |e·g − g|, inverse |g·g⁻¹ − e|, associativity |(ab)c − a(bc)|,")
    p("   closure = distance of a·b from the group (is_element error)")
    p(f"   {'group':<20}{'identity':>9} {'inverse':>9} {'assoc.':>9} {'closure':>9}  result")
    groups = _groups()
    for i, group in enumerate(groups):
        gen = torch.Generator().manual_seed(seed + i)
        errs = _axioms(group, n_samples, gen, dtype)
        ok = all(e <= tol_axiom for e in errs)
        checks.append(_Check(f"axioms {group!r}", ok))
        cells = " ".join(_fmt(e) for e in errs)
        p(f"   {_short(group):<20}{cells}  {'ok' if ok else 'FAIL'}")
    p()

    p(f"2. Representations are homomorphisms: |ρ(ab)x − ρ(a)(ρ(b)x)| (tol {tol_axiom:.0e})")
    p("   relative to |x|·|a|·|b| (max entries; squared for rank-2 Lorentz tensors)")
    for i, group in enumerate(groups):
        gen = torch.Generator().manual_seed(seed + 100 + i)
        for rep in _reps(group):
            err = _homomorphism(rep, n_samples, gen, dtype)
            ok = err <= tol_axiom
            checks.append(_Check(f"homomorphism {rep!r}", ok))
            p(f"   {rep!r:<60}{_fmt(err)}  {'ok' if ok else 'FAIL'}")
    p()

    p("3. Example functions checked with geo3d.testing.assert_equivariant")
    p(
        f"   (atol {tol_fn:.0e}, rtol {tol_axiom:.0e}; 'expect' says whether the function is equivariant)"
    )
    p(f"   {'function':<30}{'group':<14}{'output rep':<22}{'max err':>9}  {'expect':<7} result")
    for i, (desc, group, in_rep, out_rep, fn, expected, note) in enumerate(
        _examples(1e-4 if dtype == torch.float64 else 1e-2)
    ):
        gen = torch.Generator().manual_seed(seed + 200 + i)
        try:
            errs = assert_equivariant(
                fn,
                group,
                in_rep,
                out_rep,
                n_samples=n_samples,
                atol=tol_fn,
                rtol=tol_axiom,
                generator=gen,
                dtype=dtype,
            )
            passed, err = True, float(errs.max())
        except EquivarianceError as exc:
            passed, err = False, float(exc.errors.max())
        ok = passed == expected
        result = ("ok" if passed else "caught ✓") if ok else "FAIL"
        checks.append(_Check(f"example {desc} {group!r}", ok))
        gname = _short(group)
        p(
            f"   {desc:<30}{gname:<14}{type(out_rep).__name__:<22}{_fmt(err)}  "
            f"{'yes' if expected else 'NO':<7} {result}"
        )
        if note:
            p(f"       ↳ {note}")
    p()

    failed = [c.name for c in checks if not c.ok]
    dt = time.perf_counter() - t0
    if failed:
        p(f"FAIL: {len(failed)} of {len(checks)} checks failed ({dt:.1f} s): {', '.join(failed)}")
        return False
    p(
        f"PASS: all {len(checks)} checks behaved as expected ({dt:.1f} s); the non-equivariant "
        "examples were caught."
    )
    return True


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _run(args: argparse.Namespace) -> int:
    import torch

    # Every tensor here is tiny: extra intra-op threads only add synchronisation cost
    # (tens of ms per matmul on a busy machine).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return 0 if run_report(args.seed, args.samples, args.dtype) else 1
    finally:
        torch.set_num_threads(threads)


#: Whether this module also registers ``geo3d demo``. Set to False once the shape-assembly
#: app registers its own ``demo`` (argparse rejects two sub-parsers with one name);
#: ``geo3d report`` stays.
REGISTER_DEMO = False


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``geo3d report`` and, while :data:`REGISTER_DEMO`, ``geo3d demo`` (same report)."""
    commands = [("report", "equivariance report over all groups (axioms, reps, example functions)")]
    if REGISTER_DEMO:
        commands.append(
            ("demo", "run the best end-to-end demo (currently: the equivariance report)")
        )
    for name, help_text in commands:
        sp = subparsers.add_parser(name, help=help_text, description=__doc__.split("\n\n")[0])
        sp.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
        sp.add_argument(
            "--samples",
            type=_positive,
            default=32,
            help="random elements per continuous group (default 32)",
        )
        sp.add_argument("--dtype", choices=["float64", "float32"], default="float64")
        sp.set_defaults(func=_run)
