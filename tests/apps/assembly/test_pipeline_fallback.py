"""No move on weak evidence: with uninformative descriptors (no reliable match edge) the
matching pipeline returns the network's poses bit for bit (the refinement used to move
fallback-placed pieces anyway, which lowered the demo's absolute part accuracy)."""

from __future__ import annotations

import pytest
import torch
from geo3d.apps.assembly._matching_oracle import fractured_object, random_poses
from geo3d.apps.assembly._pipeline import assemble_from_outputs

F64 = torch.float64


@pytest.mark.parametrize("P", [2, 3])
def test_uninformative_descriptors_give_the_network_poses(P):
    g = torch.Generator().manual_seed(P)
    obj = fractured_object(P, 256, category="Sphere", seed=2)
    x = obj["assembled"]
    A = random_poses(P, g)
    p = (x @ A[:, :3, :3].transpose(-1, -2) + A[:, None, :3, 3])[None]
    # a network that is slightly off: its poses are the truth perturbed by random motions
    T_net = random_poses(P, g) @ torch.linalg.inv(A)
    out = {"rot": T_net[None, :, :3, :3], "trans": T_net[None, :, :3, 3],
           "desc": torch.nn.functional.normalize(
               torch.randn(1, P, 256, 16, generator=g, dtype=F64), dim=-1),
           "frac_score": torch.zeros(1, P, 256, dtype=F64)}
    valid = torch.ones(1, P, dtype=torch.bool)
    net = assemble_from_outputs(p, valid, out, method="network")
    T = assemble_from_outputs(p, valid, out, generator=torch.Generator().manual_seed(0))
    assert torch.equal(T, net)
    torch.testing.assert_close(net[0], T_net, rtol=0, atol=0)
