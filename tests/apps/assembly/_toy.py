"""A tiny in-memory fracture-like dataset for fast tests (same item format as BreakingBad).

Each object is a random point cloud on an ellipsoid cut into ``num_parts`` slabs along a
random direction; every part is centred and (optionally) randomly rotated, with the ground
truth ``assembled = rot @ p + trans``.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from geo3d.rotations import random_rotation_matrix


class ToyParts(Dataset):
    def __init__(self, num_objects: int = 8, max_parts: int = 3, num_points: int = 32,
                 rotate: bool = True, seed: int = 0) -> None:
        self.n, self.P, self.N, self.rotate, self.seed = num_objects, max_parts, num_points, rotate, seed

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        g = torch.Generator().manual_seed(self.seed * 100003 + i)
        P, N = self.P, self.N
        num = int(torch.randint(2, P + 1, (1,), generator=g))
        axes = 0.5 + torch.rand(3, generator=g)
        pts, rots, trans = torch.zeros(P, N, 3), torch.eye(3).repeat(P, 1, 1), torch.zeros(P, 3)
        d = torch.nn.functional.normalize(torch.randn(3, generator=g), dim=0)
        for j in range(num):
            # rejection-free: points on the ellipsoid with projection in slab j
            u = torch.nn.functional.normalize(torch.randn(N * 8, 3, generator=g), dim=-1) * axes
            s = (u @ d - (u @ d).min()) / ((u @ d).max() - (u @ d).min() + 1e-9)
            sel = u[(s >= j / num) & (s <= (j + 1) / num)]
            if sel.shape[0] < N:
                sel = torch.cat([sel, u[: N - sel.shape[0]]])
            p = sel[:N]
            c = p.mean(0)
            p = p - c
            R = random_rotation_matrix(generator=g) if self.rotate else torch.eye(3)
            pts[j] = p @ R.T
            rots[j] = R.T
            trans[j] = c
        valid = torch.arange(P) < num
        return {"points": pts, "valid": valid, "rot": rots, "trans": trans, "num_parts": num,
                "name": f"toy/{i}"}
