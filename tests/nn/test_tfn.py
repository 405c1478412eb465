"""e3nn-specific checks of TFNEncoder: l=1 basis conversion, irreps configuration."""

from __future__ import annotations

import pytest
import torch
from e3nn import o3

from geo3d.groups import O3, SO3
from geo3d.nn import TFNEncoder, e3nn_l1_to_xyz
from geo3d.reps import Irreps, Vector
from geo3d.testing import assert_equivariant


def test_l1_to_xyz_inverts_e3nn_spherical_harmonics(generator):
    v = torch.randn(10, 3, generator=generator, dtype=torch.float64)
    sh = o3.spherical_harmonics(1, v, normalize=False, normalization="norm")
    torch.testing.assert_close(e3nn_l1_to_xyz(sh), v)


def test_l1_to_xyz_turns_wigner_d_into_the_rotation_matrix(generator):
    R = SO3().sample(4, generator=generator, dtype=torch.float64)
    D = o3.Irreps("1o").D_from_matrix(R)  # e3nn's l=1 representation of R
    v = torch.randn(4, 3, generator=generator, dtype=torch.float64)
    lhs = e3nn_l1_to_xyz(torch.einsum("bij,bj->bi", D, v))
    rhs = torch.einsum("bij,bj->bi", R, e3nn_l1_to_xyz(v))
    # D_from_matrix goes through Euler angles (acos): ~1e-7 accurate even in float64.
    torch.testing.assert_close(lhs, rhs, atol=1e-6, rtol=0)
    # A coordinate permutation would fail this by O(1).
    assert not torch.allclose(lhs, torch.einsum("bij,bj->bi", R, v[:, [1, 2, 0]]), atol=1e-3)


def test_equivariant_output_rotates_with_plain_matrices(build, generator):
    model = build(lambda: TFNEncoder(irreps_hidden="8x0e + 4x1o", irreps_out="4x0e + 3x1o",
                                     num_layers=1, k=6)).eval()
    pts = torch.randn(2, 24, 3, generator=generator, dtype=torch.float64)
    # The xyz output must transform with the ordinary matrix R (and -I flips it: 1o).
    assert_equivariant(lambda p: model(p).equivariant, O3(), Vector(O3()), Vector(O3()),
                       inputs=(pts,), n_samples=2, atol=1e-10, generator=generator)
    # Cross-check against geo3d's e3nn-backed irreps rep on the raw l=1 layout.
    assert_equivariant(lambda p: model(p).point_equivariant.flatten(-2), O3(), Vector(O3()),
                       Irreps(O3(), "3x1o"), inputs=(pts,), n_samples=1, atol=1e-10,
                       generator=generator)


def test_irreps_configuration(build):
    model = build(lambda: TFNEncoder(irreps_hidden="6x0e + 2x0o + 3x1o + 2x1e + 2x2e",
                                     irreps_out="5x0e + 2x1o + 1x1e", num_layers=2, lmax=2, k=4))
    out = model(torch.randn(2, 10, 3, dtype=torch.float64))
    assert out.invariant.shape == (2, 5) and out.equivariant.shape == (2, 2, 3)
    assert model.invariant_dim == 5 and model.equivariant_dim == 2
    # Hidden irreps unreachable from the scalar input in layer 1 (0o, 1e) are dropped there.
    first = model.layers[0]["gate"].irreps_out
    assert all(ir.p == (-1) ** ir.l for _, ir in first)
    scalar_only = build(lambda: TFNEncoder(irreps_hidden="4x0e", irreps_out="3x0e", k=4))
    out = scalar_only(torch.randn(2, 10, 3, dtype=torch.float64))
    assert out.invariant.shape == (2, 3) and out.equivariant is None
    with pytest.raises(ValueError, match=r"^irreps_out: expected at least one 0e channel"):
        TFNEncoder(irreps_out="4x1o")
    with pytest.raises(ValueError, match=r"^k: expected an integer >= 2 .*, got 1"):
        TFNEncoder(k=1)
